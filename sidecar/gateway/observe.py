"""What the gateway tells about the requests it handled: metrics and the access log.

Every request ends once here (:meth:`Observations.done`), answered by the
gateway or by an upstream: per route, requests by status, latency, rate
limited, authentication refusals and cache hits are counted, and one JSON
line goes to the access log when there is one. Secrets never appear: the
log has the consumer's name, not its credential, and no query string.
"""

from __future__ import annotations

import bisect
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from sidecar.gateway.request import GatewayRequest

__all__ = ["AccessLog", "Observations"]

logger = logging.getLogger(__name__)

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: the route label of requests no route took
NO_ROUTE = "(none)"


class AccessLog:
    """JSON lines, one per request, to a file (reopened when it is renamed, for
    rotation) or to standard output (``-``)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self._file: IO[str] | None = None
        self._inode = 0
        self._failed = False

    def _open(self) -> IO[str]:
        if self.where == "-":
            return sys.stdout
        path = Path(self.where)
        file = path.open("a", encoding="utf-8", buffering=1)
        self._inode = path.stat().st_ino
        return file

    def write(self, line: dict[str, object]) -> None:
        try:
            file = self._file
            if file is not None and self.where != "-" and self._moved():
                file.close()
                file = None
            if file is None:
                file = self._file = self._open()
            file.write(json.dumps(line, separators=(",", ":")) + "\n")
            self._failed = False
        except OSError as exc:
            if not self._failed:
                logger.error("access log %s: %s (lines are lost until it works)", self.where, exc)
            self._failed = True

    def _moved(self) -> bool:
        """Whether the file was renamed or removed (rotated) since it was opened."""
        try:
            return Path(self.where).stat().st_ino != self._inode
        except FileNotFoundError:
            return True

    def close(self) -> None:
        if self._file is not None and self._file is not sys.stdout:
            self._file.close()
        self._file = None


class _Route:
    """One route's counts, kept as plain numbers (read by the collector when scraped)."""

    __slots__ = (
        "auth_failures",
        "buckets",
        "cache_hits",
        "codes",
        "count",
        "cut_short",
        "limited",
        "sum",
    )

    def __init__(self) -> None:
        self.codes: dict[int, int] = {}
        self.buckets = [0] * (len(_BUCKETS) + 1)  # the last: above every bound
        self.sum = 0.0
        self.count = 0
        self.limited = 0
        self.auth_failures = 0
        self.cache_hits = 0
        self.cut_short = 0


class _Collector:
    """Turns the routes' counts into Prometheus families at scrape time."""

    def __init__(self, routes: dict[str, _Route]) -> None:
        self._routes = routes

    def collect(self) -> Iterator[Metric]:
        routes = list(self._routes.items())
        requests = CounterMetricFamily(
            "eco_gateway_requests",
            "Requests the gateway answered, by route and status code",
            labels=["code", "route"],
        )
        duration = HistogramMetricFamily(
            "eco_gateway_request_duration_seconds",
            "From a request's head to the end of its response, by route",
            labels=["route"],
        )
        families = {
            attribute: CounterMetricFamily(f"eco_gateway_{name}", text, labels=["route"])
            for name, attribute, text in _COUNTERS
        }
        for name, counts in routes:
            for code, value in sorted(counts.codes.items()):
                requests.add_metric([str(code), name], value)
            cumulative, buckets = 0, []
            for bound, value in zip((*_BUCKETS, float("inf")), counts.buckets, strict=True):
                cumulative += value
                buckets.append((_bound(bound), cumulative))
            duration.add_metric([name], buckets, counts.sum)
            for attribute, family in families.items():
                family.add_metric([name], getattr(counts, attribute))
        yield requests
        yield duration
        yield from families.values()


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


#: The per-route counters besides requests and their duration: (metric, count, help).
_COUNTERS = (
    ("rate_limited", "limited", "Requests refused by a rate limit (429), by route"),
    (
        "auth_failures",
        "auth_failures",
        "Requests refused by authentication or an allow list (401, 403), by route",
    ),
    ("cache_hits", "cache_hits", "Requests answered from the response cache, by route"),
    (
        "responses_cut_short",
        "cut_short",
        "Forwarded responses that did not reach the client whole, by route",
    ),
)


class Observations:
    """The gateway's request metrics (its own registry, counted as plain numbers
    on the request path and turned into Prometheus families when scraped) and
    access log."""

    def __init__(
        self, access_log: AccessLog | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.registry = CollectorRegistry()
        self._clock = clock
        self.access_log = access_log
        self._routes: dict[str, _Route] = {}
        self.registry.register(_Collector(self._routes))

    def done(
        self, request: GatewayRequest, status: int, sent: int, *, upstream: bool, complete: bool
    ) -> None:
        route = request.route or NO_ROUTE
        elapsed = self._clock() - request.received
        if elapsed < 0.0:
            elapsed = 0.0
        counts = self._routes.get(route)
        if counts is None:
            counts = self._routes[route] = _Route()
        codes = counts.codes
        codes[status] = codes.get(status, 0) + 1
        counts.buckets[bisect.bisect_left(_BUCKETS, elapsed)] += 1
        counts.sum += elapsed
        counts.count += 1
        if not upstream:
            if status == 429:
                counts.limited += 1
            elif status in (401, 403):
                counts.auth_failures += 1
            elif request.noted("cache") == "HIT":
                counts.cache_hits += 1
        if not complete:
            counts.cut_short += 1
        log = self.access_log
        if log is not None:
            consumer = request.consumer
            log.write(
                {
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
                    + f".{int(time.time() * 1000) % 1000:03d}Z",
                    "route": request.route or None,
                    "method": request.method,
                    "host": request.host,
                    "path": request.path,
                    "status": status,
                    "bytes": sent,
                    "duration_ms": round(elapsed * 1000, 3),
                    "client": request.client_ip,
                    "consumer": consumer.name if consumer is not None else None,
                    "upstream": upstream,
                    "complete": complete,
                }
            )

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
