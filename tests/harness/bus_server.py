"""A real gRPC server on 127.0.0.1:0 serving ``MessagingService`` over a broker.

``BusServer`` runs in the test's event loop; ``ThreadedBusServer`` runs one on
its own loop in a thread, for synchronous callers such as click's CliRunner
(whose commands start their own event loop).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc

from bus import Broker
from bus.servicer import MessagingServicer, add_messaging

T = TypeVar("T")


def default_broker() -> Broker:
    from bus.embedded import EmbeddedBroker

    return EmbeddedBroker(None)


class BusServer:
    """``async with BusServer() as server``: ``server.address``, ``.servicer``, ``.broker``."""

    def __init__(
        self,
        broker: Broker | None = None,
        *,
        max_subscriptions: int = 10_000,
        owns_broker: bool = True,
    ) -> None:
        """``owns_broker``: start it on entry and close it on exit (False: the
        caller does, e.g. to share one broker between two servers)."""
        self.broker = broker if broker is not None else default_broker()
        self._owns_broker = owns_broker
        self.draining = False
        self._server = grpc.aio.server()
        self.servicer: MessagingServicer = add_messaging(
            self._server,
            self.broker,
            lambda: self.draining,
            max_subscriptions=max_subscriptions,
        )
        self.address = ""

    async def __aenter__(self) -> Self:
        if self._owns_broker:
            await self.broker.start()
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        self.address = f"127.0.0.1:{port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.drain()
        await self._server.stop(0)
        if self._owns_broker:
            await self.broker.close()

    async def drain(self) -> None:
        self.draining = True
        await self.servicer.drain()


class ThreadedBusServer:
    """A :class:`BusServer` on its own event loop in a thread; ``run`` executes a
    coroutine there (to publish or inspect the broker from a synchronous test)."""

    def __init__(self, make_broker: Callable[[], Broker] = default_broker) -> None:
        self._make_broker = make_broker
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bus-server")
        self._server: BusServer | None = None

    @property
    def server(self) -> BusServer:
        assert self._server is not None
        return self._server

    @property
    def address(self) -> str:
        return self.server.address

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Starts ``coro`` on the server's loop; the caller waits for the future."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return self.submit(coro).result(timeout)

    def __enter__(self) -> Self:
        self._thread.start()

        async def start() -> BusServer:
            server = BusServer(self._make_broker())
            await server.__aenter__()
            return server

        self._server = self.run(start())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._server is not None:
                self.run(self._server.__aexit__(None, None, None))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
