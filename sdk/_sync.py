"""The synchronous client: the asyncio client driven from a private event loop.

One background thread runs an event loop that owns an :class:`AsyncClient`;
each synchronous method submits the matching coroutine to it and waits. The
typed layer, retries, leases and watch resumption are therefore exactly the
async client's, not a copy.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import (
    AsyncGenerator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from types import TracebackType
from typing import Any, Self, TypeVar

from sdk._client import AsyncClient
from sdk._errors import ClientClosedError
from sdk._nodes import NodeInfo, RevisionWait
from sdk._retry import RetryPolicy
from sdk._transport import CaFile, ChannelFactory, client_channels, resolve_servers, resolve_token
from sdk._types import (
    Deregistration,
    HealthStatus,
    Instance,
    InstanceList,
    ServiceDetail,
    ServiceList,
    WatchEvent,
)

__all__ = ["Client", "WatchIterator"]

T = TypeVar("T")


class _LoopThread:
    """An event loop on a daemon thread, and a way to run coroutines on it."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Runs ``coro`` on the loop and returns its result in this thread.

        If this thread is interrupted (Ctrl-C) while waiting, the coroutine
        is cancelled and waited for before the interruption propagates.
        """
        future = self.submit(coro)
        try:
            return future.result()
        except BaseException:
            if not future.done():
                future.cancel()
                concurrent.futures.wait([future], timeout=5.0)
            raise

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


class Client:
    """The synchronous registry client, for scripts and the CLI.

    Same arguments, methods and errors as :class:`AsyncClient`, without
    ``await``; :meth:`watch` returns a plain iterator. Use it as a context
    manager or call :meth:`close`; a closed client cannot be reopened.
    Methods may be called from any thread.
    """

    def __init__(
        self,
        servers: str | Sequence[str] | None = None,
        *,
        timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        ca_file: CaFile | None = None,
        channel_factory: ChannelFactory | None = None,
        token: str | None = None,
    ) -> None:
        # Validate now, in the caller's thread, so mistakes surface here.
        self._servers = resolve_servers(servers)
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._options: dict[str, Any] = {
            "timeout": timeout,
            "retry": retry,
            "channel_factory": client_channels(ca_file, channel_factory),
            "token": resolve_token(token),
        }
        self._lock = threading.Lock()
        self._portal: _LoopThread | None = None
        self._client: AsyncClient | None = None
        self._watches: set[WatchIterator] = set()
        self._closed = False

    @property
    def servers(self) -> tuple[str, ...]:
        return self._servers

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Self:
        if self._closed:
            raise ClientClosedError()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes open watches, the async client and the loop thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            portal, client = self._portal, self._client
            watches = list(self._watches)
        for watch in watches:
            watch.close()
        if portal is None:
            return
        try:
            if client is not None:
                portal.run(client.close())
        finally:
            portal.stop()

    def register(
        self,
        service: str,
        address: str,
        port: int,
        *,
        id: str | None = None,
        namespace: str = "",
        node: str = "",
        platform: str = "",
        region: str = "",
        zone: str = "",
        tags: Iterable[str] = (),
        metadata: Mapping[str, str] | None = None,
        weight: int = 0,
        ephemeral: bool = False,
        lease_ttl: int = 10,
        expected_revision: int | None = None,
    ) -> Instance:
        """See :meth:`AsyncClient.register`. Ephemeral instances stay alive until close()."""
        portal, client = self._open()
        return portal.run(
            client.register(
                service,
                address,
                port,
                id=id,
                namespace=namespace,
                node=node,
                platform=platform,
                region=region,
                zone=zone,
                tags=tuple(tags),
                metadata=dict(metadata or {}),
                weight=weight,
                ephemeral=ephemeral,
                lease_ttl=lease_ttl,
                expected_revision=expected_revision,
            )
        )

    def deregister(
        self,
        service: str,
        id: str,
        *,
        namespace: str = "",
        expected_revision: int | None = None,
    ) -> Deregistration:
        """See :meth:`AsyncClient.deregister`."""
        portal, client = self._open()
        return portal.run(
            client.deregister(service, id, namespace=namespace, expected_revision=expected_revision)
        )

    def get_service(self, name: str, *, namespace: str = "") -> ServiceDetail:
        """See :meth:`AsyncClient.get_service`."""
        portal, client = self._open()
        return portal.run(client.get_service(name, namespace=namespace))

    def list_services(self, *, namespace: str = "") -> ServiceList:
        """See :meth:`AsyncClient.list_services`."""
        portal, client = self._open()
        return portal.run(client.list_services(namespace=namespace))

    def list_nodes(self) -> list[NodeInfo]:
        """See :meth:`AsyncClient.list_nodes`."""
        portal, client = self._open()
        return portal.run(client.list_nodes())

    def wait_for_revision(self, revision: int, *, timeout: float = 30.0) -> RevisionWait:
        """See :meth:`AsyncClient.wait_for_revision`."""
        portal, client = self._open()
        return portal.run(client.wait_for_revision(revision, timeout=timeout))

    def list_instances(
        self,
        *,
        service: str = "",
        namespace: str = "",
        platform: str = "",
        zone: str = "",
        tags: Iterable[str] = (),
        health: Iterable[HealthStatus | str] = (),
    ) -> InstanceList:
        """See :meth:`AsyncClient.list_instances`."""
        portal, client = self._open()
        return portal.run(
            client.list_instances(
                service=service,
                namespace=namespace,
                platform=platform,
                zone=zone,
                tags=tuple(tags),
                health=tuple(health),
            )
        )

    def resolve(
        self,
        service: str,
        *,
        namespace: str = "",
        platform: str = "",
        zone: str = "",
        tags: Iterable[str] = (),
    ) -> InstanceList:
        """See :meth:`AsyncClient.resolve`."""
        portal, client = self._open()
        return portal.run(
            client.resolve(
                service, namespace=namespace, platform=platform, zone=zone, tags=tuple(tags)
            )
        )

    def pick(
        self,
        service: str,
        *,
        namespace: str = "",
        platform: str = "",
        zone: str = "",
        tags: Iterable[str] = (),
    ) -> Instance:
        """See :meth:`AsyncClient.pick`."""
        portal, client = self._open()
        return portal.run(
            client.pick(
                service, namespace=namespace, platform=platform, zone=zone, tags=tuple(tags)
            )
        )

    def watch(
        self,
        service: str = "",
        *,
        namespace: str = "",
        platform: str = "",
        zone: str = "",
        tags: Iterable[str] = (),
        since_revision: int = 0,
        progress_interval: float = 5.0,
    ) -> WatchIterator:
        """See :meth:`AsyncClient.watch`; iterate the result, and close it when done."""
        portal, client = self._open()
        events = client.watch(
            service,
            namespace=namespace,
            platform=platform,
            zone=zone,
            tags=tuple(tags),
            since_revision=since_revision,
            progress_interval=progress_interval,
        )
        iterator = WatchIterator(portal, events, on_close=self._watches.discard)
        with self._lock:
            self._watches.add(iterator)
        return iterator

    def _open(self) -> tuple[_LoopThread, AsyncClient]:
        with self._lock:
            if self._closed:
                raise ClientClosedError()
            if self._portal is None or self._client is None:
                portal = _LoopThread(name=f"eco-client-{id(self):x}")
                self._client = portal.run(self._make_client())
                self._portal = portal
            return self._portal, self._client

    async def _make_client(self) -> AsyncClient:
        # grpc.aio objects belong to the loop they are created on.
        return AsyncClient(self._servers, **self._options)


class WatchIterator(Iterator[WatchEvent]):
    """A blocking iterator over a watch; ``close()`` (or ``with``) ends it."""

    def __init__(
        self,
        portal: _LoopThread,
        events: AsyncGenerator[WatchEvent, None],
        *,
        on_close: Callable[[WatchIterator], None] | None = None,
    ) -> None:
        self._portal = portal
        self._events = events
        self._on_close = on_close
        self._pending: asyncio.Task[Any] | None = None
        self._closed = False

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> WatchEvent:
        if self._closed:
            raise StopIteration
        try:
            return self._portal.run(self._next())
        except StopAsyncIteration:
            self.close()
            raise StopIteration from None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Cancels the stream and releases it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._portal.run(self._aclose())
        finally:
            if self._on_close is not None:
                self._on_close(self)

    async def _next(self) -> WatchEvent:
        self._pending = asyncio.current_task()
        try:
            return await anext(self._events)
        finally:
            self._pending = None

    async def _aclose(self) -> None:
        pending = self._pending
        if pending is not None and not pending.done():
            # A read abandoned by an interrupted __next__: the generator is
            # still running it, and cannot be closed until it stops.
            pending.cancel()
            await asyncio.wait([pending])
        await self._events.aclose()
