"""The sidecar's admin HTTP: ``/healthz``, ``/metrics`` and ``/status``.

``/healthz`` answers 200 while the sidecar runs, whether or not the control
plane is reachable (the sidecar keeps serving from its cache then; that is
what ``/status`` is for). ``/status`` is JSON: the connection, the session,
the applied version, whether endpoints are stale, local instances with
their health, and the cached endpoints of every upstream.

Off loopback the sidecar gives the admin server a :class:`~sidecar.acl.Guard`:
it serves TLS (unless ``insecure: true``), and ``/metrics`` and ``/status``
need a token (``Authorization: Bearer <secret>``) with
``operator:metrics:read``. Without one where the control plane runs ``--acl
deny``, or with an unknown one: 401 with ``WWW-Authenticate: Bearer``; without
the right: 403 naming it; the control plane unreachable and the token never
resolved: 503. ``/healthz`` stays open (it tells nothing but "running").
On loopback nothing is checked.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from serving.acl import Need, PermissionDeniedError, bearer
from serving.errors import UnauthenticatedError, UnavailableError
from sidecar._http_server import Guard as RouteGuard
from sidecar._http_server import HttpServer, Response
from sidecar.acl import Guard
from sidecar.config import split_hostport
from sidecar.errors import StartupError
from sidecar.metrics import SidecarMetrics

__all__ = ["AdminServer"]

logger = logging.getLogger(__name__)

_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json; charset=utf-8"
#: What reading /metrics and /status off loopback needs.
METRICS_READ = (Need("operator", "metrics", "read"),)
_CHALLENGE = (("WWW-Authenticate", "Bearer"),)


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

    async def start(self, listen: str, *, guard: Guard | None = None) -> str:
        """Binds ``listen`` (port 0: any free port); returns the bound address.
        With ``guard`` (a listener off loopback) it serves TLS when the guard has
        it, and ``/metrics`` and ``/status`` check the client's token."""
        if self._server is not None:
            raise RuntimeError(f"admin HTTP already serves on {self.address}")
        host, port = split_hostport(listen, allow_zero=True)
        guards: dict[str, RouteGuard] = {}
        if guard is not None:
            check = _token_check(guard)
            guards = {"/metrics": check, "/status": check}
        server = HttpServer(
            {
                "/healthz": self._healthz,
                "/metrics": self._render_metrics,
                "/status": self._render_status,
            },
            guards=guards,
            ssl_context=guard.tls.context if guard is not None and guard.tls is not None else None,
        )
        try:
            addresses = await server.start(host, port)
        except OSError as exc:
            await server.close()
            raise StartupError(f"admin: cannot listen on {listen}: {exc.strerror}") from None
        self._server = server
        bound = addresses[0][1] if addresses else port
        self.address = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
        scheme = guard.scheme if guard is not None else "http"
        logger.info(
            "admin HTTP on %s://%s (/healthz, /metrics, /status)%s",
            scheme,
            self.address,
            "; /metrics and /status need operator:metrics:read" if guard is not None else "",
        )
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


def _token_check(guard: Guard) -> RouteGuard:
    """The check of a request's token against :data:`METRICS_READ`."""

    async def check(authorization: str) -> Response | None:
        try:
            await guard.tokens.check(bearer(authorization), METRICS_READ)
        except UnauthenticatedError as exc:
            return Response(401, _TEXT, _refusal("unauthenticated", exc), _CHALLENGE)
        except PermissionDeniedError as exc:
            return Response(403, _TEXT, _refusal("permission denied", exc))
        except UnavailableError as exc:
            return Response(503, _TEXT, _refusal("unavailable", exc), (("Retry-After", "1"),))
        return None

    return check


def _refusal(kind: str, exc: Exception) -> bytes:
    return f"{kind}: {exc}\n".encode()
