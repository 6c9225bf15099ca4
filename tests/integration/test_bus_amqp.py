"""The AMQP bridge against a real RabbitMQ (started once per session), with an
`EmbeddedBroker` as the bus and the real clients pika and aio-pika on RabbitMQ's side."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika
import pika
import pytest

from bus import (
    BusUnavailableError,
    Delivery,
    OutgoingMessage,
    PublishAck,
    Subscription,
    SubscriptionSpec,
)
from bus.embedded import EmbeddedBroker
from sdk import AckKind, StreamConfig
from sidecar.bridges.amqp.bridge import AmqpBridge
from sidecar.config import AmqpBridgeConfig
from tests.harness.ports import free_port
from tests.harness.rabbitmq import RabbitMQServer, rabbitmq_fixture  # noqa: F401
from tests.util import assert_eventually

WAIT = 20.0


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[EmbeddedBroker]:
    b = EmbeddedBroker(tmp_path / "bus")
    await b.start()
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture
def tag() -> str:
    """A suffix that keeps each test's exchanges and queues apart on the shared node."""
    return uuid.uuid4().hex[:8]


def bridge_config(url: str, **fields: Any) -> AmqpBridgeConfig:
    return AmqpBridgeConfig.model_validate({"protocol": "amqp", "url": url, **fields})


async def connected(bridge: AmqpBridge, *, sessions: int = 1) -> None:
    def check() -> None:
        assert bridge.connected, bridge.status()
        assert bridge.stats.connects >= sessions, bridge.status()

    await assert_eventually(check, timeout=WAIT)


async def eventually(predicate: Callable[[], Any], *, expected: Any = True) -> None:
    """Waits until ``predicate()`` (awaited when it is a coroutine) is ``expected``
    (with the default, true)."""

    async def check() -> None:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if expected is True:
            assert result
        else:
            assert result == expected

    await assert_eventually(check, timeout=WAIT, interval=0.05)


def acker(broker: EmbeddedBroker) -> Callable[[Delivery], Awaitable[None]]:
    async def ack(delivery: Delivery) -> None:
        await broker.ack(delivery.ack_id, AckKind.ACK)

    return ack


async def take(
    sub: Subscription, count: int, *, ack: Callable[[Delivery], Awaitable[None]] | None = None
) -> list[Delivery]:
    out: list[Delivery] = []
    async with asyncio.timeout(WAIT):
        async for delivery in sub:
            out.append(delivery)
            if ack is not None:
                await ack(delivery)
            if len(out) == count:
                break
    return out


async def stream_messages(broker: EmbeddedBroker, name: str) -> int:
    info = next(s for s in await broker.streams() if s.config.name == name)
    return info.messages


async def consumer_pending(broker: EmbeddedBroker, stream: str, durable: str) -> int:
    info = next(s for s in await broker.streams() if s.config.name == stream)
    return next(c.pending for c in info.consumers if c.name == durable)


class SlowBroker:
    """The bus, with each publish taking ``delay`` (or stalling for good after
    ``stall_after`` publishes) and each acknowledgement ``ack_delay``: messages stay
    unacknowledged meanwhile, on RabbitMQ or on the bus."""

    def __init__(
        self,
        inner: EmbeddedBroker,
        *,
        delay: float = 0.0,
        stall_after: int = -1,
        ack_delay: float = 0.0,
    ) -> None:
        self._inner = inner
        self._delay = delay
        self._stall_after = stall_after
        self._ack_delay = ack_delay
        self.published = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def publish(self, message: OutgoingMessage) -> PublishAck:
        if self.published == self._stall_after:
            await asyncio.Event().wait()
        await asyncio.sleep(self._delay)
        ack = await self._inner.publish(message)
        self.published += 1
        return ack

    async def ack(self, ack_id: str, kind: AckKind, delay: float = 0.0) -> None:
        await asyncio.sleep(self._ack_delay)
        await self._inner.ack(ack_id, kind, delay)


class FlakyBroker(SlowBroker):
    """The bus, unavailable for its first ``failures`` publishes."""

    def __init__(self, inner: EmbeddedBroker, failures: int) -> None:
        super().__init__(inner)
        self.failures = failures

    async def publish(self, message: OutgoingMessage) -> PublishAck:
        if self.failures > 0:
            self.failures -= 1
            raise BusUnavailableError("the control plane is away")
        return await super().publish(message)


# -- RabbitMQ's side, with its own clients -------------------------------------------------


def pika_publish(
    url: str, exchange: str, messages: list[tuple[str, bytes, pika.BasicProperties]]
) -> None:
    """Publishes with confirms: each message is on RabbitMQ when this returns."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for routing_key, body, properties in messages:
            channel.basic_publish(exchange, routing_key, body, properties, mandatory=True)
    finally:
        connection.close()


def pika_depth(url: str, queue: str) -> int:
    """Messages ready in ``queue`` (delivered but unacknowledged ones not counted)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        frame = connection.channel().queue_declare(queue, passive=True)
        count: int = frame.method.message_count
        return count
    finally:
        connection.close()


def pika_drain(url: str, queue: str) -> list[tuple[bytes, pika.BasicProperties]]:
    """Takes every ready message out of ``queue``."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    out = []
    try:
        channel = connection.channel()
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((body, properties))
    finally:
        connection.close()


async def aio_take(url: str, queue: str, count: int) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """``count`` messages from ``queue``, consumed (and acknowledged) with aio-pika."""
    out: list[aio_pika.abc.AbstractIncomingMessage] = []
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        q = await channel.get_queue(queue, ensure=False)
        async with asyncio.timeout(WAIT), q.iterator() as messages:
            async for message in messages:
                await message.ack()
                out.append(message)
                if len(out) == count:
                    break
    return out


async def amqp_setup(
    url: str, setup: Callable[[aio_pika.abc.AbstractChannel], Awaitable[None]]
) -> None:
    """Runs ``setup`` on a channel of a short aio-pika connection (declarations)."""
    async with await aio_pika.connect(url) as connection:
        await setup(await connection.channel())


def persistent(**fields: Any) -> pika.BasicProperties:
    return pika.BasicProperties(delivery_mode=2, **fields)


# -- RabbitMQ -> bus -----------------------------------------------------------------------


async def test_inbound_publishes_with_headers_and_ids_then_acknowledges(
    rabbitmq: RabbitMQServer, broker: EmbeddedBroker, tag: str
) -> None:
    await broker.add_stream(StreamConfig(f"IN{tag}", (f"in{tag}.>",)))
    exchange, queue, dead = f"orders-{tag}", f"orders-in-{tag}", f"dead-{tag}"
    config = bridge_config(
        rabbitmq.url,
        name=f"b{tag}",
        exchanges=[{"name": exchange, "type": "topic"}, {"name": f"dlx-{tag}", "type": "fanout"}],
        queues=[
            {
                "name": queue,
                "arguments": {"x-dead-letter-exchange": f"dlx-{tag}"},
                "bindings": [{"exchange": exchange, "routing_key": "eu.#"}],
            },
            {"name": dead, "bindings": [{"exchange": f"dlx-{tag}"}]},
        ],
        inbound=[{"queue": queue, "subject": f"in{tag}.{{routing_key}}", "prefetch": 10}],
    )
    sub = await broker.subscribe(SubscriptionSpec(f"in{tag}.>", durable="reader"))
    async with AmqpBridge(broker, config) as bridge:
        await connected(bridge)
        first = persistent(
            message_id="m-1",
            content_type="application/json",
            correlation_id="c-9",
            headers={"source": "web", "n": 5, "ok": True, "bad name": "dropped"},
        )
        await asyncio.to_thread(
            pika_publish,
            rabbitmq.url,
            exchange,
            [
                ("eu.created", b'{"id": 1}', first),
                ("eu.created", b'{"id": 1}', first),  # the same id again: stored once
                ("eu.bad key", b"x", persistent(message_id="m-2")),  # no subject: dead-lettered
                ("eu.updated", b"2", persistent()),
            ],
        )
        got = await take(sub, 2, ack=acker(broker))
        assert got[0].subject == f"in{tag}.eu.created"
        assert got[0].data == b'{"id": 1}'
        assert got[0].id == "m-1"
        assert dict(got[0].headers) == {
            "source": "web",
            "n": "5",
            "ok": "true",
            "content-type": "application/json",
            "correlation-id": "c-9",
            "amqp-exchange": exchange,
            "amqp-routing-key": "eu.created",
            "eco-bridge": f"b{tag}",
        }
        assert (got[1].subject, got[1].data, got[1].id) == (f"in{tag}.eu.updated", b"2", "")

        def settled() -> None:
            stats = bridge.stats
            assert (stats.in_received, stats.in_published, stats.in_rejected) == (4, 3, 1)
            assert stats.in_headers_dropped == 2

        await assert_eventually(settled, timeout=WAIT)
        assert await stream_messages(broker, f"IN{tag}") == 2
        assert await asyncio.to_thread(pika_depth, rabbitmq.url, queue) == 0
        dead_letters = await asyncio.to_thread(pika_drain, rabbitmq.url, dead)
        assert [(body, props.message_id) for body, props in dead_letters] == [(b"x", "m-2")]
    await sub.close()


async def test_inbound_redelivery_after_a_stop_is_deduplicated(
    rabbitmq: RabbitMQServer, broker: EmbeddedBroker, tag: str
) -> None:
    """Stopped with messages in flight (unacknowledged), the bridge leaves them on the
    queue; the next one publishes them, and the stream drops what was stored already."""
    await broker.add_stream(StreamConfig(f"IN{tag}", (f"in{tag}.>",)))
    queue = f"jobs-{tag}"
    config = bridge_config(
        rabbitmq.url,
        name=f"b{tag}",
        queues=[{"name": queue}],
        inbound=[{"queue": queue, "subject": f"in{tag}.jobs", "prefetch": 5}],
    )
    count = 20
    stalled = SlowBroker(broker, stall_after=3)
    first = AmqpBridge(stalled, config)  # type: ignore[arg-type]
    await first.start()
    try:
        await connected(first)
        await asyncio.to_thread(
            pika_publish,
            rabbitmq.url,
            "",
            [(queue, f"{i}".encode(), persistent(message_id=f"job-{i}")) for i in range(count)],
        )
        await eventually(lambda: stalled.published == 3)
        # 3 acknowledged, 5 (the prefetch) delivered and unacknowledged, the rest ready.
        await eventually(
            lambda: asyncio.to_thread(pika_depth, rabbitmq.url, queue),
            expected=count - 3 - 5,
        )
    finally:
        await first.stop()
    # the unacknowledged ones are back
    await eventually(lambda: asyncio.to_thread(pika_depth, rabbitmq.url, queue), expected=count - 3)
    async with AmqpBridge(broker, config) as second:
        await eventually(lambda: second.stats.in_published == count - 3)
        assert second.stats.in_redelivered >= 5
    assert await stream_messages(broker, f"IN{tag}") == count


async def test_a_bus_that_refuses_for_now_gets_the_message_again(
    rabbitmq: RabbitMQServer, broker: EmbeddedBroker, tag: str
) -> None:
    await broker.add_stream(StreamConfig(f"IN{tag}", (f"in{tag}.>",)))
    queue = f"q-{tag}"
    config = bridge_config(
        rabbitmq.url,
        name=f"b{tag}",
        queues=[{"name": queue}],
        inbound=[{"queue": queue, "subject": f"in{tag}.x", "retry_delay": "50ms"}],
    )
    flaky = FlakyBroker(broker, failures=2)
    async with AmqpBridge(flaky, config) as bridge:  # type: ignore[arg-type]
        await connected(bridge)
        await asyncio.to_thread(
            pika_publish, rabbitmq.url, "", [(queue, b"later", persistent(message_id="l-1"))]
        )
        await eventually(lambda: bridge.stats.in_published == 1)
        assert (bridge.stats.in_requeued, bridge.stats.in_redelivered) == (2, 2)
    assert await stream_messages(broker, f"IN{tag}") == 1


async def test_a_declaration_rabbitmq_refuses_is_reported_and_retried(
    rabbitmq: RabbitMQServer, broker: EmbeddedBroker, tag: str
) -> None:
    queue = f"q-{tag}"

    async def declare_transient(channel: aio_pika.abc.AbstractChannel) -> None:
        await channel.declare_queue(queue, durable=False)

    await amqp_setup(rabbitmq.url, declare_transient)
    config = bridge_config(
        rabbitmq.url, queues=[{"name": queue}], inbound=[{"queue": queue, "subject": "x"}]
    )
    async with AmqpBridge(broker, config, backoff=(0.05, 0.1)) as bridge:
        await eventually(lambda: "PRECONDITION_FAILED" in bridge.status()["last_error"])
        assert "durable" in bridge.status()["last_error"]
        await eventually(lambda: bridge.stats.connects == 0 and not bridge.connected)

        async def delete(channel: aio_pika.abc.AbstractChannel) -> None:
            await channel.queue_delete(queue)

        await amqp_setup(rabbitmq.url, delete)
        await connected(bridge)  # declared as configured on the next attempt


# -- bus -> RabbitMQ -----------------------------------------------------------------------


async def test_outbound_publishes_with_confirms_then_acknowledges_on_the_bus(
    rabbitmq: RabbitMQServer, broker: EmbeddedBroker, tag: str
) -> None:
    stream = f"OUT{tag}"
    await broker.add_stream(StreamConfig(stream, (f"out{tag}.>",)))
    exchange, queue = f"x-{tag}", f"q-{tag}"
    config = bridge_config(
        rabbitmq.url,
        name=f"b{tag}",
        exchanges=[{"name": exchange, "type": "topic"}],
        queues=[
            {"name": queue, "bindings": [{"exchange": exchange, "routing_key": f"out{tag}.#"}]}
        ],
        outbound=[{"subject": f"out{tag}.>", "durable": "to-amqp", "exchange": exchange}],
    )
    async with AmqpBridge(broker, config) as bridge:
        await connected(bridge)
        headers = {"source": "web", "content-type": "text/plain"}
        await broker.publish(OutgoingMessage(f"out{tag}.eu.created", b"one", headers, id="o-1"))
        await broker.publish(OutgoingMessage(f"out{tag}.eu.updated", b"two"))
        first, second = await aio_take(rabbitmq.url, queue, 2)
        assert (first.body, first.message_id, first.routing_key) == (
            b"one",
            "o-1",
            f"out{tag}.eu.created",
        )
        assert first.content_type == "text/plain"
        assert first.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert first.headers == {
            "source": "web",
            "content-type": "text/plain",
            "eco-subject": f"out{tag}.eu.created",
            "eco-stream": stream,
            "eco-sequence": 1,
            "eco-bridge": f"b{tag}",
        }
        assert (second.body, second.message_id) == (b"two", f"{stream}:2")
        assert second.headers["eco-subject"] == f"out{tag}.eu.updated"

        async def acknowledged() -> None:
            assert bridge.stats.out_published == 2
            assert await consumer_pending(broker, stream, "to-amqp") == 0

        await assert_eventually(acknowledged, timeout=WAIT)


async def test_unroutable_is_naked_and_comes_again_until_a_queue_is_bound(
    rabbitmq: RabbitMQServer, broker: EmbeddedBroker, tag: str
) -> None:
    stream, exchange, queue = f"OUT{tag}", f"x-{tag}", f"late-{tag}"
    await broker.add_stream(StreamConfig(stream, (f"out{tag}.>",)))
    config = bridge_config(
        rabbitmq.url,
        name=f"b{tag}",
        exchanges=[{"name": exchange, "type": "topic"}],
        outbound=[
            {
                "subject": f"out{tag}.>",
                "durable": "to-amqp",
                "exchange": exchange,
                "nak_delay": "100ms",
                "max_deliver": 1000,
            }
        ],
    )
    async with AmqpBridge(broker, config) as bridge:
        await connected(bridge)
        await broker.publish(OutgoingMessage(f"out{tag}.x", b"late", id="late-1"))
        await eventually(lambda: bridge.stats.out_unroutable >= 2)
        assert bridge.stats.out_published == 0

        async def bind(channel: aio_pika.abc.AbstractChannel) -> None:
            q = await channel.declare_queue(queue, durable=True)
            await q.bind(exchange, "#")

        await amqp_setup(rabbitmq.url, bind)
        (message,) = await aio_take(rabbitmq.url, queue, 1)
        assert (message.body, message.message_id) == (b"late", "late-1")

        async def acknowledged() -> None:
            assert bridge.stats.out_published == 1
            assert await consumer_pending(broker, stream, "to-amqp") == 0

        await assert_eventually(acknowledged, timeout=WAIT)


async def test_unroutable_is_dead_lettered_on_the_bus_after_max_deliver(
    rabbitmq: RabbitMQServer, broker: EmbeddedBroker, tag: str
) -> None:
    stream = f"OUT{tag}"
    await broker.add_stream(
        StreamConfig(stream, (f"out{tag}.>",), dead_letter_subject=f"dead{tag}.out")
    )
    await broker.add_stream(StreamConfig(f"DEAD{tag}", (f"dead{tag}.>",)))
    config = bridge_config(
        rabbitmq.url,
        name=f"b{tag}",
        exchanges=[{"name": f"x-{tag}", "type": "fanout"}],
        outbound=[
            {
                "subject": f"out{tag}.>",
                "durable": "to-amqp",
                "exchange": f"x-{tag}",
                "nak_delay": "50ms",
                "max_deliver": 2,
            }
        ],
    )
    async with AmqpBridge(broker, config) as bridge:
        await connected(bridge)
        await broker.publish(OutgoingMessage(f"out{tag}.x", b"nowhere"))

        async def dead_lettered() -> None:
            assert await stream_messages(broker, f"DEAD{tag}") == 1

        await assert_eventually(dead_lettered, timeout=WAIT)
        assert bridge.stats.out_unroutable == 2


async def test_a_message_does_not_loop_through_the_bridge(
    rabbitmq: RabbitMQServer, broker: EmbeddedBroker, tag: str
) -> None:
    """Outbound to an exchange that the bridge's own inbound queue is bound to: the
    message reaches RabbitMQ once and does not come back to the bus."""
    exchange, queue = f"x-{tag}", f"q-{tag}"
    config = bridge_config(
        rabbitmq.url,
        name=f"b{tag}",
        exchanges=[{"name": exchange, "type": "topic"}],
        queues=[{"name": queue, "bindings": [{"exchange": exchange, "routing_key": "#"}]}],
        inbound=[{"queue": queue, "subject": "{routing_key}"}],
        outbound=[{"subject": f"loop{tag}.>", "exchange": exchange}],
    )
    seen = await broker.subscribe(SubscriptionSpec(f"loop{tag}.>"))
    async with AmqpBridge(broker, config) as bridge:
        await connected(bridge)
        await broker.publish(OutgoingMessage(f"loop{tag}.a", b"once"))
        await eventually(lambda: bridge.stats.in_looped == 1)
        # A message from elsewhere on the same queue still reaches the bus.
        await asyncio.to_thread(
            pika_publish, rabbitmq.url, exchange, [(f"loop{tag}.b", b"other", persistent())]
        )
        got = await take(seen, 2)
        assert [(d.subject, d.data) for d in got] == [
            (f"loop{tag}.a", b"once"),
            (f"loop{tag}.b", b"other"),
        ]
        await eventually(lambda: bridge.stats.out_looped == 1)
        assert (bridge.stats.out_published, bridge.stats.in_published) == (1, 1)
    await seen.close()


# -- failures ------------------------------------------------------------------------------


async def test_rabbitmq_restart_while_messages_flow_both_ways_loses_none(
    rabbitmq: RabbitMQServer, broker: EmbeddedBroker, tag: str
) -> None:
    await broker.add_stream(StreamConfig(f"IN{tag}", (f"in{tag}.>",)))
    await broker.add_stream(StreamConfig(f"OUT{tag}", (f"out{tag}.>",)))
    q_in, q_out, x_out = f"in-{tag}", f"out-{tag}", f"x-out-{tag}"
    config = bridge_config(
        rabbitmq.url,
        name=f"b{tag}",
        exchanges=[{"name": x_out, "type": "fanout"}],
        queues=[{"name": q_in}, {"name": q_out, "bindings": [{"exchange": x_out}]}],
        inbound=[{"queue": q_in, "subject": f"in{tag}.x", "prefetch": 10}],
        # A delivery the restart catches half way is NAKed at once; should one ever
        # miss that, its ack_wait brings it again within the test's wait.
        outbound=[
            {"subject": f"out{tag}.>", "durable": "to-amqp", "exchange": x_out, "ack_wait": "5s"}
        ],
    )
    count = 40
    slow = SlowBroker(broker, delay=0.1)  # inbound takes ~4 s: the restart finds some in flight
    bridge = AmqpBridge(slow, config, backoff=(0.1, 0.5))  # type: ignore[arg-type]

    async def publish_out() -> None:
        for i in range(count):
            await broker.publish(OutgoingMessage(f"out{tag}.x", b"out", id=f"out-{i}"))
            await asyncio.sleep(0.05)

    async with bridge:
        await connected(bridge)
        await asyncio.to_thread(
            pika_publish,
            rabbitmq.url,
            "",
            [(q_in, b"in", persistent(message_id=f"in-{i}")) for i in range(count)],
        )
        publisher = asyncio.create_task(publish_out())
        try:
            await eventually(lambda: slow.published >= 5)
            await asyncio.to_thread(rabbitmq.restart)
            await publisher
        finally:
            publisher.cancel()
        await connected(bridge, sessions=2)

        async def all_stored() -> None:
            assert await stream_messages(broker, f"IN{tag}") == count

        await assert_eventually(all_stored, timeout=WAIT)
        assert bridge.stats.in_redelivered >= 1  # unacknowledged at the restart: delivered again

        received: set[str] = set()

        async def all_forwarded() -> None:
            drained = await asyncio.to_thread(pika_drain, rabbitmq.url, q_out)
            received.update(str(props.message_id) for _, props in drained)
            assert received == {f"out-{i}" for i in range(count)}

        await assert_eventually(all_forwarded, timeout=WAIT, interval=0.2)
        assert bridge.stats.disconnects >= 1


async def test_outbound_stopped_mid_flow_loses_nothing(
    rabbitmq: RabbitMQServer, broker: EmbeddedBroker, tag: str
) -> None:
    stream, exchange, queue = f"OUT{tag}", f"x-{tag}", f"q-{tag}"
    await broker.add_stream(StreamConfig(stream, (f"out{tag}.>",)))
    config = bridge_config(
        rabbitmq.url,
        name=f"b{tag}",
        exchanges=[{"name": exchange, "type": "fanout"}],
        queues=[{"name": queue, "bindings": [{"exchange": exchange}]}],
        outbound=[
            {
                "subject": f"out{tag}.>",
                "durable": "to-amqp",
                "exchange": exchange,
                "max_ack_pending": 10,
            }
        ],
    )
    count = 300
    for i in range(count):
        await broker.publish(OutgoingMessage(f"out{tag}.x", b"m", id=f"m-{i}"))
    # Slow acknowledgements keep deliveries in flight (confirmed or not) when it stops.
    slow = SlowBroker(broker, ack_delay=0.05)
    async with AmqpBridge(slow, config) as first:  # type: ignore[arg-type]
        await eventually(lambda: first.stats.out_published >= 20)
    assert first.stats.out_published < count, "stopped too late to be mid-flow"
    async with AmqpBridge(broker, config) as second:

        async def acknowledged() -> None:
            assert await consumer_pending(broker, stream, "to-amqp") == 0
            info = next(s for s in await broker.streams() if s.config.name == stream)
            assert info.consumers[0].next_sequence == count + 1

        await assert_eventually(acknowledged, timeout=WAIT)
        assert second.stats.out_published >= count - first.stats.out_published
    drained = await asyncio.to_thread(pika_drain, rabbitmq.url, queue)
    assert {props.message_id for _, props in drained} == {f"m-{i}" for i in range(count)}


async def test_an_unreachable_rabbitmq_is_retried_and_reported(broker: EmbeddedBroker) -> None:
    port = free_port()  # nothing listens there
    config = bridge_config(
        f"amqp://user:s3cret@127.0.0.1:{port}/",
        queues=[{"name": "q"}],
        inbound=[{"queue": "q", "subject": "x"}],
    )
    async with AmqpBridge(broker, config, backoff=(0.05, 0.1)) as bridge:
        await eventually(lambda: bridge.status()["last_error"])
        status = bridge.status()
        assert status["connected"] is False
        assert status["url"] == f"amqp://user:***@127.0.0.1:{port}/"
        assert "s3cret" not in repr(status) and "s3cret" not in repr(config)
    assert bridge.status()["state"] == "stopped"
    await bridge.stop()  # idempotent
