"""The sidecar's admin HTTP on 127.0.0.1:0, spoken to over raw sockets.

Raw sockets, not an HTTP client, so that keep-alive, pipelining, framing and
the connection closing are what is asserted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from serving.http_limits import ADMIN_LIMITS
from sidecar._http_server import HttpServer, Response
from sidecar.admin import AdminServer
from sidecar.errors import StartupError
from sidecar.metrics import SidecarMetrics
from tests.util import assert_eventually

TEXT = "text/plain; charset=utf-8"


class Reply:
    """One parsed response."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.headers}, {self.body[:60]!r})"


async def read_reply(reader: asyncio.StreamReader, *, head_only: bool = False) -> Reply:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    version, status, _reason = lines[0].split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = 0 if head_only else int(headers["content-length"])
    body = await asyncio.wait_for(reader.readexactly(length), 5)
    return Reply(int(status), headers, body)


async def closed(reader: asyncio.StreamReader) -> bool:
    """Whether the server closed the connection (a reset counts: it had unread data)."""
    try:
        return await asyncio.wait_for(reader.read(1), 5) == b""
    except ConnectionResetError:
        return True


class Client:
    """One raw connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def ask(self, raw: bytes, *, head_only: bool = False) -> Reply:
        self.writer.write(raw)
        return await read_reply(self.reader, head_only=head_only)

    async def get(self, path: str, method: str = "GET") -> Reply:
        request = f"{method} {path} HTTP/1.1\r\nHost: admin\r\n\r\n".encode()
        return await self.ask(request, head_only=method == "HEAD")

    def close(self) -> None:
        self.writer.close()


async def connect(address: str) -> Client:
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    return Client(reader, writer)


class Sidecarish:
    serving = True
    document: dict[str, Any] = {"connected": True, "upstreams": []}


@pytest.fixture
async def admin() -> AsyncIterator[tuple[AdminServer, Sidecarish]]:
    state = Sidecarish()
    metrics = SidecarMetrics()
    server = AdminServer(
        status=lambda: state.document, metrics=metrics, serving=lambda: state.serving
    )
    await server.start("127.0.0.1:0")
    try:
        yield server, state
    finally:
        await server.stop()


@pytest.fixture
async def client(admin: tuple[AdminServer, Sidecarish]) -> AsyncIterator[Client]:
    c = await connect(admin[0].address)
    try:
        yield c
    finally:
        c.close()


# -- the three documents -----------------------------------------------------------------


async def test_healthz_metrics_and_status(
    admin: tuple[AdminServer, Sidecarish], client: Client
) -> None:
    _server, state = admin
    healthz = await client.get("/healthz")
    assert (healthz.status, healthz.headers["content-type"], healthz.body) == (
        200,
        TEXT,
        b"SERVING\n",
    )
    metrics = await client.get("/metrics")
    assert metrics.status == 200 and metrics.headers["content-type"] == TEXT
    assert b"# TYPE" in metrics.body
    status = await client.get("/status")
    assert status.status == 200
    assert status.headers["content-type"] == "application/json; charset=utf-8"
    assert json.loads(status.body) == state.document
    assert status.body.endswith(b"\n")
    state.serving = False
    stopping = await client.get("/healthz")
    assert (stopping.status, stopping.body) == (503, b"NOT_SERVING\n")


async def test_head_has_the_headers_of_get_and_no_body(client: Client) -> None:
    get = await client.get("/status")
    head = await client.get("/status", "HEAD")
    assert head.status == 200 and head.body == b""
    assert head.headers["content-length"] == str(len(get.body))
    assert head.headers["content-type"] == get.headers["content-type"]
    # Nothing after the head: the next answer on the connection is the next request's.
    assert (await client.get("/healthz")).body == b"SERVING\n"


async def test_unknown_path_is_404_and_other_methods_405(client: Client) -> None:
    missing = await client.get("/nope")
    assert (missing.status, missing.body) == (404, b"404: Not Found")
    assert (await client.get("/healthz/")).status == 404
    post = await client.ask(b"POST /status HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
    assert post.status == 405 and post.headers["allow"] == "GET,HEAD"
    assert (await client.get("/metrics", "DELETE")).status == 405
    assert (await client.get("/nope", "DELETE")).status == 404
    # None of these closed the connection.
    assert (await client.get("/healthz")).status == 200


async def test_query_percent_encoding_and_absolute_form(client: Client) -> None:
    assert (await client.get("/healthz?verbose=1")).status == 200
    assert (await client.get("/%68ealthz")).status == 200
    assert (await client.get("http://admin/healthz")).status == 200


# -- connections -----------------------------------------------------------------------------


async def test_keep_alive_and_pipelining_answer_in_order(client: Client) -> None:
    client.writer.write(
        b"GET /status HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n"
        b"HEAD /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    first = await read_reply(client.reader)
    second = await read_reply(client.reader)
    third = await read_reply(client.reader, head_only=True)
    fourth = await read_reply(client.reader)
    assert [first.status, second.status, third.status, fourth.status] == [200, 404, 200, 200]
    assert json.loads(first.body)["connected"] is True and fourth.body == b"SERVING\n"
    assert "connection" not in fourth.headers


async def test_a_request_in_pieces(client: Client) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: admin\r\nAccept: */*\r\n\r\n"
    for i in range(len(request)):
        client.writer.write(request[i : i + 1])
        await client.writer.drain()
    assert (await read_reply(client.reader)).body == b"SERVING\n"


async def test_connection_close_and_http10_close_after_the_answer(
    admin: tuple[AdminServer, Sidecarish],
) -> None:
    for request in (
        b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"GET /healthz HTTP/1.0\r\n\r\n",
    ):
        c = await connect(admin[0].address)
        reply = await c.ask(request)
        assert reply.status == 200 and reply.headers["connection"] == "close"
        assert await closed(c.reader)
        c.close()
    c = await connect(admin[0].address)
    reply = await c.ask(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert reply.headers["connection"] == "keep-alive"
    assert (await c.get("/healthz")).status == 200
    c.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"garbage\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", 431),
        (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 431),
        (
            b"PUT /status HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100_000,
            413,
        ),
    ],
    ids=["garbage", "bad-header", "big-header", "big-url", "big-body"],
)
async def test_bad_or_oversized_requests_are_answered_and_closed(
    client: Client, request_bytes: bytes, status: int
) -> None:
    reply = await client.ask(request_bytes)
    assert reply.status == status and reply.headers["connection"] == "close"
    assert await closed(client.reader)


async def test_a_header_line_that_never_ends_is_cut_off(client: Client) -> None:
    client.writer.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Endless: ")
    # Separate reads of 1 KiB, just past the 16 KiB limit: the parser would buffer
    # them all while waiting for the end of the line.
    for _ in range(17):
        await asyncio.sleep(0.01)
        client.writer.write(b"a" * 1024)
    reply = await read_reply(client.reader)
    assert reply.status == 431
    assert await closed(client.reader)


async def test_requests_before_a_bad_one_are_answered_first(client: Client) -> None:
    client.writer.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nnonsense\r\n\r\n")
    assert (await read_reply(client.reader)).status == 200
    assert (await read_reply(client.reader)).status == 400
    assert await closed(client.reader)


async def test_an_upgrade_is_answered_without_switching_then_closed(client: Client) -> None:
    reply = await client.ask(
        b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    assert reply.status == 200 and reply.headers["connection"] == "close"
    assert await closed(client.reader)


async def test_a_failing_handler_is_500_and_the_connection_lives_on() -> None:
    def broken() -> Response:
        raise RuntimeError("boom")

    server = HttpServer({"/broken": broken, "/ok": lambda: Response(200, TEXT, b"ok")})
    (host, port), *_ = await server.start("127.0.0.1", 0)
    c = await connect(f"{host}:{port}")
    try:
        assert (await c.get("/broken")).status == 500
        assert (await c.get("/ok")).body == b"ok"
    finally:
        c.close()
        await server.close()


async def test_idle_connections_are_closed() -> None:
    limits = dataclasses.replace(ADMIN_LIMITS, idle_timeout=0.2)
    server = HttpServer({"/ok": lambda: Response(200, TEXT, b"ok")}, limits=limits)
    (host, port), *_ = await server.start("127.0.0.1", 0)
    try:
        c = await connect(f"{host}:{port}")
        assert (await c.get("/ok")).status == 200
        await asyncio.sleep(0.1)
        assert (await c.get("/ok")).status == 200  # a request restarts the idle time
        assert await closed(c.reader)
        c.close()
        # A client that never finishes its request is told so (408) and dropped.
        slow = await connect(f"{host}:{port}")
        slow.writer.write(b"GET /ok HTTP/1.1\r\n")
        assert (await read_reply(slow.reader)).status == 408
        assert await closed(slow.reader)
        slow.close()
        await assert_eventually(lambda: _no_connections(server))
    finally:
        await server.close()


def _no_connections(server: HttpServer) -> None:
    assert server.connections == 0


async def test_a_client_that_does_not_read_is_not_answered_without_end() -> None:
    big = b"x" * 256 * 1024
    server = HttpServer({"/big": lambda: Response(200, TEXT, big)})
    (host, port), *_ = await server.start("127.0.0.1", 0)
    try:
        c = await connect(f"{host}:{port}")
        # Far more answers (32 MiB) than the socket buffers hold, not read yet.
        c.writer.write(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n" * 128)
        await asyncio.sleep(0.2)
        conn = next(iter(server._connections))
        assert conn._paused and conn._queue  # reading stopped, answers wait
        # The client reads after all: every answer arrives, in order.
        for _ in range(128):
            assert len((await read_reply(c.reader)).body) == len(big)
        c.close()
    finally:
        await server.close()


# -- lifecycle -------------------------------------------------------------------------------


async def test_stop_closes_open_connections_and_is_idempotent() -> None:
    server = AdminServer(status=dict, metrics=SidecarMetrics(), serving=lambda: True)
    address = await server.start("127.0.0.1:0")
    c = await connect(address)
    assert (await c.get("/healthz")).status == 200
    await server.stop()
    assert await closed(c.reader)
    c.close()
    await server.stop()
    with pytest.raises(OSError):
        await connect(address)
    # A stopped admin server may be started again, as before.
    again = await server.start("127.0.0.1:0")
    c = await connect(again)
    assert (await c.get("/healthz")).status == 200
    c.close()
    with pytest.raises(RuntimeError):
        await server.start("127.0.0.1:0")
    await server.stop()


async def test_stop_does_not_wait_for_a_client_that_never_reads() -> None:
    big = b"x" * 1_000_000
    server = HttpServer({"/big": lambda: Response(200, TEXT, big)}, close_grace=0.1)
    (host, port), *_ = await server.start("127.0.0.1", 0)
    c = await connect(f"{host}:{port}")
    c.writer.write(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n" * 50)
    await asyncio.sleep(0.2)
    async with asyncio.timeout(2):
        await server.close()
    assert server.connections == 0
    c.close()


async def test_a_port_in_use_is_a_startup_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = AdminServer(status=dict, metrics=SidecarMetrics(), serving=lambda: True)
        with pytest.raises(StartupError, match=rf"admin: cannot listen on 127.0.0.1:{port}: "):
            await server.start(f"127.0.0.1:{port}")
        assert server.address == ""
        await server.stop()


async def test_ipv6_address_is_bracketed() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    server = AdminServer(status=dict, metrics=SidecarMetrics(), serving=lambda: True)
    try:
        address = await server.start("[::1]:0")
    except StartupError:
        pytest.skip("::1 is not available here")
    try:
        assert address.startswith("[::1]:") and address == server.address
        c = await connect(address)
        assert (await c.get("/healthz")).status == 200
        c.close()
    finally:
        await server.stop()
