"""The relay's subscriptions: upstream subscriptions and the local subscribers they feed.

An :class:`Upstream` is one subscription over the relay's current link (a
``Subscribe`` stream to the control plane, or a subscription on NATS), read
by one task that subscribes again (with jittered backoff) when it was cut
off, and on the new link when the relay changes links. Core upstreams are
shared by every local subscription to the same pattern and queue group, and
hand each message to every local subscriber (in a queue group: to one local
member, in turn) through its bounded queue without waiting: a full queue
drops the message for that subscriber only (counted, and reported once). A
durable upstream feeds exactly one local subscriber and waits for room
instead, so the consumer's ``max_ack_pending`` flow control reaches the
application.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable

from bus import BusClosedError, Delivery, SubscriptionSpec
from sdk.lowlevel import Backoff
from sidecar.relay._link import CUT_OFF, Link, Subscribed

__all__ = ["LocalSubscription", "Upstream"]

logger = logging.getLogger(__name__)


class LocalSubscription:
    """What the relay hands to ``MessagingServicer``: one local subscriber's
    bounded queue (a deque and the one reader and writer that may wait on it)."""

    def __init__(self, upstream: Upstream, limit: int) -> None:
        self._upstream = upstream
        self._limit = limit
        self._items: deque[Delivery] = deque()
        self._reader: asyncio.Future[None] | None = None
        self._writer: asyncio.Future[None] | None = None
        self._ended = False
        self._dropped = 0

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def next_sequence(self) -> int:
        return self._upstream.next_sequence

    @property
    def stream(self) -> str:
        return self._upstream.stream

    @property
    def has_room(self) -> bool:
        return len(self._items) < self._limit

    def offer(self, delivery: Delivery) -> None:
        """Core: queue without waiting, or drop (reported once per subscriber)."""
        if self._ended:
            return
        if len(self._items) >= self._limit:
            self._dropped += 1
            if self._dropped == 1:
                logger.warning(
                    "bus relay: slow local subscriber to %r; dropping its messages",
                    self._upstream.spec.subject,
                )
            return
        self._items.append(delivery)
        _wake(self._reader)

    async def put(self, delivery: Delivery) -> None:
        """Durable: wait for room (backpressure to the broker)."""
        while len(self._items) >= self._limit and not self._ended:
            self._writer = asyncio.get_running_loop().create_future()
            await self._writer
        if not self._ended:
            self._items.append(delivery)
            _wake(self._reader)

    def end(self) -> None:
        """The upstream is gone for good: iteration stops after what is queued."""
        if self._ended:
            return
        self._ended = True
        _wake(self._reader)
        _wake(self._writer)

    def __aiter__(self) -> LocalSubscription:
        return self

    async def __anext__(self) -> Delivery:
        while not self._items:
            if self._ended:
                raise StopAsyncIteration
            self._reader = asyncio.get_running_loop().create_future()
            await self._reader
        delivery = self._items.popleft()
        _wake(self._writer)
        return delivery

    async def close(self) -> None:
        if self._ended:
            return
        self.end()
        await self._upstream.detach(self)


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class Upstream:
    """One subscription upstream and its local subscribers. ``link()`` is the
    relay's current link (read at each subscribe)."""

    def __init__(
        self,
        spec: SubscriptionSpec,
        link: Callable[[], Link],
        *,
        on_idle: Callable[[Upstream], None],
    ) -> None:
        self.spec = spec
        self._link = link
        self._on_idle = on_idle
        self._subscribers: list[LocalSubscription] = []
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._backoff = Backoff(0.05, 2.0)
        self._turn = 0
        self.stream = ""
        self.next_sequence = 0
        #: times the subscription was (re)made upstream, for tests and status
        self.connects = 0

    @property
    def durable(self) -> bool:
        return bool(self.spec.durable)

    @property
    def key(self) -> tuple[str, str]:
        return (self.spec.subject, self.spec.queue_group)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    async def attach(self, limit: int, timeout: float) -> LocalSubscription:
        """A new local subscriber; the first one makes the subscription and waits
        for the broker to confirm it (raising what it answered instead)."""
        sub = LocalSubscription(self, limit)
        self._subscribers.append(sub)
        if self._task is None:
            self._ready = asyncio.get_running_loop().create_future()
            self._start()
        assert self._ready is not None
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._ready)
        except BaseException:
            await sub.close()
            raise
        return sub

    def _start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"relay-sub:{self.spec.subject}")

    async def relink(self) -> None:
        """Subscribes again over the relay's current link (it changed): core
        messages published meanwhile are not seen; a durable consumer resumes."""
        task = self._task
        if task is None or self._ready is None or not self._ready.done():
            return  # not subscribed yet (its first try reads the new link) or ended
        task.cancel()
        await asyncio.wait({task})
        if self._task is task:
            self._start()

    async def detach(self, sub: LocalSubscription) -> None:
        if sub in self._subscribers:
            self._subscribers.remove(sub)
        if not self._subscribers:
            await self.close()

    async def close(self) -> None:
        """Ends the subscription and every local subscriber. Idempotent."""
        self._on_idle(self)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(BusClosedError("the relay subscription was closed"))
            self._ready.exception()  # retrieved: nobody else may wait for it
        for sub in list(self._subscribers):
            sub.end()
        self._subscribers.clear()

    async def _run(self) -> None:
        assert self._ready is not None
        ready = self._ready
        # The first subscribe tries each control-plane address once (the
        # transport moves on after UNAVAILABLE) before the caller hears of it.
        tries = self._link().attempts
        while True:
            try:
                await self._read(ready)
                error: Exception = BusClosedError("the subscription ended")
            except Exception as exc:
                error = exc
            cut_off = isinstance(error, CUT_OFF)
            tries -= 1
            if not ready.done() and cut_off and tries > 0:
                continue
            if not ready.done():
                # The first subscribe failed: the caller gets the answer.
                ready.set_exception(error)
                self._finish()
                return
            if not cut_off:
                logger.warning("bus relay: subscription %r ended: %s", self.spec.subject, error)
                self._finish()
                return
            delay = self._backoff.next_delay()
            logger.info(
                "bus relay: subscription %r interrupted (%s); resubscribing in %.2fs",
                self.spec.subject,
                error,
                delay,
            )
            await asyncio.sleep(delay)

    def _finish(self) -> None:
        self._on_idle(self)
        for sub in list(self._subscribers):
            sub.end()

    async def _read(self, ready: asyncio.Future[None]) -> None:
        events: AsyncIterator[Subscribed | Delivery] = self._link().subscribe(self.spec)
        try:
            async for event in events:
                if isinstance(event, Delivery):
                    await self._deliver(event)
                else:
                    self.stream = event.stream
                    self.next_sequence = event.next_sequence
                    self.connects += 1
                    self._backoff.reset()
                    if not ready.done():
                        ready.set_result(None)
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _deliver(self, delivery: Delivery) -> None:
        if self.durable:
            for sub in self._subscribers[:1]:
                await sub.put(delivery)
        elif self.spec.queue_group:
            self._offer_one(delivery)
        else:
            for sub in self._subscribers:
                sub.offer(delivery)

    def _offer_one(self, delivery: Delivery) -> None:
        """Queue group: the upstream subscription is one member of the group upstream;
        each of its messages goes to one local member, in turn, skipping
        members whose queue is full (dropped only when all are)."""
        subs = self._subscribers
        if not subs:
            return
        for i in range(len(subs)):
            sub = subs[(self._turn + i) % len(subs)]
            if sub.has_room:
                self._turn = (self._turn + i + 1) % len(subs)
                sub.offer(delivery)
                return
        subs[self._turn % len(subs)].offer(delivery)
