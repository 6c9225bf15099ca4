"""A small HTTP/1.1 client for plain-HTTP probes: keep-alive connections, one request at a time.

Why it exists: a health probe needs one request, a status and a little of the
body, a thousand times a second. The general client costs about twice as
much CPU per request (measured: 67 against 36 µs on the default event loop,
47 against 20 on the faster one), which put 1,000 HTTP checks at 1 s over a
budget of 10% of one core. HTTPS probes still go through the general client.

What it implements of RFC 9112: a status line and headers (at most 64 KiB),
interim 1xx responses skipped, a body framed by ``Transfer-Encoding:
chunked``, by ``Content-Length``, or by the connection closing; no body for
HEAD, 204 and 304; ``Connection: close`` and HTTP/1.0 honoured; a gzip or
deflate ``Content-Encoding`` decoded. Bodies are read up to a limit: a longer
one is judged on what was read and its connection closed, so a server that
streams without end costs one limit's worth of reading, not a timeout's. A
reused connection that the server closed while idle is replaced once,
transparently. Numbers are ASCII digits of a sane length (a chunk size at most
16 hex digits), so a hostile answer is an :class:`Http1Error`, never another
exception.
"""

from __future__ import annotations

import asyncio
import string
import time
import zlib
from collections import deque
from typing import NamedTuple, cast

__all__ = ["Http1Error", "Http1Pool", "Http1Response"]

HEAD_LIMIT = 64 * 1024
IDLE_TIMEOUT = 30.0  # seconds an unused connection is kept
_CRLF = b"\r\n"
_HEX = frozenset(string.hexdigits.encode())


class Http1Error(Exception):
    """The server's answer could not be read as HTTP/1.1."""


class _StaleConnection(Exception):
    """A reused connection was closed by the server before answering anything."""


class Http1Response(NamedTuple):
    status: int
    reason: str
    body: bytes


# Framing of the body being read.
_NONE, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)


class _Connection(asyncio.Protocol):
    """One connection; the pool hands it one request at a time."""

    def __init__(self, body_limit: int) -> None:
        self.body_limit = body_limit
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.used = False
        self.idle_since = 0.0
        self._buf = bytearray()
        self._waiter: asyncio.Future[Http1Response] | None = None
        self._head_only = False
        self._got_bytes = False
        self._reset_message()

    def _reset_message(self) -> None:
        self._in_head = True
        self._status = 0
        self._reason = ""
        self._framing = _NONE
        self._remaining = 0  # bytes left of the body, or of the current chunk
        self._chunk_state = 0  # 0: size line, 1: data, 2: CRLF after data, 3: trailers
        self._body = bytearray()
        self._keep_alive = True
        self._encoding = ""
        self._cut = False  # the body reached the limit before its end

    # -- used by the pool ---------------------------------------------------

    def exchange(self, request: bytes, head_only: bool) -> asyncio.Future[Http1Response]:
        assert self.transport is not None and self._waiter is None
        self._waiter = asyncio.get_running_loop().create_future()
        self._head_only = head_only
        self._got_bytes = False
        self._reset_message()
        self.transport.write(request)
        return self._waiter

    @property
    def reusable(self) -> bool:
        return not self.closed and self._keep_alive and not self._buf

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: other event loops' transports do not
        # subclass asyncio.Transport, though they behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            self.close()  # bytes nobody asked for: the connection is out of step
            return
        self._got_bytes = True
        self._buf += data
        try:
            self._parse()
        except Http1Error as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        self._finish_on_close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._finish_on_close()

    def _finish_on_close(self) -> None:
        self.closed = True
        if self._waiter is None or self._waiter.done():
            return
        if not self._in_head and self._framing == _UNTIL_CLOSE:
            self._complete()
        elif not self._got_bytes and self.used:
            self._fail(_StaleConnection())
        else:
            self._fail(Http1Error("the server closed the connection mid-response"))

    # -- parsing ------------------------------------------------------------

    def _parse(self) -> None:
        while self._waiter is not None and not self._waiter.done():
            if self._in_head:
                if not self._parse_head():
                    return
            elif self._framing == _LENGTH:
                self._take(self._remaining)
                if self._remaining and not self._cut:
                    return
                self._complete()
            elif self._framing == _CHUNKED:
                if not self._parse_chunks():
                    return
            else:  # until close: everything that comes is body
                self._take(len(self._buf))
                if not self._cut:
                    return
                self._complete()

    def _parse_head(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0 or end > HEAD_LIMIT:
            if len(self._buf) > HEAD_LIMIT:
                raise Http1Error("the response head is larger than 64 KiB")
            return False
        head = bytes(self._buf[:end]).decode("latin-1")
        del self._buf[: end + 4]
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not _digits(parts[1], 3):
            raise Http1Error(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        status = int(parts[1])
        if not 100 <= status <= 599:
            raise Http1Error(f"status {status} out of range")
        if 100 <= status < 200 and status != 101:
            return True  # an interim response: the final one follows
        length: int | None = None
        chunked = False
        keep_alive = parts[0] != "HTTP/1.0"
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise Http1Error(f"malformed header line: {line[:80]!r}")
            name = name.strip().lower()
            value = value.strip()
            if name == "content-length":
                if not _digits(value, 18) or (length is not None and int(value) != length):
                    raise Http1Error(f"bad Content-Length: {value[:40]!r}")
                length = int(value)
            elif name == "transfer-encoding":
                chunked = value.lower().rsplit(",", 1)[-1].strip() == "chunked"
            elif name == "connection":
                tokens = {t.strip().lower() for t in value.split(",")}
                if "close" in tokens:
                    keep_alive = False
                elif "keep-alive" in tokens:
                    keep_alive = True
            elif name == "content-encoding":
                self._encoding = value.lower()
        self._in_head = False
        self._status = status
        self._reason = parts[2] if len(parts) > 2 else ""
        self._keep_alive = keep_alive
        if self._head_only or status in (101, 204, 304):
            self._framing = _NONE
            if status == 101:
                self._keep_alive = False
            self._complete()
        elif chunked:
            self._framing = _CHUNKED
        elif length is not None:
            self._framing = _LENGTH
            self._remaining = length
            if not length:
                self._complete()
        else:
            self._framing = _UNTIL_CLOSE
            self._keep_alive = False
        return True

    def _parse_chunks(self) -> bool:
        while True:
            if self._chunk_state == 0:  # size line
                end = self._buf.find(_CRLF)
                if end < 0:
                    if len(self._buf) > 4096:
                        raise Http1Error("a chunk size line is too long")
                    return False
                text = bytes(self._buf[:end]).split(b";", 1)[0].strip()
                del self._buf[: end + 2]
                if not 0 < len(text) <= 16 or not _HEX.issuperset(text):
                    raise Http1Error(f"bad chunk size: {text[:20]!r}")
                self._remaining = int(text, 16)
                self._chunk_state = 1 if self._remaining else 3
            elif self._chunk_state == 1:  # data
                self._take(self._remaining)
                if self._cut:
                    self._complete()
                    return True
                if self._remaining:
                    return False
                self._chunk_state = 2
            elif self._chunk_state == 2:  # the CRLF closing a chunk
                if len(self._buf) < 2:
                    return False
                if self._buf[:2] != _CRLF:
                    raise Http1Error("a chunk is not followed by CRLF")
                del self._buf[:2]
                self._chunk_state = 0
            else:  # trailer lines up to an empty one
                end = self._buf.find(_CRLF)
                if end < 0:
                    if len(self._buf) > HEAD_LIMIT:
                        raise Http1Error("the trailers are larger than 64 KiB")
                    return False
                del self._buf[: end + 2]
                if end == 0:
                    self._complete()
                    return True

    def _take(self, n: int) -> None:
        """Moves up to ``n`` buffered bytes into the body, and notes when the body is
        full before its end: the rest is not read, and the connection not reused."""
        room = self.body_limit - len(self._body)
        n = min(n, len(self._buf), room)
        self._body += self._buf[:n]
        del self._buf[:n]
        if self._framing != _UNTIL_CLOSE:
            self._remaining -= n
        if len(self._body) >= self.body_limit and (self._framing != _LENGTH or self._remaining > 0):
            self._cut = True
            self._keep_alive = False

    def _complete(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self._waiter = None
            return
        body = bytes(self._body)
        if self._encoding in ("gzip", "x-gzip", "deflate") and body:
            try:
                body = _decode(body, self._encoding, self.body_limit, partial=self._cut)
            except Http1Error as exc:
                self._fail(exc)
                return
        self._waiter = None
        waiter.set_result(Http1Response(self._status, self._reason, body))

    def _fail(self, exc: Exception) -> None:
        waiter = self._waiter
        self._waiter = None
        self._keep_alive = False
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()


def _digits(text: str, most: int) -> bool:
    """Whether ``text`` is 1 to ``most`` ASCII digits (``str.isdigit`` takes '²' too)."""
    return 0 < len(text) <= most and text.isascii() and text.isdigit()


def _decode(body: bytes, encoding: str, limit: int, *, partial: bool = False) -> bytes:
    # 16 + MAX_WBITS reads a gzip wrapper; 32 + MAX_WBITS detects gzip or zlib.
    wbits = 16 + zlib.MAX_WBITS if "gzip" in encoding else 32 + zlib.MAX_WBITS
    try:
        return _inflate(body, wbits, limit, partial)
    except zlib.error:
        try:  # deflate sent raw, without its zlib header
            return _inflate(body, -zlib.MAX_WBITS, limit, partial)
        except zlib.error:
            raise Http1Error(f"the body is not valid {encoding}") from None


def _inflate(body: bytes, wbits: int, limit: int, partial: bool) -> bytes:
    inflater = zlib.decompressobj(wbits)
    out = inflater.decompress(body, limit)
    # A body cut at the read limit is a cut compressed stream: judge what it holds.
    if not partial and not inflater.eof and not inflater.unconsumed_tail:
        raise zlib.error("the compressed stream is cut short")
    return out


class Http1Pool:
    """Idle keep-alive connections per (host, port), reused most recent first.

    ``request`` sends one prepared request and returns the response; the
    caller bounds it with a timeout, and a cancelled request closes its
    connection (its state is unknown). ``close()`` closes every idle one.
    """

    def __init__(self, body_limit: int) -> None:
        self._body_limit = body_limit
        self._idle: dict[tuple[str, int], deque[_Connection]] = {}
        self._closed = False
        self._pruned_at = time.monotonic()

    async def request(
        self, host: str, port: int, request: bytes, *, head_only: bool = False
    ) -> Http1Response:
        key = (host, port)
        for attempt in range(2):
            conn = self._take_idle(key) or await self._connect(host, port)
            reused = conn.used
            conn.used = True
            try:
                response = await conn.exchange(request, head_only)
            except _StaleConnection:
                conn.close()
                if reused and attempt == 0:
                    continue  # the server dropped it while idle: once more, fresh
                raise Http1Error("the server closed the connection") from None
            except BaseException:
                conn.close()  # cancelled or failed mid-exchange: its state is unknown
                raise
            now = time.monotonic()
            if conn.reusable and not self._closed:
                conn.idle_since = now
                self._idle.setdefault(key, deque()).append(conn)
            else:
                conn.close()
            if now - self._pruned_at > IDLE_TIMEOUT:
                self._prune(now)
            return response
        raise AssertionError("unreachable")

    def _take_idle(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_TIMEOUT:
                return conn
            conn.close()
        return None

    def _prune(self, now: float) -> None:
        """Closes and forgets connections idle too long (targets no check uses any more)."""
        self._pruned_at = now
        for key in list(self._idle):
            idle = self._idle[key]
            while idle and (idle[0].closed or now - idle[0].idle_since >= IDLE_TIMEOUT):
                idle.popleft().close()
            if not idle:
                del self._idle[key]

    async def _connect(self, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: _Connection(self._body_limit), host, port)
        return conn

    def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
