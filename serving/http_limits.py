"""What every HTTP listener of the project holds its clients to: time and connections.

Why: a client that opens a connection and sends its request head slowly, or
not at all, costs the server a file descriptor for as long as the server
waits. With no limit, 1,100 half-sent requests to the control plane's admin
port (the usual 1,024 descriptors) left it unable to accept anything, and its
gRPC API timed out too. So each HTTP server here

- wants a request head within ``head_timeout`` of the connection opening or
  of the head's first byte, and at most ``max_head`` bytes of it;
- wants a request body within ``body_timeout`` (where it reads bodies);
- closes a connection that has been idle between requests for ``idle_timeout``;
- holds at most ``max_connections`` connections, and ``max_connections_per_ip``
  from one client address (an IPv6 client: from one /64), answering the
  excess ``503`` and closing it as soon as it is accepted.

This module has no HTTP framework in it: the sidecar's own small admin server
(`sidecar._http_server`) and its proxy's listeners use it as the
framework-based servers (`serving.web_server`) do.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import time
from dataclasses import dataclass
from typing import Any, cast

__all__ = ["ADMIN_LIMITS", "REFUSED", "ConnectionGate", "HttpLimits", "refuse"]

logger = logging.getLogger(__name__)

#: What a connection over a cap is told before it is closed.
REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 21\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n\r\n"
    b"too many connections\n"
)
#: Seconds between two log lines about refused connections.
_REPORT_EVERY = 10.0


@dataclass(frozen=True)
class HttpLimits:
    """The limits of one HTTP listener (see the module docstring); times in seconds."""

    head_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 30.0
    max_head: int = 32 * 1024
    max_connections: int = 1024
    max_connections_per_ip: int = 512

    def __post_init__(self) -> None:
        for name in ("head_timeout", "body_timeout", "idle_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be greater than 0")
        for name in ("max_head", "max_connections", "max_connections_per_ip"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1")


#: The admin ports' limits, the control plane's (`controlplane.admin`) and the
#: sidecar's (`sidecar._http_server`): their clients are health checkers and
#: metrics scrapers, a few connections from a few hosts. A request head within
#: 10 s, idle connections closed after 30 s, at most 128 connections and 64 from
#: one client address.
ADMIN_LIMITS = HttpLimits(
    head_timeout=10.0,
    body_timeout=10.0,
    idle_timeout=30.0,
    max_head=16 * 1024,
    max_connections=128,
    max_connections_per_ip=64,
)


def client_key(peername: Any) -> str:
    """The address a per-client cap counts by: the IP, an IPv4-mapped IPv6 address as
    IPv4, and for IPv6 its /64 (one host commonly holds all of one)."""
    host = peername[0] if isinstance(peername, tuple) and peername else str(peername or "")
    return _host_key(host)


@functools.lru_cache(maxsize=4096)
def _host_key(host: str) -> str:
    """:func:`client_key` of one host, remembered: parsing an address costs a few
    microseconds, and a server's clients mostly come back from the same ones."""
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host  # a Unix socket: one key for all
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class ConnectionGate:
    """Counts a server's connections, in all and per client address, and says which to refuse.

    ``admit(peername)`` returns the key to ``release`` when the connection ends, or
    None when the connection is over a cap (and should be refused). Refusals are
    counted and logged at most once every 10 s, with how many there were."""

    def __init__(self, name: str, *, max_connections: int, max_per_client: int) -> None:
        self.name = name
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self._count = 0
        self._per_client: dict[str, int] = {}
        #: connections refused since the server started
        self.refused = 0
        self._unreported = 0
        self._reported_at = float("-inf")

    @property
    def count(self) -> int:
        """Connections admitted and not yet released."""
        return self._count

    def admit(self, peername: Any) -> str | None:
        key = client_key(peername)
        held = self._per_client.get(key, 0)
        if self._count >= self.max_connections:
            self._refused(f"the server holds {self._count} connections, its limit")
            return None
        if held >= self.max_per_client:
            self._refused(f"{key} holds {held} connections, the limit per client")
            return None
        self._count += 1
        self._per_client[key] = held + 1
        return key

    def release(self, key: str) -> None:
        self._count -= 1
        left = self._per_client.get(key, 0) - 1
        if left > 0:
            self._per_client[key] = left
        else:
            self._per_client.pop(key, None)

    def _refused(self, why: str) -> None:
        self.refused += 1
        self._unreported += 1
        now = time.monotonic()
        if now - self._reported_at >= _REPORT_EVERY:
            logger.warning("%s: refused %d connection(s): %s", self.name, self._unreported, why)
            self._unreported = 0
            self._reported_at = now


def refuse(transport: asyncio.BaseTransport, answer: bytes = REFUSED) -> None:
    """Answers a connection over a cap (503, :data:`REFUSED` unless the server words it
    its own way) and closes it; it never reaches the HTTP parser. (The answer fits in
    any new socket's buffer: closing does not wait on the client.)"""
    # Not isinstance(…, WriteTransport): uvloop's transports are not its subclasses.
    writable = cast(asyncio.Transport, transport)
    try:
        writable.write(answer)
    except (ConnectionError, RuntimeError):
        writable.abort()
        return
    writable.close()
