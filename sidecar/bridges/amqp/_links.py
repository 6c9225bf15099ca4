"""The AMQP bridge's links: the inbound and outbound rules of one session.

:class:`Links` runs each rule on a channel of its own for as long as the
session lasts (see :mod:`sidecar.bridges.amqp.bridge` for the session and its
guarantees). A rule returns only by raising: :class:`SessionLost` when its
channel, the connection or its bus subscription ended, which ends the
session; what it had not settled on either side is left to be delivered
again (RabbitMQ requeues unacknowledged messages; bus deliveries in flight
are NAKed here on the way out).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Mapping

import aio_pika
import aio_pika.abc
import aio_pika.exceptions

from bus import (
    AckNotFoundError,
    Broker,
    BusError,
    Delivery,
    InvalidSubjectError,
    OutgoingMessage,
    PayloadTooLargeError,
    SubscriptionSpec,
)
from bus.convert import LIMITS
from sdk import AckKind, DeliverPolicy
from sidecar.bridges.amqp._config import AmqpInboundConfig, AmqpOutboundConfig
from sidecar.bridges.amqp._convert import (
    MAX_SHORTSTR,
    amqp_headers,
    bus_headers,
    render,
    subject_problem,
    visited,
)

__all__ = ["AmqpBridgeStats", "Links", "SessionLost"]

logger = logging.getLogger(__name__)

#: How long a session's end may spend NAKing the deliveries it had in flight.
TEARDOWN = 5.0


class SessionLost(ConnectionError):
    """The AMQP connection or one of the session's channels closed."""


@dataclasses.dataclass
class AmqpBridgeStats:
    """Counters since the bridge started (in :meth:`AmqpBridge.status`)."""

    #: sessions established (connected and declared)
    connects: int = 0
    #: sessions that ended with an error (each followed by a reconnect)
    disconnects: int = 0
    in_received: int = 0
    #: of which RabbitMQ had delivered before (``redelivered`` flag)
    in_redelivered: int = 0
    #: published on the bus and acknowledged to RabbitMQ
    in_published: int = 0
    #: the bus refused for now: NACKed with requeue
    in_requeued: int = 0
    #: could never be published (no valid subject, too large): rejected without requeue
    in_rejected: int = 0
    #: this bridge had forwarded it to RabbitMQ: acknowledged, not published back
    in_looped: int = 0
    #: AMQP headers left out (names the bus does not accept, over its limits)
    in_headers_dropped: int = 0
    out_received: int = 0
    #: confirmed by RabbitMQ (and acknowledged on the bus)
    out_published: int = 0
    #: returned by RabbitMQ (no queue bound for the routing key): NAKed on the bus
    out_unroutable: int = 0
    #: refused by RabbitMQ (``basic.nack``), not confirmed in time, or its routing key
    #: too long: NAKed
    out_refused: int = 0
    #: this bridge had published it to the bus: acknowledged, not forwarded back
    out_looped: int = 0


class Links:
    """The inbound and outbound rules of a bridge named ``name`` over ``broker``."""

    def __init__(
        self, broker: Broker, name: str, stats: AmqpBridgeStats, *, confirm_timeout: float
    ) -> None:
        self._broker = broker
        self.name = name
        self.stats = stats
        self._confirm_timeout = confirm_timeout

    # -- inbound: RabbitMQ -> bus ------------------------------------------------------------

    async def inbound(
        self,
        connection: aio_pika.abc.AbstractConnection,
        rule: AmqpInboundConfig,
        ready: asyncio.Event,
    ) -> None:
        channel = await connection.channel(publisher_confirms=False)
        # Unbounded, but RabbitMQ sends at most ``prefetch`` unacknowledged messages.
        inbox: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage | None] = asyncio.Queue()
        channel.close_callbacks.add(lambda *_: inbox.put_nowait(None))
        await channel.set_qos(prefetch_count=rule.prefetch)
        queue = await channel.get_queue(rule.queue, ensure=False)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            inbox.put_nowait(message)

        await queue.consume(on_message, no_ack=False)
        ready.set()
        while True:
            message = await inbox.get()
            if message is None:
                raise SessionLost(f"the channel consuming {rule.queue!r} closed")
            await self._forward_in(rule, message)

    async def _forward_in(
        self, rule: AmqpInboundConfig, message: aio_pika.abc.AbstractIncomingMessage
    ) -> None:
        stats = self.stats
        stats.in_received += 1
        if message.redelivered:
            stats.in_redelivered += 1
        if visited(message.headers, self.name):
            stats.in_looped += 1
            await message.ack()
            return
        exchange, routing_key = message.exchange or "", message.routing_key or ""
        subject = render(rule.subject, routing_key=routing_key, exchange=exchange, queue=rule.queue)
        problem = subject_problem(subject)
        if problem:
            await self._reject(message, rule, f"{subject!r} is no bus subject: it {problem}")
            return
        headers, dropped = bus_headers(
            message.headers,
            exchange=exchange,
            routing_key=routing_key,
            content_type=message.content_type,
            correlation_id=message.correlation_id,
            bridge=self.name,
        )
        stats.in_headers_dropped += dropped
        msg_id = message.message_id or ""
        if len(msg_id) > LIMITS.id_length or not msg_id.isprintable():
            msg_id = ""
        out = OutgoingMessage(subject, bytes(message.body), headers, id=msg_id)
        try:
            await self._broker.publish(out)
        except (InvalidSubjectError, PayloadTooLargeError, ValueError) as exc:
            await self._reject(message, rule, str(exc))
            return
        except (BusError, TimeoutError) as exc:
            # Unavailable, closed: the same message may go through later.
            stats.in_requeued += 1
            logger.warning(
                "AMQP bridge %s: the bus refused a message from %s for now (%s); requeued in %.1fs",
                self.name,
                rule.queue,
                exc,
                rule.retry_delay,
            )
            await asyncio.sleep(rule.retry_delay)
            await message.nack(requeue=True)
            return
        await message.ack()
        stats.in_published += 1

    async def _reject(
        self, message: aio_pika.abc.AbstractIncomingMessage, rule: AmqpInboundConfig, why: str
    ) -> None:
        self.stats.in_rejected += 1
        logger.warning(
            "AMQP bridge %s: rejected a message from queue %s (routing key %r, id %r): %s",
            self.name,
            rule.queue,
            message.routing_key,
            message.message_id,
            why,
        )
        await message.reject(requeue=False)

    # -- outbound: bus -> RabbitMQ -----------------------------------------------------------

    async def outbound(
        self,
        connection: aio_pika.abc.AbstractConnection,
        rule: AmqpOutboundConfig,
        ready: asyncio.Event,
    ) -> None:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        if rule.exchange:
            exchange = await channel.get_exchange(rule.exchange, ensure=False)
        else:
            exchange = channel.default_exchange
        spec = SubscriptionSpec(
            subject=rule.subject,
            queue_group=rule.queue_group,
            durable=rule.durable,
            stream=rule.stream,
            deliver=DeliverPolicy(rule.deliver),
            ack_wait=rule.ack_wait,
            max_deliver=rule.max_deliver,
            max_ack_pending=rule.max_ack_pending,
        )
        subscription = await self._broker.subscribe(spec)
        # Deliveries taken from the bus and not yet settled there, from the moment
        # they are taken (a forwarding task cancelled before it even started
        # counts): NAKed on the way out, so they come again at once.
        outstanding: dict[int, Delivery] = {}
        try:
            window = asyncio.Semaphore(rule.max_ack_pending)
            in_flight: dict[str, asyncio.Future[None]] = {}
            ready.set()
            async with asyncio.TaskGroup() as group:
                async for delivery in subscription:
                    outstanding[id(delivery)] = delivery
                    await window.acquire()
                    group.create_task(
                        self._forward_out(rule, exchange, delivery, window, in_flight, outstanding)
                    )
                raise SessionLost(f"the bus subscription to {rule.subject!r} ended")
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(TEARDOWN):
                    await subscription.close()
                    for delivery in list(outstanding.values()):
                        await self._settle(delivery, AckKind.NAK)

    def _message_id(self, delivery: Delivery) -> str:
        if delivery.id and len(delivery.id.encode()) <= MAX_SHORTSTR:
            return delivery.id
        if delivery.stream:
            return f"{delivery.stream}:{delivery.sequence}"
        return ""

    async def _forward_out(
        self,
        rule: AmqpOutboundConfig,
        exchange: aio_pika.abc.AbstractExchange,
        delivery: Delivery,
        window: asyncio.Semaphore,
        in_flight: dict[str, asyncio.Future[None]],
        outstanding: dict[int, Delivery],
    ) -> None:
        stats = self.stats
        stats.out_received += 1
        done: asyncio.Future[None] | None = None
        msg_id = self._message_id(delivery)
        try:
            if visited(delivery.headers, self.name):
                stats.out_looped += 1
                await self._settle(delivery, AckKind.ACK)
                outstanding.pop(id(delivery), None)
                return
            # RabbitMQ names a returned message by its id only: one at a time per id.
            while msg_id and (other := in_flight.get(msg_id)) is not None:
                await asyncio.shield(other)
            if msg_id:
                done = in_flight[msg_id] = asyncio.get_running_loop().create_future()
            # Settles it on the bus. When the channel or the connection goes, this
            # raises, the session ends, and the delivery, still outstanding, is
            # NAKed on the way out.
            await self._publish(rule, exchange, delivery, msg_id)
            outstanding.pop(id(delivery), None)
        finally:
            window.release()
            if done is not None:
                in_flight.pop(msg_id, None)
                done.set_result(None)

    async def _publish(
        self,
        rule: AmqpOutboundConfig,
        exchange: aio_pika.abc.AbstractExchange,
        delivery: Delivery,
        msg_id: str,
    ) -> None:
        stats = self.stats
        routing_key = render(rule.routing_key, subject=delivery.subject)
        if len(routing_key.encode()) > MAX_SHORTSTR:
            # Never publishable: NAKed until the bus dead-letters it (max_deliver).
            stats.out_refused += 1
            logger.warning(
                "AMQP bridge %s: the routing key for %s is longer than %d bytes; not published",
                self.name,
                delivery.subject,
                MAX_SHORTSTR,
            )
            await self._settle(delivery, AckKind.NAK, rule.nak_delay)
            return
        headers = delivery.headers
        message = aio_pika.Message(
            bytes(delivery.data),
            headers=amqp_headers(
                headers,
                subject=delivery.subject,
                stream=delivery.stream,
                sequence=delivery.sequence,
                bridge=self.name,
            ),
            message_id=msg_id or None,
            content_type=_get(headers, "content-type"),
            correlation_id=_get(headers, "correlation-id"),
            delivery_mode=(
                aio_pika.DeliveryMode.PERSISTENT
                if rule.persistent
                else aio_pika.DeliveryMode.NOT_PERSISTENT
            ),
        )
        try:
            await exchange.publish(
                message,
                routing_key,
                mandatory=True,
                timeout=self._confirm_timeout,
            )
        except aio_pika.exceptions.PublishError as exc:
            stats.out_unroutable += 1
            logger.info(
                "AMQP bridge %s: %s on %s: returned by RabbitMQ (%s); again in %.1fs",
                self.name,
                exchange.name or "the default exchange",
                routing_key,
                exc,
                rule.nak_delay,
            )
            await self._settle(delivery, AckKind.NAK, rule.nak_delay)
            return
        except (aio_pika.exceptions.DeliveryError, TimeoutError) as exc:
            stats.out_refused += 1
            logger.warning(
                "AMQP bridge %s: RabbitMQ did not confirm a message for %s (%s); again in %.1fs",
                self.name,
                routing_key,
                type(exc).__name__,
                rule.nak_delay,
            )
            await self._settle(delivery, AckKind.NAK, rule.nak_delay)
            return
        stats.out_published += 1
        await self._settle(delivery, AckKind.ACK)

    async def _settle(self, delivery: Delivery, kind: AckKind, delay: float = 0.0) -> None:
        """Acknowledges a durable delivery on the bus (core deliveries have nothing to settle)."""
        if not delivery.ack_id:
            return
        try:
            await self._broker.ack(delivery.ack_id, kind, delay)
        except AckNotFoundError:
            # Its ack_wait passed: it is coming again (and may reach RabbitMQ twice).
            logger.debug("AMQP bridge %s: %s of %s came late", self.name, kind, delivery.ack_id)
        except (BusError, TimeoutError) as exc:
            logger.warning(
                "AMQP bridge %s: cannot %s a delivery on the bus (%s); it comes again after "
                "its ack_wait",
                self.name,
                kind.value,
                exc,
            )


def _get(headers: Mapping[str, str], name: str) -> str | None:
    return headers.get(name) or None
