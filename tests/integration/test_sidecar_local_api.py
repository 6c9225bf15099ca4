"""Sidecars in-process against an in-process control plane, through the local API."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from ecosystem.v1 import registry_pb2, sidecar_pb2, sidecar_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import controlplane.testing
import sdk
from sidecar.app import Sidecar
from sidecar.cache import CACHE_FILE
from sidecar.config import SidecarConfig
from sidecar.errors import StartupError
from tests.util import assert_eventually


def sidecar_config(tmp_path: Path, node: str, cp: str, **fields: Any) -> SidecarConfig:
    return SidecarConfig.model_validate(
        {
            "node": {"id": node, "zone": "z1", "region": "r1"},
            "controlplane": {"addresses": [cp]},
            "data_dir": str(tmp_path / node),
            "local_api": "127.0.0.1:0",
            "admin": "127.0.0.1:0",
            "sync_interval": "1s",
            "grace": "1s",
            "deregister_critical_after": "2s",
            **fields,
        }
    )


class Backend:
    """A real HTTP backend whose /health can be switched to failing."""

    def __init__(self) -> None:
        self.healthy = True
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _health(self, _request: web.Request) -> web.Response:
        return web.Response(status=200 if self.healthy else 500, text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def service(self, name: str = "web", **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "address": "127.0.0.1",
            "port": self.port,
            "checks": [
                {
                    "http": f"http://127.0.0.1:{self.port}/health",
                    "interval": "100ms",
                    "failures_before_critical": 2,
                    "successes_before_passing": 2,
                }
            ],
            **extra,
        }


@pytest.fixture
async def backends() -> AsyncIterator[list[Backend]]:
    started = [Backend(), Backend()]
    for backend in started:
        await backend.start()
    yield started
    for backend in started:
        await backend.stop()


@contextlib.asynccontextmanager
async def local_stub(sidecar: Sidecar) -> AsyncIterator[sidecar_pb2_grpc.SidecarServiceStub]:
    async with grpc.aio.insecure_channel(sidecar.local_api_address) as channel:
        yield sidecar_pb2_grpc.SidecarServiceStub(channel)


async def instances(client: sdk.AsyncClient, service: str) -> tuple[sdk.Instance, ...]:
    """The service's instances; none (rather than NOT_FOUND) while it has none."""
    try:
        return (await client.get_service(service)).instances
    except sdk.NotFoundError:
        return ()


async def picks(stub: sidecar_pb2_grpc.SidecarServiceStub, n: int = 10) -> set[int]:
    ports = set()
    for _ in range(n):
        response = await stub.PickEndpoint(sidecar_pb2.PickEndpointRequest(service="web"))
        ports.add(response.endpoint.port)
        await stub.ReportResult(sidecar_pb2.ReportResultRequest(pick_id=response.pick_id))
    return ports


async def test_a_failing_backend_turns_critical_and_is_no_longer_picked(
    tmp_path: Path, backends: list[Backend]
) -> None:
    a, b = backends
    async with controlplane.testing.control_plane() as cp:
        config_a = sidecar_config(tmp_path, "node-a", cp.address, services=[a.service()])
        config_b = sidecar_config(
            tmp_path,
            "node-b",
            cp.address,
            services=[b.service()],
            upstreams=[{"service": "web"}],
        )
        async with (
            Sidecar(config_a),
            Sidecar(config_b) as sidecar_b,
            local_stub(sidecar_b) as stub,
            cp.client() as client,
        ):

            async def both_passing() -> None:
                found = await instances(client, "web")
                assert [i.health for i in found] == [sdk.HealthStatus.PASSING] * 2
                assert await picks(stub) == {a.port, b.port}

            await assert_eventually(both_passing, timeout=10)
            a.healthy = False

            async def a_critical() -> None:
                health = {i.port: i.health for i in await instances(client, "web")}
                assert health[a.port] is sdk.HealthStatus.CRITICAL
                assert await picks(stub) == {b.port}

            await assert_eventually(a_critical, timeout=10)
            a.healthy = True
            await assert_eventually(both_passing, timeout=10)


async def test_resolve_watch_and_status(tmp_path: Path, backends: list[Backend]) -> None:
    a, _ = backends
    async with controlplane.testing.control_plane() as cp:
        config = sidecar_config(
            tmp_path, "node-a", cp.address, services=[a.service()], upstreams=[{"service": "web"}]
        )
        async with Sidecar(config) as sidecar, local_stub(sidecar) as stub:
            watch = stub.WatchEndpoints(sidecar_pb2.WatchEndpointsRequest(service="web"))
            seen: list[sidecar_pb2.WatchEndpointsResponse] = []

            async def follow() -> None:
                async for response in watch:
                    seen.append(response)

            follower = asyncio.create_task(follow())

            async def passing() -> None:
                response = await stub.ResolveEndpoints(
                    sidecar_pb2.ResolveEndpointsRequest(service="web")
                )
                assert [e.port for e in response.endpoints] == [a.port]
                assert not response.stale and response.version > 0
                assert seen and seen[-1].endpoints[0].health == registry_pb2.HEALTH_STATUS_PASSING

            await assert_eventually(passing, timeout=10)
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://{sidecar.admin_address}/status") as r:
                    status = await r.json()
                async with http.get(f"http://{sidecar.admin_address}/metrics") as r:
                    metrics = await r.text()
                async with http.get(f"http://{sidecar.admin_address}/healthz") as r:
                    assert r.status == 200
            assert status["connected"] is True and status["stale"] is False
            assert status["controlplane"]["address"] == cp.address
            assert status["controlplane"]["session_id"]
            assert status["instances"][0]["health"] == "PASSING"
            assert status["upstreams"][0]["endpoints"][0]["port"] == a.port
            assert "eco_sidecar_connected 1.0" in metrics
            assert 'eco_sidecar_endpoints{namespace="default",service="web"} 1.0' in metrics

            async with grpc.aio.insecure_channel(sidecar.local_api_address) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                answer = await health.Check(health_pb2.HealthCheckRequest())
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
            await asyncio.gather(follower, return_exceptions=True)


async def test_update_ttl_through_the_local_api(tmp_path: Path) -> None:
    async with controlplane.testing.control_plane() as cp:
        config = sidecar_config(
            tmp_path,
            "node-a",
            cp.address,
            services=[
                {"name": "worker", "address": "127.0.0.1", "port": 9001, "checks": [{"ttl": "5s"}]},
                {"name": "batch", "address": "127.0.0.1", "port": 9002, "id": "batch-1"},
                {"name": "batch", "address": "127.0.0.1", "port": 9003, "id": "batch-2"},
            ],
        )
        async with Sidecar(config) as sidecar, local_stub(sidecar) as stub, cp.client() as client:
            await stub.UpdateTTL(
                sidecar_pb2.UpdateTTLRequest(
                    service="worker", status=registry_pb2.HEALTH_STATUS_PASSING, note="fine"
                )
            )

            async def worker_passing() -> None:
                found = await instances(client, "worker")
                assert len(found) == 1
                worker = found[0]
                assert worker.health is sdk.HealthStatus.PASSING
                assert any(c.output == "fine" for c in worker.checks)

            await assert_eventually(worker_passing, timeout=5)
            for request, code, text in [
                (
                    sidecar_pb2.UpdateTTLRequest(service="nope", status=1),
                    grpc.StatusCode.NOT_FOUND,
                    "'nope' is not a local service",
                ),
                (
                    sidecar_pb2.UpdateTTLRequest(service="batch", status=1),
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "2 local instances",
                ),
                (
                    sidecar_pb2.UpdateTTLRequest(service="batch", instance_id="batch-3", status=1),
                    grpc.StatusCode.NOT_FOUND,
                    "no local instance 'batch-3'",
                ),
                (
                    sidecar_pb2.UpdateTTLRequest(service="batch", instance_id="batch-1", status=1),
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "has 0 TTL checks",
                ),
                (
                    sidecar_pb2.UpdateTTLRequest(service="worker", check="other", status=1),
                    grpc.StatusCode.NOT_FOUND,
                    "no health check",
                ),
            ]:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.UpdateTTL(request)
                assert info.value.code() == code
                assert text in (info.value.details() or ""), info.value.details()


async def test_restarted_control_plane_with_an_empty_store_gets_everything_back(
    tmp_path: Path, backends: list[Backend]
) -> None:
    a, _ = backends
    async with controlplane.testing.control_plane() as cp:
        address = cp.address
        config = sidecar_config(
            tmp_path, "node-a", address, services=[a.service()], upstreams=[{"service": "web"}]
        )
        sidecar = Sidecar(config)
        await sidecar.start()
    try:
        # The control plane is gone: the sidecar keeps serving what it had.
        await assert_eventually(lambda: _assert(not sidecar.connected and sidecar.stale), timeout=5)
        async with local_stub(sidecar) as stub:
            response = await stub.ResolveEndpoints(
                sidecar_pb2.ResolveEndpointsRequest(service="web")
            )
            assert response.stale
        async with controlplane.testing.control_plane(listen=address) as cp, cp.client() as client:

            async def back() -> None:
                found = await instances(client, "web")
                assert len(found) == 1
                assert found[0].health is sdk.HealthStatus.PASSING
                assert sidecar.connected and not sidecar.stale

            await assert_eventually(back, timeout=10)
    finally:
        await sidecar.stop()


def _assert(condition: bool) -> None:
    assert condition


async def test_a_sidecar_started_with_the_control_plane_down_serves_from_disk(
    tmp_path: Path, backends: list[Backend]
) -> None:
    a, _ = backends
    async with controlplane.testing.control_plane() as cp:
        address = cp.address
        config_a = sidecar_config(tmp_path, "node-a", address, services=[a.service()])
        config_b = sidecar_config(tmp_path, "node-b", address, upstreams=[{"service": "web"}])
        async with Sidecar(config_a), Sidecar(config_b) as sidecar_b:

            def cached() -> None:
                state = sidecar_b.cache.get(("default", "web"))
                assert state is not None and state.instances
                assert state.instances[0].health is sdk.HealthStatus.PASSING

            await assert_eventually(cached, timeout=10)
    assert (tmp_path / "node-b" / CACHE_FILE).exists()
    # Control plane and node-a are gone; node-b starts again from its disk cache.
    async with Sidecar(config_b) as sidecar_b, local_stub(sidecar_b) as stub:
        response = await stub.ResolveEndpoints(sidecar_pb2.ResolveEndpointsRequest(service="web"))
        assert [e.port for e in response.endpoints] == [a.port]
        assert response.stale
        picked = await stub.PickEndpoint(sidecar_pb2.PickEndpointRequest(service="web"))
        assert picked.endpoint.port == a.port
        status = sidecar_b.status()
        assert status["stale"] is True and status["connected"] is False
        assert status["message"].startswith("serving from disk cache")
        assert status["cache"]["source"] == "disk"


async def test_two_sidecars_cannot_share_a_data_dir(tmp_path: Path) -> None:
    config = sidecar_config(tmp_path, "node-a", "127.0.0.1:1")
    async with Sidecar(config):
        with pytest.raises(StartupError, match="in use by another sidecar"):
            async with Sidecar(config):
                pass


async def test_a_port_in_use_fails_the_start_and_leaves_nothing_running(tmp_path: Path) -> None:
    first = sidecar_config(tmp_path, "node-a", "127.0.0.1:1")
    async with Sidecar(first) as running:
        second = sidecar_config(
            tmp_path, "node-b", "127.0.0.1:1", local_api=running.local_api_address
        )
        sidecar = Sidecar(second)
        with pytest.raises(StartupError, match="local_api: cannot listen on"):
            await sidecar.start()
        assert sidecar.session is None
        # The data dir lock was released: the same config can start once the port is free.
    async with Sidecar(second.model_copy(update={"local_api": "127.0.0.1:0"})):
        pass
