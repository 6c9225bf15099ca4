"""The asyncio client of the message bus (``MessagingService``).

Every call goes through the SDK's :class:`~sdk._transport.Transport`, so
errors are the SDK's own (translated at its one point, ``sdk._errors``),
deadlines and failover are the registry client's. A subscription is one server stream
read by one task into a bounded queue: when the caller falls behind, the
queue fills, the stream stalls and the broker holds durable deliveries back
(or drops core messages for this subscriber). Acknowledgements from any
number of messages are coalesced into few ``Ack`` calls by one task.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Self

from ecosystem.v1 import messaging_pb2 as pb

from sdk._errors import ClientClosedError
from sdk._retry import RetryPolicy
from sdk._transport import (
    CaFile,
    ChannelFactory,
    Transport,
    client_channels,
    resolve_servers,
    resolve_token,
)
from sdk.bus._batch import AckBatcher, PublishBatcher, publish_request
from sdk.bus._subscription import BusSubscription
from sdk.bus._types import AckKind, BusMessage, DeliverPolicy, PublishResult, StreamInfo

__all__ = ["BusClient"]

logger = logging.getLogger(__name__)

_INT32_MAX = 2**31 - 1


def _payload(data: bytes | bytearray | memoryview | str) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"data must be bytes or str, not {type(data).__name__}")


def _millis(name: str, seconds: float | None, *, default: int = 0) -> int:
    if seconds is None:
        return default
    if seconds < 0:
        raise ValueError(f"{name} must not be negative")
    ms = round(seconds * 1000)
    if ms > _INT32_MAX:
        raise ValueError(f"{name} is too long")
    return ms


class BusClient:
    """Publishes, subscribes, asks and manages durable streams over the bus.

    ``servers``, ``timeout``, ``retry``, ``ca_file``, ``channel_factory`` and ``token`` are as for
    :class:`~sdk.AsyncClient`. Nothing connects until the first call. Use
    it as an async context manager, or call :meth:`close` (which also closes
    its subscriptions); a closed client cannot be reopened::

        async with BusClient() as bus:
            await bus.publish("orders.created", b'{"id": 7}')
            async with bus.subscribe("orders.>", durable="billing") as sub:
                async for message in sub:
                    ...
                    await message.ack()
    """

    def __init__(
        self,
        servers: str | Sequence[str] | None = None,
        *,
        timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        ca_file: CaFile | None = None,
        channel_factory: ChannelFactory | None = None,
        token: str | None = None,
    ) -> None:
        transport = Transport(
            resolve_servers(servers),
            timeout=timeout,
            policy=retry,
            channel_factory=client_channels(ca_file, channel_factory),
            token=resolve_token(token),
        )
        self._setup(transport, owns_transport=True)

    @classmethod
    def _over(cls, transport: Transport) -> BusClient:
        """A bus client sharing another client's transport (``AsyncClient.bus``);
        closing it leaves the transport open."""
        client = cls.__new__(cls)
        client._setup(transport, owns_transport=False)
        return client

    def _setup(self, transport: Transport, *, owns_transport: bool) -> None:
        self._transport = transport
        self._owns_transport = owns_transport
        self._acks = AckBatcher(transport)
        self._publishes = PublishBatcher(transport)
        self._subscriptions: set[BusSubscription] = set()
        self._closed = False

    @property
    def servers(self) -> tuple[str, ...]:
        return self._transport.addresses

    @property
    def closed(self) -> bool:
        return self._closed or self._transport.closed

    async def __aenter__(self) -> Self:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the subscriptions, sends acknowledgements already asked for
        (within the timeout), and closes the channels. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            for sub in list(self._subscriptions):
                await sub.close()
            await self._publishes.close(self._transport.timeout)
            await self._acks.close(self._transport.timeout)
        finally:
            if self._owns_transport:
                await self._transport.close()

    def _check_open(self) -> None:
        if self.closed:
            raise ClientClosedError()

    # -- core -----------------------------------------------------------------------------

    async def publish(
        self,
        subject: str,
        data: bytes | str = b"",
        *,
        headers: Mapping[str, str] | None = None,
        id: str = "",
        reply_to: str = "",
    ) -> PublishResult:
        """Publishes one message; ``str`` data is sent as UTF-8.

        For a subject a durable stream captures, returns once it is stored,
        with its sequence; with an ``id`` seen within that stream's
        duplicate window, nothing is stored again and ``duplicate`` is True
        (a publish with an ``id`` is therefore retried when the control
        plane is unavailable; one without is attempted once).

        Concurrent publishes from one client are sent together (one
        ``PublishBatch`` call carries those that arrived while the previous
        call was in flight), in the order they were made; each still
        returns or raises on its own.
        """
        self._check_open()
        request = publish_request(subject, _payload(data), headers, id, reply_to)
        response = await self._publishes.submit(request)
        return PublishResult(
            subject=subject,
            stream=response.stream,
            sequence=response.sequence,
            duplicate=response.duplicate,
        )

    async def send(
        self,
        subject: str,
        data: bytes | str = b"",
        *,
        headers: Mapping[str, str] | None = None,
        id: str = "",
        reply_to: str = "",
    ) -> None:
        """Queues one message for publishing and returns without waiting for
        the answer (as a NATS client's publish does): the fastest way to send
        many messages. It waits only while 10,000 messages are queued already.

        Sent in order with :meth:`publish` calls, in the same batches. Nothing
        tells the caller whether a message got through: a refused one (bad
        subject, too large, control plane unreachable) is logged and counted
        in :attr:`send_errors`. Use :meth:`publish` to know that a durable
        message was stored.
        """
        self._check_open()
        request = publish_request(subject, _payload(data), headers, id, reply_to)
        await self._publishes.enqueue(request)

    @property
    def send_errors(self) -> int:
        """Messages queued with :meth:`send` that were refused or could not be sent."""
        return self._publishes.unwaited_errors

    async def request(
        self,
        subject: str,
        data: bytes | str = b"",
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
    ) -> BusMessage:
        """Publishes a request and returns the first reply.

        Raises :class:`~sdk.NoRespondersError` at once when nothing
        subscribes to ``subject``, and :class:`~sdk.DeadlineExceededError`
        when no reply comes within ``timeout`` seconds (at most 300).
        """
        self._check_open()
        if not 0 < timeout <= 300:
            raise ValueError("timeout must be more than 0 and at most 300 seconds")
        request = pb.RequestRequest(
            subject=subject,
            data=_payload(data),
            headers=dict(headers or {}),
            timeout_ms=max(1, round(timeout * 1000)),
        )
        # The server answers DEADLINE_EXCEEDED itself at `timeout`; the call's
        # own deadline leaves room for that answer to arrive.
        response = await self._transport.unary(
            "Request", request, idempotent=False, time_limit=timeout + self._transport.timeout
        )
        return BusMessage.from_proto(response.reply, owner=self)

    def subscribe(
        self,
        subject: str,
        *,
        queue: str = "",
        durable: str = "",
        stream: str = "",
        deliver: DeliverPolicy | str | None = None,
        start_sequence: int = 0,
        start_time: float | datetime.datetime | None = None,
        ack_wait: float | None = None,
        max_deliver: int | None = None,
        max_ack_pending: int | None = None,
        backoff: Sequence[float] = (),
        buffer: int = 256,
    ) -> BusSubscription:
        """A subscription to ``subject`` (``*`` matches one token, a final ``>``
        one or more); opened by ``async with`` (or :meth:`BusSubscription.start`),
        ready to receive what is published after that.

        Core (the default): messages published while it is open; with a
        ``queue`` group, each message goes to one member of the group.

        ``durable``: a named consumer of ``stream`` (default: the stream that
        captures ``subject``), at least once: acknowledge each message. A new
        consumer starts as ``deliver`` says (all by default;
        ``start_sequence`` or ``start_time`` imply by sequence / by time); an
        existing one resumes. ``ack_wait`` (seconds, default 30) before an
        unacknowledged message comes again, after ``backoff[n]`` seconds
        for the n-th redelivery if given; ``max_deliver`` (default 5)
        deliveries before it is dead-lettered; at most ``max_ack_pending``
        (default 1000) unacknowledged at once. A durable subscription
        reconnects by itself when the control plane goes away; a core one
        raises :class:`~sdk.UnavailableError`.

        ``buffer`` messages are read ahead of the caller.
        """
        self._check_open()
        if buffer < 1:
            raise ValueError("buffer must be at least 1")
        request = pb.SubscribeRequest(
            batched=True,
            subject=subject,
            queue_group=queue,
            durable=durable,
            stream=stream,
            ack_wait_ms=_millis("ack_wait", ack_wait),
            max_deliver=max_deliver or 0,
            max_ack_pending=max_ack_pending or 0,
            backoff_ms=[max(1, _millis("backoff", b)) for b in backoff],
        )
        if deliver is not None:
            request.deliver = DeliverPolicy(deliver).to_proto()
        if start_sequence:
            if start_sequence < 0:
                raise ValueError("start_sequence must not be negative")
            request.start_sequence = start_sequence
        if start_time is not None:
            seconds = (
                start_time.timestamp()
                if isinstance(start_time, datetime.datetime)
                else float(start_time)
            )
            request.start_time_ms = max(1, round(seconds * 1000))
        sub = BusSubscription(
            self._transport, request, owner=self, buffer=buffer, on_close=self._forget
        )
        self._subscriptions.add(sub)
        return sub

    # -- durable streams ------------------------------------------------------------------

    async def add_stream(
        self,
        name: str,
        subjects: Sequence[str] | str,
        *,
        max_age: float = 0.0,
        max_msgs: int = 0,
        max_bytes: int = 0,
        duplicate_window: float = 0.0,
        dead_letter_subject: str = "",
    ) -> StreamInfo:
        """Creates a durable stream capturing ``subjects`` (or confirms that an
        identical one exists). Limits of 0 mean none; the oldest messages
        go first. ``duplicate_window`` seconds (0: 120) for de-duplication
        by message id; dead letters go to ``dead_letter_subject`` (default
        ``eco.dlq.<name>``). Raises :class:`~sdk.AlreadyExistsError` when a
        stream by that name differs, or another captures the same subjects.
        """
        self._check_open()
        if isinstance(subjects, str):
            subjects = [subjects]
        config = pb.StreamConfig(
            name=name,
            subjects=list(subjects),
            max_age_ms=_millis("max_age", max_age),
            max_msgs=max_msgs,
            max_bytes=max_bytes,
            duplicate_window_ms=_millis("duplicate_window", duplicate_window),
            dead_letter_subject=dead_letter_subject,
        )
        response = await self._transport.unary(
            "AddStream", pb.AddStreamRequest(config=config), idempotent=True
        )
        return StreamInfo.from_proto(response.stream)

    async def streams(self) -> list[StreamInfo]:
        """The durable streams, with their counts and consumers."""
        self._check_open()
        response = await self._transport.unary(
            "ListStreams", pb.ListStreamsRequest(), idempotent=True
        )
        return [StreamInfo.from_proto(s) for s in response.streams]

    async def delete_stream(self, name: str) -> None:
        """Deletes a stream, its messages and its consumers
        (:class:`~sdk.StreamNotFoundError` when there is none)."""
        self._check_open()
        await self._transport.unary(
            "DeleteStream", pb.DeleteStreamRequest(name=name), idempotent=False
        )

    # -- what messages call back ----------------------------------------------------------

    async def _settle(self, ack_id: str, kind: AckKind, delay: float) -> bool:
        self._check_open()
        item = pb.AckItem(ack_id=ack_id, kind=kind.to_proto(), delay_ms=_millis("delay", delay))
        return await self._acks.submit(item)

    async def _reply(self, subject: str, data: bytes, headers: Mapping[str, str]) -> None:
        await self.publish(subject, data, headers=headers)

    def _forget(self, sub: BusSubscription) -> None:
        self._subscriptions.discard(sub)
