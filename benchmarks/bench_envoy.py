"""Envoy mode: RSS with 10,000 endpoints, and one registry change seen in traffic.

``python -m benchmarks.bench_envoy [--quick]`` (or ``python -m benchmarks --only
envoy``) prints one JSON object per line; ``run(quick)`` returns the same
objects. Everything is a real process on free 127.0.0.1 ports in a temporary
directory, stopped at the end (also on an error or Ctrl-C): nginx (one
worker), ``eco controlplane`` (SQLite store) and two client sidecars side
by side, one with the Python data plane and one with ``dataplane: envoy``
(Envoy from scripts/install-envoy.sh). Each has an http upstream listener for
``bench-many`` and one for ``bench-change``.

- ``envoy_rss``: VmRSS of each data plane before and after 10,000 instances of
  ``bench-many`` are registered (RegisterInstance, 64 calls in flight) and
  have reached it (the sidecar resolves 10,000 endpoints; Envoy's
  ``membership_total`` for the cluster is 10,000). ``system: envoy`` counts
  Envoy and its sidecar, ``system: ecosystem`` the Python sidecar;
  ``ratio_to_ecosystem`` = Envoy mode's total ÷ the Python sidecar's.
- ``envoy_change``: ``bench-change`` has one instance (nginx). Each change is
  one registry write: deregister it, or register it again. A client sends
  back-to-back ``GET /`` through the listener and times from just before the
  write to the first answer that shows it (a 200 after registering; anything
  else after deregistering). p50/p99/max over the changes (quick 10, full 40),
  for both data planes; Envoy mode's p99 against the 1 s budget (issue 18 §5).

See docs/benchmarks.md, "Data plane".
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from ecosystem.v1 import registry_pb2 as pb
from ecosystem.v1 import registry_pb2_grpc as pb_grpc
from ecosystem.v1 import sidecar_pb2, sidecar_pb2_grpc

from benchmarks._cli import streaming_main
from benchmarks._proxy_peers import NginxServer, _envoy, _envoy_pid, tool
from benchmarks._report import percentile
from benchmarks._servers import ControlPlaneServer, ServerError, free_port, rss_bytes
from benchmarks.bench_sidecar import SidecarServer

__all__ = ["run"]

ENDPOINTS = 10_000
CHANGE_BUDGET_S = 1.0  # p99, registry write to the change seen in traffic through Envoy
_IN_FLIGHT = 64
_READY_TIMEOUT = 120.0
_CHANGE_TIMEOUT = 10.0
MANY, CHANGE = "bench-many", "bench-change"


def _progress(text: str) -> None:
    print(f"[envoy] {text}", file=sys.stderr, flush=True)


class _Client:
    """A client sidecar with an http upstream listener for MANY and one for CHANGE."""

    def __init__(self, workdir: Path, dataplane: str, controlplane: str) -> None:
        self.dataplane = dataplane
        self.ports = {MANY: free_port(), CHANGE: free_port()}
        head = ""
        if dataplane == "envoy":
            head = f'dataplane: envoy\nenvoy: {{binary: "{_envoy()}"}}\n'
        upstreams = "".join(
            f'  - {{service: {name}, protocol: http, listen: "127.0.0.1:{port}"}}\n'
            for name, port in self.ports.items()
        )
        self.sidecar = SidecarServer(
            workdir, f"bench-{dataplane}", controlplane, head + "upstreams:\n" + upstreams
        )

    def pids(self) -> dict[str, int]:
        if self.dataplane == "envoy":
            return {"sidecar": self.sidecar.pid, "envoy": _envoy_pid(self.sidecar.workdir / "data")}
        return {"sidecar": self.sidecar.pid}

    def resolved(self, service: str) -> int:
        with grpc.insecure_channel(self.sidecar.local_api) as channel:
            stub = sidecar_pb2_grpc.SidecarServiceStub(channel)  # type: ignore[no-untyped-call]
            try:
                answer = stub.ResolveEndpoints(
                    sidecar_pb2.ResolveEndpointsRequest(service=service), timeout=10
                )
            except grpc.RpcError:
                return -1
        return len(answer.endpoints)

    def envoy_members(self, service: str) -> int:
        """``membership_total`` of the Envoy cluster named after the service (-1: unknown)."""
        admin_file = self.sidecar.workdir / "data" / "envoy" / "admin-address"
        try:
            admin = admin_file.read_text().strip()
            url = f"http://{admin}/stats?filter=membership_total"
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return -1
        for line in text.splitlines():
            name, _, value = line.partition(":")
            if service in name and name.endswith(".membership_total"):
                return int(value.strip())
        return -1


def _instance(index: int) -> pb.Instance:
    return pb.Instance(
        id=f"m{index}",
        service=MANY,
        address=f"10.{index // 250 % 250}.{index % 250}.1",
        port=8080,
        health=pb.HEALTH_STATUS_PASSING,
        liveness=pb.LIVENESS_PERSISTENT,
    )


async def _register_many(target: str, count: int) -> float:
    """``count`` instances of MANY, ``_IN_FLIGHT`` calls at a time; seconds taken."""
    started = time.perf_counter()
    async with grpc.aio.insecure_channel(target) as channel:
        registry = pb_grpc.RegistryServiceStub(channel)  # type: ignore[no-untyped-call]
        slots = asyncio.Semaphore(_IN_FLIGHT)

        async def one(index: int) -> None:
            async with slots:
                await registry.RegisterInstance(
                    pb.RegisterInstanceRequest(instance=_instance(index)), timeout=30
                )

        async with asyncio.TaskGroup() as group:
            for index in range(count):
                group.create_task(one(index))
    return time.perf_counter() - started


def _rss_mb(pids: dict[str, int]) -> dict[str, float]:
    return {role: rss_bytes(pid) / 1e6 for role, pid in pids.items()}


def _rss(clients: list[_Client], target: str) -> list[dict[str, Any]]:
    before = {c.dataplane: _rss_mb(c.pids()) for c in clients}
    _progress(f"registering {ENDPOINTS:,} instances of {MANY}")
    seconds = asyncio.run(_register_many(target, ENDPOINTS))
    deadline = time.monotonic() + _READY_TIMEOUT
    for client in clients:
        while True:
            seen = client.resolved(MANY)
            if client.dataplane == "envoy" and seen == ENDPOINTS:
                seen = client.envoy_members(MANY)
            if seen == ENDPOINTS:
                break
            if time.monotonic() > deadline:
                raise ServerError(f"the {client.dataplane} data plane has {seen} of {ENDPOINTS}")
            client.sidecar.check_alive()
            time.sleep(0.5)
    time.sleep(2.0)  # let the last update settle before reading RSS
    rows: dict[str, dict[str, Any]] = {}
    for client in clients:
        after = _rss_mb(client.pids())
        system = "envoy" if client.dataplane == "envoy" else "ecosystem"
        rows[system] = {
            "bench": "envoy_rss",
            "system": system,
            "endpoints": ENDPOINTS,
            "rss_mb": sum(after.values()),
            "processes_mb": after,
            "before_mb": before[client.dataplane],
            "added_mb": sum(after.values()) - sum(before[client.dataplane].values()),
            "register_seconds": seconds,
        }
    if "envoy" in rows and "ecosystem" in rows:
        rows["envoy"]["ratio_to_ecosystem"] = rows["envoy"]["rss_mb"] / rows["ecosystem"]["rss_mb"]
    return list(rows.values())


def _served(conn: http.client.HTTPConnection | None, port: int) -> tuple[bool, Any]:
    """One ``GET /``: (200 from nginx, the connection to reuse or None)."""
    try:
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/")
        response = conn.getresponse()
        ok = response.status == 200 and response.read() == b"hello\n"
        if not ok:
            response.read()
        if response.will_close:
            conn.close()
            conn = None
        return ok, conn
    except (OSError, http.client.HTTPException):
        if conn is not None:
            conn.close()
        time.sleep(0.001)  # a refused or reset connection: no busy loop
        return False, None


def _changes(client: _Client, registry: Any, backend: int, changes: int) -> list[float]:
    """Seconds from each registry write to the first request that shows it."""
    port = client.ports[CHANGE]
    instance = pb.Instance(
        id="c1",
        service=CHANGE,
        address="127.0.0.1",
        port=backend,
        health=pb.HEALTH_STATUS_PASSING,
        liveness=pb.LIVENESS_PERSISTENT,
    )
    conn: Any = None
    taken: list[float] = []
    for change in range(changes + 1):  # the first registration is a warm-up
        register = change % 2 == 0
        started = time.perf_counter()
        if register:
            registry.RegisterInstance(pb.RegisterInstanceRequest(instance=instance), timeout=10)
        else:
            registry.DeregisterInstance(
                pb.DeregisterInstanceRequest(service=CHANGE, id="c1"), timeout=10
            )
        while True:
            ok, conn = _served(conn, port)
            if ok == register:
                break
            if time.perf_counter() - started > _CHANGE_TIMEOUT:
                raise ServerError(f"{client.dataplane}: change {change} not seen in 10 s")
        if change:
            taken.append(time.perf_counter() - started)
        time.sleep(0.1)
    if conn is not None:
        conn.close()
    return taken


def _change_rows(clients: list[_Client], target: str, backend: int, n: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with grpc.insecure_channel(target) as channel:
        registry = pb_grpc.RegistryServiceStub(channel)  # type: ignore[no-untyped-call]
        for client in clients:
            system = "envoy" if client.dataplane == "envoy" else "ecosystem"
            _progress(f"{n} changes through {system}")
            try:
                taken = sorted(1000 * s for s in _changes(client, registry, backend, n))
            except ServerError as exc:
                rows.append({"bench": "envoy_change", "system": system, "error": str(exc)})
                continue
            row: dict[str, Any] = {
                "bench": "envoy_change",
                "system": system,
                "changes": len(taken),
                "p50_ms": percentile(taken, 50),
                "p99_ms": percentile(taken, 99),
                "max_ms": taken[-1],
            }
            if system == "envoy":
                within = row["p99_ms"] <= CHANGE_BUDGET_S * 1000
                row.update(budget=CHANGE_BUDGET_S * 1000, budget_op="<=", within_budget=within)
            rows.append(row)
    return rows


def _measure(workdir: Path, quick: bool, emit: Callable[[dict[str, Any]], None]) -> None:
    with contextlib.ExitStack() as stack:
        nginx = NginxServer(workdir / "nginx", 2**20)
        stack.enter_context(nginx)
        # SQLite (the default store): the memory store's writes slow down with size.
        controlplane = ControlPlaneServer(workdir / "controlplane")
        stack.enter_context(controlplane)
        clients: list[_Client] = []
        for dataplane in ("python", "envoy"):
            _progress(f"client sidecar, dataplane: {dataplane}")
            client = _Client(workdir / dataplane, dataplane, controlplane.target)
            try:
                stack.enter_context(client.sidecar)
                client.pids()
            except ServerError as exc:
                system = "envoy" if dataplane == "envoy" else "ecosystem"
                for bench in ("envoy_rss", "envoy_change"):
                    emit({"bench": bench, "system": system, "error": str(exc)})
                continue
            clients.append(client)
        for row in _change_rows(clients, controlplane.target, nginx.port, 10 if quick else 40):
            emit(row)
        for row in _rss(clients, controlplane.target):
            emit(row)


def run(quick: bool, emit: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Runs both measurements; every process started is stopped on the way out."""
    tool("nginx")
    rows: list[dict[str, Any]] = []

    def collect(row: dict[str, Any]) -> None:
        rows.append(row)
        if emit is not None:
            emit(row)

    collect({"bench": "envoy_setup", "quick": quick, "cores": os.cpu_count()})
    with tempfile.TemporaryDirectory(prefix="eco-bench-envoy-") as workdir:
        _measure(Path(workdir), quick, collect)
    return rows


def main(argv: list[str] | None = None) -> int:
    return streaming_main(
        argv,
        name="envoy",
        description="Envoy mode beside the Python data plane: RSS with 10,000 endpoints, "
        "and registry write to change seen in traffic; one JSON object per line.",
        quick_help="10 changes instead of 40",
        run=run,
    )


if __name__ == "__main__":
    sys.exit(main())
