"""The gateway as a whole, in-process: a real control plane with backends registered
in it, real backends, the gateway's listener and admin port. Each plugin's accept
and refuse path through the data plane; splits; the cache coalescing concurrent
misses into one upstream request; the access log and metrics."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

import controlplane.testing
from sidecar.gateway.app import Gateway
from sidecar.gateway.auth import sign
from sidecar.gateway.config import parse_config
from sidecar.gateway.request import GatewayRequest, Headers
from tests.harness.redis import RedisServer
from tests.util import assert_eventually


class Backend:
    """An HTTP app that says who it is and counts its requests."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests = 0
        self.port = 0
        self.delay = 0.0
        self._runner: web.AppRunner | None = None

    async def _any(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        body = await request.read()
        headers = {"cache-control": "max-age=60"} if request.path.startswith("/cached") else {}
        return web.json_response(
            {
                "backend": self.name,
                "path": request.path_qs,
                "headers": dict(request.headers),
                "body": body.decode(),
            },
            headers={**headers, "x-backend-secret": "internal"},
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._any)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def backends() -> AsyncIterator[dict[str, Backend]]:
    made = {name: Backend(name) for name in ("orders", "v1", "v2", "static")}
    for backend in made.values():
        await backend.start()
    yield made
    for backend in made.values():
        await backend.stop()


HMAC_SECRET = "a secret of 16 characters or more"

GATEWAY = """
listen: "127.0.0.1:0"
admin: "127.0.0.1:0"
controlplane: {{addresses: ["{cp}"]}}
data_dir: "{data}"
access_log: "{log}"
rate_limit_store: {{url: "{redis}"}}
consumers:
  - {{name: alice, api_keys: ["k-alice-0001"], hmac_secrets: {{alice-key: "{hmac_secret}"}}}}
  - {{name: bob, api_keys: ["k-bob-0000001"]}}
routes:
  - name: orders
    match: {{path_prefix: /api/orders}}
    upstream: orders
    rewrite: {{strip_prefix: /api}}
    plugins:
      key_auth: {{header: x-api-key}}
      allow: {{consumers: [alice]}}
      rate_limit: {{rate: 3, per: 1m, burst: 3, key: consumer, scope: global, on_store_error: deny}}
      request_transform: {{set_headers: {{x-from: gateway}}, remove_headers: [cookie]}}
      response_transform: {{remove_headers: [x-backend-secret], set_headers: {{x-served-by: eco}}}}
  - name: split
    match: {{path_prefix: /split}}
    split: [{{service: v1, weight: 1}}, {{service: v2, weight: 1}}]
  - name: cached
    match: {{path_prefix: /cached}}
    upstream: static
    endpoints: ["127.0.0.1:{static}"]
    plugins:
      cache: {{ttl: 30s}}
      cors: {{origins: ["https://app.example.com"]}}
  - name: signed
    match: {{path_prefix: /signed}}
    upstream: static
    endpoints: ["127.0.0.1:{static}"]
    plugins:
      hmac: {{}}
      request_transform:
        json_body:
          remove: [password]
          rename: {{userName: user_name}}
          set: {{meta.via: gateway}}
        max_body: 1000
  - name: old
    match: {{path: /old}}
    redirect: {{path: /cached/new, status: 301}}
"""


@pytest.fixture
async def gateway(
    tmp_path: Path, backends: dict[str, Backend], redis_server: RedisServer
) -> AsyncIterator[tuple[Gateway, Path]]:
    async with controlplane.testing.control_plane() as cp:
        client = cp.client()
        for name in ("orders", "v1", "v2"):
            await client.register(name, "127.0.0.1", backends[name].port)
        text = GATEWAY.format(
            cp=cp.address,
            data=tmp_path / "gw",
            log=tmp_path / "access.log",
            redis=redis_server.url,
            static=backends["static"].port,
            hmac_secret=HMAC_SECRET,
        )
        async with Gateway(parse_config(text)) as gw:

            def has_endpoints() -> None:
                for route in ("orders", "split"):
                    for backend in gw.status()["routes"]:
                        if backend["name"] == route:
                            assert all(b["endpoints"] for b in backend["backends"]), backend

            await assert_eventually(has_endpoints)
            yield gw, tmp_path / "access.log"


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


async def test_authentication_allow_list_rate_limit_and_transforms(
    gateway: tuple[Gateway, Path],
) -> None:
    gw, _ = gateway
    url = f"http://{gw.address}/api/orders/42"
    async with aiohttp.ClientSession() as http:
        status, headers, body = await fetch(http, "GET", url)
        assert status == 401 and body["error"] == "unauthenticated"
        assert headers["WWW-Authenticate"].startswith("ApiKey")
        status, _, body = await fetch(http, "GET", url, headers={"x-api-key": "wrong-key-00"})
        assert status == 401
        status, _, body = await fetch(http, "GET", url, headers={"x-api-key": "k-bob-0000001"})
        assert status == 403 and body["error"] == "forbidden"
        alice = {"x-api-key": "k-alice-0001", "cookie": "s=1", "x-consumer-name": "mallory"}
        for left in (2, 1, 0):
            status, headers, body = await fetch(http, "GET", url, headers=alice)
            assert status == 200, body
            assert body["backend"] == "orders" and body["path"] == "/orders/42"
            sent = {k.lower(): v for k, v in body["headers"].items()}
            assert sent["x-from"] == "gateway" and "cookie" not in sent
            assert sent["x-consumer-name"] == "alice"  # not the client's forgery
            assert "x-api-key" not in sent  # hide_credentials
            assert headers["RateLimit-Remaining"] == str(left), headers
            assert headers["x-served-by"] == "eco" and "x-backend-secret" not in headers
        status, headers, body = await fetch(http, "GET", url, headers=alice)
        assert status == 429 and body["error"] == "rate_limited"
        assert int(headers["Retry-After"]) >= 1 and headers["RateLimit-Remaining"] == "0"


async def test_a_split_reaches_both_services_and_redirects_are_answered(
    gateway: tuple[Gateway, Path],
) -> None:
    gw, _ = gateway
    async with aiohttp.ClientSession() as http:
        seen = set()
        for _ in range(40):
            status, _, body = await fetch(http, "GET", f"http://{gw.address}/split/x")
            assert status == 200
            seen.add(body["backend"])
        assert seen == {"v1", "v2"}
        status, headers, _ = await fetch(http, "GET", f"http://{gw.address}/old?q=1")
        assert status == 301 and headers["Location"] == "/cached/new?q=1"
        status, _, body = await fetch(http, "GET", f"http://{gw.address}/nowhere")
        assert status == 404 and body["error"] == "no_route"


async def test_a_route_without_authentication_forwards_no_identity_a_client_sent(
    gateway: tuple[Gateway, Path],
) -> None:
    gw, _ = gateway
    forged = {"X-Consumer-Name": "mallory", "x-consumer-groups": "admins", "x-kept": "1"}
    async with aiohttp.ClientSession() as http:
        status, _, body = await fetch(http, "GET", f"http://{gw.address}/split/x", headers=forged)
        assert status == 200
        sent = {k.lower(): v for k, v in body["headers"].items()}
        assert "x-consumer-name" not in sent and "x-consumer-groups" not in sent
        assert sent["x-kept"] == "1"


async def test_the_cache_coalesces_100_concurrent_misses_into_one_request(
    gateway: tuple[Gateway, Path], backends: dict[str, Backend]
) -> None:
    gw, _ = gateway
    static = backends["static"]
    static.delay = 0.2
    url = f"http://{gw.address}/cached/item"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as http:
        answers = await asyncio.gather(*(fetch(http, "GET", url) for _ in range(100)))
        assert {status for status, _, _ in answers} == {200}
        assert static.requests == 1
        verdicts = sorted(h["x-cache"] for _, h, _ in answers)
        assert verdicts.count("MISS") == 1 and verdicts.count("HIT") == 99
        status, headers, _ = await fetch(http, "GET", url)
        assert headers["x-cache"] == "HIT" and int(headers["Age"]) >= 0
        # Purge through the admin port: the next request goes upstream again.
        admin = f"http://{gw.admin_address}/cache/purge"
        status, _, body = await fetch(http, "POST", admin, params={"route": "cached"})
        assert status == 200 and body["purged"] == 1
        _, headers, _ = await fetch(http, "GET", url)
        assert headers["x-cache"] == "MISS" and static.requests == 2


async def test_cors_preflight_and_response_headers(gateway: tuple[Gateway, Path]) -> None:
    gw, _ = gateway
    url = f"http://{gw.address}/cached/cors"
    async with aiohttp.ClientSession() as http:
        preflight = {
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "GET",
        }
        status, headers, _ = await fetch(http, "OPTIONS", url, headers=preflight)
        assert status == 204
        assert headers["Access-Control-Allow-Origin"] == "https://app.example.com"
        assert "GET" in headers["Access-Control-Allow-Methods"]
        evil = {**preflight, "Origin": "https://evil.example.com"}
        status, headers, _ = await fetch(http, "OPTIONS", url, headers=evil)
        assert status == 403 and "Access-Control-Allow-Origin" not in headers
        _, headers, _ = await fetch(http, "GET", url, headers={"Origin": "https://app.example.com"})
        assert headers["Access-Control-Allow-Origin"] == "https://app.example.com"


async def test_the_access_log_metrics_and_status(gateway: tuple[Gateway, Path]) -> None:
    gw, log = gateway
    async with aiohttp.ClientSession() as http:
        await fetch(http, "GET", f"http://{gw.address}/api/orders/1")
        await fetch(
            http, "GET", f"http://{gw.address}/api/orders/1", headers={"x-api-key": "k-alice-0001"}
        )
        status, _, metrics = await fetch(http, "GET", f"http://{gw.admin_address}/metrics")
        assert status == 200
        assert 'eco_gateway_auth_failures_total{route="orders"} 1.0' in metrics
        assert 'eco_gateway_requests_total{code="200",route="orders"} 1.0' in metrics
        status, _, doc = await fetch(http, "GET", f"http://{gw.admin_address}/status")
        names = [r["name"] for r in doc["routes"]]
        assert names == ["orders", "split", "cached", "signed", "old"]
        assert doc["controlplane"]["connected"] is True

    def logged() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        assert len(lines) == 2
        return lines

    lines = await assert_eventually(logged)
    assert [(x["route"], x["status"], x["consumer"]) for x in lines] == [
        ("orders", 401, None),
        ("orders", 200, "alice"),
    ]
    assert "k-alice-0001" not in log.read_text()


async def test_a_signed_request_with_a_body_and_a_json_body_transform(
    gateway: tuple[Gateway, Path],
) -> None:
    gw, _ = gateway
    host = gw.address.rpartition(":")[0]
    body = json.dumps({"userName": "al", "password": "p", "n": 1}).encode()

    def signed(payload: bytes, path: str = "/signed/users") -> dict[str, str]:
        request = GatewayRequest(
            "POST", host, path, headers=Headers([("host", gw.address)]), body=payload
        )
        request.headers.set("content-type", "application/json")
        components = ("@method", "@authority", "@path", "content-digest")
        nonce = secrets.token_hex(8)
        sig_input, signature = sign(
            request, "alice-key", HMAC_SECRET.encode(), components=components, nonce=nonce
        )
        return {
            **dict(request.headers.items()),
            "signature-input": sig_input,
            "signature": signature,
        }

    url = f"http://{gw.address}/signed/users"
    async with aiohttp.ClientSession() as http:
        status, _, answer = await fetch(http, "POST", url, data=body, headers=signed(body))
        assert status == 200, answer
        sent = json.loads(answer["body"])
        assert sent == {"user_name": "al", "n": 1, "meta": {"via": "gateway"}}
        # The digest covers the body as sent: another body is refused.
        headers = signed(body)
        status, _, answer = await fetch(http, "POST", url, data=body + b" ", headers=headers)
        assert status == 401, answer
        # A body over the route's max_body is refused before it is all read.
        big = json.dumps({"x": "y" * 2000}).encode()
        status, _, answer = await fetch(http, "POST", url, data=big, headers=signed(big))
        assert status == 413 and answer["error"] == "body_too_large"
        # Chunked: the whole body is read, checked and forwarded with its new length.

        async def chunks() -> AsyncIterator[bytes]:
            yield body[:10]
            yield body[10:]

        headers = signed(body)
        status, _, answer = await fetch(http, "POST", url, data=chunks(), headers=headers)
        assert status == 200, answer
        assert json.loads(answer["body"])["user_name"] == "al"
