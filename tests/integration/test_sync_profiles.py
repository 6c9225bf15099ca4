"""A job's named profile, resolved by the sidecar that runs it: a real
``eco sidecar`` whose config names a profiles file runs a job whose
destination is a bucket on the S3 emulator, reachable only through the
profile's endpoint and keys (the control plane holds the profile's name, not
its settings). A job naming a profile the host does not define fails, the
error naming the profile and the file; once the file defines it, the next
run succeeds without a restart."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import yaml
from ecosystem.v1 import sync_pb2 as spb
from ecosystem.v1 import sync_pb2_grpc

from controlplane import ControlPlane
from controlplane.testing import test_config
from tests.harness.cloud_storage import moto_server, s3_client, s3_target  # noqa: F401  (fixtures)
from tests.harness.sidecar import SidecarProcess
from tests.harness.storage import StoreTarget
from tests.util import assert_eventually

COMPLETED, FAILED = spb.SYNC_RUN_STATUS_COMPLETED, spb.SYNC_RUN_STATUS_FAILED


@pytest.fixture
async def plane() -> AsyncIterator[ControlPlane]:
    async with ControlPlane(test_config()) as cp:
        assert cp.sync_scheduler is not None
        cp.sync_scheduler.config = dataclasses.replace(cp.sync_scheduler.config, max_jitter=0)
        yield cp


def _keys(target: StoreTarget) -> list[str]:
    s3 = s3_client(target.settings)
    bucket, prefix = target.url.removeprefix("s3://").split("/", 1)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])
    return sorted(item["Key"].removeprefix(prefix + "/") for item in listed)


async def test_a_sidecar_runs_a_job_with_its_hosts_profile(
    plane: ControlPlane,
    tmp_path: Path,
    s3_target: StoreTarget,  # noqa: F811  (the fixture imported above)
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_text("alpha\n")
    (source / "b c.txt").write_text("beta\n" * 100)
    profiles = tmp_path / "sync-profiles.yaml"
    profiles.write_text(yaml.safe_dump({"profiles": {"moto": s3_target.settings}}))
    sidecar = SidecarProcess(
        tmp_path, "store-1", f"sync:\n  profiles_file: {profiles}\n", plane.address
    )
    await sidecar.start()
    try:
        async with grpc.aio.insecure_channel(plane.address) as channel:
            stub = sync_pb2_grpc.SyncServiceStub(channel)

            async def runs(name: str) -> list[spb.SyncRun]:
                listed = await stub.ListSyncRuns(spb.ListSyncRunsRequest(job=name))
                return list(listed.runs)

            for name, profile in (("up", "moto"), ("lost", "backup")):
                await stub.CreateSyncJob(
                    spb.CreateSyncJobRequest(
                        job=spb.SyncJob(
                            name=name,
                            source=source.as_uri(),
                            destination=f"{s3_target.url}/{name}",
                            destination_profile=profile,
                            every_seconds=1.0,
                            on_node="store-1",
                        )
                    )
                )
            stored = (await stub.GetSyncJob(spb.GetSyncJobRequest(name="up"))).job
            assert stored.destination_profile == "moto"

            async def uploaded() -> None:
                done = [r for r in await runs("up") if r.status == COMPLETED]
                assert done, await runs("up")
                assert done[-1].counters.files_copied == 2

            await assert_eventually(uploaded, timeout=30)
            assert _keys(s3_target) == ["up/a.txt", "up/b c.txt"]

            async def refused() -> None:
                failed = [r for r in await runs("lost") if r.status == FAILED]
                assert failed, await runs("lost")
                assert failed[-1].error == (
                    f"cannot run: destination profile 'backup' is not defined in {profiles} "
                    "(it defines: moto)"
                ), failed[-1].error

            await assert_eventually(refused, timeout=30)
            assert "up/a.txt" in _keys(s3_target) and not any(
                key.startswith("lost/") for key in _keys(s3_target)
            )

            # The host defines it now: the next run takes it, no restart.
            profiles.write_text(
                yaml.safe_dump(
                    {"profiles": {"moto": s3_target.settings, "backup": s3_target.settings}}
                )
            )

            async def taken() -> None:
                assert any(r.status == COMPLETED for r in await runs("lost"))

            await assert_eventually(taken, timeout=30)
            assert "lost/a.txt" in _keys(s3_target)
    finally:
        await sidecar.stop()
