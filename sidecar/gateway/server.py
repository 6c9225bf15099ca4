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
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sidecar.config import ProxyPolicy
from sidecar.gateway.request import (
    ANSWER_FRAMING,
    Collector,
    GatewayRequest,
    Headers,
    LocalResponse,
)
from sidecar.proxy._target import Target
from sidecar.proxy.http import HttpListener
from sidecar.proxy.http._exchange import BODY_KEEP, Exchange
from sidecar.proxy.http._parse import IDEMPOTENT
from sidecar.proxy.http._pool import UpstreamPool

__all__ = [
    "GatewayFront",
    "GatewayListener",
    "Observer",
    "Plan",
    "RouteForwarding",
    "Routed",
    "Step",
    "not_found",
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
        "endpoints",
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
        #: the fixed endpoints it was made for (empty: a registry service's)
        self.endpoints: tuple[str, ...] = ()

    def addresses(self) -> set[tuple[str, int]]:
        dial = self.target.dial
        return {dial(endpoint) for endpoint in self.target.balancer.endpoints}


@dataclass
class Plan:
    """What the gateway does with the requests of one route: built from its
    configuration by ``sidecar.gateway.plugins``.

    A step returns None (go on), a LocalResponse (answer it), or an awaitable
    of one of those when it has to wait: write steps as plain functions that
    return a coroutine only when they must, so that a request whose checks
    need no I/O never leaves the data plane's callbacks.
    """

    name: str
    #: checks in order (authentication, then limits, the cache, …); the first answer wins
    steps: Sequence[Step] = ()
    #: the path (and query) sent upstream, from the request's
    rewrite: Callable[[GatewayRequest], str] | None = None
    #: changes to the forwarded request, once the steps let it through
    on_forward: Sequence[Callable[[GatewayRequest], None]] = ()
    #: header fields added to every answer of the route, the upstream's and the
    #: gateway's own (rate-limit state, CORS, ``x-cache``)
    response_headers: Sequence[Callable[[GatewayRequest], Sequence[tuple[str, str]]]] = ()
    #: changes to the upstream's response head: (status, fields) → None, editing fields
    on_response: Sequence[Callable[[GatewayRequest, int, list[tuple[str, str]]], None]] = ()
    #: the route answers every request itself (a redirect)
    answer: Callable[[GatewayRequest], LocalResponse] | None = None
    #: a step reads the request's body (``request.body``), of at most this many
    #: bytes (413 past it); 0: none does, the body streams through
    body_limit: int = 0
    #: rewrites a response's body: (request, status, fields) → whether to hold this
    #: response, then (body) → the new body (None: unchanged); responses over
    #: ``response_body_limit`` bytes pass unchanged
    response_body: (
        tuple[
            Callable[[GatewayRequest, int, list[tuple[str, str]]], bool],
            Callable[[bytes], bytes | None],
        ]
        | None
    ) = None
    response_body_limit: int = 0


class Observer(Protocol):
    """Sees every request end (metrics, the access log)."""

    def done(
        self, request: GatewayRequest, status: int, sent: int, *, upstream: bool, complete: bool
    ) -> None: ...


@dataclass
class Routed:
    """A request's route: its plan and, unless the plan answers, where it goes."""

    plan: Plan
    forwarding: RouteForwarding | None


class _Tap:
    """One forwarded response as it goes by: the route's edits to its head, a
    copy for the cache, and the observer told how it ended."""

    __slots__ = (
        "chunks",
        "collector",
        "ex",
        "fields",
        "front",
        "holds",
        "plan",
        "request",
        "sent",
        "size",
        "status_line",
    )

    def __init__(
        self, front: GatewayFront, ex: Exchange, request: GatewayRequest, plan: Plan
    ) -> None:
        self.front = front
        self.ex = ex
        self.request = request
        self.plan = plan
        # The tap owns the copy from here on.
        self.collector: Collector | None = request.collector
        request.collector = None
        self.sent = 0
        #: holding the response to rewrite its body: what came so far
        self.holds = False
        self.chunks: list[bytes] = []
        self.size = 0
        self.fields: list[tuple[str, str]] = []
        self.status_line = b""

    def head(self, status: int, out: list[bytes]) -> None:
        plan = self.plan
        request = self.request
        collector = self.collector
        rewrite = plan.response_body
        if plan.on_response or collector is not None or rewrite is not None:
            fields = _fields_of(out)
            for change in plan.on_response:
                change(request, status, fields)
            if collector is not None and not collector.begin(status, fields):
                self.collector = None
            for extra in plan.response_headers:
                fields += extra(request)
            del out[1:]
            out += (_field(n, v) for n, v in fields)
            if rewrite is not None and rewrite[0](request, status, fields):
                self.holds = True
                self.fields = fields
                self.status_line = out[0]
            return
        for extra in plan.response_headers:
            out += (_field(n, v) for n, v in extra(request))

    def body(self, data: bytes) -> None:
        self.sent += len(data)
        if self.holds:
            # (the cache gets the body as it is sent: in held(), or rewritten in release())
            self.chunks.append(data)
            self.size += len(data)
            if self.size > self.plan.response_body_limit:
                self.holds = False  # too large to rewrite: it goes as it came
            return
        collector = self.collector
        if collector is not None and not collector.feed(data):
            self.collector = None

    def held(self) -> bytes:
        body = b"".join(self.chunks)
        self.chunks = []
        self._collect(body)
        return body

    def _collect(self, body: bytes) -> None:
        collector = self.collector
        if collector is not None and body and not collector.feed(body):
            self.collector = None

    def release(self) -> bytes:
        """The held response, its body rewritten, with its new length."""
        body = b"".join(self.chunks)
        self.chunks = []
        rewrite = self.plan.response_body
        assert rewrite is not None
        new = rewrite[1](body)
        if new is not None:
            body = new
        self._collect(body)
        self.sent = len(body)
        fields = [
            _field(n, v) for n, v in self.fields if n not in ("content-length", "transfer-encoding")
        ]
        return b"".join(
            (self.status_line, *fields, b"content-length: %d\r\n\r\n" % len(body), body)
        )

    def complete(self) -> None:
        collector = self.collector
        if collector is not None:
            self.collector = None
            collector.finish()
        self.front.observe(self.request, self.ex.status, self.sent, upstream=True, complete=True)

    def abandon(self) -> None:
        collector = self.collector
        if collector is not None:
            self.collector = None
            collector.abandon()
        # (a response the data plane answered itself, 502 or 504, says its status too)
        ex = self.ex
        self.front.observe(self.request, ex.status, self.sent, upstream=True, complete=False)


class _Observed:
    """The tap of a forwarded response a route does nothing with: it only
    counts the body sent, for the observer told how it ended."""

    __slots__ = ("ex", "front", "request", "sent")

    holds = False

    def __init__(self, front: GatewayFront, ex: Exchange, request: GatewayRequest) -> None:
        self.front = front
        self.ex = ex
        self.request = request
        self.sent = 0

    def head(self, status: int, out: list[bytes]) -> None:
        return  # the route changes nothing of a response: its head goes as it is

    def body(self, data: bytes) -> None:
        self.sent += len(data)

    def held(self) -> bytes:  # pragma: no cover - it never holds
        return b""

    def release(self) -> bytes:  # pragma: no cover - it never holds
        return b""

    def complete(self) -> None:
        observer = self.front.observer
        if observer is not None:
            observer.done(self.request, self.ex.status, self.sent, upstream=True, complete=True)

    def abandon(self) -> None:
        ex = self.ex
        self.front.observe(self.request, ex.status, self.sent, upstream=True, complete=False)


@dataclass
class GatewayFront:
    """Routes each request and runs its route's plan (see the module docstring)."""

    #: finds the route of a request (None: no route matches)
    lookup: Callable[[GatewayRequest], Routed | None]
    #: header fields no client may send (the gateway sets them: the consumer's identity)
    strip: frozenset[str] = frozenset()
    observer: Observer | None = None
    listener: GatewayListener | None = None
    _pending: dict[Exchange, asyncio.Task[None]] = field(default_factory=dict)
    #: requests whose checks wait for their body: what they had when they stopped
    _awaiting: dict[Exchange, tuple[GatewayRequest, list[tuple[str, str]], Routed]] = field(
        default_factory=dict
    )

    # -- the data plane's calls --------------------------------------------------------

    def admit(self, ex: Exchange) -> None:
        request, framing = _request(ex, self.strip)
        routed = self.lookup(request)
        if routed is None:
            self._answer(ex, request, not_found(request), None)
            return
        plan = routed.plan
        request.route = plan.name
        if plan.answer is not None:
            self._answer(ex, request, plan.answer(request), plan)
            return
        if plan.body_limit and _has_body(framing):
            if not ex.complete and ex.body_len <= plan.body_limit:
                # The checks read the body: they run once it is here (body_ready).
                ex.hold = plan.body_limit
                self._awaiting[ex] = (request, framing, routed)
                return
            if not self._take_body(ex, request, plan):
                return
        self._run(ex, request, framing, routed)

    def body_ready(self, ex: Exchange) -> None:
        waiting = self._awaiting.pop(ex, None)
        if waiting is None:
            return
        request, framing, routed = waiting
        if self._take_body(ex, request, routed.plan):
            self._run(ex, request, framing, routed)

    def _take_body(self, ex: Exchange, request: GatewayRequest, plan: Plan) -> bool:
        """The body in ``request.body``; False (answered 413) when it is over the limit."""
        if ex.body_len > plan.body_limit:
            self._answer(
                ex,
                request,
                LocalResponse.error(
                    413,
                    "body_too_large",
                    f"route {plan.name} reads request bodies of at most {plan.body_limit} bytes",
                ),
                plan,
            )
            return False
        request.body = b"".join(ex.body)
        return True

    def _run(
        self,
        ex: Exchange,
        request: GatewayRequest,
        framing: list[tuple[str, str]],
        routed: Routed,
    ) -> None:
        plan = routed.plan
        steps = plan.steps
        for index, step in enumerate(steps) if steps else ():
            outcome = step(request)
            if isinstance(outcome, LocalResponse):
                self._release(request)
                self._answer(ex, request, outcome, plan)
                return
            if outcome is not None:  # it has to wait: the rest goes on in a task
                listener = self.listener
                assert listener is not None
                task = listener.spawn(
                    "gateway checks",
                    self._finish(ex, request, framing, routed, outcome, index + 1),
                )
                self._pending[ex] = task
                task.add_done_callback(lambda _t, ex=ex: self._pending.pop(ex, None))  # type: ignore[misc]
                return
        self._forward(ex, request, framing, routed)

    @property
    def pending(self) -> int:
        """Requests whose checks are waiting."""
        return len(self._pending)

    def cancelled(self, ex: Exchange) -> None:
        self._awaiting.pop(ex, None)
        task = self._pending.pop(ex, None)
        if task is not None:
            task.cancel()

    def observe(
        self, request: GatewayRequest, status: int, sent: int, *, upstream: bool, complete: bool
    ) -> None:
        observer = self.observer
        if observer is not None:
            observer.done(request, status, sent, upstream=upstream, complete=complete)

    # -- steps that wait ------------------------------------------------------------------

    async def _finish(
        self,
        ex: Exchange,
        request: GatewayRequest,
        framing: list[tuple[str, str]],
        routed: Routed,
        waiting: Awaitable[LocalResponse | None],
        rest: int,
    ) -> None:
        plan = routed.plan
        outcome: LocalResponse | None
        try:
            try:
                outcome = await waiting
                for step in plan.steps[rest:]:
                    if outcome is not None:
                        break
                    result = step(request)
                    outcome = await result if isinstance(result, Awaitable) else result
            except asyncio.CancelledError:
                self._release(request)
                raise
            except Exception:
                logger.exception("gateway route %s: a check failed", plan.name)
                outcome = LocalResponse.error(500, "gateway_error", "a check of the request failed")
            if ex.response_done or ex.down.closing:
                self._release(request)
                return
            if outcome is not None:
                self._release(request)
                self._answer(ex, request, outcome, plan)
            else:
                self._forward(ex, request, framing, routed)
        except BaseException:
            self._release(request)
            raise

    # -- answers ----------------------------------------------------------------------------

    @staticmethod
    def _release(request: GatewayRequest) -> None:
        """The request is not forwarded: a response it was to collect is not coming."""
        collector = request.collector
        if collector is not None:
            request.collector = None
            collector.abandon()

    def _answer(
        self, ex: Exchange, request: GatewayRequest, response: LocalResponse, plan: Plan | None
    ) -> None:
        length = None
        lines = response.lines
        if lines is not None and request.method != "HEAD":
            fields = [lines]  # (written once for them: a stored response's)
        else:
            fields = []
            for name, value in response.headers:
                lower = name.lower()
                if lower in ANSWER_FRAMING:
                    if lower == "content-length" and request.method == "HEAD":
                        length = int(value)  # a stored GET's, answering a HEAD
                    continue
                fields.append(_field(name, value))
        if plan is not None and plan.response_headers:
            given: set[str] | None = None
            for extra in plan.response_headers:
                more = extra(request)
                if more:
                    if given is None:
                        given = {name.lower() for name, _ in response.headers}
                    # (a refusal may carry them already: a 429 its RateLimit-* fields)
                    fields += (_field(n, v) for n, v in more if n.lower() not in given)
        ex.answer(response.status, fields, response.body, length)
        observer = self.observer
        if observer is not None:
            observer.done(
                request, response.status, len(response.body), upstream=False, complete=True
            )

    def _forward(
        self,
        ex: Exchange,
        request: GatewayRequest,
        framing: list[tuple[str, str]],
        routed: Routed,
    ) -> None:
        plan = routed.plan
        fw = routed.forwarding
        assert fw is not None, f"route {plan.name} forwards nowhere"
        path = request.path
        query = request.query
        changed = False
        on_forward = plan.on_forward
        if on_forward:
            body = request.body
            for change in on_forward:
                change(request)
            if request.body is not body and request.body is not None:
                # A transform wrote a new body: it goes whole, with its own length.
                new = request.body
                ex.body = [new] if new else []
                ex.body_len = len(new)
                ex.chunked = False
                ex.trailers = None
                ex.replayable = len(new) <= BODY_KEEP
                framing = [("content-length", str(len(new)))]
                changed = True
        rewrite = plan.rewrite
        if rewrite is not None:
            target = rewrite(request)
            changed = changed or target != (f"{path}?{query}" if query else path)
        else:
            target = ""
            changed = changed or request.path != path or request.query != query
        if changed or request.headers.changed or _carries(ex.head, self.strip):
            ex.head = _head(ex, request, framing, target or request.target)
        # (else the head goes as the data plane wrote it: nothing was changed)
        if (
            plan.on_response
            or plan.response_headers
            or plan.response_body is not None
            or request.collector is not None
        ):
            ex.tap = _Tap(self, ex, request, plan)
        else:
            # Nothing to do with the response but to tell the observer how it ended.
            ex.tap = _Observed(self, ex, request)
        ex.forward(fw)


def _has_body(framing: list[tuple[str, str]]) -> bool:
    for name, value in framing:
        if name == "transfer-encoding" or (name == "content-length" and value.strip() != "0"):
            return True
    return False


def not_found(request: GatewayRequest) -> LocalResponse:
    """The answer when no route takes a request: 404 with a JSON body."""
    return LocalResponse.error(
        404, "no_route", f"no route matches {request.method} {request.host}{request.path}"
    )


def _fields_of(out: list[bytes]) -> list[tuple[str, str]]:
    """The header fields of a response head being written (after its status line)."""
    fields = []
    for line in b"".join(out[1:]).split(_CRLF):
        if line:
            name, _, value = line.partition(b":")
            fields.append((name.decode("latin-1").lower(), value.strip().decode("latin-1")))
    return fields


def _request(ex: Exchange, strip: frozenset[str]) -> tuple[GatewayRequest, list[tuple[str, str]]]:
    """The request as plugins see it (its header fields, without those in
    ``strip``, read only when a route or plugin asks), and its framing fields
    (which they do not see)."""
    head = ex.head
    known = _STRIPS.get(strip)
    if known is None:
        known = _strip_state(strip)
    # (whether the head carries a field in ``strip``: asked when it is forwarded)
    headers = Headers.from_head(head, known[0])
    if ex.chunked:
        framing = [("transfer-encoding", "chunked")]
    elif ex.content_length is not None:
        framing = [("content-length", str(int(ex.content_length)))]
    else:
        framing = []
    path, _, query = ex.url.decode("latin-1").partition("?")
    raw_host = ex.host
    host = _HOSTS.get(raw_host)
    if host is None:
        host = _host_only(raw_host.decode("latin-1"))
        if len(_HOSTS) >= _MAX_HOSTS:
            _HOSTS.clear()
        _HOSTS[raw_host] = host
    down = ex.down
    ssl_object = down.transport.get_extra_info("ssl_object")
    method = _METHODS.get(ex.method) or ex.method.decode("latin-1")
    client_ip = _CLIENTS.get(down.client_ip)
    if client_ip is None:
        if len(_CLIENTS) >= _MAX_CLIENTS:
            _CLIENTS.clear()
        client_ip = _CLIENTS[down.client_ip] = down.client_ip.decode("latin-1")
    # (positional: this runs for every request, and keywords cost more)
    request = GatewayRequest(
        method,
        host,
        path,
        query,
        headers,
        "http" if ssl_object is None else "https",  # scheme
        client_ip,
        None if ssl_object is None else ssl_object.getpeercert(binary_form=True),
        "",  # route
        None,  # consumer
        None,  # body
        _monotonic(),  # received
    )
    return request, framing


#: per set of stripped fields: the fields a request's Headers leave out, and a
#: pattern that finds one of the stripped fields in a head (None: none stripped)
_STRIPS: dict[frozenset[str], tuple[frozenset[str], re.Pattern[bytes] | None]] = {}
#: the Host fields seen, as routing reads them (lower case, without the port)
_HOSTS: dict[bytes, str] = {}
_MAX_HOSTS = 1024
#: the usual methods and the clients' addresses seen, as strings (made once)
_METHODS = {m: m.decode() for m in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH")}
_CLIENTS: dict[bytes, str] = {}
_MAX_CLIENTS = 4096
_monotonic = time.monotonic


def _carries(head: bytes, strip: frozenset[str]) -> bool:
    """Whether ``head`` has a field named in ``strip`` (one a client may not send)."""
    known = _STRIPS.get(strip)
    if known is None:
        known = _strip_state(strip)
    stripped = known[1]
    return stripped is not None and stripped.search(head) is not None


def _strip_state(strip: frozenset[str]) -> tuple[frozenset[str], re.Pattern[bytes] | None]:
    stripped = None
    if strip:
        names = b"|".join(re.escape(name.encode("latin-1")) for name in sorted(strip))
        stripped = re.compile(b"\r\n(?:%s):" % names, re.IGNORECASE)
    known = _STRIPS[strip] = (strip | _FRAMING, stripped)
    return known


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
        gate = self.gate
        stats = self.target.stats
        return {
            "name": self.name,
            "protocol": self.protocol,
            "listen": self.address or self.listen,
            "tls": self.ssl_context is not None,
            "connections": {
                "open": gate.count,
                "max": gate.max_connections,
                "max_per_ip": gate.max_per_client,
                "refused": gate.refused,
            },
            # What the gateway answered itself (refusals, 404s, cache hits) and
            # requests refused before routing; forwarded ones are the routes'.
            "answered": dict(stats.responses),
            "errors": dict(stats.errors),
        }
