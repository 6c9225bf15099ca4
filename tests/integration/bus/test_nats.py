"""What only the NATS backend has to show: connection errors, nats-server restarts
under load, and that brokers sharing one NATS cooperate. The conformance suite
(tests/unit/bus, run here by test_conformance.py) covers NATS too; these use
nats-server directly."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bus import (
    BusError,
    BusUnavailableError,
    Delivery,
    InvalidSubjectError,
    OutgoingMessage,
    SubscriptionSpec,
    open_broker,
)
from bus.nats import NatsBroker
from sdk import AckKind, StreamConfig
from tests.harness.nats import NatsServer, nats_server_binary
from tests.harness.ports import free_port
from tests.unit.bus.conftest import assert_quiet, next_delivery, take
from tests.util import assert_eventually


@pytest.fixture
def server(nats: NatsServer) -> NatsServer:
    """This module's name for the test's own nats-server."""
    return nats


@pytest.fixture
async def broker(server: NatsServer) -> AsyncIterator[NatsBroker]:
    broker = NatsBroker([server.url])
    await broker.start()
    yield broker
    await broker.close()


# -- connecting -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["nats://127.0.0.1:{free}", "nats://127.0.0.1:notaport", "nats://no-such-host.invalid:4222"],
)
async def test_unreachable_or_bad_url_fails_fast(url: str) -> None:
    broker = NatsBroker([url.format(free=free_port())], connect_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(BusUnavailableError) as err:
        await broker.start()
    assert time.monotonic() - started < 5.0
    assert err.value.field == "bus" and "cannot connect to NATS" in err.value.message
    await broker.close()


async def test_a_server_that_never_speaks_fails_fast() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        broker = NatsBroker([f"nats://127.0.0.1:{port}"], connect_timeout=0.5)
        started = time.monotonic()
        with pytest.raises(BusUnavailableError):
            await broker.start()
        assert time.monotonic() - started < 5.0
        await broker.close()


async def test_jetstream_must_be_enabled() -> None:
    server = NatsServer(jetstream=False).start()
    try:
        broker = NatsBroker([server.url])
        with pytest.raises(BusUnavailableError) as err:
            await broker.start()
        assert "JetStream" in err.value.message
        await broker.close()
    finally:
        server.stop()


async def test_open_broker_takes_a_nats_url(server: NatsServer, tmp_path: Path) -> None:
    broker = open_broker(server.url, tmp_path)
    assert isinstance(broker, NatsBroker)
    async with broker:
        sub = await broker.subscribe(SubscriptionSpec("hello"))
        await broker.publish(OutgoingMessage("hello", b"world"))
        assert (await next_delivery(sub)).data == b"world"


def test_missing_nats_server_fails_with_the_way_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("shutil.which", lambda *a, **k: None)
    with pytest.raises(pytest.fail.Exception, match=r"run scripts/install-nats\.sh"):
        nats_server_binary()


# -- what NATS would otherwise expose -----------------------------------------------------------


async def test_reserved_nats_subjects_are_refused(broker: NatsBroker) -> None:
    for subject in ("$JS.API.STREAM.DELETE.X", "$SYS.REQ.SERVER.PING", "$KV.b.k"):
        with pytest.raises(InvalidSubjectError) as err:
            await broker.publish(OutgoingMessage(subject))
        assert err.value.field == "subject"
    with pytest.raises(InvalidSubjectError):
        await broker.subscribe(SubscriptionSpec("$JS.>"))
    with pytest.raises(InvalidSubjectError):
        await broker.add_stream(StreamConfig("S", ("$JS.EVENT.>",)))


async def test_wildcard_subscribers_see_no_jetstream_traffic(broker: NatsBroker) -> None:
    everything = await broker.subscribe(SubscriptionSpec(">"))
    await broker.add_stream(StreamConfig("T", ("t.>",)))
    durable = await broker.subscribe(SubscriptionSpec("t.>", durable="c"))
    await broker.publish(OutgoingMessage("t.1", b"x"))
    d = await next_delivery(durable)
    await broker.ack(d.ack_id, AckKind.ACK)
    got = await next_delivery(everything)
    assert (got.subject, got.reply_to, got.ack_id) == ("t.1", "", "")
    await assert_quiet(everything, 0.3)


# -- several brokers on one NATS -------------------------------------------------------------


async def test_an_ack_id_works_on_any_broker(server: NatsServer, broker: NatsBroker) -> None:
    other = NatsBroker([server.url])
    await other.start()
    try:
        await broker.add_stream(StreamConfig("X", ("x.>",)))
        await broker.publish(OutgoingMessage("x.1", b"1"))
        sub = await broker.subscribe(SubscriptionSpec("x.>", durable="c", ack_wait=0.5))
        d = await next_delivery(sub)
        await other.ack(d.ack_id, AckKind.ACK)
        await assert_quiet(sub, 1.0)
    finally:
        await other.close()


async def test_one_broker_dead_letters_each_message(server: NatsServer, broker: NatsBroker) -> None:
    other = NatsBroker([server.url])
    await other.start()
    try:
        await broker.add_stream(StreamConfig("D", ("d.>",)))
        dlq = await other.subscribe(SubscriptionSpec("eco.dlq.D"))
        sub = await broker.subscribe(
            SubscriptionSpec("d.>", durable="c", ack_wait=0.2, max_deliver=1)
        )
        await broker.publish(OutgoingMessage("d.1", b"payload", headers={"k": "v"}))
        assert (await next_delivery(sub)).delivery_count == 1
        dead = await next_delivery(dlq)
        assert dead.data == b"payload"
        assert dict(dead.headers) == {
            "k": "v",
            "eco-dlq-stream": "D",
            "eco-dlq-sequence": "1",
            "eco-dlq-consumer": "c",
            "eco-dlq-deliveries": "1",
        }
        await assert_quiet(dlq, 0.5)
        await assert_quiet(sub, 0.2)
    finally:
        await other.close()


async def test_a_stream_added_by_another_broker_captures_at_once(
    server: NatsServer, broker: NatsBroker
) -> None:
    other = NatsBroker([server.url])
    await other.start()
    try:
        await other.add_stream(StreamConfig("LATE", ("late.>",)))

        async def captured() -> None:
            ack = await broker.publish(OutgoingMessage("late.x", id="probe"))
            assert ack.stream == "LATE"

        await assert_eventually(captured, timeout=5.0)
    finally:
        await other.close()


# -- nats-server restarts ----------------------------------------------------------------------


async def test_core_subscriptions_come_back_after_a_restart(
    server: NatsServer, broker: NatsBroker
) -> None:
    sub = await broker.subscribe(SubscriptionSpec("core.>"))
    queue = await broker.subscribe(SubscriptionSpec("core.>", queue_group="g"))
    await broker.publish(OutgoingMessage("core.before"))
    assert (await next_delivery(sub)).subject == "core.before"
    assert (await next_delivery(queue)).subject == "core.before"
    await asyncio.to_thread(server.restart)

    async def delivered() -> None:
        # Core is at most once: what is published while reconnecting may be lost.
        await broker.publish(OutgoingMessage("core.after"))
        d = await next_delivery(sub, 0.5)
        assert d.subject == "core.after"

    await assert_eventually(delivered, timeout=15.0)
    assert (await next_delivery(queue)).subject == "core.after"


async def test_request_reply_works_after_a_restart(server: NatsServer, broker: NatsBroker) -> None:
    sub = await broker.subscribe(SubscriptionSpec("svc"))

    async def serve() -> None:
        async for request in sub:
            with contextlib.suppress(BusError):
                await broker.publish(OutgoingMessage(request.reply_to, b"pong"))

    task = asyncio.create_task(serve())
    try:
        assert (await broker.request("svc", b"ping")).data == b"pong"
        await asyncio.to_thread(server.restart)

        async def answered() -> None:
            try:
                reply = await broker.request("svc", b"ping", timeout=0.5)
            except (TimeoutError, BusError) as e:
                raise AssertionError(repr(e)) from e
            assert reply.data == b"pong"

        await assert_eventually(answered, timeout=15.0)
    finally:
        await sub.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_publish_jetstream_does_not_answer_is_not_taken_for_a_core_one(
    server: NatsServer, broker: NatsBroker
) -> None:
    """While JetStream is away (as while nats-server shuts down, or comes up without
    it), a publish to a subject a known stream captures is not stored: the broker
    says so (UNAVAILABLE, publish again) instead of answering it as a core publish."""
    await broker.add_stream(StreamConfig("HELD", ("held.>",)))
    await asyncio.to_thread(server.halt)
    await asyncio.to_thread(server.resume, jetstream=False)

    def reconnected() -> None:
        assert broker._nc is not None and broker._nc.is_connected

    await assert_eventually(reconnected, timeout=30)
    with pytest.raises(BusUnavailableError) as err:
        ack = await broker.publish(OutgoingMessage("held.1", b"x", id="h1"))
        raise AssertionError(f"taken for a core publish ({ack}): nothing was stored")
    assert "JetStream" in err.value.message
    await asyncio.to_thread(server.halt)
    await asyncio.to_thread(server.resume, jetstream=True)

    async def stored() -> None:
        ack = await broker.publish(OutgoingMessage("held.1", b"x", id="h1"))
        assert (ack.stream, ack.sequence) == ("HELD", 1)

    await assert_eventually(stored, timeout=30)


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
async def test_restart_mid_stream_loses_no_acknowledged_message(
    server: NatsServer, broker: NatsBroker, kill: bool
) -> None:
    """nats-server restarts while a durable consumer is half way through: every
    message whose publish was acknowledged is delivered, and a message seen
    again is marked redelivered."""
    await broker.add_stream(StreamConfig("FAULT", ("fault.>",)))
    total = 300
    stored: dict[str, int] = {}
    received: list[Delivery] = []
    sub = await broker.subscribe(SubscriptionSpec("fault.>", durable="worker", ack_wait=1.0))

    async def publisher() -> None:
        for i in range(total):
            message = OutgoingMessage(f"fault.{i % 3}", str(i).encode(), id=f"m{i}")
            while True:
                try:
                    stored[message.id] = (await broker.publish(message)).sequence
                    break
                except BusUnavailableError:
                    await asyncio.sleep(0.05)  # same id again: stored at most once
            if i % 10 == 0:
                await asyncio.sleep(0.01)  # spread the stream over the restart

    async def consumer() -> None:
        async for d in sub:
            received.append(d)
            with contextlib.suppress(BusError):
                await broker.ack(d.ack_id, AckKind.ACK)

    tasks = [asyncio.create_task(publisher()), asyncio.create_task(consumer())]
    try:

        def halfway() -> None:
            assert len(received) >= total // 3

        await assert_eventually(halfway, timeout=20.0)
        await asyncio.to_thread(server.restart, kill=kill)
        await asyncio.wait_for(tasks[0], 30.0)
        assert len(stored) == total and all(seq > 0 for seq in stored.values())

        def everything_delivered() -> None:
            assert {d.id for d in received} >= set(stored)

        await assert_eventually(everything_delivered, timeout=30.0)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    # Stored once each (the publisher's retries were de-duplicated).
    assert sorted(stored.values()) == list(range(1, total + 1))
    first_seen: set[str] = set()
    for d in received:
        if d.id in first_seen:
            assert d.redelivered, f"{d.id} came again unmarked (count {d.delivery_count})"
        first_seen.add(d.id)


async def test_messages_stored_before_a_restart_are_delivered_after_it(
    server: NatsServer, broker: NatsBroker
) -> None:
    await broker.add_stream(StreamConfig("KEEP", ("keep.>",)))
    for i in range(5):
        await broker.publish(OutgoingMessage("keep.x", str(i).encode()))
    await asyncio.to_thread(server.restart, kill=True)
    sub = None

    async def subscribed() -> None:
        nonlocal sub
        try:
            sub = await broker.subscribe(SubscriptionSpec("keep.>", durable="late"))
        except BusError as e:
            raise AssertionError(repr(e)) from e

    await assert_eventually(subscribed, timeout=15.0)
    assert sub is not None
    got = await take(sub, 5, 10.0)
    assert [d.data for d in got] == [str(i).encode() for i in range(5)]
