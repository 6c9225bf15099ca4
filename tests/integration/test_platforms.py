"""Platforms in a real control plane: PlatformService (register, update with
an expected revision, list with filters, get with the nodes, services and
health of what runs on it, deregister refused while in use), every field's
validation with its field path, WatchPlatforms, and the rights each call
needs under ``--acl deny``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from ecosystem.v1 import catalog_pb2 as cpb
from ecosystem.v1 import catalog_pb2_grpc, platform_pb2_grpc
from ecosystem.v1 import platform_pb2 as ppb
from ecosystem.v1 import registry_pb2 as pb
from ecosystem.v1 import registry_pb2_grpc as pb_grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from controlplane import ControlPlane
from controlplane.testing import test_config
from tests.harness.acl import acl_plane, bearer
from tests.integration.agent_stream import Stream
from tests.util import assert_eventually

CORE, CLOUD, ONPREM = ppb.PLATFORM_KIND_CORE, ppb.PLATFORM_KIND_CLOUD, ppb.PLATFORM_KIND_ONPREM
PUT, DELETE = pb.WATCH_EVENT_TYPE_PUT, pb.WATCH_EVENT_TYPE_DELETE
RESYNC, END = pb.WATCH_EVENT_TYPE_RESYNC, pb.WATCH_EVENT_TYPE_SNAPSHOT_END


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
    async with ControlPlane(test_config()) as cp:
        yield cp


@pytest.fixture
async def channel(plane: ControlPlane) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(plane.address) as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> platform_pb2_grpc.PlatformServiceStub:
    return platform_pb2_grpc.PlatformServiceStub(channel)


def aws(**fields: object) -> ppb.Platform:
    base: dict[str, object] = {
        "name": "aws-eu",
        "kind": CLOUD,
        "provider": "aws",
        "regions": ["eu-west-1", "eu-central-1"],
        "labels": {"env": "prod", "team": "infra"},
        "description": "The EU AWS account",
    }
    base.update(fields)
    return ppb.Platform(**base)  # type: ignore[arg-type]


async def register(
    stub: platform_pb2_grpc.PlatformServiceStub, platform: ppb.Platform, **kw: object
) -> ppb.RegisterPlatformResponse:
    return await stub.RegisterPlatform(ppb.RegisterPlatformRequest(platform=platform, **kw))  # type: ignore[arg-type]


async def test_register_get_list_update_with_revisions(
    stub: platform_pb2_grpc.PlatformServiceStub,
) -> None:
    created = await register(stub, aws())
    assert created.created and created.changed
    first = created.platform
    assert first.create_revision == first.mod_revision > 0
    assert list(first.regions) == ["eu-west-1", "eu-central-1"]

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await register(stub, aws())
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS

    # The same platform again with its revision: nothing written.
    same = await register(stub, aws(), expected_revision=first.mod_revision)
    assert not same.changed and same.platform.mod_revision == first.mod_revision

    updated = await register(stub, aws(description="moved"), expected_revision=first.mod_revision)
    assert updated.changed and not updated.created
    assert updated.platform.mod_revision > first.mod_revision
    assert updated.platform.create_revision == first.create_revision

    # A writer that read the old revision is told, not overwritten.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await register(stub, aws(description="stale"), expected_revision=first.mod_revision)
    assert err.value.code() == grpc.StatusCode.ABORTED
    assert str(updated.platform.mod_revision) in (err.value.details() or "")
    got = (await stub.GetPlatform(ppb.GetPlatformRequest(name="aws-eu"))).platform
    assert got.description == "moved"

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await register(stub, aws(name="gone"), expected_revision=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    replaced = await register(stub, aws(description="replaced"), replace=True)
    assert replaced.changed

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetPlatform(ppb.GetPlatformRequest(name="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_filters(stub: platform_pb2_grpc.PlatformServiceStub) -> None:
    await register(stub, aws())
    await register(stub, aws(name="gcp-us", provider="gcp", labels={"env": "dev"}))
    await register(stub, ppb.Platform(name="core", kind=CORE))
    await register(stub, ppb.Platform(name="plant-7", kind=ONPREM, labels={"env": "prod"}))

    async def names(**kw: object) -> list[str]:
        answer = await stub.ListPlatforms(ppb.ListPlatformsRequest(**kw))  # type: ignore[arg-type]
        return [p.name for p in answer.platforms]

    assert await names() == ["aws-eu", "core", "gcp-us", "plant-7"]
    assert await names(kind=CLOUD) == ["aws-eu", "gcp-us"]
    assert await names(provider="gcp") == ["gcp-us"]
    assert await names(labels={"env": "prod"}) == ["aws-eu", "plant-7"]
    assert await names(labels={"env": "prod", "team": "infra"}) == ["aws-eu"]
    assert await names(kind=ONPREM, labels={"env": "dev"}) == []


@pytest.mark.parametrize(
    ("platform", "field"),
    [
        (ppb.Platform(kind=CORE), "platform.name"),
        (ppb.Platform(name="Bad_Name", kind=CORE), "platform.name"),
        (ppb.Platform(name="x-" * 40, kind=CORE), "platform.name"),
        (ppb.Platform(name="p"), "platform.kind"),
        (ppb.Platform(name="p", kind=CLOUD), "platform.provider"),
        (ppb.Platform(name="p", kind=CORE, provider="AWS!"), "platform.provider"),
        (ppb.Platform(name="p", kind=CORE, regions=["eu west"]), "platform.regions[0]"),
        (ppb.Platform(name="p", kind=CORE, regions=["eu", "eu"]), "platform.regions[1]"),
        (ppb.Platform(name="p", kind=CORE, labels={"-bad": "x"}), "platform.labels[-bad]"),
        (ppb.Platform(name="p", kind=CORE, labels={"ok": "bad value"}), "platform.labels[ok]"),
        (ppb.Platform(name="p", kind=CORE, description="d" * 1025), "platform.description"),
    ],
)
async def test_invalid_platforms_are_refused_by_field(
    stub: platform_pb2_grpc.PlatformServiceStub, platform: ppb.Platform, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await register(stub, platform)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(err.value), violations(err.value)
    listed = await stub.ListPlatforms(ppb.ListPlatformsRequest())
    assert not listed.platforms


async def test_every_problem_at_once_and_replace_with_revision(
    stub: platform_pb2_grpc.PlatformServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await register(
            stub,
            ppb.Platform(name="BAD", kind=CLOUD, regions=["A"]),
            replace=True,
            expected_revision=3,
        )
    assert {"platform.name", "platform.provider", "platform.regions[0]", "replace"} <= set(
        violations(err.value)
    )


async def test_get_shows_nodes_services_and_health(
    plane: ControlPlane, channel: grpc.aio.Channel, stub: platform_pb2_grpc.PlatformServiceStub
) -> None:
    await register(stub, ppb.Platform(name="plant-7", kind=ONPREM))
    registry = pb_grpc.RegistryServiceStub(channel)
    for id, health in (("web-1", pb.HEALTH_STATUS_PASSING), ("web-2", pb.HEALTH_STATUS_CRITICAL)):
        await registry.RegisterInstance(
            pb.RegisterInstanceRequest(
                instance=pb.Instance(
                    id=id,
                    service="web",
                    address="10.0.0.1",
                    port=80,
                    platform="plant-7",
                    health=health,
                )
            )
        )
    await registry.RegisterInstance(
        pb.RegisterInstanceRequest(
            instance=pb.Instance(
                id="x", service="web", address="10.0.0.2", port=80, platform="elsewhere"
            )
        )
    )
    sidecar = Stream(channel, "edge-1", platform="plant-7")
    await sidecar.connect()
    await sidecar.sync(
        pb.Instance(
            id="db-1", service="db", address="10.0.0.3", port=5432, health=pb.HEALTH_STATUS_PASSING
        )
    )
    try:

        async def check() -> None:
            got = await stub.GetPlatform(ppb.GetPlatformRequest(name="plant-7"))
            assert [n.node.id for n in got.nodes] == ["edge-1"]
            node = got.nodes[0]
            assert node.connected and node.instance_count == 1
            assert got.instance_count == 3
            assert [(i.service, i.id) for i in got.instances] == [
                ("db", "db-1"),
                ("web", "web-1"),
                ("web", "web-2"),
            ]
            counts = {
                s.name: (s.instance_count, s.passing_count, s.critical_count) for s in got.services
            }
            assert counts == {"db": (1, 1, 0), "web": (2, 1, 1)}

        await assert_eventually(check)
        limited = await stub.GetPlatform(ppb.GetPlatformRequest(name="plant-7", max_instances=1))
        assert len(limited.instances) == 1 and limited.instance_count == 3

        # In use: refused, naming what uses it; force deletes it.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.DeregisterPlatform(ppb.DeregisterPlatformRequest(name="plant-7"))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = err.value.details() or ""
        assert "3 instance(s)" in details and "1 node(s) (edge-1)" in details, details
    finally:
        sidecar.drop()
    answer = await stub.DeregisterPlatform(
        ppb.DeregisterPlatformRequest(name="plant-7", force=True)
    )
    assert answer.revision > 0
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.DeregisterPlatform(ppb.DeregisterPlatformRequest(name="plant-7"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_deregister_refused_while_a_dataset_names_it(
    channel: grpc.aio.Channel, stub: platform_pb2_grpc.PlatformServiceStub
) -> None:
    first = (await register(stub, ppb.Platform(name="core", kind=CORE))).platform
    catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
    await catalog.AddDataset(
        cpb.AddDatasetRequest(
            dataset=cpb.Dataset(name="orders", location="file:///data/orders", platform="core")
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.DeregisterPlatform(ppb.DeregisterPlatformRequest(name="core"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "1 dataset(s) (orders)" in (err.value.details() or "")
    got = await stub.GetPlatform(ppb.GetPlatformRequest(name="core"))
    assert list(got.datasets) == ["orders"]
    await catalog.RemoveDataset(cpb.RemoveDatasetRequest(name="orders"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.DeregisterPlatform(
            ppb.DeregisterPlatformRequest(name="core", expected_revision=first.mod_revision + 99)
        )
    assert err.value.code() == grpc.StatusCode.ABORTED
    await stub.DeregisterPlatform(
        ppb.DeregisterPlatformRequest(name="core", expected_revision=first.mod_revision)
    )


async def test_watch_snapshot_changes_and_resume(
    stub: platform_pb2_grpc.PlatformServiceStub,
) -> None:
    await register(stub, ppb.Platform(name="core", kind=CORE))
    call = stub.WatchPlatforms(ppb.WatchPlatformsRequest())
    try:
        snapshot = await asyncio.wait_for(call.read(), 5)
        kinds = [(e.type, e.platform.name) for e in snapshot.events]
        assert kinds == [(RESYNC, ""), (PUT, "core"), (END, "")]
        seen = snapshot.events[-1].revision
        await register(stub, aws())
        put = await asyncio.wait_for(call.read(), 5)
        assert [(e.type, e.platform.name) for e in put.events] == [(PUT, "aws-eu")]
        assert put.events[0].platform.provider == "aws"
        await stub.DeregisterPlatform(ppb.DeregisterPlatformRequest(name="core"))
        gone = await asyncio.wait_for(call.read(), 5)
        assert [(e.type, e.platform.name) for e in gone.events] == [(DELETE, "core")]
    finally:
        call.cancel()
    # Resumed after the snapshot's revision: the two changes, no snapshot.
    resumed = stub.WatchPlatforms(ppb.WatchPlatformsRequest(since_revision=seen))
    try:
        first = await asyncio.wait_for(resumed.read(), 5)
        second = await asyncio.wait_for(resumed.read(), 5)
        events = [(e.type, e.platform.name) for e in (*first.events, *second.events)]
        assert events == [(PUT, "aws-eu"), (DELETE, "core")]
    finally:
        resumed.cancel()


async def test_acl_rights(tmp_path: Path) -> None:
    async with acl_plane(tmp_path) as acl:
        stub = platform_pb2_grpc.PlatformServiceStub(acl.channel)
        admin = bearer(acl.management)
        for name in ("eu-core", "us-core"):
            await stub.RegisterPlatform(
                ppb.RegisterPlatformRequest(platform=ppb.Platform(name=name, kind=CORE)),
                metadata=admin,
            )
        eu = bearer(await acl.token("platform:eu-*:write"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RegisterPlatform(
                ppb.RegisterPlatformRequest(platform=ppb.Platform(name="us-2", kind=CORE)),
                metadata=eu,
            )
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "platform:us-2:write" in (err.value.details() or "")
        await stub.RegisterPlatform(
            ppb.RegisterPlatformRequest(platform=ppb.Platform(name="eu-2", kind=CORE)),
            metadata=eu,
        )
        listed = await stub.ListPlatforms(ppb.ListPlatformsRequest(), metadata=eu)
        assert [p.name for p in listed.platforms] == ["eu-2", "eu-core"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.DeregisterPlatform(
                ppb.DeregisterPlatformRequest(name="us-core"), metadata=eu
            )
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
