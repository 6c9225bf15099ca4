"""The engine against real directories (file://): copy, mirror and bisync with
edits, deletions, renames and conflicts on both sides under every policy; the
deletion guard; dry runs; unchanged re-runs; awkward names; empty
directories; throttling injected by a wrapper connector."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sidecar.sync import ConflictPolicy, Mode, RunReport, SyncOptions, run_sync
from sidecar.sync.connectors import open_connector
from sidecar.sync.connectors._base import (
    Connector,
    Entry,
    ResumeToken,
    SourceOpener,
    StoreThrottledError,
)


def put(root: Path, rel: str, data: str | bytes, mtime: float | None = None) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path (what a user sees)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def dirs(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_dir()}


def read_state(path: str) -> bytes | None:
    """The state database's bytes (None: there is none)."""
    return Path(path).read_bytes() if Path(path).exists() else None


def stamps(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*")}


class Dirs:
    """A source and a destination directory, and one job's state."""

    def __init__(self, tmp_path: Path) -> None:
        self.src = tmp_path / "src"
        self.dst = tmp_path / "dst"
        self.src.mkdir()
        self.dst.mkdir()
        self.state = str(tmp_path / "state" / "job.db")

    def options(self, **options: Any) -> SyncOptions:
        return SyncOptions(
            self.src.as_uri(),
            self.dst.as_uri(),
            state_path=self.state,
            retry_delay=0.001,
            **options,
        )

    async def run(self, **options: Any) -> RunReport:
        report = await run_sync(self.options(**options))
        assert report.status in ("completed", "guarded"), report
        return report


@pytest.fixture
def pair(tmp_path: Path) -> Dirs:
    return Dirs(tmp_path)


async def test_copy_then_an_unchanged_rerun_transfers_nothing(pair: Dirs) -> None:
    for i in range(20):
        put(pair.src, f"d{i % 3}/f{i}.txt", f"content {i}")
    first = await pair.run()
    size = sum(len(f"content {i}") for i in range(20))
    assert (first.files_copied, first.bytes_copied) == (20, size)
    assert tree(pair.dst) == tree(pair.src)
    before = stamps(pair.dst)
    again = await pair.run()
    assert (again.files_copied, again.files_skipped, again.decisions) == (0, 20, [])
    assert stamps(pair.dst) == before  # nothing rewritten
    assert not [p for p in pair.dst.rglob("*") if ".eco-partial" in p.name]


async def test_mirror_follows_edits_deletes_and_renames(pair: Dirs) -> None:
    for name in "abcdefgh":
        put(pair.src, f"{name}.txt", name * 3)
    put(pair.dst, "stray.txt", "not on the source")
    await pair.run(mode=Mode.COPY)
    assert "stray.txt" in tree(pair.dst)
    put(pair.src, "a.txt", "edited", mtime=2_000_000_000)
    (pair.src / "b.txt").unlink()
    (pair.src / "renamed").mkdir()
    (pair.src / "c.txt").rename(pair.src / "renamed" / "c.txt")
    report = await pair.run(mode=Mode.MIRROR)
    assert tree(pair.dst) == tree(pair.src)
    actions = {(d.path, d.action) for d in report.decisions}
    assert actions == {
        ("a.txt", "copy-to-destination"),
        ("b.txt", "delete-destination"),
        ("c.txt", "delete-destination"),
        ("renamed/c.txt", "copy-to-destination"),
        ("stray.txt", "delete-destination"),
    }


async def test_awkward_names_and_empty_directories(pair: Dirs) -> None:
    long_dir = "/".join(["d" * 60] * 10)  # a path of 610 characters
    names = [
        "with space/and more spaces .txt",
        "ünïcödé/日本語のファイル.txt",
        "emoji 🎉.bin",
        f"{long_dir}/{'n' * 200}.txt",
        "-starts-with-dash",
        "percent%20and#hash?.txt",
    ]
    for i, name in enumerate(names):
        put(pair.src, name, f"{i}" * (i + 1))
    (pair.src / "empty" / "nested").mkdir(parents=True)
    (pair.src / "also empty").mkdir()
    report = await pair.run(mode=Mode.MIRROR)
    assert tree(pair.dst) == tree(pair.src)
    assert {"empty/nested", "also empty"} <= dirs(pair.dst)
    assert report.files_copied == len(names) + 2
    # An empty directory gone from the source goes from the destination.
    (pair.src / "also empty").rmdir()
    for i in range(3):
        put(pair.src, f"pad{i}", "x")  # keeps the deletion under the guard
    await pair.run(mode=Mode.MIRROR)
    assert "also empty" not in dirs(pair.dst)
    # One that is no longer empty is not deleted, whatever the listing said.
    put(pair.src, "empty/nested/now.txt", "now")
    await pair.run(mode=Mode.MIRROR)
    assert tree(pair.dst) == tree(pair.src)
    assert (await pair.run(mode=Mode.MIRROR)).decisions == []


async def test_bisync_carries_edits_deletes_and_renames_both_ways(pair: Dirs) -> None:
    for name in "abcdefghij":
        put(pair.src, f"{name}.txt", name)
    await pair.run(mode=Mode.BISYNC)
    assert tree(pair.dst) == tree(pair.src)
    put(pair.src, "a.txt", "a edited on the source")
    put(pair.dst, "b.txt", "b edited on the destination")
    (pair.src / "c.txt").unlink()
    (pair.dst / "d.txt").unlink()
    (pair.src / "e.txt").rename(pair.src / "e-renamed.txt")
    (pair.dst / "f.txt").rename(pair.dst / "f-renamed.txt")
    put(pair.dst, "new/on-destination.txt", "new")
    report = await pair.run(mode=Mode.BISYNC)
    assert report.conflicts == 0
    expected = {
        "a.txt": b"a edited on the source",
        "b.txt": b"b edited on the destination",
        "e-renamed.txt": b"e",
        "f-renamed.txt": b"f",
        "g.txt": b"g",
        "h.txt": b"h",
        "i.txt": b"i",
        "j.txt": b"j",
        "new/on-destination.txt": b"new",
    }
    assert tree(pair.src) == tree(pair.dst) == expected
    assert (await pair.run(mode=Mode.BISYNC)).decisions == []


async def _both_sides_edit(pair: Dirs, policy: ConflictPolicy) -> RunReport:
    for name in ("doc.txt", "keep.txt", "x.txt", "y.txt"):
        put(pair.src, name, f"base {name}")
    await pair.run(mode=Mode.BISYNC)
    put(pair.src, "doc.txt", "the source's edit", mtime=1_900_000_000)
    put(pair.dst, "doc.txt", "the destination's edit, later", mtime=1_900_000_100)
    # A change beats a deletion, whatever the policy.
    (pair.src / "keep.txt").unlink()
    put(pair.dst, "keep.txt", "edited where the other side deleted it")
    return await pair.run(mode=Mode.BISYNC, conflict=policy)


@pytest.mark.parametrize("policy", list(ConflictPolicy))
async def test_bisync_conflicts_under_each_policy(pair: Dirs, policy: ConflictPolicy) -> None:
    report = await _both_sides_edit(pair, policy)
    assert report.conflicts == 1
    src, dst = tree(pair.src), tree(pair.dst)
    assert src["keep.txt"] == dst["keep.txt"] == b"edited where the other side deleted it"
    if policy is ConflictPolicy.MANUAL:
        assert src["doc.txt"] == b"the source's edit"
        assert dst["doc.txt"] == b"the destination's edit, later"
        assert [d.action for d in report.decisions if d.path == "doc.txt"] == ["conflict"]
        return
    assert src == dst
    if policy is ConflictPolicy.KEEP_BOTH:
        (kept,) = [p for p in src if p.startswith("doc.conflict-")]
        assert re.fullmatch(r"doc\.conflict-\d{8}T\d{6}Z-source\.txt", kept)
        assert src[kept] == b"the source's edit"
        assert src["doc.txt"] == b"the destination's edit, later"
    else:
        winner = (
            b"the source's edit"
            if policy is ConflictPolicy.SOURCE
            else (b"the destination's edit, later")
        )
        assert src["doc.txt"] == winner
    assert (await pair.run(mode=Mode.BISYNC, conflict=policy)).decisions == []


async def test_manual_conflict_resolved_then_applied(pair: Dirs) -> None:
    from sidecar.sync import StateStore

    await _both_sides_edit(pair, ConflictPolicy.MANUAL)
    with StateStore(pair.state) as state:
        assert [c.path for c in state.conflicts()] == ["doc.txt"]
        state.resolve("doc.txt", "both")
    report = await pair.run(mode=Mode.BISYNC, conflict=ConflictPolicy.MANUAL)
    assert "resolved by hand: keep both" in report.decisions[0].reason
    assert tree(pair.src) == tree(pair.dst)
    assert len([p for p in tree(pair.src) if p.startswith("doc.conflict-")]) == 1
    with StateStore(pair.state) as state:
        assert state.conflicts() == []


async def test_deletion_guard_stops_before_anything_changes(pair: Dirs) -> None:
    for i in range(10):
        put(pair.src, f"f{i}", str(i))
    await pair.run(mode=Mode.MIRROR)
    for i in range(7):
        (pair.src / f"f{i}").unlink()
    put(pair.src, "f9", "edited")
    before = stamps(pair.dst)
    report = await pair.run(mode=Mode.MIRROR)
    assert report.status == "guarded"
    assert "delete 7 of 10 entries on the destination" in report.message
    assert "--max-delete" in report.message
    assert stamps(pair.dst) == before
    assert (await pair.run(mode=Mode.MIRROR, max_delete=80)).status == "completed"
    assert tree(pair.dst) == tree(pair.src)


async def test_dry_run_changes_nothing(pair: Dirs) -> None:
    for i in range(5):
        put(pair.src, f"f{i}", str(i))
    put(pair.dst, "only-here", "x")
    before = (stamps(pair.src), stamps(pair.dst))
    report = await pair.run(mode=Mode.MIRROR, dry_run=True, max_delete=100)
    assert report.dry_run and report.files_copied == 5 and report.files_deleted == 1
    assert "nothing changed" in report.message
    assert (stamps(pair.src), stamps(pair.dst)) == before
    assert read_state(pair.state) is None
    # A dry run after a real one reads the state and still writes nothing.
    await pair.run(mode=Mode.MIRROR, max_delete=100)
    state_before = read_state(pair.state)
    put(pair.src, "f0", "changed")
    dry = await pair.run(mode=Mode.MIRROR, dry_run=True)
    assert [(d.path, d.action) for d in dry.decisions] == [("f0", "copy-to-destination")]
    assert read_state(pair.state) == state_before
    assert tree(pair.dst)["f0"] == b"0"


class Throttled:
    """A connector that answers its first ``times`` writes with a throttle."""

    def __init__(self, inner: Connector, times: int) -> None:
        self.inner = inner
        self.url = inner.url
        self.listed_hashes = inner.listed_hashes
        self.left = times
        self.writes = 0

    async def __aenter__(self) -> Throttled:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.inner.close()

    def list(self) -> AsyncIterator[Entry]:
        return self.inner.list()

    async def stat(self, path: str) -> Entry | None:
        return await self.inner.stat(path)

    def read(self, path: str, offset: int = 0) -> AsyncIterator[bytes]:
        return self.inner.read(path, offset)

    async def write(
        self,
        path: str,
        source: SourceOpener,
        size: int,
        *,
        mtime: float,
        resume: ResumeToken | None = None,
        checkpoint: Callable[[ResumeToken], Awaitable[None]] | None = None,
    ) -> Entry:
        self.writes += 1
        if self.left > 0:
            self.left -= 1
            raise StoreThrottledError("SlowDown (injected)", url=self.url, path=path)
        return await self.inner.write(
            path, source, size, mtime=mtime, resume=resume, checkpoint=checkpoint
        )

    async def delete(self, path: str) -> None:
        await self.inner.delete(path)

    async def make_dir(self, path: str) -> None:
        await self.inner.make_dir(path)

    async def hash(self, path: str, kind: str) -> str | None:
        return await self.inner.hash(path, kind)


async def test_throttling_is_retried_with_backoff(pair: Dirs) -> None:
    for i in range(4):
        put(pair.src, f"f{i}", str(i) * 100)
    options = pair.options(transfers=2)
    async with open_connector(options.source) as src, open_connector(options.destination) as dst:
        throttled = Throttled(dst, times=6)
        report = await run_sync(options, connectors=(src, throttled))
    assert report.status == "completed" and report.errors == []
    assert throttled.writes == 4 + 6
    assert tree(pair.dst) == tree(pair.src)


async def test_throttling_past_the_retries_is_an_error_in_the_report(pair: Dirs) -> None:
    put(pair.src, "f", "x")
    options = pair.options(retries=2)
    async with open_connector(options.source) as src, open_connector(options.destination) as dst:
        report = await run_sync(options, connectors=(src, Throttled(dst, times=99)))
    assert report.status == "failed"
    assert report.errors[0]["error"] == "StoreThrottledError"
    assert tree(pair.dst) == {}


async def test_checksum_finds_a_change_that_kept_size_and_mtime(pair: Dirs) -> None:
    put(pair.src, "f", "aaaa", mtime=1_700_000_000)
    put(pair.dst, "f", "bbbb", mtime=1_700_000_000)
    assert (await pair.run()).decisions == []  # size and mtime agree: same by default
    # That job's state now says both sides are as last seen (and --checksum
    # trusts a side unchanged since); a fresh job compares content.
    fresh = Dirs.__new__(Dirs)
    fresh.src, fresh.dst, fresh.state = pair.src, pair.dst, pair.state + ".fresh"
    report = await fresh.run(checksum=True)
    assert [(d.path, d.action) for d in report.decisions] == [("f", "copy-to-destination")]
    assert tree(pair.dst)["f"] == b"aaaa"
