"""Mutual TLS for gRPC listeners, which the gRPC runtime cannot give them.

A gRPC listener is a ``grpc.aio`` server and its upstreams ``grpc.aio``
channels: the runtime decides plaintext or TLS when a port is bound, and
checks a server's host name against its certificate, which workload
certificates (a SPIFFE ID, no host name) cannot pass. So the TLS of a
gRPC listener is done next to the runtime, by the event loop:

- :class:`GrpcFront` — once the first bundle arrives, an inbound gRPC
  listener moves its gRPC server to a loopback port and binds its public
  address with an event-loop server instead (``GrpcListener._switch``). Each
  accepted connection is wrapped in TLS once the sidecar has a bundle (as
  the TCP and HTTP listeners are: ``MeshTls.server_protocol``), connected
  to the gRPC server and spliced. The front remembers, by the loopback
  port each splice came from, who called on it, so the listener checks
  every call against the intentions (``PERMISSION_DENIED``); a call that
  did not come through the front is refused once TLS is on.
- :class:`TlsConnector` — an upstream channel to a sidecar's inbound
  listener dials a loopback port of its own, where each connection is
  dialled on to the endpoint over TLS (the server's identity checked) and
  spliced.

Without a bundle neither is used. With one, the cost is one loopback hop
on each side of a gRPC call between sidecars.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sdk import IntentionDecision
from sidecar.proxy._mtls import HANDSHAKE_TIMEOUT

if TYPE_CHECKING:
    from sidecar.proxy._mtls import InboundMesh

__all__ = ["GrpcFront", "TlsConnector"]

logger = logging.getLogger(__name__)

_CHUNK = 64 * 1024
_BROKEN = (ConnectionError, OSError, ssl.SSLError, asyncio.IncompleteReadError)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(*_BROKEN):
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()


async def splice(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    """Copies both ways until either side ends, then closes both."""
    pipes = [asyncio.create_task(_pipe(a[0], b[1])), asyncio.create_task(_pipe(b[0], a[1]))]
    try:
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pipe in pipes:
            pipe.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        for writer in (a[1], b[1]):
            writer.transport.abort()


class _Owner:
    """A server on the event loop, the connections it accepted, their tasks."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    def spawn(self, coro: Any) -> None:
        if self.closed:
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro, name=self.name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def stop_accepting(self) -> None:
        self.closed = True
        if self.server is not None:
            self.server.close()

    async def close(self) -> None:
        self.stop_accepting()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()


@dataclass(frozen=True, slots=True)
class _Caller:
    tls: bool
    #: ``NAMESPACE/SERVICE`` ("" for a node or plaintext)
    service: str


class GrpcFront(_Owner):
    """The public side of an inbound gRPC listener (see the module)."""

    def __init__(self, name: str, mesh: InboundMesh, inner: tuple[str, int]) -> None:
        super().__init__(f"grpc-front:{name}")
        self.mesh = mesh
        self.inner = inner
        #: loopback port of a splice → who called on it
        self._callers: dict[int, _Caller] = {}

    async def start(self, host: str, port: int) -> int:
        """Binds (OSError when it cannot); returns the bound port."""
        loop = asyncio.get_running_loop()

        def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.spawn(self._serve(reader, writer))

        def make() -> asyncio.BaseProtocol:
            return asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=_CHUNK), accepted)

        self.server = await loop.create_server(
            self.mesh.factory(make), host or None, port, reuse_address=True, backlog=1024
        )
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tls = writer.get_extra_info("ssl_object") is not None
        caller = _Caller(tls, self.mesh.mesh.caller_of(writer.transport) if tls else "")
        try:
            inner = await asyncio.open_connection(*self.inner)
        except OSError as exc:
            logger.warning("%s: cannot reach the gRPC server: %s", self.name, exc)
            writer.transport.abort()
            return
        local_port = int(inner[1].get_extra_info("sockname")[1])
        self._callers[local_port] = caller
        try:
            await splice((reader, writer), inner)
        finally:
            self._callers.pop(local_port, None)

    def decide(self, peer: str) -> IntentionDecision:
        """May the call from ``peer`` (``context.peer()`` at the gRPC server) go on?"""
        port = peer.rpartition(":")[2]
        caller = self._callers.get(int(port)) if port.isdigit() else None
        mesh = self.mesh
        if caller is None:
            if mesh.mesh.active:
                return IntentionDecision(False, None, "the call did not come through the listener")
            return IntentionDecision(True, None, "plaintext: no identities to check")
        if not caller.tls:
            return IntentionDecision(True, None, "plaintext: no identities to check")
        return mesh.decide(caller.service)


class TlsConnector(_Owner):
    """A loopback port whose connections are dialled on to ``address`` over TLS
    (``tls()`` gives the context; None: plaintext) and spliced."""

    def __init__(
        self,
        name: str,
        address: tuple[str, int],
        tls: Callable[[], ssl.SSLContext | None],
        check: Callable[[asyncio.BaseTransport], None],
        connect_timeout: float,
    ) -> None:
        super().__init__(f"grpc-connector:{name}")
        self.address = address
        self._tls = tls
        self._check = check
        self._timeout = connect_timeout
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.setblocking(False)
        #: where the channel dials (bound already: connections wait in the backlog)
        self.port = int(self._sock.getsockname()[1])
        self.spawn(self._start())

    async def _start(self) -> None:
        def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.spawn(self._serve(reader, writer))

        def make() -> asyncio.BaseProtocol:
            return asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=_CHUNK), accepted)

        self.server = await asyncio.get_running_loop().create_server(make, sock=self._sock)

    async def close(self) -> None:
        await super().close()
        if self.server is None:
            self._sock.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = self.address
        try:
            context = self._tls()
            async with asyncio.timeout(self._timeout):
                remote = await asyncio.open_connection(
                    host,
                    port,
                    ssl=context,
                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT if context is not None else None,
                )
            if context is not None:
                try:
                    self._check(remote[1].transport)
                except OSError:
                    remote[1].transport.abort()
                    raise
        except (OSError, TimeoutError) as exc:
            logger.debug("%s: %s:%s: %s", self.name, host, port, exc)
            writer.transport.abort()
            return
        await splice((reader, writer), remote)
