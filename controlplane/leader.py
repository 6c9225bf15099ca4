"""Leader election over the `Store` protocol: work that must run once runs on one replica.

Any number of control-plane replicas share one store; a few jobs (the session
reaper, later schedulers) must run on exactly one of them. `Election` elects it
with the store's own primitives, so it works alike on ``memory://``,
``sqlite://`` and ``etcd://`` (where they are etcd's lease and transaction, as in
etcd's ``concurrency.Election``):

- Each candidate holds a lease of ``ttl`` seconds, renewed every ``ttl / 3``.
- The campaign is one transaction: *if the key does not exist
  (create_revision == 0), put key = candidate with my lease*. Whoever's
  transaction wins leads for as long as its lease lives.
- Every candidate watches the key: a follower to notice the vacancy (the DELETE
  when the leader's lease was revoked or ran out) and campaign again at once; the
  leader to notice it lost the key.
- A leader steps down, cancelling its work at once, as soon as it cannot be sure
  it still holds the lease: a renewal answered with LeaseNotFound, its key
  deleted or replaced, or no successful renewal for almost the whole TTL (the
  store unreachable: by then the lease may be gone and another replica leading).
- ``close()`` stops the work first, then revokes the lease, which deletes the key:
  another replica takes over at once instead of after the TTL.

Work is registered with `Election.while_leader` before ``start()``: each is a
coroutine function run in its own task while this replica leads, cancelled (and
awaited) when it stops leading, and started again on a later term. A work that
fails is logged and started again after a pause, as long as the term lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncGenerator, Awaitable, Callable
from types import TracebackType
from typing import Self

from controlplane.registry import ROOT_PREFIX
from controlplane.store import (
    Compacted,
    Compare,
    EventType,
    LeaseNotFound,
    PutOp,
    Store,
    StoreClosed,
    StoreError,
)

__all__ = ["LEADER_KEY", "Election"]

log = logging.getLogger(__name__)

#: The key the control-plane replicas campaign for; its value names the leader.
LEADER_KEY = ROOT_PREFIX + "election/leader"

Work = Callable[[], Awaitable[None]]

# A campaign that failed on a store error is tried again after this long (± jitter).
_RETRY = 1.0


class _LeaseLost(Exception):
    """This candidate's lease is gone, or may be: it must not lead on it."""


class Election:
    """One candidate in the election for ``key`` (see the module docstring).

    ``candidate`` is what the key holds while this one leads (a replica id, for
    operators and logs). Lifecycle: ``start()`` (or ``async with``) campaigns in
    the background; ``close()`` is idempotent and, with ``revoke=True`` (the
    default), hands leadership over at once.
    """

    def __init__(
        self,
        store: Store,
        candidate: str,
        *,
        key: str = LEADER_KEY,
        ttl: float = 10.0,
        retry: float = _RETRY,
        progress_interval: float = 1.0,
    ) -> None:
        if not candidate:
            raise ValueError("a candidate needs a name")
        if not ttl > 0 or not retry > 0:
            raise ValueError("ttl and retry must be > 0")
        self._store = store
        self.candidate = candidate
        self.key = key
        self._ttl = ttl
        self._retry = retry
        self._progress_interval = progress_interval
        self._work: list[tuple[str, Work]] = []
        self._task: asyncio.Task[None] | None = None
        self._lease = 0
        self._sure_until = 0.0
        self._is_leader = False
        self._leader = ""
        self._terms = 0
        self._closed = False
        self._changed = asyncio.Event()

    # -- state ---------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """True while this candidate leads (its work is running)."""
        return self._is_leader

    @property
    def leader(self) -> str:
        """The leader as last seen ("" when the office is vacant or not yet known)."""
        return self._leader

    @property
    def terms(self) -> int:
        """How many times this candidate has become leader."""
        return self._terms

    @property
    def lease_id(self) -> int:
        """The lease this candidate campaigns with (0 when it holds none)."""
        return self._lease

    async def wait_changed(self) -> None:
        """Returns at the next change of ``is_leader`` or ``leader``."""
        await self._changed.wait()

    def while_leader(self, name: str, work: Work) -> None:
        """Runs ``work()`` in a task named ``name`` during every term of this candidate."""
        if self._task is not None:
            raise RuntimeError("register leader-only work before start()")
        self._work.append((name, work))

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Starts campaigning in the background; returns at once."""
        if self._closed:
            raise RuntimeError("a closed election cannot be started again")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"election-{self.candidate}")

    async def stop(self) -> None:
        """Stops campaigning and the leader-only work, keeping the lease (it runs
        out, or :meth:`close` gives it up): a stopping replica ends the work
        before it closes what the work uses. Idempotent."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})

    async def close(self, *, revoke: bool = True) -> None:
        """Stops campaigning and leader-only work; with ``revoke``, gives up the
        lease so that another candidate leads at once. Idempotent."""
        await self.stop()
        lease, self._lease = self._lease, 0
        if lease and revoke:
            try:
                async with asyncio.timeout(min(self._ttl / 2, 2.0)):
                    await self._store.revoke(lease)
            except (StoreError, TimeoutError) as exc:
                # It runs out within the TTL anyway.
                log.info("election %s: could not revoke lease %x: %s", self.key, lease, exc)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- the campaign --------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            pause, store_closed = True, False
            try:
                if not self._lease:
                    asked = asyncio.get_running_loop().time()
                    self._lease = await self._store.grant(self._ttl)
                    self._sure_until = asked + self._ttl
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._keep(self._lease), name=f"election-lease-{self.key}")
                    group.create_task(self._campaign(self._lease), name=f"campaign-{self.key}")
            except* _LeaseLost as lost:
                log.warning(
                    "election %s: %s lost its lease (%s)",
                    self.key,
                    self.candidate,
                    lost.exceptions[0],
                )
                self._lease = 0
                pause = False
            except* StoreClosed:
                log.info("election %s: the store is closed; %s stops", self.key, self.candidate)
                self._lease = 0
                store_closed = True
            except* StoreError as failed:
                log.warning(
                    "election %s: campaign of %s failed: %s",
                    self.key,
                    self.candidate,
                    failed.exceptions[0],
                )
            if store_closed:
                return
            if pause:
                await asyncio.sleep(self._retry * random.uniform(0.5, 1.5))

    async def _keep(self, lease: int) -> None:
        """Renews the lease every ttl/3; raises _LeaseLost when it is gone, or when
        no renewal succeeded for long enough that it may be."""
        loop = asyncio.get_running_loop()
        ttl = self._ttl
        # The lease lives at least until `_sure_until`: the server starts its TTL no
        # earlier than the grant or renewal was sent. Step down a little before that.
        margin = min(1.0, ttl / 10)
        interval = ttl / 3
        while True:
            await asyncio.sleep(max(0.0, min(interval, self._sure_until - margin - loop.time())))
            remaining = self._sure_until - margin - loop.time()
            if remaining <= 0:
                raise _LeaseLost(f"no renewal succeeded within {ttl:g}s")
            sent = loop.time()
            try:
                async with asyncio.timeout(remaining):
                    ttl = await self._store.keepalive(lease)
            except LeaseNotFound:
                raise _LeaseLost("the store no longer has it") from None
            except (StoreError, TimeoutError) as exc:
                if isinstance(exc, StoreClosed):
                    raise
                log.info("election %s: renewal of lease %x failed: %s", self.key, lease, exc)
                interval = min(ttl / 6, 0.5)  # try again sooner
                continue
            self._sure_until = sent + ttl
            margin = min(1.0, ttl / 10)
            interval = ttl / 3

    async def _campaign(self, lease: int) -> None:
        store, key = self._store, self.key
        while True:
            try:
                result = await store.txn(
                    [Compare(key, "create_revision", "==", 0)],
                    [PutOp(key, self.candidate.encode(), lease)],
                )
            except LeaseNotFound:
                raise _LeaseLost("refused by the store in the campaign") from None
            if result.succeeded:
                await self._lead(result.revision)
                continue
            current = await store.range(key, limit=1)
            kv = next((kv for kv in current.kvs if kv.key == key), None)
            if kv is None:
                continue  # vacant again already
            if kv.lease == lease:
                # Ours: a campaign whose answer was lost, then retried.
                await self._lead(current.revision)
                continue
            self._set(leader=kv.value.decode(errors="replace"))
            await self._follow(current.revision)

    async def _follow(self, revision: int) -> None:
        """Returns when the office falls vacant (or history is gone: look again)."""
        async with contextlib.aclosing(self._changes(revision)) as changes:
            async for kind, value, _lease in changes:
                if kind is EventType.DELETE:
                    self._set(leader="")
                    return
                self._set(leader=value)

    async def _lead(self, revision: int) -> None:
        """Runs the leader-only work until the key stops naming our lease. Cancelled
        (which cancels the work at once) when the lease is lost or closing."""
        self._terms += 1
        self._set(is_leader=True, leader=self.candidate)
        log.info(
            "election %s: %s is now the leader (lease %x)", self.key, self.candidate, self._lease
        )
        reason = ""
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._supervise(name, work), name=name)
                    for name, work in self._work
                ]
                try:
                    reason = await self._until_deposed(revision)
                finally:
                    for task in tasks:
                        task.cancel()
        finally:
            if not reason:  # cancelled
                reason = "closing" if self._closed else "its lease is gone or in doubt"
            if self._leader == self.candidate:
                self._set(is_leader=False, leader="")
            else:
                self._set(is_leader=False)
            log.info("election %s: %s stepped down (%s)", self.key, self.candidate, reason)

    async def _until_deposed(self, revision: int) -> str:
        async with contextlib.aclosing(self._changes(revision)) as changes:
            async for kind, value, lease in changes:
                if kind is EventType.DELETE:
                    return "its key was deleted"
                if lease != self._lease:
                    self._set(leader=value)
                    return f"the key now names {value!r}"
        return "the store's history moved on"

    async def _changes(self, revision: int) -> AsyncGenerator[tuple[EventType, str, int], None]:
        """(type, value, lease) of each change of the key after ``revision``; ends
        when the watch cannot resume there (compacted)."""
        watch = self._store.watch(
            self.key, start_revision=revision + 1, progress_interval=self._progress_interval
        )
        async with contextlib.aclosing(watch) as batches:
            try:
                async for batch in batches:
                    for event in batch.events:
                        if event.kv.key == self.key:
                            value = event.kv.value.decode(errors="replace")
                            yield event.type, value, event.kv.lease
            except Compacted:
                return

    async def _supervise(self, name: str, work: Work) -> None:
        while True:
            try:
                await work()
                log.warning("leader-only work %s returned; starting it again", name)
            except Exception:
                log.exception("leader-only work %s failed; starting it again", name)
            await asyncio.sleep(self._retry)

    def _set(self, *, is_leader: bool | None = None, leader: str | None = None) -> None:
        changed = False
        if is_leader is not None and is_leader != self._is_leader:
            self._is_leader = is_leader
            changed = True
        if leader is not None and leader != self._leader:
            self._leader = leader
            changed = True
        if changed:
            event, self._changed = self._changed, asyncio.Event()
            event.set()
