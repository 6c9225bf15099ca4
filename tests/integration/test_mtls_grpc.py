"""gRPC between two real sidecars in this process, over mutual TLS: the inbound
listener's TLS front and the upstream's connector, the intention check per
call, and no task left behind once both stop (the autouse leak check)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from ecosystem.v1 import intention_pb2 as ipb
from ecosystem.v1 import intention_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from controlplane import ControlPlane, ControlPlaneConfig
from sidecar.app import Sidecar
from sidecar.config import SidecarConfig
from tests.util import assert_eventually


@pytest.fixture
async def plane() -> AsyncIterator[ControlPlane]:
    config = ControlPlaneConfig(
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        store_url="memory://",
        grace=1.0,
        drain_delay=0,
        tls_ca="auto",
    )
    async with ControlPlane(config) as cp:
        yield cp


@pytest.fixture
async def backend() -> AsyncIterator[int]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await servicer.set("g1", health_pb2.HealthCheckResponse.SERVING)
    yield port
    await server.stop(None)


def config(tmp_path: Path, plane: ControlPlane, node: str, **fields: Any) -> SidecarConfig:
    assert plane.identity is not None
    root = tmp_path / "root.pem"
    root.write_bytes(b"".join(plane.identity.bundle_pems()))
    return SidecarConfig.model_validate(
        {
            "node": {"id": node},
            "controlplane": {"addresses": [plane.address], "ca_file": str(root)},
            "data_dir": str(tmp_path / node),
            "local_api": "127.0.0.1:0",
            "admin": "127.0.0.1:0",
            **fields,
        }
    )


async def check(port: int) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="g1"), timeout=5
            )
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


async def test_grpc_between_sidecars_is_mutual_tls_and_checked_per_call(
    plane: ControlPlane, backend: int, tmp_path: Path
) -> None:
    server_config = config(
        tmp_path,
        plane,
        "srv",
        services=[{"name": "orders", "address": "127.0.0.1", "port": backend}],
        inbound=[{"listen": "127.0.0.1:0", "to": f"127.0.0.1:{backend}", "protocol": "grpc"}],
    )
    client_config = config(
        tmp_path,
        plane,
        "cli",
        services=[{"name": "web", "address": "127.0.0.1", "port": 9}],
        upstreams=[{"service": "orders", "protocol": "grpc", "listen": "127.0.0.1:0"}],
    )
    async with (
        Sidecar(server_config) as server,
        Sidecar(client_config) as client,
        grpc.aio.secure_channel(
            plane.address, grpc.ssl_channel_credentials((tmp_path / "root.pem").read_bytes())
        ) as control,
    ):
        port = int(client.dataplane.listeners[0].address.rsplit(":", 1)[1])

        async def ready() -> None:
            for sidecar in (client, server):
                assert sidecar.identity.certificate(sidecar.config.services[0].name)
                assert sidecar.intentions.current is not None
            assert await check(port) is grpc.StatusCode.OK

        await assert_eventually(ready, timeout=10)
        inbound = server.dataplane.listeners[0]
        assert inbound.mesh is not None
        # Its gRPC server is on loopback behind the TLS front; a call made to it
        # straight, not through the front, is refused.
        front = inbound._front  # type: ignore[attr-defined]
        assert front is not None
        assert await check(front.inner[1]) is grpc.StatusCode.PERMISSION_DENIED
        # The client's channel goes through a connector: mutual TLS.
        (upstream,) = client.dataplane.listeners[0]._upstreams.values()  # type: ignore[attr-defined]
        assert upstream.connector is not None

        stub = intention_pb2_grpc.IntentionServiceStub(control)
        await stub.CreateIntention(
            ipb.CreateIntentionRequest(
                intention=ipb.Intention(
                    source="web", destination="orders", action=ipb.INTENTION_ACTION_DENY
                )
            )
        )

        async def denied() -> None:
            assert await check(port) is grpc.StatusCode.PERMISSION_DENIED

        await assert_eventually(denied, timeout=1.5)
        assert inbound.target.stats.errors["intention_denied"] >= 1
        await stub.DeleteIntention(ipb.DeleteIntentionRequest(source="web", destination="orders"))

        async def allowed() -> None:
            assert await check(port) is grpc.StatusCode.OK

        await assert_eventually(allowed, timeout=1.5)
