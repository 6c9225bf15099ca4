"""Sidecar: health propagation latency, and memory with 10,000 cached endpoints.

``python -m benchmarks.bench_sidecar [--quick]`` prints one JSON object per
line; ``run(quick)`` returns the same objects. Everything runs as real
processes on free 127.0.0.1 ports in a temporary directory: one
``eco controlplane`` (SQLite store), ``eco sidecar`` processes with YAML
configs, and an HTTP backend process (this module with ``--backend``).

``sidecar_propagation``: sidecar A registers two ``web`` instances, each with
an HTTP check (interval 200ms, timeout 100ms, failures_before_critical 1) on
its own port of the backend; one port's ``/health`` can be flipped to 503
through ``/fail`` and ``/ok`` on that port. Sidecar B has ``web`` as an
upstream. Each trial waits a random fraction of the check interval, flips
the backend to failing at t0, and polls B's ``ResolveEndpoints(web)`` (the
routable endpoints: PASSING and WARNING) every 5 ms until the failing
instance is gone at t1; then restores the backend and waits until B routes
to it again (``restore_*``: the way back, from flip to routable).

``sidecar_rss``: N instances of ``big`` registered through the SDK
(persistent), a sidecar with ``upstreams: [{service: big}]``, VmRSS read from
/proc once its local API returns all N; beside the VmRSS of a sidecar with no
services and no upstreams. In MB of 10⁶ bytes, like every benchmark here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import grpc.aio
from ecosystem.v1 import registry_pb2, sidecar_pb2, sidecar_pb2_grpc

from benchmarks._servers import (
    ControlPlaneServer,
    Server,
    ServerError,
    free_port,
    peak_rss_bytes,
    rss_bytes,
)
from sdk import AsyncClient

__all__ = ["run"]

CHECK_INTERVAL_MS = 200
CHECK_TIMEOUT_MS = 100
FAILURES_BEFORE_CRITICAL = 1
POLL_SECONDS = 0.005
RSS_BUDGET_MB = 60
PEER = "published: Istio sidecar ~40-60 MB, Linkerd proxy ~18-26 MB"
_TRIAL_TIMEOUT = 10.0
_ROOT = Path(__file__).resolve().parent.parent
# The backend runs in its temp dir, so it finds this module through argv[1].
_RUN_BACKEND = (
    "import sys\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "from benchmarks.bench_sidecar import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)
_ALL_HEALTH = [
    registry_pb2.HEALTH_STATUS_PASSING,
    registry_pb2.HEALTH_STATUS_WARNING,
    registry_pb2.HEALTH_STATUS_CRITICAL,
    registry_pb2.HEALTH_STATUS_UNKNOWN,
]


def _progress(text: str) -> None:
    print(f"[sidecar] {text}", file=sys.stderr, flush=True)


def _percentile(ordered: list[float], pct: float) -> float:
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(min(rank, len(ordered))) - 1]


def _eco() -> str:
    eco = Path(sys.executable).with_name("eco")
    if not eco.exists():
        raise ServerError(f"{eco} not found: install the project (pip install -e .)")
    return str(eco)


# -- processes -------------------------------------------------------------------------


class SidecarServer(Server):
    """``eco sidecar --config`` with its own YAML, data dir and free ports."""

    system = "sidecar"

    def __init__(self, workdir: Path, node: str, controlplane: str, body: str) -> None:
        super().__init__(workdir)
        self.local_api = f"127.0.0.1:{free_port()}"
        self.admin = f"127.0.0.1:{free_port()}"
        self.target = self.local_api
        self.launcher = "eco sidecar"
        self.config_path = workdir / "sidecar.yaml"
        self.config_path.write_text(
            f"node: {{id: {node}, zone: z1, region: r1}}\n"
            f'controlplane: {{addresses: ["{controlplane}"]}}\n'
            f"data_dir: {workdir / 'data'}\n"
            f'local_api: "{self.local_api}"\n'
            f'admin: "{self.admin}"\n' + body
        )

    def command(self) -> list[str]:
        return [_eco(), "sidecar", "--config", str(self.config_path)]

    def ready_url(self) -> str:
        return f"http://{self.admin}/healthz"


class BackendServer(Server):
    """The HTTP backend: ``/health`` on two ports, the first one flippable."""

    system = "backend"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.flaky_port = free_port()
        self.steady_port = free_port()
        self.launcher = "aiohttp"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-c",
            _RUN_BACKEND,
            str(_ROOT),
            "--backend",
            str(self.flaky_port),
            str(self.steady_port),
        ]

    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.steady_port}/health"

    def flip(self, failing: bool) -> None:
        url = f"http://127.0.0.1:{self.flaky_port}/{'fail' if failing else 'ok'}"
        with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=2):
            pass


async def _serve_backend(flaky_port: int, steady_port: int) -> None:
    from aiohttp import web

    state = {"failing": False}

    async def flaky(_request: web.Request) -> web.Response:
        return web.Response(status=503 if state["failing"] else 200, text="flaky")

    async def steady(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def set_failing(request: web.Request) -> web.Response:
        state["failing"] = request.path == "/fail"
        return web.Response(text=request.path)

    flaky_app = web.Application()
    flaky_app.add_routes(
        [web.get("/health", flaky), web.post("/fail", set_failing), web.post("/ok", set_failing)]
    )
    steady_app = web.Application()
    steady_app.add_routes([web.get("/health", steady)])
    for app, port in ((flaky_app, flaky_port), (steady_app, steady_port)):
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()  # until SIGTERM


# -- propagation ------------------------------------------------------------------------


def _check(port: int) -> str:
    return (
        f'      - {{http: "http://127.0.0.1:{port}/health", interval: {CHECK_INTERVAL_MS}ms,'
        f" timeout: {CHECK_TIMEOUT_MS}ms, failures_before_critical: {FAILURES_BEFORE_CRITICAL}}}\n"
    )


def _web(port: int) -> str:
    return f"  - name: web\n    address: 127.0.0.1\n    port: {port}\n    checks:\n" + _check(port)


async def _routable_ports(stub: Any, service: str) -> set[int]:
    answer = await stub.ResolveEndpoints(
        sidecar_pb2.ResolveEndpointsRequest(service=service), timeout=2
    )
    return {e.port for e in answer.endpoints}


async def _poll_until(stub: Any, flaky: int, routable: bool) -> float:
    """Polls until ``flaky`` is (or is no longer) routable; returns when, monotonic."""
    deadline = time.monotonic() + _TRIAL_TIMEOUT
    while True:
        try:
            ports = await _routable_ports(stub, "web")
        except grpc.aio.AioRpcError:
            ports = set()
        now = time.monotonic()
        if (flaky in ports) == routable:
            return now
        if now > deadline:
            state = "routable" if routable else "gone"
            raise ServerError(f"port {flaky} not {state} within {_TRIAL_TIMEOUT:.0f}s")
        await asyncio.sleep(POLL_SECONDS)


async def _propagation(workdir: Path, trials: int, cp: ControlPlaneServer) -> dict[str, Any]:
    with BackendServer(workdir / "backend") as backend:
        a = SidecarServer(
            workdir / "sidecar-a",
            "node-a",
            cp.target,
            "services:\n" + _web(backend.flaky_port) + _web(backend.steady_port),
        )
        b = SidecarServer(
            workdir / "sidecar-b", "node-b", cp.target, "upstreams: [{service: web}]\n"
        )
        with a, b:
            async with grpc.aio.insecure_channel(b.local_api) as channel:
                stub = sidecar_pb2_grpc.SidecarServiceStub(channel)
                both = {backend.flaky_port, backend.steady_port}
                deadline = time.monotonic() + 30
                while await _routable_ports(stub, "web") != both:
                    if time.monotonic() > deadline:
                        raise ServerError("web never became routable on both instances")
                    await asyncio.sleep(0.05)
                down: list[float] = []
                back: list[float] = []
                rng = random.Random(7)
                for trial in range(trials):
                    # A random phase relative to the probe schedule.
                    await asyncio.sleep(0.3 + rng.random() * CHECK_INTERVAL_MS / 1000)
                    t0 = time.monotonic()
                    await asyncio.to_thread(backend.flip, True)
                    t1 = await _poll_until(stub, backend.flaky_port, routable=False)
                    down.append((t1 - t0) * 1000)
                    if await _routable_ports(stub, "web") != {backend.steady_port}:
                        raise ServerError("the healthy web instance stopped being routable")
                    await asyncio.sleep(0.3 + rng.random() * CHECK_INTERVAL_MS / 1000)
                    t2 = time.monotonic()
                    await asyncio.to_thread(backend.flip, False)
                    t3 = await _poll_until(stub, backend.flaky_port, routable=True)
                    back.append((t3 - t2) * 1000)
                    _progress(f"trial {trial + 1}/{trials}: {down[-1]:.0f} ms")
                a.check_alive()
                b.check_alive()
    down.sort()
    back.sort()
    return {
        "bench": "sidecar_propagation",
        "p50_ms": round(statistics.median(down), 1),
        "p99_ms": round(_percentile(down, 99), 1),
        "max_ms": round(down[-1], 1),
        "min_ms": round(down[0], 1),
        "restore_p50_ms": round(statistics.median(back), 1),
        "restore_max_ms": round(back[-1], 1),
        "trials": trials,
        "check_interval_ms": CHECK_INTERVAL_MS,
        "check_timeout_ms": CHECK_TIMEOUT_MS,
        "failures_before_critical": FAILURES_BEFORE_CRITICAL,
        "poll_ms": POLL_SECONDS * 1000,
        "store": "sqlite",
    }


# -- memory ---------------------------------------------------------------------------------


async def _register_big(address: str, count: int) -> float:
    started = time.monotonic()
    gate = asyncio.Semaphore(64)
    async with AsyncClient(address, timeout=30) as client:

        async def one(i: int) -> None:
            async with gate:
                await client.register(
                    "big",
                    f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
                    8000 + i % 1000,
                    id=f"big-{i:05d}",
                    node=f"host-{i % 500}",
                    zone="z1",
                    region="r1",
                )

        await asyncio.gather(*(one(i) for i in range(count)))
    return time.monotonic() - started


async def _settled_rss_mb(server: SidecarServer, seconds: float = 2.0) -> float:
    await asyncio.sleep(seconds)
    server.check_alive()
    return rss_bytes(server.pid) / 1e6


async def _rss(workdir: Path, endpoints: int, cp: ControlPlaneServer) -> dict[str, Any]:
    with SidecarServer(workdir / "sidecar-idle", "idle", cp.target, "") as idle:
        idle_mb = await _settled_rss_mb(idle)
    _progress(f"idle sidecar: {idle_mb:.1f} MB; registering {endpoints} instances")
    took = await _register_big(cp.target, endpoints)
    _progress(f"registered in {took:.1f}s")
    big = SidecarServer(
        workdir / "sidecar-big", "big-watcher", cp.target, "upstreams: [{service: big}]\n"
    )
    started = time.monotonic()  # from the process start, readiness included
    with big:
        async with grpc.aio.insecure_channel(
            big.local_api, options=[("grpc.max_receive_message_length", 64 * 2**20)]
        ) as channel:
            stub = sidecar_pb2_grpc.SidecarServiceStub(channel)
            while True:
                answer = await stub.ResolveEndpoints(
                    sidecar_pb2.ResolveEndpointsRequest(service="big", health=_ALL_HEALTH),
                    timeout=10,
                )
                if len(answer.endpoints) >= endpoints:
                    break
                if time.monotonic() - started > 60:
                    raise ServerError(f"only {len(answer.endpoints)} of {endpoints} cached")
                await asyncio.sleep(0.1)
            loaded_s = time.monotonic() - started
            rss_mb = await _settled_rss_mb(big)
            peak_mb = peak_rss_bytes(big.pid) / 1e6
    return {
        "bench": "sidecar_rss",
        "endpoints": endpoints,
        "rss_mb": round(rss_mb, 1),
        "peak_rss_mb": round(peak_mb, 1),
        "idle_rss_mb": round(idle_mb, 1),
        "seconds_from_start_to_all_cached": round(loaded_s, 2),
        "budget_mb": RSS_BUDGET_MB,
        "within_budget": rss_mb <= RSS_BUDGET_MB,
        "peer": PEER,
    }


# -- entry points ---------------------------------------------------------------------------


async def _measure(workdir: Path, quick: bool) -> list[dict[str, Any]]:
    results = []
    with ControlPlaneServer(workdir / "controlplane") as cp:
        _progress("propagation")
        results.append(await _propagation(workdir, 5 if quick else 30, cp))
        _progress("rss")
        results.append(await _rss(workdir, 1_000 if quick else 10_000, cp))
        cp.check_alive()
    return results


def run(quick: bool) -> list[dict[str, Any]]:
    """Runs both measurements; every process started is stopped on the way out."""
    with tempfile.TemporaryDirectory(prefix="eco-bench-sidecar-") as workdir:
        return asyncio.run(_measure(Path(workdir), quick))


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_sidecar",
        description="Sidecar health propagation latency and RSS with many cached "
        "endpoints; one JSON object per line.",
    )
    parser.add_argument("--quick", action="store_true", help="5 trials, 1,000 endpoints")
    parser.add_argument("--backend", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.backend:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve_backend(*args.backend))
        return 0
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        rows = run(args.quick)
    except KeyboardInterrupt:
        _progress("interrupted; everything started was stopped")
        return 130
    for row in rows:
        print(json.dumps(row, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
