"""Where a proxyless channel learns the endpoints of a service.

An :class:`EndpointSource` turns "the endpoints of service S" into an async
iterator of *complete* endpoint lists, one after every change. The channel
only ever replaces its balancer's endpoints with the latest list, so every
source is simple to reason about and to fake::

    EndpointSource.watch_endpoints(service, namespace) -> AsyncIterator[list[Endpoint]]
    ├── ControlPlaneSource    the control plane's watch (AsyncClient.watch), folded into lists
    ├── SidecarSource         the local sidecar's SidecarService.WatchEndpoints
    └── StaticEndpointSource  lists set by code: fixed endpoints, tests, benchmarks

Reconnecting is the source's job: the control-plane watch resumes by
itself, and the sidecar source reconnects with jittered backoff. While a
source is disconnected it yields nothing, so the channel keeps routing to
the last list it had.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

import grpc
import grpc.aio
from ecosystem.v1 import sidecar_pb2, sidecar_pb2_grpc

from sdk._client import AsyncClient
from sdk._errors import (
    ClientClosedError,
    DeadlineExceededError,
    EcoError,
    InternalError,
    RequestCancelledError,
    ResourceExhaustedError,
    UnavailableError,
    translated,
)
from sdk._retry import RetryPolicy
from sdk._transport import ChannelFactory, default_channel
from sdk._types import Instance, WatchEvent, WatchEventType
from sdk.balancer import Endpoint

__all__ = [
    "DEFAULT_SIDECAR_ADDRESS",
    "ControlPlaneSource",
    "EndpointSource",
    "EndpointTracker",
    "SidecarSource",
    "StaticEndpointSource",
]

logger = logging.getLogger(__name__)

#: Where a sidecar serves its local API unless configured otherwise.
DEFAULT_SIDECAR_ADDRESS = "127.0.0.1:7410"

# The registry stores an empty namespace as this one, but an empty namespace
# in a watch selector matches every namespace: a channel for one service must
# ask for the stored name.
_DEFAULT_NAMESPACE = "default"

# Failures after which the sidecar stream is worth reopening; anything else
# (an unknown service, say) ends the watch with the error.
_TRANSIENT: tuple[type[EcoError], ...] = (
    UnavailableError,
    DeadlineExceededError,
    RequestCancelledError,
    ResourceExhaustedError,
    InternalError,
)


# Generated stubs are untyped; this is the typed view of the one used here.
_SIDECAR_STUB: Callable[[grpc.aio.Channel], Any] = sidecar_pb2_grpc.SidecarServiceStub


@runtime_checkable
class EndpointSource(Protocol):
    """Yields the complete endpoint list of one service now and after every change.

    The first list is the current state (possibly empty); each later one
    replaces it whole. The iterator runs until closed, reconnecting by itself
    when it can; it raises an :class:`~sdk.EcoError` when it cannot go on
    (the channel then keeps the last list). Endpoint ids are unique within
    one list.
    """

    def watch_endpoints(self, service: str, namespace: str) -> AsyncIterator[list[Endpoint]]:
        """An async iterator of complete endpoint lists for ``service``."""
        ...


def _endpoint(instance: Instance) -> Endpoint | None:
    try:
        return Endpoint.from_instance(instance)
    except ValueError as err:  # an instance no balancer can route to; skip, do not stop
        logger.warning("skipping instance %s of %s: %s", instance.id, instance.service, err)
        return None


def endpoints_of(instances: Iterable[Instance]) -> list[Endpoint]:
    """Endpoints for instances, in order, skipping any that cannot be routed to."""
    return [e for e in map(_endpoint, instances) if e is not None]


class EndpointTracker:
    """Folds a watch's events into complete endpoint lists.

    ``apply(event)`` returns the new list when the event changes what a
    caller should route to, and None otherwise. A snapshot (RESYNC, PUTs,
    SNAPSHOT_END) is collected aside and published whole at its end, so the
    previous endpoints stay in use until the new set is complete; a delta
    outside a snapshot is published at once, which is what makes a
    health change take effect within one watch update.
    """

    def __init__(self) -> None:
        self._current: dict[str, Instance] = {}
        self._pending: dict[str, Instance] | None = None
        self._published = False

    @property
    def instances(self) -> tuple[Instance, ...]:
        """What the last published list was made from."""
        return tuple(self._current.values())

    @property
    def in_snapshot(self) -> bool:
        return self._pending is not None

    def apply(self, event: WatchEvent) -> list[Endpoint] | None:
        kind = event.type
        if kind is WatchEventType.RESYNC:
            self._pending = {}
            return None
        if kind is WatchEventType.SNAPSHOT_END:
            if self._pending is None:
                # A snapshot end without its start: nothing was dropped, but a
                # caller still waiting for a first list may now have it.
                return None if self._published else self._publish()
            self._current, self._pending = self._pending, None
            return self._publish()
        if kind is WatchEventType.PROGRESS or event.instance is None:
            return None
        target = self._pending if self._pending is not None else self._current
        instance = event.instance
        if kind is WatchEventType.PUT:
            target[instance.id] = instance
        elif target.pop(instance.id, None) is None:
            return None  # a DELETE of an instance not held: nothing changes
        if self._pending is not None:
            return None
        return self._publish()

    def _publish(self) -> list[Endpoint]:
        self._published = True
        return endpoints_of(self._current.values())


class ControlPlaneSource:
    """Endpoints from the control plane directly, through ``client.watch()``.

    The watch resumes after disconnects and control-plane restarts by
    itself; a RESYNC keeps the old endpoints until the new snapshot is
    complete. ``tags`` keeps only instances carrying all of them. The client
    is not closed by this source or by any channel using it; when the client
    closes, the watch ends and channels keep their last endpoints.
    """

    def __init__(
        self,
        client: AsyncClient,
        *,
        tags: Iterable[str] = (),
        progress_interval: float = 5.0,
    ) -> None:
        if not isinstance(client, AsyncClient):
            raise TypeError(f"expected an AsyncClient, got {type(client).__name__}")
        if not 0.1 <= progress_interval <= 60.0:
            raise ValueError("progress_interval must be between 0.1 and 60 seconds")
        self._client = client
        self._tags = tuple(tags)
        self._progress_interval = progress_interval

    @property
    def client(self) -> AsyncClient:
        return self._client

    def __repr__(self) -> str:
        return f"ControlPlaneSource({', '.join(self._client.servers)})"

    async def watch_endpoints(
        self, service: str, namespace: str
    ) -> AsyncGenerator[list[Endpoint], None]:
        tracker = EndpointTracker()
        events = self._client.watch(
            service,
            namespace=namespace or _DEFAULT_NAMESPACE,
            tags=self._tags,
            progress_interval=self._progress_interval,
        )
        async with contextlib.aclosing(events):
            async for event in events:
                update = tracker.apply(event)
                if update is not None:
                    yield update


class SidecarSource:
    """Endpoints from the local sidecar's ``SidecarService.WatchEndpoints``.

    The sidecar sends a service's complete endpoint list on every change,
    from its cache, so this keeps working while the control plane is down.
    One channel to the sidecar, opened on first use, serves every watch of
    this source; after a broken stream (a sidecar restart) it reconnects
    with jittered backoff shaped by ``retry``, and the sidecar's first
    answer replaces whatever the channel held. Errors that reconnecting
    cannot fix (an unknown service) end the watch with an
    :class:`~sdk.EcoError`. Close it (or use it as an async context
    manager) when done; a channel opened on an address string owns and
    closes its own source.
    """

    def __init__(
        self,
        address: str = DEFAULT_SIDECAR_ADDRESS,
        *,
        retry: RetryPolicy | None = None,
        channel_factory: ChannelFactory | None = None,
    ) -> None:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"sidecar address {address!r} is not HOST:PORT")
        self._address = address
        self._policy = retry or RetryPolicy()
        self._factory = channel_factory or default_channel
        self._channel: grpc.aio.Channel | None = None
        self._closed = False

    @property
    def address(self) -> str:
        return self._address

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return f"SidecarSource({self._address!r})"

    async def __aenter__(self) -> Self:
        if self._closed:
            raise ClientClosedError("the sidecar source is closed; create a new one")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel to the sidecar, ending every watch on it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close(None)

    async def watch_endpoints(
        self, service: str, namespace: str
    ) -> AsyncGenerator[list[Endpoint], None]:
        request = sidecar_pb2.WatchEndpointsRequest(service=service, namespace=namespace)
        backoff = self._policy.backoff()
        stale = False
        while True:
            stub = _SIDECAR_STUB(self._open())  # ClientClosedError once closed
            call = stub.WatchEndpoints(request)
            try:
                with translated(self._address):
                    async for response in call:
                        backoff.reset()
                        if response.stale != stale:
                            stale = bool(response.stale)
                            logger.info(
                                "sidecar %s %s endpoints of %s",
                                self._address,
                                "serves cached" if stale else "serves live",
                                service,
                            )
                        yield endpoints_of(Instance.from_proto(i) for i in response.endpoints)
                reason = "the sidecar ended the stream"
            except EcoError as error:
                if self._closed:
                    return
                if not isinstance(error, _TRANSIENT):
                    raise
                reason = f"{error.code}: {error}"
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if self._closed and (current is None or current.cancelling() == 0):
                    return  # the source was closed under us: the watch simply ends
                raise
            finally:
                call.cancel()
            if self._closed:
                return
            delay = backoff.next_delay()
            logger.info(
                "endpoint watch of %s on sidecar %s interrupted (%s); reconnecting in %.2fs",
                service,
                self._address,
                reason,
                delay,
            )
            await asyncio.sleep(delay)

    def _open(self) -> grpc.aio.Channel:
        if self._closed:
            raise ClientClosedError("the sidecar source is closed; create a new one")
        if self._channel is None:
            self._channel = self._factory(self._address)
        return self._channel


class StaticEndpointSource:
    """Endpoint lists set by code: fixed endpoints, tests and benchmarks.

    ``StaticEndpointSource({"orders": [Endpoint(...), ...]})`` serves those
    lists; :meth:`set` replaces one, and every channel watching that service
    receives it at once, as a watch update. A service with no list yields
    nothing until one is set (a channel waits, then fails its calls with
    NoEndpointsError).
    """

    def __init__(self, endpoints: dict[str, Sequence[Endpoint]] | None = None) -> None:
        self._lists: dict[str, list[Endpoint]] = {}
        self._waiters: dict[str, list[asyncio.Event]] = {}
        for service, items in (endpoints or {}).items():
            self.set(service, items)

    def set(self, service: str, endpoints: Sequence[Endpoint], *, namespace: str = "") -> None:
        """Replaces the endpoints of ``service`` and wakes its watchers."""
        items = list(endpoints)
        for item in items:
            if not isinstance(item, Endpoint):
                raise TypeError(f"expected Endpoint, got {type(item).__name__}")
        if len({e.id for e in items}) != len(items):
            raise ValueError(f"endpoint ids of {service!r} must be unique")
        key = _key(service, namespace)
        self._lists[key] = items
        for event in self._waiters.get(key, ()):
            event.set()

    def get(self, service: str, *, namespace: str = "") -> list[Endpoint] | None:
        """The list last set for ``service``, or None."""
        items = self._lists.get(_key(service, namespace))
        return None if items is None else list(items)

    def watchers(self, service: str, *, namespace: str = "") -> int:
        """How many watches of ``service`` are open (to check that channels let go)."""
        return len(self._waiters.get(_key(service, namespace), ()))

    async def watch_endpoints(
        self, service: str, namespace: str
    ) -> AsyncGenerator[list[Endpoint], None]:
        key = _key(service, namespace)
        wake = asyncio.Event()
        self._waiters.setdefault(key, []).append(wake)
        try:
            sent: list[Endpoint] | None = None
            while True:
                current = self._lists.get(key)
                if current is not None and current is not sent:
                    sent = current
                    yield list(current)
                    continue
                await wake.wait()
                wake.clear()
        finally:
            waiters = self._waiters.get(key, [])
            waiters.remove(wake)
            if not waiters:
                self._waiters.pop(key, None)


def _key(service: str, namespace: str) -> str:
    return f"{namespace or _DEFAULT_NAMESPACE}/{service}"
