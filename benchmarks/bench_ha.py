"""High availability: the registry benchmark against etcd-backed replicas, and failover.

``python -m benchmarks --only ha [--quick]`` (or ``python -m
benchmarks.bench_ha``) prints one JSON object per line. Everything runs as
real processes on free 127.0.0.1 ports in a temporary directory.

Systems, each on fresh servers:

- ``sqlite``: one ``eco controlplane`` on the SQLite store (the reference);
- ``etcd``: a three-member etcd cluster driven directly (etcd's own figure);
- ``etcd-1``: one ``eco controlplane --store etcd://m1,m2,m3/ecosystem``;
- ``etcd-2``: two such replicas over one cluster, the clients spread over them.

The etcd cluster runs with etcd's default raft timers and fsync, its data in
the temporary directory, like a small production cluster squeezed onto one
machine.

Benches:

- ``ha_registrations``: client processes register distinct ephemeral
  instances as fast as they can (the registry benchmark's ``RegisterJob``,
  one lease per client process); client *i* talks to replica (or member)
  ``i mod n``. The value is registrations/s.
- ``ha_watch_latency``: N watch streams (200 quick, 1,000 full), spread over
  the replicas (or members), then one writer registers an instance every
  interval through the first replica; each watcher's receive time minus the
  writer's send time (the registry benchmark's ``WatchJob``/``WriteJob``).
  p50 and p99 over every (watcher, change), and per replica.
- ``ha_failover``: two replicas A and B over one cluster; M sidecar sessions
  (``sdk.AgentSession``, the session code ``eco sidecar`` runs, with one
  PASSING instance each and grace 10 s) given ``[A, B]``, all connected to
  A. A is killed with SIGKILL; each session's time from the kill to its
  Welcome from B, p50/p99/max over the sessions (and over the trials in the
  full run). Also: how many sessions resumed (kept their session id, so
  their instances were not re-registered) and the most instances seen
  CRITICAL through B while they moved (should be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks._report import percentile
from benchmarks._servers import (
    ControlPlaneServer,
    Server,
    ServerError,
    cpu_seconds,
    etcd_binary,
    free_port,
    with_parent_death_signal,
)
from benchmarks._workers import (
    Child,
    RegisterJob,
    WatchJob,
    WorkerError,
    WriteJob,
    register_worker,
    watch_worker,
    write_worker,
)

__all__ = ["run"]

SYSTEMS = ("sqlite", "etcd", "etcd-1", "etcd-2")
_PREFIX = "/ecosystem"


@dataclass(frozen=True)
class Sizes:
    registrations: int = 20_000
    reg_clients: int = 4
    reg_concurrency: int = 50
    services: int = 100
    lease_ttl: int = 900
    watchers: int = 1_000
    watch_clients: int = 4
    watch_channels: int = 5
    warmup_changes: int = 2
    changes: int = 20
    change_interval: float = 0.25
    sidecars: int = 200
    sidecar_processes: int = 2
    failover_trials: int = 3
    grace: int = 10


FULL = Sizes()
QUICK = Sizes(
    registrations=2_000,
    reg_clients=2,
    reg_concurrency=20,
    watchers=200,
    watch_clients=2,
    watch_channels=2,
    changes=5,
    change_interval=0.1,
    sidecars=50,
    sidecar_processes=1,
    failover_trials=1,
)


def _progress(text: str) -> None:
    print(f"[ha] {text}", file=sys.stderr, flush=True)


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


# -- processes -------------------------------------------------------------------------


class EtcdMember(Server):
    """One member of a cluster; its ``/health`` is true only with a quorum."""

    system = "etcd"

    def __init__(self, workdir: Path, name: str) -> None:
        super().__init__(workdir)
        self.name = name
        self.port = free_port()
        self.peer_port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.launcher = "etcd"
        self.initial_cluster = ""

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def command(self) -> list[str]:
        client = f"http://{self.target}"
        return [
            etcd_binary(),
            f"--name={self.name}",
            f"--data-dir={self.workdir / 'data'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.initial_cluster}",
            "--initial-cluster-token=eco-bench",
            "--log-level=warn",
        ]

    def kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def start(self) -> None:
        """Launches the member and returns at once: no member answers before
        a quorum of them runs, so the cluster waits for all of them."""
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                with_parent_death_signal(self.command()),  # stopped if this process dies
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )

    def ready_url(self) -> str:
        return f"http://{self.target}/health"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.target}/health", timeout=1.0) as answer:
                return b'"health":"true"' in answer.read().replace(b" ", b"")
        except (urllib.error.URLError, OSError):
            return False


class EtcdCluster:
    """Three members started together (none is healthy before a quorum is)."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        self.members = [EtcdMember(workdir / f"etcd-m{i + 1}", f"m{i + 1}") for i in range(size)]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.initial_cluster = initial

    @property
    def targets(self) -> list[str]:
        return [m.target for m in self.members]

    def store_url(self) -> str:
        return f"etcd://{','.join(self.targets)}{_PREFIX}"

    def __enter__(self) -> EtcdCluster:
        # Started from this thread: the kernel stops a child whose starting
        # thread ends (PR_SET_PDEATHSIG), so no thread pool here.
        try:
            for member in self.members:
                member.start()
            deadline = time.monotonic() + 60
            while not all(m.healthy() for m in self.members):
                for member in self.members:
                    member.check_alive()
                if time.monotonic() > deadline:
                    raise ServerError("etcd cluster has no leader after 60s")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        # Killed, not stopped: the data is thrown away, and members stopped
        # together spend seconds trying to hand leadership to each other.
        for member in self.members:
            member.kill()


class Replica(ControlPlaneServer):
    """``eco controlplane`` over the etcd cluster."""

    def __init__(self, workdir: Path, store_url: str) -> None:
        super().__init__(workdir)
        self.store_url = store_url

    def kill(self) -> None:
        """SIGKILL, and wait for the process to be gone."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass
class Deployment:
    """What one system's measurements talk to."""

    system: str
    client_system: str  # the benchmark client: "ecosystem" or "etcd"
    targets: list[str]
    pids: list[int]  # every server process: control planes first, then etcd members
    details: dict[str, Any]
    control_planes: int = 0  # how many of ``pids`` are control planes


@contextlib.contextmanager
def _deploy(system: str, workdir: Path) -> Iterator[Deployment]:
    _progress(f"starting {system}")
    with contextlib.ExitStack() as stack:
        if system == "sqlite":
            cp = stack.enter_context(ControlPlaneServer(workdir / "controlplane"))
            yield Deployment(
                system, "ecosystem", [cp.target], [cp.pid], {"store": "sqlite", "replicas": 1}, 1
            )
            cp.check_alive()
            return
        cluster = stack.enter_context(EtcdCluster(workdir))
        member_pids = [m.pid for m in cluster.members]
        if system == "etcd":
            yield Deployment(system, "etcd", cluster.targets, member_pids, {"etcd_members": 3})
            return
        count = int(system.rpartition("-")[2])
        replicas = [
            Replica(workdir / f"replica-{i + 1}", cluster.store_url()) for i in range(count)
        ]
        for replica in replicas:
            stack.enter_context(replica)
        yield Deployment(
            system,
            "ecosystem",
            [r.target for r in replicas],
            [r.pid for r in replicas] + member_pids,
            {"store": "etcd", "replicas": count, "etcd_members": 3},
            count,
        )
        for replica in replicas:
            replica.check_alive()


def _cpu(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


# -- registrations and fan-out ------------------------------------------------------


def _registrations(dep: Deployment, sizes: Sizes) -> dict[str, Any]:
    s = sizes
    _progress(f"{s.registrations} registrations against {dep.system}")
    with contextlib.ExitStack() as stack:
        children: list[Child] = []
        first = 0
        for i, count in enumerate(_split(s.registrations, s.reg_clients)):
            job = RegisterJob(
                system=dep.client_system,
                target=dep.targets[i % len(dep.targets)],
                namespace="reg",
                first=first,
                count=count,
                concurrency=s.reg_concurrency,
                services=s.services,
                leased=True,
                lease_ttl=s.lease_ttl,
            )
            first += count
            child = Child(f"{dep.system}-register-{i}", register_worker, job)
            stack.callback(child.stop)
            children.append(child)
        for child in children:
            child.expect("ready", 120)
        planes, members = dep.pids[: dep.control_planes], dep.pids[dep.control_planes :]
        planes_before, members_before = _cpu(planes), _cpu(members)
        for child in children:
            child.send(("go", None))
        results = [child.expect("done", max(120.0, s.registrations / 100)) for child in children]
        planes_cpu, members_cpu = _cpu(planes) - planes_before, _cpu(members) - members_before
    count = sum(r["count"] for r in results)
    seconds = max(r["end"] for r in results) - min(r["start"] for r in results)
    calls = sorted(x * 1000 for r in results for x in r["latencies"])
    return {
        "bench": "ha_registrations",
        "system": dep.system,
        "value": count / seconds,
        "unit": "registrations/s",
        "leased": True,
        "registrations": count,
        "seconds": seconds,
        "clients": len(children),
        "concurrency_per_client": s.reg_concurrency,
        "call_p50_ms": percentile(calls, 50),
        "call_p99_ms": percentile(calls, 99),
        "server_cpu_s": planes_cpu + members_cpu,
        "controlplane_cpu_s": planes_cpu,
        "etcd_cpu_s": members_cpu,
        **dep.details,
    }


def _watch_latency(dep: Deployment, sizes: Sizes) -> dict[str, Any]:
    s = sizes
    _progress(f"attaching {s.watchers} watchers to {dep.system}")
    with contextlib.ExitStack() as stack:
        watchers: list[tuple[str, Child]] = []
        started = time.monotonic()
        for i, streams in enumerate(_split(s.watchers, s.watch_clients)):
            target = dep.targets[i % len(dep.targets)]
            job = WatchJob(
                system=dep.client_system,
                target=target,
                namespace="watch",
                streams=streams,
                channels=min(s.watch_channels, streams),
                changes=s.changes,
            )
            child = Child(f"{dep.system}-watch-{i}", watch_worker, job)
            stack.callback(child.stop)
            watchers.append((target, child))
        for _, child in watchers:
            child.expect("ready", 300)
        attach_s = time.monotonic() - started
        time.sleep(1.0)
        writer = Child(
            f"{dep.system}-writer",
            write_worker,
            WriteJob(
                system=dep.client_system,
                target=dep.targets[0],
                namespace="watch",
                warmup=s.warmup_changes,
                changes=s.changes,
                interval=s.change_interval,
                lease_ttl=s.lease_ttl,
            ),
        )
        stack.callback(writer.stop)
        writer.expect("ready", 120)
        _progress(f"{s.changes} changes to {s.watchers} watchers of {dep.system}")
        writer.send(("go", None))
        written = writer.expect("done", 120 + (s.changes + s.warmup_changes) * s.change_interval)
        for _, child in watchers:
            child.send(("report", 30.0))
        reports = [(target, child.expect("report", 90)) for target, child in watchers]
    latencies = sorted(x for _, r in reports for x in r["latencies_ms"])
    per_target: dict[str, list[float]] = {}
    for target, r in reports:
        per_target.setdefault(target, []).extend(r["latencies_ms"])
    expected = s.watchers * s.changes
    acks = sorted(written["acks_ms"])
    return {
        "bench": "ha_watch_latency",
        "system": dep.system,
        "value": percentile(latencies, 99),
        "unit": "ms",
        "stat": "p99",
        "p50_ms": percentile(latencies, 50),
        "max_ms": latencies[-1] if latencies else None,
        "by_target": {
            f"{'member' if dep.client_system == 'etcd' else 'replica'}-{i + 1}": {
                "watchers": sum(
                    job_streams
                    for (t, _), job_streams in zip(
                        watchers, _split(s.watchers, s.watch_clients), strict=True
                    )
                    if t == target
                ),
                "p50_ms": percentile(sorted(per_target.get(target, [])), 50),
                "p99_ms": percentile(sorted(per_target.get(target, [])), 99),
            }
            for i, target in enumerate(dep.targets)
            if target in per_target
        },
        "writer": "replica-1" if dep.client_system == "ecosystem" else "member-1",
        "watchers": s.watchers,
        "changes": s.changes,
        "interval_ms": s.change_interval * 1000,
        "samples": len(latencies),
        "expected": expected,
        "complete": len(latencies) == expected,
        "attach_s": attach_s,
        "write_ack_p50_ms": percentile(acks, 50),
        "errors": [e for _, r in reports for e in r["errors"]][:3],
        **dep.details,
    }


# -- failover ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FailoverJob:
    servers: tuple[str, ...]  # A first
    healthy: str  # where to look for CRITICAL instances while they move
    first: int
    count: int
    trial: int
    grace: int


def failover_worker(conn: Any, job: FailoverJob) -> None:
    from benchmarks._workers import _run

    _run(conn, lambda: _sessions(conn, job))


async def _sessions(conn: Any, job: FailoverJob) -> None:
    import logging

    import sdk

    # Every session logs its reconnect; hundreds of them would drown the progress lines.
    logging.getLogger("sdk").setLevel(logging.ERROR)

    killed = job.servers[0]
    welcomed: dict[int, float] = {}  # session → when it was welcomed away from A
    all_moved = asyncio.Event()

    def on_state(session: sdk.AgentSession) -> None:
        status = session.status()
        if status.state is sdk.AgentState.CONNECTED and status.address != killed:
            welcomed.setdefault(id(session), time.time())
            if len(welcomed) == job.count:
                all_moved.set()

    sessions: list[sdk.AgentSession] = []
    for n in range(job.first, job.first + job.count):
        node = f"t{job.trial}-n{n}"
        instance = sdk.Instance(
            id=f"{node}-web",
            service="failover",
            address="127.0.0.1",
            port=10_000 + n,
            health=sdk.HealthStatus.PASSING,
        )
        sessions.append(
            sdk.AgentSession(
                list(job.servers),
                sdk.AgentNode(id=node),
                instances=lambda instance=instance: [instance],  # type: ignore[misc]
                on_update=lambda update: None,
                grace=job.grace,
                deregister_critical_after=60,
                sync_interval=60,
                on_state=on_state,
            )
        )
    try:
        for session in sessions:
            await session.start()
        async with asyncio.timeout(120):
            for session in sessions:
                await session.wait_connected()
        elsewhere = [s.status().address for s in sessions if s.status().address != killed]
        if elsewhere:
            raise RuntimeError(f"{len(elsewhere)} sessions did not connect to {killed} first")
        before = {id(s): s.session_id for s in sessions}
        conn.send(("ready", None))
        killed_at = float((await asyncio.get_running_loop().run_in_executor(None, conn.recv))[1])
        most_critical = 0
        mine = f"t{job.trial}-"  # earlier trials' sessions are gone, and may be CRITICAL

        async def count_critical(client: sdk.AsyncClient) -> None:
            nonlocal most_critical
            with contextlib.suppress(sdk.EcoError):
                found = await client.list_instances(service="failover", health=["CRITICAL"])
                critical = sum(1 for i in found.instances if i.id.startswith(mine))
                most_critical = max(most_critical, critical)

        async with sdk.AsyncClient(job.healthy, timeout=5) as client:
            deadline = time.monotonic() + 120
            while not all_moved.is_set() and time.monotonic() < deadline:
                await count_critical(client)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.1):
                        await all_moved.wait()
            # Keep looking a little past the move: a lost session shows up only later.
            end = time.monotonic() + min(3.0, job.grace / 2)
            while time.monotonic() < end:
                await count_critical(client)
                await asyncio.sleep(0.2)
        conn.send(
            (
                "done",
                {
                    "seconds": sorted(t - killed_at for t in welcomed.values()),
                    "moved": len(welcomed),
                    "resumed": sum(
                        1 for s in sessions if s.status().resumed and s.session_id == before[id(s)]
                    ),
                    "most_critical": most_critical,
                },
            )
        )
    finally:
        # Leave, like a sidecar stopping, so the next trial starts from a clean registry.
        await asyncio.gather(*(s.leave() for s in sessions), return_exceptions=True)
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)


def _failover(workdir: Path, sizes: Sizes) -> dict[str, Any]:
    s = sizes
    per_trial: list[dict[str, Any]] = []
    with EtcdCluster(workdir / "failover") as cluster:
        a = Replica(workdir / "failover" / "replica-a", cluster.store_url())
        b = Replica(workdir / "failover" / "replica-b", cluster.store_url())
        with a, b:
            for trial in range(s.failover_trials):
                if trial:
                    a.start()
                _progress(f"failover trial {trial + 1}: {s.sidecars} sessions on A, kill -9 A")
                with contextlib.ExitStack() as stack:
                    children = []
                    first = 0
                    for i, count in enumerate(_split(s.sidecars, s.sidecar_processes)):
                        job = FailoverJob(
                            (a.target, b.target), b.target, first, count, trial, s.grace
                        )
                        first += count
                        child = Child(f"sessions-{trial}-{i}", failover_worker, job)
                        stack.callback(child.stop)
                        children.append(child)
                    for child in children:
                        child.expect("ready", 180)
                    time.sleep(0.5)
                    killed_at = time.time()
                    a.kill()
                    for child in children:
                        child.send(("killed", killed_at))
                    results = [child.expect("done", 180) for child in children]
                b.check_alive()
                seconds = sorted(x for r in results for x in r["seconds"])
                per_trial.append(
                    {
                        "p50_s": percentile(seconds, 50),
                        "p99_s": percentile(seconds, 99),
                        "max_s": seconds[-1] if seconds else None,
                        "moved": sum(r["moved"] for r in results),
                        "resumed": sum(r["resumed"] for r in results),
                        "most_critical": max(r["most_critical"] for r in results),
                        "seconds": seconds,
                    }
                )
    everything = sorted(x for t in per_trial for x in t.pop("seconds"))
    return {
        "bench": "ha_failover",
        "system": "etcd-2",
        "value": percentile(everything, 99),
        "unit": "s",
        "stat": "p99",
        "p50_s": percentile(everything, 50),
        "max_s": everything[-1] if everything else None,
        "sidecars": s.sidecars,
        "trials": s.failover_trials,
        "moved": sum(t["moved"] for t in per_trial),
        "expected": s.sidecars * s.failover_trials,
        "complete": len(everything) == s.sidecars * s.failover_trials,
        "resumed": sum(t["resumed"] for t in per_trial),
        "most_critical": max(t["most_critical"] for t in per_trial),
        "per_trial": per_trial,
        "grace_s": s.grace,
        "how": "sdk.AgentSession per sidecar, addresses [A, B]; kill -9 A; time to B's Welcome",
        "replicas": 2,
        "etcd_members": 3,
    }


# -- the run ----------------------------------------------------------------------------


def _guarded(bench: str, system: str, work: Any, *args: Any) -> dict[str, Any]:
    try:
        row: dict[str, Any] = work(*args)
        return row
    except (ServerError, WorkerError, OSError, urllib.error.URLError) as exc:
        _progress(f"{bench} on {system} failed: {exc}")
        return {"bench": bench, "system": system, "error": (str(exc).splitlines() or [""])[0]}


def _ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each etcd-backed figure beside the SQLite store's and raw etcd's."""
    out = []
    for bench in ("ha_registrations", "ha_watch_latency"):
        got = {r["system"]: r["value"] for r in rows if r["bench"] == bench and "value" in r}
        for system in ("etcd-1", "etcd-2"):
            if system in got:
                out.append(
                    {
                        "bench": bench,
                        "system": system,
                        "ratio_to_sqlite": got[system] / got["sqlite"]
                        if got.get("sqlite")
                        else None,
                        "ratio_to_etcd": got[system] / got["etcd"] if got.get("etcd") else None,
                    }
                )
    return out


def run(quick: bool) -> list[dict[str, Any]]:
    """Every HA measurement; every process started is stopped on the way out."""
    sizes = QUICK if quick else FULL
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="eco-bench-ha-") as tmp:
        workdir = Path(tmp)
        for system in SYSTEMS:
            try:
                with _deploy(system, workdir / system) as dep:
                    rows.append(_guarded("ha_registrations", system, _registrations, dep, sizes))
                with _deploy(system, workdir / f"{system}-watch") as dep:
                    rows.append(_guarded("ha_watch_latency", system, _watch_latency, dep, sizes))
            except ServerError as exc:
                _progress(f"{system} failed to start: {exc}")
                rows.append({"bench": "ha", "system": system, "error": str(exc).splitlines()[0]})
        rows.extend(_ratios(rows))
        rows.append(_guarded("ha_failover", "etcd-2", _failover, workdir, sizes))
    return rows


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_ha",
        description="Registrations/s, fan-out latency and failover time of etcd-backed "
        "control-plane replicas, beside SQLite and raw etcd; one JSON object per line.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one failover trial")
    args = parser.parse_args(argv)
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
