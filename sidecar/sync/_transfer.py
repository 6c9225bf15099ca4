"""Carrying out a plan: transfers, deletions, conflict copies, with retries,
a bandwidth limit, resume tokens in the journal, and progress counters.

Each action runs in one of ``options.transfers`` workers (owned by a
TaskGroup, so a failure or a cancellation ends and awaits them all). State
is written after each verified step, so a run killed at any point and
started again redoes nothing that finished.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from sidecar.sync._limits import unlimited
from sidecar.sync._plan import DESTINATION, Action, other
from sidecar.sync._spec import Progress, RunReport, SyncOptions
from sidecar.sync._state import StateStore
from sidecar.sync.connectors._base import (
    MD5,
    Connector,
    Entry,
    IntegrityError,
    ResumeToken,
    Source,
    StoreThrottledError,
    StoreUnavailableError,
    SyncStoreError,
)

__all__ = ["Executor", "ProgressMeter", "TokenBucket", "with_retries"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Errors worth another attempt: the store asked us to wait, could not be
#: reached, or holds something other than what was sent.
RETRYABLE = (StoreThrottledError, StoreUnavailableError, IntegrityError)

#: The longest wait between two attempts, seconds.
MAX_DELAY = 10.0


async def with_retries(
    operation: Callable[[], Awaitable[T]], *, retries: int, delay: float, what: str
) -> T:
    """``operation()``, again after a throttle, an outage or an integrity
    mismatch, up to ``retries`` more times, waiting ``delay`` * 2^n with
    jitter (half to all of it) in between; the last error is raised."""
    attempt = 0
    while True:
        try:
            return await operation()
        except RETRYABLE as err:
            if attempt >= retries:
                raise
            wait = min(MAX_DELAY, delay * 2**attempt)
            wait = random.uniform(wait / 2, wait)
            log.info(
                "%s: %s (%s); retry %d of %d in %.2fs",
                what,
                type(err).__name__,
                err,
                attempt + 1,
                retries,
                wait,
            )
            attempt += 1
            await asyncio.sleep(wait)


class TokenBucket:
    """A job-wide bandwidth limit: ``take(n)`` waits until ``n`` bytes may pass.

    The bucket starts empty and holds up to a tenth of a second of bytes (a
    short burst); a take larger than what is there goes into debt, and the
    next taker waits it off, so the average rate holds whatever the chunk
    sizes are.
    """

    def __init__(self, rate: int) -> None:
        self.rate = float(rate)
        self._tokens = 0.0
        self._last = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self, n: int) -> None:
        async with self._lock:
            now = time.monotonic()
            self._tokens = min(self.rate / 10, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            if self._tokens < 0:
                await asyncio.sleep(-self._tokens / self.rate)


@dataclass(slots=True)
class ProgressMeter:
    """The run's counters; calls the callback at most every ``interval`` seconds
    (and always on a phase change or at the end)."""

    callback: Callable[[Progress], None] | None
    interval: float = 0.1
    phase: str = "listing"
    files_total: int = 0
    files_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    deletes_total: int = 0
    deletes_done: int = 0
    errors: int = 0
    listed: int = 0
    _last: float = 0.0

    def snapshot(self) -> Progress:
        return Progress(
            self.phase,
            self.files_total,
            self.files_done,
            self.bytes_total,
            self.bytes_done,
            self.deletes_total,
            self.deletes_done,
            self.errors,
            self.listed,
        )

    def emit(self, *, force: bool = False) -> None:
        if self.callback is None:
            return
        now = time.monotonic()
        if force or now - self._last >= self.interval:
            self._last = now
            self.callback(self.snapshot())

    def enter(self, phase: str) -> None:
        self.phase = phase
        self.emit(force=True)


@dataclass
class Executor:
    """Runs a plan's actions against the two connectors."""

    options: SyncOptions
    connectors: dict[str, Connector]
    state: StateStore
    report: RunReport
    meter: ProgressMeter
    journal: dict[tuple[str, str], tuple[int, float, ResumeToken | None]] = field(
        default_factory=dict
    )
    bucket: TokenBucket | None = None

    async def run(self, actions: Iterable[Action]) -> None:
        """Every action, ``options.transfers`` at a time."""
        queue: asyncio.Queue[Action] = asyncio.Queue()
        for action in actions:
            queue.put_nowait(action)
        workers = min(self.options.transfers, max(1, queue.qsize()))
        async with asyncio.TaskGroup() as group:
            for _ in range(workers):
                group.create_task(self._worker(queue))

    async def _worker(self, queue: asyncio.Queue[Action]) -> None:
        while not queue.empty():
            action = queue.get_nowait()
            try:
                await self._do(action)
            except SyncStoreError as err:
                self._error(action, err)
            self.meter.emit()

    def _error(self, action: Action, err: SyncStoreError) -> None:
        log.warning("%s %s: %s: %s", action.kind, action.path, type(err).__name__, err)
        self.report.errors.append(
            {
                "path": err.path or action.path,
                "action": f"{action.kind}-{action.side}" if action.kind != "record" else "record",
                "error": type(err).__name__,
                "message": str(err),
            }
        )
        self.meter.errors += 1

    async def _retry(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        return await with_retries(
            operation, retries=self.options.retries, delay=self.options.retry_delay, what=what
        )

    async def _do(self, action: Action) -> None:
        if action.kind == "copy":
            entry = action.entry(other(action.side))
            assert entry is not None
            written = await self._copy(other(action.side), action.side, entry, action.path)
            self._record(action.path, action.side, entry, written)
        elif action.kind == "mkdir":
            conn = self.connectors[action.side]
            await self._retry(lambda: conn.make_dir(action.path), f"mkdir {action.path}")
            made = await conn.stat(action.path)
            entry = action.entry(other(action.side))
            assert entry is not None
            self._record(action.path, action.side, entry, made or entry)
            self.meter.files_done += 1
            self.report.files_copied += 1
        elif action.kind == "delete":
            conn = self.connectors[action.side]
            await self._retry(lambda: conn.delete(action.path), f"delete {action.path}")
            self.state.forget(action.path)
            self.meter.deletes_done += 1
            self.report.files_deleted += 1
        elif action.kind == "keep-both":
            await self._keep_both(action)
        elif action.kind == "record":
            assert action.source is not None and action.destination is not None
            self.state.record(action.path, action.source, action.destination)
        elif action.kind == "forget":
            self.state.forget(action.path)
        elif action.kind == "queue":
            self.state.queue(action.path, action.source, action.destination)
        else:
            raise AssertionError(f"unknown action {action.kind!r}")

    def _record(self, path: str, written_side: str, read: Entry, written: Entry) -> None:
        if written_side == DESTINATION:
            self.state.record(path, read, written)
        else:
            self.state.record(path, written, read)

    async def _keep_both(self, action: Action) -> None:
        """The loser's version goes to ``action.rename`` on both sides, then the
        winner's over the loser's at the path; each step is recorded, so a
        run killed in between finds the finished steps equal and moves on."""
        winner, loser = action.side, other(action.side)
        lost, won = action.entry(loser), action.entry(winner)
        assert lost is not None and won is not None
        # An empty directory has no content to keep: only a file loser is renamed.
        if not lost.is_dir:
            kept_loser = await self._copy(loser, loser, lost, action.rename)
            kept_winner_side = await self._copy(loser, winner, lost, action.rename)
            self._record(action.rename, winner, kept_loser, kept_winner_side)
        if won.is_dir:
            await self._retry(lambda: self.connectors[loser].delete(action.path), "keep-both")
            await self.connectors[loser].make_dir(action.path)
            made = await self.connectors[loser].stat(action.path)
            self._record(action.path, loser, won, made or won)
        else:
            written = await self._copy(winner, loser, won, action.path)
            self._record(action.path, loser, won, written)

    async def _copy(self, from_side: str, to_side: str, entry: Entry, to_path: str) -> Entry:
        """One verified transfer of ``entry`` onto ``to_side`` at ``to_path``,
        resumed from the journal's token when the same source was in flight."""
        reader, writer = self.connectors[from_side], self.connectors[to_side]
        direction = f"{from_side}>{to_side}"
        journaled = self.journal.get((to_path, direction))
        token: ResumeToken | None = None
        if journaled is not None and journaled[0] == entry.size and journaled[1] == entry.mtime:
            token = journaled[2]
        self.state.begin(to_path, direction, entry.size, entry.mtime)
        if token is not None:
            self.state.checkpoint(to_path, direction, token)

        async def checkpoint(new: ResumeToken) -> None:
            nonlocal token
            token = new
            self.state.checkpoint(to_path, direction, new)

        def opener(offset: int) -> AsyncIterator[bytes]:
            return self._metered(reader.read(entry.path, offset))

        async def hash_here() -> str | None:
            # Bytes on this host, hashed where they lie before they are sent
            # (not metered: no network, nothing sent yet), inside the write,
            # which holds the reading store's slot already.
            return await unlimited(reader).hash(entry.path, MD5)

        source = Source(
            opener,
            listed_md5=entry.hashes.get(MD5),
            hash_here=hash_here if reader.local else None,
        )

        async def attempt() -> Entry:
            written = await writer.write(
                to_path, source, entry.size, mtime=entry.mtime, resume=token, checkpoint=checkpoint
            )
            if written.size != entry.size:
                raise IntegrityError(
                    f"wrote {entry.size} bytes, the store holds {written.size}",
                    url=writer.url,
                    path=to_path,
                )
            return written

        written = await self._retry(attempt, f"copy {entry.path} to the {to_side}")
        self.meter.files_done += 1
        self.report.files_copied += 1
        self.report.bytes_copied += entry.size
        return written

    async def _metered(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                if self.bucket is not None:
                    await self.bucket.take(len(chunk))
                self.meter.bytes_done += len(chunk)
                self.meter.emit()
                yield chunk
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
