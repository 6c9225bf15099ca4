"""The control plane's admin HTTP (``/healthz``, ``/metrics``, the web console
at ``/ui/``) and the limits it serves under.

Its clients are health checkers, metrics scrapers and operators' browsers
(each open console page holds one connection for its event stream): a few
connections, from a few hosts. Any more, or a client that sends its request slowly, is held to
:data:`ADMIN_LIMITS` (defined in `serving.http_limits`, for the sidecar's
admin port too), so that the port can never take the file descriptors the
gRPC API needs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from serving.http_limits import ADMIN_LIMITS
from serving.web_server import LimitedRunner

if TYPE_CHECKING:
    from controlplane.app import ControlPlane

__all__ = ["ADMIN_LIMITS", "admin_runner"]

logger = logging.getLogger(__name__)

_Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


def admin_runner(
    *, healthz: _Route, metrics: _Route, console: ControlPlane | None = None
) -> LimitedRunner:
    """A runner for the two routes (``GET``; a request body is never read), and
    with ``console`` the web console of that control plane under ``/ui/``
    (docs/console.md; its login form is the one body read, at most 64 KiB),
    held to :data:`ADMIN_LIMITS` as they are when it is made."""
    app = web.Application(client_max_size=64 * 1024)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    if console is not None:
        from controlplane.ui import add_console

        add_console(app, console)
    return LimitedRunner(app, ADMIN_LIMITS, name="admin HTTP", logger=logger)
