"""The sidecar's bus relay: applications use the bus through their local sidecar.

:class:`RelayBroker` implements :class:`bus.Broker` over one
upstream connection (the SDK's transport, failing over between the
sidecar's ``controlplane.addresses``), and :func:`attach_relay` serves it as
``MessagingService`` on the sidecar's local API server, so ``eco bus …
--server <local api>`` and ``sdk.BusClient(<local api>)`` work unchanged.

- Core subscriptions to the same pattern and queue group share one upstream
  ``Subscribe`` stream (reference-counted) and fan out locally, each local
  subscriber with its own bounded queue: a slow one is reported once and
  loses messages without stalling the others. Durable subscriptions get one
  upstream stream each (per-consumer flow control). Upstream streams
  resubscribe by themselves when the control plane comes back.
- Publishes while the control plane is unreachable are buffered (bounded:
  ``max_buffered`` messages and ``max_buffered_bytes``; beyond,
  BusUnavailableError) and flushed in order on reconnect; those for
  subjects a durable stream captures are kept on disk (``_outbox``)
  and survive a sidecar restart. A buffered publish returns a
  :class:`QueuedPublishAck` (``stream=""``, ``sequence=0``, ``queued=True``).
- Ack, request and the stream calls pass through; UNAVAILABLE when the
  control plane cannot be reached. What the control plane answers becomes
  the matching broker error in one place (``_errors.bus_error``), so the local
  servicer answers with the same status code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from ecosystem.v1 import messaging_pb2 as pb

import sdk
from bus import (
    MAX_PAYLOAD,
    AckNotFoundError,
    BusClosedError,
    BusError,
    Delivery,
    InvalidSubjectError,
    OutgoingMessage,
    PayloadTooLargeError,
    PublishAck,
    Subscription,
    SubscriptionSpec,
)
from bus.convert import subject_problem
from bus.servicer import MessagingServicer, add_messaging
from bus.subjects import subject_matches
from sdk import (
    AckKind,
    ChannelFactory,
    RetryPolicy,
    StreamConfig,
    StreamInfo,
)
from sdk.lowlevel import AckBatcher, Backoff, PublishBatcher, Transport, publish_request
from sidecar.relay._errors import bus_error
from sidecar.relay._outbox import BUFFER_FILE, Outbox
from sidecar.relay._subscriptions import Upstream, delivery_from_proto, subscribe_request

__all__ = ["QueuedPublishAck", "RelayBroker", "attach_relay"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class QueuedPublishAck(PublishAck):
    """A publish the relay buffered (the control plane was unreachable).

    Over gRPC it reads as ``stream=""``, ``sequence=0``: for a subject a
    durable stream captures, that pair means "queued by the relay".
    """

    queued: bool = True


def _publish_request(message: OutgoingMessage) -> pb.PublishRequest:
    m = message
    return publish_request(m.subject, m.data, m.headers, m.id, m.reply_to)


def _publish_ack(response: pb.PublishResponse) -> PublishAck:
    return PublishAck(
        stream=response.stream, sequence=response.sequence, duplicate=response.duplicate
    )


class RelayBroker:
    """A :class:`~bus.Broker` that forwards to the control plane.

    ``addresses``: the control planes, in order of preference. ``data_dir``:
    where durable-subject publishes are buffered (None: memory only).
    ``queue_limit``: each local subscriber's queue. ``start()`` loads the
    buffer and begins connecting; ``close()`` (idempotent) ends every
    subscription and keeps the on-disk buffer for the next start.
    """

    def __init__(
        self,
        addresses: Sequence[str],
        data_dir: Path | None,
        *,
        timeout: float = 5.0,
        queue_limit: int = 1024,
        max_buffered: int = 10_000,
        max_buffered_bytes: int = 64 * 1024 * 1024,
        channel_factory: ChannelFactory | None = None,
    ) -> None:
        if queue_limit < 1:
            raise ValueError("queue_limit must be positive")
        self._transport = Transport(
            tuple(addresses),
            timeout=timeout,
            policy=RetryPolicy(max_attempts=2),
            channel_factory=channel_factory,
        )
        # Concurrent local publishes go upstream together, in order.
        self._publishes = PublishBatcher(self._transport)
        self._acks = AckBatcher(self._transport)
        path = data_dir / BUFFER_FILE if data_dir is not None else None
        self._outbox = Outbox(path, max_messages=max_buffered, max_bytes=max_buffered_bytes)
        self._queue_limit = queue_limit
        self._upstreams: dict[tuple[str, str], Upstream] = {}
        self._durables: set[Upstream] = set()
        self._captured: tuple[str, ...] = ()
        self._connected = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False

    # -- observability ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the last call to the control plane got through and nothing waits to flush."""
        return self._connected and not len(self._outbox)

    @property
    def buffered(self) -> int:
        """Publishes waiting for the control plane."""
        return len(self._outbox)

    @property
    def upstream_subscriptions(self) -> int:
        """Open upstream Subscribe streams (shared core ones count once)."""
        return len(self._upstreams) + len(self._durables)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("a relay can be started once")
        self._started = True
        self._captured = tuple(self._outbox.open())
        # Optimistic until a call fails: publishes go straight through (unless
        # a previous run left some to flush first, which keeps them in order).
        self._connected = True
        self._task = asyncio.create_task(self._connect_loop(), name="relay-connect")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
        for upstream in [*self._upstreams.values(), *self._durables]:
            await upstream.close()
        await self._publishes.close(self._transport.timeout)
        await self._acks.close(self._transport.timeout)
        lost = self._outbox.drop_memory()
        if lost:
            logger.warning("bus relay closed: %d buffered core publish(es) lost", lost)
        if len(self._outbox):
            logger.info("bus relay closed: %d durable publish(es) kept on disk", len(self._outbox))
        self._outbox.close()
        await self._transport.close()

    def _check_open(self) -> None:
        if self._closed or not self._started:
            raise BusClosedError(
                "the relay is closed" if self._closed else "the relay is not started"
            )

    # -- connection -------------------------------------------------------------------------

    def _disconnected(self, err: BaseException) -> None:
        if self._connected and not self._closed:
            logger.warning("bus relay: control plane unreachable (%s); buffering publishes", err)
        self._connected = False
        self._wake.set()

    async def _connect_loop(self) -> None:
        """Learns the captured subjects and flushes the buffer in order, first on
        start and then whenever a call found the control plane unreachable
        (retrying with jittered backoff until it answers)."""
        backoff = Backoff(0.05, 2.0)
        due = True
        while True:
            if self._connected and not due:
                await self._wake.wait()
                self._wake.clear()
                continue
            try:
                await self._refresh_captured()
                await self._flush()
            except sdk.EcoError as err:
                self._disconnected(err)
                await asyncio.sleep(backoff.next_delay())
                continue
            due = False
            backoff.reset()
            if not self._connected:
                self._connected = True
                logger.info("bus relay: connected to %s", self._transport.current_address)

    async def _refresh_captured(self) -> None:
        response = await self._transport.unary(
            "ListStreams", pb.ListStreamsRequest(), idempotent=True
        )
        patterns = tuple(p for s in response.streams for p in s.config.subjects)
        if patterns != self._captured:
            self._captured = patterns
            self._outbox.remember_captured(patterns)

    async def _flush(self) -> None:
        sent = 0
        while (item := self._outbox.peek()) is not None:
            try:
                await self._send(item.message)
            except sdk.UnavailableError:
                raise
            except sdk.EcoError as err:  # the control plane refused it: never will take it
                logger.warning(
                    "bus relay: buffered publish to %r refused: %s", item.message.subject, err
                )
            self._outbox.pop()
            sent += 1
        if sent:
            logger.info("bus relay: %d buffered publish(es) flushed", sent)

    def _captures(self, subject: str) -> bool:
        return any(subject_matches(p, subject) for p in self._captured)

    # -- publish ----------------------------------------------------------------------------

    async def _send(self, message: OutgoingMessage) -> PublishAck:
        return _publish_ack(await self._publishes.submit(_publish_request(message)))

    async def publish(self, message: OutgoingMessage) -> PublishAck:
        self._check_open()
        # While anything waits in the buffer, new publishes queue behind it (order).
        if self._connected and not len(self._outbox):
            try:
                return await self._send(message)
            except sdk.UnavailableError as err:
                self._disconnected(err)
            except sdk.EcoError as err:
                raise bus_error(err) from err
        return self._buffer(message)

    async def publish_many(
        self, messages: Sequence[OutgoingMessage]
    ) -> list[PublishAck | Exception]:
        """Each message as :meth:`publish` would, in order, going upstream together."""
        self._check_open()
        if not (self._connected and not len(self._outbox)):
            return [self._buffer_or_error(message) for message in messages]
        futures = self._publishes.submit_all([_publish_request(m) for m in messages])
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        results: list[PublishAck | Exception] = []
        for message, outcome in zip(messages, outcomes, strict=True):
            if isinstance(outcome, pb.PublishResponse):
                results.append(_publish_ack(outcome))
            elif isinstance(outcome, sdk.UnavailableError):
                self._disconnected(outcome)
                results.append(self._buffer_or_error(message))
            elif isinstance(outcome, sdk.EcoError):
                results.append(bus_error(outcome))
            else:
                raise outcome
        return results

    def _buffer_or_error(self, message: OutgoingMessage) -> PublishAck | Exception:
        try:
            return self._buffer(message)
        except BusError as exc:
            return exc

    def _buffer(self, message: OutgoingMessage) -> PublishAck:
        """Keeps ``message`` for the flush (on disk when a stream captures it)."""
        # What the control plane would refuse at the flush is refused now.
        problem = subject_problem(message.subject, pattern=False)
        if problem is not None:
            raise InvalidSubjectError(problem, field="subject")
        if len(message.data) > MAX_PAYLOAD:
            raise PayloadTooLargeError(
                f"{len(message.data)} bytes is over the limit of {MAX_PAYLOAD}", field="data"
            )
        durable = self._captures(message.subject)
        if durable and not message.id:
            # An id makes the flush safe to retry: the stream's duplicate
            # window drops a second copy of a publish whose answer was lost.
            message = dataclasses.replace(message, id=f"relay-{uuid.uuid4().hex}")
        self._outbox.push(message, durable=durable)
        return QueuedPublishAck()

    # -- subscribe --------------------------------------------------------------------------

    async def subscribe(self, spec: SubscriptionSpec) -> Subscription:
        self._check_open()
        request = subscribe_request(spec)
        timeout = self._transport.timeout
        if spec.durable:
            blame = "stream" if spec.stream else "subject"
            upstream = Upstream(
                self._transport,
                request,
                map_error=lambda err: bus_error(err, blame),
                on_idle=self._durables.discard,
            )
            self._durables.add(upstream)
            return await upstream.attach(self._queue_limit, timeout)
        key = (spec.subject, spec.queue_group)
        shared = self._upstreams.get(key)
        if shared is None:
            shared = Upstream(
                self._transport,
                request,
                map_error=lambda err: bus_error(err, "subject"),
                on_idle=self._forget,
            )
            self._upstreams[key] = shared
        return await shared.attach(self._queue_limit, timeout)

    def _forget(self, upstream: Upstream) -> None:
        key = (upstream.request.subject, upstream.request.queue_group)
        if self._upstreams.get(key) is upstream:
            del self._upstreams[key]

    # -- pass-through -----------------------------------------------------------------------

    async def _unary(
        self,
        method: str,
        request: object,
        *,
        idempotent: bool,
        time_limit: float | None = None,
        field: str = "",
    ) -> object:
        self._check_open()
        try:
            return await self._transport.unary(
                method, request, idempotent=idempotent, time_limit=time_limit
            )
        except sdk.UnavailableError as err:
            self._disconnected(err)
            raise bus_error(err, field) from err
        except sdk.EcoError as err:
            raise bus_error(err, field) from err

    async def ack(self, ack_id: str, kind: AckKind, delay: float = 0.0) -> None:
        self._check_open()
        item = pb.AckItem(ack_id=ack_id, kind=kind.to_proto(), delay_ms=round(delay * 1000))
        try:
            known = await self._acks.submit(item)  # together with the others in flight
        except sdk.InvalidArgumentError as err:  # an id the control plane cannot parse
            raise AckNotFoundError(err.message, field="ack_id") from err
        except sdk.UnavailableError as err:
            self._disconnected(err)
            raise bus_error(err) from err
        except sdk.EcoError as err:
            raise bus_error(err) from err
        if not known:
            raise AckNotFoundError(f"no pending delivery {ack_id!r}", field="ack_id")

    async def request(
        self,
        subject: str,
        data: bytes,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
    ) -> Delivery:
        request = pb.RequestRequest(
            subject=subject,
            data=data,
            headers=dict(headers or {}),
            timeout_ms=max(1, round(timeout * 1000)),
        )
        response = await self._unary(
            "Request", request, idempotent=False, time_limit=timeout + self._transport.timeout
        )
        assert isinstance(response, pb.RequestResponse)
        return delivery_from_proto(response.reply)

    async def add_stream(self, config: StreamConfig) -> tuple[StreamInfo, bool]:
        if config.max_age and config.duplicate_window > config.max_age:
            # The API refuses a window longer than the age limit; brokers clamp it.
            config = dataclasses.replace(config, duplicate_window=config.max_age)
        request = pb.AddStreamRequest(config=config.to_proto())
        response = await self._unary("AddStream", request, idempotent=True, field="name")
        assert isinstance(response, pb.AddStreamResponse)
        await self._note_streams()
        return StreamInfo.from_proto(response.stream), response.created

    async def streams(self) -> list[StreamInfo]:
        response = await self._unary("ListStreams", pb.ListStreamsRequest(), idempotent=True)
        assert isinstance(response, pb.ListStreamsResponse)
        return [StreamInfo.from_proto(s) for s in response.streams]

    async def delete_stream(self, name: str) -> None:
        await self._unary(
            "DeleteStream", pb.DeleteStreamRequest(name=name), idempotent=False, field="name"
        )
        await self._note_streams()

    async def _note_streams(self) -> None:
        """Learns the captured subjects again after a stream change (best effort)."""
        try:
            await self._refresh_captured()
        except sdk.EcoError as err:
            logger.debug("bus relay: cannot list streams: %s", err)


async def attach_relay(
    server: grpc.aio.Server,
    addresses: Sequence[str],
    data_dir: Path | None,
    is_draining: Callable[[], bool],
    *,
    channel_factory: ChannelFactory | None = None,
) -> tuple[RelayBroker, MessagingServicer]:
    """Starts a relay to ``addresses`` and adds ``MessagingService`` over it to
    ``server`` (not yet started). The caller stops the server, then
    ``await relay.close()``."""
    relay = RelayBroker(addresses, data_dir, channel_factory=channel_factory)
    await relay.start()
    servicer = add_messaging(server, relay, is_draining)
    return relay, servicer
