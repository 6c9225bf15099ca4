"""``dataplane: envoy`` end to end: a control plane, `eco sidecar` processes
whose proxy listeners Envoy serves, real backends.

An application dials the sidecar's upstream listener, which is Envoy's; the
control plane gave Envoy that listener (from the listeners the sidecar wrote
into Envoy's bootstrap) and the service's endpoints. Envoy comes from
scripts/install-envoy.sh (`make test` runs it).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness.controlplane import ECO, ControlPlaneProcess
from tests.harness.ports import free_port
from tests.harness.sidecar import SidecarProcess
from tests.integration.proxy.conftest import Backend
from tests.util import assert_eventually

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ENVOY = ROOT / ".tools" / "envoy-venv" / "bin" / "envoy"


def envoy_binary() -> Path:
    assert ENVOY.exists(), f"{ENVOY} is missing: run scripts/install-envoy.sh (make test runs it)"
    return ENVOY


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    plane = ControlPlaneProcess("memory://", tmp_path / "controlplane.log")
    plane.start()
    yield plane
    plane.stop()


def envoy_pids(sidecar: SidecarProcess) -> list[int]:
    """The Envoy processes running this sidecar's bootstrap."""
    bootstrap = str(sidecar.data_dir / "envoy" / "bootstrap.json")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if bootstrap.encode() in argv:
            found.append(int(entry.name))
    return found


def eco(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ECO), *args], capture_output=True, text=True, timeout=30, check=False
    )


async def get(port: int, path: str = "/") -> tuple[int, dict[str, str], str]:
    timeout = aiohttp.ClientTimeout(total=5)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, dict(response.headers), await response.text()


class Mesh:
    def __init__(self, client: SidecarProcess, servers: list[Backend], http: int, grpc_port: int):
        self.client = client
        self.servers = servers
        self.http = http
        self.grpc = grpc_port


@pytest.fixture
async def mesh(tmp_path: Path, plane: ControlPlaneProcess) -> AsyncIterator[Mesh]:
    backends = [
        Backend("http_backend.py", "--name", "h1").start(),
        Backend("http_backend.py", "--name", "h2").start(),
        Backend("grpc_backend.py", "--name", "g1").start(),
    ]
    owner = SidecarProcess(
        tmp_path,
        "owner",
        "services:\n"
        + "".join(
            f"  - {{name: {svc}, id: {name}, address: 127.0.0.1, port: {b.port}}}\n"
            for svc, name, b in (
                ("orders", "h1", backends[0]),
                ("orders", "h2", backends[1]),
                ("greeter", "g1", backends[2]),
            )
        ),
        plane.address,
    )
    http_port, grpc_port = free_port(), free_port()
    client = SidecarProcess(
        tmp_path,
        "client",
        "dataplane: envoy\n"
        f"envoy: {{binary: {json.dumps(str(envoy_binary()))}}}\n"
        "upstreams:\n"
        f'  - {{service: orders, protocol: http, listen: "127.0.0.1:{http_port}",'
        " outlier: {consecutive_failures: 0}}\n"
        f'  - {{service: greeter, protocol: grpc, listen: "127.0.0.1:{grpc_port}"}}\n',
        plane.address,
    )
    await owner.start()
    await client.start()
    try:
        yield Mesh(client, backends, http_port, grpc_port)
    finally:
        await client.stop()
        await owner.stop()
        for backend in backends:
            backend.stop()


async def wait_serving(port: int, names: set[str]) -> None:
    async def both() -> None:
        seen = set()
        for _ in range(8):
            status, headers, _ = await get(port)
            assert status == 200
            seen.add(headers["x-backend"])
        assert seen == names

    await assert_eventually(both, timeout=15)


async def test_http_and_grpc_go_through_envoy_one_hop(mesh: Mesh) -> None:
    await wait_serving(mesh.http, {"h1", "h2"})
    # The HTTP listener is Envoy's, not the sidecar's.
    _status, headers, _body = await get(mesh.http)
    assert headers.get("server") == "envoy" or "x-envoy-upstream-service-time" in headers
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.grpc}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10, wait_for_ready=True)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert len(envoy_pids(mesh.client)) == 1
