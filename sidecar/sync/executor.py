"""Runs the scheduled sync jobs of this sidecar's node, where the data lives.

The control plane schedules runs (``controlplane.sync``); a
:class:`SyncExecutor` follows the runs offered to its node
(``SyncService/WatchSyncRuns``: the node's pending and running runs, and the
pending runs of jobs on the node's platform, the whole set each time), claims
each pending one (``ClaimSyncRun``: one sidecar wins; of a platform's several
sidecars the others are refused and drop it),
runs it with :func:`sidecar.sync.run_sync` (state in
``<data_dir>/sync/<job>.db``, so the next run compares against this one's),
sends a heartbeat with the counters so far every ``heartbeat`` seconds, and
reports the end with the run report (``ReportSyncRun``). The bus events are
the control plane's (it sees every transition); the counters are this
sidecar's ``/metrics`` (``eco_sidecar_sync_*``).

- A heartbeat the control plane refuses (the run was failed after a timeout,
  or its job deleted) stops the run: somebody else may run it next.
- A run that leaves the node's set while it runs (its job was deleted) is
  stopped too.
- The end is reported until the control plane takes it (it may be
  restarting), for up to ``report_patience`` seconds.
- On close, runs in progress are stopped and reported FAILED ("the sidecar
  stopped"), so their jobs run again at their next slot instead of after the
  control plane's run timeout.
- A job's named profiles (``source_profile``, ``destination_profile``) are
  looked up here, in this host's profiles (``profiles``: the sidecar config's
  ``sync`` section, see :mod:`sidecar.sync._profiles`), so credentials never
  pass through the control plane; a name this host does not define fails
  the run, naming the profile and the file looked in.
- Claims carry an executor id kept in ``<data_dir>/sync/executor-id``: a
  sidecar restarted on the same data dir (which it holds locked, so the old
  process is gone) finds the runs its last life left RUNNING and reports them
  FAILED ("the sidecar restarted during the run") at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from ecosystem.v1 import sync_pb2 as spb
from google.protobuf import struct_pb2
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

import sdk
from sdk import ChannelFactory
from sdk.lowlevel import Backoff, Transport
from sidecar.sync._profiles import Profiles, load_profiles, profile_settings
from sidecar.sync._spec import ConflictPolicy, Mode, Progress, RunReport, SyncOptions
from sidecar.sync.engine import run_sync

__all__ = ["MAX_REPORT_BYTES", "SyncExecutor", "options_of", "report_struct"]

logger = logging.getLogger(__name__)

Runner = Callable[..., Coroutine[Any, Any, RunReport]]
#: The executor id, in ``<data_dir>/sync``.
EXECUTOR_ID_FILE = "executor-id"
#: What the control plane takes of one report (SyncService's limit).
MAX_REPORT_BYTES = 256 * 1024
#: Decisions and errors kept in the stored report (their totals are kept too).
_KEPT = 100
_STATUS = {
    "completed": spb.SYNC_RUN_STATUS_COMPLETED,
    "failed": spb.SYNC_RUN_STATUS_FAILED,
    "guarded": spb.SYNC_RUN_STATUS_GUARDED,
}
_ENDED = (sdk.FailedPreconditionError, sdk.NotFoundError)
_REFUSED_RETRY = 60.0


def _default_profiles() -> Profiles:
    return load_profiles(None)


def options_of(
    run: spb.SyncRun, data_dir: Path, profiles: Callable[[], Profiles] = _default_profiles
) -> SyncOptions:
    """The engine's options for ``run`` (ValueError when its settings do not fit,
    or it names a profile ``profiles`` does not define: the message names the
    profile and the file looked in)."""
    spec = run.spec
    return SyncOptions(
        source=spec.source,
        destination=spec.destination,
        mode=Mode(spec.mode or Mode.COPY.value),
        checksum=spec.checksum,
        conflict=ConflictPolicy(spec.conflict or ConflictPolicy.NEWER.value),
        max_delete=spec.max_delete if spec.HasField("max_delete") else 50.0,
        transfers=spec.transfers or 8,
        bandwidth=spec.bandwidth or None,
        state_path=str(data_dir / "sync" / f"{run.job}.db"),
        job=run.job,
        profiles=profile_settings(
            spec.source,
            spec.destination,
            spec.source_profile,
            spec.destination_profile,
            profiles,
        ),
    )


def report_struct(report: RunReport) -> struct_pb2.Struct:
    """The report as the control plane keeps it: JSON, its decisions and
    errors cut to the first 100 (with their totals, counting the decisions
    the run's own report left out), under 256 KiB."""
    data = report.to_dict()
    # The report keeps the first MAX_DECISIONS and counts the rest: both are in the total.
    data["decisions_total"] = len(data["decisions"]) + report.decisions_truncated
    data["errors_total"] = len(data["errors"])
    data["decisions"] = data["decisions"][:_KEPT]
    data["errors"] = data["errors"][:_KEPT]
    value = struct_pb2.Struct()
    value.update(json.loads(json.dumps(data, default=str)))
    if value.ByteSize() > MAX_REPORT_BYTES:
        data["decisions"], data["errors"] = [], data["errors"][:10]
        value = struct_pb2.Struct()
        value.update(json.loads(json.dumps(data, default=str)))
    return value


def _counters(report: RunReport | None, progress: Progress | None) -> spb.SyncRunCounters:
    if report is not None:
        return spb.SyncRunCounters(
            files_copied=report.files_copied,
            bytes_copied=report.bytes_copied,
            files_deleted=report.files_deleted,
            files_skipped=report.files_skipped,
            conflicts=report.conflicts,
            errors=len(report.errors),
            duration_seconds=max(0.0, report.finished_at - report.started_at),
        )
    if progress is not None:
        return spb.SyncRunCounters(
            files_copied=progress.files_done,
            bytes_copied=progress.bytes_done,
            files_deleted=progress.deletes_done,
            errors=progress.errors,
        )
    return spb.SyncRunCounters()


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.runs = Counter(
            "eco_sidecar_sync_runs",
            "Sync runs this sidecar finished, by job and status",
            ["job", "status"],
            registry=registry,
        )
        self.bytes = Counter(
            "eco_sidecar_sync_bytes", "Bytes copied by sync runs", ["job"], registry=registry
        )
        self.files = Counter(
            "eco_sidecar_sync_files",
            "Files handled by sync runs, by action (copied, deleted, skipped)",
            ["job", "action"],
            registry=registry,
        )
        self.seconds = Histogram(
            "eco_sidecar_sync_run_seconds",
            "Duration of sync runs",
            ["job"],
            registry=registry,
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600),
        )
        self.active = Gauge(
            "eco_sidecar_sync_runs_active", "Sync runs in progress", registry=registry
        )

    def finished(self, job: str, status: str, report: RunReport | None, seconds: float) -> None:
        self.runs.labels(job, status).inc()
        self.seconds.labels(job).observe(seconds)
        if report is not None:
            self.bytes.labels(job).inc(report.bytes_copied)
            self.files.labels(job, "copied").inc(report.files_copied)
            self.files.labels(job, "deleted").inc(report.files_deleted)
            self.files.labels(job, "skipped").inc(report.files_skipped)


class SyncExecutor:
    """Follows and runs the sync runs of ``node`` (see the module docstring).

    Lifecycle: ``start()`` begins following; ``close()`` (idempotent) stops
    the runs in progress, reports them, and closes the channel.
    """

    def __init__(
        self,
        addresses: tuple[str, ...],
        node: str,
        data_dir: Path,
        *,
        token: str = "",
        channel_factory: ChannelFactory | None = None,
        registry: CollectorRegistry | None = None,
        max_runs: int = 4,
        heartbeat: float = 5.0,
        silence: float = 20.0,
        report_patience: float = 300.0,
        runner: Runner = run_sync,
        profiles: Callable[[], Profiles] = _default_profiles,
    ) -> None:
        if max_runs < 1 or not heartbeat > 0 or not silence > 0:
            raise ValueError("max_runs must be ≥ 1, heartbeat and silence > 0")
        self._transport = Transport(
            addresses, timeout=10.0, channel_factory=channel_factory, token=token
        )
        self.node = node
        self.data_dir = data_dir
        self._metrics = _Metrics(registry or CollectorRegistry())
        self._max_runs = max_runs
        self._heartbeat = heartbeat
        self._silence = silence
        self._patience = report_patience
        self._runner = runner
        #: this host's named profiles, as of each run that names one
        self._profiles = profiles
        #: (job, number) → the task running it
        self._runs: dict[tuple[str, int], asyncio.Task[None]] = {}
        #: the runs of ``_runs`` this sidecar has claimed (the others are still trying)
        self._claimed: set[tuple[str, int]] = set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        #: kept with the data dir (read or made at start)
        self.executor_id = ""
        self.connected = False
        self.error = ""
        self.finished = 0

    @property
    def running(self) -> list[tuple[str, int]]:
        return sorted(self._runs)

    def status(self) -> dict[str, Any]:
        """This executor in the sidecar's ``/status``."""
        return {
            "following": self.connected,
            "error": self.error,
            "executor": self.executor_id,
            "running": [f"{job}#{number}" for job, number in self.running],
            "finished": self.finished,
        }

    def start(self) -> None:
        if self._task is None and not self._closing:
            self.executor_id = self._executor_id()
            self._task = asyncio.create_task(self._follow(), name=f"sync runs of {self.node}")

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        runs = list(self._runs.values())
        for run in runs:
            run.cancel()
        if runs:
            await asyncio.wait(runs)
        await self._transport.close()

    def _executor_id(self) -> str:
        """This data dir's executor id (made on first use); a random one, not
        kept, when the directory cannot be written (logged)."""
        path = self.data_dir / "sync" / EXECUTOR_ID_FILE
        kept = ""
        with contextlib.suppress(OSError, UnicodeDecodeError):  # none yet: made below
            kept = path.read_text(encoding="ascii").strip()
        if kept and len(kept) <= 64:
            return kept
        made = uuid.uuid4().hex[:16]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(made + "\n", encoding="ascii")
        except OSError as exc:
            logger.warning("%s: cannot keep the sync executor id: %s", path, exc)
        return made

    # -- following the node's runs -----------------------------------------------------

    async def _follow(self) -> None:
        backoff = Backoff(initial=0.2, maximum=5.0)
        while True:
            delay = 0.0
            try:
                await self._watch(backoff)
            except (sdk.PermissionDeniedError, sdk.UnimplementedError) as err:
                # Not for a retry soon: a token without node:<id>:write, or a
                # control plane without sync jobs. Said once a minute.
                self.error = str(err)
                logger.warning("sync runs of node %s cannot be followed: %s", self.node, err)
                self.connected, delay = False, _REFUSED_RETRY
            except sdk.EcoError as err:
                self.error = str(err)
                if self.connected:
                    logger.warning("sync runs watch lost: %s; resuming", err)
                self.connected = False
            except TimeoutError:
                self.error = f"no word from the control plane for {self._silence:g}s"
                logger.warning("sync runs watch silent for %.0fs; reconnecting", self._silence)
                self._transport.mark_unresponsive(self._transport.current_address)
                self.connected = False
            await asyncio.sleep(max(delay, backoff.next_delay()))

    async def _watch(self, backoff: Backoff) -> None:
        request = spb.WatchSyncRunsRequest(node=self.node)
        stream = self._transport.stream("WatchSyncRuns", request)
        try:
            while True:
                async with asyncio.timeout(self._silence):
                    response = await anext(stream)
                if not self.connected:
                    self.connected, self.error = True, ""
                    backoff.reset()
                    logger.info("following the sync runs of node %s", self.node)
                self._take(response.runs)
        except StopAsyncIteration:
            raise sdk.UnavailableError("the sync runs stream ended") from None
        finally:
            await stream.aclose()

    def _take(self, runs: Any) -> None:
        listed = {(run.job, run.number) for run in runs}
        for key, task in list(self._runs.items()):
            if key not in listed and not task.done():
                if key in self._claimed:
                    # Its job was deleted, or the control plane gave up on it.
                    logger.warning("sync run %s#%d was withdrawn; stopping it", *key)
                else:
                    # Not claimed yet: another sidecar of the platform took it.
                    logger.debug("sync run %s#%d was taken elsewhere", *key)
                task.cancel()
        for run in runs:
            key = (run.job, run.number)
            if key in self._runs:
                continue
            if run.status == spb.SYNC_RUN_STATUS_RUNNING and run.executor == self.executor_id:
                # Left running by this data dir's last sidecar, gone (the dir is locked).
                task = asyncio.create_task(self._left_behind(run), name=f"sync run {key}")
                self._runs[key] = task
                self._claimed.add(key)
                task.add_done_callback(self._forget(key))
                continue
            if run.status != spb.SYNC_RUN_STATUS_PENDING:
                continue
            if len(self._runs) >= self._max_runs:
                logger.info("sync run %s#%d waits: %d runs in progress", *key, len(self._runs))
                continue
            task = asyncio.create_task(self._execute(run), name=f"sync run {key[0]}#{key[1]}")
            self._runs[key] = task
            task.add_done_callback(self._forget(key))

    def _forget(self, key: tuple[str, int]) -> Callable[[asyncio.Task[None]], None]:
        def forget(_task: asyncio.Task[None]) -> None:
            self._runs.pop(key, None)
            self._claimed.discard(key)

        return forget

    async def _left_behind(self, run: spb.SyncRun) -> None:
        logger.warning(
            "sync run %s#%d was left running by this sidecar's last start; reporting it failed",
            run.job,
            run.number,
        )
        await self._report_end(
            spb.ReportSyncRunRequest(
                job=run.job,
                number=run.number,
                node=self.node,
                executor=self.executor_id,
                status=spb.SYNC_RUN_STATUS_FAILED,
                counters=run.counters,
                error="the sidecar restarted during the run",
            )
        )

    # -- one run -----------------------------------------------------------------------------

    async def _execute(self, run: spb.SyncRun) -> None:
        ids: dict[str, Any] = {
            "job": run.job,
            "number": run.number,
            "node": self.node,
            "executor": self.executor_id,
        }
        try:
            claimed = await self._transport.unary(
                "ClaimSyncRun", spb.ClaimSyncRunRequest(**ids), idempotent=False
            )
        except _ENDED as err:
            logger.info("sync run %s#%d not claimed: %s", run.job, run.number, err)
            return
        except sdk.EcoError as err:
            logger.warning("sync run %s#%d: claim failed: %s", run.job, run.number, err)
            return
        run = claimed.run
        self._claimed.add((run.job, run.number))
        logger.info(
            "sync run %s#%d started: %s → %s",
            run.job,
            run.number,
            run.spec.source,
            run.spec.destination,
        )
        self._metrics.active.inc()
        started = time.monotonic()
        progress: list[Progress] = []
        status, report, error = "failed", None, ""
        try:
            options = options_of(run, self.data_dir, self._profiles)
            (self.data_dir / "sync").mkdir(parents=True, exist_ok=True)
            work: asyncio.Task[RunReport] = asyncio.create_task(
                self._runner(options, progress=progress.append)
            )
            beat = asyncio.create_task(self._beat(ids, progress, work))
            try:
                report = await work
            finally:
                beat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beat
                if not work.done():
                    work.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await work
            status = report.status if report.status in _STATUS else "failed"
            if status != "completed":
                error = report.message or "; ".join(
                    f"{e.get('path') or '-'}: {e.get('message') or e.get('error', '')}"
                    for e in report.errors[:3]
                )
        except asyncio.CancelledError:
            status, error = (
                "failed",
                (
                    "the sidecar stopped during the run"
                    if self._closing
                    else "the run was withdrawn (job deleted or timed out)"
                ),
            )
            if not self._closing:
                raise
        except Exception as exc:
            # A bad setting (ValueError), the data dir (OSError), or a runner
            # that broke its word never to raise: the run still gets its end.
            logger.warning("sync run %s#%d cannot run: %s", run.job, run.number, exc)
            status, error = "failed", f"cannot run: {exc}"
        finally:
            self._metrics.active.dec()
            seconds = time.monotonic() - started
            self._metrics.finished(run.job, status, report, seconds)
            self.finished += 1
        counters = _counters(report, progress[-1] if progress else None)
        counters.duration_seconds = seconds
        end = spb.ReportSyncRunRequest(
            **ids,
            status=_STATUS[status],
            counters=counters,
            error=error[:2000],
        )
        if report is not None:
            end.report.CopyFrom(report_struct(report))
        logger.info(
            "sync run %s#%d %s in %.1fs%s",
            run.job,
            run.number,
            status,
            seconds,
            f": {error}" if error else "",
        )
        await self._report_end(end)

    async def _beat(
        self, ids: dict[str, Any], progress: list[Progress], work: asyncio.Task[Any]
    ) -> None:
        """Heartbeats with the counters so far; stops ``work`` when the control
        plane says the run is no longer this sidecar's."""
        while True:
            await asyncio.sleep(self._heartbeat)
            del progress[:-1]
            request = spb.ReportSyncRunRequest(
                **ids,
                status=spb.SYNC_RUN_STATUS_RUNNING,
                counters=_counters(None, progress[-1] if progress else None),
            )
            try:
                await self._transport.unary(
                    "ReportSyncRun", request, idempotent=True, time_limit=self._heartbeat
                )
            except _ENDED as err:
                logger.warning(
                    "sync run %s#%d given up by the control plane (%s); stopping",
                    ids["job"],
                    ids["number"],
                    err,
                )
                work.cancel()
                return
            except sdk.EcoError as err:
                # The control plane may be restarting: the run goes on, and the
                # next heartbeat tries again.
                logger.info("sync run heartbeat failed: %s", err)

    async def _report_end(self, request: spb.ReportSyncRunRequest) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (1.0 if self._closing else self._patience)
        backoff = Backoff(initial=0.2, maximum=5.0)
        while True:
            try:
                limit = min(10.0, max(0.2, deadline - loop.time()))
                await self._transport.unary(
                    "ReportSyncRun", request, idempotent=True, time_limit=limit
                )
                return
            except _ENDED as err:
                logger.warning(
                    "sync run %s#%d: its end was not taken: %s", request.job, request.number, err
                )
                return
            except sdk.EcoError as err:
                if loop.time() >= deadline:
                    logger.error(
                        "sync run %s#%d: cannot report its end (%s); the control "
                        "plane fails it after its run timeout",
                        request.job,
                        request.number,
                        err,
                    )
                    return
                await asyncio.sleep(backoff.next_delay())
