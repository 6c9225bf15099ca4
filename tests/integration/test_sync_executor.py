"""A sidecar's SyncExecutor against a real control plane: it takes the runs
of its node, runs them with the engine (directories here), reports their
ends with the report, counts them in its metrics, and, stopped mid-run,
reports the run as stopped instead of leaving it to the run timeout. A job
on a platform runs on one of that platform's sidecars at a time (their
sessions say their platform), never on another platform's."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from ecosystem.v1 import platform_pb2 as ppb
from ecosystem.v1 import platform_pb2_grpc, sync_pb2_grpc
from ecosystem.v1 import sync_pb2 as spb
from prometheus_client import CollectorRegistry, generate_latest

from controlplane import ControlPlane
from controlplane.testing import test_config
from sidecar.sync import RunReport, run_sync
from sidecar.sync.executor import SyncExecutor
from tests.integration.agent_stream import Stream
from tests.util import assert_eventually

COMPLETED, FAILED = spb.SYNC_RUN_STATUS_COMPLETED, spb.SYNC_RUN_STATUS_FAILED


@pytest.fixture
async def plane() -> AsyncIterator[ControlPlane]:
    async with ControlPlane(test_config()) as cp:
        assert cp.sync_scheduler is not None
        # No jitter: a job's first run is due at once.
        cp.sync_scheduler.config = dataclasses.replace(cp.sync_scheduler.config, max_jitter=0)
        yield cp


@pytest.fixture
async def stub(plane: ControlPlane) -> AsyncIterator[sync_pb2_grpc.SyncServiceStub]:
    async with grpc.aio.insecure_channel(plane.address) as channel:
        yield sync_pb2_grpc.SyncServiceStub(channel)


async def runs(stub: sync_pb2_grpc.SyncServiceStub, name: str) -> list[spb.SyncRun]:
    return list((await stub.ListSyncRuns(spb.ListSyncRunsRequest(job=name))).runs)


async def test_runs_a_job_and_reports_it(
    plane: ControlPlane, stub: sync_pb2_grpc.SyncServiceStub, tmp_path: Path
) -> None:
    source, destination = tmp_path / "src", tmp_path / "dst"
    source.mkdir()
    destination.mkdir()
    for i in range(3):
        (source / f"f{i}.txt").write_text(f"file {i}\n" * 10)
    await stub.CreateSyncJob(
        spb.CreateSyncJobRequest(
            job=spb.SyncJob(
                name="docs",
                source=source.as_uri(),
                destination=destination.as_uri(),
                every_seconds=1.0,
                on_node="n1",
            )
        )
    )
    registry = CollectorRegistry()
    executor = SyncExecutor(
        (plane.address,), "n1", tmp_path / "data", registry=registry, heartbeat=0.2
    )
    executor.start()
    try:

        async def copied() -> None:
            listed = await runs(stub, "docs")
            done = [r for r in listed if r.status == COMPLETED]
            assert done, listed
            first = done[-1]
            assert first.counters.files_copied == 3, first
            assert first.report.fields["status"].string_value == "completed"
            assert first.started_at_ms and first.finished_at_ms >= first.started_at_ms

        await assert_eventually(copied, timeout=30)
        assert sorted(p.name for p in destination.iterdir()) == ["f0.txt", "f1.txt", "f2.txt"]
        assert (tmp_path / "data" / "sync" / "docs.db").exists()

        async def again() -> None:
            # The next runs find nothing to copy.
            done = [r for r in await runs(stub, "docs") if r.status == COMPLETED]
            assert len(done) >= 2 and done[0].counters.files_copied == 0

        await assert_eventually(again, timeout=30)
        metrics = generate_latest(registry).decode()
        assert 'eco_sidecar_sync_runs_total{job="docs",status="completed"}' in metrics
        assert 'eco_sidecar_sync_files_total{action="copied",job="docs"} 3.0' in metrics
        assert "eco_sidecar_sync_run_seconds_bucket" in metrics
    finally:
        await executor.close()


async def test_a_run_stopped_with_the_sidecar_is_reported(
    plane: ControlPlane, stub: sync_pb2_grpc.SyncServiceStub, tmp_path: Path
) -> None:
    started = asyncio.Event()

    async def slow(options: Any, *, progress: Any = None) -> RunReport:
        started.set()
        await asyncio.sleep(60)
        raise AssertionError("not reached")

    await stub.CreateSyncJob(
        spb.CreateSyncJobRequest(
            job=spb.SyncJob(
                name="big",
                source="file:///a",
                destination="file:///b",
                every_seconds=60.0,
                on_node="n1",
            )
        )
    )
    executor = SyncExecutor((plane.address,), "n1", tmp_path / "data", runner=slow)
    executor.start()
    try:
        async with asyncio.timeout(20):
            await started.wait()
    finally:
        await executor.close()
    listed = await runs(stub, "big")
    assert listed[0].status == FAILED
    assert listed[0].error == "the sidecar stopped during the run"


async def test_a_run_left_by_a_crashed_sidecar_is_failed_at_restart(
    plane: ControlPlane, stub: sync_pb2_grpc.SyncServiceStub, tmp_path: Path
) -> None:
    """A run claimed by this data dir's last sidecar (which crashed: no report)
    is reported failed as soon as the sidecar starts again, not after the run
    timeout; another sidecar process's runs are left alone."""
    data = tmp_path / "data"
    (data / "sync").mkdir(parents=True)
    (data / "sync" / "executor-id").write_text("previous-life\n")
    await stub.CreateSyncJob(
        spb.CreateSyncJobRequest(
            job=spb.SyncJob(
                name="big",
                source="file:///a",
                destination="file:///b",
                every_seconds=3600.0,
                on_node="n1",
            )
        )
    )

    async def pending() -> None:
        assert [r.status for r in await runs(stub, "big")] == [spb.SYNC_RUN_STATUS_PENDING]

    await assert_eventually(pending, timeout=5)
    claim = {"job": "big", "number": 1, "node": "n1"}
    await stub.ClaimSyncRun(spb.ClaimSyncRunRequest(**claim, executor="previous-life"))
    with pytest.raises(grpc.aio.AioRpcError) as other:
        await stub.ReportSyncRun(
            spb.ReportSyncRunRequest(
                **claim, executor="someone-else", status=spb.SYNC_RUN_STATUS_RUNNING
            )
        )
    assert "claimed by another sidecar process" in (other.value.details() or "")
    executor = SyncExecutor((plane.address,), "n1", data)
    executor.start()
    try:
        assert executor.executor_id == "previous-life"

        async def failed() -> None:
            listed = await runs(stub, "big")
            assert listed[0].status == FAILED
            assert listed[0].error == "the sidecar restarted during the run"

        await assert_eventually(failed, timeout=30)
    finally:
        await executor.close()


async def test_a_platform_job_runs_on_one_of_its_sidecars_at_a_time(
    plane: ControlPlane, stub: sync_pb2_grpc.SyncServiceStub, tmp_path: Path
) -> None:
    """Two sidecars of platform plant-7 and one of platform depot: the job's
    runs happen on plant-7's, one at a time, each recorded with the node that
    ran it; depot's never runs one; with one of
    plant-7's sidecars gone the other takes every run."""
    async with grpc.aio.insecure_channel(plane.address) as channel:
        platforms = platform_pb2_grpc.PlatformServiceStub(channel)
        for name in ("plant-7", "depot"):
            await platforms.RegisterPlatform(
                ppb.RegisterPlatformRequest(
                    platform=ppb.Platform(name=name, kind=ppb.PLATFORM_KIND_ONPREM)
                )
            )
        sessions = [
            Stream(channel, "edge-1", platform="plant-7"),
            Stream(channel, "edge-2", platform="plant-7"),
            Stream(channel, "store-1", platform="depot"),
        ]
        for session in sessions:
            await session.connect()
        source, destination = tmp_path / "src", tmp_path / "dst"
        source.mkdir()
        destination.mkdir()
        (source / "a.txt").write_text("a" * 100)
        running: set[str] = set()
        overlaps: list[set[str]] = []
        ran: list[str] = []

        def runner_of(node: str) -> Any:
            async def runner(options: Any, *, progress: Any = None) -> RunReport:
                running.add(node)
                if len(running) > 1:
                    overlaps.append(set(running))
                try:
                    report = await run_sync(options, progress=progress)
                    await asyncio.sleep(0.3)  # long enough for a second claim to try
                    ran.append(node)
                    return report
                finally:
                    running.discard(node)

            return runner

        executors = {
            node: SyncExecutor(
                (plane.address,), node, tmp_path / node, heartbeat=0.2, runner=runner_of(node)
            )
            for node in ("edge-1", "edge-2", "store-1")
        }
        for executor in executors.values():
            executor.start()
        try:
            created = await stub.CreateSyncJob(
                spb.CreateSyncJobRequest(
                    job=spb.SyncJob(
                        name="plant",
                        source=source.as_uri(),
                        destination=destination.as_uri(),
                        every_seconds=1.0,
                        on_platform="plant-7",
                    )
                )
            )
            assert created.job.on_platform == "plant-7" and not created.job.on_node

            async def several() -> None:
                done = [r for r in await runs(stub, "plant") if r.status == COMPLETED]
                assert len(done) >= 4, done

            await assert_eventually(several, timeout=30)
            listed = await runs(stub, "plant")
            done = [r for r in listed if r.status == COMPLETED]
            assert {r.node for r in done} <= {"edge-1", "edge-2"}, done
            assert all(r.platform == "plant-7" and r.executor for r in done)
            assert (destination / "a.txt").read_text() == "a" * 100
            assert overlaps == [] and "store-1" not in ran
            assert executors["store-1"].finished == 0

            # One sidecar of the platform gone: the other runs what follows.
            await executors["edge-1"].close()
            last = max(r.number for r in await runs(stub, "plant"))

            async def on_the_other() -> None:
                later = [
                    r
                    for r in await runs(stub, "plant")
                    if r.number > last + 1 and r.status == COMPLETED
                ]
                assert len(later) >= 2 and {r.node for r in later} == {"edge-2"}, later

            await assert_eventually(on_the_other, timeout=30)
            assert overlaps == []
        finally:
            for executor in executors.values():
                await executor.close()
            for session in sessions:
                session.drop()
