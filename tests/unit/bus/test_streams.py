"""Conformance: durable streams: storing, de-duplication, limits, administration,
and what survives a restart. Every backend in `BACKENDS`."""

from __future__ import annotations

import asyncio

import pytest

from bus import (
    Broker,
    InvalidSubjectError,
    OutgoingMessage,
    StreamConflictError,
    StreamNotFoundError,
    SubscriptionSpec,
)
from sdk import AckKind, StreamConfig
from tests.util import assert_eventually

from .conftest import (
    Brokers,
    add_stream,
    next_delivery,
    publish,
    stream_named,
    subscribe,
    take,
)


async def test_captured_publish_is_stored_with_a_sequence(broker: Broker) -> None:
    info = await add_stream(broker, "ORDERS", "orders.>")
    assert (info.messages, info.first_sequence, info.last_sequence) == (0, 1, 0)
    core = await subscribe(broker, "orders.*")
    acks = [await broker.publish(OutgoingMessage(f"orders.{i}", b"x")) for i in range(3)]
    assert [(a.stream, a.sequence, a.duplicate) for a in acks] == [
        ("ORDERS", 1, False),
        ("ORDERS", 2, False),
        ("ORDERS", 3, False),
    ]
    # Core subscribers get durable subjects too.
    assert [d.subject for d in await take(core, 3)] == ["orders.0", "orders.1", "orders.2"]
    # Not captured: core only.
    other = await broker.publish(OutgoingMessage("invoices.1", b"x"))
    assert other.stream == "" and other.sequence == 0
    info = stream_named(await broker.streams(), "ORDERS")
    assert (info.messages, info.first_sequence, info.last_sequence) == (3, 1, 3)
    assert info.bytes >= 3


async def test_published_messages_survive_a_restart(brokers: Brokers) -> None:
    broker = await brokers.open()
    await add_stream(broker, "KEEP", "keep.>", max_msgs=100)
    for i in range(5):
        await publish(broker, f"keep.{i}", str(i).encode(), headers={"n": str(i)}, id=f"m{i}")
    broker = await brokers.reopen(broker)
    (info,) = await broker.streams()
    assert info.config.name == "KEEP" and info.config.max_msgs == 100
    assert (info.messages, info.last_sequence) == (5, 5)
    sub = await subscribe(broker, "keep.>", durable="reader")
    got = await take(sub, 5)
    assert [(d.sequence, d.data, dict(d.headers)["n"], d.id) for d in got] == [
        (i + 1, str(i).encode(), str(i), f"m{i}") for i in range(5)
    ]
    # Sequences go on from where they were; the duplicate window survived too.
    assert await publish(broker, "keep.x") == 6
    dup = await broker.publish(OutgoingMessage("keep.0", b"0", id="m0"))
    assert dup.duplicate and dup.sequence == 1


async def test_duplicate_ids_within_the_window_are_stored_once(broker: Broker) -> None:
    await add_stream(broker, "DEDUP", "dd.>", duplicate_window=60.0)
    first = await broker.publish(OutgoingMessage("dd.a", b"1", id="order-1"))
    again = await broker.publish(OutgoingMessage("dd.a", b"1", id="order-1"))
    other = await broker.publish(OutgoingMessage("dd.a", b"2", id="order-2"))
    no_id = [await broker.publish(OutgoingMessage("dd.a", b"3")) for _ in range(2)]
    assert (first.sequence, first.duplicate) == (1, False)
    assert (again.sequence, again.duplicate) == (1, True)
    assert (other.sequence, other.duplicate) == (2, False)
    assert [a.sequence for a in no_id] == [3, 4]
    assert stream_named(await broker.streams(), "DEDUP").messages == 4


async def test_concurrent_duplicates_are_stored_once(broker: Broker) -> None:
    await add_stream(broker, "DEDUP", "dd.>")
    acks = await asyncio.gather(
        *(broker.publish(OutgoingMessage("dd.c", b"x", id="same")) for _ in range(10))
    )
    assert {a.sequence for a in acks} == {1}
    assert sum(not a.duplicate for a in acks) == 1


async def test_duplicate_id_after_the_window_is_stored_again(broker: Broker) -> None:
    await add_stream(broker, "DEDUP", "dd.>", duplicate_window=0.3)
    assert await publish(broker, "dd.a", id="x") == 1

    async def stored_again() -> int:
        ack = await broker.publish(OutgoingMessage("dd.a", id="x"))
        assert not ack.duplicate, "still within the window"
        return ack.sequence

    # Once the window has passed (a server may forget ids on its own schedule).
    assert await assert_eventually(stored_again, interval=0.1) == 2


async def test_max_msgs_drops_the_oldest(broker: Broker) -> None:
    await add_stream(broker, "LIM", "lim.>", max_msgs=5)
    for i in range(8):
        await publish(broker, "lim.x", str(i).encode())
    info = stream_named(await broker.streams(), "LIM")
    assert (info.messages, info.first_sequence, info.last_sequence) == (5, 4, 8)
    sub = await subscribe(broker, "lim.>", durable="all")
    assert [d.sequence for d in await take(sub, 5)] == [4, 5, 6, 7, 8]


async def test_max_bytes_drops_the_oldest(broker: Broker) -> None:
    await add_stream(broker, "LIM", "lim.>", max_bytes=1000)
    for _ in range(10):
        await publish(broker, "lim.x", b"x" * 200)
    info = stream_named(await broker.streams(), "LIM")
    assert info.bytes <= 1000
    assert 2 <= info.messages <= 5
    assert info.last_sequence == 10 and info.first_sequence == 11 - info.messages


async def test_max_age_expires_messages(broker: Broker) -> None:
    await add_stream(broker, "AGE", "age.>", max_age=0.5)
    for _ in range(3):
        await publish(broker, "age.x")
    assert stream_named(await broker.streams(), "AGE").messages == 3

    async def expired() -> None:
        info = stream_named(await broker.streams(), "AGE")
        assert info.messages == 0 and info.last_sequence == 3

    await assert_eventually(expired, timeout=10.0)
    assert await publish(broker, "age.x") == 4


async def test_add_stream_is_idempotent_for_the_same_config(broker: Broker) -> None:
    config = StreamConfig("SAME", ("a.>", "b.*"), max_msgs=10)
    info, created = await broker.add_stream(config)
    assert created and info.config.name == "SAME"
    await publish(broker, "a.1")
    info, created = await broker.add_stream(StreamConfig("SAME", ("b.*", "a.>"), max_msgs=10))
    assert not created and info.messages == 1


async def test_add_stream_conflicts(broker: Broker) -> None:
    await add_stream(broker, "ORDERS", "orders.>")
    with pytest.raises(StreamConflictError) as err:
        await broker.add_stream(StreamConfig("ORDERS", ("orders.>",), max_msgs=3))
    assert err.value.field == "name"
    for subjects in (("orders.eu.*",), ("orders.>",), ("*.eu",), (">",), ("x", "orders.a")):
        with pytest.raises(StreamConflictError) as err:
            await broker.add_stream(StreamConfig("OTHER", subjects))
        assert err.value.field == "subjects", subjects
    _, created = await broker.add_stream(StreamConfig("OTHER", ("order.>", "orders")))
    assert created


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (StreamConfig("", ("a",)), "name"),
        (StreamConfig("has.dot", ("a",)), "name"),
        (StreamConfig("has space", ("a",)), "name"),
        (StreamConfig("x" * 65, ("a",)), "name"),
        (StreamConfig("S", ()), "subjects"),
        (StreamConfig("S", ("a..b",)), "subjects"),
        (StreamConfig("S", ("a.>.b",)), "subjects"),
        (StreamConfig("S", ("a",), dead_letter_subject="dlq.*"), "dead_letter_subject"),
    ],
)
async def test_add_stream_validates(broker: Broker, config: StreamConfig, field: str) -> None:
    with pytest.raises(InvalidSubjectError) as err:
        await broker.add_stream(config)
    assert err.value.field == field


async def test_delete_stream(broker: Broker) -> None:
    await add_stream(broker, "GONE", "gone.>")
    await add_stream(broker, "STAYS", "stays.>")
    await publish(broker, "gone.1")
    sub = await subscribe(broker, "gone.>", durable="c")
    await next_delivery(sub)
    await broker.delete_stream("GONE")
    assert [s.config.name for s in await broker.streams()] == ["STAYS"]
    # Its subscriptions end; its subjects are core only again.
    async with asyncio.timeout(5):
        assert [d async for d in sub] == []
    ack = await broker.publish(OutgoingMessage("gone.2"))
    assert ack.stream == ""
    with pytest.raises(StreamNotFoundError) as err:
        await broker.delete_stream("GONE")
    assert err.value.field == "name"
    # The name and its subjects are free again, from sequence 1.
    await add_stream(broker, "GONE", "gone.>")
    assert await publish(broker, "gone.3") == 1


async def test_streams_lists_counts_and_consumers(broker: Broker) -> None:
    await add_stream(broker, "B", "b.>")
    await add_stream(broker, "A", "a.>")
    for i in range(3):
        await publish(broker, "a.x", str(i).encode())
    await publish(broker, "b.x")
    sub = await subscribe(broker, "a.>", durable="reader", ack_wait=30.0)
    first, _second = await take(sub, 2)
    await broker.ack(first.ack_id, AckKind.ACK)

    async def counted() -> None:
        a, b = await broker.streams()
        assert [a.config.name, b.config.name] == ["A", "B"]
        assert (a.messages, a.first_sequence, a.last_sequence) == (3, 1, 3)
        assert (b.messages, b.last_sequence) == (1, 1)
        (consumer,) = a.consumers
        assert consumer.name == "reader"
        assert consumer.pending == 2  # the second, and the third handed out meanwhile
        assert consumer.next_sequence == 4
        assert consumer.subscribers == 1
        assert b.consumers == ()

    await assert_eventually(counted)


async def test_durable_subscribe_needs_a_stream(broker: Broker) -> None:
    with pytest.raises(StreamNotFoundError) as err:
        await broker.subscribe(SubscriptionSpec("nowhere.>", durable="c"))
    assert err.value.field == "subject"
    await add_stream(broker, "S", "s.>")
    with pytest.raises(StreamNotFoundError) as err:
        await broker.subscribe(SubscriptionSpec("s.>", durable="c", stream="NOPE"))
    assert err.value.field == "stream"
    sub = await broker.subscribe(SubscriptionSpec("s.x", durable="c", stream="S"))
    await sub.close()
