"""The sidecar's bus relay: a real control plane (gRPC on 127.0.0.1) and a relay
server in front of it, used through the SDK's BusClient as an application would."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc
import pytest
from ecosystem.v1 import messaging_pb2 as pb
from ecosystem.v1 import messaging_pb2_grpc as pb_grpc
from google.rpc import error_details_pb2, status_pb2

import sdk
from bus import (
    MAX_PAYLOAD,
    BusUnavailableError,
    InvalidSubjectError,
    OutgoingMessage,
    PayloadTooLargeError,
    SubscriptionSpec,
)
from bus.embedded import EmbeddedBroker
from bus.servicer import MessagingServicer, add_messaging
from sdk import BusClient, BusSubscription, StreamConfig
from sidecar.relay import QueuedPublishAck, RelayBroker, attach_relay
from tests.harness.ports import free_port
from tests.util import assert_eventually

WAIT = 10.0


class ControlPlane:
    """MessagingService over one embedded broker, stoppable and restartable on the
    port it bound first (the broker, and what its streams hold, outlive the server)."""

    def __init__(self, max_subscriptions: int = 10_000) -> None:
        self.broker = EmbeddedBroker(None)
        self.port = 0
        self.servicer: MessagingServicer | None = None
        self._server: grpc.aio.Server | None = None
        self._max_subscriptions = max_subscriptions

    @property
    def address(self) -> str:
        assert self.port, "not started yet"
        return f"127.0.0.1:{self.port}"

    async def up(self) -> None:
        server = grpc.aio.server()
        self.servicer = add_messaging(
            server, self.broker, lambda: False, max_subscriptions=self._max_subscriptions
        )
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        assert self.port
        await server.start()
        self._server = server

    async def down(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            assert self.servicer is not None
            await self.servicer.drain()
            await server.stop(0)

    async def __aenter__(self) -> Self:
        await self.broker.start()
        await self.up()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.down()
        await self.broker.close()


class Sidecar:
    """A local API server with the relay attached, as the sidecar hosts it."""

    def __init__(self, plane: ControlPlane, data_dir: Path | None) -> None:
        self._plane = plane
        self._data_dir = data_dir
        self._server = grpc.aio.server()
        self.address = ""
        self.relay: RelayBroker | None = None

    async def __aenter__(self) -> Self:
        self.relay, _ = await attach_relay(
            self._server, [self._plane.address], self._data_dir, lambda: False
        )
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        self.address = f"127.0.0.1:{port}"
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._server.stop(0)
        assert self.relay is not None
        await self.relay.close()


@pytest.fixture
async def plane() -> AsyncIterator[ControlPlane]:
    async with ControlPlane() as p:
        yield p


@pytest.fixture
async def sidecar(plane: ControlPlane, tmp_path: Path) -> AsyncIterator[Sidecar]:
    async with Sidecar(plane, tmp_path) as s:
        yield s


@pytest.fixture
async def bus(sidecar: Sidecar) -> AsyncIterator[BusClient]:
    async with BusClient(sidecar.address, timeout=WAIT) as client:
        yield client


async def test_publish_subscribe_through_the_relay(bus: BusClient, plane: ControlPlane) -> None:
    async with bus.subscribe("orders.*") as sub:
        await bus.publish("orders.eu", b"one", headers={"k": "v"})
        # and from outside the sidecar, straight to the control plane
        await plane.broker.publish(OutgoingMessage("orders.us", b"two"))
        async with asyncio.timeout(WAIT):
            first, second = await anext(sub), await anext(sub)
    assert (first.subject, first.data, dict(first.headers)) == ("orders.eu", b"one", {"k": "v"})
    assert (second.subject, second.data) == ("orders.us", b"two")


async def test_local_subscribers_share_one_upstream_stream(
    bus: BusClient, sidecar: Sidecar, plane: ControlPlane
) -> None:
    assert sidecar.relay is not None and plane.servicer is not None
    async with bus.subscribe("events.>") as one, bus.subscribe("events.>") as two:
        assert sidecar.relay.upstream_subscriptions == 1
        assert plane.servicer.subscription_count == 1
        async with bus.subscribe("events.>", queue="workers"):
            assert sidecar.relay.upstream_subscriptions == 2
        await bus.publish("events.a", b"x")
        async with asyncio.timeout(WAIT):
            assert (await anext(one)).data == b"x"
            assert (await anext(two)).data == b"x"

    def closed() -> None:
        assert sidecar.relay is not None and plane.servicer is not None
        assert sidecar.relay.upstream_subscriptions == 0
        assert plane.servicer.subscription_count == 0

    await assert_eventually(closed, timeout=WAIT)


async def test_a_slow_local_subscriber_does_not_stall_a_fast_one(plane: ControlPlane) -> None:
    relay = RelayBroker([plane.address], None, queue_limit=4)
    await relay.start()
    try:
        slow = await relay.subscribe(SubscriptionSpec("ticks"))
        fast = await relay.subscribe(SubscriptionSpec("ticks"))
        got: list[bytes] = []

        async def read() -> None:
            async for delivery in fast:
                got.append(delivery.data)
                if len(got) == 50:
                    return

        reader = asyncio.create_task(read())
        for i in range(50):
            await relay.publish(OutgoingMessage("ticks", str(i).encode()))

            def caught_up(n: int = i + 1) -> None:
                assert len(got) == n

            # The fast one keeps up while the slow one's queue stays full.
            await assert_eventually(caught_up, timeout=WAIT)
        async with asyncio.timeout(WAIT):
            await reader
        assert got == [str(i).encode() for i in range(50)]
        assert slow.dropped == 46
        assert fast.dropped == 0
        await slow.close()
        await fast.close()
    finally:
        await relay.close()


async def test_publishes_while_the_control_plane_is_down_arrive_in_order(
    bus: BusClient, sidecar: Sidecar, plane: ControlPlane
) -> None:
    assert sidecar.relay is not None
    watcher = await plane.broker.subscribe(SubscriptionSpec("audit.>"))
    await plane.down()
    for i in range(5):
        result = await bus.publish(f"audit.e{i}", str(i))
        assert not result.stored
    assert sidecar.relay.buffered == 5
    assert not sidecar.relay.connected
    await plane.up()
    relay = sidecar.relay

    def flushed() -> None:
        assert relay.connected and relay.buffered == 0

    await assert_eventually(flushed, timeout=WAIT)
    async with asyncio.timeout(WAIT):
        got = [await anext(aiter(watcher)) for _ in range(5)]
    assert [d.data for d in got] == [str(i).encode() for i in range(5)]
    await watcher.close()


async def test_durable_publishes_buffered_on_disk_survive_a_relay_restart(
    plane: ControlPlane, tmp_path: Path
) -> None:
    async with Sidecar(plane, tmp_path) as first:
        assert first.relay is not None
        async with BusClient(first.address, timeout=WAIT) as bus:
            await bus.add_stream("ORDERS", "orders.>")
            await plane.down()
            for i in range(3):
                await bus.publish("orders.new", f"order {i}")
            await bus.publish("chatter", b"memory only")
        ack = await first.relay.publish(OutgoingMessage("orders.new", b"order 3"))
        assert isinstance(ack, QueuedPublishAck) and ack.sequence == 0
        assert first.relay.buffered == 5
    await plane.up()
    async with Sidecar(plane, tmp_path) as second:
        assert second.relay is not None
        relay = second.relay

        def flushed() -> None:
            assert relay.connected and relay.buffered == 0

        await assert_eventually(flushed, timeout=WAIT)
        infos = await relay.streams()
        assert [(i.config.name, i.messages) for i in infos] == [("ORDERS", 4)]
        sub = await relay.subscribe(SubscriptionSpec("orders.>", durable="check"))
        async with asyncio.timeout(WAIT):
            it = aiter(sub)
            got = [await anext(it) for _ in range(4)]
        assert [d.data for d in got] == [f"order {i}".encode() for i in range(4)]
        assert [d.sequence for d in got] == [1, 2, 3, 4]
        await sub.close()


async def test_request_reply_through_the_relay(bus: BusClient) -> None:
    async with bus.subscribe("math.double") as responder:

        async def serve() -> None:
            async for message in responder:
                await message.respond(str(2 * int(message.text)))
                return

        task = asyncio.create_task(serve())
        reply = await bus.request("math.double", "21", timeout=WAIT)
        await task
    assert reply.text == "42"


async def test_calls_fail_unavailable_while_disconnected(
    bus: BusClient, plane: ControlPlane
) -> None:
    await plane.down()
    with pytest.raises(sdk.UnavailableError):
        await bus.streams()
    await plane.up()


async def test_durable_consumers_ack_through_the_relay(
    bus: BusClient, sidecar: Sidecar, plane: ControlPlane
) -> None:
    await bus.add_stream("JOBS", "jobs.>")
    for i in range(3):
        result = await bus.publish("jobs.run", str(i))
        assert result.stored and result.sequence == i + 1
    async with bus.subscribe("jobs.>", durable="runner") as sub:
        assert sidecar.relay is not None and sidecar.relay.upstream_subscriptions == 1
        async with asyncio.timeout(WAIT):
            for i in range(3):
                message = await anext(sub)
                assert message.text == str(i) and message.delivery_count == 1
                assert await message.ack()
    (info,) = await bus.streams()
    assert [(c.name, c.pending, c.next_sequence) for c in info.consumers] == [("runner", 0, 4)]


async def test_the_buffer_is_bounded(plane: ControlPlane) -> None:
    relay = RelayBroker([plane.address], None, max_buffered=3)
    await relay.start()
    try:
        await plane.down()
        for i in range(3):
            assert isinstance(
                await relay.publish(OutgoingMessage("x", b"%d" % i)), QueuedPublishAck
            )
        with pytest.raises(BusUnavailableError):
            await relay.publish(OutgoingMessage("x", b"one too many"))
        await plane.up()
    finally:
        await relay.close()


async def test_errors_of_the_control_plane_reach_the_application(bus: BusClient) -> None:
    with pytest.raises(sdk.NoRespondersError):
        await bus.request("nobody.home", "?", timeout=WAIT)
    with pytest.raises(sdk.StreamNotFoundError):
        await bus.subscribe("unstored.subject", durable="d").start()
    with pytest.raises(sdk.StreamNotFoundError):
        await bus.delete_stream("NOPE")


Status = tuple[grpc.StatusCode, str, list[tuple[str, str, dict[str, str]]], list[tuple[str, str]]]


async def _status_of(call: Awaitable[object]) -> Status:
    """All an application can read of a failed call: code, message, every
    ErrorInfo (reason, domain, metadata) and every BadRequest violation."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    status = status_pb2.Status()
    trailers: Any = error.trailing_metadata() or ()
    for key, value in trailers:
        if key == "grpc-status-details-bin":
            status.ParseFromString(value)
    infos: list[tuple[str, str, dict[str, str]]] = []
    violations: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append((info.reason, info.domain, dict(info.metadata)))
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend((v.field, v.description) for v in bad.field_violations)
    return error.code(), error.details() or "", infos, violations


async def _first(call: AsyncIterable[object]) -> object:
    async for response in call:
        if isinstance(response, pb.SubscribeResponse) and response.HasField("subscribed"):
            continue
        return response
    return None


@contextlib.asynccontextmanager
async def _stubs(*addresses: str) -> AsyncIterator[list[pb_grpc.MessagingServiceStub]]:
    channels = [grpc.aio.insecure_channel(address) for address in addresses]
    try:
        yield [pb_grpc.MessagingServiceStub(channel) for channel in channels]  # type: ignore[no-untyped-call]
    finally:
        for channel in channels:
            await channel.close(None)


async def test_a_refusal_reads_the_same_through_the_relay_as_from_the_control_plane(
    sidecar: Sidecar, plane: ControlPlane
) -> None:
    """Code, message, ErrorInfo (reason, domain, the field it blames) and BadRequest:
    what the control plane answers directly is what an application gets from
    its sidecar."""
    await plane.broker.add_stream(StreamConfig("HELD", ("held.>",)))
    silent = await plane.broker.subscribe(SubscriptionSpec("silent.peer"))
    calls: dict[str, Callable[[pb_grpc.MessagingServiceStub], Awaitable[object]]] = {
        "no responders": lambda s: s.Request(pb.RequestRequest(subject="nobody.home")),
        "no reply in time": lambda s: s.Request(
            pb.RequestRequest(subject="silent.peer", timeout_ms=100)
        ),
        "durable, no stream": lambda s: _first(
            s.Subscribe(pb.SubscribeRequest(subject="unstored.x", durable="d", batched=True))
        ),
        "durable, unknown stream": lambda s: _first(
            s.Subscribe(pb.SubscribeRequest(subject="held.x", durable="d", stream="NOPE"))
        ),
        "delete unknown": lambda s: s.DeleteStream(pb.DeleteStreamRequest(name="NOPE")),
        "overlapping stream": lambda s: s.AddStream(
            pb.AddStreamRequest(config=pb.StreamConfig(name="OTHER", subjects=["held.x"]))
        ),
        "same name, other subjects": lambda s: s.AddStream(
            pb.AddStreamRequest(config=pb.StreamConfig(name="HELD", subjects=["else.>"]))
        ),
        "payload too large": lambda s: s.Publish(
            pb.PublishRequest(subject="big", data=b"x" * (MAX_PAYLOAD + 1))
        ),
        "bad subject": lambda s: s.Publish(pb.PublishRequest(subject="a..b")),
        "bad stream config": lambda s: s.AddStream(
            pb.AddStreamRequest(config=pb.StreamConfig(name="X", subjects=["x", "x"]))
        ),
    }
    async with _stubs(plane.address, sidecar.address) as (direct, relayed):
        for case, call in calls.items():
            expected = await _status_of(call(direct))
            assert await _status_of(call(relayed)) == expected, case
    await silent.close()


async def test_a_limit_of_the_control_plane_reads_the_same_through_the_relay(
    tmp_path: Path,
) -> None:
    """A status the bus names no reason for (the control plane's subscription
    cap) crosses the relay with its code and message."""
    async with contextlib.AsyncExitStack() as stack:
        plane = await stack.enter_async_context(ControlPlane(max_subscriptions=1))
        sidecar = await stack.enter_async_context(Sidecar(plane, tmp_path))
        direct, relayed = await stack.enter_async_context(_stubs(plane.address, sidecar.address))
        held = direct.Subscribe(pb.SubscribeRequest(subject="one"))
        assert (await anext(aiter(held))).HasField("subscribed")
        second = pb.SubscribeRequest(subject="two", batched=True)
        expected = await _status_of(_first(direct.Subscribe(second)))
        assert expected[0] is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await _status_of(_first(relayed.Subscribe(second))) == expected
        held.cancel()


async def test_a_local_subscription_outlives_a_control_plane_restart(
    bus: BusClient, plane: ControlPlane
) -> None:
    async with bus.subscribe("beats") as sub:
        await plane.down()
        await plane.up()
        # Publish until one arrives: the relay resubscribes after a backoff,
        # and what is published before that is lost (core).
        async with asyncio.timeout(WAIT):
            for count in itertools.count():
                await plane.broker.publish(OutgoingMessage("beats", b"%d" % count))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.2):
                        await anext(sub)
                        break


async def test_the_relay_fails_over_to_the_next_address(plane: ControlPlane) -> None:
    relay = RelayBroker([f"127.0.0.1:{free_port()}", plane.address], None)
    await relay.start()
    try:
        sub = await relay.subscribe(SubscriptionSpec("fail.over"))
        await relay.publish(OutgoingMessage("fail.over", b"here"))
        async with asyncio.timeout(WAIT):
            assert (await anext(aiter(sub))).data == b"here"
        await sub.close()
    finally:
        await relay.close()


async def test_a_queue_group_gets_each_message_once(bus: BusClient, sidecar: Sidecar) -> None:
    async with (
        bus.subscribe("work", queue="pool") as one,
        bus.subscribe("work", queue="pool") as two,
    ):
        assert sidecar.relay is not None and sidecar.relay.upstream_subscriptions == 1
        for i in range(10):
            await bus.publish("work", str(i))
        got: list[str] = []

        async def drain(sub: BusSubscription) -> None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    async for message in sub:
                        got.append(message.text)

        await asyncio.gather(drain(one), drain(two))
    assert sorted(got, key=int) == [str(i) for i in range(10)]


async def test_what_would_be_refused_is_not_buffered(plane: ControlPlane) -> None:
    relay = RelayBroker([plane.address], None)
    await relay.start()
    try:
        await plane.down()
        with pytest.raises(InvalidSubjectError):
            await relay.publish(OutgoingMessage("bad..subject", b""))
        with pytest.raises(PayloadTooLargeError):
            await relay.publish(OutgoingMessage("big", b"x" * (MAX_PAYLOAD + 1)))
        assert relay.buffered == 0
        await plane.up()
    finally:
        await relay.close()


async def test_concurrent_publishes_go_upstream_together_in_order(
    bus: BusClient, plane: ControlPlane
) -> None:
    await bus.add_stream("ledger", ["ledger.>"])
    outcomes = await asyncio.gather(
        *(bus.publish("ledger.entry", str(i)) for i in range(200)),
        bus.publish("ledger..bad", "refused"),
        return_exceptions=True,
    )
    results, refused = outcomes[:200], outcomes[200]
    assert [getattr(r, "sequence", r) for r in results] == list(range(1, 201))
    assert isinstance(refused, sdk.InvalidArgumentError)
    watcher = await plane.broker.subscribe(SubscriptionSpec("ledger.>", durable="audit"))
    async with asyncio.timeout(WAIT):
        got = [await anext(aiter(watcher)) for _ in range(200)]
    assert [d.data for d in got] == [str(i).encode() for i in range(200)]
    await watcher.close()


async def test_sends_while_the_control_plane_is_down_are_buffered_and_arrive_in_order(
    bus: BusClient, sidecar: Sidecar, plane: ControlPlane
) -> None:
    relay = sidecar.relay
    assert relay is not None
    watcher = await plane.broker.subscribe(SubscriptionSpec("tick"))
    async with asyncio.timeout(WAIT):
        for i in range(100):
            await bus.send("tick", str(i))
        got = [await anext(aiter(watcher)) for _ in range(100)]
    await plane.down()
    for i in range(100, 300):
        await bus.send("tick", str(i))
    await assert_eventually(lambda: relay.buffered == 200, timeout=WAIT)
    await plane.up()
    async with asyncio.timeout(WAIT):
        got += [await anext(aiter(watcher)) for _ in range(200)]
    assert [d.data for d in got] == [str(i).encode() for i in range(300)]
    assert bus.send_errors == 0
    await watcher.close()
