"""SyncService: a thin adapter from gRPC to the :class:`SyncBook` and the store.

Who may change or read which job, and which node's runs a sidecar may take,
is the ACL interceptor's business (``controlplane.acl``): jobs need
``sync:<job>:read|write``, the run calls ``node:<node>:write`` (what a sidecar's
token holds for its own node already). Which platform a node is on is what
its sidecar's session registered (the node record, ``Node.platform``): a
node claims a run of a platform's job only when its record names that
platform.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from ecosystem.v1 import agent_pb2
from ecosystem.v1 import sync_pb2 as spb

from controlplane.agent import NODES_PREFIX
from controlplane.catalog import platform_key, unknown_datasets
from controlplane.store import Compare, PutOp
from serving.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    RevisionConflictError,
    UnavailableError,
    end_call,
    to_status,
)

from ._book import SyncBook, job_key
from ._validation import job_name_violations, job_violations, node_violations

__all__ = ["MAX_REPORT_BYTES", "SYNC_SERVICE", "SyncServicer", "now_ms"]

log = logging.getLogger(__name__)

SYNC_SERVICE = spb.DESCRIPTOR.services_by_name["SyncService"].full_name
#: Bytes of one run report, encoded (the sidecar cuts its decisions to fit).
MAX_REPORT_BYTES = 256 * 1024
MAX_RUNS_LISTED = 1_000
MAX_EXECUTOR = 64
_ENDS = (
    spb.SYNC_RUN_STATUS_COMPLETED,
    spb.SYNC_RUN_STATUS_FAILED,
    spb.SYNC_RUN_STATUS_GUARDED,
)
_JOB_ATTEMPTS = 5


def now_ms() -> int:
    return int(time.time() * 1000)


def _stored_job(job: spb.SyncJob) -> spb.SyncJob:
    """What is stored of a job: its settings, without the read-only fields."""
    stored = spb.SyncJob()
    stored.CopyFrom(job)
    for name in ("revision", "next_run_at_ms", "last_run", "last_status"):
        stored.ClearField(name)
    return stored


def _checked(job: spb.SyncJob) -> None:
    violations = job_violations(job)
    if violations:
        raise InvalidArgumentError(violations)


def _name(name: str, field: str = "name") -> None:
    violations = job_name_violations(field, name)
    if violations:
        raise InvalidArgumentError(violations)


class SyncServicer:
    """Serves SyncService (see the proto for what each call does)."""

    def __init__(
        self,
        book: SyncBook,
        *,
        max_watch_streams: int = 10_000,
        watch_interval: float = 5.0,
        is_draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self.book = book
        self.store = book.store
        self.max_watch_streams = max_watch_streams
        #: WatchSyncRuns sends the node's set again after this long of quiet
        self.watch_interval = watch_interval
        self._is_draining = is_draining
        self.watch_streams = 0

    async def _run(self, name: str, context: Any, work: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await work()
        except Exception as exc:
            _fail(name, context, exc)
            return None

    # -- jobs --------------------------------------------------------------------------

    async def CreateSyncJob(self, request: spb.CreateSyncJobRequest, context: Any) -> Any:
        async def work() -> spb.CreateSyncJobResponse:
            _checked(request.job)
            await self._known_datasets(request.job)
            placed = await self._known_platform(request.job)
            job = _stored_job(request.job)
            job.paused = False
            job.created_at_ms = job.updated_at_ms = now_ms()
            key = job_key(job.name)
            result = await self.store.txn(
                [Compare(key, "version", "==", 0), *placed],
                [PutOp(key, job.SerializeToString(deterministic=True))],
            )
            if not result.succeeded:
                await self._known_platform(request.job)  # deregistered meanwhile?
                raise AlreadyExistsError(
                    f"sync job {job.name!r} exists (replace it with 'eco sync job add --replace', "
                    "or delete it)"
                )
            job.revision = result.revision
            log.info("sync job %s created (on %s)", job.name, _placement(job))
            return spb.CreateSyncJobResponse(job=job)

        return await self._run("CreateSyncJob", context, work)

    async def _known_datasets(self, job: spb.SyncJob) -> None:
        """A job's ``dataset:NAME`` ends must name datasets of the catalog."""
        violations = await unknown_datasets(self.store, job)
        if violations:
            raise InvalidArgumentError(violations)

    async def _known_platform(self, job: spb.SyncJob) -> list[Compare]:
        """A job's on_platform must be a registered platform; the compares
        that keep it so while the job is written."""
        if not job.on_platform:
            return []
        key = platform_key(job.on_platform)
        if await self.store.get(key) is None:
            raise InvalidArgumentError(
                [
                    FieldViolation(
                        "job.on_platform",
                        f"{job.on_platform!r} is not a registered platform (register it with "
                        "'eco platform register', or list them with 'eco platform list')",
                    )
                ]
            )
        return [Compare(key, "exists", "==", True)]

    async def _change(
        self,
        name: str,
        change: Callable[[spb.SyncJob], None],
        expected: int = 0,
        placed: Callable[[], Awaitable[list[Compare]]] | None = None,
    ) -> spb.SyncJob:
        """Reads a job, changes it and writes it back if nobody else did
        meanwhile (and, with ``placed``, while the compares it gives hold)."""
        for _attempt in range(_JOB_ATTEMPTS):
            current, plan = await self.book.read_job(name)
            if current is None:
                raise NotFoundError(f"no sync job {name!r}")
            if expected and current.revision != expected:
                raise RevisionConflictError(
                    f"sync job {name!r} is at revision {current.revision}, not {expected}"
                )
            job = _stored_job(current)
            change(job)
            job.updated_at_ms = now_ms()
            key = job_key(name)
            guards = await placed() if placed is not None else []
            result = await self.store.txn(
                [Compare(key, "mod_revision", "==", current.revision), *guards],
                [PutOp(key, job.SerializeToString(deterministic=True))],
            )
            if result.succeeded:
                job.revision = result.revision
                return await self.book.with_status(job, plan)
        raise RevisionConflictError(f"sync job {name!r} kept changing under this call; try again")

    async def UpdateSyncJob(self, request: spb.UpdateSyncJobRequest, context: Any) -> Any:
        async def work() -> spb.UpdateSyncJobResponse:
            _checked(request.job)
            await self._known_datasets(request.job)
            wanted = _stored_job(request.job)

            def change(job: spb.SyncJob) -> None:
                paused, created = job.paused, job.created_at_ms
                job.CopyFrom(wanted)
                job.paused, job.created_at_ms = paused, created

            job = await self._change(
                request.job.name,
                change,
                request.expected_revision,
                lambda: self._known_platform(request.job),
            )
            log.info("sync job %s updated", job.name)
            return spb.UpdateSyncJobResponse(job=job)

        return await self._run("UpdateSyncJob", context, work)

    async def PauseSyncJob(self, request: spb.PauseSyncJobRequest, context: Any) -> Any:
        async def work() -> spb.PauseSyncJobResponse:
            _name(request.name)
            job = await self._change(request.name, lambda job: setattr(job, "paused", True))
            log.info("sync job %s paused", job.name)
            return spb.PauseSyncJobResponse(job=job)

        return await self._run("PauseSyncJob", context, work)

    async def ResumeSyncJob(self, request: spb.ResumeSyncJobRequest, context: Any) -> Any:
        async def work() -> spb.ResumeSyncJobResponse:
            _name(request.name)
            job = await self._change(request.name, lambda job: setattr(job, "paused", False))
            log.info("sync job %s resumed", job.name)
            return spb.ResumeSyncJobResponse(job=job)

        return await self._run("ResumeSyncJob", context, work)

    async def GetSyncJob(self, request: spb.GetSyncJobRequest, context: Any) -> Any:
        async def work() -> spb.GetSyncJobResponse:
            _name(request.name)
            job, plan = await self.book.read_job(request.name)
            if job is None:
                raise NotFoundError(f"no sync job {request.name!r}")
            return spb.GetSyncJobResponse(job=await self.book.with_status(job, plan))

        return await self._run("GetSyncJob", context, work)

    async def ListSyncJobs(self, request: spb.ListSyncJobsRequest, context: Any) -> Any:
        async def work() -> spb.ListSyncJobsResponse:
            return spb.ListSyncJobsResponse(jobs=await self.book.list_jobs())

        return await self._run("ListSyncJobs", context, work)

    async def DeleteSyncJob(self, request: spb.DeleteSyncJobRequest, context: Any) -> Any:
        async def work() -> spb.DeleteSyncJobResponse:
            _name(request.name)
            revision = await self.book.delete_job(request.name)
            if revision is None:
                raise NotFoundError(f"no sync job {request.name!r}")
            log.info("sync job %s deleted at revision %d", request.name, revision)
            return spb.DeleteSyncJobResponse(revision=revision)

        return await self._run("DeleteSyncJob", context, work)

    async def ListSyncRuns(self, request: spb.ListSyncRunsRequest, context: Any) -> Any:
        async def work() -> spb.ListSyncRunsResponse:
            _name(request.job, "job")
            if not 0 <= request.limit <= MAX_RUNS_LISTED:
                raise InvalidArgumentError(
                    [FieldViolation("limit", f"is {request.limit}; 1-{MAX_RUNS_LISTED} (0: 20)")]
                )
            job, _plan = await self.book.read_job(request.job)
            if job is None:
                raise NotFoundError(f"no sync job {request.job!r}")
            runs = await self.book.list_runs(request.job, request.limit or 20)
            return spb.ListSyncRunsResponse(runs=runs)

        return await self._run("ListSyncRuns", context, work)

    # -- runs, for sidecars ------------------------------------------------------------------

    async def WatchSyncRuns(
        self, request: spb.WatchSyncRunsRequest, context: Any
    ) -> AsyncIterator[spb.WatchSyncRunsResponse]:
        async def subscribe() -> Any:
            violations = node_violations("node", request.node)
            if violations:
                raise InvalidArgumentError(violations)
            if self._is_draining():
                raise UnavailableError("control plane is shutting down; reconnect elsewhere")
            if self.watch_streams >= self.max_watch_streams:
                raise ResourceExhaustedError(
                    f"this control plane serves {self.max_watch_streams} sync run watches "
                    "already; try again later or another address"
                )
            return self.book.subscribe(request.node)

        watcher = await self._run("WatchSyncRuns", context, subscribe)
        if watcher is None:
            return
        self.watch_streams += 1
        try:
            while True:
                if watcher.closed:
                    raise UnavailableError("control plane is shutting down; reconnect and resume")
                watcher.wake.clear()
                yield spb.WatchSyncRunsResponse(runs=self.book.runs_of(request.node))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.watch_interval):
                        await watcher.wake.wait()
        except Exception as exc:
            _fail("WatchSyncRuns", context, exc)
        finally:
            self.watch_streams -= 1
            self.book.unsubscribe(watcher)

    async def _run_of(
        self, job: str, number: int, node: str, *, claiming: bool = False
    ) -> spb.SyncRun:
        """The run, when ``node`` may take it (``claiming``) or report on it."""
        violations = job_name_violations("job", job) + node_violations("node", node)
        if number <= 0:
            violations.append(FieldViolation("number", "is required (the run's number, ≥ 1)"))
        if violations:
            raise InvalidArgumentError(violations)
        run = await self.book.get_run(job, number)
        if run is None:
            raise NotFoundError(f"no run {number} of sync job {job!r}")
        if not run.node and run.platform:
            if not claiming:
                raise FailedPreconditionError(
                    f"run {number} of sync job {job!r} is {_status(run.status)}, not claimed "
                    "by any node"
                )
            platform = await self._platform_of(node)
            if platform != run.platform:
                on = f"on platform {platform!r}" if platform else "on no platform"
                raise FailedPreconditionError(
                    f"run {number} of sync job {job!r} is for the sidecars of platform "
                    f"{run.platform!r}; node {node!r} is {on} (its sidecar's node.platform)"
                )
            return run
        if run.node != node:
            raise FailedPreconditionError(
                f"run {number} of sync job {job!r} is assigned to node {run.node!r}, not {node!r}"
            )
        return run

    async def _platform_of(self, node: str) -> str:
        """The platform ``node``'s sidecar registered ("" when none or no record)."""
        kv = await self.store.get(NODES_PREFIX + node)
        if kv is None:
            return ""
        return agent_pb2.NodeStatus.FromString(kv.value).node.platform

    async def ClaimSyncRun(self, request: spb.ClaimSyncRunRequest, context: Any) -> Any:
        async def work() -> spb.ClaimSyncRunResponse:
            if len(request.executor) > MAX_EXECUTOR:
                raise InvalidArgumentError(
                    [FieldViolation("executor", f"at most {MAX_EXECUTOR} characters")]
                )
            run = await self._run_of(request.job, request.number, request.node, claiming=True)
            if run.status != spb.SYNC_RUN_STATUS_PENDING:
                by = f" on node {run.node!r}" if run.platform and run.node else ""
                raise FailedPreconditionError(
                    f"run {run.number} of sync job {run.job!r} is "
                    f"{_status(run.status)}{by}, not pending"
                )
            # A platform's run becomes the claiming node's; the write below is
            # a compare-and-set on the run, so of two claims one wins.
            run.node = request.node
            run.status = spb.SYNC_RUN_STATUS_RUNNING
            run.executor = request.executor
            run.started_at_ms = run.heartbeat_at_ms = now_ms()
            revision = await self.book.replace_run(run)
            if revision is None:
                raise FailedPreconditionError(
                    f"run {run.number} of sync job {run.job!r} changed meanwhile (claimed by "
                    "another sidecar, or failed); not claimed"
                )
            run.revision = revision
            log.info("sync run %s#%d claimed by node %s", run.job, run.number, run.node)
            return spb.ClaimSyncRunResponse(run=run)

        return await self._run("ClaimSyncRun", context, work)

    async def ReportSyncRun(self, request: spb.ReportSyncRunRequest, context: Any) -> Any:
        async def work() -> spb.ReportSyncRunResponse:
            status = request.status
            if status != spb.SYNC_RUN_STATUS_RUNNING and status not in _ENDS:
                raise InvalidArgumentError(
                    [
                        FieldViolation(
                            "status", "is RUNNING (a heartbeat), COMPLETED, FAILED or GUARDED"
                        )
                    ]
                )
            size = request.report.ByteSize()
            if size > MAX_REPORT_BYTES:
                raise InvalidArgumentError(
                    [FieldViolation("report", f"is {size} bytes; at most {MAX_REPORT_BYTES}")]
                )
            for _attempt in range(_JOB_ATTEMPTS):
                run = await self._run_of(request.job, request.number, request.node)
                if run.status != spb.SYNC_RUN_STATUS_RUNNING:
                    raise FailedPreconditionError(
                        f"run {run.number} of sync job {run.job!r} is "
                        f"{_status(run.status)}, not running"
                        + (f" ({run.error})" if run.error else "")
                    )
                if run.executor and request.executor and run.executor != request.executor:
                    raise FailedPreconditionError(
                        f"run {run.number} of sync job {run.job!r} was claimed by another "
                        f"sidecar process ({run.executor!r}), not {request.executor!r}"
                    )
                now = now_ms()
                run.heartbeat_at_ms = now
                run.counters.CopyFrom(request.counters)
                if status in _ENDS:
                    run.status = status
                    run.finished_at_ms = now
                    run.report.CopyFrom(request.report)
                    run.error = request.error
                revision = await self.book.replace_run(run)
                if revision is not None:
                    run.revision = revision
                    if status in _ENDS:
                        log.info(
                            "sync run %s#%d %s on node %s%s",
                            run.job,
                            run.number,
                            _status(status),
                            run.node,
                            f": {run.error}" if run.error else "",
                        )
                    return spb.ReportSyncRunResponse(run=run)
            raise RevisionConflictError("the run kept changing under this report; try again")

        return await self._run("ReportSyncRun", context, work)


def _status(status: int) -> str:
    return spb.SyncRunStatus.Name(status).removeprefix("SYNC_RUN_STATUS_").lower()


def _fail(name: str, context: Any, exc: Exception) -> None:
    """Ends the call with the status ``exc`` maps to (logged when unexpected)."""
    status = to_status(exc)
    if status.code == grpc.StatusCode.INTERNAL.value[0]:
        log.exception("SyncService/%s failed", name, exc_info=exc)
    end_call(context, status)


def _placement(job: spb.SyncJob) -> str:
    return f"platform {job.on_platform}" if job.on_platform else f"node {job.on_node}"
