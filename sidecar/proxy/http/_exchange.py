"""One request on one downstream connection, over one or more attempts.

An :class:`Exchange` is made by the downstream connection when a request
head is complete; it rewrites the head, and holds the request body while it
may still be needed (until an upstream connection takes it, and up to
``BODY_KEEP`` bytes for a retry). :meth:`Exchange.start` runs the attempts
(see :mod:`sidecar.proxy.http`); the upstream connection calls back
``response_head`` / ``response_body`` / ``response_complete`` (or
``upstream_lost`` / ``upstream_bad``) as the response arrives. Every attempt
ends with exactly one ``target.release``, the exchange with one
``target.end_request``, whichever way it ends: answered, failed, timed out,
or cancelled because the client went away.

(The class is one state machine and stays in one piece, though past the
usual module size: split, those two invariants would have no single home.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Set
from typing import TYPE_CHECKING, Protocol

from sdk.balancer import Endpoint, NoEndpointsError
from sidecar.proxy._target import CircuitOpenError, Outcome
from sidecar.proxy.http._parse import (
    ACT_CONNECTION,
    ACT_CONTENT_LENGTH,
    ACT_FORWARDED_FOR,
    ACT_REQUEST_ID,
    ACT_TRANSFER_ENCODING,
    CRLF,
    LAST_CHUNK,
    Rejected,
    chunk_size_line,
    connection_names,
    drop_named,
    error_response,
    is_chunked,
    last_chunk,
    local_response,
    new_request_id,
    origin_form,
    status_class,
)
from sidecar.proxy.http._pool import UpstreamConnection

if TYPE_CHECKING:
    from sidecar.config import ProxyPolicy
    from sidecar.proxy._target import Target
    from sidecar.proxy.http._downstream import Downstream
    from sidecar.proxy.http._pool import UpstreamPool

__all__ = [
    "BODY_KEEP",
    "P_EOF",
    "P_QUEUE",
    "P_STOP",
    "P_UPSTREAM",
    "P_WAIT",
    "Exchange",
    "Forwarding",
    "Front",
    "ResponseTap",
]

logger = logging.getLogger("sidecar.proxy.http")

#: request bodies up to this size are kept, so that the request can be retried
BODY_KEEP = 64 * 1024

# Why a downstream connection is not being read (bits of Downstream.paused).
P_UPSTREAM = 1  # the upstream connection's write buffer is full
P_QUEUE = 2  # a pipelined request waits for its turn
P_WAIT = 4  # the request body waits for an upstream connection
P_STOP = 8  # nothing more will be read (upgrade, bad request)
P_EOF = 16  # the client shut its sending side: nothing more will come

# How the response body is framed downstream.
_BODY_NONE = 0
_BODY_RAW = 1  # as the upstream sent it (Content-Length, or up to the close)
_BODY_CHUNKED = 2  # re-chunked
_BODY_HELD = 3  # kept by the tap until complete, then sent whole (a rewritten body)


class Forwarding(Protocol):
    """Where an exchange's attempts go, and under which policy: an HTTP
    listener's own (a sidecar's), or a gateway route's."""

    @property
    def name(self) -> str: ...

    @property
    def target(self) -> Target: ...

    @property
    def pool(self) -> UpstreamPool: ...

    @property
    def policy(self) -> ProxyPolicy: ...

    @property
    def timeout(self) -> float: ...

    @property
    def per_try_timeout(self) -> float: ...

    @property
    def retry_on(self) -> Set[int]: ...

    @property
    def max_retries(self) -> int: ...

    @property
    def idempotent(self) -> Set[bytes]: ...


class ResponseTap(Protocol):
    """Sees a forwarded response go by (a gateway's: its headers, its cache).

    A tap that sets ``holds`` in ``head`` keeps the response instead: nothing
    is sent until it is complete, then ``release()`` gives the whole response
    to send (a rewritten body); a tap that gives up holding (the body grew
    too large) clears ``holds`` in ``body`` and ``held()`` gives the body so
    far, sent after the head as it was, the rest streaming as usual."""

    holds: bool

    def head(self, status: int, out: list[bytes]) -> None:
        """The response head as it will be sent: header lines may be appended."""

    def body(self, data: bytes) -> None: ...

    def held(self) -> bytes: ...

    def release(self) -> bytes: ...

    def complete(self) -> None:
        """The whole response went to the client."""

    def abandon(self) -> None:
        """The response ended otherwise (cut short, refused, the client gone)."""


class Front(Protocol):
    """Decides about each request before it is forwarded (a gateway: routing,
    authentication, limits, its cache). ``admit`` ends, now or later, with
    exactly one of ``ex.forward(fw)`` and ``ex.answer(...)``, unless
    ``cancelled(ex)`` comes first (the client went away). A front that needs
    the request's body first sets ``ex.hold`` (the most bytes it reads):
    ``body_ready(ex)`` comes once the body is complete, or is over that."""

    def admit(self, ex: Exchange) -> None: ...

    def body_ready(self, ex: Exchange) -> None: ...

    def cancelled(self, ex: Exchange) -> None: ...


_SEP = b": "
_EMPTY: frozenset[bytes] = frozenset()
_HOST = frozenset({b"host"})
_monotonic = time.monotonic


class Exchange:
    """One request on one downstream connection, over one or more attempts."""

    __slots__ = (
        "begun",
        "body",
        "body_len",
        "chunked",
        "complete",
        "connecting",
        "content_length",
        "dialing",
        "down",
        "drop",
        "endpoint",
        "forwarded_for",
        "framing",
        "fw",
        "has_request_id",
        "head",
        "head_done",
        "held",
        "hold",
        "host",
        "hosts",
        "http10",
        "in_interim",
        "interim_sent",
        "keep_alive",
        "latency",
        "method",
        "out",
        "pooled",
        "refuse",
        "replayable",
        "responded",
        "response_done",
        "retries",
        "retry_active",
        "stale_retried",
        "started",
        "status",
        "t_attempt",
        "t_start",
        "tap",
        "te",
        "timer",
        "trailers",
        "tried",
        "try_timer",
        "upstream",
        "url",
    )

    def __init__(self, down: Downstream) -> None:
        self.down = down
        listener = down.listener
        #: where the request goes and how (see Forwarding): the listener itself,
        #: or for a gateway none until its front routes the request
        self.fw: Forwarding | None = listener if listener.front is None else None
        #: the gateway's view of the response (None: nobody looks)
        self.tap: ResponseTap | None = None
        #: body bytes a front waits for before it routes the request (0: none)
        self.hold = 0
        #: a response the tap holds: its head as it would have gone, and its framing
        self.held: tuple[list[bytes], int] | None = None
        # the request, as parsed
        self.out: list[bytes] = [b""]
        self.url = b""
        self.method = b""
        self.head = b""
        self.head_done = False
        self.http10 = False
        self.keep_alive = True
        self.chunked = False
        self.forwarded_for = b""
        self.has_request_id = False
        self.drop = _EMPTY
        self.hosts = 0
        #: the Host field's value (the first one's)
        self.host = b""
        self.te: bytes | None = None
        self.content_length: bytes | None = None
        self.trailers: list[bytes] | None = None
        #: answered by the proxy itself, not forwarded (Upgrade, CONNECT, TRACE)
        self.refuse: Rejected | None = None
        #: the body so far while it is kept (≤ BODY_KEEP, or not yet sent anywhere)
        self.body: list[bytes] = []
        self.body_len = 0
        #: the whole body so far is in ``body``: the request can be sent again
        self.replayable = True
        self.complete = False
        # the attempts
        self.started = False
        self.begun = False
        self.endpoint: Endpoint | None = None
        self.tried: list[str] = []
        self.retries = 0
        self.retry_active = False
        self.stale_retried = False
        self.upstream: UpstreamConnection | None = None
        self.pooled = False
        self.connecting: asyncio.Task[None] | None = None
        self.dialing: UpstreamConnection | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.try_timer: asyncio.TimerHandle | None = None
        self.t_start = 0.0
        self.t_attempt = 0.0
        self.latency: float | None = None
        # the response
        self.responded = False
        self.in_interim = False
        self.interim_sent = False
        self.response_done = False
        self.framing = _BODY_NONE
        self.status = 0

    # -- the request, from the downstream parser ----------------------------------------

    def special_header(self, action: int, name: bytes, value: bytes) -> None:
        """A request header in REQUEST_ACTIONS (but Host, which the downstream
        counts and keeps itself)."""
        if action == ACT_CONTENT_LENGTH:
            self.content_length = value  # (the parser refuses a second one)
        elif action == ACT_FORWARDED_FOR:
            ff = self.forwarded_for
            self.forwarded_for = ff + b", " + value if ff else value
        elif action == ACT_REQUEST_ID:
            self.has_request_id = True
            self.out += (name, _SEP, value, CRLF)
        elif action == ACT_TRANSFER_ENCODING:
            te = self.te
            self.te = value if te is None else te + b", " + value
        elif action == ACT_CONNECTION:
            self.drop |= connection_names(value)
        # else ACT_DROP

    def retarget(self) -> None:
        """A target not in origin-form (its first byte is not ``/``): forwarded as
        :func:`~sidecar.proxy.http._parse.origin_form` says, with the Host it names in
        place of the client's (raises :class:`Rejected`). Called before
        :meth:`finish_head`, which still checks the client's Host count."""
        self.url, host = origin_form(self.method, self.url)
        if host is not None:
            out = drop_named(self.out, _HOST)
            out += (b"host", _SEP, host, CRLF)
            self.out = out
            self.host = host

    def finish_head(self, client_ip: bytes) -> None:
        """Checks the framing and the host (raises :class:`Rejected`), and writes
        the head to forward: hop-by-hop headers dropped, the proxy's own added,
        the body framed by one header the proxy writes itself."""
        hosts = self.hosts
        if hosts != 1 and (hosts or not self.http10):
            raise Rejected(400, "bad_request", f"{hosts} Host headers (one is required)")
        te = self.te
        if te is not None:
            # (RFC 9112, 6.1 and 6.3: either could make this hop and the next
            # disagree on where the body ends)
            if self.http10:
                raise Rejected(400, "bad_request", "Transfer-Encoding in an HTTP/1.0 request")
            if self.content_length is not None:
                raise Rejected(400, "bad_request", "both Transfer-Encoding and Content-Length")
            self.chunked = is_chunked(te)
        out = self.out
        if self.drop:
            out = drop_named(out, self.drop)
        out[0] = b"%s %s HTTP/1.1\r\n" % (self.method, self.url)
        ff = self.forwarded_for
        if ff:
            out.append(b"x-forwarded-for: %s, %s\r\nx-forwarded-proto: http\r\n" % (ff, client_ip))
        else:
            out.append(b"x-forwarded-for: %s\r\nx-forwarded-proto: http\r\n" % client_ip)
        if not self.has_request_id:
            out.append(b"x-request-id: %s\r\n" % new_request_id())
        if self.chunked:
            out.append(b"transfer-encoding: chunked\r\n")
        elif self.content_length is not None:
            out.append(b"content-length: %d\r\n" % int(self.content_length))
        out.append(CRLF)
        self.head = b"".join(out)
        self.out = []
        self.head_done = True

    def add_trailer(self, name: bytes, value: bytes) -> None:
        if self.trailers is None:
            self.trailers = []
        self.trailers += (name, _SEP, value, CRLF)

    def request_body(self, chunk: bytes) -> None:
        if self.response_done:
            return  # answered already: the rest of the body is read and dropped
        conn = self.upstream
        if conn is not None:
            conn.write(chunk_size_line(len(chunk)) + chunk + CRLF if self.chunked else chunk)
            if self.replayable:
                self.body_len += len(chunk)
                if self.body_len > BODY_KEEP:
                    self.replayable = False
                    self.body = []
                else:
                    self.body.append(chunk)
        else:
            self.body.append(chunk)
            self.body_len += len(chunk)
            hold = self.hold
            if hold:
                if self.body_len > hold:
                    self._body_held()  # over what the front reads: it answers
            elif self.body_len > BODY_KEEP and self.started:
                self.down.pause(P_WAIT)

    def _body_held(self) -> None:
        self.hold = 0
        front = self.down.listener.front
        assert front is not None
        front.body_ready(self)

    def request_complete(self) -> None:
        self.complete = True
        if self.hold:
            self._body_held()
        conn = self.upstream
        if conn is not None and self.chunked:
            conn.write(last_chunk(self.trailers))
        if self.response_done:
            self.down.exchange_done(self)

    # -- attempts -------------------------------------------------------------------------

    def start(self) -> None:
        self.started = True
        down = self.down
        listener = down.listener
        if self.fw is None and self.refuse is None:
            # A gateway's request: its front routes it (forward) or answers it
            # (answer), now or once its checks are done.
            front = listener.front
            assert front is not None
            front.admit(self)
            return
        refuse = self.refuse
        if refuse is None and down.denied is not None:
            # An inbound listener's caller the intentions do not allow (checked
            # per request: a changed intention applies to open connections too).
            down.stats.errors["intention_denied"] += 1
            refuse = Rejected(403, "intention_denied", f"intention denied: {down.denied}")
        if refuse is not None:
            text = f"{listener.name}: {refuse.message}"
            if refuse.kind == "upgrade":
                # What follows the head is not HTTP: nothing more is read.
                down.close_after = True
                self._send_error(refuse.status, refuse.kind, text)
                down.close()
            else:
                self._send_error(refuse.status, refuse.kind, text)
            return
        self._begin()

    def answer(
        self, status: int, fields: list[bytes], body: bytes, length: int | None = None
    ) -> None:
        """Answers the request here (a front's answer: a refusal, a cache hit);
        ``fields`` are header lines, each ending in CRLF, without framing ones;
        ``length`` the Content-Length when it is not the body's (see local_response)."""
        if self.response_done:
            return
        down = self.down
        close = (
            down.close_after or not self.keep_alive or down.listener.draining or not self.complete
        )
        if close:
            down.close_after = True
        down.write(
            local_response(
                status,
                fields,
                body,
                close=close,
                keep_alive_header=self.http10,
                head_only=self.method == b"HEAD",
                length=length,
            )
        )
        down.stats.responses[status_class(status)] += 1
        self.responded = True
        self._response_done()
        if not self.complete:
            # Answered before its body came (413, a refusal): the rest is not
            # read through; the connection closes after a bounded linger.
            down.linger()

    def forward(self, fw: Forwarding) -> None:
        """The front has routed the request to ``fw`` (its head rewritten): the
        attempts begin, unless the client went away meanwhile."""
        self.fw = fw
        if not self.response_done and not self.down.closing:
            self._begin()

    def _begin(self) -> None:
        fw = self.fw
        assert fw is not None
        try:
            fw.target.begin_request()
        except CircuitOpenError as exc:
            self._proxy_error(503, "circuit_open", f"circuit open ({exc.limit} {exc.value})")
            return
        self.begun = True
        now = self.t_start = _monotonic()
        self._attempt(now)

    def _attempt(self, now: float) -> None:
        fw: Forwarding = self.fw  # type: ignore[assignment]
        try:
            endpoint = fw.target.pick(exclude=self.tried)
        except NoEndpointsError as exc:
            self._proxy_error(503, "no_endpoints", str(exc))
            return
        self.endpoint = endpoint
        self.t_attempt = now
        conn = fw.pool.take(fw.target.dial(endpoint))
        if conn is not None:
            self._attach(conn, pooled=True)
        else:
            self._connect(endpoint)

    def _connect(self, endpoint: Endpoint) -> None:
        fw: Forwarding = self.fw  # type: ignore[assignment]
        target = fw.target
        try:
            target.begin_pending()
            try:
                target.open_connection()
            except CircuitOpenError:
                target.end_pending()
                raise
        except CircuitOpenError as exc:
            self._release(Outcome.CANCELLED)
            self._proxy_error(503, "circuit_open", f"circuit open ({exc.limit} {exc.value})")
            return
        if self.body_len > BODY_KEEP and not self.complete:
            self.down.pause(P_WAIT)
        host, port = target.dial(endpoint)
        conn = self.dialing = UpstreamConnection(fw.pool, (host, port))
        self.connecting = self.down.listener.spawn(
            "connect", self._dial(conn, host, port, endpoint)
        )

    async def _dial(
        self, conn: UpstreamConnection, host: str, port: int, endpoint: Endpoint
    ) -> None:
        fw: Forwarding = self.fw  # type: ignore[assignment]
        target = fw.target
        try:
            tls = target.dial_tls(endpoint)
            await fw.pool.connect(conn, host, port, fw.policy.connect_timeout, tls=tls)
            if tls is not None:
                try:
                    target.check_tls(conn.transport)
                except OSError:
                    conn.abort()
                    conn.uncount()
                    raise
        except OSError as exc:  # TimeoutError included
            self._dialled(None)
            if isinstance(exc, TimeoutError):
                reason = f"timed out after {fw.policy.connect_timeout:g}s"
            elif exc.errno:
                reason = os.strerror(exc.errno)
            else:
                reason = str(exc) or type(exc).__name__
            self._connect_failed(f"{host}:{port}: {reason}")
            return
        self._dialled(conn)

    def _dialled(self, conn: UpstreamConnection | None) -> None:
        self.connecting = None
        self.dialing = None
        self.fw.target.end_pending()  # type: ignore[union-attr]
        if conn is not None:
            self._attach(conn, pooled=False)

    def _cancel_connect(self) -> None:
        task = self.connecting
        if task is None:
            return
        conn = self.dialing
        self.connecting = None
        self.dialing = None
        task.cancel()
        if conn is not None:
            conn.abort()
            conn.uncount()
        self.fw.target.end_pending()  # type: ignore[union-attr]

    def _connect_failed(self, reason: str) -> None:
        self._release(Outcome.CONNECT_FAILURE)
        if self._can_retry(any_method=True) and self._take_retry():
            self._attempt(_monotonic())
            return
        self._proxy_error(502, "connect_failure", f"connect failed ({reason})")

    def _attach(self, conn: UpstreamConnection, *, pooled: bool) -> None:
        self.upstream = conn
        self.pooled = pooled
        conn.handler = self
        conn.received = False
        body = self.body
        if body:
            parts = [self.head]
            if self.chunked:
                for chunk in body:
                    parts += (chunk_size_line(len(chunk)), chunk, CRLF)
            else:
                parts += body
            if self.complete and self.chunked:
                parts.append(last_chunk(self.trailers))
            conn.write(b"".join(parts))
            if self.body_len > BODY_KEEP:
                self.replayable = False
                self.body = []
        elif self.complete and self.chunked:
            conn.write(self.head + last_chunk(self.trailers))
        else:
            conn.write(self.head)
        down = self.down
        if down.paused & P_WAIT:
            down.resume(P_WAIT)
        if down.write_paused:
            conn.pause_reading()
        if conn.write_paused:
            down.pause(P_UPSTREAM)

    def _can_retry(self, *, any_method: bool) -> bool:
        fw: Forwarding = self.fw  # type: ignore[assignment]
        if (
            self.retries >= fw.max_retries
            or not self.replayable
            or self.responded
            or self.interim_sent
        ):
            return False
        if not any_method and self.method not in fw.idempotent:
            return False
        return not (fw.timeout and _monotonic() >= self.t_start + fw.timeout)

    def _take_retry(self) -> bool:
        if not self.fw.target.allow_retry():  # type: ignore[union-attr]
            return False
        self.retries += 1
        self.retry_active = True
        return True

    def _release(self, outcome: Outcome) -> None:
        """Ends the current attempt's pick (once)."""
        endpoint = self.endpoint
        if endpoint is None:
            return
        self.endpoint = None
        timer = self.try_timer
        if timer is not None:
            timer.cancel()
            self.try_timer = None
        latency = self.latency
        if latency is None:
            latency = _monotonic() - self.t_attempt
        else:
            self.latency = None
        target = self.fw.target  # type: ignore[union-attr]
        target.release(endpoint, latency=latency, outcome=outcome)
        if self.retry_active:
            self.retry_active = False
            target.end_retry()
        if outcome is not Outcome.SUCCESS:
            self.tried.append(endpoint.id)

    def _detach(self, *, reuse: bool) -> None:
        conn = self.upstream
        if conn is None:
            return
        self.upstream = None
        conn.handler = None
        self.down.resume(P_UPSTREAM)
        if reuse:
            conn.resume_reading()
            self.fw.pool.put(conn)  # type: ignore[union-attr]
        elif self.complete:
            conn.close()
        else:
            conn.abort()

    def _abandon_attempt(self) -> None:
        self._cancel_connect()
        conn = self.upstream
        if conn is not None:
            self.upstream = None
            conn.handler = None
            conn.abort()
            self.down.resume(P_UPSTREAM)

    # -- the response, from the upstream connection -------------------------------------

    def response_head(self, conn: UpstreamConnection, status: int) -> None:
        down = self.down
        if status < 200:
            if status == 101:
                conn.handler = None
                self.upstream_bad(conn, ValueError("101 Switching Protocols was not asked for"))
                return
            self.in_interim = True
            if not self.http10:
                self.interim_sent = True
                conn.out.append(CRLF)
                down.write(b"".join(conn.out))
            return
        listener = down.listener
        fw: Forwarding = self.fw  # type: ignore[assignment]
        now = _monotonic()
        self.latency = now - self.t_attempt
        timer = self.try_timer
        if timer is not None:
            timer.cancel()
            self.try_timer = None
        if status >= 500 and status in fw.retry_on and self._can_retry(any_method=False):
            self._release(Outcome.SERVER_ERROR)
            if self._take_retry():
                self._abandon_attempt()
                self._attempt(now)
                return
        self.status = status
        out = conn.out
        method = self.method
        if method == b"HEAD" or status == 204 or status == 304:
            framing = _BODY_NONE
        elif conn.has_length and not conn.chunked:
            framing = _BODY_RAW
        elif self.http10:
            framing = _BODY_RAW  # up to the close
            down.close_after = True
        else:
            framing = _BODY_CHUNKED
            out.append(b"transfer-encoding: chunked\r\n")
        if down.close_after or not self.keep_alive or listener.draining or not self.complete:
            # (an answer before the whole request: the rest is read and dropped,
            # then the connection closes, whatever the client meant to send)
            down.close_after = True
            out.append(b"connection: close\r\n")
        elif self.http10:
            out.append(b"connection: keep-alive\r\n")
        tap = self.tap
        if tap is not None:
            tap.head(status, out)
            if tap.holds and framing != _BODY_NONE:
                self.held = (out, framing)
                self.framing = _BODY_HELD
                self.responded = True
                down.stats.responses[status_class(status)] += 1
                return
        out.append(CRLF)
        self.framing = framing
        self.responded = True
        down.write(b"".join(out))
        down.stats.responses[status_class(status)] += 1
        if method == b"HEAD":
            # The response parser cannot be told that a HEAD response has no
            # body: the response ends here, and the connection is not reused.
            conn.retire = True
            self.response_complete(conn)

    def response_body(self, data: bytes) -> None:
        tap = self.tap
        if tap is not None:
            tap.body(data)
            if self.framing == _BODY_HELD:
                if tap.holds:
                    return
                self._unhold(tap)
                return
        framing = self.framing
        if framing == _BODY_RAW:
            self.down.write(data)
        elif framing == _BODY_CHUNKED:
            down = self.down
            down.write(chunk_size_line(len(data)))
            down.write(data)
            down.write(CRLF)

    def _unhold(self, tap: ResponseTap) -> None:
        """The tap gave up holding: the head as it was, the body so far, then on as usual."""
        held = self.held
        assert held is not None
        out, framing = held
        self.held = None
        self.framing = framing
        out.append(CRLF)
        down = self.down
        down.write(b"".join(out))
        body = tap.held()
        if body:
            if framing == _BODY_CHUNKED:
                down.write(chunk_size_line(len(body)) + body + CRLF)
            else:
                down.write(body)

    def _release_held(self) -> None:
        """A held response is complete: the tap's whole response goes."""
        tap = self.tap
        assert tap is not None
        self.held = None
        self.framing = _BODY_RAW
        self.down.write(tap.release())

    def response_complete(self, conn: UpstreamConnection) -> None:
        if self.in_interim:
            self.in_interim = False
            return
        if self.framing == _BODY_HELD:
            self._release_held()
        elif self.framing == _BODY_CHUNKED:
            self.down.write(last_chunk(conn.trailers))
        tap = self.tap
        if tap is not None:
            self.tap = None
            tap.complete()
        reuse = self.complete and conn.keep_alive()
        self._release(Outcome.SERVER_ERROR if self.status >= 500 else Outcome.SUCCESS)
        self._detach(reuse=reuse)
        self._response_done()

    def upstream_lost(self, conn: UpstreamConnection) -> None:
        self.upstream = None
        down = self.down
        down.resume(P_UPSTREAM)
        if not self.responded:
            self._attempt_failed(conn, Outcome.RESET, "reset", "connection reset")
        elif (
            self.framing != _BODY_NONE
            and conn.head_done
            and not conn.has_length
            and not conn.chunked
        ):
            # A body without a length ends where the connection ends.
            if self.framing == _BODY_HELD:
                self._release_held()
            elif self.framing == _BODY_CHUNKED:
                down.write(LAST_CHUNK)
            tap = self.tap
            if tap is not None:
                self.tap = None
                tap.complete()
            self._release(Outcome.SERVER_ERROR if self.status >= 500 else Outcome.SUCCESS)
            self._response_done()
        else:
            # Cut short: the client must see it was, so its connection is cut too.
            self._release(Outcome.RESET)
            down.abort()

    def upstream_bad(self, conn: UpstreamConnection, exc: Exception) -> None:
        self.upstream = None
        conn.abort()
        self.down.resume(P_UPSTREAM)
        if self.responded:
            self._release(Outcome.RESET)
            self.down.abort()
        else:
            self._attempt_failed(conn, Outcome.RESET, "bad_response", f"invalid response ({exc})")

    def upstream_write_paused(self, paused: bool) -> None:
        if paused:
            self.down.pause(P_UPSTREAM)
        else:
            self.down.resume(P_UPSTREAM)

    def _attempt_failed(
        self, conn: UpstreamConnection, outcome: Outcome, kind: str, message: str
    ) -> None:
        endpoint = self.endpoint
        if (
            self.pooled
            and not conn.received
            and not self.stale_retried
            and self.replayable
            and endpoint is not None
        ):
            # A pooled connection the upstream had closed: it never saw the request.
            self.stale_retried = True
            self._connect(endpoint)
            return
        self._release(outcome)
        if self._can_retry(any_method=False) and self._take_retry():
            self._attempt(_monotonic())
            return
        self._proxy_error(502, kind, message)

    # -- timeouts and endings -----------------------------------------------------------------

    def arm_timers(self, now: float) -> None:
        """Called by the listener's tick for an exchange still in flight.

        Most exchanges end within milliseconds, so their timeouts are not
        scheduled when they start (a timer per request costs more than the
        rest of the request's bookkeeping); one that is still running at a
        tick gets its timers, set for the deadlines counted from its start
        (the tick comes at least three times per timeout, so they are set
        in time).
        """
        fw: Forwarding = self.fw  # type: ignore[assignment]
        loop = self.down.listener.loop
        timeout = fw.timeout
        if timeout and self.timer is None:
            self.timer = loop.call_later(max(0.0, self.t_start + timeout - now), self._on_timeout)
        per_try = fw.per_try_timeout
        if per_try and self.try_timer is None and self.endpoint is not None and not self.responded:
            self.try_timer = loop.call_later(
                max(0.0, self.t_attempt + per_try - now), self._on_try_timeout
            )

    def _on_try_timeout(self) -> None:
        self.try_timer = None
        if self.responded or self.response_done:
            return
        self._abandon_attempt()
        self._release(Outcome.TIMEOUT)
        if self._can_retry(any_method=False) and self._take_retry():
            self._attempt(_monotonic())
            return
        per_try = self.fw.per_try_timeout  # type: ignore[union-attr]
        self._proxy_error(504, "timeout", f"timeout after {per_try:g}s (per try)")

    def _on_timeout(self) -> None:
        self.timer = None
        if self.response_done:
            return
        self._abandon_attempt()
        self._release(Outcome.TIMEOUT)
        if self.responded:
            self.down.abort()
        else:
            timeout = self.fw.timeout  # type: ignore[union-attr]
            self._proxy_error(504, "timeout", f"timeout after {timeout:g}s")

    def _proxy_error(self, status: int, kind: str, message: str) -> None:
        """Answers for the upstream; no attempt may be in progress."""
        fw: Forwarding = self.fw  # type: ignore[assignment]
        text = f"upstream {fw.target.name}: {message}"
        if self.retries:
            text += f" after {self.retries + 1} attempts"
        logger.debug("%s: %d %s: %s", fw.name, status, kind, text)
        self._send_error(status, kind, text)

    def _send_error(self, status: int, kind: str, text: str) -> None:
        down = self.down
        close = (
            down.close_after or not self.keep_alive or down.listener.draining or not self.complete
        )
        if close:
            down.close_after = True
        down.write(error_response(status, kind, text, close=close, keep_alive_header=self.http10))
        down.stats.responses[status_class(status)] += 1
        self.status = status
        self.responded = True
        self._response_done()

    def _response_done(self) -> None:
        self.response_done = True
        self._cancel_timers()
        if self.begun:
            self.begun = False
            self.fw.target.end_request()  # type: ignore[union-attr]
        tap = self.tap
        if tap is not None:
            self.tap = None
            tap.abandon()
        self.body = []
        down = self.down
        down.resume(P_WAIT)
        if self.complete:
            down.exchange_done(self)
        elif down.paused & P_EOF:
            down.close()  # the rest of the body will not come: the client shut its side
        else:
            down.idle_since = _monotonic()  # the rest of the body must keep coming

    def _cancel_timers(self) -> None:
        timer = self.timer
        if timer is not None:
            timer.cancel()
            self.timer = None
        timer = self.try_timer
        if timer is not None:
            timer.cancel()
            self.try_timer = None

    def reject(self, rejected: Rejected) -> bool:
        """The rest of this request is refused (its trailers are over the limits,
        or its body is not valid HTTP): the attempt in flight is given up and,
        when no response has begun, the proxy answers. False when nothing can
        be answered any more (the caller cuts the connection)."""
        if self.responded or self.response_done:
            return False
        self._abandon_attempt()
        self._release(Outcome.CANCELLED)
        self.down.close_after = True
        self._send_error(rejected.status, rejected.kind, rejected.message)
        return True

    def cancel(self) -> None:
        """The client went away (or the listener is closing): undo what is in flight."""
        if not self.started or self.response_done:
            return
        self.response_done = True
        self._abandon_attempt()
        self._release(Outcome.CANCELLED)
        self._cancel_timers()
        if self.begun:
            self.begun = False
            self.fw.target.end_request()  # type: ignore[union-attr]
        tap = self.tap
        if tap is not None:
            self.tap = None
            tap.abandon()
        front = self.down.listener.front
        if front is not None:
            front.cancelled(self)
