"""The control plane's admin HTTP (``/healthz``, ``/metrics``) and the limits it serves under.

Its clients are health checkers and metrics scrapers: a few connections, from
a few hosts. Any more, or a client that sends its request slowly, is held to
:data:`ADMIN_LIMITS` (see `controlplane.http_limits`), so that the port can
never take the file descriptors the gRPC API needs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from controlplane.http_limits import HttpLimits
from controlplane.web_server import LimitedRunner

__all__ = ["ADMIN_LIMITS", "admin_runner"]

logger = logging.getLogger(__name__)

#: The admin port's limits: a request head within 10 s, idle connections closed
#: after 30 s, at most 128 connections and 64 from one client address.
ADMIN_LIMITS = HttpLimits(
    head_timeout=10.0,
    body_timeout=10.0,
    idle_timeout=30.0,
    max_head=16 * 1024,
    max_connections=128,
    max_connections_per_ip=64,
)

_Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


def admin_runner(*, healthz: _Route, metrics: _Route) -> LimitedRunner:
    """A runner for the two routes (``GET``; a request body is never read), held to
    :data:`ADMIN_LIMITS` as they are when it is made."""
    app = web.Application(client_max_size=64 * 1024)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return LimitedRunner(app, ADMIN_LIMITS, name="admin HTTP", logger=logger)
