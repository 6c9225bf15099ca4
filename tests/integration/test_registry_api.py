"""The RegistryService over real gRPC on 127.0.0.1: writes, reads, leases, errors."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from ecosystem.v1 import registry_pb2 as pb
from ecosystem.v1 import registry_pb2_grpc as pb_grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from controlplane import ControlPlane
from tests.util import assert_eventually


def web(id: str = "web-1", port: int = 8080, **fields: object) -> pb.Instance:
    return pb.Instance(id=id, service="web", address="10.0.0.1", port=port, **fields)  # type: ignore[arg-type]


async def register(
    stub: pb_grpc.RegistryServiceStub, inst: pb.Instance, **kw: object
) -> pb.RegisterInstanceResponse:
    return await stub.RegisterInstance(pb.RegisterInstanceRequest(instance=inst, **kw))  # type: ignore[arg-type]


def violations(err: grpc.aio.AioRpcError) -> dict[str, str]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, "INVALID_ARGUMENT must carry google.rpc.BadRequest details"
    found: dict[str, str] = {}
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        assert detail.Unpack(bad)
        found.update({v.field: v.description for v in bad.field_violations})
    return found


async def test_register_get_list_deregister(stub: pb_grpc.RegistryServiceStub) -> None:
    resp = await register(stub, web(tags=["v1"], metadata={"owner": "team-a"}, zone="eu-1a"))
    assert resp.revision > 0
    assert resp.instance.namespace == "default"
    assert resp.instance.health == pb.HEALTH_STATUS_PASSING
    assert resp.instance.liveness == pb.LIVENESS_PERSISTENT
    assert resp.instance.create_revision == resp.instance.mod_revision == resp.revision

    got = await stub.GetService(pb.GetServiceRequest(name="web"))
    assert [i.id for i in got.instances] == ["web-1"]
    assert got.instances[0].metadata["owner"] == "team-a"
    assert got.service.instance_count == 1 and got.service.passing_count == 1
    assert got.revision >= resp.revision

    services = await stub.ListServices(pb.ListServicesRequest())
    assert [(s.namespace, s.name) for s in services.services] == [("default", "web")]

    dereg = await stub.DeregisterInstance(pb.DeregisterInstanceRequest(service="web", id="web-1"))
    assert dereg.revision > resp.revision and dereg.deleted
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetService(pb.GetServiceRequest(name="web"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_deregister_is_idempotent(stub: pb_grpc.RegistryServiceStub) -> None:
    """A deregister sent again (as a retry after a lost answer is) succeeds and
    writes nothing; ``deleted`` tells the two apart."""
    await register(stub, web())
    request = pb.DeregisterInstanceRequest(service="web", id="web-1")
    first = await stub.DeregisterInstance(request)
    again = await stub.DeregisterInstance(request)
    assert first.deleted and not again.deleted
    assert again.revision >= first.revision
    never = await stub.DeregisterInstance(
        pb.DeregisterInstanceRequest(service="api", namespace="other", id="never-1")
    )
    assert not never.deleted
    # Nothing was written for them: after the removal, a watcher sees the
    # next registration and no other DELETE. (Other keys, such as the event
    # publisher's progress, may move the revision meanwhile.)
    marker = await register(stub, web("web-2"))
    call = stub.Watch(
        pb.WatchRequest(selector=pb.InstanceSelector(service="web"), since_revision=first.revision)
    )
    changes: list[tuple[int, str, int]] = []
    async for response in call:
        changes += [
            (e.type, e.instance.id, e.revision)
            for e in response.events
            if e.type in (pb.WATCH_EVENT_TYPE_PUT, pb.WATCH_EVENT_TYPE_DELETE)
        ]
        if changes:
            break
    call.cancel()
    assert changes == [(pb.WATCH_EVENT_TYPE_PUT, "web-2", marker.revision)]


async def test_deregister_with_expected_revision(stub: pb_grpc.RegistryServiceStub) -> None:
    reg = await register(stub, web())
    stale = pb.DeregisterInstanceRequest(
        service="web", id="web-1", expected_revision=reg.revision + 10
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.DeregisterInstance(stale)
    assert err.value.code() == grpc.StatusCode.ABORTED
    assert f"not the expected {reg.revision + 10}" in (err.value.details() or "")
    assert [i.id for i in (await stub.GetService(pb.GetServiceRequest(name="web"))).instances] == [
        "web-1"
    ]

    guarded = pb.DeregisterInstanceRequest(
        service="web", id="web-1", expected_revision=reg.revision
    )
    first = await stub.DeregisterInstance(guarded)
    assert first.deleted
    # The guarded instance is gone either way: a retry is not a conflict.
    again = await stub.DeregisterInstance(guarded)
    assert not again.deleted and again.revision >= first.revision

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.DeregisterInstance(
            pb.DeregisterInstanceRequest(service="web", id="web-1", expected_revision=0)
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expected_revision" in violations(err.value)


async def test_registration_is_idempotent_by_id(stub: pb_grpc.RegistryServiceStub) -> None:
    first = await register(stub, web())
    again = await register(stub, web())
    assert again.instance.mod_revision == first.instance.mod_revision, "same registration rewrote"
    changed = await register(stub, web(port=9090))
    assert changed.instance.mod_revision > first.instance.mod_revision
    assert changed.instance.create_revision == first.instance.create_revision
    listed = await stub.ListInstances(pb.ListInstancesRequest())
    assert [(i.id, i.port) for i in listed.instances] == [("web-1", 9090)]


async def test_expected_revision_conflicts(stub: pb_grpc.RegistryServiceStub) -> None:
    created = await register(stub, web(), expected_revision=0)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await register(stub, web(port=1), expected_revision=0)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await register(stub, web(port=2), expected_revision=created.revision + 100)
    assert err.value.code() == grpc.StatusCode.ABORTED
    ok = await register(stub, web(port=3), expected_revision=created.instance.mod_revision)
    assert ok.instance.port == 3
    listed = await stub.ListInstances(pb.ListInstancesRequest())
    assert [i.port for i in listed.instances] == [3], "a rejected write was stored"


async def test_list_filters(stub: pb_grpc.RegistryServiceStub) -> None:
    await register(stub, web("a", platform="aws", zone="eu-1a", tags=["v1", "canary"]))
    await register(stub, web("b", platform="aws", zone="eu-1b", tags=["v1"]))
    await register(
        stub, web("c", platform="onprem", zone="eu-1a", health=pb.HEALTH_STATUS_CRITICAL)
    )
    await register(
        stub, pb.Instance(id="d", service="db", namespace="data", address="db.local", port=5432)
    )

    async def ids(**selector: object) -> list[str]:
        resp = await stub.ListInstances(
            pb.ListInstancesRequest(selector=pb.InstanceSelector(**selector))  # type: ignore[arg-type]
        )
        return [i.id for i in resp.instances]

    assert await ids() == ["d", "a", "b", "c"]  # sorted by namespace, service, id
    assert await ids(service="web") == ["a", "b", "c"]
    assert await ids(namespace="data") == ["d"]
    assert await ids(platform="aws") == ["a", "b"]
    assert await ids(zone="eu-1a") == ["a", "c"]
    assert await ids(tags=["v1", "canary"]) == ["a"]
    assert await ids(health=[pb.HEALTH_STATUS_CRITICAL]) == ["c"]
    assert await ids(
        service="web", health=[pb.HEALTH_STATUS_PASSING, pb.HEALTH_STATUS_WARNING]
    ) == ["a", "b"]
    web_svc = await stub.GetService(pb.GetServiceRequest(name="web"))
    assert (web_svc.service.passing_count, web_svc.service.critical_count) == (2, 1)


async def test_ephemeral_instance_lives_while_kept_alive(stub: pb_grpc.RegistryServiceStub) -> None:
    resp = await register(stub, web(liveness=pb.LIVENESS_EPHEMERAL), lease_ttl_seconds=1)
    assert resp.lease_id > 0 and resp.lease_ttl_seconds == 1
    assert resp.instance.lease_id == resp.lease_id
    # A second instance can join the same lease.
    await register(stub, web("web-2", liveness=pb.LIVENESS_EPHEMERAL), lease_id=resp.lease_id)
    for _ in range(10):  # 2 s, twice the TTL, kept alive every 0.2 s
        await asyncio.sleep(0.2)
        ka = await stub.KeepAlive(pb.KeepAliveRequest(lease_id=resp.lease_id))
        assert ka.ttl_seconds == 1
    listed = await stub.ListInstances(pb.ListInstancesRequest())
    assert len(listed.instances) == 2, "kept-alive instances expired"

    async def gone() -> None:
        got = await stub.ListInstances(pb.ListInstancesRequest())
        assert not got.instances

    await assert_eventually(gone, timeout=4)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.KeepAlive(pb.KeepAliveRequest(lease_id=resp.lease_id))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await register(stub, web("web-3", liveness=pb.LIVENESS_EPHEMERAL), lease_id=resp.lease_id)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_persistent_instance_outlives_leases(stub: pb_grpc.RegistryServiceStub) -> None:
    await register(stub, web("keep"))
    await register(stub, web("tmp", liveness=pb.LIVENESS_EPHEMERAL), lease_ttl_seconds=1)

    async def only_persistent() -> None:
        got = await stub.ListInstances(pb.ListInstancesRequest())
        assert [i.id for i in got.instances] == ["keep"]

    await assert_eventually(only_persistent, timeout=4)


BAD_INSTANCES = [
    ("instance.service", dict(service="")),
    ("instance.service", dict(service="Web_Service")),
    ("instance.service", dict(service="a" * 64)),
    ("instance.namespace", dict(namespace="-bad")),
    ("instance.id", dict(id="has space")),
    ("instance.id", dict(id="x" * 129)),
    ("instance.address", dict(address="")),
    ("instance.address", dict(address="300.1.1.1")),
    ("instance.address", dict(address="bad host!")),
    ("instance.port", dict(port=0)),
    ("instance.port", dict(port=70000)),
    ("instance.tags[1]", dict(tags=["ok", ""])),
    ("instance.tags[0]", dict(tags=["has space"])),
    ("instance.tags[1]", dict(tags=["dup", "dup"])),
    ("instance.tags", dict(tags=[f"t{i}" for i in range(65)])),
    ('instance.metadata["bad key"]', dict(metadata={"bad key": "v"})),
    ('instance.metadata["k"]', dict(metadata={"k": "v" * 2000})),
    ("instance.metadata", dict(metadata={f"k{i}": "v" for i in range(65)})),
    ("instance.weight", dict(weight=10_001)),
    ("instance.zone", dict(zone="EU 1")),
    ("instance.platform", dict(platform="aws!")),
    ("instance.node", dict(node="node/1")),
    ("instance.health", dict(health=42)),
    ("instance.liveness", dict(liveness=9)),
    ("instance.checks[0].name", dict(checks=[pb.CheckStatus(name="")])),
]


@pytest.mark.parametrize(
    ("field", "change"), BAD_INSTANCES, ids=[f"{f}:{sorted(c)[0]}" for f, c in BAD_INSTANCES]
)
async def test_bad_instance_is_rejected_naming_the_field(
    stub: pb_grpc.RegistryServiceStub, field: str, change: dict[str, object]
) -> None:
    fields: dict[str, object] = dict(id="web-1", service="web", address="10.0.0.1", port=8080)
    fields.update(change)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await register(stub, pb.Instance(**fields))  # type: ignore[arg-type]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(err.value)
    assert field in found, f"expected a violation of {field}, got {found}"
    listed = await stub.ListInstances(pb.ListInstancesRequest())
    assert not listed.instances, "a rejected instance was stored"


@pytest.mark.parametrize(
    ("field", "request_kw"),
    [
        ("instance", {}),
        (
            "lease_ttl_seconds",
            dict(instance=web(liveness=pb.LIVENESS_EPHEMERAL), lease_ttl_seconds=4000),
        ),
        ("lease_id", dict(instance=web(), lease_id=5)),
        ("expected_revision", dict(instance=web(), expected_revision=-1)),
    ],
)
async def test_bad_register_request_fields(
    stub: pb_grpc.RegistryServiceStub, field: str, request_kw: dict[str, object]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RegisterInstance(pb.RegisterInstanceRequest(**request_kw))  # type: ignore[arg-type]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(err.value)


async def test_every_violation_is_reported_at_once(stub: pb_grpc.RegistryServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await register(stub, pb.Instance(id="x", service="BAD", address="", port=0))
    assert {"instance.service", "instance.address", "instance.port"} <= set(violations(err.value))


async def test_bad_reads_are_rejected(stub: pb_grpc.RegistryServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetService(pb.GetServiceRequest(name="Bad Name"))
    assert "name" in violations(err.value)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListInstances(pb.ListInstancesRequest(selector=pb.InstanceSelector(zone="A B")))
    assert "selector.zone" in violations(err.value)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.DeregisterInstance(pb.DeregisterInstanceRequest(service="web"))
    assert "id" in violations(err.value)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.KeepAlive(pb.KeepAliveRequest(lease_id=0))
    assert "lease_id" in violations(err.value)


async def test_health_reflection_and_admin(plane: ControlPlane, channel: grpc.aio.Channel) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "ecosystem.v1.RegistryService"):
        resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING

    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = refl.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    answer = await call.read()
    await call.done_writing()
    names = {s.name for s in answer.list_services_response.service}
    assert {"ecosystem.v1.RegistryService", "grpc.health.v1.Health"} <= names
    call.cancel()

    import aiohttp

    await pb_grpc.RegistryServiceStub(channel).ListServices(pb.ListServicesRequest())
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://{plane.admin_address}/healthz") as r:
            assert r.status == 200
        async with http.get(f"http://{plane.admin_address}/metrics") as r:
            text = await r.text()
    assert "eco_controlplane_instances" in text
    assert 'eco_controlplane_rpcs_total{code="OK",method="ListServices"} 1.0' in text


async def test_revoke_lease_removes_its_instances_now(stub: pb_grpc.RegistryServiceStub) -> None:
    reg = await register(stub, web("a", liveness=pb.LIVENESS_EPHEMERAL), lease_ttl_seconds=60)
    await register(stub, web("b", liveness=pb.LIVENESS_EPHEMERAL), lease_id=reg.lease_id)
    await register(stub, web("keep"))
    revoked = await stub.RevokeLease(pb.RevokeLeaseRequest(lease_id=reg.lease_id))
    assert revoked.revision > reg.revision
    listed = await stub.ListInstances(pb.ListInstancesRequest())
    assert [i.id for i in listed.instances] == ["keep"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RevokeLease(pb.RevokeLeaseRequest(lease_id=reg.lease_id))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
