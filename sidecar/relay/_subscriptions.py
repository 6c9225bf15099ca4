"""The relay's subscriptions: upstream Subscribe streams and the local subscribers they feed.

An :class:`Upstream` is one ``Subscribe`` stream to the control plane, read
by one task that resubscribes (with jittered backoff) when the control
plane goes away. Core upstreams are shared by every local subscription to
the same pattern and queue group, and hand each message to every local
subscriber (in a queue group: to one local member, in turn) through its
bounded queue without waiting: a full queue drops the message for that
subscriber only (counted, and reported once). A durable upstream feeds exactly one
local subscriber and waits for room instead, so the control plane's
``max_ack_pending`` flow control reaches the application.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from types import MappingProxyType

from ecosystem.v1 import messaging_pb2 as pb

from bus import BusClosedError, Delivery, SubscriptionSpec
from sdk import EcoError, UnavailableError
from sdk.lowlevel import Backoff, Transport

__all__ = ["LocalSubscription", "Upstream", "delivery_from_proto", "subscribe_request"]

logger = logging.getLogger(__name__)

ErrorMapper = Callable[[EcoError], BaseException]


#: The headers of every delivery that has none (read-only, shared).
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


def delivery_from_proto(msg: pb.Message) -> Delivery:
    return Delivery(
        subject=msg.subject,
        data=msg.data,
        headers=dict(msg.headers) if msg.headers else _NO_HEADERS,
        id=msg.id,
        reply_to=msg.reply_to,
        stream=msg.stream,
        sequence=msg.sequence,
        published_at=msg.published_at_ms / 1000,
        delivery_count=msg.delivery_count,
        ack_id=msg.ack_id,
    )


def subscribe_request(spec: SubscriptionSpec) -> pb.SubscribeRequest:
    """The upstream request for ``spec`` (already validated by the local servicer)."""
    if not spec.durable:
        return pb.SubscribeRequest(subject=spec.subject, queue_group=spec.queue_group, batched=True)
    return pb.SubscribeRequest(
        batched=True,
        subject=spec.subject,
        queue_group=spec.queue_group,
        durable=spec.durable,
        stream=spec.stream,
        deliver=spec.deliver.to_proto(),
        start_sequence=spec.start_sequence,
        start_time_ms=round(spec.start_time * 1000),
        ack_wait_ms=round(spec.ack_wait * 1000),
        max_deliver=spec.max_deliver,
        max_ack_pending=spec.max_ack_pending,
        backoff_ms=[max(1, round(b * 1000)) for b in spec.backoff],
    )


class LocalSubscription:
    """What the relay hands to ``MessagingServicer``: one local subscriber's queue."""

    def __init__(self, upstream: Upstream, limit: int) -> None:
        self._upstream = upstream
        self._queue: asyncio.Queue[Delivery | None] = asyncio.Queue(maxsize=limit)
        self._closed = False
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
        return not self._queue.full()

    def offer(self, delivery: Delivery) -> None:
        """Core: queue without waiting, or drop (reported once per subscriber)."""
        try:
            self._queue.put_nowait(delivery)
        except asyncio.QueueFull:
            self._dropped += 1
            if self._dropped == 1:
                logger.warning(
                    "bus relay: slow local subscriber to %r; dropping its messages",
                    self._upstream.request.subject,
                )

    async def put(self, delivery: Delivery) -> None:
        """Durable: wait for room (backpressure to the control plane)."""
        await self._queue.put(delivery)

    def end(self) -> None:
        """The upstream is gone for good: iteration stops after what is queued."""
        if self._closed:
            return
        self._closed = True
        while True:
            try:
                self._queue.put_nowait(None)
                return
            except asyncio.QueueFull:
                self._queue.get_nowait()

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item

    async def close(self) -> None:
        if self._closed:
            return
        self.end()
        await self._upstream.detach(self)


class Upstream:
    """One ``Subscribe`` stream to the control plane and its local subscribers."""

    def __init__(
        self,
        transport: Transport,
        request: pb.SubscribeRequest,
        *,
        map_error: ErrorMapper,
        on_idle: Callable[[Upstream], None],
    ) -> None:
        self.request = request
        self._transport = transport
        self._map_error = map_error
        self._on_idle = on_idle
        self._subscribers: list[LocalSubscription] = []
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._backoff = Backoff(0.05, 2.0)
        self._turn = 0
        self.stream = ""
        self.next_sequence = 0
        #: times the stream was (re)opened, for tests and status
        self.connects = 0

    @property
    def durable(self) -> bool:
        return bool(self.request.durable)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    async def attach(self, limit: int, timeout: float) -> LocalSubscription:
        """A new local subscriber; the first one opens the stream and waits for
        the control plane to confirm it (raising what it answered instead)."""
        sub = LocalSubscription(self, limit)
        self._subscribers.append(sub)
        if self._task is None:
            self._ready = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(self._run(), name=f"relay-sub:{self.request.subject}")
        assert self._ready is not None
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._ready)
        except BaseException:
            await sub.close()
            raise
        return sub

    async def detach(self, sub: LocalSubscription) -> None:
        if sub in self._subscribers:
            self._subscribers.remove(sub)
        if not self._subscribers:
            await self.close()

    async def close(self) -> None:
        """Ends the stream and every local subscriber. Idempotent."""
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
        # The first subscribe tries each address once (the transport moves on
        # after UNAVAILABLE) before the caller hears of it.
        tries = len(self._transport.addresses)
        while True:
            try:
                await self._read(ready)
                error: BaseException = UnavailableError("the control plane ended the subscription")
            except EcoError as exc:
                error = exc
            tries -= 1
            if not ready.done() and isinstance(error, UnavailableError) and tries > 0:
                continue
            if not ready.done():
                # The first subscribe failed: the caller gets the answer.
                mapped = self._map_error(error) if isinstance(error, EcoError) else error
                ready.set_exception(mapped)
                self._finish()
                return
            if not isinstance(error, UnavailableError):
                logger.warning("bus relay: subscription %r ended: %s", self.request.subject, error)
                self._finish()
                return
            delay = self._backoff.next_delay()
            logger.info(
                "bus relay: subscription %r interrupted (%s); resubscribing in %.2fs",
                self.request.subject,
                error,
                delay,
            )
            await asyncio.sleep(delay)

    def _finish(self) -> None:
        self._on_idle(self)
        for sub in list(self._subscribers):
            sub.end()

    async def _read(self, ready: asyncio.Future[None]) -> None:
        stream = self._transport.stream("Subscribe", self.request)
        async with contextlib.aclosing(stream) as responses:
            async for response in responses:
                kind = response.WhichOneof("kind")
                if kind == "batch":
                    for message in response.batch.messages:
                        await self._deliver(delivery_from_proto(message))
                elif kind == "message":
                    await self._deliver(delivery_from_proto(response.message))
                elif kind == "subscribed":
                    self.stream = response.subscribed.stream
                    self.next_sequence = response.subscribed.next_sequence
                    self.connects += 1
                    self._backoff.reset()
                    if not ready.done():
                        ready.set_result(None)

    async def _deliver(self, delivery: Delivery) -> None:
        if self.durable:
            for sub in self._subscribers[:1]:
                await sub.put(delivery)
        elif self.request.queue_group:
            self._offer_one(delivery)
        else:
            for sub in self._subscribers:
                sub.offer(delivery)

    def _offer_one(self, delivery: Delivery) -> None:
        """Queue group: the upstream stream is one member of the group upstream;
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
