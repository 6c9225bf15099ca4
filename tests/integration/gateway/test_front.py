"""The gateway's front on the sidecar's HTTP data plane, with a plan made by hand:
routing (404), sync and waiting checks, answers, header changes both ways, and a
client that leaves while a check waits (its task is cancelled, nothing leaks)."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sidecar.config import ProxyPolicy
from sidecar.gateway.request import GatewayRequest, LocalResponse
from sidecar.gateway.server import GatewayFront, GatewayListener, Plan, Routed, RouteForwarding
from sidecar.proxy._target import Target
from tests.util import assert_eventually


@pytest.fixture
async def backend() -> AsyncIterator[int]:
    async def echo(request: web.Request) -> web.Response:
        body = await request.text()
        return web.json_response(
            {"path": request.path_qs, "headers": dict(request.headers), "body": body}
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner.addresses[0][1]
    await runner.cleanup()


class Gate:
    """A check that waits until released (and counts how often it was cancelled)."""

    def has_waiting(self, count: int) -> None:
        assert self.waiting == count

    def has_cancelled(self, count: int) -> None:
        assert self.cancelled == count

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.waiting = 0
        self.cancelled = 0

    def __call__(self, request: GatewayRequest) -> Any:
        if request.headers.get("x-wait") is None:
            return None

        async def wait() -> LocalResponse | None:
            self.waiting += 1
            try:
                await self.event.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            request.headers.set("x-waited", "yes")
            return None

        return wait()


def refuse(request: GatewayRequest) -> LocalResponse | None:
    if request.headers.get("x-deny"):
        return LocalResponse.error(403, "denied", "told to", (("x-why", "asked"),))
    return None


@pytest.fixture
async def gateway(backend: int) -> AsyncIterator[tuple[str, Gate, GatewayListener]]:
    policy = ProxyPolicy(protocol="http")
    fw = RouteForwarding("api", Target.fixed("api", policy, [("127.0.0.1", backend)]), policy)
    gate = Gate()

    def strip_api(request: GatewayRequest) -> str:
        return request.target.removeprefix("/api") or "/"

    plan = Plan(
        name="api",
        steps=[refuse, gate],
        rewrite=strip_api,
        on_forward=[lambda r: r.headers.set("x-from", "gateway")],
        response_headers=[lambda r: [("x-route", r.route)]],
    )

    def lookup(request: GatewayRequest) -> Routed | None:
        return Routed(plan, fw) if request.path.startswith("/api") else None

    front = GatewayFront(lookup)
    listener = GatewayListener("gw", "127.0.0.1:0", front, policy, routes=lambda: [fw])
    await listener.start()
    yield f"http://{listener.address}", gate, listener
    await listener.drain(0.5)


async def test_routes_rewrites_and_adds_headers_both_ways(
    gateway: tuple[str, Gate, GatewayListener],
) -> None:
    url, _, _ = gateway
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/orders?x=1", data=b"hello") as resp:
            assert resp.status == 200
            assert resp.headers["x-route"] == "api"
            answer = await resp.json()
        assert answer["path"] == "/orders?x=1"
        assert answer["headers"]["x-from"] == "gateway"
        assert answer["body"] == "hello"
        async with http.get(f"{url}/other") as resp:
            assert resp.status == 404
            assert (await resp.json())["error"] == "no_route"
        async with http.get(f"{url}/api/x", headers={"x-deny": "1"}) as resp:
            assert resp.status == 403
            assert resp.headers["x-why"] == "asked"
            assert resp.headers["x-route"] == "api"
            assert (await resp.json()) == {"error": "denied", "message": "told to"}


async def test_a_check_that_waits_then_lets_the_request_through(
    gateway: tuple[str, Gate, GatewayListener],
) -> None:
    url, gate, _ = gateway
    async with aiohttp.ClientSession() as http:
        pending = asyncio.ensure_future(http.get(f"{url}/api/slow", headers={"x-wait": "1"}))
        await assert_eventually(lambda: gate.has_waiting(1))
        gate.event.set()
        resp = await pending
        assert resp.status == 200
        assert (await resp.json())["headers"]["x-waited"] == "yes"
        resp.release()


async def test_a_client_leaving_during_a_check_cancels_it(
    gateway: tuple[str, Gate, GatewayListener],
) -> None:
    url, gate, listener = gateway
    host, _, port = url.removeprefix("http://").rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /api/x HTTP/1.1\r\nHost: a\r\nx-wait: 1\r\n\r\n")
    await assert_eventually(lambda: gate.has_waiting(1))
    # A reset (a half-close would still get its answer: RFC 9112, 9.6).
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
    await assert_eventually(lambda: gate.has_cancelled(1))
    assert listener.front.pending == 0  # type: ignore[union-attr]
    del reader
