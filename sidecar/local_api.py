"""The local API: ``SidecarService`` over gRPC for the applications on this host.

The servicer is a thin adapter. Answers come from the endpoint cache and
the upstream balancers, so they keep working while the control plane is
unreachable; TTL updates go to the health engine. Every call goes through
``_call``, where requests are validated (INVALID_ARGUMENT with
``google.rpc.BadRequest`` field violations) and where the sidecar's errors
become statuses, by the one table in :mod:`sidecar.errors`.

:class:`LocalApiServer` owns the gRPC server: ``SidecarService``, the
standard ``grpc.health.v1`` service for the sidecar itself, and server
reflection. On shutdown it turns NOT_SERVING, ends every watch stream with
UNAVAILABLE (so clients move on), and gives calls in flight a grace period.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import grpc
import grpc.aio
from ecosystem.v1 import registry_pb2, sidecar_pb2, sidecar_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from bus.servicer import MESSAGING_SERVICE, MessagingServicer, add_messaging
from sdk import FieldViolation, HealthStatus
from serving.paging import check_paging, chunked, page_of
from serving.rpc_guard import MalformedRequestGuard
from sidecar.acl import Guard, TokenInterceptor, local_api_needs
from sidecar.cache import EndpointCache, UpstreamKey, UpstreamState
from sidecar.config import split_hostport
from sidecar.errors import (
    BadRequestError,
    ShuttingDownError,
    StartupError,
    TooManyWatchesError,
    UnknownServiceError,
    code_for,
    end_call,
    excerpt,
)
from sidecar.metrics import SidecarMetrics
from sidecar.relay import RelayBroker
from sidecar.routing import Router

__all__ = ["SIDECAR_SERVICE", "LocalApiServer", "SidecarServicer", "TtlUpdater"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

SIDECAR_SERVICE = sidecar_pb2.DESCRIPTOR.services_by_name["SidecarService"].full_name
#: WatchEndpoints streams open at once, at most.
MAX_WATCHES = 1024
_NOTE_LIMIT = 4096
_KEY_LIMIT = 1024
#: Bytes of endpoints in one WatchEndpoints response; a larger set is sent
#: in several, all but the last marked ``more``.
WATCH_RESPONSE_BYTES = 1024 * 1024
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
_DEFAULT_HEALTH = (HealthStatus.PASSING, HealthStatus.WARNING)
_TTL_STATUSES = (HealthStatus.PASSING, HealthStatus.WARNING, HealthStatus.CRITICAL)


class TtlUpdater(Protocol):
    """Sets a TTL check of a local instance (the sidecar, in production)."""

    def __call__(
        self, service: str, instance_id: str, check: str, status: HealthStatus, note: str
    ) -> None: ...


class SidecarServicer(sidecar_pb2_grpc.SidecarServiceServicer):
    """``SidecarService`` over the cache, the router and the health engine."""

    def __init__(
        self,
        cache: EndpointCache,
        router: Router,
        *,
        is_stale: Callable[[], bool],
        update_ttl: TtlUpdater,
        metrics: SidecarMetrics | None = None,
        max_watches: int = MAX_WATCHES,
    ) -> None:
        self._cache = cache
        self._router = router
        self._is_stale = is_stale
        self._update_ttl = update_ttl
        self._metrics = metrics
        self._max_watches = max_watches
        self._watches = 0
        self._closing = False

    @property
    def watch_streams(self) -> int:
        return self._watches

    def close(self) -> None:
        """Refuses new calls and ends open watch streams (with UNAVAILABLE)."""
        self._closing = True
        self._cache.notify_all()

    async def _call(
        self,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        work: Callable[[], T],
    ) -> T | None:
        """``work()``'s result, or None once the call has been given the status
        of what ``work`` raised."""
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            if self._closing:
                raise ShuttingDownError()
            return work()
        except Exception as exc:
            code = code_for(exc) or grpc.StatusCode.INTERNAL
            _fail(method, context, exc)
            return None
        finally:
            if self._metrics is not None:
                self._metrics.observe(method, code.name, time.perf_counter() - started)

    # -- endpoints --------------------------------------------------------------

    async def ResolveEndpoints(
        self,
        request: sidecar_pb2.ResolveEndpointsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> sidecar_pb2.ResolveEndpointsResponse | None:
        def resolve() -> sidecar_pb2.ResolveEndpointsResponse:
            key = _upstream_key(request.service, request.namespace)
            wanted = _health_filter(request.health)
            problems = check_paging(request.page_size, request.page_token)
            if problems:
                raise BadRequestError([FieldViolation(p.field, p.description) for p in problems])
            state = self._state(key)
            endpoints = sorted(
                (i.to_proto() for i in state.instances if i.health in wanted), key=_endpoint_id
            )
            page = page_of(
                endpoints, _endpoint_id, page_size=request.page_size, page_token=request.page_token
            )
            return sidecar_pb2.ResolveEndpointsResponse(
                endpoints=page.items,
                version=state.version,
                stale=self._is_stale(),
                next_page_token=page.next_token,
            )

        return await self._call("ResolveEndpoints", context, resolve)

    async def PickEndpoint(
        self, request: sidecar_pb2.PickEndpointRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> sidecar_pb2.PickEndpointResponse | None:
        def pick() -> sidecar_pb2.PickEndpointResponse:
            if len(request.key) > _KEY_LIMIT:
                raise BadRequestError.one("key", f"at most {_KEY_LIMIT} characters")
            key = _upstream_key(request.service, request.namespace)
            instance, pick_id = self._router.pick(key, request.key)
            return sidecar_pb2.PickEndpointResponse(endpoint=instance.to_proto(), pick_id=pick_id)

        return await self._call("PickEndpoint", context, pick)

    async def ReportResult(
        self, request: sidecar_pb2.ReportResultRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> sidecar_pb2.ReportResultResponse | None:
        def report() -> sidecar_pb2.ReportResultResponse:
            violations = []
            if not request.pick_id:
                violations.append(FieldViolation("pick_id", "required: the pick_id of a pick"))
            latency = float(request.latency_seconds)
            if not math.isfinite(latency) or latency < 0:
                violations.append(
                    FieldViolation("latency_seconds", "must be a finite number of seconds >= 0")
                )
            if violations:
                raise BadRequestError(violations)
            # 0 means "not measured": the sidecar measures from the pick instead.
            self._router.report(request.pick_id, latency=latency or None, failed=request.failed)
            return sidecar_pb2.ReportResultResponse()

        return await self._call("ReportResult", context, report)

    async def WatchEndpoints(
        self,
        request: sidecar_pb2.WatchEndpointsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[sidecar_pb2.WatchEndpointsResponse]:
        def open_watch() -> UpstreamKey:
            key = _upstream_key(request.service, request.namespace)
            self._state(key)
            if self._watches >= self._max_watches:
                raise TooManyWatchesError(self._max_watches)
            return key

        key = await self._call("WatchEndpoints", context, open_watch)
        if key is None:
            return
        self._watches += 1
        try:
            last: tuple[object, bool] | None = None
            while not self._closing:
                generation = self._cache.generation(key)
                state = self._state(key)
                stale = self._is_stale()
                if last is None or last[0] is not state or last[1] != stale:
                    last = (state, stale)
                    for response in _endpoint_set(state, stale):
                        yield response
                await self._cache.wait_changed(key, generation)
            _fail("WatchEndpoints", context, ShuttingDownError())
        finally:
            self._watches -= 1

    def _state(self, key: UpstreamKey) -> UpstreamState:
        state = self._cache.get(key)
        if state is None:
            raise UnknownServiceError(key[1], key[0], self._router.names(), "an upstream")
        return state

    # -- health -------------------------------------------------------------------

    async def UpdateTTL(
        self, request: sidecar_pb2.UpdateTTLRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> sidecar_pb2.UpdateTTLResponse | None:
        def update() -> sidecar_pb2.UpdateTTLResponse:
            violations = []
            if not request.service:
                violations.append(FieldViolation("service", "required: a local service's name"))
            status = HealthStatus.from_proto(request.status)
            if request.status not in [s.to_proto() for s in _TTL_STATUSES]:
                violations.append(FieldViolation("status", "must be PASSING, WARNING or CRITICAL"))
            if len(request.note) > _NOTE_LIMIT:
                violations.append(FieldViolation("note", f"at most {_NOTE_LIMIT} characters"))
            if violations:
                raise BadRequestError(violations)
            self._update_ttl(
                request.service, request.instance_id, request.check, status, request.note
            )
            return sidecar_pb2.UpdateTTLResponse()

        return await self._call("UpdateTTL", context, update)


def _endpoint_id(endpoint: registry_pb2.Instance) -> str:
    return endpoint.id


def _endpoint_set(
    state: UpstreamState, stale: bool
) -> Iterator[sidecar_pb2.WatchEndpointsResponse]:
    """The whole endpoint set of ``state``: one response, or several under
    ``WATCH_RESPONSE_BYTES`` each, all but the last marked ``more``."""
    chunks = list(chunked((i.to_proto() for i in state.instances), WATCH_RESPONSE_BYTES))
    for n, chunk in enumerate(chunks, 1):
        yield sidecar_pb2.WatchEndpointsResponse(
            endpoints=chunk, version=state.version, stale=stale, more=n < len(chunks)
        )


def _upstream_key(service: str, namespace: str) -> UpstreamKey:
    violations = []
    if not service:
        violations.append(FieldViolation("service", "required: the name of an upstream service"))
    elif not _DNS_LABEL.match(service):
        violations.append(
            FieldViolation("service", f"{excerpt(service)} is not a service name (a DNS label)")
        )
    if namespace and not _DNS_LABEL.match(namespace):
        violations.append(
            FieldViolation("namespace", f"{excerpt(namespace)} is not a namespace (a DNS label)")
        )
    if violations:
        raise BadRequestError(violations)
    return (namespace or "default", service)


def _health_filter(values: Sequence[int]) -> frozenset[HealthStatus]:
    if not values:
        return frozenset(_DEFAULT_HEALTH)
    wanted = set()
    for i, value in enumerate(values):
        if value == registry_pb2.HEALTH_STATUS_UNSPECIFIED or value not in _KNOWN_HEALTH:
            raise BadRequestError.one(f"health[{i}]", f"{value} is not a health status")
        wanted.add(HealthStatus.from_proto(value))
    return frozenset(wanted)


_KNOWN_HEALTH = frozenset(h.to_proto() for h in HealthStatus)


def _fail(method: str, context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> None:
    if code_for(exc) is None:
        logger.error("local API %s failed", method, exc_info=exc)
    end_call(context, exc)


class LocalApiServer:
    """The gRPC server on the local API address."""

    def __init__(
        self,
        servicer: SidecarServicer,
        *,
        relay: RelayBroker | None = None,
        namespace_of: Callable[[str], str] = lambda _service: "",
    ) -> None:
        self._servicer = servicer
        self._relay = relay
        self._namespace_of = namespace_of
        self._messaging: MessagingServicer | None = None
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._server: grpc.aio.Server | None = None
        self.address = ""

    async def start(self, listen: str, *, guard: Guard | None = None) -> str:
        """Binds ``listen`` (port 0: any free port) and serves; returns the bound
        address. With a ``guard`` (a listener off loopback) it serves its TLS and
        checks every call's token."""
        host, _ = split_hostport(listen, allow_zero=True)
        interceptors: list[grpc.aio.ServerInterceptor] = [MalformedRequestGuard()]  # type: ignore[type-arg]
        if guard is not None:
            needs = local_api_needs(self._namespace_of)
            interceptors.append(TokenInterceptor(guard.tokens, needs))
        server = grpc.aio.server(
            options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 4 << 20)],
            interceptors=interceptors,
        )
        sidecar_pb2_grpc.add_SidecarServiceServicer_to_server(self._servicer, server)  # type: ignore[no-untyped-call]
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        services = [SIDECAR_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME]
        if self._relay is not None:
            self._messaging = add_messaging(server, self._relay, lambda: self._server is None)
            services.append(MESSAGING_SERVICE)
        reflection.enable_server_reflection(services, server)
        try:
            if guard is not None and guard.tls is not None:
                port = server.add_secure_port(listen, guard.tls.grpc_credentials())
            else:
                port = server.add_insecure_port(listen)
        except RuntimeError as exc:
            raise StartupError(f"local_api: cannot listen on {listen}: {exc}") from None
        if port == 0:
            raise StartupError(f"local_api: cannot listen on {listen}: address in use or invalid")
        self._server = server
        await server.start()
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        for service in ("", SIDECAR_SERVICE):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        logger.info(
            "local API serving on %s%s",
            self.address,
            "" if guard is None else f" ({'TLS' if guard.tls else 'plaintext'}, tokens checked)",
        )
        return self.address

    async def stop(self, grace: float = 1.0) -> None:
        """NOT_SERVING, end the watches, then stop within ``grace`` seconds. Idempotent."""
        self._servicer.close()
        server, self._server = self._server, None
        if server is None:
            return
        if self._messaging is not None:
            await self._messaging.drain()
        await self._health.enter_graceful_shutdown()
        await server.stop(grace)
        logger.info("local API stopped")
