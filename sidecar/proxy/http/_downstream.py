"""One client connection of the HTTP proxy: its request parser, the current
exchange, the pipelined ones behind it, and the limits on what it reads.

Limits cost one subtraction per read on the hot path: ``room`` is the
bytes left before the head limit while a head or trailer section is being
read, and :data:`~sidecar.proxy.http._parse.UNCOUNTED` otherwise; a read
longer than the room left goes to
:func:`~sidecar.proxy.http._parse.feed_within`, which feeds the parser no
more than that, so a 25 MB header never reaches the parser (which would
join its pieces in memory, copying them at each read). Header fields and
their bytes are also added up as the parser reports them, and checked once
the head is complete (trailers: at each field): that catches a head that
began in the middle of a read, behind a pipelined request.

A request refused (:class:`~sidecar.proxy.http._parse.Rejected`: framing,
size, version) is answered with ``Connection: close``, and the connection
lingers: it shuts its sending side and reads, dropping it, what the client
still sends, up to ``LINGER_BYTES`` or ``LINGER_SECONDS`` (the listener's
sweep ends it). Closing with unread bytes would reset the connection, and a
client that sends everything before it reads would see the reset, not the
answer.

Time is kept by the listener's sweep (:meth:`Downstream.sweep`), not on the
request path: the sweep notes which head or trailer section a connection is
in the middle of (``head_key``, from the request parser's state and
``room``) and when it first saw it; a connection still in that section
``head_timeout`` later is answered 408 and closed, like a refused request.
A new connection that sent nothing within ``head_timeout`` is closed; between
requests, ``idle_timeout`` applies. A connection whose reading the proxy has
paused (a pipelined request waiting its turn, backpressure) is not timed.

A client that shuts its sending side (``shutdown(SHUT_WR)``; RFC 9112, 9.6)
still gets the answers to the requests it sent whole, pipelined ones
included; one it cut short is answered 400 after them, and the connection
then closes (:meth:`Downstream.eof_received`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, cast

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from sdk import IntentionDecision
from serving.http_limits import refuse
from sidecar.proxy.http._exchange import P_EOF, P_QUEUE, P_STOP, Exchange
from sidecar.proxy.http._parse import (
    ACT_HOST,
    CRLF,
    REQUEST_ACTIONS,
    UNCOUNTED,
    Rejected,
    error_response,
    feed_within,
    status_class,
)

if TYPE_CHECKING:
    from sidecar.proxy.http import HttpListener

__all__ = ["LINGER_BYTES", "LINGER_SECONDS", "Downstream"]

logger = logging.getLogger("sidecar.proxy.http")

#: after refusing a request, what a client may still send (dropped) before the close
LINGER_BYTES = 1024 * 1024
LINGER_SECONDS = 2.0

_SEP = b": "
_monotonic = time.monotonic


class Downstream(asyncio.Protocol):
    """One client connection: its request parser, the current exchange, the queue."""

    __slots__ = (
        "client_ip",
        "close_after",
        "closing",
        "corked",
        "current",
        "denied",
        "fields",
        "gone",
        "head_key",
        "head_since",
        "idle_since",
        "key",
        "linger_until",
        "lingering",
        "listener",
        "out",
        "parser",
        "parsing",
        "paused",
        "queue",
        "room",
        "size",
        "stats",
        "transport",
        "write_paused",
    )

    transport: asyncio.Transport
    parser: HttpRequestParser
    parsing: Exchange

    def __init__(self, listener: HttpListener) -> None:
        self.listener = listener
        self.stats = listener.target.stats
        self.client_ip = b"unknown"
        self.current: Exchange | None = None
        self.queue: deque[Exchange] = deque()
        #: close once the current exchange is done (no keep-alive, or draining)
        self.close_after = False
        self.closing = False
        self.gone = False
        self.paused = 0
        self.write_paused = False
        self.corked = False
        self.out: list[bytes] = []
        self.idle_since = _monotonic()
        #: bytes left before the head (or trailers) limit, UNCOUNTED in a body
        self.room = listener.head_limit
        #: header fields so far, and their bytes (checked at the end of the head)
        self.fields = 0
        self.size = 0
        #: after a refusal: bytes the client may still send before the close (0: none)
        self.lingering = 0
        self.linger_until = 0.0
        #: the head or trailer section the sweep last saw unfinished, and since when
        self.head_key: tuple[object, int] | None = None
        self.head_since = 0.0
        #: the listener's connection gate's, while admitted
        self.key = ""
        #: why this connection's caller may not call the service (an inbound
        #: listener with mutual TLS: the intentions say no); None: it may
        self.denied: str | None = None

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        listener = self.listener
        peer = transport.get_extra_info("peername")
        key = listener.gate.admit(peer)
        if key is None:
            # Over max_connections (or per IP): told so and closed; never parsed.
            self.closing = self.gone = True
            self.stats.errors["connection_limit"] += 1
            refuse(transport, _OVER_LIMIT)
            return
        self.key = key
        if isinstance(peer, tuple) and peer:
            self.client_ip = str(peer[0]).encode()
        self.parser = HttpRequestParser(self)
        listener.downstreams.add(self)
        mesh = listener.mesh
        if mesh is not None:
            decision = mesh.authorize(transport)
            self.denied = None if decision.allowed else decision.reason
            mesh.track(self, transport, self._intention_changed)
        if listener.draining:
            self.close()

    def _intention_changed(self, decision: IntentionDecision) -> None:
        """The intentions changed: the next request is refused (or let through)."""
        self.denied = None if decision.allowed else decision.reason

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._gone()

    def eof_received(self) -> bool | None:
        """The client shut its sending side. It may still read (RFC 9112, 9.6: a
        client may half-close after its last request): the requests read whole are
        answered, in order, the last with ``Connection: close``; a request cut short
        is answered 400; then the connection closes. (A client that closed both ways
        looks the same until a write to it fails: connection_lost then cancels what
        is in flight.)"""
        if self.closing:
            return None  # closing already (a refusal's linger, a drain): close now
        self.paused |= P_EOF  # (the transport reads no more: it is never resumed)
        ex: Exchange | None = getattr(self, "parsing", None)
        if ex is not None and not ex.complete:
            self._cut_short(ex)
        if self.closing:
            return None
        last = self.queue[-1] if self.queue else self.current
        if last is None:
            self.closing = True  # nothing to answer
            return None
        last.keep_alive = False
        return True

    def pause_writing(self) -> None:
        self.write_paused = True
        ex = self.current
        if ex is not None and ex.upstream is not None:
            ex.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self.current
        if ex is not None and ex.upstream is not None:
            ex.upstream.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.closing or self.paused & P_STOP:
            if self.lingering:
                self.lingering = max(0, self.lingering - len(data))
                if not self.lingering:
                    self.transport.close()
            return
        n = len(data)
        self.stats.bytes_received += n
        room = self.room - n
        if room >= 0:
            self.room = room
            try:
                self.parser.feed_data(data)
            except HttpParserUpgrade:
                # What follows is not HTTP; the request itself is refused with 501.
                self.pause(P_STOP)
            except HttpParserError as exc:
                self._parse_error(exc)
        elif not feed_within(self, data):
            self._refuse(self._too_large())
        ex = self.current
        if ex is not None and not ex.started and not self.closing:
            ex.start()

    def feed(self, data: bytes | memoryview) -> bool:
        """Parses ``data``; False once nothing more is read."""
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade:
            self.pause(P_STOP)
            return False
        except HttpParserError as exc:
            self._parse_error(exc)
            return False
        return not (self.closing or self.paused & P_STOP)

    def _parse_error(self, exc: HttpParserError) -> None:
        context = exc.__context__
        if isinstance(context, Rejected):
            self._refuse(context)
        else:
            self._refuse(Rejected(400, "bad_request", f"bad request: {exc}"))

    def _too_large(self, fields: bool = False) -> Rejected:
        listener = self.listener
        if fields:
            text = f"more than {listener.max_headers} header fields"
        else:
            # (no message may have begun yet: the parser skips empty lines before one)
            ex = getattr(self, "parsing", None)
            trailers = ex is not None and ex.head_done and not ex.complete
            what = "trailers" if trailers else "head"
            text = f"request {what} over {listener.head_limit // 1024} KiB"
        return Rejected(431, "headers_too_large", text)

    # -- request parser callbacks -----------------------------------------------------

    def on_message_begin(self) -> None:
        self.parsing = Exchange(self)
        self.fields = self.size = 0

    def on_url(self, url: bytes) -> None:
        ex = self.parsing
        ex.url += url
        if len(ex.url) > self.listener.url_limit:
            limit = self.listener.url_limit // 1024
            raise Rejected(414, "url_too_long", f"request target over {limit} KiB")

    def on_header(self, name: bytes, value: bytes) -> None:
        # (Checked when the head is complete: until then the byte count bounds
        # them. + 3: the colon and CRLF, the fewest bytes a field takes.)
        self.fields += 1
        self.size += len(name) + len(value) + 3
        ex = self.parsing
        if ex.head_done:
            ex.add_trailer(name, value)
            listener = self.listener
            if self.fields > listener.max_headers or self.size > listener.head_limit:
                raise self._too_large(self.fields > listener.max_headers)
            return
        action = REQUEST_ACTIONS.get(name.lower())
        if action is None:
            ex.out += (name, _SEP, value, CRLF)
        elif action == ACT_HOST:  # (every request has one)
            ex.hosts += 1
            if not ex.host:
                ex.host = value
            ex.out += (name, _SEP, value, CRLF)
        else:
            ex.special_header(action, name, value)

    def on_headers_complete(self) -> None:
        ex = self.parsing
        parser = self.parser
        listener = self.listener
        ex.method = method = parser.get_method()
        ex.keep_alive = parser.should_keep_alive()
        version = parser.get_http_version()
        if version != "1.1":
            if version != "1.0":
                raise Rejected(505, "http_version", f"HTTP/{version} is not supported")
            ex.http10 = True
        if parser.should_upgrade():  # (the parser counts every CONNECT as one)
            ex.refuse = _REFUSE_UPGRADE
        elif method == b"TRACE" and not listener.allow_trace:
            ex.refuse = _REFUSE_TRACE
        if self.fields > listener.max_headers:
            raise self._too_large(fields=True)
        url = ex.url
        # (+ 13: the request line's spaces, version and CRLF, and the blank line)
        if self.size + len(url) + len(method) + 13 > listener.head_limit:
            raise self._too_large()
        if url[0] != 0x2F and ex.refuse is not _REFUSE_UPGRADE:
            # Not "/" (rare): absolute-form or "*". (An upgrade or a CONNECT, whatever
            # its target, is refused 501 instead.)
            ex.retarget()
        self.size = 0  # trailers get as much again
        ex.finish_head(self.client_ip)
        self.room = UNCOUNTED
        if self.current is None:
            self.current = ex
        else:
            self.queue.append(ex)
            self.pause(P_QUEUE)

    def on_body(self, body: bytes) -> None:
        self.room = UNCOUNTED
        self.parsing.request_body(body)

    def on_chunk_header(self) -> None:
        # Perhaps the last chunk, and trailers next: counted like a head.
        self.room = self.listener.head_limit

    def on_message_complete(self) -> None:
        self.room = self.listener.head_limit
        self.parsing.request_complete()

    # -- for the exchanges ----------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Sends to the client (held back while corked), counting the bytes."""
        if self.closing:
            return
        self.stats.bytes_sent += len(data)
        if self.corked:
            self.out.append(data)
        else:
            self.transport.write(data)

    def cork(self) -> None:
        self.corked = True

    def uncork(self) -> None:
        self.corked = False
        out = self.out
        if out:
            self.out = []
            if not self.closing:
                self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def exchange_done(self, ex: Exchange) -> None:
        """The current exchange is over (request read, response sent): next one, or close."""
        if self.current is not ex:
            return
        self.current = None
        if self.close_after or not ex.keep_alive or self.listener.draining:
            self.close()
            return
        if self.queue:
            nxt = self.current = self.queue.popleft()
            if not self.queue:
                self.resume(P_QUEUE)
            nxt.start()
        else:
            self.idle_since = _monotonic()

    def sweep(self, now: float, idle_due: float, head_due: float) -> None:
        """The listener's sweep (``*_due``: now less ``idle_timeout``, ``head_timeout``).

        A head or trailer section is told by the parser's state: a message
        begun whose head is not done; trailers (the head done, the message
        not, and bytes counted in ``room``); bytes before a message begins
        (empty lines). The section is noted with the time of the sweep that
        first sees it, so a client is refused between ``head_timeout`` and
        ``head_timeout`` plus two sweeps after its first byte of it.
        """
        if self.lingering:
            if self.linger_until <= now:
                self.close()
            return
        if self.closing:
            return
        listener = self.listener
        ex: Exchange | None = getattr(self, "parsing", None)
        if ex is None and self.room == listener.head_limit:
            # Not a byte since the connection opened (idle_since is when it did).
            if self.idle_since <= head_due or self.idle_since <= idle_due:
                self.close()
            return
        key: tuple[object, int] | None
        if ex is not None and not ex.head_done:
            key = (ex, 0)
        elif self.room >= listener.head_limit:
            key = None
        elif ex is not None and not ex.complete:
            key = (ex, 1)
        else:
            key = (ex, 2)
        if key is None or self.paused:
            self.head_key = None
            current = self.current
            if (current is None or current.response_done) and self.idle_since <= idle_due:
                self.close()
        elif key != self.head_key:
            self.head_key = key
            self.head_since = now
        elif self.head_since <= head_due:
            self.head_key = None
            self.stats.errors["request_timeout"] += 1
            what = "trailers" if key[1] == 1 else "head"
            timeout = listener.policy.head_timeout
            self._refuse(
                Rejected(408, "request_timeout", f"request {what} not complete within {timeout:g}s")
            )

    def close(self) -> None:
        """Closes after what was written (the rest of a corked write included)."""
        if self.closing:
            if self.lingering:
                self.lingering = 0
                self.transport.close()
            return
        if self.out:
            self.uncork()
        self.closing = True
        self.transport.close()

    def abort(self) -> None:
        """Closes at once; the current exchange is cancelled now, not on connection_lost."""
        self.closing = True
        self.out = []
        self.transport.abort()
        self._gone()

    def _gone(self) -> None:
        if self.gone:
            return
        self.gone = True
        if self.listener.mesh is not None:
            self.listener.mesh.forget(self)
        self.listener.forget(self)
        self.queue.clear()
        ex = self.current
        if ex is not None:
            self.current = None
            ex.cancel()

    def pause(self, bit: int) -> None:
        """Stops reading for one more reason (a ``P_*`` bit)."""
        if not self.paused and not self.closing:
            self.transport.pause_reading()
        self.paused |= bit

    def resume(self, bit: int) -> None:
        """Drops one reason not to read; reading resumes when none is left."""
        if self.paused & bit:
            self.paused &= ~bit
            if not self.paused and not self.closing:
                self.transport.resume_reading()

    def _refuse(self, rejected: Rejected) -> None:
        """A request the proxy will not forward: answered (when it can be), then
        the connection closes. Nothing more of it is parsed."""
        self.pause(P_STOP)
        listener = self.listener
        logger.debug(
            "%s: %d %s from %s: %s",
            listener.name,
            rejected.status,
            rejected.kind,
            self.client_ip,
            rejected.message,
        )
        ex = self.current
        if ex is None:
            self.stats.responses[status_class(rejected.status)] += 1
            self.write(error_response(rejected.status, rejected.kind, rejected.message, close=True))
            self.linger()
        elif ex.complete:
            # The bad bytes follow a complete request: answer that one, then close.
            self.close_after = True
            self.queue.clear()
        elif ex.reject(rejected):
            self.linger()
        else:
            self.abort()

    def _cut_short(self, ex: Exchange) -> None:
        """``ex`` will not be complete: the client shut its sending side in its head or
        its body. It is answered 400 in its turn, or at once when it is the current
        one, and the connection then closes."""
        rejected = Rejected(
            400, "bad_request", "request incomplete: the client shut its sending side"
        )
        if ex is self.current:
            # Its head went upstream; the attempt is given up. When the upstream has
            # answered already, its answer ends the connection instead.
            if ex.response_done:
                self.close()
            else:
                ex.reject(rejected)
            return
        ex.refuse = rejected
        ex.complete = True
        if ex.head_done:
            return  # queued already
        if self.current is None:
            self.current = ex
            ex.keep_alive = False
            ex.start()
        else:
            self.queue.append(ex)

    def linger(self) -> None:
        """Closes after the answer to a refused request, but first reads (and drops)
        what the client still sends, for a while: closing with unread bytes would
        reset the connection, and the client could lose the answer."""
        if self.closing:
            return
        self.closing = True
        transport = self.transport
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self.lingering = LINGER_BYTES
        self.linger_until = _monotonic() + LINGER_SECONDS
        self.paused = 0
        transport.resume_reading()


#: what a connection over ``max_connections`` (or per IP) is told before the close
_OVER_LIMIT = error_response(503, "connection_limit", "too many connections", close=True)
_REFUSE_UPGRADE = Rejected(501, "upgrade", "Upgrade and CONNECT are not supported")
_REFUSE_TRACE = Rejected(405, "method_not_allowed", "TRACE is not allowed")
