"""Sync jobs in a real control plane: SyncService (create, get, list, update,
pause and resume, delete; bad input refused field by field), the scheduler
(runs created on the leader, never two of one job at once, a silent sidecar's
run failed, missed slots run once after a restart), the sidecar's calls
(watch, claim, report), the run events on the bus, and the ACL rights."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from ecosystem.v1 import messaging_pb2, messaging_pb2_grpc, sync_pb2_grpc
from ecosystem.v1 import sync_pb2 as spb
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from bus import SubscriptionSpec
from controlplane import ControlPlane
from controlplane.store import MemoryStore
from controlplane.testing import test_config
from tests.harness.acl import acl_plane, bearer
from tests.util import assert_eventually

PENDING, RUNNING = spb.SYNC_RUN_STATUS_PENDING, spb.SYNC_RUN_STATUS_RUNNING
COMPLETED, FAILED = spb.SYNC_RUN_STATUS_COMPLETED, spb.SYNC_RUN_STATUS_FAILED


def job(name: str = "photos", **fields: Any) -> spb.SyncJob:
    settings: dict[str, Any] = {
        "source": "file:///data/photos",
        "destination": "s3://backup/photos",
        "every_seconds": 3600.0,
        "on_node": "nas-1",
        **fields,
    }
    return spb.SyncJob(name=name, **settings)


def violations(err: grpc.aio.AioRpcError) -> dict[str, str]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, f"no google.rpc.BadRequest details: {err.details()}"
    found: dict[str, str] = {}
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            found.update({v.field: v.description for v in bad.field_violations})
    return found


@pytest.fixture
async def plane() -> AsyncIterator[ControlPlane]:
    async with ControlPlane(test_config(sync_run_timeout=5)) as cp:
        yield cp


@pytest.fixture
async def stub(plane: ControlPlane) -> AsyncIterator[sync_pb2_grpc.SyncServiceStub]:
    async with grpc.aio.insecure_channel(plane.address) as channel:
        yield sync_pb2_grpc.SyncServiceStub(channel)


async def runs(stub: sync_pb2_grpc.SyncServiceStub, name: str) -> list[spb.SyncRun]:
    return list((await stub.ListSyncRuns(spb.ListSyncRunsRequest(job=name))).runs)


async def test_create_get_list_update_delete(stub: sync_pb2_grpc.SyncServiceStub) -> None:
    created = (await stub.CreateSyncJob(spb.CreateSyncJobRequest(job=job()))).job
    assert created.revision > 0 and created.created_at_ms > 0 and not created.paused
    with pytest.raises(grpc.aio.AioRpcError) as exists:
        await stub.CreateSyncJob(spb.CreateSyncJobRequest(job=job()))
    assert exists.value.code() == grpc.StatusCode.ALREADY_EXISTS

    got = (await stub.GetSyncJob(spb.GetSyncJobRequest(name="photos"))).job
    assert (got.source, got.destination, got.on_node) == (
        "file:///data/photos",
        "s3://backup/photos",
        "nas-1",
    )
    await stub.CreateSyncJob(
        spb.CreateSyncJobRequest(job=job("docs", cron="*/5 * * * *", mode="mirror"))
    )
    listed = (await stub.ListSyncJobs(spb.ListSyncJobsRequest())).jobs
    assert [j.name for j in listed] == ["docs", "photos"]

    changed = job(every_seconds=60.0, checksum=True, max_delete=10.0)
    updated = (await stub.UpdateSyncJob(spb.UpdateSyncJobRequest(job=changed))).job
    assert updated.every_seconds == 60.0 and updated.checksum and updated.max_delete == 10.0
    assert updated.created_at_ms == created.created_at_ms
    assert updated.revision > created.revision
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await stub.UpdateSyncJob(
            spb.UpdateSyncJobRequest(job=changed, expected_revision=created.revision)
        )
    assert stale.value.code() == grpc.StatusCode.ABORTED

    await stub.DeleteSyncJob(spb.DeleteSyncJobRequest(name="docs"))
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await stub.GetSyncJob(spb.GetSyncJobRequest(name="docs"))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no sync job 'docs'" in (gone.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await stub.DeleteSyncJob(spb.DeleteSyncJobRequest(name="docs"))
    assert again.value.code() == grpc.StatusCode.NOT_FOUND


async def test_bad_jobs_refused_field_by_field(stub: sync_pb2_grpc.SyncServiceStub) -> None:
    bad = spb.SyncJob(
        name="a.b",
        source="ftp://host/x",
        destination="s3:///nobucket",
        mode="clone",
        conflict="loudest",
        max_delete=-1.0,
        transfers=-2,
        bandwidth=-5,
        cron="61 * * * *",
        on_node="",
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.CreateSyncJob(spb.CreateSyncJobRequest(job=bad))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(refused.value)
    assert "not a valid job name" in found["job.name"]
    assert "scheme 'ftp'" in found["job.source"] and "file://" in found["job.source"]
    assert "s3://BUCKET" in found["job.destination"]
    assert "not one of copy, mirror, bisync" in found["job.mode"]
    assert "not one of newer, keep-both" in found["job.conflict"]
    assert "percentage 0-100" in found["job.max_delete"]
    assert "1-256" in found["job.transfers"]
    assert "bytes per second" in found["job.bandwidth"]
    assert "61 * * * *" in found["job.cron"]
    assert "is required" in found["job.on_node"]
    with pytest.raises(grpc.aio.AioRpcError) as unscheduled:
        await stub.CreateSyncJob(
            spb.CreateSyncJobRequest(
                job=spb.SyncJob(name="x", source="file:///a", destination="file:///b", on_node="n")
            )
        )
    assert "every_seconds or cron" in violations(unscheduled.value)["job.schedule"]
    with pytest.raises(grpc.aio.AioRpcError) as too_often:
        await stub.CreateSyncJob(spb.CreateSyncJobRequest(job=job(every_seconds=0.1)))
    assert "between 1 and" in violations(too_often.value)["job.every_seconds"]
    # Nothing was written.
    assert not (await stub.ListSyncJobs(spb.ListSyncJobsRequest())).jobs


async def test_runs_scheduled_claimed_reported(
    plane: ControlPlane, stub: sync_pb2_grpc.SyncServiceStub
) -> None:
    """A due job gets one pending run on its node; the node's stream shows it;
    a claim makes it running; no second run while it runs; the report ends it
    and the next one follows its slot."""
    await stub.CreateSyncJob(spb.CreateSyncJobRequest(job=job(every_seconds=1.0)))
    stream = stub.WatchSyncRuns(spb.WatchSyncRunsRequest(node="nas-1"))
    try:
        first = await anext(aiter(stream))
        while not first.runs:
            first = await anext(aiter(stream))
        run = first.runs[0]
        assert (run.job, run.number, run.status, run.node) == ("photos", 1, PENDING, "nas-1")
        assert run.spec.source == "file:///data/photos"
        with pytest.raises(grpc.aio.AioRpcError) as elsewhere:
            await stub.ClaimSyncRun(spb.ClaimSyncRunRequest(job="photos", number=1, node="x"))
        assert elsewhere.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        claimed = await stub.ClaimSyncRun(
            spb.ClaimSyncRunRequest(job="photos", number=1, node="nas-1")
        )
        assert claimed.run.status == RUNNING and claimed.run.started_at_ms > 0
        with pytest.raises(grpc.aio.AioRpcError) as twice:
            await stub.ClaimSyncRun(spb.ClaimSyncRunRequest(job="photos", number=1, node="nas-1"))
        assert twice.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # Slots pass while it runs: still one run.
        await asyncio.sleep(0.2)
        for _ in range(16):
            await stub.ReportSyncRun(
                spb.ReportSyncRunRequest(job="photos", number=1, node="nas-1", status=RUNNING)
            )
            await asyncio.sleep(0.15)
        assert [r.number for r in await runs(stub, "photos")] == [1]
        report: dict[str, Any] = {"status": "completed", "files_copied": 3}
        done = await stub.ReportSyncRun(
            spb.ReportSyncRunRequest(
                job="photos",
                number=1,
                node="nas-1",
                status=COMPLETED,
                counters=spb.SyncRunCounters(files_copied=3, bytes_copied=300),
                report=_struct(report),
            )
        )
        assert done.run.status == COMPLETED and done.run.finished_at_ms > 0
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await stub.ReportSyncRun(
                spb.ReportSyncRunRequest(job="photos", number=1, node="nas-1", status=FAILED)
            )
        assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        async def second() -> None:
            listed = await runs(stub, "photos")
            assert [r.number for r in listed] == [2, 1]
            # It stands for the slots that passed while run 1 ran: run once.
            assert listed[0].slots >= 2 and listed[0].status == PENDING
            assert listed[1].counters.bytes_copied == 300
            assert listed[1].report.fields["files_copied"].number_value == 3

        await assert_eventually(second, timeout=5)
        got = (await stub.GetSyncJob(spb.GetSyncJobRequest(name="photos"))).job
        assert got.last_run == 2 and got.last_status == PENDING and got.next_run_at_ms > 0
    finally:
        stream.cancel()


async def test_pause_resume(plane: ControlPlane, stub: sync_pb2_grpc.SyncServiceStub) -> None:
    await stub.CreateSyncJob(spb.CreateSyncJobRequest(job=job(every_seconds=1.0)))
    paused = (await stub.PauseSyncJob(spb.PauseSyncJobRequest(name="photos"))).job
    assert paused.paused
    # Created and paused at once: at most the one run made before the pause.
    await asyncio.sleep(1.5)
    before = await runs(stub, "photos")
    assert len(before) <= 1
    for run in before:
        await stub.ClaimSyncRun(
            spb.ClaimSyncRunRequest(job="photos", number=run.number, node="nas-1")
        )
        await stub.ReportSyncRun(
            spb.ReportSyncRunRequest(
                job="photos", number=run.number, node="nas-1", status=COMPLETED
            )
        )
    await asyncio.sleep(1.5)
    assert len(await runs(stub, "photos")) == len(before)
    resumed = (await stub.ResumeSyncJob(spb.ResumeSyncJobRequest(name="photos"))).job
    assert not resumed.paused

    async def more() -> None:
        assert len(await runs(stub, "photos")) == len(before) + 1

    await assert_eventually(more, timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.PauseSyncJob(spb.PauseSyncJobRequest(name="nope"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_silent_sidecar_run_fails(
    plane: ControlPlane, stub: sync_pb2_grpc.SyncServiceStub
) -> None:
    """A claimed run whose sidecar stops sending heartbeats fails after the
    run timeout (5 s here), with the reason, and the job runs again."""
    await stub.CreateSyncJob(spb.CreateSyncJobRequest(job=job(every_seconds=1.0)))

    async def pending() -> None:
        assert [r.status for r in await runs(stub, "photos")] == [PENDING]

    await assert_eventually(pending, timeout=5)
    await stub.ClaimSyncRun(spb.ClaimSyncRunRequest(job="photos", number=1, node="nas-1"))

    async def failed() -> None:
        listed = await runs(stub, "photos")
        first = listed[-1]
        assert first.status == FAILED, first
        assert "went silent: no heartbeat for 5s" in first.error
        assert listed[0].number == 2

    await assert_eventually(failed, timeout=10)
    assert plane.sync_scheduler is not None and plane.sync_scheduler.timed_out == 1


async def test_run_events_on_the_bus(
    plane: ControlPlane, stub: sync_pb2_grpc.SyncServiceStub
) -> None:
    """started and completed, once each, on eco.sync.<job>.*."""
    assert plane.broker is not None
    subscription = await plane.broker.subscribe(SubscriptionSpec("eco.sync.photos.*"))
    try:
        await stub.CreateSyncJob(spb.CreateSyncJobRequest(job=job(every_seconds=1.0)))

        async def pending() -> None:
            assert [r.status for r in await runs(stub, "photos")] == [PENDING]

        await assert_eventually(pending, timeout=5)
        request = {"job": "photos", "number": 1, "node": "nas-1"}
        await stub.ClaimSyncRun(spb.ClaimSyncRunRequest(**request))
        await stub.ReportSyncRun(spb.ReportSyncRunRequest(**request, status=RUNNING))
        await stub.ReportSyncRun(
            spb.ReportSyncRunRequest(
                **request, status=COMPLETED, counters=spb.SyncRunCounters(files_copied=2)
            )
        )
        seen = []
        async with asyncio.timeout(5):
            async for message in subscription:
                seen.append((message.subject, json.loads(message.data)))
                if len(seen) == 2:
                    break
        assert [subject for subject, _ in seen] == [
            "eco.sync.photos.started",
            "eco.sync.photos.completed",
        ]
        completed = seen[1][1]
        assert completed["status"] == "completed" and completed["counters"]["files_copied"] == 2
        assert completed["node"] == "nas-1" and completed["number"] == 1
    finally:
        await subscription.close()


async def test_missed_slots_run_once_after_a_restart(tmp_path: Path) -> None:
    """A job planned, then the control plane away for many slots: one run
    covering them when it is back, not one per slot."""
    store = f"sqlite://{tmp_path / 'cp.db'}"
    async with (
        ControlPlane(test_config(store_url=store)) as cp,
        grpc.aio.insecure_channel(cp.address) as channel,
    ):
        stub = sync_pb2_grpc.SyncServiceStub(channel)
        await stub.CreateSyncJob(spb.CreateSyncJobRequest(job=job(every_seconds=1.0)))

        async def one() -> None:
            assert len(await runs(stub, "photos")) == 1

        await assert_eventually(one, timeout=5)
        request = {"job": "photos", "number": 1, "node": "nas-1"}
        await stub.ClaimSyncRun(spb.ClaimSyncRunRequest(**request))
        await stub.ReportSyncRun(spb.ReportSyncRunRequest(**request, status=COMPLETED))
        await stub.PauseSyncJob(spb.PauseSyncJobRequest(name="photos"))
        await stub.ResumeSyncJob(spb.ResumeSyncJobRequest(name="photos"))
    # Away for several one-second slots.
    await asyncio.sleep(3.2)
    async with (
        ControlPlane(test_config(store_url=store)) as cp,
        grpc.aio.insecure_channel(cp.address) as channel,
    ):
        stub = sync_pb2_grpc.SyncServiceStub(channel)

        async def once() -> None:
            listed = await runs(stub, "photos")
            assert [r.number for r in listed] == [2, 1]
            assert listed[0].slots >= 3

        await assert_eventually(once, timeout=5)
        await asyncio.sleep(0.5)
        assert len(await runs(stub, "photos")) == 2


async def test_acl_rights(tmp_path: Path) -> None:
    """Jobs need sync:<job>:read|write; a list shows the jobs a token may read;
    the run calls need write on the node."""
    async with acl_plane(tmp_path) as acl:
        stub = sync_pb2_grpc.SyncServiceStub(acl.channel)
        admin = bearer(acl.management)
        await stub.CreateSyncJob(spb.CreateSyncJobRequest(job=job()), metadata=admin)
        await stub.CreateSyncJob(spb.CreateSyncJobRequest(job=job("docs")), metadata=admin)
        reader = bearer(await acl.token("sync:photos:read", "node:nas-1:write"))
        listed = await stub.ListSyncJobs(spb.ListSyncJobsRequest(), metadata=reader)
        assert [j.name for j in listed.jobs] == ["photos"]
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.PauseSyncJob(spb.PauseSyncJobRequest(name="photos"), metadata=reader)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "sync:photos:write" in (denied.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as other:
            await stub.ClaimSyncRun(
                spb.ClaimSyncRunRequest(job="photos", number=1, node="nas-2"), metadata=reader
            )
        assert "node:nas-2:write" in (other.value.details() or "")
        # Only the control plane publishes run events, the management token aside.
        bus = messaging_pb2_grpc.MessagingServiceStub(acl.channel)
        with pytest.raises(grpc.aio.AioRpcError) as forged:
            await bus.Publish(
                messaging_pb2.PublishRequest(subject="eco.sync.photos.completed", data=b"{}"),
                metadata=admin,
            )
        assert forged.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "only the control plane publishes on eco.sync.*" in (forged.value.details() or "")
        # The node's own right lets a sidecar watch its runs.
        stream = stub.WatchSyncRuns(spb.WatchSyncRunsRequest(node="nas-1"), metadata=reader)
        assert isinstance(await anext(aiter(stream)), spb.WatchSyncRunsResponse)
        stream.cancel()


def _struct(data: dict[str, Any]) -> Any:
    from google.protobuf import struct_pb2

    value = struct_pb2.Struct()
    value.update(data)
    return value


async def test_replicas_one_scheduler_and_failover() -> None:
    """Two replicas over one store: either answers; only the leader schedules,
    so each slot makes one run; when the leader dies, the other schedules on
    with the next numbers (no run made twice, none skipped)."""
    async with MemoryStore() as store:
        a = ControlPlane(test_config(leader_ttl=1.0), store=store)
        b = ControlPlane(test_config(leader_ttl=1.0), store=store)
        await a.start()
        await b.start()
        try:

            async def one_leader() -> None:
                assert [a.is_leader, b.is_leader].count(True) == 1

            await assert_eventually(one_leader, timeout=10)
            leader, follower = (a, b) if a.is_leader else (b, a)
            async with (
                grpc.aio.insecure_channel(leader.address) as to_leader,
                grpc.aio.insecure_channel(follower.address) as to_follower,
            ):
                on_leader = sync_pb2_grpc.SyncServiceStub(to_leader)
                on_follower = sync_pb2_grpc.SyncServiceStub(to_follower)
                await on_follower.CreateSyncJob(
                    spb.CreateSyncJobRequest(job=job(every_seconds=1.0))
                )
                for number in (1, 2):
                    await finish_next(on_follower if number == 1 else on_leader, number)
                await leader.abort()

                async def taken_over() -> None:
                    assert follower.is_leader

                await assert_eventually(taken_over, timeout=10)
                # Run 3 may be the old leader's last; run 4 is the new one's.
                await finish_next(on_follower, 3)
                await finish_next(on_follower, 4)
                numbers = [r.number for r in await runs(on_follower, "photos")]
                assert numbers[-4:] == [4, 3, 2, 1] and len(numbers) <= 5
        finally:
            await a.stop(grace=0)
            await b.stop(grace=0)


async def finish_next(stub: sync_pb2_grpc.SyncServiceStub, number: int) -> None:
    """Waits for run ``number`` of photos, then claims and completes it."""

    async def scheduled() -> None:
        assert number in [r.number for r in await runs(stub, "photos")]

    await assert_eventually(scheduled, timeout=15)
    request = {"job": "photos", "number": number, "node": "nas-1"}
    await stub.ClaimSyncRun(spb.ClaimSyncRunRequest(**request))
    await stub.ReportSyncRun(spb.ReportSyncRunRequest(**request, status=COMPLETED))
