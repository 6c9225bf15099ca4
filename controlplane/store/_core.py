"""The embedded MVCC engine behind `MemoryStore` and `SqliteStore`.

One engine implements the whole `Store` protocol: the multi-version state
(`_mvcc`), the lease table (`_leases`), the lease-expiry task, watches, and, when
given a `Journal`, group commit.

Write path. A write is evaluated and applied to the in-memory state at once, on the
event loop, so the next transaction sees it and compare-and-swap stays
serialisable. Without a journal it is also published at once. With a journal its
`Change` joins a queue; one flush task hands the whole queue to the journal (one
durable transaction), and while that runs, new writes queue up for the next flush.
Only when a flush is durable does the engine *publish* it: the visible revision
advances, watchers wake and the writers get their answers.

Read path. Reads and watches are served at the visible revision, never at the head:
the few applied-but-not-yet-durable revisions are undone through their history
batches, exactly like a read at an older revision. This keeps one copy of the state
(no overlay to merge), lets queued transactions build on each other, and can never
leak a write that a crash would lose.

A failed flush is fatal: the queued writes behind it were evaluated against its
effects, so none of them can be acknowledged; the store fails closed.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Self

from ._journal import Change, Journal, Snapshot
from ._leases import LeaseTable
from ._mvcc import MVCCState, tombstone, validate_compares, validate_ops
from ._protocol import (
    Compacted,
    Compare,
    DeleteOp,
    Event,
    EventType,
    KeyValue,
    LeaseNotFound,
    Op,
    PutOp,
    RangeResult,
    StoreClosed,
    TxnResult,
    WatchBatch,
)

__all__ = ["Engine"]

logger = logging.getLogger(__name__)

DEFAULT_HISTORY_LIMIT = 20_000


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    FAILED = "failed"  # a flush failed; close() still has to release resources
    CLOSING = "closing"
    CLOSED = "closed"


class Engine:
    """The shared implementation of the embedded stores (see the module docstring)."""

    # How often the expiry task looks for expired leases.
    expiry_interval = 0.1
    # How long close() lets queued writes become durable before cancelling the flush.
    close_grace = 5.0

    def __init__(
        self, *, history_limit: int = DEFAULT_HISTORY_LIMIT, journal: Journal | None = None
    ) -> None:
        if history_limit < 1:
            raise ValueError(f"history_limit must be >= 1, got {history_limit}")
        self._history_limit = history_limit
        self._journal = journal
        self._mvcc = MVCCState()
        self._leases = LeaseTable()
        self._state = _State.NEW
        self._failure: BaseException | None = None
        self._visible = 1  # the newest durable, published revision
        self._compact_target = 1  # explicit compaction not yet durable
        # Replaced on every publish (and set on close): a watcher grabs the current
        # one before it finds itself caught up, so it cannot miss a wake-up.
        self._changed = asyncio.Event()
        # Group commit: changes applied but not yet handed to the journal, the
        # futures of their writers, and the writers waiting on the flush in progress.
        self._queue: list[Change] = []
        self._queue_waiters: list[asyncio.Future[None]] = []
        self._inflight_waiters: list[asyncio.Future[None]] | None = None
        self._flush_wanted = asyncio.Event()
        self._draining = False
        self._flush_task: asyncio.Task[None] | None = None
        self._expiry_task: asyncio.Task[None] | None = None
        # start() and close() run one at a time; close() waits for a start in progress.
        self._lifecycle = asyncio.Lock()
        self._watch_count = 0

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Loads the journal (if any) and starts the expiry and flush tasks."""
        async with self._lifecycle:
            if self._state is _State.RUNNING:
                return
            if self._state is not _State.NEW:
                raise RuntimeError("a closed store cannot be started again")
            if self._journal is not None:
                try:
                    snap = await self._journal.load()
                except BaseException:
                    self._state = _State.CLOSED
                    await self._journal.close()
                    raise
                self._restore(snap)
                self._flush_task = asyncio.create_task(self._flush_loop(), name="store-flush")
            self._expiry_task = asyncio.create_task(self._expire_loop(), name="store-expiry")
            self._state = _State.RUNNING
        logger.info(
            "store started revision=%d compact_revision=%d keys=%d leases=%d",
            self._visible,
            self._mvcc.compact_revision,
            len(self._mvcc),
            len(self._leases),
        )

    def _restore(self, snap: Snapshot) -> None:
        self._mvcc.load(snap.revision, snap.compact_revision, snap.kvs, snap.history)
        self._visible = snap.revision
        self._compact_target = snap.compact_revision
        for record in snap.leases:
            self._leases.restore(record)
        for kv in snap.kvs:
            if kv.lease:
                if self._leases.get(kv.lease) is None:
                    logger.warning("key %r refers to missing lease %x", kv.key, kv.lease)
                self._leases.attach(kv.lease, kv.key)

    async def close(self) -> None:
        """Stops admitting work, ends every watch with StoreClosed, lets queued writes
        become durable (within `close_grace`), then releases everything. Idempotent."""
        async with self._lifecycle:
            if self._state is _State.CLOSED:
                return
            if self._state is _State.NEW:
                self._state = _State.CLOSED
                return
            self._state = _State.CLOSING
            self._notify()
            try:
                if self._expiry_task is not None:
                    await _stop(self._expiry_task, grace=0)
                if self._flush_task is not None:
                    self._draining = True
                    self._flush_wanted.set()
                    await _stop(self._flush_task, grace=self.close_grace)
                self._fail_waiters("store closed before the write was durable")
                if self._journal is not None:
                    await self._journal.close()
            finally:
                self._state = _State.CLOSED
        logger.info("store closed revision=%d", self._visible)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _check_running(self) -> None:
        if self._state is _State.RUNNING:
            return
        if self._state is _State.NEW:
            raise RuntimeError("store not started; call start() or use 'async with'")
        if self._failure is not None:
            raise StoreClosed(f"store failed: {self._failure!r}") from self._failure
        raise StoreClosed("store is closed")

    # -- reads -------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        """The newest durable revision; reads and watches never see past it."""
        return self._visible

    @property
    def compact_revision(self) -> int:
        return self._mvcc.compact_revision

    @property
    def watch_count(self) -> int:
        """Number of watches currently open (for diagnostics and tests)."""
        return self._watch_count

    def _read_revision(self, revision: int) -> int:
        self._check_running()
        if revision < 0:
            raise ValueError(f"revision must be >= 0, got {revision}")
        rev = revision or self._visible
        self._mvcc.check_readable(rev, self._visible)
        return rev

    async def get(self, key: str, *, revision: int = 0) -> KeyValue | None:
        rev = self._read_revision(revision)
        return self._mvcc.get(key, rev)

    async def range(self, prefix: str, *, revision: int = 0, limit: int = 0) -> RangeResult:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        rev = self._read_revision(revision)
        return RangeResult(self._mvcc.range(prefix, rev, limit), rev)

    # -- writes ------------------------------------------------------------------------

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        return (await self.txn((), (PutOp(key, value, lease),))).revision

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        result = await self.txn((), (DeleteOp(key, prefix),))
        return sum(1 for kv in result.prev_kvs if kv is not None)

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        self._check_running()
        validate_compares(compares)
        validate_ops(success)
        validate_ops(failure)
        succeeded = self._mvcc.evaluate(compares)
        ops = success if succeeded else failure
        # Everything that can fail is checked before anything changes.
        now = time.monotonic()
        for op in ops:
            if isinstance(op, PutOp) and op.lease and self._leases.live(op.lease, now) is None:
                raise LeaseNotFound(op.lease)
        events, prevs = self._mvcc.plan(ops, self._mvcc.revision + 1)
        change = self._apply(events) if events else None
        revision = self._mvcc.revision
        await self._durable(change)
        return TxnResult(succeeded, revision, prevs)

    def _apply(self, events: tuple[Event, ...], *, lease_deletes: tuple[int, ...] = ()) -> Change:
        """Applies one revision to memory (head) and keeps lease attachments in step."""
        revision = self._mvcc.revision + 1
        self._mvcc.apply(revision, events)
        for ev in events:
            if ev.prev_kv is not None and ev.prev_kv.lease:
                self._leases.detach(ev.prev_kv.lease, ev.kv.key)
            if ev.type is EventType.PUT and ev.kv.lease:
                self._leases.attach(ev.kv.lease, ev.kv.key)
        return Change(revision, events, lease_deletes=lease_deletes)

    async def compact(self, revision: int) -> None:
        self._check_running()
        if revision > self._visible:
            raise ValueError(f"cannot compact at {revision}: newer than the store")
        if revision <= max(self._mvcc.compact_revision, self._compact_target):
            return
        self._compact_target = revision
        if self._journal is None:
            self._mvcc.compact(revision)
            return
        await self._durable(Change(self._mvcc.revision))

    # -- leases ------------------------------------------------------------------------

    async def grant(self, ttl: float) -> int:
        self._check_running()
        if not ttl > 0:
            raise ValueError(f"lease ttl must be > 0, got {ttl}")
        lease = self._leases.grant(float(ttl), time.monotonic())
        await self._durable(Change(self._mvcc.revision, lease_puts=(self._leases.record(lease),)))
        return lease.id

    async def keepalive(self, lease_id: int) -> float:
        self._check_running()
        now = time.monotonic()
        lease = self._leases.live(lease_id, now)
        if lease is None:
            raise LeaseNotFound(lease_id)
        self._leases.renew(lease, now)
        await self._durable(Change(self._mvcc.revision, lease_puts=(self._leases.record(lease),)))
        return lease.ttl

    async def revoke(self, lease_id: int) -> None:
        self._check_running()
        await self._durable(self._revoke(lease_id))

    async def lease_ttl(self, lease_id: int) -> tuple[float, float]:
        self._check_running()
        now = time.monotonic()
        lease = self._leases.live(lease_id, now)
        if lease is None:
            raise LeaseNotFound(lease_id)
        return lease.ttl, lease.deadline - now

    def _revoke(self, lease_id: int) -> Change:
        """Drops the lease and deletes its keys as one revision (none if it has no keys)."""
        lease = self._leases.pop(lease_id)
        if lease is None:
            raise LeaseNotFound(lease_id)
        revision = self._mvcc.revision + 1
        events: list[Event] = []
        for key in sorted(lease.keys):
            prev = self._mvcc.current(key)
            if prev is not None:
                events.append(Event(EventType.DELETE, tombstone(key, revision), prev))
        if not events:
            return Change(self._mvcc.revision, lease_deletes=(lease_id,))
        return self._apply(tuple(events), lease_deletes=(lease_id,))

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(self.expiry_interval)
            if self._state is not _State.RUNNING:
                return
            pending: list[asyncio.Future[None]] = []
            for lease_id in self._leases.expired(time.monotonic()):
                change = self._revoke(lease_id)
                logger.info(
                    "lease expired lease=%x deleted_keys=%d revision=%d",
                    lease_id,
                    len(change.events),
                    change.revision,
                )
                fut = self._submit(change)
                if fut is not None:
                    pending.append(fut)
            if not pending:
                continue
            for result in await asyncio.gather(*pending, return_exceptions=True):
                if isinstance(result, BaseException):
                    logger.warning("lease expiry stopped: %r", result)
                    return

    # -- group commit ------------------------------------------------------------------

    async def _durable(self, change: Change | None) -> None:
        """Returns once ``change`` (just applied) and everything applied before it is
        durable and published. ``None``: nothing new, but what the caller has seen
        (the head) must be durable before it may be acknowledged."""
        fut = self._submit(change)
        if fut is not None:
            await fut

    def _submit(self, change: Change | None) -> asyncio.Future[None] | None:
        if self._journal is None:
            if change is not None:
                self._publish(self._mvcc.revision)
            return None
        if change is None and not self._queue and self._inflight_waiters is None:
            return None  # the head is already durable
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if change is not None:
            self._queue.append(change)
            self._queue_waiters.append(fut)
        elif self._queue:
            self._queue_waiters.append(fut)
        else:
            assert self._inflight_waiters is not None
            self._inflight_waiters.append(fut)
        self._flush_wanted.set()
        return fut

    async def _flush_loop(self) -> None:
        assert self._journal is not None
        while True:
            if not self._queue and not self._queue_waiters:
                if self._draining:
                    return
                self._flush_wanted.clear()
                await self._flush_wanted.wait()
                continue
            changes, waiters = self._queue, self._queue_waiters
            self._queue, self._queue_waiters = [], []
            self._inflight_waiters = waiters
            # Everything applied so far is either durable already or in this flush.
            head = self._mvcc.revision
            compact_to = self._compaction_point(head)
            try:
                await self._journal.flush(changes, head, compact_to)
            except asyncio.CancelledError:
                self._fail_waiters("store closed before the write was durable")
                raise
            except Exception as exc:
                logger.exception("store flush failed; the store is now closed for use")
                self._failure = exc
                if self._state is _State.RUNNING:
                    self._state = _State.FAILED
                self._fail_waiters(f"store failed: {exc!r}")
                self._notify()
                return
            self._inflight_waiters = None
            self._publish(head)
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    def _compaction_point(self, head: int) -> int:
        return max(
            self._mvcc.compact_revision, self._compact_target, head - self._history_limit + 1
        )

    def _publish(self, revision: int) -> None:
        self._visible = revision
        self._mvcc.compact(self._compaction_point(revision))
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _fail_waiters(self, message: str) -> None:
        waiters = self._queue_waiters + (self._inflight_waiters or [])
        self._queue_waiters, self._inflight_waiters = [], None
        for w in waiters:
            if not w.done():
                # One exception object per waiter: they are raised in different tasks.
                exc = StoreClosed(message)
                exc.__cause__ = self._failure
                w.set_exception(exc)

    # -- watches -----------------------------------------------------------------------

    def watch(
        self, prefix: str, *, start_revision: int = 0, progress_interval: float = 5.0
    ) -> AsyncGenerator[WatchBatch, None]:
        if start_revision < 0:
            raise ValueError(f"start_revision must be >= 0, got {start_revision}")
        if not progress_interval > 0:
            raise ValueError(f"progress_interval must be > 0, got {progress_interval}")
        # Resolved now, not at the first iteration: changes made between this call and
        # the first __anext__ are part of the watch.
        start = start_revision or self._visible + 1
        return self._watch(prefix, start, progress_interval)

    async def _watch(
        self, prefix: str, cursor: int, progress_interval: float
    ) -> AsyncGenerator[WatchBatch, None]:
        # The history is the queue: the cursor is the next revision to look at.
        loop = asyncio.get_running_loop()
        self._watch_count += 1
        try:
            last_sent = loop.time()
            while True:
                if self._state is not _State.RUNNING:
                    self._check_running()
                    raise StoreClosed("store is closed")
                if cursor < self._mvcc.compact_revision:
                    raise Compacted(self._mvcc.compact_revision)
                batch: WatchBatch | None = None
                visible = self._visible
                while cursor <= visible:
                    events = self._mvcc.events_at(cursor)
                    matched = tuple(ev for ev in events if ev.kv.key.startswith(prefix))
                    cursor += 1
                    if matched:
                        batch = WatchBatch(cursor - 1, matched)
                        break
                if batch is None:
                    # Caught up (cursor == visible + 1): wait for a publish or send progress.
                    changed = self._changed
                    remaining = last_sent + progress_interval - loop.time()
                    if remaining > 0:
                        try:
                            async with asyncio.timeout(remaining):
                                await changed.wait()
                        except TimeoutError:
                            pass
                        continue
                    batch = WatchBatch(visible)
                yield batch
                last_sent = loop.time()
        finally:
            self._watch_count -= 1


async def _stop(task: asyncio.Task[None], *, grace: float) -> None:
    """Waits up to ``grace`` for ``task`` to end, then cancels it and waits for it."""
    if grace > 0 and not task.done():
        try:
            await asyncio.wait({task}, timeout=grace)
        except asyncio.CancelledError:
            task.cancel()
            raise
    if not task.done():
        task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:
        logger.exception("store task %s failed", task.get_name())
