"""The embedded broker only: its file, restarts, and the bookkeeping that the
conformance suite cannot see through the `Broker` protocol. (Its kill -9 test, which
runs the broker in a process of its own, is in tests/integration/bus.)"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from bus import (
    AckNotFoundError,
    BusClosedError,
    BusUnavailableError,
    OutgoingMessage,
    SubscriptionSpec,
    open_broker,
)
from bus.embedded import EmbeddedBroker
from bus.embedded._journal import _SqliteFile
from sdk import AckKind, DeliverPolicy, StreamConfig
from tests.util import assert_eventually

from .conftest import assert_quiet, next_delivery, take


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "bus"


async def test_open_broker_builds_the_embedded_one(data_dir: Path) -> None:
    broker = open_broker("embedded://", data_dir)
    assert isinstance(broker, EmbeddedBroker)
    async with broker:
        assert (data_dir / "bus.db").exists()
    async with open_broker("embedded", None, max_payload=10) as small:  # type: ignore[attr-defined]
        with pytest.raises(Exception, match="over the limit"):
            await small.publish(OutgoingMessage("x", b"x" * 11))


async def test_lifecycle(data_dir: Path) -> None:
    broker = EmbeddedBroker(data_dir)
    with pytest.raises(RuntimeError, match="not started"):
        await broker.publish(OutgoingMessage("x"))
    await broker.start()
    await broker.start()  # idempotent
    await broker.close()
    await broker.close()
    with pytest.raises(BusClosedError):
        await broker.publish(OutgoingMessage("x"))
    with pytest.raises(RuntimeError, match="cannot be started again"):
        await broker.start()
    await EmbeddedBroker(None).close()  # never started


async def test_one_process_at_a_time_per_file(data_dir: Path) -> None:
    async with EmbeddedBroker(data_dir):
        other = EmbeddedBroker(data_dir)
        with pytest.raises(BusUnavailableError) as err:
            await other.start()
        assert err.value.field == "data_dir"
        await other.close()


async def test_restart_keeps_streams_messages_positions_and_pending(data_dir: Path) -> None:
    spec = SubscriptionSpec("s.>", durable="c", ack_wait=30.0, max_ack_pending=3, max_deliver=9)
    async with EmbeddedBroker(data_dir) as broker:
        await broker.add_stream(StreamConfig("S", ("s.>",), max_msgs=50, duplicate_window=60.0))
        for i in range(1, 11):
            await broker.publish(OutgoingMessage("s.x", str(i).encode(), id=f"id{i}"))
        sub = await broker.subscribe(spec)
        one, _two, three = await take(sub, 3)
        # Sequence 3 goes round twice more before the restart.
        for count in (2, 3):
            await broker.ack(three.ack_id, AckKind.NAK)
            three = await next_delivery(sub)
            assert (three.sequence, three.delivery_count) == (3, count)
        await broker.ack(one.ack_id, AckKind.ACK)
        assert (await next_delivery(sub)).sequence == 4
        before = (await broker.streams())[0]

    async with EmbeddedBroker(data_dir) as broker:
        (after,) = await broker.streams()
        assert after.config == before.config
        assert (after.messages, after.first_sequence, after.last_sequence) == (10, 1, 10)
        (consumer,) = after.consumers
        assert (consumer.next_sequence, consumer.pending) == (5, 3)
        assert consumer.subscribers == 0
        sub = await broker.subscribe(spec)
        again = await take(sub, 3)
        # What was pending comes back marked (3 for the fourth time); 1 never does.
        assert [(d.sequence, d.delivery_count) for d in again] == [(2, 2), (3, 4), (4, 2)]
        await assert_quiet(sub, 0.2)  # max_ack_pending still holds
        for d in again:
            await broker.ack(d.ack_id, AckKind.ACK)
        fresh = await take(sub, 3)
        assert [(d.sequence, d.delivery_count) for d in fresh] == [(5, 1), (6, 1), (7, 1)]
        dup = await broker.publish(OutgoingMessage("s.x", b"1", id="id1"))
        assert dup.duplicate and dup.sequence == 1


async def test_acknowledgements_are_durable_when_ack_returns(data_dir: Path) -> None:
    async with EmbeddedBroker(data_dir) as broker:
        await broker.add_stream(StreamConfig("S", ("s.>",)))
        for _ in range(20):
            await broker.publish(OutgoingMessage("s.x"))
        sub = await broker.subscribe(SubscriptionSpec("s.>", durable="c"))
        for d in await take(sub, 20):
            if d.sequence % 2:
                await broker.ack(d.ack_id, AckKind.ACK)
    # Read the file directly: the floor and the out-of-order acks tell the story.
    with sqlite3.connect(data_dir / "bus.db") as db:
        ((next_seq, floor),) = db.execute("SELECT next_seq, ack_floor FROM consumers").fetchall()
        acked = {seq for (seq,) in db.execute("SELECT seq FROM acks")}
    db.close()
    assert next_seq == 21 and floor == 1
    assert acked == set(range(3, 21, 2))


async def test_stale_and_repeated_acks_are_refused(data_dir: Path) -> None:
    async with EmbeddedBroker(None) as broker:
        await broker.add_stream(StreamConfig("S", ("s.>",)))
        await broker.publish(OutgoingMessage("s.x"))
        sub = await broker.subscribe(SubscriptionSpec("s.>", durable="c", ack_wait=0.2))
        first = await next_delivery(sub)
        second = await next_delivery(sub)
        assert second.delivery_count == 2
        with pytest.raises(AckNotFoundError):
            await broker.ack(first.ack_id, AckKind.ACK)  # delivered again since
        await broker.ack(second.ack_id, AckKind.ACK)
        with pytest.raises(AckNotFoundError):
            await broker.ack(second.ack_id, AckKind.ACK)
        with pytest.raises(ValueError, match="delay"):
            await broker.ack(second.ack_id, AckKind.NAK, delay=-1)


async def test_consumer_counts_redeliveries_and_dead_letters() -> None:
    async with EmbeddedBroker(None) as broker:
        await broker.add_stream(StreamConfig("S", ("s.>",)))
        await broker.publish(OutgoingMessage("s.x"))
        await broker.publish(OutgoingMessage("s.y"))
        sub = await broker.subscribe(
            SubscriptionSpec("s.x", durable="c", ack_wait=30.0, max_deliver=2)
        )
        d = await next_delivery(sub)
        await broker.ack(d.ack_id, AckKind.NAK)
        d = await next_delivery(sub)
        (consumer,) = (await broker.streams())[0].consumers
        assert (consumer.pending, consumer.redelivered, consumer.dead_lettered) == (1, 1, 0)
        await broker.ack(d.ack_id, AckKind.NAK)

        async def dead() -> None:
            (consumer,) = (await broker.streams())[0].consumers
            assert (consumer.pending, consumer.dead_lettered) == (0, 1)
            assert consumer.next_sequence == 3  # s.y was skipped by the filter

        await assert_eventually(dead)


async def test_unread_deliveries_go_back_when_a_subscription_closes() -> None:
    async with EmbeddedBroker(None) as broker:
        await broker.add_stream(StreamConfig("S", ("s.>",)))
        for _ in range(5):
            await broker.publish(OutgoingMessage("s.x"))
        sub = await broker.subscribe(SubscriptionSpec("s.>", durable="c", ack_wait=30.0))
        first = await next_delivery(sub)
        await broker.ack(first.ack_id, AckKind.ACK)
        await asyncio.sleep(0.05)  # the rest sits in the subscription's buffer
        await sub.close()
        sub = await broker.subscribe(SubscriptionSpec("s.>", durable="c", ack_wait=30.0))
        rest = await take(sub, 4)
        # Never handed to a reader, so first deliveries still, at once.
        assert [(d.sequence, d.delivery_count) for d in rest] == [(i, 1) for i in range(2, 6)]


async def test_core_queue_limit_is_per_subscription() -> None:
    async with EmbeddedBroker(None, queue_limit=10) as broker:
        sub = await broker.subscribe(SubscriptionSpec("x"))
        for i in range(25):
            await broker.publish(OutgoingMessage("x", str(i).encode()))
        assert sub.dropped == 15
        assert [int(d.data) for d in await take(sub, 10)] == list(range(10))


async def test_timer_heap_stays_bounded(data_dir: Path) -> None:
    async with EmbeddedBroker(None) as broker:
        await broker.add_stream(StreamConfig("S", ("s.>",)))
        sub = await broker.subscribe(SubscriptionSpec("s.>", durable="c", ack_wait=60.0))
        for _ in range(30):
            await asyncio.gather(*(broker.publish(OutgoingMessage("s.x")) for _ in range(1000)))
            for d in await take(sub, 1000):
                await broker.ack(d.ack_id, AckKind.ACK)
        # Every timer is stale (acknowledged) and far from due, yet compacted away.
        assert len(broker._timers) <= 25_000


async def test_a_failed_flush_fails_the_broker_closed(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with EmbeddedBroker(data_dir) as broker:
        await broker.add_stream(StreamConfig("S", ("s.>",)))
        core = await broker.subscribe(SubscriptionSpec("s.>"))

        def broken(self: _SqliteFile, ops: object) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(_SqliteFile, "flush", broken)
        with pytest.raises(BusUnavailableError):
            await broker.publish(OutgoingMessage("s.x"))
        assert [d async for d in core] == []
        with pytest.raises(BusUnavailableError, match="disk I/O error"):
            await broker.publish(OutgoingMessage("s.y"))


async def test_deliver_last_after_restart(data_dir: Path) -> None:
    async with EmbeddedBroker(data_dir) as broker:
        await broker.add_stream(StreamConfig("S", ("s.>",)))
        for i in range(3):
            await broker.publish(OutgoingMessage("s.x", str(i).encode()))
    async with EmbeddedBroker(data_dir) as broker:
        spec = SubscriptionSpec("s.>", durable="t", deliver=DeliverPolicy.LAST)
        sub = await broker.subscribe(spec)
        assert (await next_delivery(sub)).sequence == 3


async def test_close_while_publishing_keeps_every_acknowledged_message(data_dir: Path) -> None:
    broker = EmbeddedBroker(data_dir)
    await broker.start()
    await broker.add_stream(StreamConfig("S", ("s.>",)))
    acknowledged: set[int] = set()
    refused = 0

    async def publisher(w: int) -> None:
        nonlocal refused
        for i in range(10_000):
            try:
                ack = await broker.publish(OutgoingMessage(f"s.{w}", str(i).encode()))
            except (BusClosedError, BusUnavailableError):
                refused += 1
                return
            acknowledged.add(ack.sequence)

    def some_acknowledged() -> None:
        assert len(acknowledged) >= 500

    tasks = [asyncio.create_task(publisher(w)) for w in range(8)]
    await assert_eventually(some_acknowledged)
    await broker.close()
    await asyncio.gather(*tasks)
    assert refused == 8
    async with EmbeddedBroker(data_dir) as broker:
        (info,) = await broker.streams()
        assert info.last_sequence >= max(acknowledged)
        assert info.messages == info.last_sequence
