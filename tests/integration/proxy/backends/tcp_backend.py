"""A TCP backend for the proxy tests: prints ``LISTENING <port>``, serves until killed.

Modes (``--mode``):

- ``echo``: writes back what it reads (reading pauses while the client does
  not read); on the client's EOF it finishes echoing, then sends its own
  EOF and closes. With ``--hello TEXT`` it first sends ``TEXT\\n``, so a
  test can tell backends apart.
- ``hang``: accepts and never reads or answers.
- ``reset``: reads once, then closes with an RST (``SO_LINGER 0``).
- ``big``: sends ``--size`` MiB of ``pattern()`` on connect, then closes.

A refusing backend is a stopped one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import struct
import sys

MIB = 1024 * 1024


def pattern() -> bytes:
    """One MiB of the bytes ``big`` mode repeats."""
    return bytes(range(256)) * (MIB // 256)


class Echo(asyncio.Protocol):
    def __init__(self, hello: bytes) -> None:
        self.hello = hello
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=256 * 1024)
        if self.hello:
            transport.write(self.hello)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def pause_writing(self) -> None:
        assert self.transport is not None
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        assert self.transport is not None
        self.transport.resume_reading()

    def eof_received(self) -> bool:
        assert self.transport is not None
        self.transport.write_eof()  # sent once the echo is flushed
        return False  # then close


class Hang(asyncio.Protocol):
    transports: list[asyncio.BaseTransport] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()
        self.transports.append(transport)


class Reset(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        sock = self.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        assert isinstance(self.transport, asyncio.Transport)
        self.transport.abort()


class Big(asyncio.Protocol):
    def __init__(self, size_mib: int) -> None:
        self.left = size_mib
        self.chunk = pattern()
        self.paused = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=2 * MIB)
        self.send()

    def send(self) -> None:
        assert self.transport is not None
        while self.left and not self.paused and not self.transport.is_closing():
            self.left -= 1
            self.transport.write(self.chunk)
        if not self.left:
            self.transport.close()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.send()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--mode", choices=("echo", "hang", "reset", "big"), default="echo")
    parser.add_argument("--size", type=int, default=1, help="MiB sent in big mode")
    parser.add_argument("--hello", default="", help="echo mode: a line sent on connect")
    args = parser.parse_args()
    hello = f"{args.hello}\n".encode() if args.hello else b""

    def factory() -> asyncio.Protocol:
        if args.mode == "echo":
            return Echo(hello)
        if args.mode == "hang":
            return Hang()
        if args.mode == "reset":
            return Reset()
        return Big(args.size)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        factory, "127.0.0.1", args.port, reuse_address=True, backlog=1024
    )
    port = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"LISTENING {port}\n")
    sys.stdout.flush()
    await server.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
