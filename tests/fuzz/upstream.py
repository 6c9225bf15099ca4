"""A small HTTP/1.1 upstream that records every request it parses, for the proxy fuzz tests.

It runs on its own event loop in a thread of the test process, so a test
reads what it saw directly: each request's target, method, headers and body
size, in arrival order, and every connection on which it could not parse
what the proxy sent. It answers each request at once with ``200``, a body
that is the request target (so a client can tell whose response it got) and
``x-fuzz-seq`` (the request's number here); HEAD gets the head alone.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import httptools


@dataclass
class Seen:
    """One request the upstream parsed whole."""

    seq: int
    method: str
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body_size: int


@dataclass
class Garbled:
    """A connection on which the upstream could not parse what it was sent."""

    error: str
    data: bytes


@dataclass
class _Request:
    target: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body_size: int = 0


class _Connection(asyncio.Protocol):
    def __init__(self, upstream: RecordingUpstream) -> None:
        self.upstream = upstream
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.current = _Request()
        self.received = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.upstream.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.upstream.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        # The last 4 KiB, to show what could not be parsed.
        self.received = (self.received + data)[-4096:]
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.upstream.record_garbled("upgrade forwarded", bytes(self.received))
            self._close()
        except httptools.HttpParserError as err:
            self.upstream.record_garbled(repr(err), bytes(self.received))
            self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.current = _Request()

    def on_url(self, url: bytes) -> None:
        self.current.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.current.body_size += len(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode("latin-1")
        seen = self.upstream.record(method, self.current)
        body = b"" if method == "HEAD" else seen.target
        head = (
            f"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
            f"content-length: {len(seen.target)}\r\nx-fuzz-seq: {seen.seq}\r\n\r\n"
        ).encode()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(head + body)
            if not self.parser.should_keep_alive():
                self.transport.close()


class RecordingUpstream:
    """``with RecordingUpstream() as up: up.port …``; ``up.seen`` and ``up.garbled``."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.garbled: list[Garbled] = []
        self.port = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None  # its own, in its thread
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self.connections: set[_Connection] = set()  # touched on its loop only

    def record(self, method: str, request: _Request) -> Seen:
        with self._lock:
            seen = Seen(
                len(self.seen) + 1, method, request.target, request.headers, request.body_size
            )
            self.seen.append(seen)
        return seen

    def record_garbled(self, error: str, data: bytes) -> None:
        with self._lock:
            self.garbled.append(Garbled(error, data))

    def snapshot(self) -> tuple[int, int]:
        """How many requests and garbled connections so far (a mark to diff from)."""
        with self._lock:
            return len(self.seen), len(self.garbled)

    def since(self, mark: tuple[int, int]) -> tuple[list[Seen], list[Garbled]]:
        with self._lock:
            return self.seen[mark[0] :], self.garbled[mark[1] :]

    def __enter__(self) -> RecordingUpstream:
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="fuzz-upstream")
        self._thread.start()

        async def serve() -> asyncio.Server:
            return await loop.create_server(
                lambda: _Connection(self), "127.0.0.1", 0, reuse_address=True
            )

        self._server = asyncio.run_coroutine_threadsafe(serve(), loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *_exc: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for connection in list(self.connections):
                connection._close()
            await self._server.wait_closed()

        assert self._loop is not None and self._thread is not None
        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
