"""Data plane: the sidecar's proxy listeners side by side with HAProxy, against nginx.

``python -m benchmarks.bench_proxy [--quick] [--dataplane python|envoy]`` (or
``python -m benchmarks --only proxy``) prints one JSON object per line;
``run(quick)`` returns the same objects. ``--dataplane`` (repeatable; default
both) starts only the sidecars of that data plane: ``--quick --dataplane
envoy`` measures Envoy mode beside HAProxy in about two minutes;
``--envoy-options`` measures instead what each option of Envoy mode's http
listener costs (benchmarks._proxy_envoy). Everything is a real process on
free 127.0.0.1 ports in a temporary directory, stopped at the end (also on an
error or Ctrl-C):

- nginx, one worker, ``/`` → ``200 hello\\n``, ``/large.bin`` a large file;
- HAProxy, ``nbthread 1``, a tcp-mode and an http-mode listener to nginx;
- a gRPC backend (``grpc.health.v1``, the proxyless benchmark's);
- ``eco controlplane --store memory://`` and two ``eco sidecar`` processes
  (and again, system ``envoy``, with ``dataplane: envoy``: the routes below
  through Envoy, one worker thread each; its lines carry the Envoy
  processes' CPU and RSS).
  The server sidecar registers nginx as ``bench-tcp`` and ``bench-http`` with
  an inbound listener each (tcp, http), nginx again as ``bench-direct-tcp``
  and ``bench-direct-http`` without one, and the gRPC backend as
  ``bench-grpc`` (grpc inbound) and ``bench-direct-grpc``. The client sidecar
  has an upstream listener for each. A ``bench-direct-*`` upstream dials the
  backend itself (one hop, like HAProxy); the others dial the server
  sidecar's inbound listener, which forwards to the backend (two hops).

The routes (``system``, ``mode``, ``hops``): ``direct`` (0), ``haproxy`` tcp and
http (1), ``ecosystem`` tcp and http over 1 and 2 hops. Each measurement
visits the routes in turn, round after round, so a burst of other work on
the machine does not land on one route only. Measurements:

- ``proxy_rps``: ``wrk -t1 -c50`` on ``/``, a 1 s warm-up per route, then
  rounds (4 x 3 s; quick 3 x 2 s); requests/s over all rounds, the median
  of wrk's p50/p99, the proxies' CPU (vCPU) during the runs;
  ``ratio_to_haproxy`` = ours ÷ HAProxy's of the same mode (one hop).
  ``rps_per_vcpu`` (requests per CPU second of the proxy processes) and its
  ratio to HAProxy's say how efficient each proxy is whatever share of the
  cores it got: on a busy machine that share, and with it requests/s, varies
  from run to run much more than the cost of a request does.
- ``proxy_latency``: an open-loop client at 1,000 requests/s on 20 keep-alive
  connections, in 1 s slices (10; quick 3) after 0.2 s of warm-up each;
  latency from each request's scheduled send time; p50/p90/p99 and
  ``added_*_ms`` = the route's minus direct's. Here also ``haproxy`` over two
  hops: a second HAProxy (one thread) in front of the first; the two-hop
  lines of the sidecars (Python and Envoy) carry its added p50/p99 as
  ``haproxy_chained_added_*_ms``.
- ``proxy_cpu``: user + system CPU of the proxy processes during that run,
  as vCPU per 1,000 requests/s (two hops: both sidecars together).
- ``proxy_rss``: VmRSS (and VmHWM) of each proxy process after the runs, in MB
  (10⁶ bytes).
- ``proxy_bulk``: one ``/large.bin`` download per round through a raw socket,
  MB/s (10⁶ bytes), best round; the proxies' CPU seconds per GB.
- ``proxy_grpc``: ``Health/Check`` with 32 concurrent callers on one channel,
  direct and through the sidecar's grpc upstream (1 and 2 hops): calls/s,
  p50/p99 under that load, and one-at-a-time p50/p99.

Budgets (``budget``/``budget_op``/``within_budget`` on our lines): tcp ≥ 1.0 x
HAProxy tcp and http ≥ 0.5 x HAProxy http (one hop); added p50 ≤ 1 ms and p99
≤ 3 ms over two hops at 1,000 requests/s; ≤ 0.25 vCPU per 1,000 requests/s.
``envoy``: tcp and http ≥ 1.0 x HAProxy (one hop), gRPC ≥ 0.7 x direct.
When the sidecars cannot start, their lines carry ``error`` and the peers'
figures are still reported. See docs/benchmarks.md, "Data plane".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks._cli import streaming_main
from benchmarks._proxy_envoy import measure_options
from benchmarks._proxy_load import CpuUse, WrkResult, constant_rate, download, wrk
from benchmarks._proxy_peers import HaproxyServer, NginxServer, SidecarMesh, tool, tool_version
from benchmarks._servers import ServerError, peak_rss_bytes, rss_bytes
from benchmarks.bench_proxyless import _backend as grpc_backend

__all__ = ["run"]

RATE = 1_000  # requests/s of the latency and CPU runs
CONNECTIONS = 50  # wrk's
LATENCY_CONNECTIONS = 20
GRPC_CONCURRENCY = 32
RPS_BUDGET = {"tcp": 1.0, "http": 0.5}  # times HAProxy's, same mode, one hop
ENVOY_RPS_BUDGET = {"tcp": 1.0, "http": 1.0}  # dataplane: envoy, times HAProxy's, one hop
ENVOY_GRPC_BUDGET = 0.7  # dataplane: envoy, times a direct channel's calls/s, one hop
ADDED_P50_BUDGET_MS = 1.0  # two hops
ADDED_P99_BUDGET_MS = 3.0
VCPU_BUDGET = 0.25  # per 1,000 requests/s
_READY_TIMEOUT = 30.0
#: The sidecars' data planes measured (``--dataplane``): the Python one and Envoy mode.
DATAPLANES = ("python", "envoy")


@dataclass(frozen=True)
class _Sizes:
    wrk_rounds: int
    wrk_seconds: int  # per round
    rate_slices: int  # of 1 s at RATE
    large_bytes: int
    bulk_rounds: int
    grpc_seconds: float


QUICK = _Sizes(
    wrk_rounds=3,
    wrk_seconds=2,
    rate_slices=3,
    large_bytes=64 * 2**20,
    bulk_rounds=2,
    grpc_seconds=2,
)
FULL = _Sizes(
    wrk_rounds=4,
    wrk_seconds=3,
    rate_slices=10,
    large_bytes=256 * 2**20,
    bulk_rounds=3,
    grpc_seconds=5,
)

_Key = tuple[str, str | None, int]


@dataclass(frozen=True)
class _Route:
    """One way to reach the backend: what to dial, and the processes that proxy it."""

    system: str
    mode: str | None
    hops: int
    port: int
    pids: dict[str, int] = field(default_factory=dict)  # role → pid

    @property
    def key(self) -> _Key:
        return (self.system, self.mode, self.hops)

    @property
    def label(self) -> str:
        return " ".join(filter(None, (self.system, self.mode, f"hops={self.hops}")))

    def row(self, bench: str, **figures: Any) -> dict[str, Any]:
        head = {"bench": bench, "system": self.system, "mode": self.mode, "hops": self.hops}
        return head | figures


def _progress(text: str) -> None:
    print(f"[proxy] {text}", file=sys.stderr, flush=True)


def _percentile(ordered: list[float], pct: float) -> float:
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(len(ordered) * pct / 100))
    return ordered[min(rank, len(ordered)) - 1]


def _judge(row: dict[str, Any], value: float, op: str, limit: float) -> dict[str, Any]:
    within = value >= limit if op == ">=" else value <= limit
    row.update(budget=limit, budget_op=op, within_budget=bool(within) and not math.isnan(value))
    return row


# -- measurements ------------------------------------------------------------------------------


def _rps(routes: list[_Route], sizes: _Sizes) -> list[dict[str, Any]]:
    """wrk on every route, in rounds: each round visits every route once, so a
    burst of noise on the machine does not fall on one route only."""
    for route in routes:
        _progress(f"wrk warm-up {route.label}")
        wrk(route.port, 1, CONNECTIONS)
    results: dict[_Key, list[WrkResult]] = {route.key: [] for route in routes}
    cpu = {route.key: CpuUse() for route in routes}
    for round_ in range(sizes.wrk_rounds):
        for route in routes:
            _progress(f"wrk round {round_ + 1}/{sizes.wrk_rounds} {route.label}")
            with cpu[route.key].measure(route.pids):
                results[route.key].append(wrk(route.port, sizes.wrk_seconds, CONNECTIONS))
    rows: dict[_Key, dict[str, Any]] = {}
    for route in routes:
        runs = results[route.key]
        seconds = sizes.wrk_seconds * len(runs)
        rows[route.key] = row = route.row(
            "proxy_rps",
            rps=round(sum(r.requests for r in runs) / seconds),
            rounds_rps=[round(r.rps) for r in runs],
            p50_ms=statistics.median(r.p50_ms for r in runs),
            p99_ms=statistics.median(r.p99_ms for r in runs),
            requests=sum(r.requests for r in runs),
            errors=sum(r.errors for r in runs),
            connections=CONNECTIONS,
            threads=1,
            seconds=seconds,
        )
        if route.pids:
            vcpu = cpu[route.key].vcpu()
            row["proxy_vcpu"] = vcpu
            row["rps_per_vcpu"] = row["rps"] / sum(vcpu.values()) if any(vcpu.values()) else None
    for (system, mode, hops), row in rows.items():
        peer = rows.get(("haproxy", mode, 1))
        if system not in ("ecosystem", "envoy") or peer is None or mode is None:
            continue
        ratio = row["rps"] / peer["rps"] if peer["rps"] else math.nan
        row.update(ratio_to_haproxy=ratio, haproxy_rps=peer["rps"])
        if row.get("rps_per_vcpu") and peer.get("rps_per_vcpu"):
            row["per_vcpu_ratio_to_haproxy"] = row["rps_per_vcpu"] / peer["rps_per_vcpu"]
        if hops == 1:
            _judge(row, ratio, ">=", (ENVOY_RPS_BUDGET if system == "envoy" else RPS_BUDGET)[mode])
    return list(rows.values())


def _latency(routes: list[_Route], sizes: _Sizes) -> list[dict[str, Any]]:
    """The constant-rate client on every route, in 1 s slices that cycle through
    the routes (each slice with its own connections and 0.2 s of warm-up)."""
    samples: dict[_Key, list[float]] = {route.key: [] for route in routes}
    errors = dict.fromkeys(samples, 0)
    cpu = {route.key: CpuUse() for route in routes}
    for slice_ in range(sizes.rate_slices):
        _progress(f"{RATE}/s slice {slice_ + 1}/{sizes.rate_slices} over {len(routes)} routes")
        for route in routes:
            with cpu[route.key].measure(route.pids):
                result = constant_rate(
                    route.port, RATE, 1.0, connections=LATENCY_CONNECTIONS, warmup=0.2
                )
            samples[route.key] += result.latencies_ms
            errors[route.key] += result.errors
    rows: list[dict[str, Any]] = []
    cpu_rows: list[dict[str, Any]] = []
    direct: dict[str, float] = {}
    haproxy_cpu: dict[str | None, float] = {}
    for route in routes:
        ordered = sorted(samples[route.key])
        figures = {f"p{p}_ms": _percentile(ordered, p) for p in (50, 90, 99)}
        row = route.row(
            "proxy_latency",
            rate=RATE,
            **figures,
            max_ms=ordered[-1] if ordered else math.nan,
            mean_ms=statistics.fmean(ordered) if ordered else math.nan,
            samples=len(ordered),
            scheduled=RATE * sizes.rate_slices,
            errors=errors[route.key],
            connections=LATENCY_CONNECTIONS,
            seconds=sizes.rate_slices,
        )
        if route.system == "direct":
            direct = figures
        elif direct:
            for name, value in figures.items():
                row[f"added_{name}"] = value - direct[name]
            if route.system == "ecosystem" and route.hops == 2:
                within_p50 = row["added_p50_ms"] <= ADDED_P50_BUDGET_MS
                within_p99 = row["added_p99_ms"] <= ADDED_P99_BUDGET_MS
                row.update(
                    budget_added_p50_ms=ADDED_P50_BUDGET_MS,
                    budget_added_p99_ms=ADDED_P99_BUDGET_MS,
                    within_budget=within_p50 and within_p99 and not errors[route.key],
                )
        rows.append(row)
        if route.pids and not (route.system == "haproxy" and route.hops == 2):
            vcpu = cpu[route.key].vcpu()
            per_1000 = sum(vcpu.values()) / (RATE / 1000)
            cpu_row = route.row(
                "proxy_cpu",
                vcpu_per_1000_rps=per_1000,
                processes={role: used / (RATE / 1000) for role, used in vcpu.items()},
                rate=RATE,
                seconds=cpu[route.key].wall,
            )
            if route.system == "haproxy":
                haproxy_cpu[route.mode] = per_1000
            elif haproxy_cpu.get(route.mode):
                cpu_row["ratio_to_haproxy"] = per_1000 / haproxy_cpu[route.mode]
            if route.system == "ecosystem":
                _judge(cpu_row, per_1000, "<=", VCPU_BUDGET)
            cpu_rows.append(cpu_row)
    chained = {row["mode"]: row for row in rows if row["system"] == "haproxy" and row["hops"] == 2}
    for row in rows:
        peer = chained.get(row["mode"])
        if row["system"] in ("ecosystem", "envoy") and row["hops"] == 2 and peer is not None:
            for name in ("added_p50_ms", "added_p99_ms"):
                row[f"haproxy_chained_{name}"] = peer.get(name, math.nan)
    return rows + cpu_rows


def _bulk(routes: list[_Route], sizes: _Sizes) -> list[dict[str, Any]]:
    """One download per route per round, the routes in turn within each round."""
    runs: dict[_Key, list[float]] = {route.key: [] for route in routes}
    cpu = {route.key: CpuUse() for route in routes}
    for round_ in range(sizes.bulk_rounds):
        _progress(f"bulk round {round_ + 1}/{sizes.bulk_rounds} over {len(routes)} routes")
        for route in routes:
            with cpu[route.key].measure(route.pids):
                received, seconds = download(route.port)
            runs[route.key].append(received / seconds / 1e6)
    rows: list[dict[str, Any]] = []
    haproxy: dict[str | None, float] = {}
    for route in routes:
        row = route.row(
            "proxy_bulk",
            mb_per_s=max(runs[route.key]),
            runs_mb_per_s=runs[route.key],
            bytes=sizes.large_bytes,
            rounds=sizes.bulk_rounds,
        )
        if route.pids:
            gigabytes = sizes.large_bytes * sizes.bulk_rounds / 1e9
            row["proxy_cpu_s_per_gb"] = sum(cpu[route.key].seconds.values()) / gigabytes
        if route.system == "haproxy":
            haproxy[route.mode] = row["mb_per_s"]
        elif route.system == "ecosystem" and haproxy.get(route.mode):
            row["ratio_to_haproxy"] = row["mb_per_s"] / haproxy[route.mode]
        rows.append(row)
    return rows


async def _grpc_calls(
    target: str, seconds: float, pids: dict[str, int]
) -> tuple[dict[str, Any], dict[str, float]]:
    request = health_pb2.HealthCheckRequest()
    async with grpc.aio.insecure_channel(target) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        deadline = time.monotonic() + _READY_TIMEOUT
        while True:  # the first call also waits for the listener and its route
            try:
                await check(request, timeout=2.0)
                break
            except grpc.aio.AioRpcError as exc:
                if time.monotonic() > deadline:
                    raise ServerError(f"{target}: no gRPC answer: {exc.details()}") from None
                await asyncio.sleep(0.1)
        clock = time.perf_counter_ns
        sequential: list[float] = []
        for _ in range(200):  # warm-up
            await check(request, timeout=5.0)
        end = time.monotonic() + min(1.0, seconds / 2)
        while time.monotonic() < end:
            start = clock()
            await check(request, timeout=5.0)
            sequential.append((clock() - start) / 1e6)
        loaded: list[float] = []
        errors: list[str] = []

        async def caller(until: float) -> None:
            while time.monotonic() < until:
                start = clock()
                try:
                    await check(request, timeout=5.0)
                except grpc.aio.AioRpcError as exc:
                    errors.append(exc.code().name)
                    continue
                loaded.append((clock() - start) / 1e6)

        cpu = CpuUse()
        with cpu.measure(pids):
            started = time.perf_counter()
            until = time.monotonic() + seconds
            async with asyncio.TaskGroup() as group:
                for _ in range(GRPC_CONCURRENCY):
                    group.create_task(caller(until))
            wall = time.perf_counter() - started
    sequential.sort()
    loaded.sort()
    return {
        "calls_per_s": len(loaded) / wall,
        "p50_ms": _percentile(loaded, 50),
        "p99_ms": _percentile(loaded, 99),
        "sequential_p50_ms": _percentile(sequential, 50),
        "sequential_p99_ms": _percentile(sequential, 99),
        "concurrency": GRPC_CONCURRENCY,
        "calls": len(loaded),
        "errors": len(errors),
        "error_codes": sorted(set(errors)),
        "seconds": seconds,
    }, cpu.vcpu()


async def _grpc(routes: list[_Route], sizes: _Sizes) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    direct: dict[str, Any] = {}
    for route in routes:
        _progress(f"grpc {route.label}")
        try:
            figures, vcpu = await _grpc_calls(
                f"127.0.0.1:{route.port}", sizes.grpc_seconds, route.pids
            )
        except (ServerError, grpc.aio.AioRpcError) as exc:
            message = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            rows.append(route.row("proxy_grpc", error=message))
            continue
        row = route.row("proxy_grpc", **figures)
        if route.system == "direct":
            direct = figures
        elif direct:
            row["ratio_to_direct"] = figures["calls_per_s"] / direct["calls_per_s"]
            row["added_p99_ms"] = figures["p99_ms"] - direct["p99_ms"]
            row["added_sequential_p50_ms"] = (
                figures["sequential_p50_ms"] - direct["sequential_p50_ms"]
            )
            if route.system == "envoy" and route.hops == 1:
                _judge(row, row["ratio_to_direct"], ">=", ENVOY_GRPC_BUDGET)
        if vcpu:
            row["vcpu_per_1000_calls_per_s"] = sum(vcpu.values()) / (figures["calls_per_s"] / 1000)
        rows.append(row)
    return rows


def _rss(pids: dict[tuple[str, str], int]) -> list[dict[str, Any]]:
    return [
        {
            "bench": "proxy_rss",
            "system": system,
            "process": role,
            "rss_mb": rss_bytes(pid) / 1e6,
            "peak_rss_mb": peak_rss_bytes(pid) / 1e6,
        }
        for (system, role), pid in pids.items()
    ]


def _ours(mesh: SidecarMesh | None, *modes: str) -> list[_Route]:
    if mesh is None:
        return []
    system = "envoy" if mesh.dataplane == "envoy" else "ecosystem"
    return [_Route(system, *route) for route in mesh.route_ports(*modes)]


def _first_and_last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ... ".join(lines[:1] + lines[-1:]) if len(lines) > 1 else text


# -- entry points ------------------------------------------------------------------------------


def _measure(
    workdir: Path,
    sizes: _Sizes,
    emit: Callable[[dict[str, Any]], None],
    dataplanes: tuple[str, ...] = DATAPLANES,
) -> None:
    with contextlib.ExitStack() as stack:
        _progress(f"nginx with a {sizes.large_bytes // 2**20} MiB file, HAProxy, gRPC backend")
        nginx = NginxServer(workdir / "nginx", sizes.large_bytes)
        stack.enter_context(nginx)
        haproxy = HaproxyServer(workdir / "haproxy", nginx.port)
        stack.enter_context(haproxy)
        grpc_port = stack.enter_context(grpc_backend())
        mesh: SidecarMesh | None = None
        failure = ""
        if "python" in dataplanes:
            _progress("control plane and two sidecars")
            try:
                mesh = stack.enter_context(SidecarMesh(workdir / "mesh", nginx.port, grpc_port))
            except ServerError as exc:
                _progress(f"the sidecars did not start: {exc}")
                failure = f"the sidecars did not start: {_first_and_last_line(str(exc))}"
        envoy_mesh: SidecarMesh | None = None
        if "envoy" in dataplanes:
            _progress("control plane and two sidecars with dataplane: envoy")
            try:
                envoy_mesh = stack.enter_context(
                    SidecarMesh(workdir / "envoy-mesh", nginx.port, grpc_port, dataplane="envoy")
                )
            except ServerError as exc:
                _progress(f"the envoy sidecars did not start: {exc}")
                for bench in ("proxy_rps", "proxy_latency", "proxy_bulk", "proxy_grpc"):
                    emit(
                        {"bench": bench, "system": "envoy", "error": _first_and_last_line(str(exc))}
                    )
        # HAProxy chained twice (two hops, like client and server sidecar): a second
        # HAProxy in front of the first, for the latency run only.
        chained: list[_Route] = []
        for mode, first_port in (("tcp", haproxy.tcp_port), ("http", haproxy.http_port)):
            second = HaproxyServer(workdir / f"haproxy-chain-{mode}", first_port)
            stack.enter_context(second)
            port = second.tcp_port if mode == "tcp" else second.http_port
            pids = {"haproxy": haproxy.pid, "haproxy_front": second.pid}
            chained.append(_Route("haproxy", mode, 2, port, pids))
        hp = {"haproxy": haproxy.pid}
        routes = [
            _Route("direct", None, 0, nginx.port),
            _Route("haproxy", "tcp", 1, haproxy.tcp_port, hp),
            _Route("haproxy", "http", 1, haproxy.http_port, hp),
        ]
        ours = _ours(mesh, "tcp", "http") + _ours(envoy_mesh, "tcp", "http")
        grpc_routes = [
            _Route("direct", "grpc", 0, grpc_port),
            *_ours(mesh, "grpc"),
            *_ours(envoy_mesh, "grpc"),
        ]
        if failure:
            for bench in ("proxy_rps", "proxy_latency", "proxy_bulk", "proxy_grpc"):
                emit({"bench": bench, "system": "ecosystem", "error": failure})
        for row in _rps(routes + ours, sizes):
            emit(row)
        for row in _latency(routes + ours + chained, sizes):
            emit(row)
        for row in _bulk(routes + ours, sizes):
            emit(row)
        for row in asyncio.run(_grpc(grpc_routes, sizes)):
            emit(row)
        processes = {("haproxy", "haproxy"): haproxy.pid}
        if mesh is not None:
            mesh.client.check_alive()
            mesh.server.check_alive()
            processes[("ecosystem", "client_sidecar")] = mesh.client.pid
            processes[("ecosystem", "server_sidecar")] = mesh.server.pid
        if envoy_mesh is not None:
            for role, pid in envoy_mesh.route_ports("tcp")[-1][3].items():
                processes[("envoy", role)] = pid
        for row in _rss(processes):
            emit(row)


def run(
    quick: bool,
    emit: Callable[[dict[str, Any]], None] | None = None,
    dataplanes: tuple[str, ...] = DATAPLANES,
) -> list[dict[str, Any]]:
    """Runs every measurement; every process started is stopped on the way out.
    Rows are also passed to ``emit`` as they come; ``dataplanes`` says whose
    sidecars to start (the peers always run). Raises ServerError when a tool is
    missing or a peer cannot start."""
    rows, collect = _collector(emit)
    collect(
        {
            "bench": "proxy_setup",
            "quick": quick,
            "cores": os.cpu_count(),
            "dataplanes": list(dataplanes),
            **{name: tool_version(name) for name in ("wrk", "haproxy", "nginx")},
        }
    )
    with tempfile.TemporaryDirectory(prefix="eco-bench-proxy-") as workdir:
        _measure(Path(workdir), QUICK if quick else FULL, collect, dataplanes)
    return rows


def _collector(
    emit: Callable[[dict[str, Any]], None] | None,
) -> tuple[list[dict[str, Any]], Callable[[dict[str, Any]], None]]:
    """Checks the peers' tools are installed; the rows kept, and what keeps
    each row and passes it to ``emit`` as it comes."""
    for name in ("wrk", "haproxy", "nginx"):
        tool(name)
    rows: list[dict[str, Any]] = []

    def collect(row: dict[str, Any]) -> None:
        rows.append(row)
        if emit is not None:
            emit(row)

    return rows, collect


def run_envoy_options(
    quick: bool, emit: Callable[[dict[str, Any]], None] | None = None
) -> list[dict[str, Any]]:
    """Envoy mode's HTTP listener with one option changed at a time, beside
    HAProxy (benchmarks._proxy_envoy): 3 (quick) or 8 rounds of 2 s each."""
    rows, collect = _collector(emit)

    with tempfile.TemporaryDirectory(prefix="eco-bench-envoy-options-") as workdir:
        measure_options(Path(workdir), 3 if quick else 8, 2, collect)
    return rows


def main(argv: list[str] | None = None) -> int:
    description = (
        "The sidecar's proxy listeners beside HAProxy against nginx: "
        "requests/s, added latency, CPU, RSS, bulk MB/s, gRPC; one JSON object per line."
    )
    quick_help = "shorter runs, a 64 MiB file"
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_proxy", description=description
    )
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument(
        "--dataplane",
        action="append",
        choices=DATAPLANES,
        help="start only the sidecars of this data plane (repeatable; default: both); "
        "HAProxy and the direct routes always run",
    )
    parser.add_argument(
        "--envoy-options",
        action="store_true",
        help="instead: what each option of Envoy mode's http listener costs (requests per "
        "CPU second with that option changed, beside HAProxy); see docs/benchmarks.md",
    )
    args = parser.parse_args(argv)
    dataplanes = tuple(args.dataplane or DATAPLANES)
    return streaming_main(
        ["--quick"] if args.quick else [],
        name="proxy",
        description=description,
        quick_help=quick_help,
        run=run_envoy_options
        if args.envoy_options
        else functools.partial(run, dataplanes=dataplanes),
    )


if __name__ == "__main__":
    sys.exit(main())
