"""Proxyless mode: a gRPC channel for a service name, balanced in process.

:class:`ServiceChannel` stands where a ``grpc.aio.Channel`` would, so any
generated stub works with it unchanged::

    async with sdk.AsyncClient() as client:
        async with ServiceChannel.open(client, "orders", balancer="p2c_ewma") as channel:
            stub = orders_pb2_grpc.OrdersStub(channel)
            reply = await stub.GetOrder(request, timeout=2.0)

How it fits together::

    EndpointSource ──(complete endpoint lists)──▶ watch task ──▶ EndpointPool.update()
        ControlPlaneSource (AsyncClient.watch)                   balancer.update()
        SidecarSource (SidecarService.WatchEndpoints)            retire channels of
        StaticEndpointSource (set by code)                       endpoints that left
    stub.Method(request) ──▶ MultiCallable ──▶ EndpointPool.pick() ──▶ that endpoint's channel
                                            ◀── release(latency, failed) ◀──┘

The channel owns its watch task and every per-endpoint channel; ``close()``
cancels and awaits the one and closes the others. See ``docs/proxyless.md``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc.aio

from sdk._client import AsyncClient
from sdk._errors import ClientClosedError
from sdk._retry import Backoff
from sdk._transport import ChannelFactory
from sdk.balancer import Balancer, Endpoint, Locality, make_balancer
from sdk.proxyless._calls import (
    MultiCallable,
    StreamStreamMultiCallable,
    StreamUnaryMultiCallable,
    UnaryStreamMultiCallable,
    UnaryUnaryMultiCallable,
)
from sdk.proxyless._policy import CallPolicy, IdempotentSpec, idempotency
from sdk.proxyless._pool import EndpointPool
from sdk.proxyless._sources import ControlPlaneSource, EndpointSource, SidecarSource

__all__ = ["ServiceChannel"]

logger = logging.getLogger(__name__)

# Our retry policy decides what may be repeated; gRPC keeps only its
# transparent retries of requests that never left the client. A backend that
# restarts is reconnected to within a second or two, not minutes.
_ENDPOINT_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]

_M = TypeVar("_M", bound=MultiCallable)

# After the endpoint source fails or ends, it is reopened with these delays.
_SOURCE_BACKOFF = (0.5, 30.0)


def endpoint_channel(authority: str) -> grpc.aio.Channel:
    """The default channel to one endpoint: plaintext, quick to reconnect."""
    return grpc.aio.insecure_channel(authority, options=_ENDPOINT_CHANNEL_OPTIONS)


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class ServiceChannel:
    """A channel-like object for one service: per-call balancing over live endpoints.

    ``source`` says where endpoints come from: an :class:`~sdk.AsyncClient`
    (the control plane's watch), a sidecar address ``"host:port"`` (its
    local API; the channel owns and closes that connection), or any
    :class:`EndpointSource`. ``balancer`` is a strategy name with
    ``balancer_options`` and ``locality`` as for :func:`~sdk.make_balancer`,
    or a ready :class:`~sdk.Balancer`. ``idempotent`` names the methods whose
    calls may be retried after UNAVAILABLE (paths, ``"/pkg.Service/*"``, or
    a predicate); ``max_attempts`` bounds the attempts of one unary call.
    ``resolve_timeout`` is how long a call without a timeout waits for the
    first endpoint list. ``drain_grace`` is how long calls on an endpoint
    that left may finish before its channel closes. ``key_metadata`` names
    the request metadata entry used as the ``ring_hash`` key.
    ``channel_factory`` opens the channel to one endpoint (e.g. for TLS).

    Nothing happens until it is entered (``async with``), :meth:`start` is
    awaited, or a first call is made. Closed, it cannot be reopened. It
    belongs to one event loop.
    """

    def __init__(
        self,
        source: AsyncClient | str | EndpointSource,
        service: str,
        *,
        namespace: str = "",
        balancer: str | Balancer = "round_robin",
        balancer_options: Mapping[str, Any] | None = None,
        locality: Locality | None = None,
        idempotent: IdempotentSpec | None = None,
        max_attempts: int = 3,
        resolve_timeout: float = 5.0,
        drain_grace: float = 5.0,
        key_metadata: str | None = None,
        channel_factory: ChannelFactory | None = None,
    ) -> None:
        if not service:
            raise ValueError("a service name is required")
        if isinstance(max_attempts, bool) or not 1 <= max_attempts <= 10:
            raise ValueError(f"max_attempts must be between 1 and 10, got {max_attempts!r}")
        for name, value in (("resolve_timeout", resolve_timeout), ("drain_grace", drain_grace)):
            if not (isinstance(value, int | float) and 0 <= value < math.inf):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
        self._service = service
        self._namespace = namespace
        self._source, self._owns_source = _coerce_source(source)
        self._policy = CallPolicy(
            max_attempts=max_attempts,
            idempotent=idempotency(idempotent),
            key_metadata=key_metadata.lower() if key_metadata else None,
            resolve_timeout=float(resolve_timeout),
        )
        label = f"service {namespace}/{service}" if namespace else f"service {service}"
        self._pool = EndpointPool(
            label,
            _coerce_balancer(balancer, balancer_options, locality),
            channel_factory or endpoint_channel,
            drain_grace=float(drain_grace),
            on_wait=self._start_soon,
        )
        self._state = _State.NEW
        self._watch_task: asyncio.Task[None] | None = None

    @classmethod
    def open(
        cls,
        source: AsyncClient | str | EndpointSource,
        service: str,
        **options: Any,
    ) -> ServiceChannel:
        """A new channel for ``service``; the options are those of the class.

        Use it as ``async with ServiceChannel.open(source, "orders") as channel:``.
        """
        return cls(source, service, **options)

    # -- state ----------------------------------------------------------------

    @property
    def service(self) -> str:
        return self._service

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def source(self) -> EndpointSource:
        return self._source

    @property
    def balancer(self) -> Balancer:
        """The balancer picks go through (to eject an endpoint, or inspect it)."""
        return self._pool.balancer

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """The endpoints of the last update, routable or not."""
        return self._pool.endpoints

    @property
    def closed(self) -> bool:
        return self._state is _State.CLOSED

    def channels(self) -> dict[str, grpc.aio.Channel]:
        """The open per-endpoint channels by endpoint id (made on first pick)."""
        return {i: c.channel for i, c in self._pool.connections().items()}

    def __repr__(self) -> str:
        return (
            f"<ServiceChannel {self._service!r} {self._state.value} "
            f"endpoints={len(self.endpoints)} source={self._source!r}>"
        )

    # -- lifecycle ----------------------------------------------------------------

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

    async def start(self) -> Self:
        """Starts watching the endpoints; does not wait for them. Idempotent."""
        self._start_soon()
        return self

    async def wait_for_endpoints(self, timeout: float = 5.0) -> tuple[Endpoint, ...]:
        """Starts if needed and waits for the first endpoint list; returns it.

        Raises NoEndpointsError when none arrives within ``timeout`` seconds.
        """
        self._start_soon()
        await self._pool.wait_ready(None, timeout)
        return self.endpoints

    async def close(self, grace: float | None = None) -> None:
        """Stops the watch and closes every endpoint channel. Idempotent.

        Calls in flight get ``grace`` seconds to finish (none by default)
        before they are cancelled. A sidecar connection the channel opened
        itself is closed too; a client or source passed in is not.
        """
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        task, self._watch_task = self._watch_task, None
        try:
            if task is not None:
                task.cancel()
                await asyncio.wait([task])
        finally:
            try:
                await self._pool.close(grace)
            finally:
                if self._owns_source and isinstance(self._source, SidecarSource):
                    await self._source.close()

    def _start_soon(self) -> None:
        if self._state is _State.CLOSED:
            raise ClientClosedError(f"the channel to {self._service} is closed; open a new one")
        if self._state is _State.NEW:
            self._state = _State.OPEN
            self._watch_task = asyncio.get_running_loop().create_task(
                self._watch(), name=f"proxyless-watch-{self._service}"
            )

    async def _watch(self) -> None:
        """Feeds the pool from the source, reopening the source if it stops."""
        pool = self._pool
        backoff = Backoff(*_SOURCE_BACKOFF)
        while True:
            updates = self._source.watch_endpoints(self._service, self._namespace)
            try:
                async for endpoints in updates:
                    pool.update(endpoints)
                    backoff.reset()
                reason = "the source ended"
            except ClientClosedError as err:
                pool.source_failed(err)
                logger.warning(
                    "%s: endpoint source closed (%s); routing stays as is", pool.label, err
                )
                return
            except Exception as err:
                pool.source_failed(err)
                reason = f"{type(err).__name__}: {err}"
            finally:
                aclose = getattr(updates, "aclose", None)
                if aclose is not None:
                    await aclose()
            delay = backoff.next_delay()
            logger.warning(
                "%s: endpoint watch stopped (%s); keeping %d endpoints, reopening in %.1fs",
                pool.label,
                reason,
                len(pool.endpoints),
                delay,
            )
            await asyncio.sleep(delay)

    # -- the channel surface generated stubs use ----------------------------------

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> UnaryUnaryMultiCallable:
        """A unary-unary multicallable: each call picks, and retries what is safe."""
        return self._multicallable(
            UnaryUnaryMultiCallable,
            method,
            request_serializer,
            response_deserializer,
            _registered_method,
        )

    def unary_stream(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> UnaryStreamMultiCallable:
        """A server-streaming multicallable: one pick per call, no retry."""
        return self._multicallable(
            UnaryStreamMultiCallable,
            method,
            request_serializer,
            response_deserializer,
            _registered_method,
        )

    def stream_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> StreamUnaryMultiCallable:
        """A client-streaming multicallable: one pick per call, no retry."""
        return self._multicallable(
            StreamUnaryMultiCallable,
            method,
            request_serializer,
            response_deserializer,
            _registered_method,
        )

    def stream_stream(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> StreamStreamMultiCallable:
        """A bidirectional-streaming multicallable: one pick per call, no retry."""
        return self._multicallable(
            StreamStreamMultiCallable,
            method,
            request_serializer,
            response_deserializer,
            _registered_method,
        )

    def _multicallable(
        self,
        kind: type[_M],
        method: str,
        request_serializer: Callable[[Any], bytes] | None,
        response_deserializer: Callable[[bytes], Any] | None,
        registered: bool | None,
    ) -> _M:
        return kind(
            self._pool,
            self._policy,
            method,
            request_serializer,
            response_deserializer,
            registered,
        )


def _coerce_source(source: object) -> tuple[EndpointSource, bool]:
    """The source to watch, and whether the channel made it (and so closes it)."""
    if isinstance(source, AsyncClient):
        return ControlPlaneSource(source), False
    if isinstance(source, str):
        return SidecarSource(source), True
    if isinstance(source, EndpointSource):
        return source, False
    raise TypeError(
        "source must be an AsyncClient, a sidecar address 'host:port' or an EndpointSource, "
        f"got {type(source).__name__}"
    )


def _coerce_balancer(
    balancer: str | Balancer,
    options: Mapping[str, Any] | None,
    locality: Locality | None,
) -> Balancer:
    if isinstance(balancer, str):
        return make_balancer(balancer, locality=locality, **dict(options or {}))
    if not isinstance(balancer, Balancer):
        raise TypeError(f"balancer must be a strategy name or a Balancer, got {balancer!r}")
    if options or locality is not None:
        raise ValueError("balancer_options and locality apply only to a balancer given by name")
    return balancer
