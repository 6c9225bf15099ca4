"""Upstream HTTP/1.1 connections, and the keep-alive pool they return to.

An :class:`UpstreamConnection` is an asyncio protocol with a response
parser. While it carries a request it belongs to one :class:`ResponseHandler`
(the proxy's exchange), which it calls back as the response arrives; in
between it is idle in the :class:`UpstreamPool`, keyed by the address it is
connected to (not by endpoint id: an endpoint that moves keeps its id),
most recently used first. The pool keeps at most ``max_idle`` idle
connections per address and closes those idle for ``idle_timeout``
(:meth:`sweep`) and those to addresses no endpoint has any more
(:meth:`keep_only`); a connection the upstream closes while idle simply
leaves the pool. Each connection counts once against the target's
``max_connections``, from the moment the caller reserved it
(``target.open_connection()``) until it is closed or its connect fails.

A connection is pooled again only when its response was framed without
doubt: a response head past ``head_limit`` bytes or ``max_headers`` fields,
a transfer coding other than ``chunked``, or framing the parser refuses
make it a bad response (the connection is dropped), and so do bytes after a
complete response in the same read, which no request asked for.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Collection
from typing import Protocol, cast

from httptools import HttpParserError, HttpResponseParser

from sidecar.proxy._mtls import HANDSHAKE_TIMEOUT
from sidecar.proxy._target import Target
from sidecar.proxy.http._parse import (
    ACT_CONNECTION,
    ACT_CONTENT_LENGTH,
    ACT_DROP,
    ACT_TRANSFER_ENCODING,
    CRLF,
    RESPONSE_ACTIONS,
    UNCOUNTED,
    Rejected,
    connection_names,
    drop_named,
    feed_within,
    is_chunked,
)

__all__ = ["Address", "Corkable", "ResponseHandler", "UpstreamConnection", "UpstreamPool"]

#: where a connection goes: (host, port) as dialled
Address = tuple[str, int]

_SEP = b": "


class _Unasked(Exception):
    """A message starts after the complete response, in the same read."""


class Corkable(Protocol):
    """The downstream side: writes made between ``cork`` and ``uncork`` go out as one."""

    def cork(self) -> None: ...

    def uncork(self) -> None: ...


class ResponseHandler(Protocol):
    """Who an upstream connection reports its response to (one request's exchange)."""

    @property
    def down(self) -> Corkable: ...

    def response_head(self, conn: UpstreamConnection, status: int) -> None: ...

    def response_body(self, data: bytes) -> None: ...

    def response_complete(self, conn: UpstreamConnection) -> None: ...

    def upstream_lost(self, conn: UpstreamConnection) -> None: ...

    def upstream_bad(self, conn: UpstreamConnection, exc: Exception) -> None: ...

    def upstream_write_paused(self, paused: bool) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to one endpoint, and the response on it.

    After ``on_headers_complete`` the handler reads the rewritten head from
    :attr:`out` (hop-by-hop headers removed, no final blank line) and the
    framing from :attr:`chunked` and :attr:`has_length`. A final response's
    completion is reported once the read that completed it is parsed, so
    that bytes behind it are seen first.
    """

    __slots__ = (
        "address",
        "chunked",
        "closed",
        "closing",
        "complete",
        "drop",
        "fields",
        "handler",
        "has_length",
        "head_done",
        "idle_since",
        "out",
        "parser",
        "pool",
        "read_paused",
        "reason",
        "received",
        "retire",
        "reusable",
        "room",
        "size",
        "status",
        "te",
        "trailers",
        "transport",
        "uncounted",
        "write_paused",
    )

    def __init__(self, pool: UpstreamPool, address: Address) -> None:
        self.pool = pool
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser(self)
        self.handler: ResponseHandler | None = None
        #: any byte received while carrying the current request
        self.received = False
        #: close instead of pooling when the current request ends (endpoint removed)
        self.retire = False
        self.closing = False
        self.closed = False
        self.uncounted = False
        self.read_paused = False
        self.write_paused = False
        self.idle_since = 0.0
        self.out: list[bytes] = [b""]
        self.reason = b""
        self.head_done = False
        self.chunked = False
        self.has_length = False
        self.trailers: list[bytes] | None = None
        #: more hop-by-hop header names, from the Connection header
        self.drop: frozenset[bytes] = frozenset()
        self.te: bytes | None = None
        #: the final response is complete (reported after the read is parsed), and
        #: whether the upstream lets the connection carry another request
        self.complete = False
        self.reusable = False
        self.status = 0
        #: bytes left before the head (or trailers) limit, UNCOUNTED in a body
        self.room = pool.head_limit
        #: trailer fields so far, and their bytes
        self.fields = 0
        self.size = 0

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but behave as one)
        self.transport = cast(asyncio.Transport, transport)
        if self.closing:  # the caller gave up while the connect was completing
            self.transport.abort()
            return
        self.pool.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.lost(self)
        handler = self.handler
        if handler is not None:
            self.handler = None
            handler.upstream_lost(self)

    def eof_received(self) -> bool | None:
        # The transport closes now (connection_lost reports it); nothing more may
        # be written to it meanwhile (uvloop raises).
        self.closing = True
        return None

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.handler is not None:
            self.handler.upstream_write_paused(True)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.handler is not None:
            self.handler.upstream_write_paused(False)

    def data_received(self, data: bytes) -> None:
        handler = self.handler
        if handler is None:
            # Bytes nobody asked for (or after a response we cut short): not reusable.
            self.abort()
            return
        self.received = True
        down = handler.down
        down.cork()
        try:
            room = self.room - len(data)
            if room >= 0:
                self.room = room
                try:
                    self.parser.feed_data(data)
                except HttpParserError as exc:
                    self._parse_error(exc)
            elif not feed_within(self, data):
                limit = self.pool.head_limit // 1024
                self._bad(Rejected(502, "bad_response", f"response head over {limit} KiB"))
            if self.complete:
                self.complete = False
                handler = self.handler
                if handler is not None:
                    handler.response_complete(self)
        finally:
            down.uncork()

    def feed(self, data: bytes | memoryview) -> bool:
        """Parses ``data``; False once the connection is given up."""
        try:
            self.parser.feed_data(data)
        except HttpParserError as exc:
            self._parse_error(exc)
            return False
        return not self.closing

    def _parse_error(self, exc: HttpParserError) -> None:
        if self.complete:
            # Bytes behind the complete response that nobody asked for (or
            # garbage): the response stands, the connection is not reused.
            self.abort()
        else:
            context = exc.__context__
            self._bad(context if isinstance(context, Rejected) else exc)

    def _bad(self, exc: Exception) -> None:
        handler = self.handler
        if handler is not None:
            self.handler = None
            handler.upstream_bad(self, exc)
        else:
            self.abort()

    # -- parser callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            raise _Unasked
        self.out = [b""]
        self.reason = b""
        self.head_done = False
        self.chunked = False
        self.has_length = False
        self.trailers = None
        self.te = None
        self.drop = frozenset()

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_done:
            # Trailers: counted field by field too (they may begin mid-read).
            self.fields += 1
            self.size += len(name) + len(value) + 3
            pool = self.pool
            if self.fields > pool.max_headers or self.size > pool.head_limit:
                raise Rejected(502, "bad_response", "response trailers over the limits")
            if self.trailers is None:
                self.trailers = []
            self.trailers += (name, _SEP, value, CRLF)
            return
        action = RESPONSE_ACTIONS.get(name.lower())
        if action is None:
            self.out += (name, _SEP, value, CRLF)
        elif action == ACT_CONTENT_LENGTH:
            self.has_length = True
            self.out += (name, _SEP, value, CRLF)
        elif action == ACT_TRANSFER_ENCODING:
            te = self.te
            self.te = value if te is None else te + b", " + value
        elif action == ACT_CONNECTION:
            self.drop |= connection_names(value)
        else:
            assert action == ACT_DROP

    def on_headers_complete(self) -> None:
        self.head_done = True
        self.room = UNCOUNTED
        self.fields = self.size = 0
        pool = self.pool
        if len(self.out) > 4 * pool.max_headers + 1:  # (the fields it passes on)
            raise Rejected(
                502, "bad_response", f"more than {pool.max_headers} response header fields"
            )
        te = self.te
        if te is not None:
            try:
                self.chunked = is_chunked(te)
            except Rejected as exc:
                raise Rejected(502, "bad_response", exc.message) from None
        self.status = status = self.parser.get_status_code()
        if self.drop:
            self.out = drop_named(self.out, self.drop)
        self.out[0] = b"HTTP/1.1 %d %s\r\n" % (status, self.reason)
        if self.handler is not None:
            self.handler.response_head(self, status)

    def on_body(self, body: bytes) -> None:
        self.room = UNCOUNTED
        if self.handler is not None:
            self.handler.response_body(body)

    def on_chunk_header(self) -> None:
        # Perhaps the last chunk, and trailers next: counted like a head.
        self.room = self.pool.head_limit

    def on_message_complete(self) -> None:
        self.room = self.pool.head_limit
        handler = self.handler
        if handler is not None:
            if self.status < 200:
                handler.response_complete(self)  # an interim response: the final one follows
            else:
                # (asked now: once the parser is past the message, it no longer knows)
                self.reusable = self.parser.should_keep_alive()
                self.complete = True

    # -- for the handler and the pool ---------------------------------------------------

    def keep_alive(self) -> bool:
        """After a complete response: whether the upstream lets the connection be reused."""
        return not self.closing and self.reusable

    def write(self, data: bytes) -> None:
        if not self.closing:
            assert self.transport is not None
            self.transport.write(data)

    def pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None and not self.closing:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and self.transport is not None:
            self.read_paused = False
            if not self.closing:
                self.transport.resume_reading()

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def uncount(self) -> None:
        """Gives back this connection's place under ``max_connections`` (once)."""
        if not self.uncounted:
            self.uncounted = True
            self.pool.target.close_connection()


class UpstreamPool:
    """Idle keep-alive connections per address, and every open connection.

    ``head_limit`` (bytes) and ``max_headers`` bound each response head, and
    each response's trailers, on the connections made for this pool.
    """

    def __init__(
        self,
        target: Target,
        *,
        max_idle: int,
        idle_timeout: float,
        head_limit: int = 60 * 1024,
        max_headers: int = 100,
    ) -> None:
        self.target = target
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.head_limit = head_limit
        self.max_headers = max_headers
        #: every connection that is open (idle or carrying a request)
        self.connections: set[UpstreamConnection] = set()
        self._idle: dict[Address, list[UpstreamConnection]] = {}
        self._closed = False

    @property
    def idle_count(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    def take(self, address: Address) -> UpstreamConnection | None:
        """The most recently used idle connection to an address, if any."""
        idle = self._idle.get(address)
        while idle:
            conn = idle.pop()
            if not conn.closing:
                return conn
        return None

    def put(self, conn: UpstreamConnection) -> None:
        """A connection whose response is complete: back to the pool, or closed."""
        if self._closed or conn.retire or conn.closing:
            conn.close()
            return
        idle = self._idle.get(conn.address)
        if idle is None:
            idle = self._idle[conn.address] = []
        conn.idle_since = time.monotonic()
        idle.append(conn)
        if len(idle) > self.max_idle:
            idle.pop(0).close()

    async def connect(
        self,
        conn: UpstreamConnection,
        host: str,
        port: int,
        timeout: float,
        *,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """Connects ``conn`` (made for this pool; the caller has already called
        ``target.open_connection()``), over TLS with ``tls``. Raises OSError or
        TimeoutError; on any failure, cancellation included, the connection's
        place is given back."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(
                    lambda: conn,
                    host,
                    port,
                    ssl=tls,
                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT if tls is not None else None,
                )
        except BaseException:
            conn.abort()
            conn.uncount()
            raise

    def lost(self, conn: UpstreamConnection) -> None:
        """``conn`` is closed: forget it."""
        self.connections.discard(conn)
        idle = self._idle.get(conn.address)
        if idle and conn in idle:
            idle.remove(conn)
        conn.uncount()

    def keep_only(self, addresses: Collection[Address]) -> None:
        """Only ``addresses`` are current (endpoints were removed or moved): idle
        connections elsewhere close now, busy ones after their request."""
        for address in [a for a in self._idle if a not in addresses]:
            for conn in self._idle.pop(address):
                conn.close()
        for conn in self.connections:
            if conn.address not in addresses:
                conn.retire = True

    def sweep(self, now: float) -> None:
        """Closes connections idle for ``idle_timeout`` (oldest first in each list)."""
        limit = now - self.idle_timeout
        for address, idle in list(self._idle.items()):
            while idle and idle[0].idle_since <= limit:
                idle.pop(0).close()
            if not idle:
                del self._idle[address]

    def close_idle(self) -> None:
        """Closes every idle connection; from now on, returned ones close too."""
        self._closed = True
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def abort_all(self) -> None:
        self.close_idle()
        for conn in list(self.connections):
            conn.abort()
