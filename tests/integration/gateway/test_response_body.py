"""Response JSON bodies rewritten by a route's response_transform: held until
complete and sent with their new length (from a Content-Length or a chunked
upstream), a body over max_body streamed unchanged, other content types
untouched, and the cache storing what the client got."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from sidecar.gateway.app import Gateway
from sidecar.gateway.config import parse_config


@pytest.fixture
async def upstream() -> AsyncIterator[int]:
    async def small(request: web.Request) -> web.Response:
        return web.json_response({"id": 1, "secret": "s", "user": {"name": "a"}})

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b'{"id": 2, ')
        await resp.write(b'"secret": "s"}')
        await resp.write_eof()
        return resp

    async def big(request: web.Request) -> web.Response:
        return web.json_response({"secret": "s", "pad": "x" * 5000})

    async def text(request: web.Request) -> web.Response:
        return web.Response(text='{"secret": "s"}', content_type="text/plain")

    async def cached(request: web.Request) -> web.Response:
        return web.json_response({"secret": "s", "n": 1}, headers={"cache-control": "max-age=60"})

    app = web.Application()
    for path, handler in (
        ("/small", small),
        ("/chunked", chunked),
        ("/big", big),
        ("/text", text),
        ("/cached", cached),
    ):
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield runner.addresses[0][1]
    await runner.cleanup()


async def test_json_response_bodies_are_rewritten(tmp_path: Path, upstream: int) -> None:
    config = parse_config(
        f"""
        listen: "127.0.0.1:0"
        data_dir: "{tmp_path}"
        routes:
          - name: api
            match: {{path_prefix: /}}
            upstream: app
            endpoints: ["127.0.0.1:{upstream}"]
            plugins:
              cache: {{}}
              response_transform:
                set_headers: {{x-rewritten: "yes"}}
                json_body: {{remove: [secret], rename: {{user.name: user.login}}, set: {{via: gw}}}}
                max_body: 1000
        """
    )
    async with Gateway(config) as gw, aiohttp.ClientSession() as http:

        async def get(path: str) -> tuple[aiohttp.ClientResponse, bytes]:
            async with http.get(f"http://{gw.address}{path}") as resp:
                return resp, await resp.read()

        resp, body = await get("/small")
        assert json.loads(body) == {"id": 1, "user": {"login": "a"}, "via": "gw"}
        assert resp.headers["content-length"] == str(len(body))
        assert resp.headers["x-rewritten"] == "yes"
        resp, body = await get("/chunked")
        assert json.loads(body) == {"id": 2, "via": "gw"}
        resp, body = await get("/big")  # over max_body: as it came
        assert json.loads(body)["secret"] == "s" and len(body) > 5000
        resp, body = await get("/text")  # not JSON: as it came
        assert body == b'{"secret": "s"}'
        first, body = await get("/cached")
        assert first.headers["x-cache"] == "MISS" and json.loads(body) == {"n": 1, "via": "gw"}
        hit, body = await get("/cached")
        assert hit.headers["x-cache"] == "HIT" and json.loads(body) == {"n": 1, "via": "gw"}
