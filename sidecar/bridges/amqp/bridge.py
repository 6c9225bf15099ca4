"""The AMQP 0-9-1 bridge: subjects to and from RabbitMQ exchanges and queues.

One :class:`AmqpBridge` per ``bridges: [{protocol: amqp, …}]`` entry, in front
of the sidecar's relay (any `bus.Broker` works). Each connection
to RabbitMQ is a *session*: it declares the configured exchanges, queues and
bindings, then runs every inbound and outbound rule on a channel of its own.
When anything in a session fails (RabbitMQ or the bus goes away, a channel is
closed), the whole session ends and a new one starts after a jittered
backoff; nothing is acknowledged on one side before the other side has it:

- **Inbound** (RabbitMQ → bus): ``basic.consume`` with manual acknowledgements
  and ``prefetch``; each message is published on the bus, in queue order, and
  ``basic.ack``-ed once the broker's publish returned (stored, for a subject a
  stream captures). A bus that refuses for now → ``basic.nack`` with requeue
  after ``retry_delay``; a message that can never be published (its routing key
  makes no subject, payload too large) → ``basic.reject`` without requeue
  (dead-lettered by RabbitMQ when the queue has a dead-letter exchange).
  Unacknowledged messages go back to the queue when the session ends.
- **Outbound** (bus → RabbitMQ): a durable consumer (or a core subscription)
  whose deliveries are published with ``mandatory`` and publisher confirms, at
  most ``max_ack_pending`` at once; the bus delivery is acknowledged once
  RabbitMQ confirmed it, NAKed with ``nak_delay`` when RabbitMQ returned it
  (unroutable) or refused it. Deliveries in flight when a session ends are
  NAKed so that they come again at once.

The rules themselves run in :mod:`sidecar.bridges.amqp._links`. aio-pika is
imported by these two modules only: the sidecar imports them only when an
AMQP bridge is configured (tests/unit/sidecar/test_admin_imports.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from typing import Any

import aio_pika
import aio_pika.abc
from yarl import URL

from bus import Broker
from sidecar.bridges.amqp._config import AmqpBridgeConfig
from sidecar.bridges.amqp._links import TEARDOWN, AmqpBridgeStats, Links, SessionLost

__all__ = ["AmqpBridge", "AmqpBridgeStats"]

logger = logging.getLogger(__name__)

#: Backoff between sessions: the first retry after about BACKOFF_BASE, doubling to BACKOFF_MAX.
BACKOFF_BASE = 0.2
BACKOFF_MAX = 15.0
#: A session that lasted this long resets the backoff.
_STABLE = 30.0


class AmqpBridge:
    """Bridges ``broker`` and the AMQP broker of ``config``.

    ``start()`` begins connecting (in the background: a RabbitMQ that is not
    up yet is retried, not fatal) and returns; ``stop()`` (idempotent) ends
    the session, leaving unacknowledged messages to be delivered again, and
    waits for every task. Not restartable. The broker stays the caller's."""

    def __init__(
        self,
        broker: Broker,
        config: AmqpBridgeConfig,
        *,
        backoff: tuple[float, float] = (BACKOFF_BASE, BACKOFF_MAX),
    ) -> None:
        self._broker = broker
        self._config = config
        self._backoff = backoff
        self.stats = AmqpBridgeStats()
        self._links = Links(broker, config.name, self.stats, confirm_timeout=config.confirm_timeout)
        self._task: asyncio.Task[None] | None = None
        self._state = "new"
        self._connected = False
        self._last_error = ""

    def __repr__(self) -> str:
        return f"AmqpBridge({self._config.name!r}, {self._config.safe_url!r}, {self._state})"

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def connected(self) -> bool:
        """Whether a session is up: connected, declared, consuming and subscribed."""
        return self._connected

    def status(self) -> dict[str, Any]:
        """The bridge's state and counters, for the sidecar's status (the URL without
        its password)."""
        return {
            "protocol": "amqp",
            "name": self._config.name,
            "url": self._config.safe_url,
            "state": self._state,
            "connected": self._connected,
            "last_error": self._last_error,
            **dataclasses.asdict(self.stats),
        }

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._state != "new":
            raise RuntimeError(f"the AMQP bridge is {self._state}")
        self._state = "running"
        self._task = asyncio.create_task(self._run(), name=f"amqp-bridge-{self.name}")

    async def stop(self) -> None:
        """Ends the session and waits for it; idempotent."""
        if self._state in ("stopping", "stopped"):
            return
        self._state = "stopping"
        task, self._task = self._task, None
        try:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        finally:
            self._state = "stopped"
            self._connected = False

    async def __aenter__(self) -> AmqpBridge:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- sessions ----------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0  # in a row: sessions that failed to start or did not last
        base, ceiling = self._backoff
        while True:
            began = loop.time()
            try:
                await self._session()
            except Exception as exc:  # every failure of a session means: start another one
                self._last_error = self._describe(exc)
                was_up = self._connected
                if was_up:
                    self.stats.disconnects += 1
                failures = 1 if was_up and loop.time() - began > _STABLE else failures + 1
                # One line when a session ends or connecting starts to fail, then one in 20.
                level = logging.WARNING if was_up or failures % 20 == 1 else logging.DEBUG
                logger.log(
                    level,
                    "AMQP bridge %s (%s): %s; reconnecting (attempt %d)",
                    self.name,
                    self._config.safe_url,
                    self._last_error,
                    failures,
                )
            finally:
                self._connected = False
            delay = min(ceiling, base * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)
            await asyncio.sleep(delay)

    def _describe(self, exc: BaseException) -> str:
        while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        password = URL(self._config.url).password
        return text.replace(password, "***") if password else text

    def _url(self) -> URL:
        url = URL(self._config.url)
        if "heartbeat" not in url.query:
            url = url.update_query(heartbeat=round(self._config.heartbeat))
        return url

    async def _session(self) -> None:
        config = self._config
        connection = await aio_pika.connect(
            self._url(),
            timeout=config.connect_timeout,
            client_properties={"connection_name": f"eco sidecar bridge {config.name}"},
        )
        lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_close(_sender: object, exc: BaseException | None = None) -> None:
            if not lost.done():
                lost.set_exception(SessionLost(f"connection closed: {exc or 'by the server'}"))

        connection.close_callbacks.add(on_close)
        try:
            channel = await connection.channel(publisher_confirms=False)
            await self._declare(channel)
            async with asyncio.TaskGroup() as group:
                ready = [
                    *(asyncio.Event() for _ in config.inbound),
                    *(asyncio.Event() for _ in config.outbound),
                ]
                group.create_task(_wait_lost(lost))
                for i, inbound in enumerate(config.inbound):
                    group.create_task(self._links.inbound(connection, inbound, ready[i]))
                for j, outbound in enumerate(config.outbound):
                    event = ready[len(config.inbound) + j]
                    group.create_task(self._links.outbound(connection, outbound, event))
                for event in ready:
                    await event.wait()
                self._connected = True
                self.stats.connects += 1
                self._last_error = ""
                logger.info(
                    "AMQP bridge %s connected to %s: %d inbound, %d outbound",
                    config.name,
                    config.safe_url,
                    len(config.inbound),
                    len(config.outbound),
                )
        finally:
            if not lost.done():
                lost.cancel()
            elif not lost.cancelled():
                lost.exception()  # retrieved: its task may have been cancelled first
            with contextlib.suppress(Exception):
                async with asyncio.timeout(TEARDOWN):
                    await connection.close()

    async def _declare(self, channel: aio_pika.abc.AbstractChannel) -> None:
        config = self._config
        for ex in config.exchanges:
            await channel.declare_exchange(
                ex.name,
                ex.type,
                durable=ex.durable,
                auto_delete=ex.auto_delete,
                passive=ex.passive,
                arguments=dict(ex.arguments) or None,
            )
        for q in config.queues:
            queue = await channel.declare_queue(
                q.name,
                durable=q.durable,
                auto_delete=q.auto_delete,
                passive=q.passive,
                arguments=dict(q.arguments) or None,
            )
            for binding in q.bindings:
                await queue.bind(
                    binding.exchange,
                    binding.routing_key,
                    arguments=dict(binding.arguments) or None,
                )
        await channel.close()


async def _wait_lost(lost: asyncio.Future[None]) -> None:
    await lost
