"""The gRPC face of the bus: ``MessagingService`` over any ``Broker``.

A thin adapter. Requests are checked at the edge (``_convert``), each unary
method goes through ``_call`` — the one place where broker and domain errors
become gRPC statuses, via ``serving.errors.to_status`` — and a draining
process turns new calls away with UNAVAILABLE.

``PublishBatch`` publishes its messages in order, through the broker's
``publish_many`` when it has one (the embedded broker: one commit for the
batch), else one ``publish`` each, all started before any is awaited; each
message gets its own result. An ``Ack`` call's items are settled together.

A Subscribe call is one session: the broker subscription is in place before
``Subscribed`` is sent; then deliveries are written as they come out of the
subscription's bounded queue — several per response for a ``batched``
request (a slow client stalls the writes, the broker
then drops core messages for it and holds durable ones back); the session
ends when the client cancels (the subscription is closed), when the broker
ends the subscription, or on :meth:`MessagingServicer.drain` (UNAVAILABLE, so
the client subscribes again elsewhere; a durable consumer resumes).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from ecosystem.v1 import messaging_pb2 as pb
from ecosystem.v1 import messaging_pb2_grpc as pb_grpc

from bus._errors import AckNotFoundError
from bus._protocol import (
    BatchPublisher,
    Broker,
    Delivery,
    OutgoingMessage,
    PublishAck,
    Subscription,
)
from bus.convert import (
    ack_items_from_proto,
    delivery_to_proto,
    publish_ack_to_proto,
    publish_error,
    publish_from_proto,
    request_from_proto,
    stream_config_from_proto,
    stream_name_from_proto,
    subscription_from_proto,
)
from serving.errors import (
    DeadlineExceededError,
    FieldViolation,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnavailableError,
    code_for,
    end_call,
    to_status,
)

__all__ = ["MAX_PUBLISH_BATCH", "MESSAGING_SERVICE", "MessagingServicer", "add_messaging"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]

#: Messages in one PublishBatch call, at most.
MAX_PUBLISH_BATCH = 1000

#: A `batch` response of a batched Subscribe carries at most this many
#: messages and this much payload (one larger message goes alone).
BATCH_MESSAGES = 256
BATCH_BYTES = 1024 * 1024

#: The full name of the service, for health and reflection.
MESSAGING_SERVICE: str = pb.DESCRIPTOR.services_by_name["MessagingService"].full_name


class MessagingServicer(pb_grpc.MessagingServiceServicer):
    """Serves ``broker`` (started and closed by its owner, not here).

    ``is_draining`` turns new calls away with UNAVAILABLE; :meth:`drain` also
    ends the open Subscribe streams. At most ``max_subscriptions`` Subscribe
    streams are open at once (RESOURCE_EXHAUSTED beyond).
    """

    def __init__(
        self,
        broker: Broker,
        *,
        is_draining: Callable[[], bool],
        max_subscriptions: int = 10_000,
    ) -> None:
        if max_subscriptions < 1:
            raise ValueError("max_subscriptions must be positive")
        self._broker = broker
        self._publish_all: Callable[[Sequence[OutgoingMessage]], Awaitable[Outcomes]] = (
            broker.publish_many
            if isinstance(broker, BatchPublisher)
            else functools.partial(_publish_each, broker)
        )
        self._is_draining = is_draining
        self._max_subscriptions = max_subscriptions
        self._subscriptions: set[Subscription] = set()
        self._draining = False
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def subscription_count(self) -> int:
        """Subscribe streams open now."""
        return len(self._subscriptions)

    async def drain(self) -> None:
        """Turns new calls away and ends every open Subscribe stream with
        UNAVAILABLE (their clients subscribe again, elsewhere). Idempotent."""
        self._draining = True
        subscriptions = list(self._subscriptions)
        if subscriptions:
            log.info("bus: ending %d subscription(s) to drain", len(subscriptions))
        for sub in subscriptions:
            await sub.close()

    async def wait_idle(self) -> None:
        """Returns when no unary call is in flight (used while draining)."""
        await self._idle.wait()

    def _refuse_if_draining(self) -> None:
        if self._draining or self._is_draining():
            raise UnavailableError("control plane is draining; use another address")

    async def _call(
        self, method: str, context: Context, work: Callable[[], Awaitable[T]]
    ) -> T | None:
        """``work()``'s result, or None once the call has been given the status of
        what ``work`` raised (see ``serving.errors.end_call``)."""
        self._inflight += 1
        self._idle.clear()
        try:
            self._refuse_if_draining()
            return await work()
        except Exception as exc:
            self._fail(method, context, exc)
            return None
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    def _fail(self, method: str, context: Context, exc: Exception) -> None:
        if code_for(exc) is None:
            log.exception("bus %s failed", method, exc_info=exc)
        end_call(context, to_status(exc))

    # -- unary ----------------------------------------------------------------------------

    async def Publish(
        self, request: pb.PublishRequest, context: Context
    ) -> pb.PublishResponse | None:
        async def publish() -> pb.PublishResponse:
            ack = await self._broker.publish(publish_from_proto(request))
            return publish_ack_to_proto(ack)

        return await self._call("Publish", context, publish)

    async def PublishBatch(
        self, request: pb.PublishBatchRequest, context: Context
    ) -> pb.PublishBatchResponse | None:
        async def publish_all() -> pb.PublishBatchResponse:
            count = len(request.messages)
            if count > MAX_PUBLISH_BATCH:
                problem = f"{count} in one batch; at most {MAX_PUBLISH_BATCH}"
                raise InvalidArgumentError([FieldViolation("messages", problem)])
            return pb.PublishBatchResponse(results=await self._publish_many(request))

        return await self._call("PublishBatch", context, publish_all)

    async def _publish_many(self, request: pb.PublishBatchRequest) -> list[pb.PublishResult]:
        results: list[pb.PublishResult | None] = []
        messages: list[OutgoingMessage] = []
        for item in request.messages:
            try:
                messages.append(publish_from_proto(item))
            except InvalidArgumentError as exc:
                results.append(pb.PublishResult(error=publish_error(exc)))
            else:
                results.append(None)
        outcomes = iter(await self._publish_all(messages))
        return [result or _publish_result(next(outcomes)) for result in results]

    async def Ack(self, request: pb.AckRequest, context: Context) -> pb.AckResponse | None:
        async def ack() -> pb.AckResponse:
            items = ack_items_from_proto(request)
            # Together: a broker that stores acknowledgements commits them at once.
            outcomes = await asyncio.gather(
                *(self._broker.ack(ack_id, kind, delay) for ack_id, kind, delay in items),
                return_exceptions=True,
            )
            unknown: list[str] = []
            for (ack_id, _, _), outcome in zip(items, outcomes, strict=True):
                if isinstance(outcome, AckNotFoundError):
                    unknown.append(ack_id)
                elif isinstance(outcome, BaseException):
                    raise outcome
            return pb.AckResponse(unknown=unknown)

        return await self._call("Ack", context, ack)

    async def Request(
        self, request: pb.RequestRequest, context: Context
    ) -> pb.RequestResponse | None:
        async def ask() -> pb.RequestResponse:
            subject, data, headers, timeout = request_from_proto(request)
            try:
                reply = await self._broker.request(subject, data, headers, timeout)
            except TimeoutError as exc:
                raise DeadlineExceededError(f"no reply on {subject!r} within {timeout:g}s") from exc
            return pb.RequestResponse(reply=delivery_to_proto(reply))

        return await self._call("Request", context, ask)

    async def AddStream(
        self, request: pb.AddStreamRequest, context: Context
    ) -> pb.AddStreamResponse | None:
        async def add() -> pb.AddStreamResponse:
            info, created = await self._broker.add_stream(stream_config_from_proto(request.config))
            if created:
                log.info("bus: stream %s created (%s)", info.config.name, info.config.subjects)
            return pb.AddStreamResponse(stream=info.to_proto(), created=created)

        return await self._call("AddStream", context, add)

    async def ListStreams(
        self, request: pb.ListStreamsRequest, context: Context
    ) -> pb.ListStreamsResponse | None:
        async def list_streams() -> pb.ListStreamsResponse:
            infos = await self._broker.streams()
            return pb.ListStreamsResponse(streams=[i.to_proto() for i in infos])

        return await self._call("ListStreams", context, list_streams)

    async def DeleteStream(
        self, request: pb.DeleteStreamRequest, context: Context
    ) -> pb.DeleteStreamResponse | None:
        async def delete() -> pb.DeleteStreamResponse:
            name = stream_name_from_proto(request.name)
            await self._broker.delete_stream(name)
            log.info("bus: stream %s deleted", name)
            return pb.DeleteStreamResponse()

        return await self._call("DeleteStream", context, delete)

    # -- the subscription stream ----------------------------------------------------------

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: Context
    ) -> AsyncIterator[pb.SubscribeResponse]:
        async def open_subscription() -> Subscription:
            spec = subscription_from_proto(request)
            if len(self._subscriptions) >= self._max_subscriptions:
                raise ResourceExhaustedError(
                    f"this control plane serves {self._max_subscriptions} subscriptions "
                    "already; try again later or another address"
                )
            return await self._broker.subscribe(spec)

        sub = await self._call("Subscribe", context, open_subscription)
        if sub is None:
            return
        self._subscriptions.add(sub)
        try:
            # The broker has no stream name for us when the request named
            # none (the capturing stream); brokers may expose it as `stream`.
            stream = request.stream or str(getattr(sub, "stream", "") or "")
            yield pb.SubscribeResponse(
                subscribed=pb.Subscribed(stream=stream, next_sequence=sub.next_sequence)
            )
            if request.batched:
                async for batch in _batches(sub):
                    messages = [delivery_to_proto(delivery) for delivery in batch]
                    yield pb.SubscribeResponse(batch=pb.MessageBatch(messages=messages))
            else:
                async for delivery in sub:
                    yield pb.SubscribeResponse(message=delivery_to_proto(delivery))
            if self._draining or self._is_draining():
                raise UnavailableError("control plane is draining; subscribe again elsewhere")
            raise UnavailableError("the broker ended this subscription; subscribe again")
        except Exception as exc:
            self._fail("Subscribe", context, exc)
        finally:
            self._subscriptions.discard(sub)
            await sub.close()
            if sub.dropped:
                log.info(
                    "bus: subscription to %r closed; %d message(s) dropped for a slow consumer",
                    request.subject,
                    sub.dropped,
                )


Outcomes = list[PublishAck | Exception]


async def _publish_each(broker: Broker, messages: Sequence[OutgoingMessage]) -> Outcomes:
    """``publish_many`` for a broker without it: one ``publish`` per message, all
    started in order before any is awaited. A broker takes each message's place
    (its sequence) before it first waits, so the order holds, and the durable
    ones share one commit. An unexpected error (a bug) is raised, not returned."""
    outcomes = await asyncio.gather(*map(broker.publish, messages), return_exceptions=True)
    results: Outcomes = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and (
            not isinstance(outcome, Exception) or code_for(outcome) is None
        ):
            raise outcome
        results.append(outcome)
    return results


#: The result of a core publish (nothing stored): the same every time.
_CORE_RESULT = pb.PublishResult(ack=pb.PublishResponse())


def _publish_result(outcome: PublishAck | Exception) -> pb.PublishResult:
    if isinstance(outcome, PublishAck):
        if not outcome.stream:
            return _CORE_RESULT
        return pb.PublishResult(ack=publish_ack_to_proto(outcome))
    return pb.PublishResult(error=publish_error(outcome))


async def _batches(sub: Subscription) -> AsyncIterator[list[Delivery]]:
    """What ``sub`` delivers, in order, as lists of what was ready together.

    One task reads ahead into a buffer of about ``BATCH_MESSAGES`` (so the
    subscription's own bound still applies behind it) while the stream
    writes; each list is what gathered meanwhile, at most ``BATCH_MESSAGES``
    messages and ``BATCH_BYTES`` of payload (a larger message goes alone).
    """
    ready: deque[Delivery] = deque()
    more = asyncio.Event()
    room = asyncio.Event()
    room.set()

    async def read() -> None:
        try:
            async for delivery in sub:
                ready.append(delivery)
                more.set()
                if len(ready) >= BATCH_MESSAGES:
                    room.clear()
                    await room.wait()
        finally:
            more.set()

    reader = asyncio.create_task(read(), name="bus-subscribe-read")
    try:
        while True:
            await more.wait()
            more.clear()
            while ready:
                batch = [ready.popleft()]
                size = len(batch[0].data)
                while ready and len(batch) < BATCH_MESSAGES:
                    size += len(ready[0].data)
                    if size > BATCH_BYTES:
                        break
                    batch.append(ready.popleft())
                room.set()
                yield batch
            if reader.done():
                reader.result()  # the subscription's error, if it ended with one
                return
    finally:
        reader.cancel()
        await asyncio.wait({reader})


def add_messaging(
    server: grpc.aio.Server,
    broker: Broker,
    is_draining: Callable[[], bool],
    *,
    max_subscriptions: int = 10_000,
) -> MessagingServicer:
    """Adds ``MessagingService`` over ``broker`` to ``server`` (not yet started)."""
    servicer = MessagingServicer(
        broker, is_draining=is_draining, max_subscriptions=max_subscriptions
    )
    pb_grpc.add_MessagingServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    return servicer
