"""The bus over gRPC: MessagingServicer on a real server, the SDK's BusClient against it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from ecosystem.v1 import messaging_pb2 as pb
from ecosystem.v1 import messaging_pb2_grpc as pb_grpc
from google.rpc import error_details_pb2, status_pb2

import sdk
from sdk import BusClient, BusMessage, BusSubscription
from sdk._errors import NoRespondersError, StreamNotFoundError
from tests.harness.bus_server import BusServer, default_broker
from tests.util import assert_eventually

WAIT = 10.0


@pytest.fixture
async def server() -> AsyncIterator[BusServer]:
    async with BusServer() as s:
        yield s


@pytest.fixture
async def bus(server: BusServer) -> AsyncIterator[BusClient]:
    async with BusClient(server.address, timeout=WAIT) as client:
        yield client


@pytest.fixture
async def stub(server: BusServer) -> AsyncIterator[pb_grpc.MessagingServiceStub]:
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield pb_grpc.MessagingServiceStub(channel)  # type: ignore[no-untyped-call]


async def take(sub: BusSubscription, count: int) -> list[BusMessage]:
    async with asyncio.timeout(WAIT):
        return [await anext(sub) for _ in range(count)]


async def nothing_more(sub: BusSubscription, wait: float = 0.2) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait):
            message = await anext(sub)
            raise AssertionError(f"unexpected message on {message.subject}")


def violations(err: sdk.InvalidArgumentError) -> dict[str, str]:
    return {v.field: v.description for v in err.field_violations}


# -- core ---------------------------------------------------------------------------------


async def test_publish_reaches_each_matching_pattern_in_order(bus: BusClient) -> None:
    async with (
        bus.subscribe("orders.*.created") as one,
        bus.subscribe("orders.>") as rest,
        bus.subscribe("orders.eu") as exact,
    ):
        for i in range(5):
            result = await bus.publish("orders.eu.created", f"order {i}", headers={"n": str(i)})
            assert not result.stored
        await bus.publish("orders.eu", b"\xff\x00")

        got = await take(one, 5)
        assert [m.text for m in got] == [f"order {i}" for i in range(5)]
        assert [m.headers["n"] for m in got] == [str(i) for i in range(5)]
        assert all(m.subject == "orders.eu.created" and not m.durable for m in got)
        assert [m.text for m in await take(rest, 5)] == [f"order {i}" for i in range(5)]
        assert (await take(rest, 1))[0].data == b"\xff\x00"
        assert (await take(exact, 1))[0].data == b"\xff\x00"
        await nothing_more(one)
        await nothing_more(exact)


async def test_a_queue_group_shares_messages_and_plain_subscribers_get_all(
    bus: BusClient,
) -> None:
    async with (
        bus.subscribe("jobs.resize", queue="workers") as w1,
        bus.subscribe("jobs.resize", queue="workers") as w2,
        bus.subscribe("jobs.resize") as audit,
    ):
        for i in range(20):
            await bus.publish("jobs.resize", str(i))
        seen = [m.text for m in await take(audit, 20)]
        assert seen == [str(i) for i in range(20)]

        shared: list[str] = []

        async def collect(sub: BusSubscription) -> None:
            async for message in sub:
                shared.append(message.text)

        tasks = [asyncio.create_task(collect(w1)), asyncio.create_task(collect(w2))]
        try:

            def all_once() -> None:
                assert sorted(shared, key=int) == seen

            await assert_eventually(all_once, timeout=WAIT)
            await asyncio.sleep(0.1)
            all_once()  # and no copies after that
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)


async def test_request_gets_the_first_reply(bus: BusClient) -> None:
    async def respond(sub: BusSubscription) -> None:
        async for message in sub:
            await message.respond(b"echo:" + message.data, headers={"by": "responder"})

    async with bus.subscribe("svc.echo", queue="echo") as sub:
        task = asyncio.create_task(respond(sub))
        try:
            reply = await bus.request("svc.echo", "hello", timeout=WAIT)
            assert reply.data == b"echo:hello"
            assert reply.headers["by"] == "responder"
        finally:
            task.cancel()
            await asyncio.wait({task})


async def test_request_without_responders_fails_at_once(bus: BusClient) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(NoRespondersError) as caught:
        await bus.request("svc.nobody", "hi", timeout=30)
    assert loop.time() - started < 5
    err = caught.value
    assert err.code == "UNAVAILABLE" and err.reason == "NO_RESPONDERS"
    assert not isinstance(err, sdk.UnavailableError)  # no failover, no retry


async def test_request_without_a_reply_in_time_is_deadline_exceeded(bus: BusClient) -> None:
    async with bus.subscribe("svc.silent"):
        with pytest.raises(sdk.DeadlineExceededError) as caught:
            await bus.request("svc.silent", "hi", timeout=0.3)
    assert "svc.silent" in caught.value.message


# -- durable ------------------------------------------------------------------------------


async def test_durable_consumer_acks_naks_and_sees_redelivery(bus: BusClient) -> None:
    info = await bus.add_stream("ORDERS", ["orders.>"])
    assert info.name == "ORDERS" and info.messages == 0
    assert info.config.dead_letter_subject == "eco.dlq.ORDERS"
    for i in range(3):
        result = await bus.publish(f"orders.{i}", f"o{i}")
        assert (result.stream, result.sequence, result.duplicate) == ("ORDERS", i + 1, False)

    async with bus.subscribe("orders.>", durable="billing", ack_wait=30) as sub:
        assert sub.stream in ("ORDERS", "")  # the broker may not name the capturing stream
        first = await take(sub, 3)
        assert [(m.stream, m.sequence, m.delivery_count) for m in first] == [
            ("ORDERS", 1, 1),
            ("ORDERS", 2, 1),
            ("ORDERS", 3, 1),
        ]
        assert all(m.durable and not m.redelivered for m in first)
        assert await first[0].ack()
        assert await first[1].term()
        assert await first[2].nak()
        again = (await take(sub, 1))[0]
        assert (again.sequence, again.delivery_count, again.redelivered) == (3, 2, True)
        assert await again.in_progress()
        assert await again.ack()
        assert not await again.ack()  # no longer pending
        assert not await first[0].ack()
        await nothing_more(sub)

    [stream] = await bus.streams()
    assert (stream.name, stream.messages, stream.first_sequence, stream.last_sequence) == (
        "ORDERS",
        3,
        1,
        3,
    )


async def test_durable_consumer_resumes_where_it_left_off(bus: BusClient) -> None:
    await bus.add_stream("EVENTS", "events.*")
    for i in range(4):
        await bus.publish("events.x", str(i))
    async with bus.subscribe("events.*", durable="reader", ack_wait=1) as sub:
        delivered = await take(sub, 4)
        for message in delivered[:2]:
            assert await message.ack()
    # Back: the acknowledged ones never come again; the two delivered to the
    # closed subscription and never acknowledged come again after ack_wait;
    # then new ones.
    async with bus.subscribe("events.*", durable="reader", stream="EVENTS", ack_wait=1) as sub:
        await bus.publish("events.x", "4")
        got: dict[str, bool] = {}
        while len(got) < 3:
            message = (await take(sub, 1))[0]
            assert message.text in {"2", "3", "4"}
            got[message.text] = message.redelivered
            assert await message.ack()
        assert got == {"2": True, "3": True, "4": False}
        await nothing_more(sub)


async def test_acks_from_many_messages_are_settled(bus: BusClient) -> None:
    await bus.add_stream("BULK", ["bulk.>"])
    for i in range(50):
        await bus.publish("bulk.item", str(i))
    async with bus.subscribe("bulk.>", durable="bulk") as sub:
        messages = await take(sub, 50)
        results = await asyncio.gather(*(m.ack() for m in messages))
        assert all(results)


async def test_a_message_id_is_stored_once_within_the_window(bus: BusClient) -> None:
    await bus.add_stream("PAY", ["pay.*"], duplicate_window=60)
    first = await bus.publish("pay.in", "100", id="pay-1")
    again = await bus.publish("pay.in", "100", id="pay-1")
    assert (first.sequence, first.duplicate) == (1, False)
    assert (again.stream, again.sequence, again.duplicate) == ("PAY", 1, True)
    [info] = await bus.streams()
    assert info.messages == 1


async def test_add_stream_is_idempotent_and_conflicts_are_already_exists(
    bus: BusClient,
) -> None:
    await bus.add_stream("A", ["a.>"], max_msgs=10)
    again = await bus.add_stream("A", ["a.>"], max_msgs=10)
    assert again.config.max_msgs == 10
    with pytest.raises(sdk.AlreadyExistsError):
        await bus.add_stream("A", ["a.>"], max_msgs=20)
    with pytest.raises(sdk.AlreadyExistsError):
        await bus.add_stream("B", ["a.b"])  # overlaps A's subjects
    await bus.delete_stream("A")
    assert await bus.streams() == []


async def test_unknown_streams_are_not_found(bus: BusClient) -> None:
    with pytest.raises(StreamNotFoundError) as caught:
        await bus.delete_stream("NOPE")
    assert caught.value.code == "NOT_FOUND" and caught.value.reason == "STREAM_NOT_FOUND"
    with pytest.raises(StreamNotFoundError):
        await bus.subscribe("nothing.here", durable="d").start()


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "problem"),
    [("orders..eu", "empty token"), ("orders.*", "wildcard"), ("a b", "' '"), ("", "empty")],
)
async def test_publish_rejects_bad_subjects(bus: BusClient, subject: str, problem: str) -> None:
    with pytest.raises(sdk.InvalidArgumentError) as caught:
        await bus.publish(subject, "x")
    assert caught.value.code == "INVALID_ARGUMENT"
    assert problem in violations(caught.value)["subject"]


async def test_publish_names_every_bad_field(bus: BusClient) -> None:
    with pytest.raises(sdk.InvalidArgumentError) as caught:
        await bus.publish(
            "ok.subject", "x", headers={"bad key": "v", "k": "a\nb"}, reply_to="in>box.>x"
        )
    assert set(violations(caught.value)) == {'headers["bad key"]', 'headers["k"]', "reply_to"}


async def test_payload_over_the_limit_is_rejected(bus: BusClient) -> None:
    with pytest.raises(sdk.InvalidArgumentError) as caught:
        await bus.publish("big.one", b"x" * (1024 * 1024 + 1))
    assert "data" in violations(caught.value)


async def test_subscribe_names_bad_fields(bus: BusClient) -> None:
    with pytest.raises(sdk.InvalidArgumentError) as caught:
        await bus.subscribe("orders.>.x", queue="bad group", durable="bad.name").start()
    assert set(violations(caught.value)) == {"subject", "queue_group", "durable"}
    with pytest.raises(sdk.InvalidArgumentError) as caught:
        await bus.subscribe("orders.>", ack_wait=5).start()
    assert "durable" in violations(caught.value)["ack_wait_ms"]


async def test_stream_config_limits_are_checked(bus: BusClient) -> None:
    with pytest.raises(sdk.InvalidArgumentError) as caught:
        await bus.add_stream(
            "bad name", ["ok.>", "", "ok.>"], max_msgs=-1, dead_letter_subject="dl.*"
        )
    assert set(violations(caught.value)) == {
        "config.name",
        "config.subjects[1]",
        "config.subjects[2]",
        "config.max_msgs",
        "config.dead_letter_subject",
    }
    with pytest.raises(sdk.InvalidArgumentError) as caught:
        await bus.add_stream("ALL", [">"])  # would capture its own dead letters
    assert "loop" in violations(caught.value)["config.dead_letter_subject"]
    with pytest.raises(sdk.InvalidArgumentError) as caught:
        await bus.add_stream("W", ["w.>"], max_age=10, duplicate_window=60)
    assert "config.duplicate_window_ms" in violations(caught.value)


async def test_raw_requests_get_field_violations(stub: pb_grpc.MessagingServiceStub) -> None:
    cases: list[tuple[str, object, set[str]]] = [
        ("Request", pb.RequestRequest(subject="a", timeout_ms=300_001), {"timeout_ms"}),
        ("Request", pb.RequestRequest(subject="a", timeout_ms=-1), {"timeout_ms"}),
        ("Ack", pb.AckRequest(), {"items"}),
        (
            "Ack",
            pb.AckRequest(
                items=[
                    pb.AckItem(ack_id="", kind=pb.ACK_KIND_ACK),
                    pb.AckItem(ack_id="x"),
                    pb.AckItem(ack_id="y", kind=pb.ACK_KIND_ACK, delay_ms=5),
                ]
            ),
            {"items[0].ack_id", "items[1].kind", "items[2].delay_ms"},
        ),
        ("DeleteStream", pb.DeleteStreamRequest(name="no/slash"), {"name"}),
        ("AddStream", pb.AddStreamRequest(), {"config.name", "config.subjects"}),
    ]
    # Found by the fuzz tests: these were INTERNAL (a time no calendar has),
    # not a field violation.
    for start in ({"start_time_ms": -1}, {"start_time_ms": 2**62}):
        cases.append(
            ("Subscribe", pb.SubscribeRequest(subject="a", durable="d", **start), set(start))
        )
    for method, request, fields in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            call = getattr(stub, method)(request)
            if method == "Subscribe":
                await call.read()
            else:
                await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
        assert set(_bad_request_fields(caught.value)) == fields, method


def _bad_request_fields(err: grpc.aio.AioRpcError) -> list[str]:
    trailing: Any = err.trailing_metadata() or ()
    for key, value in trailing:
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    return [v.field for v in bad.field_violations]
    return []


async def test_acking_unknown_ids_reports_them(stub: pb_grpc.MessagingServiceStub) -> None:
    response = await stub.Ack(
        pb.AckRequest(items=[pb.AckItem(ack_id="nope", kind=pb.ACK_KIND_ACK)])
    )
    assert list(response.unknown) == ["nope"]


# -- the Subscribe session ------------------------------------------------------------------


async def test_subscribe_says_subscribed_first(stub: pb_grpc.MessagingServiceStub) -> None:
    call = stub.Subscribe(pb.SubscribeRequest(subject="hello.*"))
    try:
        first = await call.read()
        assert first.WhichOneof("kind") == "subscribed"
    finally:
        call.cancel()


async def test_closing_a_subscription_ends_it_on_the_server(
    bus: BusClient, server: BusServer
) -> None:
    sub = await bus.subscribe("x.y").start()
    assert server.servicer.subscription_count == 1
    await sub.close()

    def gone() -> None:
        assert server.servicer.subscription_count == 0

    await assert_eventually(gone, timeout=WAIT)
    with pytest.raises(StopAsyncIteration):
        await anext(sub)


async def test_draining_ends_core_subscriptions_with_unavailable(
    bus: BusClient, server: BusServer
) -> None:
    async with bus.subscribe("news.>") as sub:
        await server.drain()
        with pytest.raises(sdk.UnavailableError):
            async with asyncio.timeout(WAIT):
                await anext(sub)
    async with BusClient(server.address, timeout=0.5) as late:
        with pytest.raises(sdk.UnavailableError):
            await late.publish("news.x", "late")


async def test_too_many_subscriptions_is_resource_exhausted() -> None:
    async with (
        BusServer(max_subscriptions=1) as server,
        BusClient(server.address, timeout=WAIT) as bus,
        bus.subscribe("a"),
    ):
        with pytest.raises(sdk.ResourceExhaustedError):
            await bus.subscribe("b").start()


async def test_a_durable_subscription_moves_to_another_server_on_drain() -> None:
    broker = default_broker()
    await broker.start()
    try:
        async with (
            BusServer(broker, owns_broker=False) as first,
            BusServer(broker, owns_broker=False) as second,
            BusClient(f"{first.address},{second.address}", timeout=WAIT) as bus,
        ):
            await bus.add_stream("JOBS", ["jobs.>"])
            await bus.publish("jobs.a", "1")
            async with bus.subscribe("jobs.>", durable="worker") as sub:
                assert await (await take(sub, 1))[0].ack()
                await first.drain()
                await bus.publish("jobs.a", "2", id="job-2")  # retried elsewhere
                message = (await take(sub, 1))[0]
                assert (message.text, message.sequence) == ("2", 2)
                assert await message.ack()
            assert second.servicer.subscription_count <= 1
    finally:
        await broker.close()


async def test_closing_the_client_closes_its_subscriptions(server: BusServer) -> None:
    bus = BusClient(server.address, timeout=WAIT)
    sub = await bus.subscribe("a.b").start()
    await bus.close()
    assert sub.closed
    with pytest.raises(sdk.ClientClosedError):
        await bus.publish("a.b", "x")
    await bus.close()  # idempotent
