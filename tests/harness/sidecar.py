"""`eco sidecar` as a real subprocess that tests can kill and restart.

Its local API and admin HTTP listen on ``127.0.0.1:0``; the sidecar reports the
addresses it bound in the line it logs once it runs (`tests.harness.addresses`),
which `SidecarProcess.start` waits for and reads. Proxy listeners and bridges
configured on port 0 are found in its ``/status``
(`SidecarProcess.proxy_addresses`, `SidecarProcess.bridge_addresses`). A
restart binds the local API and admin ports it had again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from ecosystem.v1 import sidecar_pb2, sidecar_pb2_grpc

from tests.harness._process import EcoProcess
from tests.harness.addresses import SIDECAR_RUNNING, read_addresses
from tests.harness.controlplane import ECO

__all__ = ["TIMING", "SidecarProcess"]

# Small values so that a test of sessions and grace periods stays short.
TIMING = """\
sync_interval: 1s
grace: 1s
deregister_critical_after: 2s
"""


class SidecarProcess(EcoProcess):
    """One `eco sidecar` with its own config file and data dir. ``controlplane`` is
    one address or several (every replica); ``body`` is the rest of its YAML;
    ``ca_file``: the CA it trusts when the control plane serves TLS;
    ``token_file``: the file holding its ACL token; ``platform``: its node's
    platform (none when empty)."""

    def __init__(
        self,
        tmp_path: Path,
        name: str,
        body: str,
        controlplane: str | Sequence[str],
        timing: str = TIMING,
        ca_file: Path | None = None,
        token_file: Path | None = None,
        platform: str = "",
    ) -> None:
        self.name = name
        self.platform = platform
        self.token_file = token_file
        self.addresses = [controlplane] if isinstance(controlplane, str) else list(controlplane)
        self.ca_file = ca_file
        self.body = timing + body
        self.data_dir = tmp_path / f"{name}-data"
        self.log_path = tmp_path / f"{name}.log"
        self.config_path = tmp_path / f"{name}.yaml"
        self._local_api = ""
        self._admin = ""
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def local_api(self) -> str:
        assert self._local_api, f"{self.name} has not been started yet: it has no address"
        return self._local_api

    @property
    def admin(self) -> str:
        assert self._admin, f"{self.name} has not been started yet: it has no address"
        return self._admin

    def _write_config(self) -> None:
        self.config_path.write_text(
            f"node: {{id: {self.name}, zone: z1, region: r1"
            + (f", platform: {self.platform}" if self.platform else "")
            + "}\n"
            f"controlplane: {{addresses: {json.dumps(self.addresses)}"
            + (f", ca_file: {json.dumps(str(self.ca_file))}" if self.ca_file else "")
            + (f", token_file: {json.dumps(str(self.token_file))}" if self.token_file else "")
            + "}\n"
            f"data_dir: {self.data_dir}\n"
            f'local_api: "{self._local_api or "127.0.0.1:0"}"\n'
            f'admin: "{self._admin or "127.0.0.1:0"}"\n' + self.body
        )

    async def start(self, timeout: float = 20.0) -> None:
        """Starts the process; returns once it runs and its local API answers."""
        self._write_config()
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                str(ECO),
                "-v",
                "sidecar",
                "--config",
                str(self.config_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while (found := read_addresses(self.log_path, SIDECAR_RUNNING, offset)) is None:
            if self.proc.returncode is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not running in {timeout}s:\n{self.log()}")
            await asyncio.sleep(0.02)
        self._local_api, self._admin = found

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

    async def proxy_addresses(self) -> dict[str, str]:
        """Where each proxy listener listens, by its name: the upstream's service for
        an upstream listener, ``inbound:SERVICE`` for an inbound one."""
        return {p["name"]: p["listen"] for p in (await self.status())["proxy"]}

    async def bridge_addresses(self) -> list[str]:
        """Where each HTTP bus bridge listens, in the configuration's order."""
        return [b["listen"] for b in (await self.status())["bridges"] if "listen" in b]
