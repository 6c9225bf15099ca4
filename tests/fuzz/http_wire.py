"""HTTP/1.1 on the wire for the fuzz tests: a raw client connection, a strict reading
of what a client sent, and a strict reading of what a server answered.

:func:`converse` sends exact bytes (in the pieces given), half-closes if
asked, and reads until the server closes or a deadline passes. :func:`sent_requests`
says which requests a strict parser finds complete in what was sent, up to
its first error: what an honest intermediary may forward, at most.
:func:`read_responses` parses the answers and says when they are not
well framed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass, field

import httptools

# Statuses whose responses never have a body.
_BODILESS = {204, 304}


@dataclass
class Exchange:
    """What one client connection sent and received."""

    sent: bytes
    received: bytes = b""
    # The server ended the connection (EOF or reset) before the deadline.
    closed: bool = False
    reset: bool = False
    # The client stopped early and closed without reading.
    abandoned: bool = False
    # The client shut its sending side after the last piece (and still read).
    half_closed: bool = False


async def converse(
    address: str,
    pieces: list[bytes],
    *,
    expected: int,
    timeout: float,
    quiet: float = 0.2,
    abandon: bool = False,
    half_close: bool = False,
) -> Exchange:
    """Sends ``pieces``, one write each, and reads until the server closes, or
    until ``expected`` responses are complete and nothing more came for
    ``quiet`` seconds, or ``timeout``. ``abandon``: close right after sending.
    ``half_close``: shut the sending side after the last piece (``shutdown(SHUT_WR)``),
    and read until the server closes or ``timeout``: a server answers what it was
    sent whole, then closes (RFC 9112, 9.6)."""
    host, port = address.rsplit(":", 1)
    exchange = Exchange(b"".join(pieces), abandoned=abandon)
    reader, writer = await asyncio.open_connection(host, int(port))
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        try:
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
        except ConnectionError:
            exchange.reset = True  # the server closed early: read what it said
        if abandon:
            return exchange
        if half_close and not exchange.reset:
            try:
                writer.write_eof()
                exchange.half_closed = True
                expected = 1 << 30  # until the server closes
            except (OSError, RuntimeError):
                # ENOTCONN as well as a reset: the server closed first.
                exchange.reset = True
        received = bytearray()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if _complete(received) >= expected:
                        try:
                            chunk = await asyncio.wait_for(reader.read(65536), quiet)
                        except TimeoutError:
                            break
                    else:
                        chunk = await reader.read(65536)
                    if not chunk:
                        exchange.closed = True
                        break
                    received += chunk
        except TimeoutError:
            pass
        except ConnectionError:  # a reset, or the broken pipe of a write that failed
            exchange.closed = exchange.reset = True
        exchange.received = bytes(received)
        return exchange
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def _complete(data: bytes | bytearray) -> int:
    """How many responses in ``data`` are complete; all of them when ``data`` does
    not parse, or holds an event stream or a switch to WebSocket: after those,
    nothing more will come."""
    responses, problem = read_responses(bytes(data), ended=False, close_framed_ok=True)
    if problem or any(r.streaming for r in responses):
        return 1 << 30  # nothing more will come
    return sum(r.complete for r in responses)


@dataclass
class SentRequest:
    method: bytes
    target: bytes
    version: str = "1.1"


class _RequestReader:
    def __init__(self) -> None:
        self.complete: list[SentRequest] = []
        self._target = b""
        self.parser = httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        self._target = b""

    def on_url(self, url: bytes) -> None:
        self._target += url

    def on_message_complete(self) -> None:
        parser = self.parser
        self.complete.append(
            SentRequest(parser.get_method(), self._target, parser.get_http_version())
        )


def sent_requests(data: bytes) -> list[SentRequest]:
    """The requests a strict HTTP/1.1 parser reads whole from ``data``, in order,
    up to the first error or upgrade (after which nothing is HTTP any more)."""
    reader = _RequestReader()
    with contextlib.suppress(httptools.HttpParserError, httptools.HttpParserUpgrade):
        reader.parser.feed_data(data)
    return reader.complete


@dataclass
class Response:
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    complete: bool = False

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    @property
    def streaming(self) -> bool:
        """A head that opens a stream with no end: Server-Sent Events, or a switch
        of protocols."""
        kind = self.header(b"content-type") or b""
        return self.status == 101 or (self.status == 200 and kind.startswith(b"text/event-stream"))


class _ResponseReader:
    def __init__(self) -> None:
        self.responses: list[Response] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.responses.append(Response())

    def on_header(self, name: bytes, value: bytes) -> None:
        self.responses[-1].headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.responses[-1].status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.responses[-1].body += body

    def on_message_complete(self) -> None:
        self.responses[-1].complete = True


def read_responses(
    data: bytes, *, ended: bool, close_framed_ok: bool = False
) -> tuple[list[Response], str | None]:
    """The responses in ``data`` and what is wrong with their framing, if anything:
    a parse error, a response framed by closing the connection (neither
    Content-Length nor chunked) unless ``close_framed_ok`` and it is the
    last, or, once the server ``ended`` the connection, a response it left
    unfinished (an event stream is never finished)."""
    reader = _ResponseReader()
    try:
        reader.parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        pass  # a 101 answer: what follows is another protocol
    except httptools.HttpParserError as err:
        return reader.responses, f"not HTTP/1.1: {err}"
    ends_with_close = False
    for i, response in enumerate(reader.responses):
        if not response.status:
            continue  # a head still arriving
        framed = (
            response.header(b"content-length") is not None
            or b"chunked" in (response.header(b"transfer-encoding") or b"").lower()
            or response.status < 200
            or response.status in _BODILESS
        )
        ends_with_close = not framed and close_framed_ok and i == len(reader.responses) - 1
        if not framed and not ends_with_close:
            return reader.responses, f"{response.status} framed by closing the connection"
    last = reader.responses[-1] if reader.responses else None
    if ended and last is not None and not (last.complete or last.streaming or ends_with_close):
        return reader.responses, "the connection ended inside a response"
    return reader.responses, None
