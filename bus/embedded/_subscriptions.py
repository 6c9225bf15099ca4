"""The embedded broker's subscriptions (a bounded buffer a subscriber iterates) and
its core routing.

`CoreSubscription` drops (and counts) what does not fit: the broker never waits on
a subscriber. The durable one (`_consumers.DurableSubscription`) is fed
by its consumer only as far as it has room, so nothing is dropped there.
`CoreRouter` finds a subject's core subscribers through a `SubjectIndex` (a token
trie: the cost of a publish depends on the subject, not on how many
subscriptions there are), caches the result per subject, and picks one member
per queue group, round robin.
"""

from __future__ import annotations

import abc
import logging
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from bus._protocol import Delivery
from bus._waiter import Waiter
from bus.subjects import SubjectIndex

__all__ = ["CoreRouter", "CoreSubscription", "Route", "SubscriptionBase"]

logger = logging.getLogger(__name__)

E = TypeVar("E")


class SubscriptionBase(abc.ABC, Generic[E]):
    """A buffer of entries ``E`` and the one task iterating it."""

    def __init__(self, limit: int) -> None:
        self._buffer: deque[E] = deque()
        self._limit = limit
        self._waiter = Waiter()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def room(self) -> int:
        return self._limit - len(self._buffer) if not self._closed else 0

    def __aiter__(self) -> SubscriptionBase[E]:
        return self

    async def __anext__(self) -> Delivery:
        while True:
            while self._buffer:
                delivery = self._take(self._buffer.popleft())
                if delivery is not None:
                    return delivery
            if self._closed:
                raise StopAsyncIteration
            await self._waiter.wait()

    @abc.abstractmethod
    def _take(self, entry: E) -> Delivery | None:
        """The delivery for a buffered entry; None to skip it."""

    def _append(self, entry: E) -> None:
        self._buffer.append(entry)
        self._waiter.wake()

    def end(self) -> None:
        """Ends the iteration (after what is buffered is dropped); the broker calls it."""
        self._closed = True
        self._buffer.clear()
        self._waiter.wake()


class CoreSubscription(SubscriptionBase[Delivery]):
    """A core (at most once) subscription to ``pattern``, in ``queue_group`` if set."""

    def __init__(
        self,
        pattern: str,
        queue_group: str,
        limit: int,
        on_close: Callable[[CoreSubscription], None],
    ) -> None:
        super().__init__(limit)
        self.pattern = pattern
        self.queue_group = queue_group
        self._on_close = on_close
        self._dropped = 0

    def __repr__(self) -> str:
        queue = f" queue={self.queue_group}" if self.queue_group else ""
        return f"<CoreSubscription {self.pattern}{queue} buffered={len(self._buffer)}>"

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def next_sequence(self) -> int:
        return 0

    def push(self, delivery: Delivery) -> None:
        if self._closed:
            return
        if len(self._buffer) >= self._limit:
            self._dropped += 1
            if self._dropped == 1:
                logger.warning(
                    "slow core subscriber: dropping messages subject=%s queue_group=%s limit=%d",
                    self.pattern,
                    self.queue_group,
                    self._limit,
                )
            return
        self._append(delivery)

    def _take(self, entry: Delivery) -> Delivery | None:
        return entry

    async def close(self) -> None:
        if self._closed:
            return
        self.end()
        self._on_close(self)


class Route:
    """Who gets a subject's core messages: plain subscribers, and queue groups."""

    __slots__ = ("groups", "plain")

    def __init__(self, subs: tuple[CoreSubscription, ...]) -> None:
        self.plain = tuple(s for s in subs if not s.queue_group)
        groups: dict[str, list[CoreSubscription]] = {}
        for s in subs:
            if s.queue_group:
                groups.setdefault(s.queue_group, []).append(s)
        self.groups = tuple((name, tuple(members)) for name, members in groups.items())

    def __len__(self) -> int:
        return len(self.plain) + len(self.groups)


class CoreRouter:
    """The core subscriptions, indexed by pattern (`SubjectIndex`), and the routes of
    recently published subjects (dropped whenever a subscription comes or goes)."""

    _ROUTE_CACHE = 4096

    def __init__(self, queue_limit: int) -> None:
        self._queue_limit = queue_limit
        self._index: SubjectIndex[CoreSubscription] = SubjectIndex()
        self._routes: dict[str, Route] = {}
        self._rr: dict[str, int] = {}
        self._subs: set[CoreSubscription] = set()

    def subscribe(self, pattern: str, queue_group: str = "", limit: int = 0) -> CoreSubscription:
        sub = CoreSubscription(pattern, queue_group, limit or self._queue_limit, self._remove)
        self._index.add(pattern, sub)
        self._subs.add(sub)
        self._routes.clear()
        return sub

    def _remove(self, sub: CoreSubscription) -> None:
        if sub in self._subs:
            self._subs.discard(sub)
            self._index.remove(sub.pattern, sub)
            self._routes.clear()

    def route(self, subject: str) -> Route:
        route = self._routes.get(subject)
        if route is None:
            if len(self._routes) >= self._ROUTE_CACHE:
                self._routes.clear()
            route = self._routes[subject] = Route(self._index.match(subject))
        return route

    def deliver(self, route: Route, delivery: Delivery) -> None:
        for sub in route.plain:
            sub.push(delivery)
        for name, members in route.groups:
            # Round robin, skipping members whose buffer is full.
            start = self._rr.get(name, 0)
            self._rr[name] = start + 1
            n = len(members)
            chosen = members[start % n]
            for i in range(n):
                member = members[(start + i) % n]
                if member.room() > 0:
                    chosen = member
                    break
            chosen.push(delivery)

    def end_all(self) -> None:
        for sub in list(self._subs):
            sub.end()
        self._subs.clear()
        self._index = SubjectIndex()
        self._routes.clear()
