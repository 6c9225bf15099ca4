"""The engine's decisions against in-memory stores: planning, the three-way
comparison, conflict policies, the deletion guard, dry runs, retries."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from sidecar.sync import ConflictPolicy, Mode, RunReport, StateStore, SyncOptions, run_sync
from sidecar.sync.connectors._base import (
    IntegrityError,
    StoreAuthError,
    StoreThrottledError,
    StoreUnavailableError,
)
from sidecar.sync.connectors.memory import MemoryConnector


class Pair:
    """Two in-memory stores and one job's state file."""

    def __init__(self, tmp_path: Path, *, hashes: bool = True) -> None:
        self.src = MemoryConnector("memory://src", hashes=hashes)
        self.dst = MemoryConnector("memory://dst", hashes=hashes)
        self.state = str(tmp_path / "job.db")

    async def run(self, **options: Any) -> RunReport:
        opts = SyncOptions(
            "memory://src", "memory://dst", state_path=self.state, retry_delay=0.001, **options
        )
        return await run_sync(opts, connectors=(self.src, self.dst))

    def writes(self) -> int:
        return self.src.calls["write"] + self.dst.calls["write"]


def _exists(path: str) -> bool:
    return os.path.exists(path)


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return Pair(tmp_path)


async def test_copy_then_unchanged_rerun_transfers_nothing(pair: Pair) -> None:
    pair.src.put("a.txt", "alpha", mtime=100.0)
    pair.src.put("dir/b.txt", "beta", mtime=100.0)
    report = await pair.run()
    assert report.status == "completed", report
    assert (report.files_copied, report.bytes_copied) == (2, 9)
    assert pair.dst.files() == pair.src.files()
    before = pair.writes()
    again = await pair.run()
    assert (again.files_copied, again.files_skipped, pair.writes()) == (0, 2, before)


async def test_copy_keeps_destination_only_files_and_mirror_deletes_them(pair: Pair) -> None:
    for i in range(4):
        pair.src.put(f"f{i}", "x", mtime=1.0)
    pair.dst.put("extra", "keep me", mtime=1.0)
    await pair.run(mode=Mode.COPY)
    assert "extra" in pair.dst.files()
    report = await pair.run(mode=Mode.MIRROR)
    assert report.files_deleted == 1
    assert pair.dst.files() == pair.src.files()
    assert [d.action for d in report.decisions] == ["delete-destination"]


async def test_first_run_equal_files_are_recorded_not_copied(tmp_path: Path) -> None:
    pair = Pair(tmp_path, hashes=False)
    pair.src.put("same", "data", mtime=50.0)
    pair.dst.put("same", "data", mtime=50.0)
    pair.src.put("differs", "new!", mtime=60.0)
    pair.dst.put("differs", "old!", mtime=10.0)
    report = await pair.run()
    assert [d.path for d in report.decisions] == ["differs"]
    assert pair.dst.get("differs") == b"new!"


async def test_checksum_compares_content_not_mtime(tmp_path: Path) -> None:
    pair = Pair(tmp_path, hashes=False)
    pair.src.put("f", "same", mtime=1.0)
    pair.dst.put("f", "same", mtime=999.0)
    pair.src.put("g", "aaaa", mtime=5.0)
    pair.dst.put("g", "bbbb", mtime=5.0)
    report = await pair.run(checksum=True)
    assert [d.path for d in report.decisions] == ["g"]
    assert pair.dst.get("g") == b"aaaa"


async def test_bisync_carries_changes_both_ways(pair: Pair) -> None:
    pair.src.put("a", "1", mtime=1.0)
    pair.dst.put("b", "2", mtime=1.0)
    first = await pair.run(mode=Mode.BISYNC)
    assert first.status == "completed"
    assert pair.src.files() == pair.dst.files() == {"a": b"1", "b": b"2"}
    pair.src.put("a", "1 edited", mtime=2.0)
    pair.dst.put("c", "3", mtime=2.0)
    del pair.dst.objects["b"]
    pair.dst.put("d", "4", mtime=2.0)  # keeps the deletion under the guard
    report = await pair.run(mode=Mode.BISYNC)
    actions = {d.path: d.action for d in report.decisions}
    assert actions == {
        "a": "copy-to-destination",
        "b": "delete-source",
        "c": "copy-to-source",
        "d": "copy-to-source",
    }
    assert pair.src.files() == pair.dst.files() == {"a": b"1 edited", "c": b"3", "d": b"4"}
    assert (await pair.run(mode=Mode.BISYNC)).decisions == []


async def test_a_change_beats_a_deletion(pair: Pair) -> None:
    for name in "abcd":
        pair.src.put(name, name, mtime=1.0)
    await pair.run(mode=Mode.BISYNC)
    del pair.src.objects["a"]
    pair.dst.put("a", "edited on the destination", mtime=2.0)
    report = await pair.run(mode=Mode.BISYNC)
    assert [(d.path, d.action) for d in report.decisions] == [("a", "copy-to-source")]
    assert "a change beats a deletion" in report.decisions[0].reason
    assert pair.src.get("a") == b"edited on the destination"


async def _conflict(pair: Pair, policy: ConflictPolicy) -> RunReport:
    pair.src.put("doc.txt", "base", mtime=1.0)
    pair.src.put("other", "o", mtime=1.0)
    await pair.run(mode=Mode.BISYNC)
    pair.src.put("doc.txt", "source edit", mtime=10.0)
    pair.dst.put("doc.txt", "destination edit (newer)", mtime=20.0)
    return await pair.run(mode=Mode.BISYNC, conflict=policy)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (ConflictPolicy.NEWER, b"destination edit (newer)"),
        (ConflictPolicy.SOURCE, b"source edit"),
        (ConflictPolicy.DESTINATION, b"destination edit (newer)"),
    ],
)
async def test_conflict_policies_pick_a_winner(
    pair: Pair, policy: ConflictPolicy, expected: bytes
) -> None:
    report = await _conflict(pair, policy)
    assert report.conflicts == 1
    assert f"conflict policy {policy.value}" in report.decisions[0].reason
    assert pair.src.get("doc.txt") == pair.dst.get("doc.txt") == expected


async def test_keep_both_renames_the_loser_on_both_sides(pair: Pair) -> None:
    report = await _conflict(pair, ConflictPolicy.KEEP_BOTH)
    assert report.status == "completed", report
    assert pair.src.files() == pair.dst.files()
    files = pair.src.files()
    (renamed,) = [p for p in files if p.startswith("doc.conflict-")]
    assert re.fullmatch(r"doc\.conflict-\d{8}T\d{6}Z-source\.txt", renamed)
    assert files[renamed] == b"source edit"
    assert files["doc.txt"] == b"destination edit (newer)"
    assert (await pair.run(mode=Mode.BISYNC)).decisions == []


async def test_manual_conflicts_wait_for_a_resolution(pair: Pair) -> None:
    report = await _conflict(pair, ConflictPolicy.MANUAL)
    assert [d.action for d in report.decisions] == ["conflict"]
    assert pair.src.get("doc.txt") == b"source edit"
    assert pair.dst.get("doc.txt") == b"destination edit (newer)"
    again = await pair.run(mode=Mode.BISYNC, conflict=ConflictPolicy.MANUAL)
    assert again.conflicts == 1 and again.files_copied == 0
    with StateStore(pair.state) as state:
        assert [c.path for c in state.conflicts()] == ["doc.txt"]
        assert state.resolve("doc.txt", "source")
        assert not state.resolve("nope", "source")
    resolved = await pair.run(mode=Mode.BISYNC, conflict=ConflictPolicy.MANUAL)
    assert "resolved by hand: keep source" in resolved.decisions[0].reason
    assert pair.dst.get("doc.txt") == b"source edit"
    with StateStore(pair.state) as state:
        assert state.conflicts() == []


async def test_deletion_guard_stops_before_any_change(pair: Pair) -> None:
    for i in range(10):
        pair.src.put(f"f{i}", "x", mtime=1.0)
    await pair.run(mode=Mode.MIRROR)
    for i in range(6):
        del pair.src.objects[f"f{i}"]
    pair.src.put("new", "n", mtime=1.0)
    report = await pair.run(mode=Mode.MIRROR)
    assert report.status == "guarded"
    assert "6 of 10" in report.message and "--max-delete" in report.message
    assert len(pair.dst.files()) == 10 and "new" not in pair.dst.files()
    allowed = await pair.run(mode=Mode.MIRROR, max_delete=100)
    assert allowed.status == "completed" and pair.dst.files() == pair.src.files()


async def test_bisync_guard_watches_both_sides(pair: Pair) -> None:
    for i in range(4):
        pair.src.put(f"f{i}", "x", mtime=1.0)
    await pair.run(mode=Mode.BISYNC)
    pair.dst.objects.clear()
    report = await pair.run(mode=Mode.BISYNC)
    assert report.status == "guarded" and "on the source" in report.message
    assert len(pair.src.files()) == 4


async def test_dry_run_changes_nothing_and_keeps_no_state(pair: Pair) -> None:
    pair.src.put("a", "1", mtime=1.0)
    report = await pair.run(dry_run=True)
    assert report.dry_run and report.files_copied == 1
    assert [d.action for d in report.decisions] == ["copy-to-destination"]
    assert pair.dst.files() == {} and pair.writes() == 0
    assert not _exists(pair.state)


async def test_throttling_is_retried(pair: Pair) -> None:
    pair.src.put("a", "1", mtime=1.0)
    pair.dst.fail("write", "a", StoreThrottledError("slow down"), times=3)
    report = await pair.run()
    assert report.status == "completed" and pair.dst.get("a") == b"1"
    assert pair.dst.calls["write"] == 4


async def test_integrity_errors_are_retried_then_reported(pair: Pair) -> None:
    pair.src.put("a", "1", mtime=1.0)
    pair.src.put("b", "2", mtime=1.0)
    pair.dst.fail("write", "a", IntegrityError("md5 mismatch", path="a"), times=99)
    report = await pair.run(retries=2)
    assert report.status == "failed"
    assert report.errors == [
        {
            "path": "a",
            "action": "copy-destination",
            "error": "IntegrityError",
            "message": "md5 mismatch",
        }
    ]
    assert pair.dst.files() == {"b": b"2"}
    assert pair.dst.calls["write"] == 3 + 1


async def test_auth_errors_are_not_retried_and_fail_the_run(pair: Pair) -> None:
    pair.src.fail("list", "*", StoreAuthError("bad key", url="memory://src"))
    report = await pair.run()
    assert report.status == "failed" and "StoreAuthError" in report.message


async def test_empty_directories_are_created_and_removed(pair: Pair) -> None:
    await pair.src.make_dir("empty")
    await pair.run(mode=Mode.MIRROR)
    assert pair.dst.objects["empty"].is_dir
    pair.src.put("empty/now-a-file", "f", mtime=1.0)
    del pair.src.objects["empty"]
    pair.src.put("x", "1", mtime=1.0)
    pair.src.put("y", "1", mtime=1.0)
    report = await pair.run(mode=Mode.MIRROR)
    assert report.status == "completed", report
    assert "empty/now-a-file" in pair.dst.files()


async def test_bandwidth_limit_and_progress(pair: Pair) -> None:
    pair.src.put("big", b"x" * 200_000, mtime=1.0)
    seen: list[Any] = []
    opts = SyncOptions("memory://src", "memory://dst", state_path=pair.state, bandwidth=1_000_000)
    report = await run_sync(opts, connectors=(pair.src, pair.dst), progress=seen.append)
    assert report.to_dict()["duration"] >= 0.15  # 200 kB at 1 MB/s
    assert seen[-1].phase == "done"
    assert max(p.bytes_done for p in seen) == 200_000


async def test_a_multipart_upload_resumes_within_a_run_and_in_the_next(pair: Pair) -> None:
    pair.dst.part_size = 1000
    data = bytes(range(256)) * 20  # 5,120 bytes: 6 parts
    pair.src.put("big.bin", data, mtime=3.0)
    pair.dst.fail("part", "big.bin", StoreUnavailableError("reset"), times=1)
    report = await pair.run()
    assert report.status == "completed" and pair.dst.get("big.bin") == data
    assert pair.dst.read_from["big.bin"] == [0, 1000]  # the retry went on from part 2

    pair.src.put("big.bin", data[::-1], mtime=4.0)
    pair.dst.fail("part", "big.bin", StoreAuthError("token expired"), times=1)
    broken = await pair.run()
    assert broken.status == "failed" and pair.dst.get("big.bin") == data  # nothing partial
    with StateStore(pair.state) as state:
        assert list(state.journal()) == [("big.bin", "source>destination")]
    resumed = await pair.run()
    assert resumed.status == "completed" and pair.dst.get("big.bin") == data[::-1]
    assert pair.dst.read_from["big.bin"][-1] == 1000
    with StateStore(pair.state) as state:
        assert state.journal() == {}
    assert pair.dst.uploads == {}


async def test_state_of_another_pair_is_not_used(pair: Pair) -> None:
    pair.src.put("a", "1", mtime=1.0)
    await pair.run()
    other = SyncOptions("memory://elsewhere", "memory://dst", state_path=pair.state, dry_run=True)
    dry = await run_sync(other, connectors=(pair.src, pair.dst))
    assert dry.files_skipped == 1 and dry.decisions == []  # equal, found by comparing
    moved = SyncOptions("memory://elsewhere", "memory://dst", state_path=pair.state)
    await run_sync(moved, connectors=(pair.src, pair.dst))
    with StateStore(pair.state) as state:
        assert [path for _, path, _ in state.bases()] == ["a", "a"]


def test_keep_both_names() -> None:
    import datetime

    from sidecar.sync._plan import conflict_name

    now = datetime.datetime(2026, 12, 7, 6, 43, 0, tzinfo=datetime.UTC)
    assert conflict_name("a/b/report.tar.gz", "source", now) == (
        "a/b/report.tar.conflict-20261207T064300Z-source.gz"
    )
    assert conflict_name(".bashrc", "destination", now) == (
        ".bashrc.conflict-20261207T064300Z-destination"
    )
    assert conflict_name("Makefile", "source", now) == "Makefile.conflict-20261207T064300Z-source"


async def test_one_run_of_a_job_at_a_time(pair: Pair) -> None:
    pair.src.put("a", "1", mtime=1.0)
    with StateStore(pair.state, exclusive=True):
        busy = await pair.run()
        assert busy.status == "failed" and "another run of this job" in busy.message
        assert pair.writes() == 0
        assert (await pair.run(dry_run=True)).status == "completed"  # a dry run takes no lock
    assert (await pair.run()).files_copied == 1


async def test_a_failed_write_is_not_taken_for_an_edit_on_that_side(pair: Pair) -> None:
    for name in "abcd":
        pair.src.put(name, name * 4, mtime=1.0)
    await pair.run(mode=Mode.BISYNC)
    pair.src.put("a", "edited on the source", mtime=2.0)
    pair.dst.corrupt("a", times=2)  # both attempts of the run with --retries 1
    failed = await pair.run(mode=Mode.BISYNC, retries=1)
    assert failed.status == "failed" and failed.errors[0]["error"] == "IntegrityError"
    assert pair.dst.get("a") == b"edited on the sourc?"  # damaged, and left there by the store
    again = await pair.run(mode=Mode.BISYNC)
    assert [(d.path, d.action) for d in again.decisions] == [("a", "copy-to-destination")]
    assert "did not finish" in again.decisions[0].reason
    assert pair.src.get("a") == pair.dst.get("a") == b"edited on the source"
