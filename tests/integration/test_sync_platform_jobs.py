"""Sync jobs on a platform in a real control plane: where a job runs is one
node or one registered platform (refused field by field otherwise); a
platform's run is offered to the sidecars whose sessions name that platform,
claimed by exactly one of them (then it is that node's run), refused to a
node of another platform, and failed after the claim timeout when no sidecar
of the platform takes it; a platform a job runs on cannot be deregistered."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import grpc
import pytest
from ecosystem.v1 import platform_pb2 as ppb
from ecosystem.v1 import platform_pb2_grpc, sync_pb2_grpc
from ecosystem.v1 import sync_pb2 as spb

from controlplane import ControlPlane
from controlplane.testing import test_config
from tests.integration.agent_stream import Stream
from tests.integration.test_sync_jobs import job, runs, violations
from tests.util import assert_eventually

PENDING, RUNNING = spb.SYNC_RUN_STATUS_PENDING, spb.SYNC_RUN_STATUS_RUNNING
COMPLETED, FAILED = spb.SYNC_RUN_STATUS_COMPLETED, spb.SYNC_RUN_STATUS_FAILED


@pytest.fixture
async def plane(request: pytest.FixtureRequest) -> AsyncIterator[ControlPlane]:
    claim_timeout = getattr(request, "param", 300.0)
    async with ControlPlane(test_config(sync_claim_timeout=claim_timeout)) as cp:
        assert cp.sync_scheduler is not None
        # No jitter: a job's first run is due at once.
        cp.sync_scheduler.config = dataclasses.replace(cp.sync_scheduler.config, max_jitter=0)
        yield cp


@pytest.fixture
async def channel(plane: ControlPlane) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(plane.address) as channel:
        yield channel


@pytest.fixture
async def stub(channel: grpc.aio.Channel) -> sync_pb2_grpc.SyncServiceStub:
    """SyncService, with platforms plant-7 and depot registered."""
    platforms = platform_pb2_grpc.PlatformServiceStub(channel)
    for name in ("plant-7", "depot"):
        await platforms.RegisterPlatform(
            ppb.RegisterPlatformRequest(
                platform=ppb.Platform(name=name, kind=ppb.PLATFORM_KIND_ONPREM)
            )
        )
    return sync_pb2_grpc.SyncServiceStub(channel)


def on_platform(name: str = "nightly", platform: str = "plant-7", **fields: object) -> spb.SyncJob:
    return job(name, on_node="", on_platform=platform, **fields)


async def refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    return err.value


async def test_where_a_job_runs_is_checked_field_by_field(
    stub: sync_pb2_grpc.SyncServiceStub,
) -> None:
    unknown = await refused(
        stub.CreateSyncJob(spb.CreateSyncJobRequest(job=on_platform(platform="nowhere")))
    )
    assert unknown.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'nowhere' is not a registered platform" in violations(unknown)["job.on_platform"]
    both = await refused(
        stub.CreateSyncJob(spb.CreateSyncJobRequest(job=job("x", on_platform="plant-7")))
    )
    assert "not for use with job.on_node" in violations(both)["job.on_platform"]
    bad = await refused(
        stub.CreateSyncJob(spb.CreateSyncJobRequest(job=on_platform(platform="Plant_7")))
    )
    assert "not a DNS label" in violations(bad)["job.on_platform"]
    neither = await refused(stub.CreateSyncJob(spb.CreateSyncJobRequest(job=job("x", on_node=""))))
    assert "or job.on_platform" in violations(neither)["job.on_node"]
    assert not (await stub.ListSyncJobs(spb.ListSyncJobsRequest())).jobs

    # A node's job moved to a platform, and back; an unknown platform refused.
    await stub.CreateSyncJob(spb.CreateSyncJobRequest(job=job("moving")))
    moved = (
        await stub.UpdateSyncJob(
            spb.UpdateSyncJobRequest(job=on_platform("moving", platform="depot"))
        )
    ).job
    assert (moved.on_node, moved.on_platform) == ("", "depot")
    gone = await refused(
        stub.UpdateSyncJob(spb.UpdateSyncJobRequest(job=on_platform("moving", platform="gone")))
    )
    assert "job.on_platform" in violations(gone)
    got = (await stub.GetSyncJob(spb.GetSyncJobRequest(name="moving"))).job
    assert got.on_platform == "depot"


async def test_a_run_is_offered_to_the_platform_and_claimed_once(
    plane: ControlPlane, channel: grpc.aio.Channel, stub: sync_pb2_grpc.SyncServiceStub
) -> None:
    sessions = [
        Stream(channel, "edge-1", platform="plant-7"),
        Stream(channel, "edge-2", platform="plant-7"),
        Stream(channel, "store-1", platform="depot"),
    ]
    for session in sessions:
        await session.connect()
    watches = {
        node: stub.WatchSyncRuns(spb.WatchSyncRunsRequest(node=node))
        for node in ("edge-1", "edge-2", "store-1")
    }
    try:
        await stub.CreateSyncJob(spb.CreateSyncJobRequest(job=on_platform(every_seconds=3600.0)))

        async def offered(node: str, want: list[tuple[str, str, int]]) -> None:
            # The set as the node's stream sends it now: (job, node, status).
            async with asyncio.timeout(10):
                while True:
                    answer = await watches[node].read()
                    assert isinstance(answer, spb.WatchSyncRunsResponse)
                    if [(r.job, r.node, r.status) for r in answer.runs] == want:
                        return

        pending = [("nightly", "", PENDING)]
        await offered("edge-1", pending)
        await offered("edge-2", pending)
        run = (await runs(stub, "nightly"))[0]
        assert (run.number, run.node, run.platform) == (1, "", "plant-7")
        ids = {"job": "nightly", "number": 1}

        early = await refused(
            stub.ReportSyncRun(spb.ReportSyncRunRequest(**ids, node="edge-1", status=RUNNING))
        )
        assert "is pending, not claimed by any node" in (early.details() or "")
        other = await refused(stub.ClaimSyncRun(spb.ClaimSyncRunRequest(**ids, node="store-1")))
        assert other.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "platform 'plant-7'" in (other.details() or "")
        assert "on platform 'depot'" in (other.details() or "")
        unknown = await refused(stub.ClaimSyncRun(spb.ClaimSyncRunRequest(**ids, node="ghost")))
        assert "on no platform" in (unknown.details() or "")

        # Both sidecars of the platform claim at once: one wins.
        answers = await asyncio.gather(
            *(
                stub.ClaimSyncRun(spb.ClaimSyncRunRequest(**ids, node=node, executor=node))
                for node in ("edge-1", "edge-2")
            ),
            return_exceptions=True,
        )
        won = [a for a in answers if isinstance(a, spb.ClaimSyncRunResponse)]
        lost = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
        assert len(won) == 1 and len(lost) == 1, answers
        assert lost[0].code() == grpc.StatusCode.FAILED_PRECONDITION
        winner = won[0].run.node
        loser = "edge-2" if winner == "edge-1" else "edge-1"
        assert won[0].run.status == RUNNING and won[0].run.platform == "plant-7"
        await offered(winner, [("nightly", winner, RUNNING)])
        await offered(loser, [])
        again = await refused(stub.ClaimSyncRun(spb.ClaimSyncRunRequest(**ids, node=loser)))
        assert f"assigned to node {winner!r}" in (again.details() or "")
        late = await refused(
            stub.ReportSyncRun(spb.ReportSyncRunRequest(**ids, node=loser, status=COMPLETED))
        )
        assert late.code() == grpc.StatusCode.FAILED_PRECONDITION
        await stub.ReportSyncRun(
            spb.ReportSyncRunRequest(**ids, node=winner, executor=winner, status=COMPLETED)
        )
        done = (await runs(stub, "nightly"))[0]
        assert (done.status, done.node, done.platform) == (COMPLETED, winner, "plant-7")
        await offered("store-1", [])
    finally:
        for watch in watches.values():
            watch.cancel()
        for session in sessions:
            session.drop()


@pytest.mark.parametrize("plane", [2.0], indirect=True)
async def test_a_run_no_sidecar_of_the_platform_claims_fails(
    stub: sync_pb2_grpc.SyncServiceStub,
) -> None:
    await stub.CreateSyncJob(
        spb.CreateSyncJobRequest(job=on_platform(platform="depot", every_seconds=3600.0))
    )

    async def failed() -> None:
        listed = await runs(stub, "nightly")
        assert listed and listed[0].status == FAILED, listed

    await assert_eventually(failed, timeout=15)
    error = (await runs(stub, "nightly"))[0].error
    assert "no sidecar of platform 'depot' claimed the run within 2s" in error


async def test_a_platform_a_job_runs_on_is_not_deregistered(
    channel: grpc.aio.Channel, stub: sync_pb2_grpc.SyncServiceStub
) -> None:
    platforms = platform_pb2_grpc.PlatformServiceStub(channel)
    await stub.CreateSyncJob(spb.CreateSyncJobRequest(job=on_platform()))
    err = await refused(platforms.DeregisterPlatform(ppb.DeregisterPlatformRequest(name="plant-7")))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "1 sync job(s) (nightly)" in (err.details() or "")
    await stub.DeleteSyncJob(spb.DeleteSyncJobRequest(name="nightly"))
    await platforms.DeregisterPlatform(ppb.DeregisterPlatformRequest(name="plant-7"))
    # And a job cannot name it any more.
    gone = await refused(stub.CreateSyncJob(spb.CreateSyncJobRequest(job=on_platform())))
    assert "not a registered platform" in violations(gone)["job.on_platform"]
