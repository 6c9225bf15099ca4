"""The NATS backend's ``publish_many`` (what the servicer's ``PublishBatch`` and
the sidecar's relay use): every message written in order before any answer is
awaited, the stored ones' confirmations awaited together, one outcome each."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bus import InvalidSubjectError, OutgoingMessage, PublishAck, SubscriptionSpec
from bus.nats import NatsBroker
from sdk import StreamConfig
from tests.harness.nats import NatsServer

WAIT = 10.0


@pytest.fixture
def server(nats: NatsServer) -> NatsServer:
    """This module's name for the test's own nats-server."""
    return nats


@pytest.fixture
async def broker(server: NatsServer) -> AsyncIterator[NatsBroker]:
    async with NatsBroker([server.url]) as b:
        yield b


async def test_each_message_gets_its_own_outcome_in_order(broker: NatsBroker) -> None:
    await broker.add_stream(StreamConfig("S", ("s.>",)))
    outcomes = await broker.publish_many(
        [
            OutgoingMessage("s.1", b"a"),
            OutgoingMessage("core.x", b"b"),
            OutgoingMessage("s..2", b"bad"),
            OutgoingMessage("s.3", b"c", id="x"),
            OutgoingMessage("s.4", b"d", id="x"),
        ]
    )
    assert outcomes[0] == PublishAck("S", 1)
    assert outcomes[1] == PublishAck()
    assert isinstance(outcomes[2], InvalidSubjectError)
    assert outcomes[3] == PublishAck("S", 2)
    assert outcomes[4] == PublishAck("S", 2, duplicate=True)


async def test_a_batch_keeps_publish_order_for_subscribers_and_the_stream(
    broker: NatsBroker,
) -> None:
    await broker.add_stream(StreamConfig("S", ("s.>",)))
    core = await broker.subscribe(SubscriptionSpec("c.>"))
    messages = [
        OutgoingMessage(f"{'cs'[i % 2]}.x", str(i).encode(), id=f"m{i}") for i in range(400)
    ]
    outcomes = await broker.publish_many(messages)
    stored = [o for o in outcomes if isinstance(o, PublishAck) and o.stream]
    assert [o.sequence for o in stored] == list(range(1, 201))
    got: list[bytes] = []
    async with asyncio.timeout(WAIT):
        async for delivery in core:
            got.append(delivery.data)
            if len(got) == 200:
                break
    assert got == [str(i).encode() for i in range(0, 400, 2)]
    await core.close()
    reader = await broker.subscribe(SubscriptionSpec("s.>", durable="audit"))
    seen: list[bytes] = []
    async with asyncio.timeout(WAIT):
        async for delivery in reader:
            seen.append(delivery.data)
            if len(seen) == 200:
                break
    await reader.close()
    assert seen == [str(i).encode() for i in range(1, 400, 2)]
