"""The built-in HTTP/1.1 client's response reader, fed bytes by hand: no sockets."""

from __future__ import annotations

import asyncio
import gzip
import time
import zlib
from collections import deque

import pytest

from sidecar.health._http1 import (
    IDLE_TIMEOUT,
    Http1Error,
    Http1Pool,
    Http1Response,
    _Connection,
    _StaleConnection,
)


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True


def connect(limit: int = 1024) -> tuple[_Connection, FakeTransport]:
    conn = _Connection(body_limit=limit)
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


async def exchange(
    conn: _Connection, *pieces: bytes, head_only: bool = False
) -> asyncio.Future[Http1Response]:
    future = conn.exchange(b"GET / HTTP/1.1\r\n\r\n", head_only)
    for piece in pieces:
        conn.data_received(piece)
    return future


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


async def test_content_length_and_keep_alive() -> None:
    conn, transport = connect()
    future = await exchange(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert future.result() == Http1Response(200, "OK", b"ok")
    assert transport.written == [b"GET / HTTP/1.1\r\n\r\n"]
    assert conn.reusable
    # The same connection serves the next request.
    again = await exchange(conn, b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
    assert again.result() == Http1Response(503, "Service Unavailable", b"")


async def test_arrives_one_byte_at_a_time() -> None:
    conn, _ = connect()
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello"
    future = await exchange(conn, *byte_by_byte(raw))
    assert future.result().body == b"hello"
    assert conn.reusable


async def test_chunked_with_extensions_and_trailers() -> None:
    conn, _ = connect()
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    future = await exchange(conn, *byte_by_byte(raw))
    assert future.result().body == b"hello world"
    assert conn.reusable


async def test_interim_responses_are_skipped() -> None:
    conn, _ = connect()
    raw = (
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
    )
    assert (await exchange(conn, raw)).result() == Http1Response(200, "OK", b"x")


@pytest.mark.parametrize(
    ("raw", "head_only"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", True),
        (b"HTTP/1.1 204 No Content\r\n\r\n", False),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", False),
    ],
)
async def test_responses_without_a_body(raw: bytes, head_only: bool) -> None:
    conn, _ = connect()
    future = await exchange(conn, raw, head_only=head_only)
    assert future.result().body == b""
    assert conn.reusable


@pytest.mark.parametrize(
    ("head", "reusable"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n", True),
    ],
)
async def test_connection_reuse_follows_the_server(head: bytes, reusable: bool) -> None:
    conn, _ = connect()
    (await exchange(conn, head)).result()
    assert conn.reusable is reusable


async def test_body_delimited_by_close() -> None:
    conn, _ = connect()
    future = await exchange(conn, b"HTTP/1.0 200 OK\r\n\r\npart one, ", b"part two")
    assert not future.done()
    conn.eof_received()
    assert future.result().body == b"part one, part two"
    assert not conn.reusable


async def test_body_past_the_limit_is_cut_and_its_connection_not_reused() -> None:
    # Judged on the first `limit` bytes at once: the rest is never read (it may not end).
    conn, _ = connect(limit=4)
    future = await exchange(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123")
    assert future.result().body == b"0123"
    assert not conn.reusable


async def test_extra_bytes_after_a_response_spoil_the_connection() -> None:
    conn, _ = connect()
    future = await exchange(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1")
    assert future.result().body == b"x"
    assert not conn.reusable


async def test_unasked_bytes_close_an_idle_connection() -> None:
    conn, transport = connect()
    conn.data_received(b"HTTP/1.1 200 OK\r\n\r\n")
    assert transport.closed and not conn.reusable


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        # mtime=0: the same bytes (and test id) in every process, as pytest-xdist needs
        ("gzip", gzip.compress(b"compressed ok", mtime=0)),
        ("deflate", zlib.compress(b"compressed ok")),
        ("deflate", zlib.compress(b"compressed ok")[2:-4]),  # raw deflate
    ],
)
async def test_compressed_bodies_are_decoded(encoding: str, body: bytes) -> None:
    conn, _ = connect()
    head = f"HTTP/1.1 200 OK\r\nContent-Encoding: {encoding}\r\nContent-Length: {len(body)}\r\n\r\n"
    future = await exchange(conn, head.encode() + body)
    assert future.result().body == b"compressed ok"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 abc OK\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 999 Odd\r\n\r\n", "out of range"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxyz", "not followed by CRLF"),
        (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc", "gzip"),
    ],
)
async def test_malformed_responses(raw: bytes, message: str) -> None:
    conn, transport = connect()
    future = await exchange(conn, raw)
    with pytest.raises(Http1Error, match=message):
        future.result()
    assert transport.closed and not conn.reusable


async def test_head_too_large() -> None:
    conn, _ = connect()
    future = await exchange(conn, b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000)
    with pytest.raises(Http1Error, match="larger than 64 KiB"):
        future.result()


async def test_closed_mid_response() -> None:
    conn, _ = connect()
    future = await exchange(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    conn.connection_lost(None)
    with pytest.raises(Http1Error, match="mid-response"):
        future.result()


async def test_a_reused_connection_closed_before_answering_is_stale() -> None:
    conn, _ = connect()
    conn.used = True
    future = await exchange(conn)
    conn.connection_lost(ConnectionResetError())
    with pytest.raises(_StaleConnection):
        future.result()


async def test_a_fresh_connection_closed_before_answering_is_an_error() -> None:
    conn, _ = connect()
    future = await exchange(conn)
    conn.connection_lost(None)
    with pytest.raises(Http1Error, match="closed the connection"):
        future.result()


async def test_pool_forgets_connections_idle_too_long() -> None:
    pool = Http1Pool(body_limit=16)
    fresh, stale, closed = connect()[0], connect()[0], connect()[0]
    now = time.monotonic()
    fresh.idle_since, stale.idle_since = now, now - IDLE_TIMEOUT - 1
    closed.closed = True
    pool._idle[("a", 1)] = deque([stale, fresh])
    pool._idle[("b", 1)] = deque([closed])
    pool._prune(now)
    assert list(pool._idle) == [("a", 1)]
    assert list(pool._idle[("a", 1)]) == [fresh]
    assert stale.closed
    assert pool._take_idle(("a", 1)) is fresh
    pool.close()
