"""The sidecar's admin HTTP: ``/healthz``, ``/metrics`` and ``/status``.

``/healthz`` answers 200 while the sidecar runs, whether or not the control
plane is reachable (the sidecar keeps serving from its cache then; that is
what ``/status`` is for). ``/status`` is JSON: the connection, the session,
the applied version, whether endpoints are stale, local instances with
their health, and the cached endpoints of every upstream.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from sidecar._http_server import HttpServer, Response
from sidecar.config import split_hostport
from sidecar.errors import StartupError
from sidecar.metrics import SidecarMetrics

__all__ = ["AdminServer"]

logger = logging.getLogger(__name__)

_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json; charset=utf-8"


class AdminServer:
    """Admin HTTP on one address; ``status`` builds the ``/status`` document.

    Served by the small built-in HTTP/1.1 server of ``sidecar._http_server``
    (``GET``/``HEAD``, keep-alive), not a web framework: importing one cost
    the sidecar about 11 MB of its 60 MB memory budget.
    """

    def __init__(
        self,
        *,
        status: Callable[[], dict[str, Any]],
        metrics: SidecarMetrics,
        serving: Callable[[], bool],
    ) -> None:
        self._status = status
        self._metrics = metrics
        self._serving = serving
        self._server: HttpServer | None = None
        self.address = ""

    async def start(self, listen: str) -> str:
        """Binds ``listen`` (port 0: any free port); returns the bound address."""
        if self._server is not None:
            raise RuntimeError(f"admin HTTP already serves on {self.address}")
        host, port = split_hostport(listen, allow_zero=True)
        server = HttpServer(
            {
                "/healthz": self._healthz,
                "/metrics": self._render_metrics,
                "/status": self._render_status,
            }
        )
        try:
            addresses = await server.start(host, port)
        except OSError as exc:
            await server.close()
            raise StartupError(f"admin: cannot listen on {listen}: {exc.strerror}") from None
        self._server = server
        bound = addresses[0][1] if addresses else port
        self.address = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
        logger.info("admin HTTP on http://%s (/healthz, /metrics, /status)", self.address)
        return self.address

    async def stop(self) -> None:
        """Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            await server.close()

    def _healthz(self) -> Response:
        if self._serving():
            return Response(200, _TEXT, b"SERVING\n")
        return Response(503, _TEXT, b"NOT_SERVING\n")

    def _render_metrics(self) -> Response:
        return Response(200, _TEXT, self._metrics.render())

    def _render_status(self) -> Response:
        text = json.dumps(self._status(), indent=2, sort_keys=False) + "\n"
        return Response(200, _JSON, text.encode())
