"""Protocol bridges: the message bus over plain HTTP, Server-Sent Events and WebSocket.

For applications that speak no gRPC: one listener serves

- ``POST /v1/publish/{subject}`` — the body is the payload; ``Eco-Header-<Name>``
  request headers become message headers, ``Eco-Msg-Id`` the message id;
  202 ``{"stream", "sequence", "duplicate"}``.
- ``POST /v1/request/{subject}?timeout=2s`` — 200 with the first reply's payload
  (its headers as ``Eco-Header-<Name>``), 503 ``no_responders``, 504 ``timeout``.
- ``GET /v1/subscribe/{subject}?queue=&durable=&stream=&deliver=`` — Server-Sent
  Events (``event: message``), heartbeat comments, durable messages
  acknowledged once written to the client.
- ``GET /v1/ws`` — a WebSocket of JSON frames (see :mod:`sidecar.bridges._ws`).

Errors are JSON ``{"error": kind, "message", "field"}`` with a matching status.
The sidecar passes its relay broker; any `bus.Broker` works.
aiohttp is imported here and only here: the sidecar imports this module only
when a bridge is configured (see tests/unit/sidecar/test_admin_imports.py).

Web pages: a request that carries ``Origin`` (a browser's, from a page) is
refused with 403 unless its origin is in ``allowed_origins`` (none by
default); one without (curl, a service) is served. A publish or request must
have a content type a page cannot send without a CORS preflight (see
`sidecar.bridges._http`), and preflights are answered for allowed origins
only, so that a page of another site can neither read nor write the bus.
Slow and greedy clients are held to :data:`BRIDGE_LIMITS` (or the
configured limits) by `serving.web_server`.

Off loopback the sidecar gives the bridge a :class:`~sidecar.acl.Guard`: the
listener serves TLS (unless the sidecar runs ``insecure: true``) and every
route checks the client's token (see `sidecar.bridges._http`). On loopback
nothing is checked.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from bus import MAX_PAYLOAD, Broker
from serving.http_limits import HttpLimits
from serving.web_server import LimitedRunner
from sidecar.acl import Guard
from sidecar.bridges._http import (
    BridgeContext,
    error_body,
    handle_publish,
    handle_request,
    handle_subscribe,
)
from sidecar.bridges._ws import handle_ws
from sidecar.config import HttpBridgeConfig, normalize_origin

__all__ = ["BRIDGE_LIMITS", "BridgeServer"]

logger = logging.getLogger(__name__)

#: Seconds between SSE heartbeat comments and WebSocket pings.
HEARTBEAT = 15.0
#: Frames queued for one WebSocket before core messages are dropped.
SEND_QUEUE = 1024
#: Subscriptions one WebSocket may hold.
MAX_SUBSCRIPTIONS = 256
#: The defaults of a bridge's limits (docs/bus.md#limits-of-the-bridge).
BRIDGE_LIMITS = HttpLimits()
#: Seconds a browser may keep a preflight's answer.
PREFLIGHT_MAX_AGE = 600
_Handler = Callable[[web.Request, BridgeContext], Awaitable[web.StreamResponse]]
#: What a preflight may name in Access-Control-Request-Headers: header names and commas.
_HEADER_LIST = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+(\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*")


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen: {listen!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


class BridgeServer:
    """An HTTP (and WebSocket) bridge to ``broker`` on ``listen`` (``HOST:PORT``).

    ``start()`` binds and returns the bound address; ``stop()`` (idempotent) stops
    accepting, closes every SSE stream and WebSocket (with their subscriptions)
    and waits for them. Not restartable. The broker stays the caller's."""

    def __init__(
        self,
        broker: Broker,
        listen: str,
        *,
        max_body: int = MAX_PAYLOAD,
        heartbeat: float = HEARTBEAT,
        send_queue: int = SEND_QUEUE,
        shutdown_timeout: float = 2.0,
        limits: HttpLimits = BRIDGE_LIMITS,
        allowed_origins: Iterable[str] = (),
        max_subscriptions: int = MAX_SUBSCRIPTIONS,
        guard: Guard | None = None,
    ) -> None:
        if max_body < 1 or heartbeat <= 0 or send_queue < 1 or max_subscriptions < 1:
            raise ValueError(
                "max_body, heartbeat, send_queue and max_subscriptions must be positive"
            )
        self._host, self._port = _split_listen(listen)
        self._ctx = BridgeContext(
            broker,
            max_body=max_body,
            heartbeat=heartbeat,
            send_queue=send_queue,
            body_timeout=limits.body_timeout,
            send_timeout=limits.idle_timeout,
            max_subscriptions=max_subscriptions,
            guard=guard,
        )
        self._guard = guard
        self._limits = limits
        self._origins = frozenset(normalize_origin(origin) for origin in allowed_origins)
        self._shutdown_timeout = shutdown_timeout
        self._runner: LimitedRunner | None = None
        self._state = "new"
        self._address = ""

    @classmethod
    def from_config(
        cls, broker: Broker, config: HttpBridgeConfig, *, guard: Guard | None = None
    ) -> BridgeServer:
        """The bridge a sidecar's ``bridges:`` entry describes; ``guard`` when it
        listens off loopback (TLS and tokens)."""
        return cls(
            broker,
            config.listen,
            max_body=config.max_body,
            limits=HttpLimits(
                head_timeout=config.head_timeout,
                body_timeout=config.body_timeout,
                idle_timeout=config.idle_timeout,
                max_connections=config.max_connections,
                max_connections_per_ip=config.max_connections_per_ip,
            ),
            allowed_origins=config.allowed_origins,
            max_subscriptions=config.max_subscriptions,
            guard=guard,
        )

    def __repr__(self) -> str:
        return f"BridgeServer({self._address or f'{self._host}:{self._port}'!r}, {self._state})"

    @property
    def address(self) -> str:
        """``HOST:PORT`` once started."""
        return self._address

    def status(self) -> dict[str, Any]:
        """The bridge's state, for the sidecar's status."""
        return {
            "protocol": "http",
            "tls": self._guard is not None and self._guard.tls is not None,
            "tokens": self._guard is not None,
            "listen": self._address or f"{self._host}:{self._port}",
            "state": self._state,
            "streams": len(self._ctx.sessions),
            "connections": self._runner.connections if self._runner is not None else 0,
            "refused_connections": self._runner.gate.refused if self._runner is not None else 0,
        }

    def _route(self, handler: _Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        ctx = self._ctx

        async def route(request: web.Request) -> web.StreamResponse:
            return await handler(request, ctx)

        return route

    async def start(self) -> str:
        """Binds the listener and serves; returns the bound ``HOST:PORT``."""
        if self._state != "new":
            raise RuntimeError(f"bridge server is {self._state}")
        self._state = "starting"
        # Room for the payload plus the request head; the routes answer 413 themselves.
        app = web.Application(
            client_max_size=self._ctx.max_body + 1,
            middlewares=[_check_origin(self._origins)],
        )
        app.on_response_prepare.append(_cors_headers(self._origins))
        app.router.add_post("/v1/publish/{subject}", self._route(handle_publish))
        app.router.add_post("/v1/request/{subject}", self._route(handle_request))
        app.router.add_get("/v1/subscribe/{subject}", self._route(handle_subscribe))
        app.router.add_get("/v1/ws", self._route(handle_ws))
        runner = LimitedRunner(
            app,
            self._limits,
            name=f"bus bridge {self._host}:{self._port}",
            logger=logger,
            shutdown_timeout=self._shutdown_timeout,
        )
        await runner.setup()
        self._runner = runner
        try:
            tls = self._guard.tls if self._guard is not None else None
            site = runner.site(self._host, self._port, ssl_context=tls.context if tls else None)
            await site.start()
        except BaseException:
            self._state = "stopped"
            await runner.cleanup()
            raise
        host, port = runner.addresses[0][:2]
        self._address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        runner.gate.name = f"bus bridge {self._address}"
        self._state = "running"
        if self._guard is None:
            logger.info("bus bridge listening on http://%s", self._address)
        else:
            logger.info(
                "bus bridge listening on %s://%s (tokens checked)",
                self._guard.scheme,
                self._address,
            )
        return self._address

    async def stop(self) -> None:
        """Stops accepting, ends every SSE stream and WebSocket, waits for them."""
        if self._state in ("stopping", "stopped"):
            return
        self._state = "stopping"
        try:
            await self._ctx.close_sessions()
            if self._runner is not None:
                await self._runner.cleanup()
        finally:
            self._state = "stopped"

    async def __aenter__(self) -> BridgeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# -- web pages: Origin and CORS -------------------------------------------------------------


def _check_origin(allowed: frozenset[str]) -> Middleware:
    """Refuses a request whose ``Origin`` is not allowed (403), before anything else reads
    it; answers a preflight (``OPTIONS``) of an allowed one."""

    @web.middleware
    async def check_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
        origins = request.headers.getall("Origin", [])
        if origins and (len(origins) > 1 or origins[0].lower() not in allowed):
            return web.json_response(
                error_body(
                    "forbidden_origin",
                    f"origin {origins[0][:100]!r} is not in this bridge's allowed_origins",
                ),
                status=403,
            )
        if request.method == "OPTIONS":
            return _preflight(request, origins[0] if origins else "")
        return await handler(request)

    return check_origin


def _preflight(request: web.Request, origin: str) -> web.Response:
    if not origin:
        return web.Response(status=204, headers={"Allow": "GET, POST, OPTIONS"})
    headers = {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": "GET, POST",
        "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE),
        "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
    }
    asked = request.headers.get("Access-Control-Request-Headers", "").strip()
    # Any header may be asked for: Eco-Header-<Name> carries message headers.
    if asked and _HEADER_LIST.fullmatch(asked):
        headers["Access-Control-Allow-Headers"] = asked
    return web.Response(status=204, headers=headers)


def _cors_headers(
    allowed: frozenset[str],
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """Lets a page of an allowed origin read the answer (Eco-* headers included)."""

    async def add(request: web.Request, response: web.StreamResponse) -> None:
        if "Vary" not in response.headers:
            response.headers["Vary"] = "Origin"
        origin = request.headers.get("Origin", "")
        if origin and origin.lower() in allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = "*"

    return add
