"""`eco controlplane` and `eco sidecar` as real subprocesses that tests can kill and restart."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from ecosystem.v1 import sidecar_pb2, sidecar_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.util import free_port

ECO = Path(sys.executable).with_name("eco")


class ControlPlaneProcess:
    """One `eco controlplane` on fixed ports, so a restart comes back at the
    same address with the same store."""

    def __init__(
        self,
        store_url: str,
        log_path: Path,
        extra_args: Sequence[str] = (),
        cwd: Path | None = None,
    ) -> None:
        assert ECO.exists(), f"{ECO} is missing: run 'make install'"
        self.store_url = store_url
        self.extra_args = tuple(extra_args)
        self.cwd = cwd
        self.port = free_port()
        self.admin_port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                str(ECO),
                "controlplane",
                "--listen",
                self.address,
                "--admin-listen",
                f"127.0.0.1:{self.admin_port}",
                "--store",
                self.store_url,
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
        )
        log.close()
        self.wait_serving(timeout)

    def wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"control plane exited with {self.proc.returncode}:\n{self.log()}"
                    )
                try:
                    resp = stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"control plane not serving after {timeout}s:\n{self.log()}"
                    )
                time.sleep(0.05)

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def sqlite_plane(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    plane = ControlPlaneProcess(f"sqlite://{tmp_path / 'cp.db'}", tmp_path / "controlplane.log")
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


# Small values so the whole file stays well under a minute and a half.
TIMING = """\
sync_interval: 1s
grace: 1s
deregister_critical_after: 2s
"""


class SidecarProcess:
    """One `eco sidecar` on fixed ports, with its own config file and data dir.
    ``controlplane`` is one address or several (every replica)."""

    def __init__(
        self,
        tmp_path: Path,
        name: str,
        body: str,
        controlplane: str | Sequence[str],
        timing: str = TIMING,
    ) -> None:
        addresses = [controlplane] if isinstance(controlplane, str) else list(controlplane)
        self.name = name
        self.local_api = f"127.0.0.1:{free_port()}"
        self.admin = f"127.0.0.1:{free_port()}"
        self.data_dir = tmp_path / f"{name}-data"
        self.log_path = tmp_path / f"{name}.log"
        self.config_path = tmp_path / f"{name}.yaml"
        self.config_path.write_text(
            f"node: {{id: {name}, zone: z1, region: r1}}\n"
            f"controlplane: {{addresses: {json.dumps(addresses)}}}\n"
            f"data_dir: {self.data_dir}\n"
            f'local_api: "{self.local_api}"\n'
            f'admin: "{self.admin}"\n' + timing + body
        )
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 20.0) -> None:
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                str(ECO),
                "-v",
                "sidecar",
                "--config",
                str(self.config_path),
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        async with grpc.aio.insecure_channel(self.local_api) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.proc.returncode is not None:
                    raise AssertionError(
                        f"{self.name} exited {self.proc.returncode}:\n{self.log()}"
                    )
                try:
                    answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.name} not serving in {timeout}s:\n{self.log()}")
                await asyncio.sleep(0.05)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), 15)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    async def pick_ports(self, service: str = "web", n: int = 8) -> set[int]:
        ports = set()
        async with grpc.aio.insecure_channel(self.local_api) as channel:
            stub = sidecar_pb2_grpc.SidecarServiceStub(channel)
            for _ in range(n):
                picked = await stub.PickEndpoint(
                    sidecar_pb2.PickEndpointRequest(service=service), timeout=2
                )
                ports.add(picked.endpoint.port)
                await stub.ReportResult(
                    sidecar_pb2.ReportResultRequest(pick_id=picked.pick_id), timeout=2
                )
        return ports

    async def resolve(self, service: str = "web") -> sidecar_pb2.ResolveEndpointsResponse:
        async with grpc.aio.insecure_channel(self.local_api) as channel:
            stub = sidecar_pb2_grpc.SidecarServiceStub(channel)
            return await stub.ResolveEndpoints(
                sidecar_pb2.ResolveEndpointsRequest(service=service), timeout=2
            )

    async def status(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.get(f"http://{self.admin}/status") as r:
            return dict(await r.json())
