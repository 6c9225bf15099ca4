"""aiohttp applications served under :class:`~serving.http_limits.HttpLimits`.

aiohttp (3.14) has no timeout for a request head: its keep-alive timer
(3,630 s by default) was all that ever closed a client that sent half a head,
and it caps no connections. Its WebSocket reader accepts unmasked client
frames, which RFC 6455 §5.1 says a server must refuse. And it logs every
malformed request at ERROR with a traceback, so that anyone who can reach a
port can fill the log. :class:`LimitedRunner` is an ``AppRunner`` whose
connections

- are admitted by a :class:`~serving.http_limits.ConnectionGate` (the excess
  is answered 503 and closed before aiohttp sees it);
- must deliver each request head within ``head_timeout`` of the connection
  opening or of the head's first byte (else 408 and closed), in at most
  ``max_head`` bytes (else 431 and closed);
- are closed after ``idle_timeout`` without a request (aiohttp's keep-alive
  timer), and get ``body_timeout`` to send what a handler did not read;
- answer a request whose version is not HTTP/1.0 or HTTP/1.1 with 505 and
  close (aiohttp's parser takes HTTP/2.0 and HTTP/0.9 request lines, and
  served them as HTTP/1.x: a WebSocket handshake in "HTTP/2.0" got its 101);
- refuse an unmasked WebSocket frame (close 1002), aiohttp's reader enforcing
  the rest of RFC 6455 (reserved bits and opcodes, fragmented or long control
  frames: 1002; text that is not UTF-8: 1007; a message over the handler's
  ``max_msg_size``: 1009);
- cancel the handler of a request whose client went away;
- log a malformed request at DEBUG in one line;
- with TLS (:meth:`LimitedRunner.site`), must finish the handshake within
  ``head_timeout`` (asyncio's own default is 60 s, and a connection in its
  handshake counts against no cap yet).

Reading a request body within ``body_timeout`` is the handler's part (aiohttp
reads bodies only when asked): see ``sidecar.bridges._http``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion, HttpVersion10, HttpVersion11, RawRequestMessage
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from serving.http_limits import ConnectionGate, HttpLimits, refuse

__all__ = ["LimitedRunner", "LimitedSite"]

_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 30\r\nConnection: close\r\n\r\nthe request head came too late"
)
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 28\r\nConnection: close\r\n\r\nthe request head is too long"
)
#: A frame header aiohttp's reader refuses with 1002 (opcode 3 is reserved): fed to it in
#: place of an unmasked frame, so that it closes the socket as for any protocol error.
_PROTOCOL_ERROR = b"\x83\x80"
#: aiohttp's parser limits, stated (its defaults): a request line or header field
#: in bytes (400 past it), and header fields in one head.
MAX_LINE = 8190
MAX_FIELDS = 128
_Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
_RequestFactory = Callable[
    [RawRequestMessage, StreamReader, RequestHandler, AbstractStreamWriter, "asyncio.Task[None]"],
    web.BaseRequest,
]
_SUPPORTED = (HttpVersion11, HttpVersion10)
#: The version of a request refused with 505 (set on it by the request factory).
_REFUSED_VERSION = web.RequestKey("refused_version", HttpVersion)


class LimitedRunner(web.AppRunner):
    """Serves ``app`` under ``limits`` (see the module docstring). ``name`` is the
    server's name in logs (``"admin HTTP"``); ``logger`` gets the lines about
    malformed requests and failed handlers (aiohttp's own logger by default)."""

    def __init__(
        self,
        app: web.Application,
        limits: HttpLimits,
        *,
        name: str,
        logger: logging.Logger | None = None,
        shutdown_timeout: float = 2.0,
    ) -> None:
        # handler_cancellation: a handler is cancelled when its client goes away, so that
        # a client cannot leave work running (a request waiting 300 s for a reply) behind
        # a connection that no longer counts against any cap.
        super().__init__(
            app, access_log=None, shutdown_timeout=shutdown_timeout, handler_cancellation=True
        )
        self.limits = limits
        self.gate = ConnectionGate(
            name,
            max_connections=limits.max_connections,
            max_per_client=limits.max_connections_per_ip,
        )
        self._logger = logger or logging.getLogger("aiohttp.server")

    @property
    def connections(self) -> int:
        """Client connections open (admitted, not yet closed)."""
        return self.gate.count

    def site(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        reuse_address: bool | None = None,
    ) -> LimitedSite:
        """The listening site for ``host:port``; with ``ssl_context``, TLS whose
        handshake must be done within the limits' ``head_timeout``."""
        return LimitedSite(
            self,
            host,
            port,
            ssl_context=ssl_context,
            reuse_address=reuse_address,
            handshake_timeout=self.limits.head_timeout,
        )

    async def _make_server(self) -> web.Server:
        # The application's server, rebuilt to make our protocol: its handler and
        # request factory are public attributes, the rest is our choice.
        app_server = await super()._make_server()
        return _LimitedServer(
            app_server,
            gate=self.gate,
            limits=self.limits,
            keepalive_timeout=self.limits.idle_timeout,
            lingering_time=self.limits.body_timeout,
            max_line_size=MAX_LINE,
            max_field_size=MAX_LINE,
            max_headers=MAX_FIELDS,
            logger=cast(logging.Logger, _QuietClientErrors(self._logger, {})),
            access_log=None,
        )


class LimitedSite(web.TCPSite):
    """A TCP site whose TLS handshakes have a deadline (aiohttp's site sets none)."""

    def __init__(
        self, runner: web.BaseRunner, *args: Any, handshake_timeout: float, **kwargs: Any
    ) -> None:
        super().__init__(runner, *args, **kwargs)
        self._handshake_timeout = handshake_timeout

    async def start(self) -> None:
        await web.BaseSite.start(self)  # what TCPSite.start does, with the deadline added
        server = self._runner.server
        assert server is not None
        listening = await asyncio.get_running_loop().create_server(
            server,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            ssl_handshake_timeout=self._handshake_timeout if self._ssl_context else None,
        )
        self._server = listening
        sockets = listening.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


class _LimitedServer(web.Server):
    """aiohttp's protocol factory, making :class:`_LimitedProtocol` connections and
    telling each when a request is being handled."""

    def __init__(
        self, app_server: web.Server, *, gate: ConnectionGate, limits: HttpLimits, **kwargs: Any
    ) -> None:
        self._app_handler: _Handler = app_server.request_handler
        self._app_request: _RequestFactory = app_server.request_factory
        self.gate = gate
        self.limits = limits
        self._own_loop = asyncio.get_running_loop()
        self._protocol_kwargs = kwargs
        super().__init__(
            self._handle,
            request_factory=self._make_request,
            handler_cancellation=app_server.handler_cancellation,
            loop=self._own_loop,
            **kwargs,
        )

    def __call__(self) -> _LimitedProtocol:
        return _LimitedProtocol(self, loop=self._own_loop, **self._protocol_kwargs)

    def _make_request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        """The application's request; one in another HTTP version than 1.0 and 1.1 is
        marked to be refused, and made an HTTP/1.1 request that closes the connection,
        so that the 505 is written in HTTP/1.1 (RFC 9110, 2.5: the highest version the
        server speaks) with ``Connection: close``."""
        version = message.version
        if version in _SUPPORTED:
            return self._app_request(message, payload, protocol, writer, task)
        message = message._replace(version=HttpVersion11, should_close=True)
        request = self._app_request(message, payload, protocol, writer, task)
        request[_REFUSED_VERSION] = version
        return request

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        protocol = request.protocol
        if isinstance(protocol, _LimitedProtocol):
            protocol.request_started()
        try:
            refused = request.get(_REFUSED_VERSION)
            if refused is not None:
                raise web.HTTPVersionNotSupported(
                    text=f"HTTP/{refused.major}.{refused.minor} is not supported: "
                    "HTTP/1.1 and HTTP/1.0 are"
                )
            response = await self._app_handler(request)
        except web.HTTPException as exc:  # aiohttp answers with it as with a returned one
            _answered(request, exc)
            raise
        _answered(request, response)
        return response


def _answered(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """The handler is done. When part of the body has not even arrived (the handler
    answered an error first), aiohttp discards the rest for up to ``lingering_time``
    (body_timeout) after the answer; then the connection closes, since what follows is
    not a request head. Otherwise the connection is idle until the next head."""
    if not request.content.is_eof():
        response.force_close()
    elif isinstance(request.protocol, _LimitedProtocol):
        request.protocol.request_ended()


class _LimitedProtocol(web.RequestHandler):
    """One connection: admitted by the gate, held to the head timeout and size."""

    def __init__(self, manager: _LimitedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._gate = manager.gate
        self._limits = manager.limits
        self._key: str | None = None
        self._refused = False
        self._busy = False  # a request is being handled
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_size = 0
        self._head_ended = False  # the blank line ending the current head was seen
        self._last = b""  # the end of the previous read, for a blank line split across reads
        self._given_up = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        key = self._gate.admit(transport.get_extra_info("peername"))
        if key is None:
            self._refused = True
            refuse(transport)
            return
        self._key = key
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            return
        self._stop_head_timer()
        if self._key is not None:
            self._gate.release(self._key)
            self._key = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._given_up:
            return
        if not self._busy and data:
            if self._head_timer is None:
                self._start_head_timer()  # the first byte of the next head
            if not self._head_ended:
                self._count_head(data)
                if self._head_size > self._limits.max_head:
                    self._give_up(_TOO_LARGE)
                    return
        super().data_received(data)

    def set_parser(self, parser: Any, data_received_cb: Callable[[], None] | None = None) -> None:
        # Called once a WebSocket is accepted: its frames go through the mask check first.
        super().set_parser(cast(Any, _MaskedFramesOnly(parser)), data_received_cb)

    # -- requests ------------------------------------------------------------------------

    def request_started(self) -> None:
        self._busy = True
        self._stop_head_timer()
        self._head_size = 0
        self._head_ended = False
        self._last = b""

    def request_ended(self) -> None:
        # Idle from here: aiohttp's keep-alive timer closes the connection after
        # idle_timeout; the next head's first byte starts the head timer.
        self._busy = False

    def _count_head(self, data: bytes) -> None:
        if not self._head_size:
            data = data.lstrip(b"\r\n")  # empty lines before a request line are allowed
            if not data:
                return
        seen = self._last + data
        end = _head_end(seen)
        if end < 0:
            self._head_size += len(data)
            self._last = seen[-3:]
        else:
            self._head_size += max(0, end - len(self._last))
            self._head_ended = True

    # -- the head timer ------------------------------------------------------------------

    def _start_head_timer(self) -> None:
        self._stop_head_timer()
        loop = asyncio.get_running_loop()
        self._head_timer = loop.call_later(self._limits.head_timeout, self._head_late)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self._busy or self.transport is None:
            return
        self._give_up(_TIMEOUT if self._head_size else b"")

    def _give_up(self, answer: bytes) -> None:
        """Answers (when the client sent part of a head) and closes."""
        self._given_up = True
        self._stop_head_timer()
        if answer and self.transport is not None:
            self.transport.write(answer)
        self.force_close()


def _head_end(data: bytes) -> int:
    """Where the blank line ending a request head ends in ``data``, or -1."""
    ends = [i + len(mark) for mark in (b"\r\n\r\n", b"\n\n") if (i := data.find(mark)) >= 0]
    return min(ends) if ends else -1


class _MaskedFramesOnly:
    """Stands in front of aiohttp's WebSocket frame parser and refuses a frame that is not
    masked (RFC 6455 §5.1: "The server MUST close the connection upon receiving a
    frame that is not masked"). It reads only frame headers, to find where each
    frame starts; holding back a header's first bytes until its length is known,
    so that the parser behind always stops at a frame boundary."""

    def __init__(self, parser: Any) -> None:
        self._parser = parser
        self._held = b""
        self._skip = 0  # bytes of the current frame not yet passed
        self._failed = False

    def feed_eof(self) -> None:
        self._parser.feed_eof()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self._failed:
            return True, b""
        data = self._held + bytes(data)
        self._held = b""
        pos, size = 0, len(data)
        while pos < size:
            if self._skip:
                step = min(self._skip, size - pos)
                self._skip -= step
                pos += step
                continue
            if size - pos < 2:
                self._held = data[pos:]
                break
            second = data[pos + 1]
            if not second & 0x80:
                self._failed = True
                if pos:
                    self._parser.feed_data(data[:pos])
                return cast(tuple[bool, bytes], self._parser.feed_data(_PROTOCOL_ERROR))
            length = second & 0x7F
            extra = 2 if length == 126 else 8 if length == 127 else 0
            if size - pos < 2 + extra:
                self._held = data[pos:]
                break
            if extra:
                length = int.from_bytes(data[pos + 2 : pos + 2 + extra], "big")
            self._skip = 2 + extra + 4 + length
        passed = data[: len(data) - len(self._held)]
        if not passed:
            return False, b""
        return cast(tuple[bool, bytes], self._parser.feed_data(passed))


class _QuietClientErrors(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logger, with a malformed request (the client's error, not the
    server's) logged at DEBUG in one line instead of at ERROR with a traceback."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            remote = args[0] if args else "?"
            self.logger.debug("bad request from %s: %s", remote, _one_line(exc))
            return
        super().log(level, msg, *args, **kwargs)


def _one_line(exc: HttpProcessingError) -> str:
    text = exc.message if isinstance(exc.message, str) else str(exc)
    return " ".join(text.split())[:200] or type(exc).__name__
