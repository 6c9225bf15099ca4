"""A proxy target: where one listener forwards, and the resilience around it.

A :class:`Target` is an upstream service (its endpoints balanced by the
service's balancer, shared with the local API) or, for an inbound listener,
the one local application. Every listener, whatever its protocol, goes
through the same steps::

    target.begin_request()            # circuit: max_requests (CircuitOpenError)
    try:
        endpoint = target.pick(key, exclude=tried)   # NoEndpointsError
        host, port = target.dial(endpoint)
        target.begin_pending()        # circuit: max_pending, while connecting
        ...                           # connect: target.open_connection() once connected
        target.release(endpoint, latency=..., outcome=Outcome.SUCCESS)
        # a retry: only if target.allow_retry() (the retry budget); then target.end_retry()
    finally:
        target.end_request()

``release`` is called exactly once per pick; it feeds the balancer
(in-flight counts, latency) and outlier detection (consecutive failures eject
an endpoint for ``base * times ejected``, at most ``max_ejection``, never
more than ``max_ejected_percent`` of the endpoints).
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

from sdk import HealthStatus
from sdk.balancer import Balancer, Endpoint, NoEndpointsError, make_balancer
from sidecar.config import INBOUND_PORT_KEY, ProxyPolicy
from sidecar.proxy._stats import TargetStats

__all__ = ["CircuitOpenError", "Outcome", "Target"]


class Outcome(enum.Enum):
    """How one attempt on one endpoint ended, as outlier detection sees it."""

    SUCCESS = "success"
    #: the endpoint refused or did not answer the connect: it never saw the request
    CONNECT_FAILURE = "connect_failure"
    #: the connection was reset or closed mid-request
    RESET = "reset"
    #: no answer within the (per-try) timeout
    TIMEOUT = "timeout"
    #: the endpoint answered with a server error (HTTP 5xx, gRPC UNAVAILABLE …)
    SERVER_ERROR = "server_error"
    #: the client went away or the proxy stopped: says nothing about the endpoint
    CANCELLED = "cancelled"

    @property
    def failed(self) -> bool:
        return self is not Outcome.SUCCESS and self is not Outcome.CANCELLED


class CircuitOpenError(Exception):
    """A circuit-breaker limit of a target is reached: fail fast, do not queue."""

    def __init__(self, target: str, limit: str, value: int) -> None:
        super().__init__(f"{target}: circuit open: {limit} {value} reached")
        self.target = target
        self.limit = limit
        self.value = value


class Target:
    """One upstream (or inbound app) as the proxy listeners see it.

    Not thread-safe: a target belongs to the sidecar's event loop.
    """

    def __init__(
        self,
        name: str,
        policy: ProxyPolicy,
        balancer: Balancer,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.policy = policy
        self.balancer = balancer
        self.stats = TargetStats()
        self._clock = clock
        self._breaker = policy.circuit_breaker
        self._outlier = policy.outlier
        self._budget = policy.retry_budget
        #: upstream connections open, callers waiting for one, requests in flight
        self.connections = 0
        self.pending = 0
        self.requests = 0
        self.retries_active = 0
        self._failures: dict[str, int] = {}
        self._times_ejected: dict[str, int] = {}
        self._ids = frozenset(e.id for e in balancer.endpoints)
        self._on_removed: list[Callable[[frozenset[str]], None]] = []
        #: For an upstream target: mutual TLS to remote sidecars (set by the data
        #: plane; sidecar.proxy._mtls.MeshTls) and the service dialled
        #: (``NAMESPACE/SERVICE``).
        self.mesh: Any = None
        self.service = ""

    @classmethod
    def fixed(
        cls,
        name: str,
        policy: ProxyPolicy,
        addresses: Sequence[tuple[str, int]],
        *,
        balancer: str = "round_robin",
        clock: Callable[[], float] = time.monotonic,
    ) -> Target:
        """A target over fixed addresses (an inbound app; tests), ids ``host:port``."""
        target = cls(name, policy, make_balancer(balancer, clock=clock), clock=clock)
        target.update([fixed_endpoint(host, port) for host, port in addresses])
        return target

    # -- endpoints ----------------------------------------------------------------------

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """Replaces the endpoints (listeners hear of removed ones)."""
        self.balancer.update(endpoints)
        self.sync()

    def sync(self) -> None:
        """Call after the shared balancer was updated elsewhere: tells listeners
        which endpoints went away, and forgets their outlier state."""
        ids = frozenset(e.id for e in self.balancer.endpoints)
        removed = self._ids - ids
        self._ids = ids
        if removed:
            for endpoint_id in removed:
                self._failures.pop(endpoint_id, None)
                self._times_ejected.pop(endpoint_id, None)
            for callback in self._on_removed:
                callback(removed)

    def on_removed(self, callback: Callable[[frozenset[str]], None]) -> None:
        """``callback(ids)`` after endpoints are removed (drain connections to them)."""
        self._on_removed.append(callback)

    def pick(self, key: str | bytes | None = None, *, exclude: Collection[str] = ()) -> Endpoint:
        """An endpoint for one attempt, avoiding ``exclude`` (tried already) when
        another may be picked. Raises NoEndpointsError. Counts one in flight
        on the endpoint: :meth:`release` it exactly once."""
        try:
            endpoint = self.balancer.pick(key)
            if exclude and endpoint.id in exclude:
                # One more pick usually finds another; with key hashing or a
                # single endpoint it cannot, and the same endpoint is retried.
                for _ in range(min(len(self._ids), 3)):
                    self.balancer.release(endpoint)
                    endpoint = self.balancer.pick(None)
                    if endpoint.id not in exclude:
                        break
        except NoEndpointsError:
            self.stats.errors["no_endpoints"] += 1
            raise
        return endpoint

    def dial_tls(self, endpoint: Endpoint) -> Any:
        """The ``ssl.SSLContext`` to dial ``endpoint`` with (mutual TLS to a
        sidecar's inbound listener), or None for plaintext; raises
        ConnectionRefusedError when TLS is needed and cannot be had yet."""
        mesh = self.mesh
        if mesh is None:
            return None
        return mesh.client_context(endpoint.metadata)

    def check_tls(self, transport: Any) -> None:
        """Raises ConnectionRefusedError unless a TLS server dialled is this target's
        service (see sidecar.proxy._mtls)."""
        if self.mesh is not None:
            self.mesh.check_server(transport, self.service)

    @staticmethod
    def dial(endpoint: Endpoint) -> tuple[str, int]:
        """Where to connect for ``endpoint``: its sidecar's inbound listener if it has one."""
        port = endpoint.metadata.get(INBOUND_PORT_KEY)
        if port is not None and port.isdigit() and 0 < int(port) < 65536:
            return endpoint.address, int(port)
        return endpoint.address, endpoint.port

    def release(self, endpoint: Endpoint, *, latency: float, outcome: Outcome) -> None:
        """Ends one attempt: feeds the balancer, the latency histogram and outlier detection."""
        self.balancer.release(endpoint, latency=latency, failed=outcome.failed)
        if outcome is Outcome.CANCELLED:
            return
        self.stats.latency.observe(latency)
        if outcome is Outcome.SUCCESS:
            if self._failures.get(endpoint.id):
                self._failures[endpoint.id] = 0
            return
        self.stats.errors[outcome.value] += 1
        threshold = self._outlier.consecutive_failures
        if not threshold or endpoint.id not in self._ids:
            return  # off, or the endpoint was removed while the attempt ran
        failures = self._failures.get(endpoint.id, 0) + 1
        self._failures[endpoint.id] = failures
        if failures >= threshold:
            self._maybe_eject(endpoint.id)

    def _maybe_eject(self, endpoint_id: str) -> None:
        ejected = self.balancer.ejected
        if endpoint_id in ejected or endpoint_id not in self._ids:
            return
        percent = self._outlier.max_ejected_percent
        allowed = max(1, math.floor(len(self._ids) * percent / 100)) if percent else 0
        if len(ejected) + 1 > allowed:
            return
        times = self._times_ejected.get(endpoint_id, 0) + 1
        self._times_ejected[endpoint_id] = times
        duration = min(self._outlier.base_ejection * times, self._outlier.max_ejection)
        self.balancer.eject(endpoint_id, self._clock() + duration)
        self._failures[endpoint_id] = 0
        self.stats.ejections += 1

    # -- circuit breaking -------------------------------------------------------------------

    def begin_request(self) -> None:
        """One request (a TCP connection, for tcp) starts; CircuitOpenError past max_requests."""
        if self.requests >= self._breaker.max_requests:
            self.stats.errors["circuit_open"] += 1
            raise CircuitOpenError(self.name, "max_requests", self._breaker.max_requests)
        self.requests += 1
        self.stats.active += 1

    def end_request(self) -> None:
        self.requests -= 1
        self.stats.active -= 1
        self.stats.requests += 1

    def begin_pending(self) -> None:
        """A caller starts waiting for an upstream connection; CircuitOpenError past max_pending."""
        if self.pending >= self._breaker.max_pending:
            self.stats.errors["circuit_open"] += 1
            raise CircuitOpenError(self.name, "max_pending", self._breaker.max_pending)
        self.pending += 1

    def end_pending(self) -> None:
        self.pending -= 1

    def can_open_connection(self) -> bool:
        return self.connections < self._breaker.max_connections

    def open_connection(self) -> None:
        """An upstream connection is about to open; CircuitOpenError past max_connections."""
        if self.connections >= self._breaker.max_connections:
            self.stats.errors["circuit_open"] += 1
            raise CircuitOpenError(self.name, "max_connections", self._breaker.max_connections)
        self.connections += 1

    def close_connection(self) -> None:
        self.connections -= 1

    @property
    def circuit_open(self) -> bool:
        """True while any limit is reached (new work would fail fast)."""
        b = self._breaker
        return (
            self.requests >= b.max_requests
            or self.pending >= b.max_pending
            or self.connections >= b.max_connections
        )

    # -- retry budget ---------------------------------------------------------------------------

    def allow_retry(self) -> bool:
        """Whether one more retry fits the budget; if True, call :meth:`end_retry` after it."""
        limit = max(self._budget.min_retries, self._budget.percent / 100 * self.requests)
        if self.retries_active >= limit:
            self.stats.retries_refused += 1
            return False
        self.retries_active += 1
        self.stats.retries += 1
        return True

    def end_retry(self) -> None:
        self.retries_active -= 1

    # -- reporting ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        ejected = self.balancer.ejected
        return {
            "name": self.name,
            "endpoints": len(self._ids),
            "ejected": sorted(ejected),
            "panicking": self.balancer.panicking,
            "circuit": {
                "open": self.circuit_open,
                "connections": self.connections,
                "max_connections": self._breaker.max_connections,
                "pending": self.pending,
                "max_pending": self._breaker.max_pending,
                "requests": self.requests,
                "max_requests": self._breaker.max_requests,
            },
            "times_ejected": {k: v for k, v in sorted(self._times_ejected.items()) if v},
            "stats": self.stats.as_dict(),
        }


def fixed_endpoint(host: str, port: int) -> Endpoint:
    """An always-passing endpoint for a fixed address, with id ``host:port``."""
    return Endpoint(id=f"{host}:{port}", address=host, port=port, health=HealthStatus.PASSING)
