"""A small HTTP/1.1 server for a few fixed ``GET`` routes: the sidecar's admin endpoints.

Why it exists: the admin endpoints are three documents, and the general web
framework cost the sidecar about 11 MB of resident memory just by being
imported, against a budget of 60 MB for the whole process. Requests are
parsed by ``httptools`` (which the proxy uses anyway).

What it implements: keep-alive and pipelining (answers in request order);
``GET`` and ``HEAD`` (no body, same headers) on the given paths, 405 with
``Allow`` for another method there, 404 elsewhere; every response framed by
``Content-Length``; ``Connection: close`` and HTTP/1.0 honoured.

Limits are an :class:`~serving.http_limits.HttpLimits`, the admin ports'
(``ADMIN_LIMITS``) by default. A request whose head exceeds ``max_head``
bytes gets 431, one whose body exceeds ``max_body`` (the server's own
setting) gets 413, an unparseable one 400 (so does a method unknown to the
parser); each of these closes the connection. A request (head and body: a
body is small here, ``body_timeout`` does not apply) must arrive within
``head_timeout`` seconds of its first byte, the first one within
``head_timeout`` of the connection opening, else 408 and the connection
closes; a connection is closed when no request has completed on it for
``idle_timeout`` seconds (which also bounds a client that stopped reading).
While the client does not read its responses, reading its further requests
is paused. At most ``max_connections`` connections are held, and
``max_connections_per_ip`` from one client address: the excess is answered
503 and closed as it is accepted (a
:class:`~serving.http_limits.ConnectionGate`).

Handlers are synchronous callables returning a :class:`Response`; an
exception in one is logged and answered with 500.

A route may also have a *guard* (``guards``: path → :data:`Guard`), an async
check of the request's ``Authorization`` header that answers ``None`` to let
the handler answer, or the refusal to send instead. Only a server with guards
captures that header (its connections are a subclass, so the parser of a
server without them runs exactly as before). A request waiting for its check
holds back the answers to the requests pipelined behind it (answers stay in
request order); past :data:`MAX_WAITING` of those, reading pauses. The check
is a task of its connection, cancelled when the connection closes and awaited
by :meth:`HttpServer.close`. ``ssl_context`` serves TLS (the handshake must finish
within ``head_timeout``). :meth:`HttpServer.close`
stops accepting, closes every connection (unsent responses get a short
grace) and waits until they are gone.
"""

from __future__ import annotations

import asyncio
import email.utils
import enum
import http
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, NamedTuple, cast
from urllib.parse import unquote_to_bytes

import httptools

from serving.http_limits import ADMIN_LIMITS, ConnectionGate, HttpLimits, refuse

__all__ = ["Guard", "Handler", "HttpServer", "Response"]

logger = logging.getLogger(__name__)

#: The largest request body accepted (and discarded), in bytes.
MAX_BODY = 64 * 1024
#: Seconds :meth:`HttpServer.close` lets connections flush what they were sending.
CLOSE_GRACE = 1.0
#: Requests one connection may pipeline behind a request waiting for its guard
#: before reading from it pauses.
MAX_WAITING = 16
_ALLOWED = (b"GET", b"HEAD")
_TEXT = "text/plain; charset=utf-8"


class Response(NamedTuple):
    """One answer: a status code, a full ``Content-Type``, the body and any
    further headers (``(name, value)`` pairs, e.g. ``WWW-Authenticate``)."""

    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[], Response]
#: Checks a request's ``Authorization`` value ("" when it has none): None lets the
#: route's handler answer, a Response is the refusal to send instead.
Guard = Callable[[str], Coroutine[Any, Any, Response | None]]


class _State(enum.Enum):
    NEW = "new"
    SERVING = "serving"
    CLOSED = "closed"


class HttpServer:
    """Serves ``routes`` (path → handler) on one listening address.

    ``start()`` binds (raising ``OSError`` when it cannot) and returns the
    bound socket addresses; ``close()`` is idempotent, and a closed server
    cannot be started again.
    """

    def __init__(
        self,
        routes: Mapping[str, Handler],
        *,
        guards: Mapping[str, Guard] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        limits: HttpLimits = ADMIN_LIMITS,
        max_body: int = MAX_BODY,
        close_grace: float = CLOSE_GRACE,
    ) -> None:
        self.routes = {path.encode(): handler for path, handler in routes.items()}
        self.guards = {path.encode(): guard for path, guard in (guards or {}).items()}
        unknown = set(self.guards) - set(self.routes)
        if unknown:
            raise ValueError(f"guards for paths that are not routes: {sorted(unknown)}")
        self.ssl_context = ssl_context
        self.limits = limits
        self.gate = ConnectionGate(
            "admin HTTP",
            max_connections=limits.max_connections,
            max_per_client=limits.max_connections_per_ip,
        )
        self.max_body = max_body
        self.close_grace = close_grace
        self._state = _State.NEW
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self._all_closed: asyncio.Event | None = None
        self._date = (0, b"")
        #: the guards' checks running now (each owned by its connection)
        self.checks: set[asyncio.Task[Response | None]] = set()

    @property
    def connections(self) -> int:
        """How many client connections are open."""
        return len(self._connections)

    async def start(self, host: str, port: int) -> list[tuple[str, int]]:
        """Listens on ``host:port`` (port 0: any free port); returns the bound addresses."""
        if self._state is not _State.NEW:
            raise RuntimeError(f"the HTTP server is {self._state.value}")
        loop = asyncio.get_running_loop()
        connection = _GuardedConnection if self.guards else _Connection
        ssl_context = self.ssl_context
        self._server = await loop.create_server(
            lambda: connection(self),
            host,
            port,
            reuse_address=True,
            backlog=128,
            ssl=ssl_context,
            ssl_handshake_timeout=self.limits.head_timeout if ssl_context is not None else None,
        )
        self._state = _State.SERVING
        return [sock.getsockname()[:2] for sock in self._server.sockets]

    async def close(self) -> None:
        """Stops accepting, closes every connection and waits until they are gone."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        if self._connections:
            self._all_closed = asyncio.Event()
            for conn in list(self._connections):
                conn.close()
            try:
                async with asyncio.timeout(self.close_grace):
                    await self._all_closed.wait()
            except TimeoutError:
                for conn in list(self._connections):
                    conn.abort()
                await self._all_closed.wait()
        if self.checks:  # cancelled by their connections' ends: wait until they are
            await asyncio.wait(list(self.checks))
        await server.wait_closed()

    # -- for connections ---------------------------------------------------------------

    def date(self) -> bytes:
        """The ``Date`` header value, formatted at most once a second."""
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, email.utils.formatdate(now, usegmt=True).encode())
        return self._date[1]

    def added(self, conn: _Connection) -> None:
        self._connections.add(conn)
        if self._state is _State.CLOSED:
            conn.close()  # accepted just before close() stopped the listener

    def removed(self, conn: _Connection) -> None:
        self._connections.discard(conn)
        if not self._connections and self._all_closed is not None:
            self._all_closed.set()


class _Request(NamedTuple):
    method: bytes
    path: bytes
    keep_alive: bool
    http10: bool
    authorization: str  # captured only by a server with guards


class _Connection(asyncio.Protocol):
    """One client connection: parser callbacks queue requests, ``_answer`` replies in order."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._queue: deque[_Request] = deque()
        self._url = bytearray()
        self._in_head = False
        self._head_seen = 0  # head bytes delivered by the parser's callbacks
        self._head_raw = 0  # bytes of reads that fell entirely inside one head
        self._body_size = 0
        self._error: http.HTTPStatus | None = None
        self._upgraded = False
        self._paused = False
        self._closing = False
        self._last_request = 0.0
        self._request_due: float | None = None  # when the request being read must be in
        self._in_request = False  # part of a request has come
        self._timer: asyncio.TimerHandle | None = None
        self._key: str | None = None  # the gate's, while admitted
        self._authorization = ""  # the request's Authorization value (guarded servers)
        self._check: asyncio.Task[Response | None] | None = None  # the head request's guard
        self._held = False  # reading paused: too many requests behind a check

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._key = self._server.gate.admit(transport.get_extra_info("peername"))
        if self._key is None:
            self._closing = True
            refuse(transport)
            return
        self._transport = cast(asyncio.Transport, transport)
        self._server.added(self)
        self._last_request = self._loop.time()
        self._request_due = self._last_request + self._server.limits.head_timeout
        self._schedule()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._key is None:
            return  # refused
        self._server.gate.release(self._key)
        self._key = None
        self._closing = True
        self._queue.clear()
        self._cancel_check()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None
        self._server.removed(self)

    def data_received(self, data: bytes) -> None:
        if self._closing or self._error is not None or self._upgraded:
            return
        was_in_head = self._in_head
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Not switching protocols: what follows the request is not HTTP, so the
            # connection ends after the answer.
            self._upgraded = True
        except httptools.HttpParserCallbackError:
            logger.exception("admin HTTP: parser callback failed")
            self._fail(http.HTTPStatus.INTERNAL_SERVER_ERROR)
        except httptools.HttpParserError:
            self._fail(http.HTTPStatus.BAD_REQUEST)
        else:
            if was_in_head and self._in_head:
                # The whole read belongs to one unfinished head: without this, a
                # header line that never ends would be buffered by the parser.
                self._head_raw += len(data)
                if self._head_raw > self._server.limits.max_head:
                    self._fail(http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
        self._answer()

    def pause_writing(self) -> None:
        # The client is not reading its answers: stop reading its questions too.
        self._paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self._transport is not None and not self._closing and not self._held:
            self._transport.resume_reading()
        self._answer()

    # -- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._request_due is None:
            self._request_due = self._loop.time() + self._server.limits.head_timeout
            self._schedule()
        self._in_request = True
        self._in_head = True
        self._url.clear()
        self._head_seen = 0
        self._head_raw = 0
        self._body_size = 0
        self._authorization = ""

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)

    def on_headers_complete(self) -> None:
        self._in_head = False

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._server.max_body:
            self._fail(http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE)

    def on_message_complete(self) -> None:
        if self._error is not None:
            return
        parser = self._parser
        self._queue.append(
            _Request(
                parser.get_method(),
                _path_of(bytes(self._url)),
                parser.should_keep_alive(),
                parser.get_http_version() == "1.0",
                self._authorization,
            )
        )
        self._last_request = self._loop.time()
        self._request_due = None
        self._in_request = False

    # -- answering -----------------------------------------------------------------------

    def _count_head(self, size: int) -> None:
        self._head_seen += size
        if self._head_seen > self._server.limits.max_head:
            self._fail(http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)

    def _fail(self, status: http.HTTPStatus) -> None:
        """Answers ``status`` after the requests already queued, then closes."""
        if self._error is None:
            self._error = status

    def _answer(self) -> None:
        guards = self._server.guards
        while self._queue and not self._paused and not self._closing:
            if guards and self._queue[0].path in guards and self._queue[0].method in _ALLOWED:
                response = self._guarded(self._queue[0])
                if response is None:
                    return  # its check runs: _checked answers again when it is done
                request = self._queue.popleft()
            else:
                request = self._queue.popleft()
                response = self._respond(request)
            # After an upgrade request comes something that is not HTTP.
            last = not request.keep_alive or (self._upgraded and not self._queue)
            self._write(response, request.method == b"HEAD", last, request.http10)
        if self._closing or self._queue:
            return
        if self._error is not None:
            self._write(_plain(self._error), False, True, False)
        elif self._upgraded:
            self.close()

    def _guarded(self, request: _Request) -> Response | None:
        """The answer to a guarded request once its check is done; None while it runs
        (it is started here)."""
        check = self._check
        if check is None:
            guard = self._server.guards[request.path]
            check = self._loop.create_task(guard(request.authorization), name="admin-http-guard")
            self._check = check
            self._server.checks.add(check)
            check.add_done_callback(self._checked)
        if not check.done():
            if len(self._queue) > MAX_WAITING and not self._held and self._transport is not None:
                self._held = True
                self._transport.pause_reading()
            return None
        self._check = None
        try:
            refusal = check.result()
        except Exception:
            logger.exception("admin HTTP: the check of %s failed", request.path.decode("latin-1"))
            return _plain(http.HTTPStatus.INTERNAL_SERVER_ERROR)
        return refusal if refusal is not None else self._respond(request)

    def _checked(self, check: asyncio.Task[Response | None]) -> None:
        self._server.checks.discard(check)
        if check.cancelled():
            return  # the connection ended first
        if self._held:
            self._held = False
            if self._transport is not None and not self._closing and not self._paused:
                self._transport.resume_reading()
        self._answer()

    def _cancel_check(self) -> None:
        check, self._check = self._check, None
        if check is not None:
            check.cancel()

    def _respond(self, request: _Request) -> Response:
        handler = self._server.routes.get(request.path)
        if handler is None:
            return _plain(http.HTTPStatus.NOT_FOUND)
        if request.method not in _ALLOWED:
            return _plain(http.HTTPStatus.METHOD_NOT_ALLOWED)
        try:
            return handler()
        except Exception:
            logger.exception("admin HTTP: %s failed", request.path.decode("latin-1"))
            return _plain(http.HTTPStatus.INTERNAL_SERVER_ERROR)

    def _write(self, response: Response, head_only: bool, last: bool, http10: bool) -> None:
        transport = self._transport
        if transport is None:
            return
        status = http.HTTPStatus(response.status)
        head = [
            b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode()),
            b"Content-Type: %s\r\n" % response.content_type.encode("latin-1"),
            b"Content-Length: %d\r\n" % len(response.body),
            b"Date: %s\r\n" % self._server.date(),
        ]
        if status is http.HTTPStatus.METHOD_NOT_ALLOWED:
            head.append(b"Allow: %s\r\n" % b",".join(_ALLOWED))
        for name, value in response.headers:
            head.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
        if last:
            head.append(b"Connection: close\r\n")
        elif http10:
            head.append(b"Connection: keep-alive\r\n")
        head.append(b"\r\n")
        if not head_only:
            head.append(response.body)
        transport.write(b"".join(head))
        if last:
            self._closing = True
            self._queue.clear()
            transport.close()  # after what is buffered has been sent

    # -- closing -------------------------------------------------------------------------

    def _due(self) -> float:
        due = self._last_request + self._server.limits.idle_timeout
        return due if self._request_due is None else min(due, self._request_due)

    def _schedule(self) -> None:
        due = self._due()
        if self._timer is not None:
            if self._timer.when() <= due:
                return
            self._timer.cancel()
        self._timer = self._loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._transport is None:
            return
        now = self._loop.time()
        if now < self._due():
            self._schedule()
            return
        if self._transport.get_write_buffer_size() or self._queue:
            self.abort()  # stuck on a client that stopped reading
        elif self._in_request:
            # Part of a request came, not all of it in time: say so, then close.
            self._fail(http.HTTPStatus.REQUEST_TIMEOUT)
            self._answer()
        else:
            self.close()

    def close(self) -> None:
        """Closes once what is buffered has been sent."""
        self._closing = True
        self._cancel_check()
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Closes now, dropping anything unsent."""
        self._closing = True
        self._cancel_check()
        if self._transport is not None:
            self._transport.abort()


class _GuardedConnection(_Connection):
    """A connection of a server with guards: it also keeps the ``Authorization`` header."""

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        if len(name) == 13 and name.lower() == b"authorization":
            if self._authorization:
                # Two of them: which one a proxy in front looked at is unknown.
                self._fail(http.HTTPStatus.BAD_REQUEST)
            self._authorization = value.decode("latin-1") or " "


def _path_of(url: bytes) -> bytes:
    """The decoded path of an origin-form or absolute-form request target."""
    if not url.startswith(b"/"):
        try:
            url = httptools.parse_url(url).path or b"/"
        except httptools.HttpParserInvalidURLError:
            return b""
    path = url.partition(b"?")[0].partition(b"#")[0]
    return unquote_to_bytes(path) if b"%" in path else path


def _plain(status: http.HTTPStatus) -> Response:
    return Response(status, _TEXT, f"{status.value}: {status.phrase}".encode())
