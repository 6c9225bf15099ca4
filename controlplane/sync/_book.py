"""Sync jobs and runs in the store, and one replica's view of them.

Keys (values: serialized ``SyncJob`` / JSON / serialized ``SyncRun``, each
without its revision, which is the key's ``mod_revision``)::

    /ecosystem/v1/sync/jobs/<name>              the job's settings
    /ecosystem/v1/sync/state/<name>             the scheduler's plan (JSON: slot, due,
                                                schedule, last run number)
    /ecosystem/v1/sync/runs/<name>/<number:012> one run (zero-padded: key order is run order)

The jobs' settings are written by the servicer (any replica), the plans and
new runs by the scheduler (the elected replica), a run's progress by the
servicer on the sidecar's claim and reports. Every write is one transaction
guarded by the ``mod_revision`` of what it read, so two writers never both
win: a report that lost to a timeout is refused, a run is never created from
a plan another writer changed.

One store watch per replica follows ``/ecosystem/v1/sync/`` and keeps what the
scheduler and the sidecars' streams need in memory: the jobs, the plans, and
the runs still pending or running (finished runs are read from the store when
asked for). A second one follows the node records (``/ecosystem/v1/nodes/``,
written when a sidecar's session connects or ends) for each node's platform:
a pending run of a platform's job is offered to every node of that platform.
A node's stream is woken when its set of runs changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ecosystem.v1 import agent_pb2
from ecosystem.v1 import sync_pb2 as spb

from controlplane.agent import NODES_PREFIX
from controlplane.registry import ROOT_PREFIX
from controlplane.store import (
    Compacted,
    Compare,
    DeleteOp,
    EventType,
    KeyValue,
    PutOp,
    Store,
    StoreClosed,
    StoreError,
    WatchBatch,
)
from serving.errors import UnavailableError

__all__ = [
    "ACTIVE",
    "JOBS_PREFIX",
    "RUNS_PREFIX",
    "STATE_PREFIX",
    "SYNC_PREFIX",
    "Plan",
    "SyncBook",
    "decode_job",
    "decode_run",
    "job_key",
    "run_key",
    "runs_prefix",
    "state_key",
]

log = logging.getLogger(__name__)

SYNC_PREFIX = ROOT_PREFIX + "sync/"
JOBS_PREFIX = SYNC_PREFIX + "jobs/"
STATE_PREFIX = SYNC_PREFIX + "state/"
RUNS_PREFIX = SYNC_PREFIX + "runs/"
#: The statuses of a run that blocks the next one.
ACTIVE = frozenset({spb.SYNC_RUN_STATUS_PENDING, spb.SYNC_RUN_STATUS_RUNNING})


def job_key(name: str) -> str:
    return JOBS_PREFIX + name


def state_key(name: str) -> str:
    return STATE_PREFIX + name


def runs_prefix(name: str) -> str:
    return f"{RUNS_PREFIX}{name}/"


def run_key(name: str, number: int) -> str:
    return f"{runs_prefix(name)}{number:012d}"


def decode_job(kv: KeyValue) -> spb.SyncJob:
    job = spb.SyncJob.FromString(kv.value)
    job.revision = kv.mod_revision
    return job


def decode_run(kv: KeyValue) -> spb.SyncRun:
    run = spb.SyncRun.FromString(kv.value)
    run.revision = kv.mod_revision
    return run


@dataclass(slots=True)
class Plan:
    """The scheduler's plan of one job (its state key, as JSON)."""

    #: the slot the next run stands for, and when it is due (slot + jitter), Unix seconds
    slot: float
    due: float
    #: the schedule the plan was made for (``schedule_key``): another re-plans
    schedule: str
    #: the number of the job's latest run (0: none yet)
    last: int = 0
    revision: int = 0  # the state key's mod_revision (0: not stored)

    def encode(self) -> bytes:
        data = {"slot": self.slot, "due": self.due, "schedule": self.schedule, "last": self.last}
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, kv: KeyValue) -> Plan:
        data = json.loads(kv.value)
        return cls(
            float(data["slot"]),
            float(data["due"]),
            str(data["schedule"]),
            int(data.get("last", 0)),
            kv.mod_revision,
        )


@dataclass(eq=False)
class NodeWatcher:
    """One WatchSyncRuns stream: woken when the node's runs change."""

    node: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False


class SyncBook:
    """The jobs, plans and active runs as this replica last saw them, and the
    node watchers. ``await start()`` loads them and follows the store;
    ``await close()`` stops following and ends every watcher."""

    def __init__(self, store: Store, *, progress_interval: float = 1.0) -> None:
        self.store = store
        self._progress_interval = progress_interval
        self.jobs: dict[str, spb.SyncJob] = {}
        self.plans: dict[str, Plan] = {}
        #: job → its pending or running run (at most one, by the scheduler's rule)
        self.active: dict[str, spb.SyncRun] = {}
        #: node id → the platform its sidecar registered (Node.platform; nodes without one left out)
        self.node_platforms: dict[str, str] = {}
        self._watchers: dict[str, set[NodeWatcher]] = {}
        self._revision = 0
        self._task: asyncio.Task[None] | None = None
        self._nodes_task: asyncio.Task[None] | None = None
        self._nodes_revision = 0
        self._closed = False
        self._tick = asyncio.Event()
        #: set (and replaced) at every change: the scheduler waits on it
        self.changed = asyncio.Event()

    @property
    def revision(self) -> int:
        return self._revision

    async def start(self) -> None:
        await self._load()
        nodes_revision = await self._load_nodes()
        self._task = asyncio.create_task(self._follow(), name="sync-book")
        self._nodes_task = asyncio.create_task(
            self._follow_nodes(nodes_revision), name="sync-book-nodes"
        )

    async def close(self) -> None:
        self._closed = True
        self.close_watchers()
        for task in (self._task, self._nodes_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._nodes_task = None

    async def wait_for(self, revision: int, timeout: float = 5.0) -> None:
        """Returns once every change up to ``revision`` is in the book."""
        try:
            async with asyncio.timeout(timeout):
                while self._revision < revision:
                    if self._closed or self._task is None or self._task.done():
                        raise UnavailableError("the sync jobs are not following the store")
                    await self._tick.wait()
        except TimeoutError:
            raise UnavailableError(
                f"the sync jobs are behind the store (at {self._revision}, need {revision})"
            ) from None

    # -- following the store ----------------------------------------------------

    async def _load(self) -> None:
        """The jobs, the plans, and of the runs only each job's latest (the one
        that may be active: a job's next run is made only after it ends), all
        read at one revision; the run history stays in the store."""
        jobs = await self.store.range(JOBS_PREFIX)
        revision = jobs.revision
        plans = await self.store.range(STATE_PREFIX, revision=revision)
        self.jobs, self.plans, self.active = {}, {}, {}
        for kv in (*jobs.kvs, *plans.kvs):
            self._put(kv)
        latest = [run_key(name, plan.last) for name, plan in self.plans.items() if plan.last]
        found = await asyncio.gather(*(self.store.get(key, revision=revision) for key in latest))
        for run in found:
            if run is not None:
                self._put(run)
        self._set_revision(revision)
        self._wake_all()

    def _set_revision(self, revision: int) -> None:
        self._revision = revision
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    async def _follow(self) -> None:
        await _follow_prefix(
            self.store,
            SYNC_PREFIX,
            "sync jobs",
            lambda: self._revision,
            self._apply,
            self._load,
            self._progress_interval,
        )
        self.close_watchers()

    async def _load_nodes(self) -> int:
        """Each node's platform, from the node records; the revision read at."""
        result = await self.store.range(NODES_PREFIX)
        before, self.node_platforms = self.node_platforms, {}
        for kv in result.kvs:
            self._put_node(kv)
        self._nodes_revision = result.revision
        for node in set(before) | set(self.node_platforms):
            if before.get(node) != self.node_platforms.get(node):
                self._wake(node)
        return result.revision

    async def _follow_nodes(self, revision: int) -> None:
        self._nodes_revision = revision
        await _follow_prefix(
            self.store,
            NODES_PREFIX,
            "sync jobs' node records",
            lambda: self._nodes_revision,
            self._apply_nodes,
            self._load_nodes,
            self._progress_interval,
        )

    def _apply_nodes(self, batch: WatchBatch) -> None:
        self._nodes_revision = max(self._nodes_revision, batch.revision)
        for event in batch.events:
            node = event.kv.key[len(NODES_PREFIX) :]
            before = self.node_platforms.get(node)
            if event.type is EventType.PUT:
                self._put_node(event.kv)
            else:
                self.node_platforms.pop(node, None)
            if self.node_platforms.get(node) != before:
                self._wake(node)

    def _put_node(self, kv: KeyValue) -> None:
        node = kv.key[len(NODES_PREFIX) :]
        try:
            platform = agent_pb2.NodeStatus.FromString(kv.value).node.platform
        except ValueError as exc:
            log.error("cannot read %s: %s", kv.key, exc)
            return
        if platform:
            self.node_platforms[node] = platform
        else:
            self.node_platforms.pop(node, None)

    def close_watchers(self) -> None:
        for watchers in self._watchers.values():
            for watcher in watchers:
                watcher.closed = True
                watcher.wake.set()

    def _apply(self, batch: WatchBatch) -> None:
        touched: set[str] = set()
        for event in batch.events:
            if event.type is EventType.PUT:
                touched |= self._put(event.kv)
            else:
                touched |= self._delete(event.kv.key)
        if batch.revision > self._revision:
            self._set_revision(batch.revision)
        if batch.events:
            for node in touched:
                self._wake(node)
            changed, self.changed = self.changed, asyncio.Event()
            changed.set()

    def _offered_to(self, run: spb.SyncRun) -> set[str]:
        """The watched nodes whose set ``run`` is in: its node, or, while no
        node has claimed it, every watched node of its platform."""
        if run.node:
            return {run.node}
        if run.platform:
            return {n for n in self._watchers if self.node_platforms.get(n) == run.platform}
        return set()

    def _put(self, kv: KeyValue) -> set[str]:
        """Takes in one key; returns the nodes whose runs changed."""
        key = kv.key
        try:
            if key.startswith(JOBS_PREFIX):
                job = decode_job(kv)
                self.jobs[job.name] = job
            elif key.startswith(STATE_PREFIX):
                self.plans[key[len(STATE_PREFIX) :]] = Plan.decode(kv)
            elif key.startswith(RUNS_PREFIX):
                run = decode_run(kv)
                current = self.active.get(run.job)
                if run.status in ACTIVE:
                    if current is None or current.number <= run.number:
                        self.active[run.job] = run
                        return self._offered_to(run) | (
                            self._offered_to(current) if current else set()
                        )
                elif current is not None and current.number == run.number:
                    del self.active[run.job]
                    return self._offered_to(run) | self._offered_to(current)
        except (ValueError, KeyError, TypeError) as exc:
            # A value this version cannot read must not stop the others.
            log.error("cannot read %s: %s", key, exc)
        return set()

    def _delete(self, key: str) -> set[str]:
        if key.startswith(JOBS_PREFIX):
            self.jobs.pop(key[len(JOBS_PREFIX) :], None)
        elif key.startswith(STATE_PREFIX):
            self.plans.pop(key[len(STATE_PREFIX) :], None)
        elif key.startswith(RUNS_PREFIX):
            job, _, number = key[len(RUNS_PREFIX) :].rpartition("/")
            current = self.active.get(job)
            if current is not None and f"{current.number:012d}" == number:
                del self.active[job]
                return self._offered_to(current)
        return set()

    # -- node watchers -------------------------------------------------------------

    def runs_of(self, node: str) -> list[spb.SyncRun]:
        """The pending and running runs of ``node``, and the pending runs of
        its platform's jobs that no node has claimed yet, by job."""
        platform = self.node_platforms.get(node)
        return sorted(
            (
                run
                for run in self.active.values()
                if run.node == node or (platform and not run.node and run.platform == platform)
            ),
            key=lambda r: r.job,
        )

    def subscribe(self, node: str) -> NodeWatcher:
        if self._closed:
            raise UnavailableError("control plane is shutting down")
        watcher = NodeWatcher(node)
        self._watchers.setdefault(node, set()).add(watcher)
        return watcher

    def unsubscribe(self, watcher: NodeWatcher) -> None:
        watchers = self._watchers.get(watcher.node)
        if watchers is not None:
            watchers.discard(watcher)
            if not watchers:
                del self._watchers[watcher.node]

    @property
    def watcher_count(self) -> int:
        return sum(map(len, self._watchers.values()))

    def _wake(self, node: str) -> None:
        for watcher in self._watchers.get(node, ()):
            watcher.wake.set()

    def _wake_all(self) -> None:
        for node in self._watchers:
            self._wake(node)

    # -- reads straight from the store ------------------------------------------------

    async def read_job(self, name: str) -> tuple[spb.SyncJob | None, Plan | None]:
        """The job and its plan as the store has them now."""
        job_kv = await self.store.get(job_key(name))
        if job_kv is None:
            return None, None
        plan_kv = await self.store.get(state_key(name))
        return decode_job(job_kv), Plan.decode(plan_kv) if plan_kv is not None else None

    async def with_status(self, job: spb.SyncJob, plan: Plan | None) -> spb.SyncJob:
        """``job`` with its next due time and its latest run's number and status."""
        if plan is None:
            return job
        job.next_run_at_ms = int(plan.due * 1000)
        if plan.last:
            job.last_run = plan.last
            kv = await self.store.get(run_key(job.name, plan.last))
            if kv is not None:
                job.last_status = decode_run(kv).status
        return job

    async def list_jobs(self) -> list[spb.SyncJob]:
        jobs_result = await self.store.range(JOBS_PREFIX)
        plans_result = await self.store.range(STATE_PREFIX)
        plans = {kv.key[len(STATE_PREFIX) :]: Plan.decode(kv) for kv in plans_result.kvs}
        jobs = [decode_job(kv) for kv in jobs_result.kvs]
        return list(
            await asyncio.gather(*(self.with_status(job, plans.get(job.name)) for job in jobs))
        )

    async def list_runs(
        self, name: str, limit: int, *, max_bytes: int = 3 * 1024 * 1024
    ) -> list[spb.SyncRun]:
        """The newest ``limit`` runs of a job, newest first, as many as fit in
        ``max_bytes`` (a response under a stock client's 4 MiB; at least one)."""
        kv = await self.store.get(state_key(name))
        last = Plan.decode(kv).last if kv is not None else 0
        numbers = range(last, max(0, last - limit), -1)
        found = await asyncio.gather(*(self.store.get(run_key(name, n)) for n in numbers))
        runs: list[spb.SyncRun] = []
        size = 0
        for item in found:
            if item is None:
                continue  # beyond the kept history
            size += len(item.value)
            if runs and size > max_bytes:
                break
            runs.append(decode_run(item))
        return runs

    async def get_run(self, name: str, number: int) -> spb.SyncRun | None:
        kv = await self.store.get(run_key(name, number))
        return decode_run(kv) if kv is not None else None

    # -- writes shared by the servicer and the scheduler ------------------------------------

    async def replace_run(self, run: spb.SyncRun, *, extra: Iterable[Compare] = ()) -> int | None:
        """Writes ``run`` if its key is still at ``run.revision``; the new
        revision, or None when another writer got there first."""
        stored = spb.SyncRun()
        stored.CopyFrom(run)
        stored.revision = 0
        key = run_key(run.job, run.number)
        result = await self.store.txn(
            [Compare(key, "mod_revision", "==", run.revision), *extra],
            [PutOp(key, stored.SerializeToString(deterministic=True))],
        )
        return result.revision if result.succeeded else None

    async def delete_job(self, name: str) -> int | None:
        """Deletes a job, its plan and its runs; the revision, or None when there was no job."""
        result = await self.store.txn(
            [Compare(job_key(name), "exists", "==", True)],
            [
                DeleteOp(job_key(name)),
                DeleteOp(state_key(name)),
                DeleteOp(runs_prefix(name), prefix=True),
            ],
        )
        return result.revision if result.succeeded else None


async def _follow_prefix(
    store: Store,
    prefix: str,
    what: str,
    seen: Callable[[], int],
    apply: Callable[[WatchBatch], None],
    reload: Callable[[], Awaitable[Any]],
    progress_interval: float,
) -> None:
    """Follows ``prefix`` from ``seen() + 1`` on, handing each batch to
    ``apply``; reloads on compaction, retries store errors with backoff;
    returns when the store closes."""
    failures = 0
    while True:
        try:
            async for batch in store.watch(
                prefix, start_revision=seen() + 1, progress_interval=progress_interval
            ):
                failures = 0
                apply(batch)
        except Compacted:
            log.warning("the %s fell behind the store's history; reloading", what)
            await reload()
        except StoreClosed as exc:
            log.error("store closed under the %s: %s", what, exc)
            return
        except StoreError as exc:
            failures += 1
            delay = min(2.0, 0.1 * 2**failures)
            log.warning("%s watch failed (%s); resuming in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)


def run_dict(run: spb.SyncRun) -> dict[str, Any]:
    """A run as the bus events carry it (JSON-ready)."""
    status = spb.SyncRunStatus.Name(run.status).removeprefix("SYNC_RUN_STATUS_").lower()
    counters = run.counters
    return {
        "job": run.job,
        "number": run.number,
        "node": run.node,
        "platform": run.platform,
        "status": status,
        "scheduled_at_ms": run.scheduled_at_ms,
        "started_at_ms": run.started_at_ms,
        "finished_at_ms": run.finished_at_ms,
        "slots": run.slots,
        "source": run.spec.source,
        "destination": run.spec.destination,
        "mode": run.spec.mode or "copy",
        "counters": {
            "files_copied": counters.files_copied,
            "bytes_copied": counters.bytes_copied,
            "files_deleted": counters.files_deleted,
            "files_skipped": counters.files_skipped,
            "conflicts": counters.conflicts,
            "errors": counters.errors,
            "duration_seconds": counters.duration_seconds,
        },
        "error": run.error,
    }
