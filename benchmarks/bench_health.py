"""Health-check CPU: 1,000 HTTP and 1,000 TCP checks at 1 s intervals, in one engine.

``python -m benchmarks.bench_health [--quick] [--loop asyncio|uvloop]…`` prints
one JSON object per line::

    {"bench": "health_checks", "kind": "http", "loop": "asyncio", "checks": 1000,
     "cpu_percent_of_one_core": 6.1, "budget": 10, "within_budget": true, ...}

Three processes per measurement, so that only the engine's CPU is counted:
this one (the harness), a target (an HTTP server, or a TCP listener that
accepts and closes), and the engine, which starts its checks, lets them run
for a warm-up, then reads its own user+system CPU time (``resource.getrusage``)
over 5 s windows and reports the median window as a percentage of one core
(and the mean over the whole run, and every window).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

BENCH = "health_checks"
BUDGET_PERCENT = 10.0
CHECKS = 1_000
INTERVAL = "1s"
TIMEOUT = "500ms"
KINDS = ("http", "tcp")
LOOPS = ("asyncio", "uvloop")
HTTP_CLIENTS = ("lean", "session")
WINDOW = 5.0  # seconds per measured window
_ROOT = Path(__file__).resolve().parent.parent


def run(quick: bool, loops: tuple[str, ...] = LOOPS) -> list[dict[str, Any]]:
    """Measures every kind on every loop; returns one result dict per measurement.

    HTTP is measured twice: with the checker's default client for plain
    HTTP (the built-in HTTP/1.1 one) and with the general client session it
    uses for HTTPS, for comparison.
    """
    warmup, seconds = (3.0, 6.0) if quick else (5.0, 20.0)
    results: list[dict[str, Any]] = []
    for kind in KINDS:
        clients = HTTP_CLIENTS if kind == "http" else ("",)
        with _target(kind) as port:
            for client in clients:
                for loop in loops:
                    results.append(_measure(kind, loop, port, warmup, seconds, client))
    return results


def _measure(
    kind: str, loop: str, port: int, warmup: float, seconds: float, client: str
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.bench_health",
        "--engine",
        kind,
        "--port",
        str(port),
        "--loop",
        loop,
        "--warmup",
        str(warmup),
        "--seconds",
        str(seconds),
    ]
    if client:
        cmd += ["--http-client", client]
    what = f"{kind} ({client} client)" if client else kind
    _progress(f"{what} checks x{CHECKS} on {loop}: {warmup:g}s warm-up, {seconds:g}s measured")
    done = subprocess.run(
        cmd, cwd=_ROOT, capture_output=True, text=True, timeout=warmup + seconds + 60, check=False
    )
    if done.returncode != 0:
        error = done.stderr.strip()[-2000:]
        return {"bench": BENCH, "kind": kind, "loop": loop, "http_client": client, "error": error}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@contextmanager
def _target(kind: str) -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.bench_health", "--serve", kind],
        cwd=_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {kind} target did not start")
        yield int(line)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _progress(text: str) -> None:
    print(f"[bench_health] {text}", file=sys.stderr, flush=True)


# -- the target process ---------------------------------------------------------


async def _serve(kind: str) -> None:
    if kind == "http":
        from aiohttp import web

        async def health(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/health", health)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        port = server.sockets[0].getsockname()[1]
    else:

        def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        tcp = await asyncio.start_server(accept, "127.0.0.1", 0, backlog=4096)
        port = tcp.sockets[0].getsockname()[1]
    print(port, flush=True)
    await asyncio.Event().wait()


# -- the engine process ---------------------------------------------------------


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _engine(
    kind: str, port: int, loop: str, warmup: float, seconds: float, client: str
) -> dict[str, Any]:
    from sidecar.health import HealthEngine, NetworkHealthChecker, parse_check

    checks = []
    for i in range(CHECKS):
        if kind == "http":
            spec: dict[str, Any] = {"http": f"http://127.0.0.1:{port}/health?check={i}"}
        else:
            spec = {"tcp": f"127.0.0.1:{port}", "name": f"tcp-{i}"}
        checks.append(parse_check({**spec, "interval": INTERVAL, "timeout": TIMEOUT}))
    checker = NetworkHealthChecker(lean_http=client != "session")
    async with HealthEngine(checker) as engine:
        for i, config in enumerate(checks):
            engine.add(f"instance-{i}", config)
        await asyncio.sleep(warmup)
        started, cpu0, probes0 = time.monotonic(), _cpu_seconds(), engine.probes_started
        windows: list[float] = []
        count = max(1, round(seconds / WINDOW))
        for _ in range(count):
            w_start, w_cpu = time.monotonic(), _cpu_seconds()
            await asyncio.sleep(seconds / count)
            windows.append(100.0 * (_cpu_seconds() - w_cpu) / (time.monotonic() - w_start))
        elapsed = time.monotonic() - started
        cpu = _cpu_seconds() - cpu0
        probes = engine.probes_started - probes0
        passing = sum(1 for i in range(CHECKS) if engine.status(f"instance-{i}") == "PASSING")
    # The median of the windows: a burst of other work on the machine in one
    # window does not make the figure; the mean over the run is reported too.
    percent = statistics.median(windows)
    comparison = client == "session"
    await checker.close()
    return {
        "bench": BENCH,
        "kind": kind,
        "loop": loop,
        "http_client": client,
        "checks": CHECKS,
        "interval": INTERVAL,
        "timeout": TIMEOUT,
        "seconds": round(elapsed, 1),
        "probes_per_s": round(probes / elapsed, 1),
        "passing": passing,
        "cpu_percent_of_one_core": round(percent, 2),
        "cpu_percent_mean": round(100.0 * cpu / elapsed, 2),
        "cpu_percent_windows": [round(w, 2) for w in windows],
        # The session rows compare clients; the budget is for what runs by default.
        "budget": None if comparison else BUDGET_PERCENT,
        "within_budget": None if comparison else percent <= BUDGET_PERCENT,
        "cores": os.cpu_count(),
        # Other work on the machine inflates CPU time (shared caches, a
        # virtual CPU descheduled mid-slice); this says how busy it was.
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "python": sys.version.split()[0],
    }


def _run_loop(main: Coroutine[Any, Any, Any], loop: str) -> Any:
    if loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_health", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--loop", action="append", choices=LOOPS, help="event loop (repeatable)")
    # The harness runs this module again in two internal roles.
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--engine", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=float, default=5.0, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=20.0, help=argparse.SUPPRESS)
    parser.add_argument("--http-client", choices=HTTP_CLIENTS, default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        with suppress(KeyboardInterrupt):
            _run_loop(_serve(args.serve), "asyncio")
        return 0
    loop = (args.loop or ["asyncio"])[0]
    if args.engine:
        main = _engine(args.engine, args.port, loop, args.warmup, args.seconds, args.http_client)
        result = _run_loop(main, loop)
        print(json.dumps(result), flush=True)
        return 0
    for line in run(args.quick, tuple(args.loop or LOOPS)):
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
