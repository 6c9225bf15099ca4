"""The routing core of a proxyless channel: endpoints, the balancer, one channel each.

:class:`EndpointPool` holds what a :class:`~sdk.proxyless._channel.ServiceChannel` routes
with, and nothing that talks to a source::

    update(endpoints)  ── balancer.update() ── retire connections of endpoints that left
    pick(key)          ── balancer.pick()   ── the endpoint's Connection (its channel made lazily)
    release(...)       ── balancer.release(latency, failed) ── connection's in-flight count

A :class:`Connection` is one gRPC channel to one endpoint, made on the first
pick of that endpoint and kept while the endpoint is in the list (a
CRITICAL endpoint keeps its channel: it is only skipped). When an endpoint
leaves, or its address changes, its connection retires: the calls in flight
on it get ``drain_grace`` seconds to finish, then the channel is closed.
Retirements are tasks the pool owns; :meth:`EndpointPool.close` cancels and
awaits them and closes every channel.

Single event loop, no locks: every method except the waits runs to
completion without awaiting, so a pick always sees a whole update.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc.aio

from sdk._errors import ClientClosedError
from sdk.balancer import Balancer, Endpoint, NoEndpointsError

__all__ = ["Connection", "EndpointPool"]

logger = logging.getLogger(__name__)

# Seconds an endpoint that refused a connection is skipped before it is tried again.
UNREACHABLE_EJECTION = 5.0

ChannelMaker = Callable[[str], grpc.aio.Channel]


class Connection:
    """One channel to one endpoint, with the calls in flight on it.

    ``inner`` caches, per multicallable of the proxyless channel, the
    channel's own multicallable for the same method, so a call costs a dict
    lookup rather than a method registration.
    """

    __slots__ = ("authority", "channel", "endpoint_id", "idle", "in_flight", "inner")

    def __init__(self, endpoint: Endpoint, channel: grpc.aio.Channel) -> None:
        self.endpoint_id = endpoint.id
        self.authority = endpoint.authority
        self.channel = channel
        self.in_flight = 0
        #: set when the last call in flight ends, once the connection retires
        self.idle: asyncio.Event | None = None
        self.inner: dict[object, Any] = {}

    def started(self) -> None:
        self.in_flight += 1

    def finished(self) -> None:
        self.in_flight -= 1
        if self.in_flight <= 0 and self.idle is not None:
            self.idle.set()

    def __repr__(self) -> str:
        return f"Connection({self.endpoint_id!r}, {self.authority}, in_flight={self.in_flight})"


class EndpointPool:
    """Endpoints, balancer and connections of one service; see the module docstring.

    ``label`` names the service in errors and logs; ``channel_maker`` opens
    the channel to one ``host:port``; ``on_wait`` is called when a call
    starts waiting for the first endpoint list (the channel starts its watch).
    """

    def __init__(
        self,
        label: str,
        balancer: Balancer,
        channel_maker: ChannelMaker,
        *,
        drain_grace: float,
        on_wait: Callable[[], None] | None = None,
    ) -> None:
        self._label = label
        self._on_wait = on_wait
        self._balancer = balancer
        self._make_channel = channel_maker
        self._drain_grace = drain_grace
        self._connections: dict[str, Connection] = {}
        self._retiring: set[Connection] = set()
        self._closers: set[asyncio.Task[None]] = set()
        self._ready = False
        self._ready_event: asyncio.Event | None = None
        self._changed: asyncio.Event | None = None
        self._version = 0
        self._source_error: BaseException | None = None
        self._closed = False

    # -- state ----------------------------------------------------------------

    @property
    def label(self) -> str:
        return self._label

    @property
    def balancer(self) -> Balancer:
        return self._balancer

    @property
    def ready(self) -> bool:
        """True once a first endpoint list has been applied (or the source failed)."""
        return self._ready

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def version(self) -> int:
        """How many endpoint lists have been applied."""
        return self._version

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self._balancer.endpoints

    @property
    def source_error(self) -> BaseException | None:
        """Why the endpoint source stopped, if it failed."""
        return self._source_error

    def connections(self) -> dict[str, Connection]:
        """The open connections by endpoint id (retiring ones excluded)."""
        return dict(self._connections)

    def channels(self) -> list[grpc.aio.Channel]:
        """Every channel the pool holds, retiring ones included."""
        return [c.channel for c in (*self._connections.values(), *self._retiring)]

    # -- endpoint updates -------------------------------------------------------

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """Applies a complete endpoint list: the next pick sees it."""
        if self._closed:
            return
        self._balancer.update(endpoints)
        by_id = {e.id: e for e in endpoints}
        for endpoint_id, connection in list(self._connections.items()):
            endpoint = by_id.get(endpoint_id)
            if endpoint is None or endpoint.authority != connection.authority:
                del self._connections[endpoint_id]
                self._retire(connection)
        self._version += 1
        self._source_error = None
        self._mark_ready()
        logger.debug("%s: %d endpoints (update %d)", self._label, len(by_id), self._version)

    def source_failed(self, error: BaseException) -> None:
        """Records that the source stopped; calls waiting for a first list give up."""
        self._source_error = error
        self._mark_ready()

    def _mark_ready(self) -> None:
        self._ready = True
        if self._ready_event is not None:
            self._ready_event.set()
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    # -- picking ----------------------------------------------------------------

    async def wait_ready(self, deadline: float | None, default_wait: float) -> None:
        """Waits for the first endpoint list until ``deadline`` (``time.monotonic``),
        or ``default_wait`` seconds without one; NoEndpointsError when none came."""
        self._check_open()
        if self._ready:
            return
        if self._on_wait is not None:
            self._on_wait()
        limit = default_wait if deadline is None else max(0.0, deadline - time.monotonic())
        if self._ready_event is None:
            self._ready_event = asyncio.Event()
        try:
            async with asyncio.timeout(limit):
                await self._ready_event.wait()
        except TimeoutError:
            raise NoEndpointsError(
                f"{self._label}: no endpoint list received within {round(limit, 3):g}s"
            ) from None
        self._check_open()

    def pick(self, key: str | bytes | None) -> tuple[Endpoint, Connection]:
        """One endpoint and its connection, counted in flight on both (end it
        with :meth:`release`); NoEndpointsError, naming the service, when
        nothing may be picked."""
        endpoint = self._pick_endpoint(key)
        connection = self._connection(endpoint)
        connection.started()
        return endpoint, connection

    async def pick_waiting(
        self, key: str | bytes | None, deadline: float | None
    ) -> tuple[Endpoint, Connection]:
        """As :meth:`pick`, but waits for an update that makes a pick possible
        until ``deadline`` (forever when None): the ``wait_for_ready`` behaviour."""
        while True:
            try:
                return self.pick(key)
            except NoEndpointsError:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise
                if self._changed is None:
                    self._changed = asyncio.Event()
                changed = self._changed
                try:
                    async with asyncio.timeout(remaining):
                        await changed.wait()
                except TimeoutError:
                    pass  # one more pick, then its error

    def pick_other(
        self, key: str | bytes | None, tried: Sequence[str]
    ) -> tuple[Endpoint, Connection, bool]:
        """An endpoint not in ``tried`` if the balancer offers one, for a retry.

        The request key is tried first (``ring_hash`` maps a key to one
        endpoint), then keyless picks, at most one round of the endpoints;
        picks not used are released at once. The flag is False when only a
        tried endpoint could be had (the caller backs off before reusing it).
        """
        chosen = first = self._pick_endpoint(key)
        fresh = first.id not in tried
        if not fresh:
            for _ in range(len(self._balancer.endpoints)):
                other = self._balancer.pick(None)
                if other.id not in tried:
                    self._balancer.release(first)
                    chosen, fresh = other, True
                    break
                self._balancer.release(other)
        connection = self._connection(chosen)
        connection.started()
        return chosen, connection, fresh

    def eject_unreachable(self, endpoint: Endpoint) -> None:
        """Skips an endpoint that refused a connection for ``UNREACHABLE_EJECTION``
        seconds, so later calls do not each pay a failed connect before their
        retry. (Balancers run on the monotonic clock unless given another.)"""
        self._balancer.eject(endpoint.id, time.monotonic() + UNREACHABLE_EJECTION)
        logger.info(
            "%s: %s refused the connection; skipped for %gs",
            self.label,
            endpoint.id,
            UNREACHABLE_EJECTION,
        )

    def release(
        self,
        endpoint: Endpoint,
        connection: Connection,
        *,
        latency: float | None = None,
        failed: bool = False,
    ) -> None:
        """Ends one call picked with :meth:`pick`: exactly once per pick."""
        connection.finished()
        self._balancer.release(endpoint, latency=latency, failed=failed)

    def _pick_endpoint(self, key: str | bytes | None) -> Endpoint:
        self._check_open()
        try:
            return self._balancer.pick(key)
        except NoEndpointsError as err:
            raise self._no_endpoints(err) from self._source_error

    def _connection(self, endpoint: Endpoint) -> Connection:
        connection = self._connections.get(endpoint.id)
        if connection is None:
            connection = Connection(endpoint, self._make_channel(endpoint.authority))
            self._connections[endpoint.id] = connection
            logger.debug(
                "%s: opened a channel to %s (%s)", self._label, endpoint.id, endpoint.authority
            )
        return connection

    def _no_endpoints(self, err: NoEndpointsError) -> NoEndpointsError:
        message = f"{self._label}: {err.message}"
        if self._source_error is not None:
            message += f" (the endpoint source failed: {self._source_error})"
        return NoEndpointsError(message, total=err.total, unavailable=err.unavailable)

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError(f"the channel to {self._label} is closed; open a new one")

    # -- retiring and closing -----------------------------------------------------

    def _retire(self, connection: Connection) -> None:
        logger.debug(
            "%s: closing the channel to %s (%s), %d calls in flight",
            self._label,
            connection.endpoint_id,
            connection.authority,
            connection.in_flight,
        )
        self._retiring.add(connection)
        if connection.in_flight > 0:
            connection.idle = asyncio.Event()
        task = asyncio.get_running_loop().create_task(
            self._drain(connection), name=f"proxyless-retire-{connection.endpoint_id}"
        )
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def _drain(self, connection: Connection) -> None:
        if connection.idle is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._drain_grace):
                    await connection.idle.wait()
        try:
            await connection.channel.close(None)
        finally:
            self._retiring.discard(connection)

    async def close(self, grace: float | None = None) -> None:
        """Stops routing and closes every channel; calls in flight get ``grace``
        seconds (none when None) before they are cancelled. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._mark_ready()  # wakes calls waiting for endpoints; they see the close
        closers = list(self._closers)
        for task in closers:
            task.cancel()
        if closers:
            await _await_cancelled(closers)
        connections = [*self._connections.values(), *self._retiring]
        self._connections.clear()
        self._retiring.clear()
        if connections:
            await asyncio.gather(*(c.channel.close(grace) for c in connections))


async def _await_cancelled(tasks: list[asyncio.Task[None]]) -> None:
    """Awaits tasks this code cancelled, without swallowing a cancellation of the caller."""
    await asyncio.wait(tasks)
    for task in tasks:
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.warning("closing a retired channel failed: %r", error)
