"""The gateway routes of one control-plane replica: stored, followed, fanned out.

Keys (values are serialized ``Route`` messages, without their revision,
which is the key's ``mod_revision``)::

    /ecosystem/v1/routes/<name>

Writes go straight to the store, each request in one transaction. One store
watch per replica follows the prefix (another replica may have written) and
feeds the :class:`RouteBook`: the current routes, a bounded ring of recent
changes for resuming watchers, and the watchers themselves. As in the
registry's view (``controlplane.view``), each change is encoded once, as a
ready-made ``WatchRoutesResponse.events`` frame that every watcher shares,
and publishing never awaits: a watcher owns a bounded list of pending frames
and a wake-up; one that falls too far behind gets a fresh snapshot (RESYNC)
instead of its backlog. A token's view of the stream is filtered by the ACL
interceptor, not here.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from ecosystem.v1 import gateway_pb2 as gpb
from ecosystem.v1 import registry_pb2 as pb

from controlplane._frames import length_delimited
from controlplane.registry import ROOT_PREFIX
from controlplane.store import (
    Compacted,
    Compare,
    DeleteOp,
    EventType,
    KeyValue,
    Op,
    PutOp,
    Store,
    StoreClosed,
    StoreError,
    WatchBatch,
)
from serving.errors import (
    InvalidArgumentError,
    NotFoundError,
    RevisionConflictError,
    UnavailableError,
)

from ._validation import apply_violations, route_name_violations

__all__ = [
    "CHECKED_PRUNE",
    "ROUTES_PREFIX",
    "RouteBook",
    "RouteWatcher",
    "decode_route",
    "prune_targets",
    "route_key",
]

log = logging.getLogger(__name__)

#: The routes an apply's ACL check found it would prune (and checked the
#: caller's right on), for the apply that follows in the same call: routes of
#: the group that appeared since are not deleted unchecked (None: no check ran).
CHECKED_PRUNE: contextvars.ContextVar[frozenset[str] | None] = contextvars.ContextVar(
    "checked_prune", default=None
)

ROUTES_PREFIX = ROOT_PREFIX + "routes/"
# Tag of field 1 (events, length-delimited) and of field 2 (store_id) in
# WatchRoutesResponse.
_EVENTS_TAG = b"\x0a"
_STORE_ID_TAG = b"\x12"
#: Bytes of events in one response; a revision is never cut, so one revision
#: (at most an apply's 2 MiB of specs) may take a response past this.
MESSAGE_BYTES = 1024 * 1024
#: Attempts of an apply whose routes another writer changed meanwhile.
_APPLY_ATTEMPTS = 5


def _frame(event: gpb.RouteEvent) -> bytes:
    data = event.SerializeToString()
    return length_delimited(_EVENTS_TAG, data)


def _marker(kind: int, revision: int) -> bytes:
    return _frame(gpb.RouteEvent(type=kind, revision=revision))  # type: ignore[arg-type]


def route_key(name: str) -> str:
    return ROUTES_PREFIX + name


def decode_route(kv: KeyValue) -> gpb.Route:
    """The route stored at ``kv``, with its revision."""
    route = gpb.Route.FromString(kv.value)
    route.revision = kv.mod_revision
    return route


def _stored(route: gpb.Route, group: str) -> gpb.Route:
    """What is stored for ``route``: its spec with ``name`` set, the group, no revision."""
    stored = gpb.Route(name=route.name, group=group)
    stored.spec.CopyFrom(route.spec)
    stored.spec.fields["name"].string_value = route.name
    return stored


@dataclass(eq=False)
class RouteWatcher:
    """One WatchRoutes stream: a bounded list of pending frames and a wake-up."""

    book: RouteBook
    max_pending_bytes: int
    pending: list[bytes] = field(default_factory=list)
    pending_bytes: int = 0
    # Where each revision's frames end in ``pending``.
    ends: list[int] = field(default_factory=list)
    resync: bool = False
    closed: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, frames: list[bytes]) -> None:
        """Queues the frames of one revision (or gives up the backlog for a RESYNC)."""
        if self.resync or self.closed:
            return
        size = sum(map(len, frames))
        if self.pending_bytes + size > self.max_pending_bytes:
            log.warning("slow route watcher fell %d bytes behind; sending a RESYNC", size)
            self.discard()
            self.resync = True
        else:
            self.pending.extend(frames)
            self.pending_bytes += size
            self.ends.append(len(self.pending))
        self.wake.set()

    def discard(self) -> None:
        self.pending, self.ends, self.pending_bytes = [], [], 0

    def _take(self) -> list[bytes]:
        """Whole revisions of pending frames, about ``MESSAGE_BYTES`` (at least one)."""
        taken = size = 0
        for end in self.ends:
            segment = sum(map(len, self.pending[taken:end]))
            if taken and size + segment > MESSAGE_BYTES:
                break
            size += segment
            taken = end
        frames = self.pending[:taken]
        self.pending = self.pending[taken:]
        self.pending_bytes -= size
        self.ends = [end - taken for end in self.ends if end > taken]
        return frames

    def close(self) -> None:
        self.closed = True
        self.wake.set()

    async def responses(self, progress_interval: float) -> AsyncIterator[bytes]:
        """Serialized WatchRoutesResponse messages: a snapshot when due, the
        pending changes, and PROGRESS after ``progress_interval`` seconds of
        quiet. Raises ``UnavailableError`` when the book closes."""
        suffix = self.book.response_suffix
        try:
            while True:
                if self.closed:
                    raise UnavailableError("control plane is shutting down; reconnect and resume")
                if self.resync:
                    self.resync = False
                    self.discard()
                    for response in self.book.snapshot():
                        yield response + suffix
                    continue
                if self.pending:
                    frames = self._take()
                    frames.append(suffix)
                    yield b"".join(frames)
                    continue
                self.wake.clear()
                try:
                    async with asyncio.timeout(progress_interval):
                        await self.wake.wait()
                except TimeoutError:
                    yield _marker(pb.WATCH_EVENT_TYPE_PROGRESS, self.book.revision) + suffix
        finally:
            self.book.unsubscribe(self)


class RouteBook:
    """Current routes, a ring of recent changes, the watchers, and the writes.

    Lifecycle: ``await start()`` loads the routes and starts the one task
    that follows the store; ``await close()`` stops it and ends every watcher.
    """

    def __init__(
        self,
        store: Store,
        *,
        store_id: str = "",
        ring_revisions: int = 4_096,
        max_pending_bytes: int = 16 * 1024 * 1024,
        progress_interval: float = 1.0,
    ) -> None:
        self._store = store
        self.store_id = store_id
        encoded = store_id.encode()
        self.response_suffix = length_delimited(_STORE_ID_TAG, encoded) if encoded else b""
        self._ring_revisions = ring_revisions
        self._max_pending_bytes = max_pending_bytes
        self._progress_interval = progress_interval
        self.routes: dict[str, gpb.Route] = {}
        self._ring: deque[tuple[int, tuple[bytes, ...]]] = deque()
        self._floor = 0  # the ring holds every change after this revision
        self._revision = 0
        self._watchers: set[RouteWatcher] = set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._tick = asyncio.Event()  # set (and replaced) whenever the revision moves

    @property
    def revision(self) -> int:
        """Every route change up to this store revision has been published."""
        return self._revision

    @property
    def watcher_count(self) -> int:
        return len(self._watchers)

    async def start(self) -> None:
        current = self._store.revision
        # Loaded from a revision back in the history when the store still
        # has it: the ring then serves recent resumes after a restart.
        base = max(self._store.compact_revision, current - self._ring_revisions, 1)
        try:
            result = await self._store.range(ROUTES_PREFIX, revision=base)
        except (Compacted, ValueError):
            result = await self._store.range(ROUTES_PREFIX)
        self._reset(result.kvs, result.revision)
        self._task = asyncio.create_task(self._follow(), name="routes")
        await self.wait_for(current)

    async def wait_for(self, revision: int, timeout: float = 5.0) -> None:
        """Returns once every route change up to ``revision`` is in the book."""
        try:
            async with asyncio.timeout(timeout):
                while self._revision < revision:
                    if self._closed or self._task is None or self._task.done():
                        raise UnavailableError("the routes are not following the store")
                    await self._tick.wait()
        except TimeoutError:
            raise UnavailableError(
                f"the routes are behind the store (at {self._revision}, need {revision})"
            ) from None

    async def close(self) -> None:
        self._closed = True
        for watcher in list(self._watchers):
            watcher.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # -- following the store --------------------------------------------------

    def _reset(self, kvs: tuple[KeyValue, ...], revision: int) -> None:
        self.routes = {route.name: route for route in map(decode_route, kvs)}
        self._ring.clear()
        self._floor = revision
        self._set_revision(revision)

    def _set_revision(self, revision: int) -> None:
        self._revision = revision
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    async def _follow(self) -> None:
        failures = 0
        while True:
            try:
                async for batch in self._store.watch(
                    ROUTES_PREFIX,
                    start_revision=self._revision + 1,
                    progress_interval=self._progress_interval,
                ):
                    failures = 0
                    self._apply(batch)
            except Compacted:
                log.warning("the routes fell behind the store's history; reloading")
                result = await self._store.range(ROUTES_PREFIX)
                self._reset(result.kvs, result.revision)
                for watcher in self._watchers:
                    watcher.discard()
                    watcher.resync = True
                    watcher.wake.set()
            except StoreClosed as exc:
                log.error("store closed under the routes: %s", exc)
                for watcher in list(self._watchers):
                    watcher.close()
                return
            except StoreError as exc:
                # Resumed from the last applied revision: nothing lost or repeated.
                failures += 1
                delay = min(2.0, 0.1 * 2**failures)
                log.warning("route watch failed (%s); resuming in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    def _apply(self, batch: WatchBatch) -> None:
        frames: list[bytes] = []
        for event in batch.events:
            name = event.kv.key[len(ROUTES_PREFIX) :]
            if event.type is EventType.PUT:
                route = decode_route(event.kv)
                self.routes[name] = route
                frames.append(
                    _frame(
                        gpb.RouteEvent(
                            type=pb.WATCH_EVENT_TYPE_PUT, revision=batch.revision, route=route
                        )
                    )
                )
            else:
                gone = self.routes.pop(name, None)
                last = gpb.Route(
                    name=name, group=gone.group if gone else "", revision=batch.revision
                )
                frames.append(
                    _frame(
                        gpb.RouteEvent(
                            type=pb.WATCH_EVENT_TYPE_DELETE, revision=batch.revision, route=last
                        )
                    )
                )
        if batch.revision > self._revision:
            self._set_revision(batch.revision)
        if not frames:
            return
        self._ring.append((batch.revision, tuple(frames)))
        while len(self._ring) > self._ring_revisions:
            self._floor = self._ring.popleft()[0]
        for watcher in self._watchers:
            watcher.offer(frames)

    # -- watchers ---------------------------------------------------------------

    def subscribe(self, since_revision: int = 0, store_id: str = "") -> RouteWatcher:
        """A new watcher: the changes after ``since_revision`` when the ring
        holds them all, else a snapshot first. Registered and caught up
        without yielding, so no change falls between the two."""
        if self._closed:
            raise UnavailableError("control plane is shutting down")
        watcher = RouteWatcher(self, self._max_pending_bytes)
        if (
            since_revision <= 0
            or since_revision < self._floor
            or since_revision > self._revision
            or (store_id and store_id != self.store_id)
        ):
            watcher.resync = True
        else:
            for revision, frames in self._ring:
                if revision > since_revision:
                    watcher.offer(list(frames))
        self._watchers.add(watcher)
        return watcher

    def unsubscribe(self, watcher: RouteWatcher) -> None:
        watcher.closed = True
        self._watchers.discard(watcher)

    def snapshot(self) -> list[bytes]:
        """RESYNC, a PUT per route (by name), SNAPSHOT_END, as serialized
        responses of about ``MESSAGE_BYTES`` each (without the store_id)."""
        revision = self._revision
        responses: list[bytes] = []
        frames = [_marker(pb.WATCH_EVENT_TYPE_RESYNC, revision)]
        size = 0
        for name in sorted(self.routes):
            encoded = _frame(
                gpb.RouteEvent(
                    type=pb.WATCH_EVENT_TYPE_PUT, revision=revision, route=self.routes[name]
                )
            )
            if size and size + len(encoded) > MESSAGE_BYTES:
                responses.append(b"".join(frames))
                frames, size = [], 0
            frames.append(encoded)
            size += len(encoded)
        frames.append(_marker(pb.WATCH_EVENT_TYPE_SNAPSHOT_END, revision))
        responses.append(b"".join(frames))
        return responses

    # -- reads and writes (the servicer's), straight from and to the store ------

    async def list(self) -> gpb.ListRoutesResponse:
        result = await self._store.range(ROUTES_PREFIX)
        return gpb.ListRoutesResponse(
            routes=[decode_route(kv) for kv in result.kvs], revision=result.revision
        )

    async def get(self, name: str) -> gpb.Route:
        violations = route_name_violations("name", name)
        if violations:
            raise InvalidArgumentError(violations)
        kv = await self._store.get(route_key(name))
        if kv is None:
            raise NotFoundError(f"no route {name!r}")
        return decode_route(kv)

    async def delete(self, name: str) -> int:
        violations = route_name_violations("name", name)
        if violations:
            raise InvalidArgumentError(violations)
        result = await self._store.txn([], [DeleteOp(route_key(name))])
        if not result.prev_kvs or result.prev_kvs[0] is None:
            raise NotFoundError(f"no route {name!r}")
        return result.revision

    async def apply(self, request: gpb.ApplyRoutesRequest) -> gpb.ApplyRoutesResponse:
        """Writes the request's routes (and prunes) in one transaction.

        Optimistic: the routes are read, the changes worked out, and the
        transaction guarded by the revision of every key it reads; when
        another writer changed one meanwhile, it starts over (a few times,
        then ABORTED).
        """
        violations = apply_violations(request)
        if violations:
            raise InvalidArgumentError(violations)
        for _attempt in range(_APPLY_ATTEMPTS):
            current = await self._store.range(ROUTES_PREFIX)
            stored = {route.name: (route, kv) for kv in current.kvs for route in [decode_route(kv)]}
            answer = gpb.ApplyRoutesResponse()
            compares: list[Compare] = []
            ops: list[Op] = []
            named = set()
            for route in request.routes:
                named.add(route.name)
                wanted = _stored(route, request.group)
                key = route_key(route.name)
                found = stored.get(route.name)
                if found is None:
                    compares.append(Compare(key, "version", "==", 0))
                    ops.append(PutOp(key, wanted.SerializeToString(deterministic=True)))
                    answer.created.append(route.name)
                    continue
                old, kv = found
                old.revision = 0
                compares.append(Compare(key, "mod_revision", "==", kv.mod_revision))
                if old == wanted:
                    answer.unchanged.append(route.name)
                else:
                    ops.append(PutOp(key, wanted.SerializeToString(deterministic=True)))
                    answer.updated.append(route.name)
            if request.prune:
                checked = CHECKED_PRUNE.get()
                for name, (old, kv) in sorted(stored.items()):
                    if name not in named and old.group == request.group:
                        if checked is not None and name not in checked:
                            raise RevisionConflictError(
                                f"route {name!r} joined group {request.group!r} while this "
                                "apply was checked: apply again"
                            )
                        compares.append(Compare(kv.key, "mod_revision", "==", kv.mod_revision))
                        ops.append(DeleteOp(kv.key))
                        answer.deleted.append(name)
            if not ops:
                answer.revision = current.revision
                return answer
            result = await self._store.txn(compares, ops)
            if result.succeeded:
                answer.revision = result.revision
                return answer
            log.info("routes changed while applying; reading them again")
        raise RevisionConflictError("the routes kept changing under this apply; try again")


async def prune_targets(store: Store, request: gpb.ApplyRoutesRequest) -> list[str]:
    """The routes ``request`` would delete if it were applied now (what the
    ACL check asks write on): those of its group it does not name."""
    if not request.prune:
        return []
    named = {route.name for route in request.routes}
    current = await store.range(ROUTES_PREFIX)
    targets = [
        route.name
        for route in map(decode_route, current.kvs)
        if route.name not in named and route.group == request.group
    ]
    CHECKED_PRUNE.set(frozenset(targets))
    return targets
