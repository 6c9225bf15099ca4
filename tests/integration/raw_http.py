"""Raw HTTP/1.1 and WebSocket clients over asyncio streams, for the hardening tests.

They send what a stock client would not: half-sent request heads, bodies that
stop, heads trickled a byte at a time, unmasked or malformed WebSocket frames;
and they can connect from another loopback address (127.0.0.2, …) to stand
for another client host. The HTTP proxy's tests parse answers their own way
(``tests.integration.proxy.http_peers``) and share the rest.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct
from collections.abc import AsyncIterator, Iterable
from typing import NamedTuple

WAIT = 5.0

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9


class RawResponse(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes


class RawConnection:
    """One client connection, written and read byte for byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def response(self, *, timeout: float = WAIT) -> RawResponse:
        """The next response: its head, and a body framed by Content-Length (or none)."""
        async with asyncio.timeout(timeout):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            _version, status, *_ = lines[0].split(" ", 2)
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            body = await self.reader.readexactly(length)
        return RawResponse(int(status), headers, body)

    async def until_closed(self, *, timeout: float = WAIT) -> bytes:
        """Everything the server sends until it closes the connection (a reset counts as
        closed); raises TimeoutError when it does not close within ``timeout``."""
        return await until_closed(self.reader, timeout=timeout)

    # -- WebSocket --------------------------------------------------------------------

    async def ws_handshake(self, path: str = "/v1/ws", **headers: str) -> RawResponse:
        key = base64.b64encode(os.urandom(16)).decode()
        extra = "".join(f"{name.replace('_', '-')}: {value}\r\n" for name, value in headers.items())
        self.send(
            f"GET {path} HTTP/1.1\r\nHost: bridge\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extra}\r\n".encode()
        )
        return await self.response()

    def ws_send(
        self,
        opcode: int,
        payload: bytes,
        *,
        fin: bool = True,
        mask: bool = True,
        rsv: int = 0,
    ) -> None:
        """One frame; ``mask=False`` sends it unmasked, as no client may (RFC 6455 §5.1)."""
        first = (0x80 if fin else 0) | (rsv & 0x7) << 4 | opcode
        size = len(payload)
        mask_bit = 0x80 if mask else 0
        if size < 126:
            head = struct.pack("!BB", first, mask_bit | size)
        elif size < 1 << 16:
            head = struct.pack("!BBH", first, mask_bit | 126, size)
        else:
            head = struct.pack("!BBQ", first, mask_bit | 127, size)
        if mask:
            key = os.urandom(4)
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
            head += key
        self.send(head + payload)

    async def ws_frame(self, *, timeout: float = WAIT) -> tuple[int, bytes]:
        """The next frame from the server (servers do not mask): its opcode and payload."""
        async with asyncio.timeout(timeout):
            first, second = await self.reader.readexactly(2)
            size = second & 0x7F
            if size == 126:
                (size,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif size == 127:
                (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return first & 0x0F, await self.reader.readexactly(size)

    async def ws_close_code(self, *, timeout: float = WAIT) -> int:
        """Reads frames until the server's close frame; returns its status code."""
        while True:
            opcode, payload = await self.ws_frame(timeout=timeout)
            if opcode == OP_CLOSE:
                return int(struct.unpack("!H", payload[:2])[0]) if payload else 1005

    def close(self) -> None:
        self.writer.close()


async def open_raw(address: str, *, source: str = "127.0.0.1") -> RawConnection:
    """Connects to ``HOST:PORT`` from the loopback address ``source``."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(
        host.strip("[]"), int(port), local_addr=(source, 0)
    )
    return RawConnection(reader, writer)


def head(method: str, path: str, *headers: str, body: bytes = b"") -> bytes:
    """A complete request: ``head("POST", "/x", "Content-Type: a/b", body=b"1")``."""
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *headers]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def until_closed(reader: asyncio.StreamReader, *, timeout: float = WAIT) -> bytes:
    """Everything ``reader`` gets until the server closes the connection (a reset counts
    as closed); raises TimeoutError when it does not close within ``timeout``."""
    received = bytearray()
    async with asyncio.timeout(timeout):
        try:
            while chunk := await reader.read(65536):
                received += chunk
        except ConnectionResetError:
            pass
    return bytes(received)


async def closed_within(clients: Iterable[RawConnection], seconds: float) -> list[bytes]:
    """What the server sent each client it closed within ``seconds`` (all are waited for
    at once); the clients it kept open are left out."""

    async def answer(client: RawConnection) -> bytes | None:
        try:
            return await client.until_closed(timeout=seconds)
        except TimeoutError:
            return None

    answers = await asyncio.gather(*(answer(client) for client in clients))
    return [answer for answer in answers if answer is not None]


async def trickle(writer: asyncio.StreamWriter, data: bytes, every: float = 0.1) -> None:
    """Sends ``data`` a byte at a time, ``every`` seconds apart, until the server closes."""
    for i in range(len(data)):
        try:
            writer.write(data[i : i + 1])
            await writer.drain()
        except ConnectionError:
            return
        await asyncio.sleep(every)


@contextlib.asynccontextmanager
async def trickling(
    writer: asyncio.StreamWriter, data: bytes, every: float = 0.1
) -> AsyncIterator[None]:
    """:func:`trickle` in the background while the block runs."""
    task = asyncio.create_task(trickle(writer, data, every))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
