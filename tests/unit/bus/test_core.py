"""Conformance: the core tier (at most once): wildcards, queue groups, ordering,
slow subscribers, validation. Every backend in `BACKENDS`."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from bus import (
    MAX_PAYLOAD,
    Broker,
    BusClosedError,
    InvalidSubjectError,
    OutgoingMessage,
    PayloadTooLargeError,
    Subscription,
    SubscriptionSpec,
)
from tests.util import assert_eventually

from .conftest import Backend, Brokers, assert_quiet, next_delivery, publish, subscribe, take


async def test_brokers_implement_the_protocol(broker: Broker) -> None:
    assert isinstance(broker, Broker)
    sub = await subscribe(broker, "x")
    assert isinstance(sub, Subscription)
    assert sub.dropped == 0 and sub.next_sequence == 0
    await sub.close()
    await sub.close()  # idempotent


async def test_message_reaches_matching_subscribers(broker: Broker) -> None:
    exact = await subscribe(broker, "orders.eu.created")
    star = await subscribe(broker, "orders.*.created")
    tail = await subscribe(broker, "orders.>")
    other = await subscribe(broker, "orders.*")
    ack = await broker.publish(
        OutgoingMessage("orders.eu.created", b"42", headers={"k": "v"}, reply_to="r.1")
    )
    assert ack.stream == "" and ack.sequence == 0
    for sub in (exact, star, tail):
        d = await next_delivery(sub)
        assert (d.subject, d.data, dict(d.headers), d.reply_to) == (
            "orders.eu.created",
            b"42",
            {"k": "v"},
            "r.1",
        )
        assert d.ack_id == "" and d.delivery_count == 0 and not d.redelivered
    await assert_quiet(other, 0.2)


@pytest.mark.parametrize(
    ("pattern", "matching", "not_matching"),
    [
        ("a.*.c", ["a.b.c", "a.x.c"], ["a.c", "a.b.c.d", "x.b.c", "a.b"]),
        ("a.>", ["a.b", "a.b.c.d"], ["a", "b.a"]),
        ("*.b", ["a.b", "z.b"], ["b", "a.b.c"]),
        ("*", ["a", "z"], ["a.b"]),
        (">", ["a", "a.b.c"], []),
        ("a.*.>", ["a.b.c", "a.b.c.d"], ["a.b", "a"]),
    ],
)
async def test_wildcards(
    broker: Broker, pattern: str, matching: list[str], not_matching: list[str]
) -> None:
    sub = await subscribe(broker, pattern)
    for subject in not_matching + matching:
        await publish(broker, subject, subject.encode())
    got = [d.subject for d in await take(sub, len(matching))]
    assert got == matching
    await assert_quiet(sub, 0.1)


async def test_subscription_is_ready_when_subscribe_returns(broker: Broker) -> None:
    for i in range(20):
        sub = await subscribe(broker, f"ready.{i}")
        await publish(broker, f"ready.{i}")
        assert (await next_delivery(sub)).subject == f"ready.{i}"
        await sub.close()


async def test_closed_subscription_gets_nothing_and_its_iterator_ends(broker: Broker) -> None:
    sub = await subscribe(broker, "gone")
    keep = await subscribe(broker, "gone")
    await sub.close()
    await publish(broker, "gone")
    await next_delivery(keep)
    assert [d async for d in sub] == []


async def test_queue_group_gives_each_message_to_one_member(broker: Broker) -> None:
    members = [await subscribe(broker, "jobs.*", queue_group="workers") for _ in range(3)]
    plain = await subscribe(broker, "jobs.*")
    total = 90
    for i in range(total):
        await publish(broker, "jobs.run", str(i).encode())
    everything = await take(plain, total)
    assert [d.data for d in everything] == [str(i).encode() for i in range(total)]

    got: dict[int, list[bytes]] = {i: [] for i in range(len(members))}

    async def drain(i: int, sub: Subscription) -> None:
        while True:
            got[i].append((await next_delivery(sub, 2.0)).data)

    def all_in() -> None:
        assert sum(len(v) for v in got.values()) >= total

    tasks = [asyncio.create_task(drain(i, s)) for i, s in enumerate(members)]
    try:
        await assert_eventually(all_in)
        await asyncio.sleep(0.1)  # any extra copy would show up now
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    received = Counter(x for v in got.values() for x in v)
    assert sorted(received) == sorted(str(i).encode() for i in range(total))
    assert set(received.values()) == {1}, "a message reached two members of one group"
    assert all(len(v) > 0 for v in got.values()), f"not spread: {[len(v) for v in got.values()]}"


async def test_separate_queue_groups_each_get_a_copy(broker: Broker) -> None:
    a = await subscribe(broker, "ev", queue_group="a")
    b = await subscribe(broker, "ev", queue_group="b")
    await publish(broker, "ev", b"1")
    assert (await next_delivery(a)).data == b"1"
    assert (await next_delivery(b)).data == b"1"


async def test_order_is_kept_per_subject(broker: Broker) -> None:
    sub = await subscribe(broker, "seq.*")
    for i in range(200):
        await publish(broker, f"seq.{'ab'[i % 2]}", str(i).encode())
    got = await take(sub, 200)
    for subject in ("seq.a", "seq.b"):
        values = [int(d.data) for d in got if d.subject == subject]
        assert values == sorted(values) and len(values) == 100


async def test_full_subscriber_loses_messages_and_counts_them(
    broker: Broker, backend: Backend
) -> None:
    slow = await subscribe(broker, "flood")
    fast = await subscribe(broker, "flood")
    total = backend.queue_limit + 200
    received: list[int] = []

    async def drain() -> None:
        async for d in fast:
            received.append(int(d.data))

    task = asyncio.create_task(drain())
    try:
        for i in range(total):
            await publish(broker, "flood", str(i).encode())
            if i % 100 == 0:
                await asyncio.sleep(0.001)  # the fast subscriber keeps up (mostly)

        def fast_done() -> None:
            assert len(received) + fast.dropped >= total

        await assert_eventually(fast_done, timeout=10.0)
        assert received == sorted(received)
        # The publisher never waited for the slow subscriber: it lost messages, counted.
        kept: list[int] = []

        async def slow_accounted() -> None:
            while len(kept) + slow.dropped < total:
                kept.append(int((await next_delivery(slow, 5.0)).data))

        await asyncio.wait_for(slow_accounted(), 10.0)
        assert slow.dropped > 0
        assert len(kept) + slow.dropped == total
        assert kept == sorted(kept)
        assert fast.dropped < slow.dropped
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize(
    "subject", ["", "a..b", ".a", "a.", "a b", "a.*", "a.>", "*", ">", "a\tb", "ä.b", "a" * 300]
)
async def test_publish_rejects_invalid_subjects(broker: Broker, subject: str) -> None:
    with pytest.raises(InvalidSubjectError) as err:
        await publish(broker, subject)
    assert err.value.field == "subject"


async def test_publish_rejects_invalid_reply_to(broker: Broker) -> None:
    with pytest.raises(InvalidSubjectError) as err:
        await publish(broker, "ok", reply_to="not ok")
    assert err.value.field == "reply_to"


@pytest.mark.parametrize("pattern", ["", "a..b", "a.>.b", ">.a", "a*", "a.b*", "a.>>", "a b"])
async def test_subscribe_rejects_invalid_patterns(broker: Broker, pattern: str) -> None:
    with pytest.raises(InvalidSubjectError) as err:
        await broker.subscribe(SubscriptionSpec(pattern))
    assert err.value.field == "subject"


async def test_payload_over_the_limit_is_rejected(broker: Broker) -> None:
    sub = await subscribe(broker, "big")
    with pytest.raises(PayloadTooLargeError) as err:
        await publish(broker, "big", b"x" * (MAX_PAYLOAD + 1))
    assert err.value.field == "data"
    await publish(broker, "big", b"x" * 1000)
    assert len((await next_delivery(sub)).data) == 1000


async def test_close_ends_subscriptions_and_is_idempotent(brokers: Brokers) -> None:
    broker = await brokers.open("closing")
    sub = await subscribe(broker, "x")
    await broker.close()
    assert [d async for d in sub] == []
    await broker.close()
    with pytest.raises(BusClosedError):
        await publish(broker, "x")
