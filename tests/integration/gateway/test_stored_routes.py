"""Routes stored in the control plane reach a running gateway over its watch:
added, changed and deleted without a restart and without cutting a request in
flight; kept on disk, so a gateway restarted while the control plane is away
serves them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from ecosystem.v1 import gateway_pb2, gateway_pb2_grpc
from google.protobuf import struct_pb2

import controlplane.testing
from sidecar.gateway.app import Gateway
from sidecar.gateway.config import parse_config
from tests.util import assert_eventually


@pytest.fixture
async def backend() -> AsyncIterator[tuple[int, asyncio.Event]]:
    release = asyncio.Event()

    async def answer(request: web.Request) -> web.Response:
        if request.path.startswith("/slow"):
            await release.wait()
        return web.json_response({"path": request.path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield runner.addresses[0][1], release
    await runner.cleanup()


def route(name: str, prefix: str, port: int, **more: Any) -> gateway_pb2.Route:
    spec = struct_pb2.Struct()
    spec.update(
        {
            "name": name,
            "match": {"path_prefix": prefix},
            "upstream": "app",
            "endpoints": [f"127.0.0.1:{port}"],
            **more,
        }
    )
    return gateway_pb2.Route(name=name, spec=spec)


async def get(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url) as resp:
        await resp.read()
        return resp.status


async def test_stored_routes_come_change_and_go_without_a_restart(
    tmp_path: Path, backend: tuple[int, asyncio.Event]
) -> None:
    port, release = backend
    async with (
        controlplane.testing.control_plane() as cp,
        grpc.aio.insecure_channel(cp.address) as channel,
    ):
        routes = gateway_pb2_grpc.RouteServiceStub(channel)
        await routes.ApplyRoutes(gateway_pb2.ApplyRoutesRequest(routes=[route("a", "/a", port)]))
        config = parse_config(
            f"""
            listen: "127.0.0.1:0"
            admin: "127.0.0.1:0"
            data_dir: "{tmp_path / "gw"}"
            controlplane: {{addresses: ["{cp.address}"]}}
            controlplane_routes: {{}}
            routes:
              - {{name: file, match: {{path_prefix: /file}}, upstream: app,
                  endpoints: ["127.0.0.1:{port}"]}}
            """
        )
        async with Gateway(config) as gw, aiohttp.ClientSession() as http:
            base = f"http://{gw.address}"

            async def served(path: str, status: int) -> None:
                assert await get(http, base + path) == status

            await assert_eventually(lambda: served("/a/x", 200))
            assert await get(http, base + "/file/x") == 200
            # A request in flight on route a while a is changed and b added.
            slow = asyncio.ensure_future(get(http, base + "/a/slow"))
            await asyncio.sleep(0.1)
            await routes.ApplyRoutes(
                gateway_pb2.ApplyRoutesRequest(
                    routes=[
                        route("a", "/a", port, plugins={"key_auth": {}}),
                        route("b", "/b", port),
                    ]
                )
            )
            await assert_eventually(lambda: served("/b/x", 200))
            await assert_eventually(lambda: served("/a/x", 401))  # now with key_auth
            release.set()
            assert await slow == 200  # the request in flight was not cut
            # A stored route named like a file route is the file's, and said so.
            await routes.ApplyRoutes(
                gateway_pb2.ApplyRoutesRequest(routes=[route("file", "/x", port)])
            )
            await assert_eventually(
                lambda: _refused(gw, "file", "the configuration file has a route of this name")
            )
            # One that does not fit the file (a global limit, no store) is left out alone.
            limit = {"rate": 1, "per": 1, "scope": "global", "on_store_error": "allow"}
            await routes.ApplyRoutes(
                gpb_apply(route("global", "/g", port, plugins={"rate_limit": limit}))
            )
            await assert_eventually(lambda: _refused_with(gw, "global", "rate_limit_store"))
            assert await get(http, base + "/b/x") == 200
            await routes.DeleteRoute(gateway_pb2.DeleteRouteRequest(name="b"))
            await assert_eventually(lambda: served("/b/x", 404))
        kept = json.loads((tmp_path / "gw" / "controlplane-routes.json").read_text())
        assert sorted(kept["routes"]) == ["a", "file", "global"]  # as stored; checked on load
    # The control plane is gone: a new gateway serves the routes kept on disk.
    config = config.model_copy(
        update={
            "controlplane": config.controlplane.model_copy(update={"addresses": ("127.0.0.1:1",)})
        }  # type: ignore[union-attr]
    )
    async with Gateway(config) as gw, aiohttp.ClientSession() as http:
        assert await get(http, f"http://{gw.address}/a/x") == 401
        assert await get(http, f"http://{gw.address}/file/x") == 200


def _refused(gw: Gateway, name: str, why: str) -> None:
    assert gw.refused.get(name) == why, gw.refused


def gpb_apply(*items: gateway_pb2.Route) -> gateway_pb2.ApplyRoutesRequest:
    return gateway_pb2.ApplyRoutesRequest(routes=list(items))


def _refused_with(gw: Gateway, name: str, words: str) -> None:
    assert words in gw.refused.get(name, ""), gw.refused
