"""Batched publishing and delivery over gRPC: ``PublishBatch``, ``BusClient.send``,
concurrent ``publish`` calls coalesced in order, and batched ``Subscribe``.

The servicer runs over the embedded broker in both of its ways: the broker's
own ``publish_many`` (one commit for the batch), and one ``publish`` per
message, started in order (what a broker without ``publish_many`` gets, such
as the NATS one).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest
from ecosystem.v1 import messaging_pb2 as pb
from ecosystem.v1 import messaging_pb2_grpc as pb_grpc

import sdk
from bus import (
    MAX_PAYLOAD,
    BatchPublisher,
    Broker,
    OutgoingMessage,
    PublishAck,
)
from bus.embedded import EmbeddedBroker
from bus.servicer import MessagingServicer
from sdk import BusClient, StreamConfig
from tests.harness.bus_server import BusServer
from tests.util import assert_eventually

WAIT = 10.0


class OneByOne:
    """The embedded broker without ``publish_many``: the servicer publishes each
    message of a batch on its own."""

    def __init__(self, broker: EmbeddedBroker) -> None:
        self._broker = broker

    def __getattr__(self, name: str) -> object:
        if name == "publish_many":
            raise AttributeError(name)
        return getattr(self._broker, name)


@pytest.fixture(params=["publish_many", "one_by_one"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[BusServer]:
    embedded = EmbeddedBroker(None)
    broker: Broker = embedded if request.param == "publish_many" else OneByOne(embedded)  # type: ignore[assignment]
    assert isinstance(broker, BatchPublisher) == (request.param == "publish_many")
    async with BusServer(broker) as s:
        yield s


@pytest.fixture
async def bus(server: BusServer) -> AsyncIterator[BusClient]:
    async with BusClient(server.address, timeout=WAIT) as client:
        yield client


@pytest.fixture
async def stub(server: BusServer) -> AsyncIterator[pb_grpc.MessagingServiceStub]:
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield pb_grpc.MessagingServiceStub(channel)  # type: ignore[no-untyped-call]


async def read(sub: AsyncIterator[sdk.BusMessage], count: int) -> list[sdk.BusMessage]:
    async with asyncio.timeout(WAIT):
        return [await anext(sub) for _ in range(count)]


def requests(subjects: Sequence[str], **fields: object) -> list[pb.PublishRequest]:
    return [
        pb.PublishRequest(subject=s, data=f"m{i}".encode(), **fields)  # type: ignore[arg-type]
        for i, s in enumerate(subjects)
    ]


# -- PublishBatch on the wire ------------------------------------------------------------


async def test_a_batch_is_published_in_order_with_one_result_per_message(
    bus: BusClient, stub: pb_grpc.MessagingServiceStub
) -> None:
    await bus.add_stream("orders", ["orders.>"])
    async with bus.subscribe("orders.>", durable="reader") as sub:
        batch = requests(["orders.1", "orders.2", "news.1", "orders.3"])
        response = await stub.PublishBatch(pb.PublishBatchRequest(messages=batch))
        assert [r.WhichOneof("outcome") for r in response.results] == ["ack"] * 4
        assert [(r.ack.stream, r.ack.sequence) for r in response.results] == [
            ("orders", 1),
            ("orders", 2),
            ("", 0),  # core: no stream captures news.1
            ("orders", 3),
        ]
        got = await read(sub, 3)
        assert [m.text for m in got] == ["m0", "m1", "m3"]
        for message in got:
            await message.ack()


async def test_a_refused_message_fails_alone_with_the_reason_and_fields_publish_gives(
    bus: BusClient, stub: pb_grpc.MessagingServiceStub
) -> None:
    async with bus.subscribe("ok.>") as sub:
        batch = [
            pb.PublishRequest(subject="ok.1", data=b"first"),
            pb.PublishRequest(subject="bad..subject", data=b"x"),
            pb.PublishRequest(subject="ok.2", data=b"x" * (MAX_PAYLOAD + 1)),
            pb.PublishRequest(subject="ok.3", data=b"last", headers={"bad key": "v"}),
            pb.PublishRequest(subject="ok.4", data=b"fine"),
        ]
        response = await stub.PublishBatch(pb.PublishBatchRequest(messages=batch))
        outcomes = [r.WhichOneof("outcome") for r in response.results]
        assert outcomes == ["ack", "error", "error", "error", "ack"]
        subject_error, size_error, header_error = (r.error for r in response.results[1:4])
        assert subject_error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert [v.field for v in subject_error.violations] == ["subject"]
        assert "bad..subject" in subject_error.message
        assert size_error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert [v.field for v in size_error.violations] == ["data"]
        assert [v.field for v in header_error.violations] == ['headers["bad key"]']
        assert [m.text for m in await read(sub, 2)] == ["first", "fine"]


async def test_more_than_a_thousand_messages_in_one_batch_is_refused_whole(
    bus: BusClient, stub: pb_grpc.MessagingServiceStub
) -> None:
    async with bus.subscribe("many.>") as sub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.PublishBatch(pb.PublishBatchRequest(messages=requests(["many.x"] * 1001)))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "at most 1000" in (caught.value.details() or "")
        await bus.publish("many.after", "after")
        # Nothing of the refused batch went out: the next message is the first.
        assert [m.text for m in await read(sub, 1)] == ["after"]


# -- the SDK coalescing publishes ---------------------------------------------------------


async def test_concurrent_publishes_keep_their_order_and_each_gets_its_own_result(
    bus: BusClient,
) -> None:
    await bus.add_stream("seq", ["seq.>"])
    results = await asyncio.gather(*(bus.publish("seq.a", str(i)) for i in range(300)))
    # Stored in the order the calls were made, whatever batches carried them.
    assert [r.sequence for r in results] == list(range(1, 301))
    async with bus.subscribe("seq.a", durable="check") as sub:
        got = await read(sub, 300)
        assert [m.text for m in got] == [str(i) for i in range(300)]
        for message in got:
            await message.ack()


async def test_one_bad_publish_among_concurrent_ones_raises_for_that_caller_only(
    bus: BusClient,
) -> None:
    outcomes = await asyncio.gather(
        bus.publish("fine.1", "a"),
        bus.publish("not valid", "b"),
        bus.publish("fine.2", "c"),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], sdk.PublishResult)
    assert isinstance(outcomes[2], sdk.PublishResult)
    error = outcomes[1]
    assert isinstance(error, sdk.InvalidArgumentError)
    assert [v.field for v in error.field_violations] == ["subject"]


async def test_send_hands_messages_over_in_order_and_counts_the_refused_ones(
    bus: BusClient,
) -> None:
    async with bus.subscribe("fire.>") as sub:
        for i in range(2000):
            await bus.send("fire.and.forget", str(i))
        await bus.send("fire..bad", "refused")
        await bus.send("fire.last", "last")
        got = await read(sub, 2001)
        assert [m.text for m in got] == [*(str(i) for i in range(2000)), "last"]
        await assert_eventually(lambda: bus.send_errors == 1, timeout=WAIT)


async def test_send_and_publish_share_one_order(bus: BusClient) -> None:
    async with bus.subscribe("mixed") as sub:
        await bus.send("mixed", "1")
        await bus.publish("mixed", "2")
        await bus.send("mixed", "3")
        assert [m.text for m in await read(sub, 3)] == ["1", "2", "3"]


async def test_sends_still_queued_at_close_are_sent_first(server: BusServer) -> None:
    async with (
        BusClient(server.address, timeout=WAIT) as reader,
        reader.subscribe("closing") as sub,
    ):
        writer = BusClient(server.address, timeout=WAIT)
        for i in range(500):
            await writer.send("closing", str(i))
        await writer.close()
        assert [m.text for m in await read(sub, 500)] == [str(i) for i in range(500)]
        assert writer.send_errors == 0


# -- batched delivery ----------------------------------------------------------------------


async def test_a_batched_subscription_gets_what_was_ready_together_in_order(
    bus: BusClient, stub: pb_grpc.MessagingServiceStub
) -> None:
    call = stub.Subscribe(pb.SubscribeRequest(subject="burst.>", batched=True))
    first = await call.read()
    assert first.WhichOneof("kind") == "subscribed"
    await asyncio.gather(*(bus.publish("burst.x", str(i)) for i in range(600)))
    received: list[str] = []
    kinds: set[str] = set()
    async with asyncio.timeout(WAIT):
        while len(received) < 600:
            response = await call.read()
            kind = response.WhichOneof("kind")
            assert kind is not None
            kinds.add(kind)
            received.extend(m.data.decode() for m in response.batch.messages)
    call.cancel()
    assert kinds == {"batch"}
    assert received == [str(i) for i in range(600)]


async def test_a_plain_subscription_gets_one_message_per_response(
    bus: BusClient, stub: pb_grpc.MessagingServiceStub
) -> None:
    call = stub.Subscribe(pb.SubscribeRequest(subject="plain"))
    assert (await call.read()).WhichOneof("kind") == "subscribed"
    await asyncio.gather(*(bus.publish("plain", str(i)) for i in range(50)))
    async with asyncio.timeout(WAIT):
        got = [await call.read() for _ in range(50)]
    call.cancel()
    assert {r.WhichOneof("kind") for r in got} == {"message"}
    assert [r.message.data.decode() for r in got] == [str(i) for i in range(50)]


# -- a control plane without PublishBatch ---------------------------------------------------


class _NoBatches(MessagingServicer):
    async def PublishBatch(self, request: pb.PublishBatchRequest, context: object) -> None:  # type: ignore[override]
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")  # type: ignore[attr-defined]


async def test_the_sdk_publishes_one_by_one_to_a_control_plane_without_publish_batch() -> None:
    broker = EmbeddedBroker(None)
    await broker.start()
    server = grpc.aio.server()
    pb_grpc.add_MessagingServiceServicer_to_server(  # type: ignore[no-untyped-call]
        _NoBatches(broker, is_draining=lambda: False), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        await broker.add_stream(StreamConfig("old", ("old.>",)))
        async with BusClient(f"127.0.0.1:{port}", timeout=WAIT) as bus:
            results = await asyncio.gather(*(bus.publish("old.x", str(i)) for i in range(20)))
            assert [r.sequence for r in results] == list(range(1, 21))
            with pytest.raises(sdk.InvalidArgumentError):
                await bus.publish("old..x", "bad")
    finally:
        await server.stop(0)
        await broker.close()


async def test_publish_many_returns_each_messages_outcome_in_order() -> None:
    broker = EmbeddedBroker(None)
    await broker.start()
    try:
        await broker.add_stream(StreamConfig("s", ("s.>",)))
        outcomes = await broker.publish_many(
            [OutgoingMessage("s.1"), OutgoingMessage("s..2"), OutgoingMessage("s.3", id="x")]
        )
        assert outcomes[0] == PublishAck("s", 1)
        assert isinstance(outcomes[1], Exception) and "s..2" in str(outcomes[1])
        assert outcomes[2] == PublishAck("s", 2)
        again = await broker.publish_many([OutgoingMessage("s.3", id="x")])
        assert again == [PublishAck("s", 2, duplicate=True)]
    finally:
        await broker.close()
