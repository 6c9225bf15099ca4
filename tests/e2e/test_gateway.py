"""The API gateway end to end: real ``eco gateway`` and ``eco controlplane`` processes.

Backends are small aiohttp apps in the test process, registered in the
control plane with the SDK; the global rate limit shares a real redis-server.
What a user of the gateway would notice: a registry route that survives the
control plane going away (and a restart while it is away), two replicas
holding one global limit together, the rate limit store failing under both
``on_store_error`` settings, keys that rotate at the identity provider, and
``eco gateway purge`` against a real cache. Hostile HTTP/1.1 on raw sockets is
in tests/e2e/test_gateway_hardening.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

import sdk
from sidecar.cache import CACHE_FILE
from tests.harness.controlplane import ECO, ControlPlaneProcess
from tests.harness.gateway import GatewayProcess
from tests.harness.jwks import JwksServer, SigningKey
from tests.harness.ports import free_port
from tests.harness.redis import RedisServer
from tests.util import assert_eventually

pytestmark = pytest.mark.e2e


# -- peers -----------------------------------------------------------------------------------


class Backend:
    """An HTTP app that says who it is and counts its requests; paths under /cached
    answer with ``Cache-Control: max-age=60``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _any(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        headers = {"cache-control": "max-age=60"} if request.path.startswith("/cached") else {}
        return web.json_response(
            {
                "backend": self.name,
                "path": request.path_qs,
                "consumer": request.headers.get("x-consumer-name"),
                "body_bytes": len(body),
            },
            headers=headers,
        )

    async def start(self) -> Backend:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._any)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    """One control plane for the tests that do not stop it (each registers services of
    its own names)."""
    logs = tmp_path_factory.mktemp("plane")
    process = ControlPlaneProcess("memory://", logs / "controlplane.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    started = await Backend(request.node.name[:40]).start()
    yield started
    await started.stop()


async def register(plane: str, service: str, port: int) -> None:
    async with sdk.AsyncClient(plane, timeout=5) as client:
        await client.register(service, "127.0.0.1", port, id=f"{service}-1")


@pytest.fixture
async def gateways(tmp_path: Path) -> AsyncIterator[list[GatewayProcess]]:
    """Gateways a test starts; every one is stopped after it."""
    started: list[GatewayProcess] = []
    yield started
    await asyncio.gather(*(g.stop() for g in started))


async def gateway(
    gateways: list[GatewayProcess], tmp_path: Path, body: str, name: str = "gw"
) -> GatewayProcess:
    process = GatewayProcess(tmp_path, name, body)
    await process.start()
    gateways.append(process)
    return process


async def routable(gw: GatewayProcess, *routes: str) -> None:
    """Waits until each of ``routes`` has an endpoint (the registry's answer arrived)."""

    async def check() -> None:
        for route in routes:
            assert all(await gw.endpoints(route)), (
                f"{gw.name}: {route}: no endpoints; its log:\n"
                + "\n".join(gw.log().splitlines()[-8:])
            )

    await assert_eventually(check, timeout=10)


async def fetch(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, CIMultiDict[str], Any]:
    async with http.request(method, url, allow_redirects=False, **kwargs) as resp:
        text = await resp.text()
        try:
            body = json.loads(text) if text else None
        except ValueError:
            body = text
        return resp.status, CIMultiDict(resp.headers), body


# -- 1. a registry route, with the control plane gone ----------------------------------------


async def test_a_registry_route_survives_the_control_plane_and_a_restart_without_it(
    tmp_path: Path, backend: Backend, gateways: list[GatewayProcess]
) -> None:
    lone = ControlPlaneProcess("memory://", tmp_path / "lone-plane.log")
    lone.start()
    try:
        await register(lone.address, "orders", backend.port)
        gw = await gateway(
            gateways,
            tmp_path,
            f'controlplane: {{addresses: ["{lone.address}"]}}\n'
            "routes:\n"
            "  - {name: orders, match: {path_prefix: /api/orders}, upstream: orders,\n"
            "     rewrite: {strip_prefix: /api}}\n",
        )
        await routable(gw, "orders")
        assert await gw.endpoints("orders") == [[f"127.0.0.1:{backend.port}"]]
        await assert_eventually(lambda: _holds((gw.data_dir / CACHE_FILE).exists()))
        async with aiohttp.ClientSession() as http:
            status, _, body = await fetch(http, "GET", gw.url("/api/orders/7?x=1"))
            assert status == 200 and body["path"] == "/orders/7?x=1", body

            lone.kill()  # SIGKILL: no goodbye to the gateway's session
            for n in range(5):
                status, _, body = await fetch(http, "GET", gw.url(f"/api/orders/{n}"))
                assert status == 200 and body["backend"] == backend.name, body

            async def stale() -> None:
                assert (await gw.status())["controlplane"]["connected"] is False

            await assert_eventually(stale, timeout=10)
            status, _, body = await fetch(http, "GET", gw.url("/api/orders/after-kill"))
            assert status == 200, body

            # A new gateway process, the control plane still down: the endpoints on disk.
            await gw.stop()
            await gw.start()
            assert await gw.endpoints("orders") == [[f"127.0.0.1:{backend.port}"]]
            status, _, body = await fetch(http, "GET", gw.url("/api/orders/restarted"))
            assert status == 200 and body["path"] == "/orders/restarted", body
            assert (await gw.status())["controlplane"] == {"connected": False, "stale": True}
        assert backend.requests == 8
    finally:
        lone.stop()


def _holds(condition: bool) -> None:
    assert condition


# -- 2. two replicas, one global limit --------------------------------------------------------


async def test_two_replicas_of_one_config_both_route_to_registry_services(
    tmp_path: Path,
    plane: ControlPlaneProcess,
    backend: Backend,
    gateways: list[GatewayProcess],
) -> None:
    """Scaling out is running the same config twice; on one host too (two processes
    behind one load balancer, or a replacement started before the old one stops)."""
    await register(plane.address, "replicated", backend.port)
    body = (
        f'controlplane: {{addresses: ["{plane.address}"]}}\n'
        "routes:\n  - {name: replicated, upstream: replicated}\n"
    )
    replicas = await asyncio.gather(
        gateway(gateways, tmp_path, body, "gw-a"), gateway(gateways, tmp_path, body, "gw-b")
    )
    await asyncio.gather(*(routable(gw, "replicated") for gw in replicas))
    async with aiohttp.ClientSession() as http:
        for gw in replicas:
            status, _, body = await fetch(http, "GET", gw.url("/r"))
            assert status == 200 and body["backend"] == backend.name, body


RATE, BURST, WINDOW = 50, 25, 2.0


async def test_two_replicas_share_a_global_limit(
    tmp_path: Path,
    backend: Backend,
    redis_server: RedisServer,
    gateways: list[GatewayProcess],
) -> None:
    """Both replicas take from one bucket in Redis. The bucket starts full (``burst``)
    and gains ``rate`` tokens a second, so over ``elapsed`` seconds of saturating
    traffic it can allow at most ``burst + rate * elapsed`` requests, and a client
    that never lets it fill allows about that many: 25 + 50 * 2 s = 125 here
    (measured: 124, of some 12,000 requests). ``elapsed`` is taken from the first
    request sent to the last answer read, which can only overstate the window. With
    a local limit the two replicas would allow about twice that. (The backend is a
    fixed endpoint: this is about the limit; registry routes on two replicas are the
    test above.)"""
    body = (
        # A generous timeout: the hammering below loads the host's cores, and one
        # decision slower than the default 50 ms would open the store's circuit (deny).
        f'rate_limit_store: {{url: "{redis_server.url}", timeout: 2s}}\n'
        "routes:\n"
        "  - name: limited\n"
        "    upstream: limited\n"
        f'    endpoints: ["127.0.0.1:{backend.port}"]\n'
        "    plugins:\n"
        f"      rate_limit: {{rate: {RATE}, per: 1s, burst: {BURST}, key: route,\n"
        "                   scope: global, on_store_error: deny}\n"
    )
    replicas = await asyncio.gather(
        gateway(gateways, tmp_path, body, "gw-a"), gateway(gateways, tmp_path, body, "gw-b")
    )

    allowed = {gw.name: 0 for gw in replicas}
    refused = {gw.name: 0 for gw in replicas}
    other: list[int] = []

    async def hammer(http: aiohttp.ClientSession, gw: GatewayProcess, until: float) -> None:
        while time.monotonic() < until:
            async with http.get(gw.url("/x")) as resp:
                await resp.read()
                if resp.status == 200:
                    allowed[gw.name] += 1
                elif resp.status == 429:
                    assert int(resp.headers["Retry-After"]) >= 1
                    refused[gw.name] += 1
                else:
                    other.append(resp.status)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        start = time.monotonic()
        until = start + WINDOW
        await asyncio.gather(*(hammer(http, gw, until) for gw in replicas for _ in range(4)))
        elapsed = time.monotonic() - start
    expected = BURST + RATE * elapsed
    total = sum(allowed.values())
    assert other == []
    assert all(allowed.values()), allowed  # both replicas took from the one bucket
    assert sum(refused.values()) > total, (allowed, refused)  # the clients did saturate it
    assert abs(total - expected) <= 0.1 * expected, (total, expected, allowed, refused)


# -- 3. the store goes away -------------------------------------------------------------------


async def test_redis_stopped_under_allow_and_deny_then_back(
    tmp_path: Path,
    plane: ControlPlaneProcess,
    backend: Backend,
    redis_server: RedisServer,
    gateways: list[GatewayProcess],
) -> None:
    await register(plane.address, "store-down", backend.port)
    limit = "rate: 3, per: 1m, burst: 3, key: route, scope: global"
    gw = await gateway(
        gateways,
        tmp_path,
        f'controlplane: {{addresses: ["{plane.address}"]}}\n'
        f'rate_limit_store: {{url: "{redis_server.url}", timeout: 100ms,'
        " probe_interval: 100ms}\n"
        "routes:\n"
        "  - {name: open, match: {path_prefix: /open}, upstream: store-down,\n"
        f"     plugins: {{rate_limit: {{{limit}, on_store_error: allow}}}}}}\n"
        "  - {name: closed, match: {path_prefix: /closed}, upstream: store-down,\n"
        f"     plugins: {{rate_limit: {{{limit}, on_store_error: deny}}}}}}\n",
    )
    await routable(gw, "open", "closed")
    async with aiohttp.ClientSession() as http:
        for path in ("/open", "/closed"):
            status, headers, _ = await fetch(http, "GET", gw.url(path))
            assert status == 200 and headers["RateLimit-Remaining"] == "2", headers

        redis_server.halt()
        # allow: more requests than the bucket holds pass, and say nothing about a limit
        for _ in range(5):
            status, headers, body = await fetch(http, "GET", gw.url("/open"))
            assert status == 200, body
            assert not [h for h in headers if h.lower().startswith("ratelimit-")], headers
        # deny: 503 (the gateway cannot decide), not 429 (the client did nothing wrong)
        status, headers, body = await fetch(http, "GET", gw.url("/closed"))
        assert status == 503 and body["error"] == "rate_limit_store_unavailable", body
        assert int(headers["Retry-After"]) >= 1

        redis_server.resume()  # empty: every bucket full again

        async def limited_again() -> None:
            status, headers, body = await fetch(http, "GET", gw.url("/closed"))
            assert status == 200 and headers["RateLimit-Remaining"] == "2", (status, body)

        await assert_eventually(limited_again, timeout=10)
        for path in ("/closed", "/open"):
            answers = [(await fetch(http, "GET", gw.url(path)))[0] for _ in range(4)]
            expected = [200, 200, 429, 429] if path == "/closed" else [200, 200, 200, 429]
            assert answers == expected, (path, answers)


# -- 5. JWT with keys that rotate at the identity provider -----------------------------------


async def test_jwt_follows_keys_that_rotate_at_the_identity_provider(
    tmp_path: Path,
    plane: ControlPlaneProcess,
    backend: Backend,
    gateways: list[GatewayProcess],
) -> None:
    idp = JwksServer()
    await idp.start()
    try:
        old, new = SigningKey("k-2026-1"), SigningKey("k-2026-2")
        idp.keys = [old]
        await register(plane.address, "secured", backend.port)
        gw = await gateway(
            gateways,
            tmp_path,
            f'controlplane: {{addresses: ["{plane.address}"]}}\n'
            "routes:\n"
            "  - name: secured\n"
            "    upstream: secured\n"
            "    plugins:\n"
            f'      jwt: {{jwks_url: "{idp.url}", issuer: "https://idp.test/",'
            " jwks_refresh: 1h, jwks_refresh_min: 1h}\n",
        )
        await routable(gw, "secured")

        async def call(token: str | None) -> tuple[int, CIMultiDict[str], Any]:
            headers = {"authorization": f"Bearer {token}"} if token else {}
            async with aiohttp.ClientSession() as http:
                return await fetch(http, "GET", gw.url("/me"), headers=headers)

        status, _, body = await call(old.token())
        assert status == 200 and body["consumer"] == "alice", body
        status, headers, _ = await call(None)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        fetches = idp.fetches

        # The provider rotates: the old key is gone, a new one signs.
        idp.keys = [new]
        status, _, body = await call(new.token(sub="bob"))
        assert status == 200 and body["consumer"] == "bob", body  # unknown kid: refetched
        assert idp.fetches == fetches + 1
        status, headers, body = await call(old.token())
        assert status == 401, body  # signed with the removed key
        assert 'error="invalid_token"' in headers["WWW-Authenticate"]
        # A token naming the new kid but signed with another key is no better.
        status, _, _ = await call(old.token(kid=new.kid))
        assert status == 401
        assert backend.requests == 2
    finally:
        await idp.close()


# -- 6. eco gateway purge ---------------------------------------------------------------------


async def eco(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(ECO),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_eco_gateway_purge_empties_a_routes_cache(
    tmp_path: Path,
    plane: ControlPlaneProcess,
    backend: Backend,
    gateways: list[GatewayProcess],
) -> None:
    await register(plane.address, "catalog", backend.port)
    gw = await gateway(
        gateways,
        tmp_path,
        f'controlplane: {{addresses: ["{plane.address}"]}}\n'
        "routes:\n"
        "  - {name: catalog, match: {path_prefix: /cached}, upstream: catalog,\n"
        "     plugins: {cache: {ttl: 30s}}}\n",
    )
    await routable(gw, "catalog")
    async with aiohttp.ClientSession() as http:

        async def verdict(path: str) -> str:
            status, headers, _ = await fetch(http, "GET", gw.url(path))
            assert status == 200
            return headers["x-cache"]

        assert [await verdict("/cached/a"), await verdict("/cached/a")] == ["MISS", "HIT"]
        assert [await verdict("/cached/b"), await verdict("/cached/b?page=2")] == ["MISS", "MISS"]
        assert backend.requests == 3

        # One path (every query of it): the others stay.
        code, out, err = await eco("gateway", "purge", "catalog", "/cached/b", "--admin", gw.admin)
        assert (code, err) == (0, "")
        assert out == "purged 2 cached response(s) of route catalog path /cached/b\n"
        assert [await verdict("/cached/a"), await verdict("/cached/b")] == ["HIT", "MISS"]

        # The whole route, as data.
        code, out, err = await eco("gateway", "purge", "catalog", "--admin", gw.admin, "-o", "json")
        assert code == 0, err
        assert json.loads(out) == {"route": "catalog", "path": None, "purged": 2}
        assert [await verdict("/cached/a"), await verdict("/cached/a")] == ["MISS", "HIT"]
        assert backend.requests == 5

    code, out, err = await eco("gateway", "purge", "nope", "--admin", gw.admin)
    assert (code, out) == (1, "")
    assert (
        err == f"eco: unknown route 'nope': the gateway at {gw.admin} has no route of that name\n"
    )
    nowhere = f"127.0.0.1:{free_port()}"
    code, out, err = await eco("gateway", "purge", "catalog", "--admin", nowhere)
    assert (code, out) == (1, "")
    assert err.startswith(f"eco: cannot reach the gateway's admin at {nowhere}: "), err
