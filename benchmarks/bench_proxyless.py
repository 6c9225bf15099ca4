"""Proxyless call overhead: unary calls through a ServiceChannel vs a direct channel.

``python -m benchmarks.bench_proxyless [--quick]`` prints one JSON object per
line; ``run(quick)`` returns the same objects.

One backend runs in its own process (this module with ``--serve``): a
grpc.aio server with ``grpc.health.v1``. This process calls its ``Check``
through the generated ``HealthStub``, built once on a plain
``grpc.aio.insecure_channel`` (``system: "direct"``) and once on a
:class:`~sdk.proxyless._channel.ServiceChannel` holding that one backend as its only
endpoint (``system: "proxyless"``, round robin, a static endpoint source, so
only the per-call path is measured: pick, the endpoint's channel, release).

For each system, in alternating rounds:

- ``p50_us``, ``p99_us``, ``mean_us``: latency of sequential calls, one at a time;
- ``calls_per_s``: throughput with ``concurrency`` calls in flight (best round);
- ``client_cpu_us_per_call``: CPU time of this process (every thread, gRPC's
  own included) per call during the concurrent runs (best round). With one
  Python backend the throughput is mostly the backend's limit; this figure
  is what the proxyless layer costs the caller.

A ``system: "ratio"`` line gives proxyless over direct for throughput, and
the added latency and client CPU per call in microseconds; on a small
machine those end-to-end differences are within the run-to-run noise. So a
last ``system: "proxyless_layer"`` line times the layer alone, in process:
the same unary loop through a ServiceChannel whose endpoint channel
completes every call at once, net of calling that channel directly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sdk import ServiceChannel, StaticEndpointSource
from sdk.balancer import Endpoint

__all__ = ["run"]

BENCH = "proxyless_overhead"
CONCURRENCY = 32


def _percentile(ordered: list[float], pct: float) -> float:
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(min(rank, len(ordered))) - 1]


# -- the backend process ----------------------------------------------------------


async def _serve() -> None:
    from grpc_health.v1._async import HealthServicer

    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    # Runs until the parent closes our stdin (or dies, which closes it too).
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(None)


@contextlib.contextmanager
def _backend() -> Iterator[int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.bench_proxyless", "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "GRPC_VERBOSITY": "ERROR"},
    )
    try:
        assert process.stdout is not None and process.stdin is not None
        line = process.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError(f"the backend did not start (said {line!r})")
        yield int(line)
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- measuring ------------------------------------------------------------------------


async def _sequential(stub: Any, calls: int) -> list[float]:
    request = health_pb2.HealthCheckRequest()
    check = stub.Check
    samples = []
    clock = time.perf_counter_ns
    for _ in range(calls):
        start = clock()
        await check(request, timeout=5.0)
        samples.append((clock() - start) / 1e3)
    return samples


async def _concurrent(stub: Any, calls: int, concurrency: int) -> tuple[float, float]:
    """Calls per second, and this process's CPU microseconds per call."""
    request = health_pb2.HealthCheckRequest()
    check = stub.Check
    per_worker = calls // concurrency

    async def worker() -> None:
        for _ in range(per_worker):
            await check(request, timeout=5.0)

    start, cpu = time.perf_counter(), time.process_time()
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    done = per_worker * concurrency
    return done / (time.perf_counter() - start), (time.process_time() - cpu) * 1e6 / done


async def _measure(port: int, quick: bool) -> list[dict[str, Any]]:
    rounds = 3 if quick else 10
    sequential = 400 if quick else 2_000  # per round
    concurrent = 1_600 if quick else 6_400  # per round
    authority = f"127.0.0.1:{port}"
    source = StaticEndpointSource(
        {"health": [Endpoint(id="backend", address="127.0.0.1", port=port)]}
    )
    latencies: dict[str, list[float]] = {"direct": [], "proxyless": []}
    throughput: dict[str, list[float]] = {"direct": [], "proxyless": []}
    cpu: dict[str, list[float]] = {"direct": [], "proxyless": []}
    async with (
        grpc.aio.insecure_channel(authority) as direct,
        ServiceChannel.open(source, "health") as proxyless,
    ):
        stubs = {
            "direct": health_pb2_grpc.HealthStub(direct),
            "proxyless": health_pb2_grpc.HealthStub(proxyless),
        }
        for stub in stubs.values():  # connect and warm up
            await _sequential(stub, 200)
        for round_ in range(rounds):
            order = ("direct", "proxyless") if round_ % 2 == 0 else ("proxyless", "direct")
            for system in order:
                latencies[system].extend(await _sequential(stubs[system], sequential))
                rate, cpu_us = await _concurrent(stubs[system], concurrent, CONCURRENCY)
                throughput[system].append(rate)
                cpu[system].append(cpu_us)
    rows: dict[str, dict[str, Any]] = {}
    for system in ("direct", "proxyless"):
        ordered = sorted(latencies[system])
        rows[system] = {
            "bench": BENCH,
            "system": system,
            "calls_per_s": round(statistics.median(throughput[system])),
            "concurrency": CONCURRENCY,
            "p50_us": round(_percentile(ordered, 50), 1),
            "p99_us": round(_percentile(ordered, 99), 1),
            "mean_us": round(statistics.fmean(ordered), 1),
            "client_cpu_us_per_call": round(statistics.median(cpu[system]), 1),
            "sequential_calls": len(ordered),
            "concurrent_calls": concurrent * rounds,
            "rounds": rounds,
        }
    direct_row, proxyless_row = rows["direct"], rows["proxyless"]
    ratio = {
        "bench": BENCH,
        "system": "ratio",
        "calls_per_s_ratio": round(proxyless_row["calls_per_s"] / direct_row["calls_per_s"], 3),
        "p50_overhead_us": round(proxyless_row["p50_us"] - direct_row["p50_us"], 1),
        "p99_overhead_us": round(proxyless_row["p99_us"] - direct_row["p99_us"], 1),
        "mean_overhead_us": round(proxyless_row["mean_us"] - direct_row["mean_us"], 1),
        "client_cpu_overhead_us": round(
            proxyless_row["client_cpu_us_per_call"] - direct_row["client_cpu_us_per_call"], 1
        ),
    }
    return [direct_row, proxyless_row, ratio, await _layer(quick)]


class _Done:
    """An endpoint call that has already completed: awaiting it costs nothing."""

    def __await__(self) -> Iterator[Any]:
        return iter(())


class _InstantChannel:
    """An endpoint channel whose calls complete at once, to time the layer alone."""

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        done = _Done()

        def call(request: Any, **options: Any) -> _Done:
            return done

        return call

    async def close(self, grace: float | None = None) -> None:
        return None


async def _layer(quick: bool) -> dict[str, Any]:
    """CPU cost of the proxyless layer alone (pick, call object, release) per unary
    call, net of the same loop calling an instant endpoint channel directly."""
    calls = 20_000 if quick else 200_000
    source = StaticEndpointSource({"health": [Endpoint(id="a", address="127.0.0.1", port=1)]})
    async with ServiceChannel.open(
        source, "health", channel_factory=lambda authority: _InstantChannel()
    ) as channel:
        through = channel.unary_unary("/grpc.health.v1.Health/Check")
        direct = _InstantChannel().unary_unary("/grpc.health.v1.Health/Check")
        await through(b"", timeout=5.0)
        best = {"proxyless": math.inf, "direct": math.inf}
        for _ in range(3 if quick else 5):
            for system, method in (("direct", direct), ("proxyless", through)):
                start = time.perf_counter_ns()
                for _ in range(calls):
                    await method(b"", timeout=5.0)
                best[system] = min(best[system], (time.perf_counter_ns() - start) / calls)
    return {
        "bench": BENCH,
        "system": "proxyless_layer",
        "us_per_call": round((best["proxyless"] - best["direct"]) / 1e3, 2),
        "calls": calls,
    }


def run(quick: bool) -> list[dict[str, Any]]:
    """Measures both systems against one backend process; JSON-ready rows."""
    with _backend() as port:
        return asyncio.run(_measure(port, quick))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_proxyless",
        description="Unary call overhead of a proxyless ServiceChannel against a direct "
        "grpc.aio channel; one JSON object per line.",
    )
    parser.add_argument("--quick", action="store_true", help="fewer calls and rounds")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(_serve())
        return 0
    for row in run(args.quick):
        print(json.dumps(row, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
