"""The clients of the bus benchmark: one interface over ``sdk.BusClient`` (a
route through the project) and nats-py (the direct client), see
benchmarks/bench_bus.py."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks._servers import ServerError
from sdk import BusClient

__all__ = ["DIRECT", "RECEIVE_WINDOW", "Handler", "NatsRoute", "Route", "SdkRoute"]

DIRECT = "direct-nats"
RECEIVE_WINDOW = 1_000  # core: published but not yet received


Handler = Callable[[bytes], None]


class Route(abc.ABC):
    """One way to the bus: publish, subscribe (core and durable), durable streams."""

    system = ""
    pids: dict[str, int]  # the processes serving it, by role

    async def __aenter__(self) -> Route:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @abc.abstractmethod
    async def close(self) -> None:
        """Closes the route's clients."""

    @abc.abstractmethod
    async def publish(self, subject: str, data: bytes) -> None:
        """Core: returns once the message is handed over (sent, or buffered to send)."""

    @abc.abstractmethod
    async def publish_durable(self, subject: str, data: bytes) -> None:
        """Returns once the stream acknowledged it stored the message."""

    @abc.abstractmethod
    async def subscribe(self, subject: str, on_message: Handler) -> Callable[[], Awaitable[None]]:
        """Calls ``on_message`` with each payload; returns a function that unsubscribes."""

    @abc.abstractmethod
    async def consume(self, subject: str, durable: str, count: int) -> float:
        """Reads ``count`` stored messages with a new durable consumer, acknowledging
        each; returns the seconds from the subscription to the last acknowledgement."""

    @abc.abstractmethod
    async def add_stream(self, name: str, subjects: list[str]) -> None:
        """Creates a durable stream capturing ``subjects``."""


class SdkRoute(Route):
    def __init__(self, system: str, target: str, pids: dict[str, int]) -> None:
        self.system = system
        self.pids = pids
        self._pub = BusClient(target, timeout=30.0)
        self._sub = BusClient(target, timeout=30.0)

    async def close(self) -> None:
        await self._sub.close()
        await self._pub.close()

    async def publish(self, subject: str, data: bytes) -> None:
        await self._pub.send(subject, data)

    async def publish_durable(self, subject: str, data: bytes) -> None:
        await self._pub.publish(subject, data)

    publish_acked = publish_durable

    async def subscribe(self, subject: str, on_message: Handler) -> Callable[[], Awaitable[None]]:
        sub = await self._sub.subscribe(subject, buffer=RECEIVE_WINDOW * 2).start()

        async def read() -> None:
            async for message in sub:
                on_message(message.data)

        reader = asyncio.create_task(read(), name="bench-bus-reader")

        async def stop() -> None:
            await sub.close()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

        return stop

    async def consume(self, subject: str, durable: str, count: int) -> float:
        acks: list[asyncio.Task[bool]] = []
        started = time.perf_counter()
        async with self._sub.subscribe(
            subject, durable=durable, deliver="all", max_ack_pending=10_000, buffer=1_000
        ) as sub:
            async for message in sub:
                acks.append(asyncio.create_task(message.ack()))
                if len(acks) >= count:
                    break
            done = await asyncio.gather(*acks)
        if not all(done):
            raise ServerError(f"{self.system}: {done.count(False)} acknowledgements not taken")
        return time.perf_counter() - started

    async def add_stream(self, name: str, subjects: list[str]) -> None:
        await self._pub.add_stream(name, subjects)


class NatsRoute(Route):
    system = DIRECT

    def __init__(self, url: str, pid: int) -> None:
        self._url = url
        self.pids = {"nats_server": pid}
        self._pub: Any = None
        self._sub: Any = None

    async def __aenter__(self) -> NatsRoute:
        import nats

        self._pub = await nats.connect(self._url)
        try:
            self._sub = await nats.connect(self._url)
        except BaseException:
            await self._pub.close()
            raise
        return self

    async def close(self) -> None:
        for conn in (self._sub, self._pub):
            if conn is not None:
                await conn.close()

    async def publish(self, subject: str, data: bytes) -> None:
        await self._pub.publish(subject, data)

    async def publish_durable(self, subject: str, data: bytes) -> None:
        await self._pub.jetstream().publish(subject, data)

    async def subscribe(self, subject: str, on_message: Handler) -> Callable[[], Awaitable[None]]:
        async def handle(msg: Any) -> None:
            on_message(msg.data)

        sub = await self._sub.subscribe(subject, cb=handle)
        await self._sub.flush()  # the server has the interest before the first publish

        async def stop() -> None:
            await sub.unsubscribe()

        return stop

    async def consume(self, subject: str, durable: str, count: int) -> float:
        got = 0
        finished = asyncio.get_running_loop().create_future()

        async def handle(msg: Any) -> None:
            nonlocal got
            await msg.ack()
            got += 1
            if got >= count and not finished.done():
                finished.set_result(None)

        js = self._sub.jetstream()
        started = time.perf_counter()
        sub = await js.subscribe(
            subject, durable=durable, cb=handle, manual_ack=True, pending_msgs_limit=100_000
        )
        try:
            await finished
            await self._sub.flush()  # the acknowledgements have reached the server
            return time.perf_counter() - started
        finally:
            await sub.unsubscribe()

    async def add_stream(self, name: str, subjects: list[str]) -> None:
        await self._pub.jetstream().add_stream(name=name, subjects=subjects)
