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
  relaying to the control plane on NATS.

The project's routes are measured through ``sdk.BusClient`` over gRPC, as an
application uses the bus (one client to publish, another to subscribe);
``direct-nats`` is a ``nats-py`` client on the same nats-server. The
``system`` of a line: ``embedded-memory``, ``embedded-sqlite``, ``nats`` (via
the control plane), ``relay-nats`` (via the relay) or ``direct-nats``.
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
acknowledgement ≥ 5,000 msgs/s on the embedded broker with SQLite; the
relay's core throughput ≥ 0.5 x the direct client's.
See docs/benchmarks.md, "Message bus".
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import contextlib
import ctypes
import json
import math
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks._report import Reporter, percentile
from benchmarks._servers import Server, ServerError, _eco_cli, cpu_seconds, free_port
from sdk import BusClient

__all__ = ["run"]

PAYLOAD = 128  # bytes
PUBLISH_WINDOW = 64  # core: publishes in flight
RECEIVE_WINDOW = 1_000  # core: published but not yet received
DURABLE_PUBLISHERS = 64
LATENCY_RATE = 1_000  # msgs/s
DURABLE_PUBLISH_BUDGET = 5_000  # msgs/s, embedded broker with SQLite
BUDGET_SYSTEM = "embedded-sqlite"
DIRECT = "direct-nats"
RELAY = "relay-nats"
RELAY_BUDGET = 0.5  # times the direct client's core msgs/s
_READY_TIMEOUT = 30.0
_DRAIN_TIMEOUT = 5.0  # for the last messages after the publisher stops
_PR_SET_PDEATHSIG = 1
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


# -- the processes -----------------------------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def nats_server_binary() -> str:
    found = shutil.which("nats-server") or shutil.which(
        "nats-server", path="/usr/sbin:/usr/local/sbin:/sbin"
    )
    if found is None:
        raise ServerError("nats-server not found: run scripts/install-nats.sh")
    return found


class NatsServer:
    """``nats-server -js`` on a free port with its store in ``workdir``; ready once it
    greets a client with JetStream on."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    def version(self) -> str:
        out = subprocess.run(
            [nats_server_binary(), "--version"], capture_output=True, timeout=10, check=False
        )
        return out.stdout.decode(errors="replace").strip().rpartition(" ")[2]

    def __enter__(self) -> NatsServer:
        binary = nats_server_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self._proc = subprocess.Popen(
            [
                binary,
                "--addr=127.0.0.1",
                f"--port={self.port}",
                "--server_name=eco-bench",
                "--jetstream",
                f"--store_dir={self.workdir / 'jetstream'}",
                f"--log={self.workdir / 'nats.log'}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + _READY_TIMEOUT
        while not self._ready():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise ServerError(f"nats-server did not start: {self._log_tail()}")
            time.sleep(0.02)
        return self

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                line = sock.makefile("rb").readline()
        except OSError:
            return False
        if not line.startswith(b"INFO "):
            return False
        try:
            return bool(json.loads(line[5:]).get("jetstream"))
        except ValueError:
            return False

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "nats.log").read_text(errors="replace")[-2000:]
        return "(no log)"

    def __exit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class BusControlPlane(Server):
    """``eco controlplane --store STORE --bus BUS``."""

    system = "ecosystem"

    def __init__(self, workdir: Path, store_url: str, bus_url: str) -> None:
        super().__init__(workdir)
        self.port = free_port()
        self.admin_port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.store_url = store_url
        self.bus_url = bus_url

    def command(self) -> list[str]:
        eco = _eco_cli()
        if eco is None:
            raise ServerError("the eco CLI is not installed: pip install -e '.[dev]'")
        self.launcher = "eco controlplane"
        return [
            eco,
            "controlplane",
            "--listen",
            self.target,
            "--admin-listen",
            f"127.0.0.1:{self.admin_port}",
            "--store",
            self.store_url,
            "--bus",
            self.bus_url,
        ]

    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}/healthz"


_ROOT = Path(__file__).resolve().parent.parent
# The relay runs in its temp dir, so it finds this module through argv[1].
_RUN_RELAY = (
    "import sys\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "from benchmarks.bench_bus import relay_main\n"
    "sys.exit(relay_main(sys.argv[2:]))\n"
)


def relay_available() -> bool:
    """Whether the sidecar's bus relay (``sidecar.relay.attach_relay``) is there."""
    try:
        from sidecar import relay
    except ImportError:
        return False
    return hasattr(relay, "RelayBroker") and hasattr(relay, "attach_relay")


class RelayProcess:
    """The sidecar's bus relay alone in its own process (what ``eco sidecar`` serves
    on its local API): ``MessagingService`` on a free port over a ``RelayBroker``
    to ``upstream``; ready once its port accepts connections."""

    def __init__(self, workdir: Path, upstream: str) -> None:
        self.workdir = workdir
        self.upstream = upstream
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    def __enter__(self) -> RelayProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        log = self.workdir / "relay.log"
        with open(log, "ab") as out:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _RUN_RELAY,
                    str(_ROOT),
                    str(self.port),
                    self.upstream,
                    str(self.workdir),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + _READY_TIMEOUT
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return self
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                tail = log.read_text(errors="replace")[-2000:]
                raise ServerError(f"the relay did not start: {tail}")
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def relay_main(argv: list[str]) -> int:
    """``PORT UPSTREAM DATA_DIR``: serves the relay until SIGTERM (the relay process)."""
    import grpc.aio

    from sidecar.relay import attach_relay

    port, upstream, data_dir = int(argv[0]), argv[1], Path(argv[2])

    async def serve() -> None:
        stopping = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
        server = grpc.aio.server()
        relay, _ = await attach_relay(server, [upstream], data_dir, lambda: False)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await stopping.wait()
        await server.stop(1.0)
        await relay.close()

    try:
        import uvloop  # as the sidecar runs
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(serve())
    else:
        uvloop.run(serve())
    return 0


# -- the clients: one interface over BusClient and nats-py -------------------------------------

Handler = Callable[[bytes], None]


class _Route(abc.ABC):
    """One way to the bus: publish, subscribe (core and durable), durable streams."""

    system = ""
    pids: dict[str, int]  # the processes serving it, by role

    async def __aenter__(self) -> _Route:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @abc.abstractmethod
    async def close(self) -> None:
        """Closes the route's clients."""

    @abc.abstractmethod
    async def publish(self, subject: str, data: bytes) -> None:
        """Core: returns once the message is handed over (sent, or buffered to send)."""

    @abc.abstractmethod
    async def publish_durable(self, subject: str, data: bytes) -> None:
        """Returns once the stream acknowledged it stored the message."""

    @abc.abstractmethod
    async def subscribe(self, subject: str, on_message: Handler) -> Callable[[], Awaitable[None]]:
        """Calls ``on_message`` with each payload; returns a function that unsubscribes."""

    @abc.abstractmethod
    async def consume(self, subject: str, durable: str, count: int) -> float:
        """Reads ``count`` stored messages with a new durable consumer, acknowledging
        each; returns the seconds from the subscription to the last acknowledgement."""

    @abc.abstractmethod
    async def add_stream(self, name: str, subjects: list[str]) -> None:
        """Creates a durable stream capturing ``subjects``."""


class _SdkRoute(_Route):
    def __init__(self, system: str, target: str, pids: dict[str, int]) -> None:
        self.system = system
        self.pids = pids
        self._pub = BusClient(target, timeout=30.0)
        self._sub = BusClient(target, timeout=30.0)

    async def close(self) -> None:
        await self._sub.close()
        await self._pub.close()

    async def publish(self, subject: str, data: bytes) -> None:
        await self._pub.send(subject, data)

    async def publish_durable(self, subject: str, data: bytes) -> None:
        await self._pub.publish(subject, data)

    publish_acked = publish_durable

    async def subscribe(self, subject: str, on_message: Handler) -> Callable[[], Awaitable[None]]:
        sub = await self._sub.subscribe(subject, buffer=RECEIVE_WINDOW * 2).start()

        async def read() -> None:
            async for message in sub:
                on_message(message.data)

        reader = asyncio.create_task(read(), name="bench-bus-reader")

        async def stop() -> None:
            await sub.close()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

        return stop

    async def consume(self, subject: str, durable: str, count: int) -> float:
        acks: list[asyncio.Task[bool]] = []
        started = time.perf_counter()
        async with self._sub.subscribe(
            subject, durable=durable, deliver="all", max_ack_pending=10_000, buffer=1_000
        ) as sub:
            async for message in sub:
                acks.append(asyncio.create_task(message.ack()))
                if len(acks) >= count:
                    break
            done = await asyncio.gather(*acks)
        if not all(done):
            raise ServerError(f"{self.system}: {done.count(False)} acknowledgements not taken")
        return time.perf_counter() - started

    async def add_stream(self, name: str, subjects: list[str]) -> None:
        await self._pub.add_stream(name, subjects)


class _NatsRoute(_Route):
    system = DIRECT

    def __init__(self, url: str, pid: int) -> None:
        self._url = url
        self.pids = {"nats_server": pid}
        self._pub: Any = None
        self._sub: Any = None

    async def __aenter__(self) -> _NatsRoute:
        import nats

        self._pub = await nats.connect(self._url)
        try:
            self._sub = await nats.connect(self._url)
        except BaseException:
            await self._pub.close()
            raise
        return self

    async def close(self) -> None:
        for conn in (self._sub, self._pub):
            if conn is not None:
                await conn.close()

    async def publish(self, subject: str, data: bytes) -> None:
        await self._pub.publish(subject, data)

    async def publish_durable(self, subject: str, data: bytes) -> None:
        await self._pub.jetstream().publish(subject, data)

    async def subscribe(self, subject: str, on_message: Handler) -> Callable[[], Awaitable[None]]:
        async def handle(msg: Any) -> None:
            on_message(msg.data)

        sub = await self._sub.subscribe(subject, cb=handle)
        await self._sub.flush()  # the server has the interest before the first publish

        async def stop() -> None:
            await sub.unsubscribe()

        return stop

    async def consume(self, subject: str, durable: str, count: int) -> float:
        got = 0
        finished = asyncio.get_running_loop().create_future()

        async def handle(msg: Any) -> None:
            nonlocal got
            await msg.ack()
            got += 1
            if got >= count and not finished.done():
                finished.set_result(None)

        js = self._sub.jetstream()
        started = time.perf_counter()
        sub = await js.subscribe(
            subject, durable=durable, cb=handle, manual_ack=True, pending_msgs_limit=100_000
        )
        try:
            await finished
            await self._sub.flush()  # the acknowledgements have reached the server
            return time.perf_counter() - started
        finally:
            await sub.unsubscribe()

    async def add_stream(self, name: str, subjects: list[str]) -> None:
        await self._pub.jetstream().add_stream(name=name, subjects=subjects)


# -- measurements --------------------------------------------------------------------------------


async def _core_throughput(route: _Route, seconds: float, *, acked: bool = False) -> dict[str, Any]:
    received = 0
    last_receipt = 0.0
    progress = asyncio.Event()

    def on_message(data: bytes) -> None:
        nonlocal received, last_receipt
        received += 1
        last_receipt = time.perf_counter()
        progress.set()

    stop = await route.subscribe("bench.core", on_message)
    publish = route.publish_acked if acked and isinstance(route, _SdkRoute) else route.publish
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


async def _core_latency(route: _Route, seconds: float) -> dict[str, Any]:
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


def _durable_names(route: _Route) -> tuple[str, str]:
    """The stream and subject prefix of a route: its own, as two routes share one
    nats-server (and the project may name JetStream streams as given)."""
    tag = route.system.replace("-", "_")
    return f"BENCH_{tag}", f"durable.{tag}"


async def _durable_publish(route: _Route, seconds: float) -> dict[str, Any]:
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


async def _durable_consume(route: _Route, count: int) -> dict[str, Any]:
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
    route: _Route, bench: str, figures: Figures, limit: float, work: Awaitable[dict[str, Any]]
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


async def _measure_route(route: _Route, sizes: _Sizes) -> Figures:
    figures: Figures = {}
    limit = sizes.seconds + 30
    _progress(f"{route.system}: core throughput")
    await _step(
        route, "bus_core_throughput", figures, limit, _core_throughput(route, sizes.seconds)
    )
    if isinstance(route, _SdkRoute):
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
        if bench == "bus_core_throughput" and system == RELAY:
            ratio = line.get("ratio_to_direct_nats", math.nan)
            line.update(budget=RELAY_BUDGET, budget_op=">=", within_budget=ratio >= RELAY_BUDGET)
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
    routes: list[tuple[str, Callable[[], _Route]]],
    sizes: _Sizes,
    emit: Callable[[dict[str, Any]], None],
) -> None:
    """Each route in turn, the direct client first (the ratios need its figures)."""
    direct: Figures = {}
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
        relay: RelayProcess | None = None
        relay_note = "not measured: sidecar.relay is not there"
        if relay_available():
            _progress("the sidecar relay, to the control plane on NATS")
            try:
                relay = stack.enter_context(RelayProcess(workdir / "relay", planes["nats"].target))
                relay_note = "relay-nats: app → relay → control plane → nats-server"
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
        routes: list[tuple[str, Callable[[], _Route]]] = [
            (DIRECT, lambda: _NatsRoute(nats.url, nats.pid)),
            *(
                (system, lambda s=system, p=plane: _SdkRoute(s, p.target, _pids(p, s, nats)))
                for system, plane in planes.items()
            ),
        ]
        if relay is not None:
            pids = _pids(planes["nats"], "nats", nats) | {"relay": relay.pid}
            target = relay.target
            routes.append((RELAY, lambda: _SdkRoute(RELAY, target, pids)))
        asyncio.run(_measure_all(routes, sizes, collect))
        for plane in planes.values():
            plane.check_alive()
    return rows


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_bus",
        description="The message bus through the control plane (embedded and NATS) beside "
        "a direct nats-py client: msgs/s and latency; one JSON object per line.",
    )
    parser.add_argument("--quick", action="store_true", help="2 s per measurement (full: 5 s)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    reporter = Reporter(None)
    try:
        run(args.quick, emit=reporter.emit)
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        _progress("interrupted; everything started was stopped")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
