"""Message bus: 128-byte messages through the control plane, beside a direct nats-py client.

``python -m benchmarks.bench_bus [--quick]`` (or ``python -m benchmarks --only
bus``) prints one JSON object per line; ``run(quick)`` returns the same
objects. Everything is a real process on free 127.0.0.1 ports in a temporary
directory, stopped at the end (also on an error or Ctrl-C):

- ``nats-server -js`` (``scripts/install-nats.sh`` installs it);
- three ``eco controlplane`` processes: ``--store memory:// --bus embedded://``
  (durable streams in memory), ``--store sqlite://TMP/cp.db --bus
  embedded://`` (durable streams in ``bus/bus.db`` beside it, written before
  a publish returns) and ``--store memory:// --bus nats://…`` (JetStream on
  that nats-server);
- when ``sidecar.relay`` is there, the sidecar's bus relay in its own process
  (``attach_relay`` on a gRPC server, as the sidecar's local API serves it),
  twice: relaying straight to nats-server (as a sidecar does once its control
  plane names NATS in its session; the control plane on NATS is not in the
  path), and to the control plane on SQLite (the embedded broker).

The project's routes are measured through ``sdk.BusClient`` over gRPC, as an
application uses the bus (one client to publish, another to subscribe);
``direct-nats`` is a ``nats-py`` client on the same nats-server. The
``system`` of a line: ``embedded-memory``, ``embedded-sqlite``, ``nats`` (via
the control plane), ``relay-nats`` (via the relay, straight to NATS),
``relay-embedded`` (via the relay, to the control plane on the embedded
broker with SQLite) or ``direct-nats``.
Measurements (128-byte payloads):

- ``bus_core_throughput``: one publisher, one subscriber on ``bench.core``;
  the publisher keeps at most 64 publishes in flight and at most 1,000
  messages published but not yet received; msgs/s received from the first
  publish to the last receipt. A publish is handed over without waiting for
  an answer, as nats-py's ``publish`` does: ``BusClient.send``.
- ``bus_core_throughput_acked`` (the project's routes only): the same, each
  publish awaiting the control plane's answer (``BusClient.publish``), so
  at most 64 messages are on their way at once.
- ``bus_core_latency``: an open-loop publisher at 1,000 msgs/s; latency from
  each message's scheduled send time (in its payload) to its receipt.
- ``bus_durable_publish``: a stream captures ``durable.<route>.>``; 64 concurrent
  publishers each await their publish's acknowledgement (stored) before the
  next; msgs/s acknowledged. Direct: ``JetStreamContext.publish``.
- ``bus_durable_consume``: a new durable consumer reads those messages from
  the start and acknowledges each (acknowledgements not awaited one by one:
  the SDK batches them; nats-py sends each as a publish); msgs/s.

Each line from the project carries ``ratio_to_direct_nats`` (its value ÷ the
direct client's for the same measurement; for latency, of p50), and every
line the CPU used meanwhile by this process and each serving process.
Budgets (``within_budget`` on the line): durable publish with
acknowledgement ≥ 5,000 msgs/s on the embedded broker with SQLite; through
the relay to NATS: core throughput ≥ 0.5 x the direct client's, durable
publish with acknowledgement ≥ 0.5 x the direct JetStream publish, and p99
at 1,000 msgs/s ≤ 2 x the direct client's. A ``bus_relay_budgets`` line at
the end sums the three up.
See docs/benchmarks.md, "Message bus".
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._bus_processes import (
    BusControlPlane,
    NatsServer,
    RelayProcess,
    nats_server_binary,
    relay_available,
)
from benchmarks._bus_routes import DIRECT, RECEIVE_WINDOW, NatsRoute, Route, SdkRoute
from benchmarks._cli import streaming_main
from benchmarks._report import percentile
from benchmarks._servers import ServerError, cpu_seconds

__all__ = ["run"]

PAYLOAD = 128  # bytes
PUBLISH_WINDOW = 64  # core: publishes in flight
DURABLE_PUBLISHERS = 64
LATENCY_RATE = 1_000  # msgs/s
DURABLE_PUBLISH_BUDGET = 5_000  # msgs/s, embedded broker with SQLite
BUDGET_SYSTEM = "embedded-sqlite"
RELAY = "relay-nats"
RELAY_EMBEDDED = "relay-embedded"
#: Budgets of the relay to NATS, each against the direct client's figure:
#: (the figure's key, the operator, the bound); the latency one is of p99.
RELAY_BUDGETS = {
    "bus_core_throughput": ("ratio_to_direct_nats", ">=", 0.5),
    "bus_durable_publish": ("ratio_to_direct_nats", ">=", 0.5),
    "bus_core_latency": ("ratio_to_direct_nats_p99", "<=", 2.0),
}
_DRAIN_TIMEOUT = 5.0  # for the last messages after the publisher stops
_STAMP = struct.Struct("<q")


@dataclass(frozen=True)
class _Sizes:
    seconds: float  # per route, per measurement
    latency_seconds: float
    consume_cap: int  # most messages a durable consumer reads


QUICK = _Sizes(seconds=2.0, latency_seconds=2.0, consume_cap=10_000)
FULL = _Sizes(seconds=5.0, latency_seconds=5.0, consume_cap=50_000)


def _progress(text: str) -> None:
    print(f"[bus] {text}", file=sys.stderr, flush=True)


async def _until(done: Callable[[], bool], progress: asyncio.Event, timeout: float) -> None:
    """Waits until ``done()`` (checked whenever ``progress`` is set), at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not done() and (remaining := deadline - time.monotonic()) > 0:
        progress.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(progress.wait(), remaining)


def _payload(stamp: int = 0) -> bytes:
    return _STAMP.pack(stamp) + b"x" * (PAYLOAD - _STAMP.size)


# -- measurements --------------------------------------------------------------------------------


async def _core_throughput(route: Route, seconds: float, *, acked: bool = False) -> dict[str, Any]:
    received = 0
    last_receipt = 0.0
    progress = asyncio.Event()

    def on_message(data: bytes) -> None:
        nonlocal received, last_receipt
        received += 1
        last_receipt = time.perf_counter()
        progress.set()

    stop = await route.subscribe("bench.core", on_message)
    publish = route.publish_acked if acked and isinstance(route, SdkRoute) else route.publish
    data = _payload()
    slots = asyncio.Semaphore(PUBLISH_WINDOW)
    in_flight: set[asyncio.Task[None]] = set()
    errors = 0

    def done(task: asyncio.Task[None]) -> None:
        nonlocal errors
        in_flight.discard(task)
        slots.release()
        if not task.cancelled() and task.exception() is not None:
            errors += 1

    published = 0
    started = time.perf_counter()
    until = started + seconds
    try:
        while time.perf_counter() < until:
            if published - received >= RECEIVE_WINDOW:
                progress.clear()
                # A core message may be dropped: never wait for one forever.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(progress.wait(), 0.5)
                continue
            await slots.acquire()
            task = asyncio.create_task(publish("bench.core", data))
            in_flight.add(task)
            task.add_done_callback(done)
            published += 1
        if in_flight:
            await asyncio.wait(set(in_flight))
        await _until(lambda: received >= published - errors, progress, _DRAIN_TIMEOUT)
    finally:
        await stop()
    elapsed = (last_receipt or time.perf_counter()) - started
    return {
        "msgs_per_s": received / elapsed if elapsed > 0 else math.nan,
        "published": published,
        "received": received,
        "lost": published - errors - received,
        "errors": errors,
        "publish_window": PUBLISH_WINDOW,
        "receive_window": RECEIVE_WINDOW,
        "seconds": elapsed,
    }


async def _core_latency(route: Route, seconds: float) -> dict[str, Any]:
    clock = time.perf_counter_ns
    latencies: list[float] = []
    progress = asyncio.Event()
    interval_ns = 1_000_000_000 // LATENCY_RATE
    total = int(seconds * LATENCY_RATE)
    warmup = LATENCY_RATE // 5  # the first 0.2 s are not counted
    first = clock() + 10_000_000
    counted_from = first + warmup * interval_ns

    def on_message(data: bytes) -> None:
        stamp = _STAMP.unpack_from(data)[0]
        if stamp >= counted_from:
            latencies.append((clock() - stamp) / 1e6)
            progress.set()

    stop = await route.subscribe("bench.latency", on_message)
    pending: set[asyncio.Task[None]] = set()
    errors = 0

    def done(task: asyncio.Task[None]) -> None:
        nonlocal errors
        pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            errors += 1

    try:
        for n in range(total + warmup):
            scheduled = first + n * interval_ns
            delay = (scheduled - clock()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            # Open loop: each publish on its own task, stamped with its scheduled time.
            task = asyncio.create_task(route.publish("bench.latency", _payload(scheduled)))
            pending.add(task)
            task.add_done_callback(done)
        if pending:
            await asyncio.wait(set(pending))
        await _until(lambda: len(latencies) >= total - errors, progress, _DRAIN_TIMEOUT)
    finally:
        await stop()
    ordered = sorted(latencies)
    return {
        "rate": LATENCY_RATE,
        "p50_ms": percentile(ordered, 50),
        "p90_ms": percentile(ordered, 90),
        "p99_ms": percentile(ordered, 99),
        "max_ms": ordered[-1] if ordered else math.nan,
        "mean_ms": statistics.fmean(ordered) if ordered else math.nan,
        "samples": len(ordered),
        "scheduled": total,
        "errors": errors,
        "seconds": seconds,
    }


def _durable_names(route: Route) -> tuple[str, str]:
    """The stream and subject prefix of a route: its own, as two routes share one
    nats-server (and the project may name JetStream streams as given)."""
    tag = route.system.replace("-", "_")
    return f"BENCH_{tag}", f"durable.{tag}"


async def _durable_publish(route: Route, seconds: float) -> dict[str, Any]:
    stream, prefix = _durable_names(route)
    await route.add_stream(stream, [f"{prefix}.>"])
    data = _payload()
    latencies: list[float] = []
    errors: list[str] = []
    until = time.perf_counter() + seconds

    async def publisher(index: int) -> None:
        subject = f"{prefix}.p{index}"
        while time.perf_counter() < until:
            start = time.perf_counter()
            try:
                await route.publish_durable(subject, data)
            except Exception as exc:  # counted and reported, not fatal to the others
                errors.append(type(exc).__name__)
                continue
            latencies.append((time.perf_counter() - start) * 1e3)

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for index in range(DURABLE_PUBLISHERS):
            group.create_task(publisher(index))
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "msgs_per_s": len(ordered) / elapsed,
        "acknowledged": len(ordered),
        "p50_ms": percentile(ordered, 50),
        "p99_ms": percentile(ordered, 99),
        "publishers": DURABLE_PUBLISHERS,
        "errors": len(errors),
        "error_types": sorted(set(errors)),
        "seconds": elapsed,
    }


async def _durable_consume(route: Route, count: int) -> dict[str, Any]:
    _, prefix = _durable_names(route)
    seconds = await route.consume(f"{prefix}.>", "bench", count)
    return {"msgs_per_s": count / seconds, "messages": count, "seconds": seconds}


_VALUE = {
    "bus_core_throughput": "msgs_per_s",
    "bus_core_throughput_acked": "msgs_per_s",
    "bus_core_latency": "p50_ms",
    "bus_durable_publish": "msgs_per_s",
    "bus_durable_consume": "msgs_per_s",
}
Figures = dict[str, dict[str, Any]]  # bench → its figures (or {"error": …})


async def _step(
    route: Route, bench: str, figures: Figures, limit: float, work: Awaitable[dict[str, Any]]
) -> None:
    """One measurement within ``limit`` seconds; a failure is that bench's error only."""
    client = time.process_time()
    servers = {role: cpu_seconds(pid) for role, pid in route.pids.items()}
    wall = time.perf_counter()
    try:
        async with asyncio.timeout(limit):
            figures[bench] = row = await work
        wall = time.perf_counter() - wall
        # Where the CPU went, in vCPU over the measurement (the client included).
        row["client_vcpu"] = (time.process_time() - client) / wall
        row["server_vcpu"] = {
            role: (cpu_seconds(pid) - servers[role]) / wall for role, pid in route.pids.items()
        }
    except Exception as exc:  # reported on the line; the other measurements go on
        _progress(f"{bench} failed: {exc!r}")
        figures[bench] = {
            "error": repr(exc)
            if not isinstance(exc, TimeoutError)
            else f"no result within {limit:.0f}s"
        }


async def _measure_route(route: Route, sizes: _Sizes) -> Figures:
    figures: Figures = {}
    limit = sizes.seconds + 30
    _progress(f"{route.system}: core throughput")
    await _step(
        route, "bus_core_throughput", figures, limit, _core_throughput(route, sizes.seconds)
    )
    if isinstance(route, SdkRoute):
        _progress(f"{route.system}: core throughput, each publish awaited")
        work = _core_throughput(route, sizes.seconds, acked=True)
        await _step(route, "bus_core_throughput_acked", figures, limit, work)
    _progress(f"{route.system}: core latency at {LATENCY_RATE}/s")
    await _step(
        route, "bus_core_latency", figures, limit, _core_latency(route, sizes.latency_seconds)
    )
    _progress(f"{route.system}: durable publish, {DURABLE_PUBLISHERS} publishers")
    await _step(
        route, "bus_durable_publish", figures, limit, _durable_publish(route, sizes.seconds)
    )
    count = min(figures["bus_durable_publish"].get("acknowledged", 0), sizes.consume_cap)
    if count:
        _progress(f"{route.system}: durable consume of {count}")
        await _step(route, "bus_durable_consume", figures, limit, _durable_consume(route, count))
    else:
        figures["bus_durable_consume"] = {"error": "nothing was published to consume"}
    return figures


def _rows(system: str, figures: Figures, direct: Figures) -> list[dict[str, Any]]:
    """The result lines of one route, with ratios to the direct client's figures."""
    rows: list[dict[str, Any]] = []
    for bench, row in figures.items():
        line: dict[str, Any] = {"bench": bench, "system": system, "payload_bytes": PAYLOAD}
        line |= row
        peer = direct.get(bench, {})
        key = _VALUE[bench]
        if system != DIRECT and "error" not in row and peer.get(key):
            line["ratio_to_direct_nats"] = row[key] / peer[key]
            line["direct_nats"] = peer[key]
            if bench == "bus_core_latency" and peer.get("p99_ms"):
                line["ratio_to_direct_nats_p99"] = row["p99_ms"] / peer["p99_ms"]
        if system == RELAY and bench in RELAY_BUDGETS:
            key, op, bound = RELAY_BUDGETS[bench]
            ratio = line.get(key, math.nan)
            within = ratio >= bound if op == ">=" else ratio <= bound
            line.update(budget=bound, budget_op=op, budget_of=key, within_budget=within)
        if bench == "bus_durable_publish" and system == BUDGET_SYSTEM:
            value = row.get("msgs_per_s", math.nan)
            line.update(
                budget=DURABLE_PUBLISH_BUDGET,
                budget_op=">=",
                within_budget=value >= DURABLE_PUBLISH_BUDGET and not row.get("errors"),
            )
        rows.append(line)
    return rows


async def _measure_all(
    routes: list[tuple[str, Callable[[], Route]]],
    sizes: _Sizes,
    emit: Callable[[dict[str, Any]], None],
) -> None:
    """Each route in turn, the direct client first (the ratios need its figures)."""
    direct: Figures = {}
    budgets: dict[str, dict[str, Any]] = {}
    for system, make in routes:
        try:
            async with make() as route:
                figures = await _measure_route(route, sizes)
        except Exception as exc:  # one route failing leaves the others' figures
            _progress(f"{system} failed: {exc!r}")
            figures = {bench: {"error": repr(exc)} for bench in _VALUE}
        if system == DIRECT:
            direct = figures
        for row in _rows(system, figures, direct):
            emit(row)
            if row["system"] == RELAY and row["bench"] in RELAY_BUDGETS:
                budgets[row["bench"]] = row
    if budgets:
        emit(_relay_summary(budgets))


def _relay_summary(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One line with the relay's three budgets: each ratio, its bound, and whether
    it held."""
    line: dict[str, Any] = {"bench": "bus_relay_budgets", "system": RELAY}
    for bench, (key, op, bound) in RELAY_BUDGETS.items():
        row = rows.get(bench, {})
        line[bench] = {
            "ratio": row.get(key, math.nan),
            "budget_op": op,
            "budget": bound,
            "within_budget": bool(row.get("within_budget", False)),
        }
    line["within_budget"] = all(v["within_budget"] for v in line.values() if isinstance(v, dict))
    return line


def _pids(plane: BusControlPlane, system: str, nats: NatsServer) -> dict[str, int]:
    pids = {"controlplane": plane.pid}
    if system == "nats":
        pids["nats_server"] = nats.pid
    return pids


@contextlib.contextmanager
def _processes(workdir: Path) -> Iterator[tuple[NatsServer, dict[str, BusControlPlane]]]:
    with contextlib.ExitStack() as stack:
        _progress("nats-server -js")
        nats = stack.enter_context(NatsServer(workdir / "nats"))
        planes = {
            "embedded-memory": BusControlPlane(workdir / "cp-memory", "memory://", "embedded://"),
            "embedded-sqlite": BusControlPlane(
                workdir / "cp-sqlite", f"sqlite://{workdir / 'cp-sqlite' / 'cp.db'}", "embedded://"
            ),
            "nats": BusControlPlane(workdir / "cp-nats", "memory://", nats.url),
        }
        for system, plane in planes.items():
            _progress(f"eco controlplane for {system}")
            stack.enter_context(plane)
        yield nats, planes


def run(quick: bool, emit: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Runs every measurement; every process started is stopped on the way out.
    Rows are also passed to ``emit`` as they come. Raises ServerError when
    nats-server or the eco CLI is missing or a process cannot start."""
    nats_server_binary()
    sizes = QUICK if quick else FULL
    rows: list[dict[str, Any]] = []

    def collect(row: dict[str, Any]) -> None:
        rows.append(row)
        if emit is not None:
            emit(row)

    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="eco-bench-bus-")))
        nats, planes = stack.enter_context(_processes(workdir))
        relays: dict[str, tuple[RelayProcess, str]] = {}  # system -> relay, its plane's system
        relay_note = "not measured: sidecar.relay is not there"
        if relay_available():
            _progress("the sidecar relay, straight to NATS and to the control plane on SQLite")
            try:
                for system, behind, broker in (
                    (RELAY, "nats", nats.url),
                    (RELAY_EMBEDDED, BUDGET_SYSTEM, ""),
                ):
                    process = RelayProcess(workdir / system, planes[behind].target, broker)
                    relays[system] = (stack.enter_context(process), behind)
                relay_note = (
                    "relay-nats: app → relay → nats-server (the control plane on NATS "
                    "is not in the path); "
                    "relay-embedded: app → relay → control plane (embedded broker, SQLite)"
                )
            except ServerError as exc:
                relay_note = f"the relay did not start: {str(exc)[-300:]}"
                _progress(relay_note)
        collect(
            {
                "bench": "bus_setup",
                "quick": quick,
                "cores": os.cpu_count(),
                "nats_server": nats.version(),
                "payload_bytes": PAYLOAD,
                "relay": relay_note,
            }
        )
        routes: list[tuple[str, Callable[[], Route]]] = [
            (DIRECT, lambda: NatsRoute(nats.url, nats.pid)),
            *(
                (system, lambda s=system, p=plane: SdkRoute(s, p.target, _pids(p, s, nats)))
                for system, plane in planes.items()
            ),
        ]
        for system, (relay, behind) in relays.items():
            # relay-nats lists the control plane on NATS too: it should stay idle.
            pids = _pids(planes[behind], behind, nats) | {"relay": relay.pid}
            routes.append((system, functools.partial(SdkRoute, system, relay.target, pids)))
        asyncio.run(_measure_all(routes, sizes, collect))
        for plane in planes.values():
            plane.check_alive()
    return rows


def main(argv: list[str] | None = None) -> int:
    return streaming_main(
        argv,
        name="bus",
        description="The message bus through the control plane (embedded and NATS) beside "
        "a direct nats-py client: msgs/s and latency; one JSON object per line.",
        quick_help="2 s per measurement (full: 5 s)",
        run=run,
    )


if __name__ == "__main__":
    sys.exit(main())
