"""The engine at scale: a listing planned in bounded memory (through the
run's scratch database), the report's cap on decisions, and a store's
connection budget shared by concurrent runs in one process."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from sidecar.sync import Mode, RunReport, SyncOptions, run_sync
from sidecar.sync._plan import MAX_DECISIONS
from sidecar.sync.connectors._base import Entry, ResumeToken, SourceOpener
from sidecar.sync.connectors.memory import MemoryConnector

#: Entries per side for the memory test (about 8 s for two runs here, under tracemalloc).
ENTRIES = 60_000

#: What one listed entry costs held in memory as today's planners hold it
#: (an Entry with an MD5 and an ETag in a dict by path; measured: ~580 bytes).
HELD_ENTRY_BYTES = 500


class Synthetic(MemoryConnector):
    """Lists ``count`` made-up entries without storing them (so the test
    measures the engine, not the fake store); every entry is the same on
    each side, with an MD5 and an ETag as an object store lists them."""

    def __init__(self, url: str, count: int) -> None:
        super().__init__(url=url)
        self.count = count

    async def list(self) -> AsyncIterator[Entry]:
        for i in range(self.count):
            yield Entry(
                f"dir{i % 997:03d}/object-{i:09d}.bin",
                4096,
                1_700_000_000.0 + i,
                {"md5": f"{i:032x}"},
                f'"{i:032x}"',
            )


async def _measured(
    options: SyncOptions, pair: tuple[Synthetic, Synthetic]
) -> tuple[RunReport, int, float]:
    tracemalloc.reset_peak()
    started = time.perf_counter()
    report = await run_sync(options, connectors=pair)
    return report, tracemalloc.get_traced_memory()[1], time.perf_counter() - started


async def test_a_large_listing_is_planned_in_bounded_memory(tmp_path: Path) -> None:
    """Both sides equal (every path recorded, nothing copied), then again
    with everything unchanged against the state: Python's peak stays a
    fraction of what holding the two listings would take."""
    options = SyncOptions("memory://big-a", "memory://big-b", state_path=str(tmp_path / "job.db"))
    pair = (Synthetic("memory://big-a", ENTRIES), Synthetic("memory://big-b", ENTRIES))
    held = 2 * ENTRIES * HELD_ENTRY_BYTES  # 60 MB at 60,000 a side
    bound = 12 * 1024 * 1024
    assert bound * 4 < held
    tracemalloc.start()
    try:
        first, first_peak, first_took = await _measured(options, pair)
        again, again_peak, again_took = await _measured(options, pair)
    finally:
        tracemalloc.stop()
    assert (first.status, first.files_copied, first.files_skipped) == ("completed", 0, ENTRIES)
    assert (again.status, again.files_copied, again.files_skipped) == ("completed", 0, ENTRIES)
    assert again.decisions == []
    assert first_peak < bound, f"first run: peak {first_peak / 1e6:.1f} MB ({first_took:.1f} s)"
    assert again_peak < bound, f"unchanged run: peak {again_peak / 1e6:.1f} MB ({again_took:.1f} s)"
    # The scratch file is gone; the state and its lock stay.
    assert not [name for name in _names(tmp_path) if name.endswith(".scratch")], _names(tmp_path)


async def test_the_report_keeps_the_first_decisions_and_counts_the_rest(tmp_path: Path) -> None:
    src, dst = MemoryConnector("memory://many"), MemoryConnector("memory://none")
    extra = 25
    for i in range(MAX_DECISIONS + extra):
        src.put(f"f{i:06d}", b"", mtime=1.0)
    state = tmp_path / "job.db"
    options = SyncOptions(
        "memory://many", "memory://none", state_path=str(state), dry_run=True, mode=Mode.MIRROR
    )
    report = await run_sync(options, connectors=(src, dst))
    assert report.status == "completed", report.message
    assert len(report.decisions) == MAX_DECISIONS
    assert report.decisions_truncated == extra
    assert report.files_copied == MAX_DECISIONS + extra  # the counts are whole
    assert report.decisions[0].path == "f000000"  # in path order
    assert report.to_dict()["decisions_truncated"] == extra
    # A dry run leaves nothing beside the state: no state, no scratch.
    assert _names(tmp_path) == []


class Counting(MemoryConnector):
    """A store whose writes take a while and count how many are in flight."""

    def __init__(self, url: str) -> None:
        super().__init__(url=url)
        self.in_flight = 0
        self.peak = 0

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
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(0.005)
            return await super().write(
                path, source, size, mtime=mtime, resume=resume, checkpoint=checkpoint
            )
        finally:
            self.in_flight -= 1


async def _two_jobs(tmp_path: Path, store: Counting, max_connections: int | None) -> None:
    async def job(name: str) -> RunReport:
        src = MemoryConnector(f"memory://{name}")
        for i in range(40):
            src.put(f"{name}/f{i:02d}", b"x" * 10, mtime=1.0)
        options = SyncOptions(
            f"memory://{name}",
            store.url,
            state_path=str(tmp_path / f"{name}.db"),
            transfers=8,
            max_connections=max_connections,
        )
        return await run_sync(options, connectors=(src, store))

    reports = await asyncio.gather(job("one"), job("two"))
    assert [r.files_copied for r in reports] == [40, 40], [r.message for r in reports]


async def test_concurrent_runs_share_a_stores_connection_budget(tmp_path: Path) -> None:
    store = Counting("memory://shared")
    await _two_jobs(tmp_path, store, max_connections=3)
    assert store.peak == 3, store.peak  # the budget, used and never exceeded


async def test_without_a_tight_budget_each_run_has_its_own_transfers(tmp_path: Path) -> None:
    """The other side of the test above: the same two runs, the store's
    default budget (32), reach 2 x 8 writes at once."""
    store = Counting("memory://roomy")
    await _two_jobs(tmp_path, store, max_connections=None)
    assert store.peak == 16, store.peak


def _names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())
