"""The built-in HTTP/1.1 client against hostile answers: every one is an Http1Error (a
CRITICAL result), and nothing it keeps grows past its limit."""

from __future__ import annotations

import pytest

from sidecar.health._http1 import HEAD_LIMIT, Http1Error
from tests.unit.health.test_http1 import connect, exchange


async def test_a_head_over_the_limit_in_one_piece_is_refused() -> None:
    conn, transport = connect()
    huge = (
        b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * (HEAD_LIMIT + 10) + b"\r\nContent-Length: 0\r\n\r\n"
    )
    future = await exchange(conn, huge)
    with pytest.raises(Http1Error, match="larger than 64 KiB"):
        future.result()
    assert transport.closed


@pytest.mark.parametrize("size", [b"-5", b"0x5", b"5_0", b"+5", b" ", b"\xd9\xa5"])
async def test_a_chunk_size_that_is_not_hex_digits_is_refused(size: bytes) -> None:
    conn, _ = connect()
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nhello\r\n0\r\n\r\n"
    )
    future = await exchange(conn, raw)
    with pytest.raises(Http1Error, match="bad chunk size"):
        future.result()


async def test_a_chunk_size_longer_than_16_hex_digits_is_refused() -> None:
    conn, _ = connect()
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 17 + b"\r\n"
    future = await exchange(conn, raw)
    with pytest.raises(Http1Error, match="bad chunk size"):
        future.result()


@pytest.mark.parametrize(
    "head",
    [
        # Superscript two (latin-1 0xB2): str.isdigit() says yes, int() says no.
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\xb2\r\n\r\n",
        b"HTTP/1.1 2\xb2\xb2 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
    ],
)
async def test_numbers_that_are_not_ascii_digits_are_an_http_error(head: bytes) -> None:
    conn, _ = connect()
    future = await exchange(conn, head)
    with pytest.raises(Http1Error):
        future.result()
