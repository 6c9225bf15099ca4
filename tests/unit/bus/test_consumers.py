"""Conformance: durable consumers: replay policies, filters, per-subject order,
backpressure, shared consumers, and positions that survive resubscribing and
restarts. Every backend in `BACKENDS`."""

from __future__ import annotations

import asyncio
import time

import pytest

from bus import (
    AckNotFoundError,
    Broker,
    Delivery,
    StreamConflictError,
    Subscription,
)
from sdk import AckKind, DeliverPolicy
from tests.util import assert_eventually

from .conftest import (
    Brokers,
    add_stream,
    assert_quiet,
    next_delivery,
    publish,
    subscribe,
    take,
)


async def _ack_all(broker: Broker, deliveries: list[Delivery]) -> None:
    for d in deliveries:
        await broker.ack(d.ack_id, AckKind.ACK)


async def test_deliver_policies(broker: Broker) -> None:
    await add_stream(broker, "R", "r.>")
    await publish(broker, "r.a", b"1")
    await publish(broker, "r.a", b"2")
    await asyncio.sleep(0.1)
    middle = time.time()
    await asyncio.sleep(0.1)
    for i in (3, 4, 5):
        await publish(broker, "r.a", str(i).encode())

    async def first_sequences(sub: Subscription, count: int) -> list[int]:
        got = await take(sub, count)
        await _ack_all(broker, got)
        return [d.sequence for d in got]

    everything = await subscribe(broker, "r.>", durable="all", deliver=DeliverPolicy.ALL)
    by_seq = await subscribe(
        broker, "r.>", durable="seq", deliver=DeliverPolicy.BY_SEQUENCE, start_sequence=3
    )
    by_time = await subscribe(
        broker, "r.>", durable="time", deliver=DeliverPolicy.BY_TIME, start_time=middle
    )
    last = await subscribe(broker, "r.>", durable="last", deliver=DeliverPolicy.LAST)
    new = await subscribe(broker, "r.>", durable="new", deliver=DeliverPolicy.NEW)
    assert await first_sequences(everything, 5) == [1, 2, 3, 4, 5]
    assert await first_sequences(by_seq, 3) == [3, 4, 5]
    assert await first_sequences(by_time, 3) == [3, 4, 5]
    assert await first_sequences(last, 1) == [5]
    await assert_quiet(new, 0.2)
    await publish(broker, "r.a", b"6")
    for sub in (everything, by_seq, by_time, last, new):
        assert await first_sequences(sub, 1) == [6]


async def test_consumer_filters_the_stream(broker: Broker) -> None:
    await add_stream(broker, "O", "orders.>")
    for subject in ("orders.eu.new", "orders.us.new", "orders.eu.paid", "orders.eu.new"):
        await publish(broker, subject)
    sub = await subscribe(broker, "orders.eu.*", durable="eu", stream="O")
    got = await take(sub, 3)
    assert [(d.subject, d.sequence) for d in got] == [
        ("orders.eu.new", 1),
        ("orders.eu.paid", 3),
        ("orders.eu.new", 4),
    ]
    await _ack_all(broker, got)
    await assert_quiet(sub, 0.2)


async def test_first_deliveries_keep_publish_order_per_subject(broker: Broker) -> None:
    await add_stream(broker, "ORD", "ord.>")
    subjects = ["ord.a", "ord.b", "ord.c"]
    for i in range(90):
        await publish(broker, subjects[i % 3], str(i).encode())
    sub = await subscribe(broker, "ord.>", durable="c")
    got = await take(sub, 90)
    await _ack_all(broker, got)
    assert all(d.delivery_count == 1 for d in got)
    for subject in subjects:
        values = [int(d.data) for d in got if d.subject == subject]
        assert values == sorted(values) and len(values) == 30


async def test_max_ack_pending_holds_deliveries_back(broker: Broker) -> None:
    await add_stream(broker, "BP", "bp.>")
    for i in range(10):
        await publish(broker, "bp.x", str(i).encode())
    sub = await subscribe(broker, "bp.>", durable="c", max_ack_pending=3, ack_wait=30.0)
    first = await take(sub, 3)
    assert [d.sequence for d in first] == [1, 2, 3]
    await assert_quiet(sub, 0.4)
    await broker.ack(first[0].ack_id, AckKind.ACK)
    (fourth,) = await take(sub, 1)
    assert fourth.sequence == 4
    await assert_quiet(sub, 0.3)
    await _ack_all(broker, [*first[1:], fourth])
    rest = await take(sub, 3)
    assert [d.sequence for d in rest] == [5, 6, 7]
    await _ack_all(broker, rest)
    assert [d.sequence for d in await take(sub, 3)] == [8, 9, 10]


async def test_subscriptions_of_one_durable_share_its_messages(broker: Broker) -> None:
    await add_stream(broker, "SH", "sh.>")
    subs = [await subscribe(broker, "sh.>", durable="shared") for _ in range(2)]
    total = 40
    got: list[list[int]] = [[], []]

    async def work(i: int) -> None:
        async for d in subs[i]:
            got[i].append(d.sequence)
            await broker.ack(d.ack_id, AckKind.ACK)

    tasks = [asyncio.create_task(work(i)) for i in range(2)]
    try:
        for i in range(total):
            await publish(broker, "sh.x", str(i).encode())
            await asyncio.sleep(0)

        def all_received() -> None:
            assert len(got[0]) + len(got[1]) >= total

        await assert_eventually(all_received, timeout=10.0)
        await asyncio.sleep(0.2)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert sorted(got[0] + got[1]) == list(range(1, total + 1)), "each message exactly once"
    assert got[0] and got[1], f"not spread: {len(got[0])} and {len(got[1])}"


async def test_durable_consumers_are_independent(broker: Broker) -> None:
    await add_stream(broker, "IND", "ind.>")
    for _ in range(3):
        await publish(broker, "ind.x")
    a = await subscribe(broker, "ind.>", durable="a")
    b = await subscribe(broker, "ind.>", durable="b")
    assert [d.sequence for d in await take(a, 3)] == [1, 2, 3]
    assert [d.sequence for d in await take(b, 3)] == [1, 2, 3]


async def test_position_survives_unsubscribe_and_resubscribe(broker: Broker) -> None:
    await add_stream(broker, "POS", "pos.>")
    for _ in range(5):
        await publish(broker, "pos.x")
    sub = await subscribe(broker, "pos.>", durable="c", ack_wait=1.0, max_ack_pending=2)
    done = await take(sub, 2)
    await _ack_all(broker, done)
    await sub.close()
    for _ in range(3):
        await publish(broker, "pos.x")
    sub = await subscribe(broker, "pos.>", durable="c", ack_wait=1.0, max_ack_pending=2)
    assert sub.next_sequence >= 3
    seen: set[int] = set()
    while seen != set(range(3, 9)):
        d = await next_delivery(sub, 10.0)
        assert d.sequence >= 3, f"acknowledged sequence {d.sequence} came back"
        seen.add(d.sequence)
        await broker.ack(d.ack_id, AckKind.ACK)
    await assert_quiet(sub, 0.3)


async def test_durable_keeps_its_subject(broker: Broker) -> None:
    await add_stream(broker, "F", "f.>")
    sub = await subscribe(broker, "f.a", durable="c")
    with pytest.raises(StreamConflictError) as err:
        await subscribe(broker, "f.b", durable="c")
    assert err.value.field == "durable"
    await sub.close()


async def test_ack_of_an_unknown_delivery_is_refused(broker: Broker) -> None:
    for bogus in ("", "nonsense", "S.c.1.1"):
        with pytest.raises(AckNotFoundError) as err:
            await broker.ack(bogus, AckKind.ACK)
        assert err.value.field == "ack_id"


async def test_acks_and_pending_survive_a_restart(brokers: Brokers) -> None:
    broker = await brokers.open()
    await add_stream(broker, "RS", "rs.>")
    for i in range(1, 5):
        await publish(broker, "rs.x", str(i).encode())
    sub = await subscribe(broker, "rs.>", durable="c", ack_wait=30.0)
    got = await take(sub, 4)
    await broker.ack(got[0].ack_id, AckKind.ACK)
    await broker.ack(got[2].ack_id, AckKind.ACK)
    broker = await brokers.reopen(broker)
    sub = await subscribe(broker, "rs.>", durable="c", ack_wait=30.0)
    again = await take(sub, 2, 10.0)
    assert sorted(d.sequence for d in again) == [2, 4]
    assert all(d.redelivered for d in again), "seen before the restart: marked redelivered"
    await _ack_all(broker, again)
    await publish(broker, "rs.x", b"5")
    fresh = await next_delivery(sub)
    assert (fresh.sequence, fresh.delivery_count) == (5, 1)
    await broker.ack(fresh.ack_id, AckKind.ACK)
    await assert_quiet(sub, 0.3)
