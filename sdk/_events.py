"""Reacting to registry changes over the bus: ``ServiceEvents``.

The control plane publishes every instance change on
``eco.events.<namespace>.<service>`` (docs/bus.md, "Registry events").
``ServiceEvents`` subscribes once per handler and calls the handlers with a
typed :class:`ServiceEvent`::

    events = ServiceEvents(client.bus, concurrency=8, durable="billing")

    @events.on("orders", types={"PUT", "DELETE"})
    async def orders_changed(event: ServiceEvent) -> None:
        ...

    async with events:          # or: await events.run() until cancelled
        ...

- **Bounded concurrency**: at most ``concurrency`` handler calls run at once,
  across all handlers; events of one instance reach one handler in order.
- **Error isolation**: a handler that raises is logged and counted
  (:attr:`HandlerStats.errors`); other handlers and later events go on. For a
  durable subscription the event is NAKed and comes again after
  ``retry_backoff`` (and is dead-lettered after ``max_deliver`` deliveries).
- **Durable** (``durable="name"``): each handler reads a durable consumer
  named ``<name>-<handler name>``, so no event is missed while the process is
  down, provided a stream captures ``eco.events.>`` (e.g. ``eco bus stream add registry-events
  --subjects 'eco.events.>'``). Without it, handlers see events published
  while they run (core, at most once).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import re
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from sdk._errors import ClientClosedError, EcoError
from sdk._types import CheckStatus, HealthStatus, Instance, Liveness
from sdk.bus import BusClient, BusMessage, BusSubscription

__all__ = [
    "HandlerStats",
    "ServiceEvent",
    "ServiceEventType",
    "ServiceEvents",
]

logger = logging.getLogger(__name__)

EVENTS_PREFIX = "eco.events"

Handler = Callable[["ServiceEvent"], Awaitable[None]]

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+\Z")


class ServiceEventType(enum.StrEnum):
    """What happened to an instance."""

    #: registered, or changed other than in health
    PUT = "PUT"
    #: deregistered (or its lease ran out)
    DELETE = "DELETE"
    #: only its health (``health``, ``checks``) changed
    HEALTH = "HEALTH"


def _instance_from_dict(d: Mapping[str, Any]) -> Instance:
    return Instance(
        id=str(d["id"]),
        service=str(d["service"]),
        address=str(d.get("address", "")),
        port=int(d.get("port", 0)),
        namespace=str(d.get("namespace", "")),
        node=str(d.get("node", "")),
        platform=str(d.get("platform", "")),
        region=str(d.get("region", "")),
        zone=str(d.get("zone", "")),
        tags=tuple(str(t) for t in d.get("tags", ())),
        metadata={str(k): str(v) for k, v in dict(d.get("metadata", {})).items()},
        weight=int(d.get("weight", 0)),
        health=HealthStatus.parse(str(d.get("health", "UNKNOWN"))),
        checks=tuple(
            CheckStatus(
                name=str(c["name"]),
                status=HealthStatus.parse(str(c.get("status", "UNKNOWN"))),
                output=str(c.get("output", "")),
                changed_at_ms=int(c.get("changed_at_ms", 0)),
            )
            for c in d.get("checks", ())
        ),
        liveness=Liveness(str(d.get("liveness", "PERSISTENT"))),
        lease_id=int(d.get("lease_id", 0)),
        create_revision=int(d.get("create_revision", 0)),
        mod_revision=int(d.get("mod_revision", 0)),
    )


@dataclass(frozen=True, slots=True)
class ServiceEvent:
    """One registry change, as a handler gets it."""

    type: ServiceEventType
    #: the store revision of the change (increasing per instance)
    revision: int
    #: the instance after the change (for DELETE: its last state)
    instance: Instance
    #: HEALTH (and PUT of a known instance): its health before the change
    previous_health: HealthStatus | None = None
    #: the bus message it came in (``redelivered``, ``stream``, ``sequence``)
    message: BusMessage | None = field(default=None, repr=False, compare=False)

    @property
    def namespace(self) -> str:
        return self.instance.namespace

    @property
    def service(self) -> str:
        return self.instance.service

    @classmethod
    def from_message(cls, message: BusMessage) -> ServiceEvent:
        """Parses the JSON payload; ValueError (or KeyError) when it is not an event."""
        body = json.loads(message.data)
        if not isinstance(body, dict):
            raise ValueError("an event payload is a JSON object")
        previous = body.get("previous_health")
        return cls(
            type=ServiceEventType(body["type"]),
            revision=int(body["revision"]),
            instance=_instance_from_dict(body["instance"]),
            previous_health=HealthStatus.parse(previous) if previous else None,
            message=message,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type.value,
            "revision": self.revision,
            "instance": self.instance.to_dict(),
            "previous_health": self.previous_health.value if self.previous_health else None,
        }


@dataclass(slots=True)
class HandlerStats:
    """Counts of one handler, for metrics and tests."""

    handled: int = 0
    errors: int = 0
    #: events of other types (not passed to the handler)
    filtered: int = 0
    #: payloads that were not events (terminated when durable)
    malformed: int = 0


@dataclass(eq=False, slots=True)
class _Registration:
    name: str
    subject: str
    types: frozenset[ServiceEventType]
    handler: Handler
    stats: HandlerStats = field(default_factory=HandlerStats)
    # instance key -> the task handling its latest event (to keep per-instance order)
    tails: dict[str, asyncio.Task[None]] = field(default_factory=dict)


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


def _token(value: str, what: str) -> str:
    if value != "*" and not _TOKEN.fullmatch(value):
        raise ValueError(f"{what} {value!r} is not a subject token (or '*')")
    return value


class ServiceEvents:
    """Dispatches registry events to handlers (see the module docstring).

    Register handlers with :meth:`on` before :meth:`start`. Lifecycle:
    ``start()`` subscribes (raising what the server rejects) and returns;
    ``close(grace)`` stops taking events, lets running handlers finish for
    ``grace`` seconds, then cancels them; it is idempotent, and a closed
    instance cannot be started again. ``run()`` is start, wait until
    cancelled, close; ``async with`` is start and close.

    ``retry_backoff`` (seconds, one per redelivery, the last repeating) is how
    long a durable event whose handler failed waits before it comes again;
    ``max_deliver`` and ``ack_wait`` are the durable consumers' settings.
    """

    def __init__(
        self,
        bus: BusClient,
        *,
        concurrency: int = 8,
        durable: str = "",
        retry_backoff: Collection[float] = (1.0, 5.0, 30.0),
        max_deliver: int = 5,
        ack_wait: float = 30.0,
        buffer: int = 256,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if durable and not _TOKEN.fullmatch(durable):
            raise ValueError(f"durable {durable!r} may only hold letters, digits, '-' and '_'")
        if any(b < 0 for b in retry_backoff):
            raise ValueError("retry_backoff must not be negative")
        self._bus = bus
        self.concurrency = concurrency
        self.durable = durable
        self._backoff = tuple(retry_backoff) or (1.0,)
        self._max_deliver = max_deliver
        self._ack_wait = ack_wait
        self._buffer = buffer
        self._registrations: list[_Registration] = []
        self._slots = asyncio.Semaphore(concurrency)
        self._state = _State.NEW
        self._subs: list[BusSubscription] = []
        self._readers: set[asyncio.Task[None]] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._stopped = asyncio.Event()
        self._failure: BaseException | None = None
        self._active = 0
        #: the most handler calls that ran at once
        self.peak_concurrency = 0

    # -- registration -------------------------------------------------------------------

    def on(
        self,
        service: str = "*",
        *,
        namespace: str = "default",
        types: Collection[ServiceEventType | str] | None = None,
        name: str = "",
    ) -> Callable[[Handler], Handler]:
        """A decorator registering an ``async def handler(event)`` for the
        events of ``service`` in ``namespace`` (``"*"``: any), of the given
        ``types`` (default: all). ``name`` (default: the function's name)
        names its durable consumer and its :meth:`stats`."""

        subject = f"{EVENTS_PREFIX}.{_token(namespace, 'namespace')}.{_token(service, 'service')}"
        wanted = frozenset(ServiceEventType(str(t).upper()) for t in (types or ServiceEventType))

        def register(handler: Handler) -> Handler:
            if not asyncio.iscoroutinefunction(handler):
                raise TypeError("an event handler must be an async function")
            if self._state is not _State.NEW:
                raise RuntimeError("register handlers before start()")
            label = name or getattr(handler, "__name__", "handler")
            label = _NAME_UNSAFE.sub("_", label)
            if any(r.name == label for r in self._registrations):
                raise ValueError(f"a handler named {label!r} is already registered")
            self._registrations.append(_Registration(label, subject, wanted, handler))
            return handler

        return register

    def stats(self, name: str) -> HandlerStats:
        """The counts of the handler registered as ``name``."""
        for reg in self._registrations:
            if reg.name == name:
                return reg.stats
        raise KeyError(name)

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Subscribes every handler; events published after this reach them."""
        if self._state is _State.CLOSED:
            raise RuntimeError("ServiceEvents is closed; create another")
        if self._state is _State.RUNNING:
            return
        if not self._registrations:
            raise ValueError("no handlers registered")
        self._state = _State.RUNNING
        try:
            for reg in self._registrations:
                sub = self._subscribe(reg)
                self._subs.append(sub)
                await sub.start()
        except BaseException:
            await self.close()
            raise
        for reg, sub in zip(self._registrations, self._subs, strict=True):
            task = asyncio.create_task(self._read(reg, sub), name=f"service-events:{reg.name}")
            self._readers.add(task)
            task.add_done_callback(self._reader_done)

    async def run(self) -> None:
        """Starts, then dispatches until cancelled, closed, or the bus client
        is closed; closes on the way out. Raises what stopped a subscription
        unexpectedly (errors of the bus itself are retried, not raised)."""
        await self.start()
        try:
            await self._stopped.wait()
        finally:
            await self.close()
        if self._failure is not None:
            raise self._failure

    def _reader_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            self._failure = task.exception()
            logger.error("registry events stopped: %r", self._failure)
        if all(t.done() for t in self._readers):
            self._stopped.set()

    async def close(self, grace: float = 5.0) -> None:
        """Stops taking events, waits up to ``grace`` seconds for running
        handlers, cancels the rest. Idempotent."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        self._stopped.set()
        for task in self._readers:
            task.cancel()
        if self._readers:
            await asyncio.wait(self._readers)
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=grace)
        for task in self._handlers:
            task.cancel()
        if self._handlers:
            await asyncio.wait(set(self._handlers))
        for sub in self._subs:
            await sub.close()

    # -- dispatch -----------------------------------------------------------------------

    def _subscribe(self, reg: _Registration) -> BusSubscription:
        if not self.durable:
            return self._bus.subscribe(reg.subject, buffer=self._buffer)
        return self._bus.subscribe(
            reg.subject,
            durable=f"{self.durable}-{reg.name}"[:64],
            max_deliver=self._max_deliver,
            ack_wait=self._ack_wait,
            max_ack_pending=max(self.concurrency * 4, 16),
            buffer=self._buffer,
        )

    async def _read(self, reg: _Registration, sub: BusSubscription) -> None:
        failures = 0
        while True:
            try:
                async for message in sub:
                    failures = 0
                    # A slot is taken before the next message is read: at most
                    # ``concurrency`` events are in hand at once.
                    await self._slots.acquire()
                    self._spawn(reg, message)
                return
            except EcoError as exc:
                # A core subscription ends when its control plane goes away
                # (durable ones reconnect by themselves): subscribe again.
                failures += 1
                delay = min(5.0, 0.1 * 2**failures)
                logger.warning(
                    "events subscription %s ended (%s); subscribing again in %.1fs",
                    reg.subject,
                    exc,
                    delay,
                )
                await sub.close()
                await asyncio.sleep(delay)
                sub = self._subscribe(reg)
                self._subs.append(sub)
                try:
                    await sub.start()
                except EcoError:
                    continue

    def _spawn(self, reg: _Registration, message: BusMessage) -> None:
        key = message.subject
        try:
            event = ServiceEvent.from_message(message)
            key = f"{event.namespace}/{event.service}/{event.instance.id}"
        except (ValueError, KeyError, TypeError) as exc:
            event = None
            logger.error("not a registry event on %s: %s", message.subject, exc)
        previous = reg.tails.get(key)
        task = asyncio.create_task(self._handle(reg, message, event, previous))
        reg.tails[key] = task
        self._handlers.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._handlers.discard(t)
            if reg.tails.get(key) is t:
                del reg.tails[key]

        task.add_done_callback(done)

    async def _handle(
        self,
        reg: _Registration,
        message: BusMessage,
        event: ServiceEvent | None,
        previous: asyncio.Task[None] | None,
    ) -> None:
        try:
            if previous is not None:
                # Per instance, in order; the earlier one's outcome is its own.
                await asyncio.wait({previous})
            if event is None:
                reg.stats.malformed += 1
                await self._settle(message, "term")
                return
            if event.type not in reg.types:
                reg.stats.filtered += 1
                await self._settle(message, "ack")
                return
            self._active += 1
            self.peak_concurrency = max(self.peak_concurrency, self._active)
            try:
                await reg.handler(event)
            except Exception:
                reg.stats.errors += 1
                logger.exception(
                    "event handler %s failed on %s %s/%s/%s at revision %d",
                    reg.name,
                    event.type.value,
                    event.namespace,
                    event.service,
                    event.instance.id,
                    event.revision,
                )
                await self._settle(message, "nak")
                return
            finally:
                self._active -= 1
            reg.stats.handled += 1
            await self._settle(message, "ack")
        finally:
            self._slots.release()

    async def _settle(self, message: BusMessage, kind: str) -> None:
        if not message.durable:
            return
        try:
            if kind == "ack":
                await message.ack()
            elif kind == "term":
                await message.term()
            else:
                attempt = max(message.delivery_count, 1)
                await message.nak(self._backoff[min(attempt, len(self._backoff)) - 1])
        except (EcoError, ClientClosedError) as exc:
            # Not settled: the consumer's ack_wait brings it again.
            logger.warning("cannot %s event %s: %s", kind, message.id, exc)
