"""What the gateway tells about the requests it handled: metrics and the access log.

Every request ends once here (:meth:`Observations.done`), answered by the
gateway or by an upstream: per route, requests by status, latency, rate
limited, authentication refusals and cache hits are counted, and one JSON
line goes to the access log when there is one. Secrets never appear: the
log has the consumer's name, not its credential, and no query string.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

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


class Observations:
    """The gateway's request metrics (its own registry) and access log."""

    def __init__(
        self, access_log: AccessLog | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.registry = CollectorRegistry()
        self._clock = clock
        self.access_log = access_log
        self.requests = Counter(
            "eco_gateway_requests",
            "Requests the gateway answered, by route and status code",
            ["route", "code"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "eco_gateway_request_duration_seconds",
            "From a request's head to the end of its response, by route",
            ["route"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.limited = Counter(
            "eco_gateway_rate_limited",
            "Requests refused by a rate limit (429), by route",
            ["route"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "eco_gateway_auth_failures",
            "Requests refused by authentication or an allow list (401, 403), by route",
            ["route"],
            registry=self.registry,
        )
        self.cache_hits = Counter(
            "eco_gateway_cache_hits",
            "Requests answered from the response cache, by route",
            ["route"],
            registry=self.registry,
        )
        self.cut_short = Counter(
            "eco_gateway_responses_cut_short",
            "Forwarded responses that did not reach the client whole, by route",
            ["route"],
            registry=self.registry,
        )

    def done(
        self, request: GatewayRequest, status: int, sent: int, *, upstream: bool, complete: bool
    ) -> None:
        route = request.route or NO_ROUTE
        elapsed = max(0.0, self._clock() - request.received)
        self.requests.labels(route, str(status)).inc()
        self.duration.labels(route).observe(elapsed)
        if not upstream:
            if status == 429:
                self.limited.labels(route).inc()
            elif status in (401, 403):
                self.auth_failures.labels(route).inc()
            elif request.noted("cache") == "HIT":
                self.cache_hits.labels(route).inc()
        if not complete:
            self.cut_short.labels(route).inc()
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
