"""Counters of one proxy target, kept as plain numbers on the hot path and
read by the metrics collector and ``/status`` when asked.

Incrementing an attribute costs a few nanoseconds; a labelled metric object
costs a lock. The proxy counts every request, so it counts here.
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import Any

__all__ = ["LATENCY_BUCKETS", "LatencyHistogram", "TargetStats"]

#: Upper bounds, in seconds, of the latency histogram's buckets.
LATENCY_BUCKETS = (
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class LatencyHistogram:
    """Fixed buckets (``LATENCY_BUCKETS`` and +Inf), a sum and a count."""

    __slots__ = ("count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding quantile ``q`` (None when empty or in +Inf)."""
        if not self.count:
            return None
        rank = q * self.count
        seen = 0
        for bound, n in zip(LATENCY_BUCKETS, self.counts, strict=False):
            seen += n
            if seen >= rank:
                return bound
        return None

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus buckets: ``(le, cumulative count)``, ending with ``+Inf``."""
        out: list[tuple[str, int]] = []
        seen = 0
        for bound, n in zip(LATENCY_BUCKETS, self.counts, strict=False):
            seen += n
            out.append((repr(bound), seen))
        out.append(("+Inf", self.count))
        return out


class TargetStats:
    """What one target (an upstream or an inbound app) has seen.

    ``requests`` counts finished requests (TCP: finished connections);
    ``responses`` counts them by class (``2xx`` … ``5xx`` for HTTP, the
    status code name for gRPC, ``closed`` for TCP); ``errors`` counts
    failures the proxy saw or made, by kind (``connect_failure``,
    ``timeout``, ``reset``, ``no_endpoints``, ``circuit_open``, …).
    """

    __slots__ = (
        "active",
        "bytes_received",
        "bytes_sent",
        "ejections",
        "errors",
        "latency",
        "requests",
        "responses",
        "retries",
        "retries_refused",
    )

    def __init__(self) -> None:
        self.requests = 0
        #: requests (TCP: connections) in flight
        self.active = 0
        self.responses: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.retries = 0
        #: retries the retry budget did not allow
        self.retries_refused = 0
        self.ejections = 0
        #: bytes from the downstream (the client), and sent back to it
        self.bytes_received = 0
        self.bytes_sent = 0
        self.latency = LatencyHistogram()

    def as_dict(self) -> dict[str, Any]:
        p50 = self.latency.quantile(0.5)
        p99 = self.latency.quantile(0.99)
        return {
            "requests": self.requests,
            "active": self.active,
            "responses": dict(sorted(self.responses.items())),
            "errors": dict(sorted(self.errors.items())),
            "retries": self.retries,
            "retries_refused": self.retries_refused,
            "ejections": self.ejections,
            "bytes_received": self.bytes_received,
            "bytes_sent": self.bytes_sent,
            "latency_ms": {
                "p50_le": None if p50 is None else p50 * 1000,
                "p99_le": None if p99 is None else p99 * 1000,
                "mean": (self.latency.sum / self.latency.count * 1000)
                if self.latency.count
                else None,
            },
        }
