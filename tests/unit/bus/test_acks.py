"""Conformance: acknowledgements of durable deliveries: ack, NAK (with delay), term,
in progress, redelivery after ack_wait with backoff, and dead letters after
max_deliver. Every backend in `BACKENDS`."""

from __future__ import annotations

import asyncio
import itertools
import time

from bus import (
    Broker,
)
from sdk import AckKind
from tests.util import assert_eventually

from .conftest import (
    add_stream,
    assert_quiet,
    next_delivery,
    publish,
    stream_named,
    subscribe,
    take,
)


async def test_delivery_carries_stream_sequence_and_ack_id(broker: Broker) -> None:
    await add_stream(broker, "S", "s.>")
    before = time.time()
    await publish(broker, "s.a", b"payload", headers={"h": "1"}, id="msg-1")
    sub = await subscribe(broker, "s.>", durable="c")
    d = await next_delivery(sub)
    assert (d.subject, d.data, dict(d.headers)["h"], d.id) == ("s.a", b"payload", "1", "msg-1")
    assert (d.stream, d.sequence, d.delivery_count, d.redelivered) == ("S", 1, 1, False)
    assert d.ack_id
    assert before - 5 <= d.published_at <= time.time() + 5
    await broker.ack(d.ack_id, AckKind.ACK)


async def test_acknowledged_message_is_not_redelivered(broker: Broker) -> None:
    await add_stream(broker, "S", "s.>")
    await publish(broker, "s.a")
    sub = await subscribe(broker, "s.>", durable="c", ack_wait=0.2)
    d = await next_delivery(sub)
    await broker.ack(d.ack_id, AckKind.ACK)
    await assert_quiet(sub, 0.6)

    async def nothing_pending() -> None:
        (consumer,) = stream_named(await broker.streams(), "S").consumers
        assert consumer.pending == 0 and consumer.next_sequence == 2

    await assert_eventually(nothing_pending)


async def test_unacknowledged_message_is_redelivered_after_ack_wait(broker: Broker) -> None:
    await add_stream(broker, "S", "s.>")
    await publish(broker, "s.a", b"x")
    sub = await subscribe(broker, "s.>", durable="c", ack_wait=0.3)
    first = await next_delivery(sub)
    t0 = time.monotonic()
    second = await next_delivery(sub)
    assert time.monotonic() - t0 >= 0.2
    assert (second.sequence, second.data, second.delivery_count) == (1, b"x", 2)
    assert second.redelivered and not first.redelivered
    third = await next_delivery(sub)
    assert third.delivery_count == 3
    await broker.ack(third.ack_id, AckKind.ACK)
    await assert_quiet(sub, 0.5)


async def test_redelivery_follows_the_backoff(broker: Broker) -> None:
    await add_stream(broker, "S", "s.>")
    await publish(broker, "s.a")
    sub = await subscribe(
        broker, "s.>", durable="c", ack_wait=20.0, backoff=(0.1, 0.4), max_deliver=10
    )
    times = []
    for count in (1, 2, 3, 4):
        d = await next_delivery(sub, 10.0)
        times.append(time.monotonic())
        assert d.delivery_count == count
    await broker.ack(d.ack_id, AckKind.ACK)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] < 10.0, "the first backoff replaces ack_wait"
    assert gaps[1] >= 0.35 and gaps[2] >= 0.35, f"the last backoff repeats: {gaps}"


async def test_nak_redelivers_at_once_or_after_the_delay(broker: Broker) -> None:
    await add_stream(broker, "S", "s.>")
    await publish(broker, "s.a")
    sub = await subscribe(broker, "s.>", durable="c", ack_wait=30.0)
    d1 = await next_delivery(sub)
    await broker.ack(d1.ack_id, AckKind.NAK)
    d2 = await next_delivery(sub, 10.0)  # well before ack_wait
    assert (d2.sequence, d2.delivery_count) == (1, 2)
    await broker.ack(d2.ack_id, AckKind.NAK, delay=0.6)
    t0 = time.monotonic()
    await assert_quiet(sub, 0.3)
    d3 = await next_delivery(sub, 10.0)
    assert time.monotonic() - t0 >= 0.5
    assert d3.delivery_count == 3
    await broker.ack(d3.ack_id, AckKind.ACK)


async def test_term_stops_redelivery_without_dead_letter(broker: Broker) -> None:
    await add_stream(broker, "S", "s.>")
    dlq = await subscribe(broker, "eco.dlq.S")
    await publish(broker, "s.a")
    sub = await subscribe(broker, "s.>", durable="c", ack_wait=0.2, max_deliver=1)
    d = await next_delivery(sub)
    await broker.ack(d.ack_id, AckKind.TERM)
    await assert_quiet(sub, 0.6)
    await assert_quiet(dlq, 0.1)


async def test_in_progress_restarts_the_ack_wait(broker: Broker) -> None:
    await add_stream(broker, "S", "s.>")
    await publish(broker, "s.a")
    sub = await subscribe(broker, "s.>", durable="c", ack_wait=0.6)
    d = await next_delivery(sub)
    for _ in range(4):  # 0.8 s in all: past the first ack_wait
        await asyncio.sleep(0.2)
        await broker.ack(d.ack_id, AckKind.IN_PROGRESS)
    await assert_quiet(sub, 0.2)
    again = await next_delivery(sub, 10.0)  # no more extensions: it comes back
    assert again.delivery_count == 2


async def test_max_deliver_moves_the_message_to_the_dead_letter_subject(broker: Broker) -> None:
    await add_stream(broker, "JOBS", "jobs.>")
    dlq = await subscribe(broker, "eco.dlq.JOBS")
    await publish(broker, "jobs.a", b"poison")
    await publish(broker, "jobs.b", b"fine")
    sub = await subscribe(broker, "jobs.>", durable="worker", ack_wait=30.0, max_deliver=3)
    counts: list[int] = []
    while len(counts) < 4:
        d = await next_delivery(sub, 10.0)
        if d.data == b"fine":
            await broker.ack(d.ack_id, AckKind.ACK)
            counts.append(0)
            continue
        counts.append(d.delivery_count)
        await broker.ack(d.ack_id, AckKind.NAK)
    assert sorted(counts) == [0, 1, 2, 3]
    dead = await next_delivery(dlq, 10.0)
    assert dead.subject == "eco.dlq.JOBS" and dead.data == b"poison"
    headers = dict(dead.headers)
    assert headers["eco-dlq-stream"] == "JOBS"
    assert headers["eco-dlq-sequence"] == "1"
    assert headers["eco-dlq-consumer"] == "worker"
    assert headers["eco-dlq-deliveries"] == "3"
    await assert_quiet(sub, 0.5)


async def test_dead_letters_after_ack_wait_into_a_stream(broker: Broker) -> None:
    await add_stream(broker, "JOBS", "jobs.>", dead_letter_subject="failed.jobs")
    await add_stream(broker, "FAILED", "failed.>")
    await publish(broker, "jobs.a", b"slow")
    sub = await subscribe(broker, "jobs.>", durable="w", ack_wait=0.2, max_deliver=2)
    assert [d.delivery_count for d in await take(sub, 2)] == [1, 2]
    dead_letters = await subscribe(broker, "failed.>", durable="triage")
    dead = await next_delivery(dead_letters, 10.0)
    assert (dead.subject, dead.data, dead.stream) == ("failed.jobs", b"slow", "FAILED")
    assert dict(dead.headers)["eco-dlq-deliveries"] == "2"
    await assert_quiet(sub, 0.3)
