"""`eco sidecar` with real processes: a control plane, two sidecars, and real
HTTP, TCP and gRPC backends on 127.0.0.1.

The backends run in the test's event loop, so nothing here may block it:
process starts and waits go through threads or asyncio subprocesses.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.harness.controlplane import ECO, ControlPlaneProcess
from tests.harness.sidecar import SidecarProcess
from tests.util import assert_eventually

pytestmark = pytest.mark.e2e


async def _ok(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


class HttpBackend:
    """A real aiohttp server on a port of its choosing, that can be killed and brought
    back on that port."""

    def __init__(self) -> None:
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", _ok)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True).start()
        self.port = runner.addresses[0][1]
        self._runner = runner

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


@pytest.fixture
async def http_backends() -> AsyncIterator[list[HttpBackend]]:
    backends = [HttpBackend(), HttpBackend()]
    for backend in backends:
        await backend.start()
    yield backends
    for backend in backends:
        await backend.stop()


@pytest.fixture
async def grpc_backend() -> AsyncIterator[int]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await servicer.set("payments", health_pb2.HealthCheckResponse.SERVING)
    yield port
    await server.stop(0)


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    cp = ControlPlaneProcess(f"sqlite://{tmp_path / 'cp.db'}", tmp_path / "controlplane.log")
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture
async def sidecars() -> AsyncIterator[list[SidecarProcess]]:
    started: list[SidecarProcess] = []
    yield started
    for sidecar in started:
        await sidecar.stop()


async def eco_json(plane: ControlPlaneProcess, *args: str) -> Any:
    """Runs an `eco` data command and returns its JSON (None for NOT_FOUND)."""
    proc = await asyncio.create_subprocess_exec(
        str(ECO),
        "--server",
        plane.address,
        *args,
        "-o",
        "json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        assert b"not found" in err, err.decode()
        return None
    return json.loads(out)


async def health_by_port(plane: ControlPlaneProcess, service: str = "web") -> dict[int, str]:
    detail = await eco_json(plane, "service", "get", service)
    return {} if detail is None else {i["port"]: i["health"] for i in detail["instances"]}


def web_service(port: int, check: str) -> str:
    return (
        f"  - name: web\n"
        f"    address: 127.0.0.1\n"
        f"    port: {port}\n"
        f"    checks:\n"
        f"      - {{{check}, interval: 200ms,\n"
        f"         failures_before_critical: 2, successes_before_passing: 2}}\n"
    )


async def test_health_failover_control_plane_loss_and_kill_9(
    tmp_path: Path,
    plane: ControlPlaneProcess,
    sidecars: list[SidecarProcess],
    http_backends: list[HttpBackend],
    grpc_backend: int,
) -> None:
    a, b = http_backends
    await asyncio.to_thread(plane.start)
    side_a = SidecarProcess(
        tmp_path,
        "node-a",
        "services:\n"
        + web_service(a.port, f'http: "http://127.0.0.1:{a.port}/health"')
        + "upstreams: [{service: web}]\n",
        plane.address,
    )
    side_b = SidecarProcess(
        tmp_path,
        "node-b",
        "services:\n" + web_service(b.port, f'tcp: "127.0.0.1:{b.port}"') + f"  - name: payments\n"
        f"    address: 127.0.0.1\n"
        f"    port: {grpc_backend}\n"
        f'    checks: [{{grpc: "127.0.0.1:{grpc_backend}", service: payments, interval: 200ms}}]\n'
        "upstreams: [{service: web}]\n",
        plane.address,
    )
    sidecars.extend([side_a, side_b])
    await asyncio.gather(side_a.start(), side_b.start())

    async def all_passing() -> None:
        assert await health_by_port(plane) == {a.port: "PASSING", b.port: "PASSING"}
        assert await health_by_port(plane, "payments") == {grpc_backend: "PASSING"}
        assert await side_b.pick_ports() == {a.port, b.port}

    await assert_eventually(all_passing, timeout=15, interval=0.2)

    # A backend dies: CRITICAL after two failed probes, and the other sidecar stops picking it.
    await a.stop()

    async def a_critical() -> None:
        assert (await health_by_port(plane))[a.port] == "CRITICAL"
        assert await side_b.pick_ports() == {b.port}

    await assert_eventually(a_critical, timeout=10, interval=0.2)
    await a.start()
    await assert_eventually(all_passing, timeout=10, interval=0.2)

    # The control plane dies and loses its database: the sidecars re-register.
    await asyncio.to_thread(plane.kill)
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"cp.db{suffix}").unlink(missing_ok=True)
    await asyncio.to_thread(plane.start)
    # Within one sync interval (1s) plus the reconnect backoff (at most 5s,
    # jittered); failing only after five times that.
    await assert_eventually(all_passing, timeout=30, interval=0.2)

    # kill -9 a sidecar: grace (1s) → CRITICAL → removed after 2s more.
    side_a.kill(signal.SIGKILL)
    await side_a.wait()

    async def a_critical_after_grace() -> None:
        assert (await health_by_port(plane)).get(a.port) == "CRITICAL"

    await assert_eventually(a_critical_after_grace, timeout=10, interval=0.1)
    assert await side_b.pick_ports() == {b.port}

    async def a_removed() -> None:
        assert await health_by_port(plane) == {b.port: "PASSING"}

    await assert_eventually(a_removed, timeout=10, interval=0.2)
    nodes = await eco_json(plane, "node", "list")
    assert nodes is not None


async def test_a_sidecar_started_with_the_control_plane_down_serves_from_disk(
    tmp_path: Path,
    plane: ControlPlaneProcess,
    sidecars: list[SidecarProcess],
    http_backends: list[HttpBackend],
) -> None:
    a, _ = http_backends
    await asyncio.to_thread(plane.start)
    side_a = SidecarProcess(
        tmp_path,
        "node-a",
        "services:\n" + web_service(a.port, f'http: "http://127.0.0.1:{a.port}/health"'),
        plane.address,
    )
    side_b = SidecarProcess(tmp_path, "node-b", "upstreams: [{service: web}]\n", plane.address)
    sidecars.extend([side_a, side_b])
    await asyncio.gather(side_a.start(), side_b.start())

    async def cached() -> None:
        response = await side_b.resolve()
        assert [e.port for e in response.endpoints] == [a.port]
        assert not response.stale

    await assert_eventually(cached, timeout=15, interval=0.2)
    side_b.kill(signal.SIGTERM)
    assert await side_b.wait() == 0
    await asyncio.to_thread(plane.stop)

    # No control plane now: node-b comes back and serves what it had on disk.
    await side_b.start()
    response = await side_b.resolve()
    assert [e.port for e in response.endpoints] == [a.port]
    assert response.stale
    assert await side_b.pick_ports(n=2) == {a.port}
    status = await side_b.status()
    assert status["stale"] is True and status["connected"] is False
    assert status["message"] == "serving from disk cache: the control plane is unreachable"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("services: [\n  {name: web\n", ":6: not valid YAML"),
        (
            "services:\n  - {name: web, address: 127.0.0.1, port: 80,\n"
            '     checks: [{http: "htp:/nowhere"}]}\n',
            ":6: services[0].checks[0].http: 'htp:/nowhere'",
        ),
        (
            "services:\n  - name: web\n    address: 127.0.0.1\n    port: 80\n"
            '    checks:\n      - {tcp: "127.0.0.1:80", interval: -5s}\n',
            ":9: services[0].checks[0].interval: must be greater than 0",
        ),
    ],
)
async def test_a_bad_config_exits_2_with_one_clear_line_and_starts_nothing(
    tmp_path: Path, body: str, expected: str
) -> None:
    data_dir = tmp_path / "data"
    path = tmp_path / "sidecar.yaml"
    path.write_text(
        f'local_api: "127.0.0.1:0"\nadmin: "127.0.0.1:0"\ndata_dir: {data_dir}\n' + body
    )
    proc = await asyncio.create_subprocess_exec(
        str(ECO),
        "sidecar",
        "--config",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await asyncio.wait_for(proc.communicate(), 20)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2, err.decode()
    assert len(lines) == 1, lines
    # The first three lines of the file are the listen addresses and data dir.
    assert lines[0].startswith(f"eco: {path}{expected}"), lines[0]
    assert not data_dir.exists(), "nothing was started"
