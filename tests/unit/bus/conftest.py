"""Fixtures of the bus conformance suite.

Every test that takes ``broker`` (or ``brokers``) runs against each backend in
`BACKENDS` and is written only against the `Broker` protocol. Here those are the
embedded broker's, in memory and on SQLite; tests/integration/bus runs the same
test modules against the NATS backend (a real nats-server), with a ``backend``
fixture of its own. A new backend is one more entry in one of them::

    Backend("nats", _nats, persistent=True, queue_limit=...)

where ``create(directory)`` builds an *unstarted* broker. Brokers created on the
same directory must share durable state when ``persistent`` is true: closing one
and opening the next is how the suite restarts a broker (`Brokers.reopen`); tests that
need it are skipped for a backend that is not persistent. ``queue_limit`` is the
per-subscription core buffer the broker was built with (the drop test overflows
it). A backend that starts processes (NATS, in tests/integration/bus) keeps them
in a module-level list and stops them in an autouse fixture.

Timing: tests use short ack waits and windows (a few tenths of a second) and
wait for what must happen with generous timeouts (`next_delivery`), so they are
quick on an idle machine and still pass on a loaded one.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from bus import (
    Broker,
    Delivery,
    OutgoingMessage,
    Subscription,
    SubscriptionSpec,
)
from bus.embedded import EmbeddedBroker
from sdk import StreamConfig, StreamInfo

#: The core buffer of the suite's embedded brokers (small, so overflowing it is quick).
QUEUE_LIMIT = 1000


@dataclass(frozen=True)
class Backend:
    name: str
    #: (directory for its files) -> an unstarted broker
    create: Callable[[Path], Broker]
    #: brokers created on the same directory share streams, messages and consumers
    persistent: bool = False
    #: core messages a subscription buffers before it drops
    queue_limit: int = QUEUE_LIMIT


def _embedded_memory(_: Path) -> Broker:
    return EmbeddedBroker(None, queue_limit=QUEUE_LIMIT)


def _embedded_sqlite(directory: Path) -> Broker:
    return EmbeddedBroker(directory, queue_limit=QUEUE_LIMIT)


BACKENDS = [
    Backend("embedded-memory", _embedded_memory),
    Backend("embedded-sqlite", _embedded_sqlite, persistent=True),
]


class Brokers:
    """Opens started brokers of one backend, each on a named data directory (the same
    name: the same data), and closes them all at the end of the test."""

    def __init__(self, backend: Backend, root: Path) -> None:
        self.backend = backend
        self._root = root
        self._opened: list[tuple[Broker, str]] = []

    async def open(self, directory: str = "bus") -> Broker:
        broker = self.backend.create(self._root / directory)
        await broker.start()
        self._opened.append((broker, directory))
        return broker

    async def reopen(self, old: Broker) -> Broker:
        """Closes ``old`` and opens another broker on its data: a restart. Skips the
        test for a backend that keeps nothing across one."""
        if not self.backend.persistent:
            pytest.skip(f"{self.backend.name}: keeps nothing across a restart")
        directory = next(d for b, d in self._opened if b is old)
        await old.close()
        return await self.open(directory)

    async def close_all(self) -> None:
        for broker, _ in reversed(self._opened):
            await broker.close()


@pytest.fixture(params=BACKENDS, ids=[b.name for b in BACKENDS])
def backend(request: pytest.FixtureRequest) -> Backend:
    return cast(Backend, request.param)


@pytest.fixture
async def brokers(backend: Backend, tmp_path: Path) -> AsyncIterator[Brokers]:
    opener = Brokers(backend, tmp_path)
    yield opener
    await opener.close_all()


@pytest.fixture
async def broker(brokers: Brokers) -> Broker:
    return await brokers.open()


@pytest.fixture(autouse=True)
def _no_leaked_bus_threads() -> Iterator[None]:
    """Runs after the broker fixtures are closed (autouse fixtures are set up first)."""
    yield
    leaked = [t.name for t in threading.enumerate() if t.name.startswith("bus-")]
    assert not leaked, f"bus threads still running: {leaked}"


# -- helpers --------------------------------------------------------------------------------


async def next_delivery(sub: Subscription, timeout: float = 5.0) -> Delivery:
    """The next delivery, failing the test if none comes within ``timeout``."""
    try:
        return await asyncio.wait_for(anext(aiter(sub)), timeout)
    except TimeoutError:
        pytest.fail(f"no delivery within {timeout}s")


async def take(sub: Subscription, count: int, timeout: float = 5.0) -> list[Delivery]:
    """The next ``count`` deliveries, all within ``timeout``."""
    out: list[Delivery] = []
    try:
        async with asyncio.timeout(timeout):
            while len(out) < count:
                out.append(await anext(aiter(sub)))
    except TimeoutError:
        pytest.fail(f"{len(out)} of {count} deliveries within {timeout}s")
    return out


async def assert_quiet(sub: Subscription, within: float = 0.3) -> None:
    """Fails if a delivery arrives within ``within`` seconds."""
    try:
        d = await asyncio.wait_for(anext(aiter(sub)), within)
    except TimeoutError:
        return
    pytest.fail(f"unexpected delivery {d.subject} seq={d.sequence} count={d.delivery_count}")


async def add_stream(broker: Broker, name: str, *subjects: str, **config: Any) -> StreamInfo:
    """Creates a stream (fails the test if one by that name existed)."""
    info, created = await broker.add_stream(StreamConfig(name, subjects, **config))
    assert created
    return info


async def publish(broker: Broker, subject: str, data: bytes = b"", **kw: Any) -> int:
    """Publishes; the stream sequence (0 for core)."""
    ack = await broker.publish(OutgoingMessage(subject, data, **kw))
    return ack.sequence


async def subscribe(broker: Broker, subject: str, **kw: Any) -> Subscription:
    return await broker.subscribe(SubscriptionSpec(subject, **kw))


@contextlib.asynccontextmanager
async def responder(
    broker: Broker, subject: str, reply: Callable[[Delivery], bytes], *, queue_group: str = ""
) -> AsyncIterator[Subscription]:
    """Answers requests on ``subject`` with ``reply(request)`` until the block ends."""
    sub = await broker.subscribe(SubscriptionSpec(subject, queue_group=queue_group))

    async def serve() -> None:
        async for request in sub:
            if request.reply_to:
                await broker.publish(OutgoingMessage(request.reply_to, reply(request)))

    task = asyncio.create_task(serve(), name=f"responder-{subject}")
    try:
        yield sub
    finally:
        await sub.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def stream_named(streams: list[StreamInfo], name: str) -> StreamInfo:
    found = [s for s in streams if s.config.name == name]
    assert found, f"no stream {name!r} in {[s.config.name for s in streams]}"
    return found[0]
