"""`eco gateway --config FILE` as a real subprocess that tests can kill and restart.

The test gives the body of the config file (routes, plugins, ``controlplane``,
…); the harness adds ``listen`` and ``admin`` on ``127.0.0.1:0`` and a
``data_dir`` of the gateway's own (two replicas with the same body must not
share one: a data dir is locked by the process using it). The gateway logs
``gateway on http://ADDRESS: N route(s), admin http://ADDRESS`` once it
serves; `GatewayProcess.start` reads the addresses from that line and returns
once the admin's ``/healthz`` answers. A restart binds the ports it had again,
so that clients find it where it was, and keeps its data dir (the endpoint
cache on disk).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.harness._process import EcoProcess
from tests.harness.addresses import read_addresses
from tests.harness.controlplane import ECO

__all__ = ["GATEWAY_SERVING", "GatewayProcess"]

#: (listener address, admin address): the line `sidecar.gateway.app.Gateway.start` logs.
GATEWAY_SERVING = re.compile(rb"gateway on https?://(\S+): \d+ route\(s\), admin http://(\S+)\n")


class GatewayProcess(EcoProcess):
    """One `eco gateway` with its own config file, log and data dir."""

    def __init__(self, tmp_path: Path, name: str, body: str) -> None:
        assert ECO.exists(), f"{ECO} is missing: run 'make install'"
        self.name = name
        self.body = body
        self.data_dir = tmp_path / f"{name}-data"
        self.log_path = tmp_path / f"{name}.log"
        self.config_path = tmp_path / f"{name}.yaml"
        self._address = ""
        self._admin = ""
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> str:
        """Where the listener is, ``127.0.0.1:PORT``."""
        assert self._address, f"{self.name} has not been started yet: it has no address"
        return self._address

    @property
    def admin(self) -> str:
        """Where the admin port is, ``127.0.0.1:PORT``."""
        assert self._admin, f"{self.name} has not been started yet: it has no address"
        return self._admin

    def url(self, path: str = "/") -> str:
        return f"http://{self.address}{path}"

    def _write_config(self) -> None:
        self.config_path.write_text(
            f'listen: "{self._address or "127.0.0.1:0"}"\n'
            f'admin: "{self._admin or "127.0.0.1:0"}"\n'
            f"data_dir: {json.dumps(str(self.data_dir))}\n" + self.body
        )

    async def start(self, timeout: float = 20.0) -> None:
        """Starts the process; returns once it serves and its admin's /healthz answers."""
        assert self.proc is None or self.proc.returncode is not None, "already running"
        self._write_config()
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                str(ECO),
                "gateway",
                "--config",
                str(self.config_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while (found := read_addresses(self.log_path, GATEWAY_SERVING, offset)) is None:
            self._check_alive(deadline, timeout)
            await asyncio.sleep(0.02)
        self._address, self._admin = found
        async with aiohttp.ClientSession() as http:
            while True:
                with contextlib.suppress(aiohttp.ClientError):  # not listening yet
                    async with http.get(f"http://{self._admin}/healthz") as r:
                        if r.status == 200:
                            return
                self._check_alive(deadline, timeout)
                await asyncio.sleep(0.02)

    def _check_alive(self, deadline: float, timeout: float) -> None:
        assert self.proc is not None
        if self.proc.returncode is not None:
            raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.log()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{self.name} not serving in {timeout}s:\n{self.log()}")

    async def status(self) -> dict[str, Any]:
        """The admin's ``/status`` document."""
        async with aiohttp.ClientSession() as http, http.get(f"http://{self.admin}/status") as r:
            assert r.status == 200, await r.text()
            return dict(await r.json())

    async def endpoints(self, route: str) -> list[list[str]]:
        """The endpoints each backend of ``route`` forwards to now, from ``/status``."""
        (found,) = [r for r in (await self.status())["routes"] if r["name"] == route]
        return [list(b["endpoints"]) for b in found["backends"]]
