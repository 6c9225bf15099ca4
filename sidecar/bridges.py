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
- ``GET /v1/ws`` — a WebSocket of JSON frames (see :mod:`sidecar._bridge_ws`).

Errors are JSON ``{"error": kind, "message", "field"}`` with a matching status.
The sidecar passes its relay broker; any `controlplane.bus.Broker` works.
aiohttp is imported here and only here: the sidecar imports this module only
when a bridge is configured (see tests/unit/sidecar/test_admin_imports.py).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from controlplane.bus import MAX_PAYLOAD, Broker
from sidecar._bridge_http import (
    BridgeContext,
    handle_publish,
    handle_request,
    handle_subscribe,
)
from sidecar._bridge_ws import handle_ws

__all__ = ["BridgeServer"]

logger = logging.getLogger(__name__)

#: Seconds between SSE heartbeat comments and WebSocket pings.
HEARTBEAT = 15.0
#: Frames queued for one WebSocket before core messages are dropped.
SEND_QUEUE = 1024
_Handler = Callable[[web.Request, BridgeContext], Awaitable[web.StreamResponse]]


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
    ) -> None:
        if max_body < 1 or heartbeat <= 0 or send_queue < 1:
            raise ValueError("max_body, heartbeat and send_queue must be positive")
        self._host, self._port = _split_listen(listen)
        self._ctx = BridgeContext(
            broker, max_body=max_body, heartbeat=heartbeat, send_queue=send_queue
        )
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self._state = "new"
        self._address = ""

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
            "listen": self._address or f"{self._host}:{self._port}",
            "state": self._state,
            "streams": len(self._ctx.sessions),
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
        app = web.Application(client_max_size=self._ctx.max_body + 1)
        app.router.add_post("/v1/publish/{subject}", self._route(handle_publish))
        app.router.add_post("/v1/request/{subject}", self._route(handle_request))
        app.router.add_get("/v1/subscribe/{subject}", self._route(handle_subscribe))
        app.router.add_get("/v1/ws", self._route(handle_ws))
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=self._shutdown_timeout)
        await runner.setup()
        self._runner = runner
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
        except BaseException:
            self._state = "stopped"
            await runner.cleanup()
            raise
        host, port = runner.addresses[0][:2]
        self._address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._state = "running"
        logger.info("bus bridge listening on http://%s", self._address)
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
