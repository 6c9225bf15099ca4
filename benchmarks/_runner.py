"""The benchmarks themselves: which servers to start, which load to apply.

Two phases, each run once per system on a fresh server:

- ``registrations``: N client processes x C concurrent callers register
  distinct instances (leased: one lease per client; persistent: none);
- the state phase: load 10,000 leased instances, time a snapshot of them to
  one watcher, attach 1,000 watch streams, send spaced single changes and
  measure when each watcher receives each one, read the server's RSS.

The servers and every worker process are stopped on the way out, whether the
run ends, fails or is interrupted.
"""

from __future__ import annotations

import contextlib
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._report import Reporter, median, percentile
from benchmarks._servers import (
    ControlPlaneServer,
    EtcdServer,
    Server,
    ServerError,
    cpu_seconds,
    peak_rss_bytes,
    rss_bytes,
)
from benchmarks._workers import (
    Child,
    RegisterJob,
    SnapshotJob,
    WatchJob,
    WorkerError,
    WriteJob,
    register_worker,
    snapshot_worker,
    watch_worker,
    write_worker,
)

__all__ = ["BENCHES", "FULL", "QUICK", "SYSTEMS", "Runner", "Sizes"]

BENCHES = ("registrations", "watch_latency", "snapshot", "rss")
SYSTEMS = ("ecosystem", "etcd")
_STATE_BENCHES = ("snapshot", "watch_latency", "rss")


@dataclass(frozen=True)
class Sizes:
    # registrations
    registrations: int = 20_000
    reg_clients: int = 4
    reg_concurrency: int = 50
    services: int = 100
    lease_ttl: int = 900  # long enough that no lease expires during the run
    # the state phase
    instances: int = 10_000
    snapshot_repeats: int = 5
    watchers: int = 1_000
    watch_clients: int = 4
    watch_channels: int = 5  # per watching process
    warmup_changes: int = 2
    changes: int = 20
    change_interval: float = 0.25  # seconds between two changes


FULL = Sizes()
QUICK = Sizes(
    registrations=2_000,
    reg_clients=2,
    reg_concurrency=20,
    instances=1_000,
    snapshot_repeats=3,
    watchers=100,
    watch_clients=2,
    watch_channels=2,
    changes=5,
    change_interval=0.1,
)


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _mb(nbytes: int) -> float:
    return nbytes / 1e6


class Runner:
    def __init__(
        self,
        sizes: Sizes,
        reporter: Reporter,
        workdir: Path,
        *,
        benches: tuple[str, ...] = BENCHES,
        systems: tuple[str, ...] = SYSTEMS,
    ) -> None:
        self.sizes = sizes
        self.reporter = reporter
        self.workdir = workdir
        self.benches = benches
        self.systems = systems
        self._servers = 0

    def run(self) -> None:
        if "registrations" in self.benches:
            for leased in (True, False):
                bench = "registrations_" + ("ephemeral" if leased else "persistent")
                for system in self.systems:
                    self._guarded((bench,), system, self._registrations, system, bench, leased)
                self.reporter.ratio(bench)
        state = tuple(b for b in _STATE_BENCHES if b in self.benches)
        if state:
            for system in self.systems:
                self._guarded(state, system, self._state, system, state)
            for bench in state:
                self.reporter.ratio(bench)

    def _guarded(
        self, benches: tuple[str, ...], system: str, work: Callable[..., None], *args: Any
    ) -> None:
        """Runs one phase; a failure is reported as an error line and the run goes on."""
        try:
            work(*args)
        except (ServerError, WorkerError, OSError) as exc:
            _progress(f"{', '.join(benches)} on {system} failed: {exc}")
            for bench in benches:
                self.reporter.error(bench, system, (str(exc).splitlines() or [repr(exc)])[0])
        except Exception as exc:
            _progress(f"{', '.join(benches)} on {system} failed:\n{traceback.format_exc()}")
            for bench in benches:
                self.reporter.error(bench, system, repr(exc))

    # -- servers and workers -----------------------------------------------------

    @contextlib.contextmanager
    def _server(self, system: str) -> Iterator[Server]:
        self._servers += 1
        workdir = self.workdir / f"{self._servers:02d}-{system}"
        server: Server = (
            ControlPlaneServer(workdir) if system == "ecosystem" else EtcdServer(workdir)
        )
        _progress(f"starting {system}")
        with server:
            _progress(f"{system} ({server.launcher}) serving on {server.target}, pid {server.pid}")
            try:
                yield server
            finally:
                _progress(f"stopping {system}")

    def _details(self, server: Server) -> dict[str, Any]:
        if server.system == "ecosystem":
            return {"launcher": server.launcher, "store": "sqlite"}
        return {"launcher": server.launcher}

    def _register_load(
        self,
        stack: contextlib.ExitStack,
        server: Server,
        namespace: str,
        total: int,
        *,
        leased: bool,
        token: str = "",
    ) -> dict[str, Any]:
        """``total`` distinct registrations from the client processes; their rate.
        ``token``: an ACL secret every call sends."""
        s = self.sizes
        clients = max(1, min(s.reg_clients, total))
        children: list[Child] = []
        first = 0
        for i, count in enumerate(_split(total, clients)):
            job = RegisterJob(
                system=server.system,
                target=server.target,
                namespace=namespace,
                first=first,
                count=count,
                concurrency=s.reg_concurrency,
                services=s.services,
                leased=leased,
                lease_ttl=s.lease_ttl,
                token=token,
            )
            first += count
            child = Child(f"{server.system}-register-{i}", register_worker, job)
            stack.callback(child.stop)
            children.append(child)
        for child in children:
            child.expect("ready", 120)
        cpu_before = cpu_seconds(server.pid)
        for child in children:
            child.send(("go", None))
        results = [child.expect("done", max(120.0, total / 100)) for child in children]
        server_cpu = cpu_seconds(server.pid) - cpu_before
        for child in children:
            child.stop()
        server.check_alive()
        count = sum(r["count"] for r in results)
        seconds = max(r["end"] for r in results) - min(r["start"] for r in results)
        calls = sorted(x * 1000 for r in results for x in r["latencies"])
        return {
            "rate": count / seconds,
            "registrations": count,
            "seconds": seconds,
            "clients": clients,
            "concurrency_per_client": s.reg_concurrency,
            "call_p50_ms": percentile(calls, 50),
            "call_p99_ms": percentile(calls, 99),
            "server_cpu_s": server_cpu,
        }

    # -- benchmarks --------------------------------------------------------------

    def _registrations(self, system: str, bench: str, leased: bool) -> None:
        s = self.sizes
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(self._server(system))
            _progress(f"{bench}: {s.registrations} registrations against {system}")
            load = self._register_load(stack, server, "reg", s.registrations, leased=leased)
            rate = load.pop("rate")
            self.reporter.measurement(
                bench,
                system,
                rate,
                "registrations/s",
                leased=leased,
                leases="one per client" if leased else "none",
                **load,
                **self._details(server),
            )

    def _state(self, system: str, benches: tuple[str, ...]) -> None:
        s = self.sizes
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(self._server(system))
            rss_empty = rss_bytes(server.pid)
            _progress(f"loading {s.instances} leased instances into {system}")
            preload = self._register_load(stack, server, "bench", s.instances, leased=True)
            time.sleep(0.5)
            rss_loaded = rss_bytes(server.pid)

            if "snapshot" in benches:
                self._snapshot(stack, server, preload["rate"])

            if "watch_latency" not in benches and "rss" not in benches:
                return
            watchers, attach_s = self._attach_watchers(stack, server)
            time.sleep(1.0)
            rss_attached = rss_bytes(server.pid)
            if "watch_latency" in benches:
                self._watch_latency(stack, server, watchers, attach_s)
            rss_after = rss_bytes(server.pid)
            server.check_alive()
            if "rss" in benches:
                rss = max(rss_attached, rss_after)
                self.reporter.measurement(
                    "rss",
                    system,
                    _mb(rss),
                    "MB",
                    instances=s.instances,
                    watchers=s.watchers,
                    rss_bytes=rss,
                    empty_mb=_mb(rss_empty),
                    with_instances_mb=_mb(rss_loaded),
                    with_watchers_mb=_mb(rss_attached),
                    after_changes_mb=_mb(rss_after),
                    peak_mb=_mb(peak_rss_bytes(server.pid)),
                    **self._details(server),
                )

    def _snapshot(self, stack: contextlib.ExitStack, server: Server, preload_rate: float) -> None:
        s = self.sizes
        _progress(
            f"snapshot of {s.instances} instances from {server.system}, x{s.snapshot_repeats}"
        )
        job = SnapshotJob(server.system, server.target, "bench", s.snapshot_repeats)
        child = Child(f"{server.system}-snapshot", snapshot_worker, job)
        stack.callback(child.stop)
        result = child.expect("done", 60 + 30 * s.snapshot_repeats)
        child.stop()
        runs_ms = [x * 1000 for x in result["seconds"]]
        counts: list[int] = result["counts"]
        self.reporter.measurement(
            "snapshot",
            server.system,
            median(runs_ms),
            "ms",
            instances=s.instances,
            received=min(counts),
            complete=all(c == s.instances for c in counts),
            runs_ms=runs_ms,
            first_ms=runs_ms[0],
            min_ms=min(runs_ms),
            max_ms=max(runs_ms),
            how=(
                "Watch from the call to SNAPSHOT_END"
                if server.system == "ecosystem"
                else "Range of the prefix, values decoded"
            ),
            preload_rate=preload_rate,
            **self._details(server),
        )

    def _attach_watchers(
        self, stack: contextlib.ExitStack, server: Server
    ) -> tuple[list[Child], float]:
        s = self.sizes
        _progress(f"attaching {s.watchers} watchers to {server.system}")
        started = time.monotonic()
        watchers: list[Child] = []
        for i, streams in enumerate(_split(s.watchers, s.watch_clients)):
            job = WatchJob(
                system=server.system,
                target=server.target,
                namespace="watch",
                streams=streams,
                channels=min(s.watch_channels, streams),
                changes=s.changes,
            )
            child = Child(f"{server.system}-watch-{i}", watch_worker, job)
            stack.callback(child.stop)
            watchers.append(child)
        for child in watchers:
            child.expect("ready", 300)
        attach_s = time.monotonic() - started
        _progress(f"{s.watchers} watchers attached in {attach_s:.1f}s")
        return watchers, attach_s

    def _watch_latency(
        self, stack: contextlib.ExitStack, server: Server, watchers: list[Child], attach_s: float
    ) -> None:
        s = self.sizes
        job = WriteJob(
            system=server.system,
            target=server.target,
            namespace="watch",
            warmup=s.warmup_changes,
            changes=s.changes,
            interval=s.change_interval,
            lease_ttl=s.lease_ttl,
        )
        writer = Child(f"{server.system}-writer", write_worker, job)
        stack.callback(writer.stop)
        writer.expect("ready", 120)
        _progress(f"{s.changes} changes to {s.watchers} watchers of {server.system}")
        writer.send(("go", None))
        written = writer.expect("done", 120 + (s.changes + s.warmup_changes) * s.change_interval)
        writer.stop()
        for child in watchers:
            child.send(("report", 30.0))
        reports = [child.expect("report", 90) for child in watchers]
        latencies = sorted(x for r in reports for x in r["latencies_ms"])
        by_change: dict[int, list[float]] = {}
        for r in reports:
            for seq, ms in zip(r["changes"], r["latencies_ms"], strict=True):
                by_change.setdefault(seq, []).append(ms)
        # How long the last of the watchers waited for each change, in order.
        last_ms = [max(by_change[seq]) for seq in sorted(by_change)]
        expected = s.watchers * s.changes
        errors = [e for r in reports for e in r["errors"]]
        acks = sorted(written["acks_ms"])
        self.reporter.measurement(
            "watch_latency",
            server.system,
            percentile(latencies, 99),
            "ms",
            stat="p99",
            p50_ms=percentile(latencies, 50),
            p90_ms=percentile(latencies, 90),
            max_ms=latencies[-1] if latencies else None,
            mean_ms=sum(latencies) / len(latencies) if latencies else None,
            per_change_last_ms=last_ms,
            watchers=s.watchers,
            changes=s.changes,
            interval_ms=s.change_interval * 1000,
            samples=len(latencies),
            expected=expected,
            complete=len(latencies) == expected,
            attach_s=attach_s,
            write_ack_p50_ms=percentile(acks, 50),
            instances=s.instances,
            watcher_processes=len(watchers),
            channels_per_process=s.watch_channels,
            errors=errors[:3],
            **self._details(server),
        )
