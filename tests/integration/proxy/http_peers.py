"""Peers for the HTTP proxy tests: a raw client and a scripted upstream, on real sockets.

A :class:`RawClient` sends exact bytes and parses what comes back (reading
until the proxy closes and trickling bytes, as ``tests.integration.raw_http``
does for the other servers); a :class:`ScriptedUpstream` runs a coroutine per
upstream connection, in the test process, for byte-exact upstream behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httptools
import uvloop

from sidecar.proxy import Target
from sidecar.proxy.http import HttpListener
from tests.integration.raw_http import until_closed


async def proxy(listeners: list[Any], tgt: Target) -> HttpListener:
    """A started HTTP listener in front of ``tgt`` (the ``listeners`` fixture drains it)."""
    listener = HttpListener(tgt.name, "127.0.0.1:0", tgt, tgt.policy)
    await listener.start()
    listeners.append(listener)
    return listener


def url(listener: HttpListener, path: str = "/") -> str:
    return f"http://{listener.address}{path}"


def on_uvloop(scenario: Callable[[list[Any]], Awaitable[None]]) -> None:
    """Runs ``scenario(listeners)`` on uvloop, the sidecar's event loop; the listeners it
    appends are drained after it, as the ``listeners`` fixture does."""

    async def main() -> None:
        listeners: list[Any] = []
        try:
            await scenario(listeners)
        finally:
            for listener in listeners:
                await listener.drain(0.0)

    uvloop.run(main())


def holds(condition: bool) -> None:
    """For ``assert_eventually(lambda: holds(...))``."""
    assert condition


# -- a raw client ---------------------------------------------------------------------------


@dataclass
class Reply:
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    head_done: bool = False
    done: bool = False

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    @property
    def names(self) -> set[str]:
        return {k for k, _ in self.headers}


class RawClient:
    """One client connection with exact bytes out and parsed responses in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.replies: list[Reply] = []
        self.raw = b""
        self._parser = httptools.HttpResponseParser(self)

    @classmethod
    async def connect(cls, listener: HttpListener, *, source: str | None = None) -> RawClient:
        """A connection to ``listener``, from the address ``source`` if given (on
        Linux any of 127.0.0.0/8 is a loopback address of its own)."""
        host, port = listener.address.rsplit(":", 1)
        local = None if source is None else (source, 0)
        return cls(*await asyncio.open_connection(host, int(port), local_addr=local))

    def on_message_begin(self) -> None:
        self.replies.append(Reply())

    def on_header(self, name: bytes, value: bytes) -> None:
        reply = self.replies[-1]
        (reply.trailers if reply.head_done else reply.headers).append(
            (name.decode().lower(), value.decode())
        )

    def on_headers_complete(self) -> None:
        self.replies[-1].head_done = True
        self.replies[-1].status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.replies[-1].body += body

    def on_message_complete(self) -> None:
        self.replies[-1].done = True

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def replies_done(self, n: int, timeout: float = 10.0) -> list[Reply]:
        """Reads until ``n`` responses are complete (or the connection closes)."""
        async with asyncio.timeout(timeout):
            while sum(r.done for r in self.replies) < n:
                data = await self.reader.read(65536)
                if not data:
                    break
                self.raw += data
                self._parser.feed_data(data)
        return self.replies

    async def head_reply(self, timeout: float = 10.0) -> bytes:
        """Reads the answer to a HEAD request (a head, no body)."""
        head = b""
        async with asyncio.timeout(timeout):
            while b"\r\n\r\n" not in head:
                data = await self.reader.read(65536)
                assert data, "closed"
                head += data
        assert head.endswith(b"\r\n\r\n"), head
        self._parser = httptools.HttpResponseParser(self)
        return head

    async def closed(self, timeout: float = 5.0) -> bool:
        """True once the proxy closes the connection (EOF or reset); what it sent until
        then is added to :attr:`raw`."""
        self.raw += await until_closed(self.reader, timeout=timeout)
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def get(path: str = "/", *headers: str, method: str = "GET", version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: orders", *headers, "", ""]
    return "\r\n".join(lines).encode()


# -- a scripted upstream ---------------------------------------------------------------------

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class ScriptedUpstream:
    """An upstream in the test process: each connection runs ``script(reader, writer, n)``
    (``n``: the connection's number, from 0)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        #: connections that ended (either side closed them)
        self.closed = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    async def __aenter__(self) -> ScriptedUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        n = self.connections
        self.connections += 1
        try:
            await self.script(reader, writer, n)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Cancelled by __aexit__: end quietly (the server's own callback
            # would log a cancelled connection task as an error).
            if not self._stopping:
                raise
        finally:
            self.closed += 1
            writer.close()
            self._tasks.discard(task)

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        return head


# -- a recording upstream --------------------------------------------------------------------


@dataclass
class Seen:
    """One request as the upstream parsed it."""

    method: str = ""
    path: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    head_done: bool = False

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]


class _RequestReader:
    """Parses the requests arriving on one upstream connection, as a real server would."""

    def __init__(self) -> None:
        self.done: list[Seen] = []
        self.parser = httptools.HttpRequestParser(self)
        self.current = Seen()

    def on_message_begin(self) -> None:
        self.current = Seen()

    def on_url(self, url: bytes) -> None:
        self.current.path += url.decode()

    def on_header(self, name: bytes, value: bytes) -> None:
        seen = self.current
        (seen.trailers if seen.head_done else seen.headers).append(
            (name.decode().lower(), value.decode())
        )

    def on_headers_complete(self) -> None:
        self.current.head_done = True
        self.current.method = self.parser.get_method().decode()

    def on_body(self, body: bytes) -> None:
        self.current.body += body

    def on_message_complete(self) -> None:
        self.done.append(self.current)


def answer_with_path(seen: Seen) -> bytes:
    """``200``, the body ``METHOD PATH BODY-LENGTH``, keep-alive."""
    body = f"{seen.method} {seen.path} {len(seen.body)}".encode()
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


class RecordingUpstream(ScriptedUpstream):
    """A keep-alive upstream that parses every request it receives (``requests``) and
    answers each with ``answer(seen)``, in order. The answer to a request whose path is in
    ``hold`` (and to any after it) waits until more bytes arrive on that connection: a
    slow backend, answering a request only once the next one is in."""

    def __init__(
        self, *, hold: tuple[str, ...] = (), answer: Callable[[Seen], bytes] = answer_with_path
    ) -> None:
        super().__init__(self._record)
        self.seen: list[Seen] = []
        #: what the upstream could not parse (one entry per connection it then closed)
        self.errors: list[str] = []
        self.hold = hold
        self.answer = answer

    async def _record(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        requests = _RequestReader()
        held: list[bytes] = []
        while True:
            data = await reader.read(65536)
            if not data:
                return
            if held:
                writer.write(b"".join(held))
                held.clear()
            before = len(requests.done)
            try:
                requests.parser.feed_data(data)
            except httptools.HttpParserError as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                return
            for seen in requests.done[before:]:
                self.seen.append(seen)
                response = self.answer(seen)
                if held or seen.path in self.hold:
                    held.append(response)
                else:
                    writer.write(response)
