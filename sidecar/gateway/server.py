"""The gateway's listener: the sidecar's HTTP data plane with a front.

The listener is an :class:`~sidecar.proxy.http.HttpListener` whose every
request first goes to the :class:`GatewayFront`: it reads the request's head
into a :class:`~sidecar.gateway.request.GatewayRequest`, finds the route
(404 when none matches), runs the route's plugins (authentication, limits,
the cache, transformations; each may answer instead), writes the head to
forward (the path rewritten, headers set and removed, the consumer's
identity added) and hands the request to the route's
:class:`RouteForwarding` — its target (the service's endpoints and balancer),
its connection pool and its policy (timeouts, retries, circuit breaking,
outlier ejection). From there the exchange runs exactly as in a sidecar.

Plugins that need no I/O run in the data plane's callbacks; the first one
that has to wait (a JWKS fetch, the shared rate-limit store, a cache miss
another request is already fetching) moves the rest of the request's checks
into a task the listener owns, which the client going away cancels.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sidecar.config import ProxyPolicy
from sidecar.gateway.request import GatewayRequest, Headers, LocalResponse
from sidecar.proxy._target import Target
from sidecar.proxy.http import HttpListener
from sidecar.proxy.http._exchange import Exchange, ResponseTap
from sidecar.proxy.http._parse import IDEMPOTENT
from sidecar.proxy.http._pool import UpstreamPool

__all__ = [
    "GatewayFront",
    "GatewayListener",
    "Plan",
    "RouteForwarding",
    "Step",
]

logger = logging.getLogger(__name__)

#: idle pooled connections kept per endpoint address, per route
MAX_IDLE_PER_ENDPOINT = 64
#: Header fields the framing of the forwarded request depends on: written by
#: the data plane, never by a plugin.
_FRAMING = frozenset({"content-length", "transfer-encoding"})
_CRLF = b"\r\n"

#: A check of a request: None lets it go on, a LocalResponse answers it.
Step = Callable[[GatewayRequest], Awaitable[LocalResponse | None] | LocalResponse | None]


class RouteForwarding:
    """Where one route (or one entry of its split) forwards, and how: its own
    target, pool and policy, as an HTTP listener has them."""

    __slots__ = (
        "idempotent",
        "max_retries",
        "name",
        "per_try_timeout",
        "policy",
        "pool",
        "retry_on",
        "target",
        "timeout",
    )

    def __init__(self, name: str, target: Target, policy: ProxyPolicy) -> None:
        self.name = name
        self.target = target
        self.policy = policy
        self.pool = UpstreamPool(
            target,
            max_idle=MAX_IDLE_PER_ENDPOINT,
            idle_timeout=policy.idle_timeout,
            head_limit=policy.max_response_headers_kb * 1024,
            max_headers=policy.max_headers,
        )
        self.timeout = policy.timeout
        self.per_try_timeout = policy.per_try_timeout or 0.0
        self.retry_on = frozenset(policy.retry_on)
        self.max_retries = policy.retries
        self.idempotent = IDEMPOTENT | {b"TRACE"} if policy.allow_trace else IDEMPOTENT

    def addresses(self) -> set[tuple[str, int]]:
        dial = self.target.dial
        return {dial(endpoint) for endpoint in self.target.balancer.endpoints}


@dataclass
class Plan:
    """What the gateway does with the requests of one route: built from its
    configuration by ``sidecar.gateway.plugins``."""

    name: str
    #: the forwardings of the route, with their weights (one entry: no split)
    forwardings: Sequence[tuple[RouteForwarding, int]]
    #: checks in order (authentication, then limits, …); the first answer wins
    steps: Sequence[Step] = ()
    #: the path (and query) sent upstream, from the request's
    rewrite: Callable[[GatewayRequest], str] | None = None
    #: header fields a client may not send (the gateway sets them: identity)
    strip: frozenset[str] = frozenset()
    #: changes to the forwarded request's headers, once the steps let it through
    on_forward: Sequence[Callable[[GatewayRequest], None]] = ()
    #: header fields added to the response (from the request: rate-limit state, CORS)
    response_headers: Sequence[Callable[[GatewayRequest], Sequence[tuple[str, str]]]] = ()
    #: a redirect or any answer that needs no upstream
    answer: LocalResponse | None = None
    pick: Callable[[Sequence[tuple[RouteForwarding, int]]], RouteForwarding] | None = None


class _Tap:
    """Adds the route's response header fields as the response head goes by."""

    __slots__ = ("fields",)

    def __init__(self, fields: list[bytes]) -> None:
        self.fields = fields

    def head(self, status: int, out: list[bytes]) -> None:
        out += self.fields

    def body(self, data: bytes) -> None:
        pass  # nothing to keep: headers only

    def complete(self) -> None:
        pass  # nothing to finish: headers only

    def abandon(self) -> None:
        pass  # nothing to undo: headers only


@dataclass
class GatewayFront:
    """Routes each request and runs its route's plan (see the module docstring)."""

    #: finds the plan of a request (None: no route matches)
    lookup: Callable[[GatewayRequest], Plan | None]
    listener: GatewayListener | None = None
    _pending: dict[Exchange, asyncio.Task[None]] = field(default_factory=dict)

    # -- the data plane's calls --------------------------------------------------------

    def admit(self, ex: Exchange) -> None:
        request, framing = _request(ex)
        plan = self.lookup(request)
        if plan is None:
            self._answer(
                ex,
                LocalResponse.error(
                    404,
                    "no_route",
                    f"no route matches {request.method} {request.host}{request.path}",
                ),
            )
            return
        request.route = plan.name
        if plan.answer is not None:
            self._answer(ex, plan.answer)
            return
        for index, step in enumerate(plan.steps):
            outcome = step(request)
            if isinstance(outcome, LocalResponse):
                self._answer(ex, outcome, request, plan)
                return
            if outcome is not None:  # it has to wait: the rest goes on in a task
                listener = self.listener
                assert listener is not None
                task = listener.spawn(
                    "gateway checks", self._finish(ex, request, framing, plan, outcome, index + 1)
                )
                self._pending[ex] = task
                task.add_done_callback(lambda _t, ex=ex: self._pending.pop(ex, None))  # type: ignore[misc]
                return
        self._forward(ex, request, framing, plan)

    @property
    def pending(self) -> int:
        """Requests whose checks are waiting."""
        return len(self._pending)

    def cancelled(self, ex: Exchange) -> None:
        task = self._pending.pop(ex, None)
        if task is not None:
            task.cancel()

    # -- steps that wait ------------------------------------------------------------------

    async def _finish(
        self,
        ex: Exchange,
        request: GatewayRequest,
        framing: list[tuple[str, str]],
        plan: Plan,
        waiting: Awaitable[LocalResponse | None],
        rest: int,
    ) -> None:
        outcome: LocalResponse | None
        try:
            outcome = await waiting
            for step in plan.steps[rest:]:
                if outcome is not None:
                    break
                result = step(request)
                outcome = await result if isinstance(result, Awaitable) else result
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("gateway route %s: a check failed", plan.name)
            outcome = LocalResponse.error(500, "gateway_error", "a check of the request failed")
        if ex.response_done or ex.down.closing:
            return
        if outcome is not None:
            self._answer(ex, outcome, request, plan)
        else:
            self._forward(ex, request, framing, plan)

    # -- answers ----------------------------------------------------------------------------

    def _answer(
        self,
        ex: Exchange,
        response: LocalResponse,
        request: GatewayRequest | None = None,
        plan: Plan | None = None,
    ) -> None:
        fields = [_field(name, value) for name, value in response.headers]
        if request is not None and plan is not None:
            for extra in plan.response_headers:
                fields += (_field(n, v) for n, v in extra(request))
        ex.answer(response.status, fields, response.body)

    def _forward(
        self,
        ex: Exchange,
        request: GatewayRequest,
        framing: list[tuple[str, str]],
        plan: Plan,
    ) -> None:
        forwardings = plan.forwardings
        if len(forwardings) == 1:
            fw = forwardings[0][0]
        else:
            assert plan.pick is not None
            fw = plan.pick(forwardings)
        for change in plan.on_forward:
            change(request)
        target = plan.rewrite(request) if plan.rewrite is not None else request.target
        ex.head = _head(ex, request, framing, target)
        fields: list[bytes] = []
        for extra in plan.response_headers:
            fields += (_field(n, v) for n, v in extra(request))
        if fields:
            tap: ResponseTap = _Tap(fields)
            ex.tap = tap
        ex.forward(fw)


def _request(ex: Exchange) -> tuple[GatewayRequest, list[tuple[str, str]]]:
    """The request as plugins see it, and its framing fields (which they do not)."""
    lines = ex.head.split(_CRLF)
    headers = Headers()
    framing: list[tuple[str, str]] = []
    host = ""
    for line in lines[1:]:
        if not line:
            break
        name, _, value = line.partition(b":")
        key = name.decode("latin-1").lower()
        text = value.strip().decode("latin-1")
        if key in _FRAMING:
            framing.append((key, text))
            continue
        if key == "host" and not host:
            host = text
        headers.add(key, text)
    path, _, query = ex.url.decode("latin-1").partition("?")
    down = ex.down
    ssl_object = down.transport.get_extra_info("ssl_object")
    peer = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    request = GatewayRequest(
        method=ex.method.decode("latin-1"),
        host=_host_only(host),
        path=path,
        query=query,
        headers=headers,
        scheme="https" if ssl_object is not None else "http",
        client_ip=down.client_ip.decode("latin-1"),
        peer_certificate=peer,
        received=time.monotonic(),
    )
    return request, framing


def _field(name: str, value: str) -> bytes:
    return f"{name}: {value}\r\n".encode("latin-1", "replace")


def _host_only(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _head(
    ex: Exchange, request: GatewayRequest, framing: list[tuple[str, str]], target: str
) -> bytes:
    """The head to forward: the request line with ``target``, the headers as the
    plugins left them, and the framing the data plane decided."""
    parts = [b"%s %s HTTP/1.1\r\n" % (ex.method, target.encode("latin-1", "replace"))]
    parts += (_field(name, value) for name, value in request.headers)
    parts += (_field(name, value) for name, value in framing)
    parts.append(_CRLF)
    return b"".join(parts)


class GatewayListener(HttpListener):
    """An HTTP listener whose requests go through a :class:`GatewayFront`, with
    a TLS context when the gateway serves HTTPS. ``routes()`` gives the
    forwardings in use (their pools are swept and closed with the listener's)."""

    def __init__(
        self,
        name: str,
        listen: str,
        front: GatewayFront,
        policy: ProxyPolicy,
        *,
        routes: Callable[[], Sequence[RouteForwarding]],
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        # The listener's own target only counts what it answers itself (404s,
        # refusals); requests go to the routes' targets.
        super().__init__(name, listen, Target.fixed(name, policy, []), policy)
        self.front = front
        self.ssl_context = ssl_context
        self.routes = routes
        front.listener = self

    def _sweep(self) -> None:
        super()._sweep()
        now = time.monotonic()
        for fw in self.routes():
            fw.pool.sweep(now)
            if fw.pool.connections:
                fw.pool.keep_only(fw.addresses())

    async def drain(self, grace: float) -> None:
        await super().drain(grace)
        for fw in self.routes():
            fw.pool.abort_all()

    def status(self) -> dict[str, Any]:
        status = super().status()
        status["tls"] = self.ssl_context is not None
        return status
