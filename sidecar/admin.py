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

from aiohttp import web

from sidecar.config import split_hostport
from sidecar.errors import StartupError
from sidecar.metrics import SidecarMetrics

__all__ = ["AdminServer"]

logger = logging.getLogger(__name__)


class AdminServer:
    """Admin HTTP on one address; ``status`` builds the ``/status`` document."""

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
        self._runner: web.AppRunner | None = None
        self.address = ""

    async def start(self, listen: str) -> str:
        """Binds ``listen`` (port 0: any free port); returns the bound address."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._render_metrics)
        app.router.add_get("/status", self._render_status)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runner = runner
        host, port = split_hostport(listen, allow_zero=True)
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self.stop()
            raise StartupError(f"admin: cannot listen on {listen}: {exc.strerror}") from None
        bound = runner.addresses[0][1] if runner.addresses else port
        self.address = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
        logger.info("admin HTTP on http://%s (/healthz, /metrics, /status)", self.address)
        return self.address

    async def stop(self) -> None:
        """Idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _healthz(self, _request: web.Request) -> web.Response:
        if self._serving():
            return web.Response(text="SERVING\n")
        return web.Response(status=503, text="NOT_SERVING\n")

    async def _render_metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.render(), content_type="text/plain", charset="utf-8")

    async def _render_status(self, _request: web.Request) -> web.Response:
        return web.Response(
            text=json.dumps(self._status(), indent=2, sort_keys=False) + "\n",
            content_type="application/json",
        )
