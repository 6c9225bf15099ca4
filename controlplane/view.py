"""The in-memory view of the registry and the watch fan-out.

One store watch per control-plane process feeds this view: the current
instances, indexed by service, and a bounded ring of recent events. Every
read RPC and every Watch subscriber is served from here, never by a store
read of its own.

Each subscriber owns a bounded list of pending events. Publishing never
awaits: events are appended to each matching subscriber (shared, immutable
``WatchEvent`` messages) and its wake-up event is set; the subscriber's
stream drains everything pending into one response, which is how updates
arriving together are batched. A subscriber that would exceed its bound gets
no backlog at all but a RESYNC: the current state as a snapshot, then live
events again.

Each response stays under ``MESSAGE_BYTES`` (1 MiB), far below the 4 MiB a
stock client accepts: a snapshot is cut into several responses, and so is a
backlog, at revision boundaries where it can be. A single revision larger
than that is cut inside, and the response that ends in the middle of it says
so (``revision_continues``), so that a client knows that revision is not yet
whole.

Events are encoded once, as ready-made ``WatchResponse.events`` fields
(``frame``), and shared by every subscriber that gets them: a response is
the concatenation of its frames, so a change that reaches a thousand
watchers is serialized once, not a thousand times.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, ItemsView, Iterable
from dataclasses import dataclass, field
from typing import Any

from ecosystem.v1 import registry_pb2 as pb

from controlplane._frames import length_delimited
from controlplane.registry import INSTANCES_PREFIX, ROOT_PREFIX, decode_instance
from controlplane.store import Compacted, EventType, Store, StoreClosed, StoreError, WatchBatch
from serving.errors import UnavailableError

__all__ = ["InstanceView", "Selector", "ViewConfig", "Watcher", "summarize"]

log = logging.getLogger(__name__)

_PUT = pb.WATCH_EVENT_TYPE_PUT
_DELETE = pb.WATCH_EVENT_TYPE_DELETE
# Tag of field 1 (events), wire type 2 (length-delimited), in WatchResponse.
_EVENTS_TAG = b"\x0a"
# Field 3 (revision_continues, a varint) set to true.
_CONTINUES = b"\x18\x01"
#: Bytes of events in one WatchResponse (one event may take it past this).
MESSAGE_BYTES = 1024 * 1024


def frame(event: pb.WatchEvent) -> bytes:
    """``event`` encoded as one element of ``WatchResponse.events``; a
    serialized WatchResponse is any concatenation of such frames."""
    data = event.SerializeToString()
    return length_delimited(_EVENTS_TAG, data)


def marker(kind: int, revision: int) -> bytes:
    return frame(pb.WatchEvent(type=kind, revision=revision))  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class ViewConfig:
    # Events kept for resuming watchers without a snapshot.
    ring_events: int = 20_000
    # Pending events per subscriber before it is given a RESYNC instead …
    max_pending: int = 4_096
    # … or pending bytes of events.
    max_pending_bytes: int = 16 * 1024 * 1024
    # Instances per message of a snapshot.
    snapshot_chunk: int = 1_000
    # How often the store reports progress to the view while idle.
    store_progress_interval: float = 1.0
    # Seconds without word from the store (not even progress) after which the
    # view no longer counts as healthy: the store is unreachable.
    store_timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class Selector:
    """Which instances a list or watch covers; empty fields match all."""

    service: str = ""
    namespace: str = ""
    platform: str = ""
    zone: str = ""
    tags: frozenset[str] = frozenset()
    health: frozenset[int] = frozenset()

    @classmethod
    def from_proto(cls, sel: pb.InstanceSelector) -> Selector:
        return cls(
            service=sel.service,
            namespace=sel.namespace,
            platform=sel.platform,
            zone=sel.zone,
            tags=frozenset(sel.tags),
            health=frozenset(sel.health),
        )

    def matches(self, inst: pb.Instance) -> bool:
        return (
            (not self.service or inst.service == self.service)
            and (not self.namespace or inst.namespace == self.namespace)
            and (not self.platform or inst.platform == self.platform)
            and (not self.zone or inst.zone == self.zone)
            and (not self.health or inst.health in self.health)
            and (not self.tags or self.tags.issubset(inst.tags))
        )


@dataclass(slots=True)
class _Change:
    """One instance change as the view saw it, with lazily built wire events."""

    revision: int
    new: pb.Instance | None  # None for a deletion
    prev: pb.Instance | None
    _put: bytes | None = None
    _delete: bytes | None = None

    def put_frame(self) -> bytes:
        if self._put is None:
            self._put = frame(pb.WatchEvent(type=_PUT, revision=self.revision, instance=self.new))
        return self._put

    def delete_frame(self) -> bytes:
        if self._delete is None:
            last = self.prev if self.new is None else self.new
            self._delete = frame(pb.WatchEvent(type=_DELETE, revision=self.revision, instance=last))
        return self._delete

    def frame_for(self, sel: Selector) -> bytes | None:
        """The event a subscriber with ``sel`` should see, if any: an instance
        that stops matching (e.g. turns critical under a health filter) is a
        DELETE for that subscriber."""
        if self.new is not None and sel.matches(self.new):
            return self.put_frame()
        if self.prev is not None and sel.matches(self.prev):
            return self.delete_frame()
        return None


@dataclass(eq=False)
class Watcher:
    """One watcher: a selector, a bounded list of pending frames, a wake-up."""

    view: InstanceView
    selector: Selector
    max_pending: int
    max_pending_bytes: int = 16 * 1024 * 1024
    pending: list[bytes] = field(default_factory=list)
    # Bytes in ``pending``, and where each revision's frames end in it.
    pending_bytes: int = 0
    ends: list[int] = field(default_factory=list)
    resync: bool = False
    closed: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    overflows: int = 0
    _progress_due: bool = False
    _sent_since_tick: bool = False
    _timer: asyncio.TimerHandle | None = None

    def offer(self, frames: list[bytes]) -> None:
        """Queues the frames of one revision."""
        if self.resync or self.closed:
            return
        size = sum(map(len, frames))
        if (
            len(self.pending) + len(frames) > self.max_pending
            or self.pending_bytes + size > self.max_pending_bytes
        ):
            # Latest state beats backlog: drop what is pending and resnapshot.
            self.discard_pending()
            self.resync = True
            self.overflows += 1
            if self.overflows == 1:
                log.warning(
                    "slow watcher of %s fell %d events behind; sending a RESYNC",
                    self.selector.service or "all services",
                    self.max_pending,
                )
        else:
            self.pending.extend(frames)
            self.pending_bytes += size
            self.ends.append(len(self.pending))
        self.wake.set()

    def discard_pending(self) -> None:
        """Forgets every pending frame (the state will be sent whole instead)."""
        self.pending.clear()
        self.pending_bytes = 0
        self.ends.clear()

    def take(self, budget: int) -> tuple[list[bytes], bool]:
        """Pending frames for one response of about ``budget`` bytes: whole
        revisions while they fit, else part of the first one; and whether
        that response ends inside a revision."""
        if self.pending_bytes <= budget:
            frames = self.pending
            self.pending = []
            self.discard_pending()
            return frames, False
        pending = self.pending
        size = 0
        taken = 0
        for end in self.ends:
            segment = sum(map(len, pending[taken:end]))
            if size + segment > budget:
                break
            size += segment
            taken = end
        continues = False
        if taken == 0:
            # One revision alone is larger than a response: cut inside it.
            end = self.ends[0]
            while taken < end and (taken == 0 or size + len(pending[taken]) <= budget):
                size += len(pending[taken])
                taken += 1
            continues = taken < end
        frames = pending[:taken]
        self.pending = pending[taken:]
        self.pending_bytes -= size
        self.ends = [e - taken for e in self.ends if e > taken]
        return frames, continues

    def close(self) -> None:
        self.closed = True
        self.wake.set()

    def _tick(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        # One timer per watcher, re-armed each interval (cheaper than a timeout
        # around every wait): PROGRESS is due when a whole interval passed
        # without anything sent.
        if not self._sent_since_tick:
            self._progress_due = True
            self.wake.set()
        self._sent_since_tick = False
        self._timer = loop.call_later(interval, self._tick, loop, interval)

    async def responses(self, progress_interval: float) -> AsyncIterator[bytes]:
        """The stream as serialized WatchResponse messages: snapshots, batched
        deltas, and PROGRESS while idle. Raises ``UnavailableError`` when the
        view shuts down."""
        loop = asyncio.get_running_loop()
        suffix = self.view.response_suffix
        self._timer = loop.call_later(progress_interval, self._tick, loop, progress_interval)
        try:
            while True:
                if self.closed:
                    raise UnavailableError("control plane is shutting down; reconnect and resume")
                if self.resync:
                    self.resync = False
                    self.discard_pending()
                    self._sent_since_tick = True
                    for response in self.view.snapshot(self.selector):
                        yield response + suffix
                    continue
                if self.pending:
                    frames, continues = self.take(MESSAGE_BYTES)
                    if not self.pending:
                        self.wake.clear()
                    self._sent_since_tick = True
                    frames.append(suffix)
                    if continues:
                        frames.append(_CONTINUES)
                    yield b"".join(frames)
                    continue
                if self._progress_due:
                    self._progress_due = False
                    yield marker(pb.WATCH_EVENT_TYPE_PROGRESS, self.view.revision) + suffix
                    continue
                self.wake.clear()
                await self.wake.wait()
        finally:
            self._timer.cancel()
            self._timer = None
            self.view.unsubscribe(self)


class InstanceView:
    """Current instances, a ring of recent changes, and the subscribers.

    Lifecycle: ``await start()`` loads the state and starts the one task that
    follows the store; ``await close()`` stops it and ends every subscriber.
    """

    def __init__(
        self, store: Store, config: ViewConfig | None = None, *, store_id: str = ""
    ) -> None:
        self._store = store
        self.store_id = store_id
        # Field 2 (store_id) of WatchResponse, appended to every response.
        self.response_suffix = length_delimited(b"\x12", store_id.encode()) if store_id else b""
        self._config = config or ViewConfig()
        self._instances: dict[str, pb.Instance] = {}
        self._by_service: dict[tuple[str, str], dict[str, pb.Instance]] = {}
        self._by_node: dict[str, dict[str, pb.Instance]] = {}
        # Lists and watches by platform or zone read these, not every instance.
        self._by_platform: dict[str, dict[str, pb.Instance]] = {}
        self._by_zone: dict[str, dict[str, pb.Instance]] = {}
        self._ring: deque[tuple[int, tuple[_Change, ...]]] = deque()
        self._ring_count = 0
        self._floor = 0  # the ring holds every change after this revision
        self._revision = 0
        self._tick = asyncio.Event()
        self._subs_by_service: dict[str, set[Watcher]] = {}
        self._subs_all: set[Watcher] = set()
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._closed = False
        self._heard = 0.0  # loop time of the last batch (or progress) from the store

    @property
    def revision(self) -> int:
        """Every change up to this revision has been applied and published."""
        return self._revision

    @property
    def subscriber_count(self) -> int:
        return len(self._subs_all) + sum(len(s) for s in self._subs_by_service.values())

    @property
    def instance_count(self) -> int:
        return len(self._instances)

    @property
    def healthy(self) -> bool:
        """Following the store, and heard from it within ``store_timeout``."""
        return (
            self._task is not None
            and not self._task.done()
            and self.silent_for < self._config.store_timeout
        )

    @property
    def silent_for(self) -> float:
        """Seconds since the store last sent the view anything (progress included)."""
        return asyncio.get_running_loop().time() - self._heard

    async def start(self) -> None:
        self._heard = asyncio.get_running_loop().time()
        await self._load(self._store.revision, prefill=True)
        self._task = asyncio.create_task(self._follow(), name="instance-view")
        await self.wait_for(self._store.revision)

    async def close(self) -> None:
        self._closed = True
        for sub in list(self._subscriptions()):
            sub.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- following the store ---------------------------------------------

    async def _load(self, current: int, *, prefill: bool) -> None:
        """(Re)builds the state at a base revision; with ``prefill`` the base
        is old enough that the ring can serve recent resumes after a restart."""
        base = current
        if prefill:
            base = max(self._store.compact_revision, current - self._config.ring_events, 1)
        try:
            result = await self._store.range(INSTANCES_PREFIX, revision=base)
        except Compacted:
            base = self._store.revision
            result = await self._store.range(INSTANCES_PREFIX, revision=base)
        self._instances.clear()
        self._by_service.clear()
        self._by_node.clear()
        self._by_platform.clear()
        self._by_zone.clear()
        for kv in result.kvs:
            self._index(kv.key, decode_instance(kv))
        self._ring.clear()
        self._ring_count = 0
        self._floor = result.revision
        self._set_revision(result.revision)

    async def _follow(self) -> None:
        failures = 0
        while True:
            try:
                async for batch in self._store.watch(
                    ROOT_PREFIX,
                    start_revision=self._revision + 1,
                    progress_interval=self._config.store_progress_interval,
                ):
                    failures = 0
                    self._apply(batch)
            except Compacted:
                log.warning("view fell behind the store's history; reloading")
                await self._load(self._store.revision, prefill=False)
                for sub in self._subscriptions():
                    sub.resync = True
                    sub.wake.set()
            except StoreClosed as exc:
                log.error("store closed under the view: %s", exc)
                self._failure = exc
                for sub in list(self._subscriptions()):
                    sub.close()
                return
            except StoreError as exc:
                # Resumed from the last applied revision: nothing is lost or repeated.
                failures += 1
                delay = min(2.0, 0.1 * 2**failures)
                log.warning("store watch of the view failed (%s); resuming in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    def _apply(self, batch: WatchBatch) -> None:
        self._heard = asyncio.get_running_loop().time()
        changes: list[_Change] = []
        for event in batch.events:
            if not event.kv.key.startswith(INSTANCES_PREFIX):
                continue
            key = event.kv.key
            prev = self._instances.get(key)
            if event.type is EventType.PUT:
                new = decode_instance(event.kv)
                self._index(key, new)
                changes.append(_Change(batch.revision, new, prev))
            elif prev is not None:
                self._unindex(key, prev)
                changes.append(_Change(batch.revision, None, prev))
        if changes:
            self._remember(batch.revision, tuple(changes))
            self._set_revision(batch.revision)
            self._publish(changes)
        elif batch.revision > self._revision:
            self._set_revision(batch.revision)

    def _index(self, key: str, inst: pb.Instance) -> None:
        old = self._instances.get(key)
        if old is not None:
            if old.node != inst.node:
                _drop(self._by_node, old.node, key)
            if old.platform != inst.platform:
                _drop(self._by_platform, old.platform, key)
            if old.zone != inst.zone:
                _drop(self._by_zone, old.zone, key)
        self._instances[key] = inst
        self._by_service.setdefault((inst.namespace, inst.service), {})[key] = inst
        if inst.node:
            self._by_node.setdefault(inst.node, {})[key] = inst
        if inst.platform:
            self._by_platform.setdefault(inst.platform, {})[key] = inst
        if inst.zone:
            self._by_zone.setdefault(inst.zone, {})[key] = inst

    def _unindex(self, key: str, inst: pb.Instance) -> None:
        del self._instances[key]
        _drop(self._by_service, (inst.namespace, inst.service), key)
        _drop(self._by_node, inst.node, key)
        _drop(self._by_platform, inst.platform, key)
        _drop(self._by_zone, inst.zone, key)

    def _remember(self, revision: int, changes: tuple[_Change, ...]) -> None:
        self._ring.append((revision, changes))
        self._ring_count += len(changes)
        while self._ring_count > self._config.ring_events and len(self._ring) > 1:
            dropped_rev, dropped = self._ring.popleft()
            self._ring_count -= len(dropped)
            self._floor = dropped_rev

    def _set_revision(self, revision: int) -> None:
        self._revision = revision
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    def _publish(self, changes: list[_Change]) -> None:
        per_sub: dict[Watcher, list[bytes]] = {}
        for change in changes:
            inst = change.new if change.new is not None else change.prev
            assert inst is not None
            for sub in self._candidates(inst.service):
                encoded = change.frame_for(sub.selector)
                if encoded is not None:
                    per_sub.setdefault(sub, []).append(encoded)
        for sub, frames in per_sub.items():
            sub.offer(frames)

    def _candidates(self, service: str) -> Iterable[Watcher]:
        yield from self._subs_all
        yield from self._subs_by_service.get(service, ())

    def _subscriptions(self) -> Iterable[Watcher]:
        yield from self._subs_all
        for subs in self._subs_by_service.values():
            yield from subs

    # -- reads --------------------------------------------------------------

    async def wait_for(self, revision: int, timeout: float = 5.0) -> None:
        """Returns once the view has applied ``revision`` (read-your-writes)."""
        if self._revision >= revision:
            return
        try:
            async with asyncio.timeout(timeout):
                while self._revision < revision:
                    if self._failure is not None or self._closed:
                        raise UnavailableError("registry view is not following the store")
                    await self._tick.wait()
        except TimeoutError:
            raise UnavailableError(
                f"registry view is behind the store (at {self._revision}, need {revision})"
            ) from None

    def select(self, selector: Selector) -> list[pb.Instance]:
        """The instances ``selector`` matches, by namespace, service and id.

        Read from the smallest index that covers the selector (a service, a
        platform, a zone); the other fields filter that set. Only a selector
        with none of the three (tags or health alone, or nothing) reads every
        instance."""
        found = [inst for inst in self._pool(selector) if selector.matches(inst)]
        found.sort(key=lambda i: (i.namespace, i.service, i.id))
        return found

    def _pool(self, selector: Selector) -> Iterable[pb.Instance]:
        pools: list[dict[str, pb.Instance]] = []
        if selector.service and selector.namespace:
            pools.append(self._by_service.get((selector.namespace, selector.service), {}))
        if selector.platform:
            pools.append(self._by_platform.get(selector.platform, {}))
        if selector.zone:
            pools.append(self._by_zone.get(selector.zone, {}))
        if pools:
            return min(pools, key=len).values()
        if selector.service:
            return (
                inst
                for (_ns, svc), group in self._by_service.items()
                if svc == selector.service
                for inst in group.values()
            )
        return self._instances.values()

    def platform_instance_count(self, platform: str) -> int:
        """How many instances name ``platform`` (from the index)."""
        return len(self._by_platform.get(platform, {}))

    def service(self, namespace: str, name: str) -> tuple[pb.Service, list[pb.Instance]] | None:
        group = self._by_service.get((namespace, name))
        if not group:
            return None
        instances = sorted(group.values(), key=lambda i: i.id)
        return summarize(namespace, name, instances), instances

    def items(self) -> ItemsView[str, pb.Instance]:
        """Every instance by store key (a live view: do not await while iterating)."""
        return self._instances.items()

    def get(self, key: str) -> pb.Instance | None:
        """The instance stored at ``key``, if any."""
        return self._instances.get(key)

    def node_instances(self, node: str) -> dict[str, pb.Instance]:
        """Instances registered by one node, by store key."""
        return dict(self._by_node.get(node, {}))

    def services_changed_at(self, revision: int) -> set[tuple[str, str]] | None:
        """(namespace, service) pairs changed at ``revision``; None when the
        ring no longer (or never) held that revision."""
        if revision <= self._floor:
            return None
        for rev, changes in reversed(self._ring):
            if rev == revision:
                found: set[tuple[str, str]] = set()
                for change in changes:
                    inst = change.new if change.new is not None else change.prev
                    assert inst is not None
                    found.add((inst.namespace, inst.service))
                return found
            if rev < revision:
                break
        return set()

    def services(self, namespace: str = "") -> list[pb.Service]:
        return [
            summarize(ns, name, list(group.values()))
            for (ns, name), group in sorted(self._by_service.items())
            if not namespace or ns == namespace
        ]

    # -- subscriptions ------------------------------------------------------

    def subscribe(
        self,
        selector: Selector,
        since_revision: int = 0,
        *,
        store_id: str = "",
        wake: asyncio.Event | None = None,
    ) -> Watcher:
        """A new subscriber. Events after ``since_revision`` are queued at once
        when the ring still holds them; otherwise the first thing it gets is a
        snapshot. Registration and catch-up happen without yielding, so no
        change can fall between them. A ``store_id`` other than this view's
        means the revisions are of another history: a snapshot, too."""
        if self._closed:
            raise UnavailableError("control plane is shutting down")
        sub = Watcher(self, selector, self._config.max_pending, self._config.max_pending_bytes)
        if wake is not None:
            sub.wake = wake  # several subscriptions of one session share a wake-up
        if (
            since_revision <= 0
            or since_revision < self._floor
            or since_revision > self._revision
            or (store_id and store_id != self.store_id)
        ):
            sub.resync = True
        else:
            backlog: list[bytes] = []
            for revision, changes in reversed(self._ring):
                if revision <= since_revision:
                    break
                for change in reversed(changes):
                    encoded = change.frame_for(selector)
                    if encoded is not None:
                        backlog.append(encoded)
            backlog.reverse()
            if backlog:
                sub.offer(backlog)
        if selector.service:
            self._subs_by_service.setdefault(selector.service, set()).add(sub)
        else:
            self._subs_all.add(sub)
        return sub

    def unsubscribe(self, sub: Watcher) -> None:
        sub.closed = True
        self._subs_all.discard(sub)
        subs = self._subs_by_service.get(sub.selector.service)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs_by_service[sub.selector.service]

    def snapshot(self, selector: Selector) -> list[bytes]:
        """RESYNC, the matching instances at the current revision, SNAPSHOT_END,
        as serialized WatchResponse messages of at most ``snapshot_chunk``
        instances and about ``MESSAGE_BYTES`` each."""
        revision = self._revision
        chunk = self._config.snapshot_chunk
        responses: list[bytes] = []
        frames = [marker(pb.WATCH_EVENT_TYPE_RESYNC, revision)]
        size = count = 0
        for inst in self.select(selector):
            encoded = frame(pb.WatchEvent(type=_PUT, revision=revision, instance=inst))
            if count >= chunk or (count and size + len(encoded) > MESSAGE_BYTES):
                responses.append(b"".join(frames))
                frames, size, count = [], 0, 0
            frames.append(encoded)
            size += len(encoded)
            count += 1
        frames.append(marker(pb.WATCH_EVENT_TYPE_SNAPSHOT_END, revision))
        responses.append(b"".join(frames))
        return responses


def _drop(index: dict[Any, dict[str, pb.Instance]], group: Any, key: str) -> None:
    members = index.get(group)
    if members is not None:
        members.pop(key, None)
        if not members:
            del index[group]


def summarize(namespace: str, name: str, instances: list[pb.Instance]) -> pb.Service:
    """A service's summary (its instance counts by health) over ``instances``."""
    counts = {status: 0 for status in pb.HealthStatus.values()}
    for inst in instances:
        counts[inst.health] = counts.get(inst.health, 0) + 1
    return pb.Service(
        name=name,
        namespace=namespace,
        instance_count=len(instances),
        passing_count=counts[pb.HEALTH_STATUS_PASSING],
        warning_count=counts[pb.HEALTH_STATUS_WARNING],
        critical_count=counts[pb.HEALTH_STATUS_CRITICAL],
        unknown_count=counts[pb.HEALTH_STATUS_UNKNOWN] + counts[pb.HEALTH_STATUS_UNSPECIFIED],
    )
