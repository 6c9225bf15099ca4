"""The relay's link to the control plane: its ``MessagingService`` over gRPC.

One connection (the SDK's transport, failing over between the sidecar's
``controlplane.addresses``); concurrent publishes go upstream together, in
order, as ``PublishBatch`` calls, and acknowledgements as ``Ack`` calls;
subscriptions are batched ``Subscribe`` streams. What the control plane
answers becomes a broker error in one place (``bus.broker_error``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Mapping, Sequence
from types import MappingProxyType

from ecosystem.v1 import messaging_pb2 as pb

import sdk
from bus import (
    AckNotFoundError,
    BusClosedError,
    BusUnavailableError,
    Delivery,
    OutgoingMessage,
    PublishAck,
    SubscriptionSpec,
)
from bus import broker_error as bus_error
from bus.subjects import subject_matches
from sdk import AckKind, ChannelFactory, RetryPolicy, StreamConfig, StreamInfo
from sdk.lowlevel import AckBatcher, PublishBatcher, Transport, publish_request
from sidecar.relay._link import Subscribed

__all__ = ["ControlPlaneLink", "delivery_from_proto"]

#: A memo of which subjects are captured, cleared beyond this many.
_MEMO = 10_000


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


def _publish_ack(response: pb.PublishResponse) -> PublishAck:
    return PublishAck(
        stream=response.stream, sequence=response.sequence, duplicate=response.duplicate
    )


def _publish_request(message: OutgoingMessage) -> pb.PublishRequest:
    m = message
    return publish_request(m.subject, m.data, m.headers, m.id, m.reply_to)


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


class ControlPlaneLink:
    """The control plane's ``MessagingService`` at ``addresses`` (in order of
    preference). ``patterns``: the captured subjects last known (the relay
    remembers them on disk for a start while the control plane is away)."""

    kind = "controlplane"
    url = ""

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        timeout: float,
        patterns: Sequence[str] = (),
        channel_factory: ChannelFactory | None = None,
        token: str = "",
    ) -> None:
        self._transport = Transport(
            tuple(addresses),
            timeout=timeout,
            policy=RetryPolicy(max_attempts=2),
            channel_factory=channel_factory,
            token=token,
        )
        self._publishes = PublishBatcher(self._transport)
        self._acks = AckBatcher(self._transport)
        self._patterns = tuple(patterns)
        self._memo: dict[str, bool] = {}

    @property
    def where(self) -> str:
        return self._transport.current_address

    @property
    def available(self) -> bool:
        return True  # a call finds out

    @property
    def attempts(self) -> int:
        # The transport moves on to the next address after UNAVAILABLE.
        return len(self._transport.addresses)

    @property
    def timeout(self) -> float:
        return self._transport.timeout

    async def open(self) -> None:
        pass  # channels connect on first use

    async def close(self) -> None:
        await self._publishes.close(self._transport.timeout)
        await self._acks.close(self._transport.timeout)
        await self._transport.close()

    # -- captured subjects --------------------------------------------------------------------

    def captures(self, subject: str) -> bool:
        known = self._memo.get(subject)
        if known is None:
            if len(self._memo) >= _MEMO:
                self._memo.clear()
            known = self._memo[subject] = any(subject_matches(p, subject) for p in self._patterns)
        return known

    async def captured(self) -> tuple[str, ...]:
        response = await self._call("ListStreams", pb.ListStreamsRequest(), idempotent=True)
        assert isinstance(response, pb.ListStreamsResponse)
        patterns = tuple(p for s in response.streams for p in s.config.subjects)
        if patterns != self._patterns:
            self._patterns = patterns
            self._memo.clear()
        return patterns

    # -- calls ----------------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        request: object,
        *,
        idempotent: bool,
        time_limit: float | None = None,
        field: str = "",
    ) -> object:
        try:
            return await self._transport.unary(
                method, request, idempotent=idempotent, time_limit=time_limit
            )
        except sdk.EcoError as err:
            raise bus_error(err, field) from err
        except sdk.ClientClosedError as err:
            raise BusClosedError("the relay's link to the control plane is closed") from err

    async def publish(self, message: OutgoingMessage) -> PublishAck:
        try:
            return _publish_ack(await self._publishes.submit(_publish_request(message)))
        except sdk.EcoError as err:
            raise bus_error(err) from err
        except sdk.ClientClosedError as err:
            raise BusClosedError("the relay's link to the control plane is closed") from err

    async def publish_many(
        self, messages: Sequence[OutgoingMessage]
    ) -> list[PublishAck | Exception]:
        futures = self._publishes.submit_all([_publish_request(m) for m in messages])
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        results: list[PublishAck | Exception] = []
        for outcome in outcomes:
            if isinstance(outcome, pb.PublishResponse):
                results.append(_publish_ack(outcome))
            elif isinstance(outcome, sdk.EcoError):
                results.append(bus_error(outcome))
            elif isinstance(outcome, sdk.ClientClosedError):
                results.append(BusClosedError("the relay's link to the control plane is closed"))
            else:
                raise outcome
        return results

    async def ack(self, ack_id: str, kind: AckKind, delay: float) -> None:
        item = pb.AckItem(ack_id=ack_id, kind=kind.to_proto(), delay_ms=round(delay * 1000))
        try:
            known = await self._acks.submit(item)  # together with the others in flight
        except sdk.InvalidArgumentError as err:  # an id the control plane cannot parse
            raise AckNotFoundError(err.message, field="ack_id") from err
        except sdk.EcoError as err:
            raise bus_error(err) from err
        except sdk.ClientClosedError as err:
            raise BusClosedError("the relay's link to the control plane is closed") from err
        if not known:
            raise AckNotFoundError(f"no pending delivery {ack_id!r}", field="ack_id")

    async def request(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None, timeout: float
    ) -> Delivery:
        request = pb.RequestRequest(
            subject=subject,
            data=data,
            headers=dict(headers or {}),
            timeout_ms=max(1, round(timeout * 1000)),
        )
        response = await self._call(
            "Request", request, idempotent=False, time_limit=timeout + self._transport.timeout
        )
        assert isinstance(response, pb.RequestResponse)
        return delivery_from_proto(response.reply)

    async def add_stream(self, config: StreamConfig) -> tuple[StreamInfo, bool]:
        if config.max_age and config.duplicate_window > config.max_age:
            # The API refuses a window longer than the age limit; brokers clamp it.
            config = dataclasses.replace(config, duplicate_window=config.max_age)
        request = pb.AddStreamRequest(config=config.to_proto())
        response = await self._call("AddStream", request, idempotent=True, field="name")
        assert isinstance(response, pb.AddStreamResponse)
        return StreamInfo.from_proto(response.stream), response.created

    async def streams(self) -> list[StreamInfo]:
        response = await self._call("ListStreams", pb.ListStreamsRequest(), idempotent=True)
        assert isinstance(response, pb.ListStreamsResponse)
        return [StreamInfo.from_proto(s) for s in response.streams]

    async def delete_stream(self, name: str) -> None:
        await self._call(
            "DeleteStream", pb.DeleteStreamRequest(name=name), idempotent=False, field="name"
        )

    async def subscribe(self, spec: SubscriptionSpec) -> AsyncIterator[Subscribed | Delivery]:
        blame = ("stream" if spec.stream else "subject") if spec.durable else "subject"
        stream = self._transport.stream("Subscribe", subscribe_request(spec))
        try:
            async with contextlib.aclosing(stream) as responses:
                async for response in responses:
                    kind = response.WhichOneof("kind")
                    if kind == "batch":
                        for message in response.batch.messages:
                            yield delivery_from_proto(message)
                    elif kind == "message":
                        yield delivery_from_proto(response.message)
                    elif kind == "subscribed":
                        yield Subscribed(
                            response.subscribed.stream, response.subscribed.next_sequence
                        )
        except sdk.EcoError as err:
            raise bus_error(err, blame) from err
        except sdk.ClientClosedError as err:
            raise BusClosedError("the relay's link to the control plane is closed") from err
        raise BusUnavailableError("the control plane ended the subscription")
