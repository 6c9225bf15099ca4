"""What one replica lets sidecar streams take: how many, how fast, how long silent.

The sizes of what a message may carry are fixed by the protocol (see
`_validation`); these are the operator's knobs, one frozen `AgentLimits`
carried by the servicer's `AgentSettings`:

- a cap on the agent streams this replica holds at once, and on those from
  one peer address (a host behind one address cannot take every slot; an
  IPv6 peer counts by its /64, as on the HTTP listeners); a stream counts
  from its first byte, before its Hello;
- a rate of Hellos (the only messages that create sessions and node records),
  server-wide;
- a budget of work per stream: a token bucket that every message draws from
  (`message_cost`). A stream out of budget is read more slowly — the control
  plane waits before reading its next message, and the sidecar's writes back
  up through flow control — it is not ended;
- how long a stream may stay silent before the control plane ends it (the
  SDK pings at least every five seconds), and how long it may take to say
  Hello.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ecosystem.v1 import agent_pb2

from controlplane.agent._validation import AGENT_LIMITS
from controlplane.validation import LIMITS
from serving.http_limits import ConnectionGate, client_key

__all__ = ["AgentLimits", "StreamGate", "TokenBucket", "message_cost", "peer_host"]


@dataclass(frozen=True, slots=True)
class AgentLimits:
    """Limits on the agent streams of one replica (documented in docs/api.md)."""

    #: agent streams this replica holds at once
    max_streams: int = 10_000
    #: of those, from one peer address
    max_streams_per_peer: int = 1_000
    #: Hellos per second this replica accepts (sustained), and in a burst
    hellos_per_second: float = 200.0
    hello_burst: int = 2_000
    #: work units per second one stream may cause (sustained), and in a burst
    rate: float = 1_000.0
    burst: int = 10_000
    #: seconds a stream may say nothing before the control plane ends it
    idle_timeout: float = 20.0
    #: seconds a new stream has to send its Hello
    hello_timeout: float = 10.0

    def __post_init__(self) -> None:
        if min(self.max_streams, self.max_streams_per_peer, self.hello_burst, self.burst) < 1:
            raise ValueError("stream caps and bursts must be at least 1")
        if min(self.hellos_per_second, self.rate, self.idle_timeout, self.hello_timeout) <= 0:
            raise ValueError("rates and timeouts must be greater than 0")


def message_cost(request: agent_pb2.ConnectRequest, size: int) -> int:
    """Work units one message costs: 1, plus 1 per instance, service or check
    it carries, plus 1 per KiB. A health report is a store write, a
    certificate request a signature to check and one to make: 10 more each."""
    cost = 1 + size // 1024
    kind = request.WhichOneof("message")
    # Counts past a message's limits are not charged: such a message is refused.
    if kind == "sync":
        cost += min(len(request.sync.instances), AGENT_LIMITS.sync_instances)
    elif kind == "subscribe":
        cost += min(len(request.subscribe.services), AGENT_LIMITS.subscriptions)
    elif kind == "health":
        cost += 10 + min(len(request.health.checks), LIMITS.checks)
    elif kind == "certificate_request":
        cost += 10  # a signature checked and one made
    return cost


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved. ``take`` returns how
    long to wait before the work it was charged for may go ahead (0: now); the
    debt is paid by waiting, so a caller that waits is held to the rate."""

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._at = clock()

    def take(self, amount: float) -> float:
        self._refill()
        self._tokens -= amount
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate

    def try_take(self, amount: float = 1.0) -> bool:
        """Takes ``amount`` if it is there now; otherwise takes nothing."""
        self._refill()
        if self._tokens < amount:
            return False
        self._tokens -= amount
        return True

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now


def peer_host(peer: str) -> str:
    """The address part of a gRPC peer string (``ipv4:10.0.0.7:51234`` →
    ``10.0.0.7``, ``ipv6:[::1]:5`` → ``::1``), what per-peer caps count."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6") or not rest:
        return peer
    host, _, _port = rest.rpartition(":")
    return host.strip("[]") or rest


class StreamGate:
    """Counts the agent streams of this replica, in total and per peer host,
    with the `ConnectionGate` the HTTP listeners use (which also logs the
    refused at most every 10 s), held to the limits in force as each opens."""

    def __init__(self) -> None:
        self._gate = ConnectionGate("agent streams", max_connections=1, max_per_client=1)

    @property
    def total(self) -> int:
        return self._gate.count

    def admit(self, host: str, limits: AgentLimits) -> str:
        """Counts a new stream from ``host``; returns "" when admitted, else why not
        (and counts nothing)."""
        gate = self._gate
        gate.max_connections = limits.max_streams
        gate.max_per_client = limits.max_streams_per_peer
        if gate.admit(host) is not None:
            return ""
        if gate.count >= limits.max_streams:
            return (
                f"this replica holds its maximum of {limits.max_streams} agent streams; "
                "try another address"
            )
        return (
            f"{limits.max_streams_per_peer} agent streams from {client_key(host)} are open "
            "already, the most one address may hold"
        )

    def release(self, host: str) -> None:
        self._gate.release(client_key(host))
