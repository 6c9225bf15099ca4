"""A sidecar's SyncExecutor against a real control plane: it takes the runs
of its node, runs them with the engine (directories here), reports their
ends with the report, counts them in its metrics, and, stopped mid-run,
reports the run as stopped instead of leaving it to the run timeout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from ecosystem.v1 import sync_pb2 as spb
from ecosystem.v1 import sync_pb2_grpc
from prometheus_client import CollectorRegistry, generate_latest

from controlplane import ControlPlane
from controlplane.testing import test_config
from sidecar.sync import RunReport
from sidecar.sync.executor import SyncExecutor
from tests.util import assert_eventually

COMPLETED, FAILED = spb.SYNC_RUN_STATUS_COMPLETED, spb.SYNC_RUN_STATUS_FAILED


@pytest.fixture
async def plane() -> AsyncIterator[ControlPlane]:
    async with ControlPlane(test_config()) as cp:
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

        await assert_eventually(copied, timeout=10)
        assert sorted(p.name for p in destination.iterdir()) == ["f0.txt", "f1.txt", "f2.txt"]
        assert (tmp_path / "data" / "sync" / "docs.db").exists()

        async def again() -> None:
            # The next runs find nothing to copy.
            done = [r for r in await runs(stub, "docs") if r.status == COMPLETED]
            assert len(done) >= 2 and done[0].counters.files_copied == 0

        await assert_eventually(again, timeout=10)
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
