"""The admin HTTP server's guards, without sockets: a connection fed bytes by hand.

A guarded route's check gets the request's ``Authorization`` value; answers
stay in request order while a check runs; a connection that ends cancels its
check; a server without guards does not capture the header at all.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from sidecar._http_server import HttpServer, Response, _Connection, _GuardedConnection

TEXT = "text/plain; charset=utf-8"


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.sent = bytearray()
        self.closed = False
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def statuses(sent: bytes) -> list[int]:
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", sent)]


def request(path: str, authorization: str | None = None) -> bytes:
    auth = f"Authorization: {authorization}\r\n" if authorization is not None else ""
    return f"GET {path} HTTP/1.1\r\nHost: a\r\n{auth}\r\n".encode()


async def test_guarded_requests_get_their_header_and_answers_keep_order() -> None:
    seen: list[str] = []
    release = asyncio.Event()

    async def guard(authorization: str) -> Response | None:
        seen.append(authorization)
        await release.wait()
        return None if authorization == "Bearer good" else Response(401, TEXT, b"no\n")

    server = HttpServer(
        {
            "/open": lambda: Response(200, TEXT, b"open\n"),
            "/shut": lambda: Response(200, TEXT, b"s"),
        },
        guards={"/shut": guard},
    )
    conn = _GuardedConnection(server)
    transport = FakeTransport()
    conn.connection_made(transport)
    conn.data_received(
        request("/shut", "Bearer good") + request("/open") + request("/shut") + request("/nope")
    )
    await asyncio.sleep(0)
    assert seen == ["Bearer good"]
    assert statuses(bytes(transport.sent)) == []  # the first answer waits for its check
    release.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert seen == ["Bearer good", ""]
    assert statuses(bytes(transport.sent)) == [200, 200, 401, 404]
    conn.connection_lost(None)
    await server.close()


async def test_a_connection_that_ends_cancels_its_check() -> None:
    started = asyncio.Event()

    async def guard(authorization: str) -> Response | None:
        started.set()
        await asyncio.Event().wait()
        return None

    server = HttpServer({"/shut": lambda: Response(200, TEXT, b"s")}, guards={"/shut": guard})
    conn = _GuardedConnection(server)
    conn.connection_made(FakeTransport())
    conn.data_received(request("/shut", "Bearer x"))
    await started.wait()
    [check] = server.checks
    conn.connection_lost(None)
    await asyncio.wait([check])
    assert check.cancelled()
    assert not server.checks


async def test_two_authorization_headers_are_refused() -> None:
    async def guard(authorization: str) -> Response | None:
        return None

    server = HttpServer({"/shut": lambda: Response(200, TEXT, b"s")}, guards={"/shut": guard})
    conn = _GuardedConnection(server)
    transport = FakeTransport()
    conn.connection_made(transport)
    conn.data_received(
        b"GET /shut HTTP/1.1\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n"
    )
    await asyncio.sleep(0)
    assert statuses(bytes(transport.sent)) == [400]
    assert transport.closed
    conn.connection_lost(None)


async def test_a_server_without_guards_does_not_capture_the_header() -> None:
    server = HttpServer({"/open": lambda: Response(200, TEXT, b"open\n")})
    conn = _Connection(server)
    assert type(conn).on_header is _Connection.on_header
    transport = FakeTransport()
    conn.connection_made(transport)
    conn.data_received(request("/open", "Bearer a") * 2)
    assert statuses(bytes(transport.sent)) == [200, 200]  # answered at once
    conn.connection_lost(None)
