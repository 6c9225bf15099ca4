"""ACLs on every RPC, against a real control plane with ``--acl deny``.

One table-driven test per RPC: no token and a token nobody issued are
UNAUTHENTICATED, a token with a related but insufficient rule is
PERMISSION_DENIED naming the missing right, and a token with the right rule
gets past the check (the call may still fail for its own reasons, e.g. a
lease that does not exist). A test pins that every RPC the control plane
serves is in that table, so a new RPC without a rule fails here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from ecosystem.v1 import (
    acl_pb2,
    acl_pb2_grpc,
    catalog_pb2,
    gateway_pb2,
    intention_pb2,
    platform_pb2,
    sync_pb2,
)
from ecosystem.v1 import agent_pb2 as apb
from ecosystem.v1 import registry_pb2 as pb
from google.protobuf import descriptor_pool, message_factory, struct_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import sdk
from controlplane import ControlPlane, ControlPlaneConfig
from controlplane.acl import PUBLIC, TABLE
from tests.harness.acl import AclPlane, acl_plane, bearer
from tests.integration.agent_stream import Stream
from tests.util import assert_eventually

POOL = descriptor_pool.Default()
TIMEOUT = 5.0


@dataclass
class Acl(AclPlane):
    audit: Path

    def md(self, secret: str | None) -> tuple[tuple[str, str], ...] | None:
        return bearer(secret)


@pytest.fixture
async def acl(tmp_path: Path) -> AsyncIterator[Acl]:
    async with acl_plane(tmp_path, audit_log=str(tmp_path / "audit.log")) as plane:
        yield Acl(plane.plane, plane.channel, plane.management, tmp_path / "audit.log")


def request_of(method: str, **fields: Any) -> Any:
    service, _, name = method.strip("/").rpartition("/")
    descriptor = POOL.FindServiceByName(service).FindMethodByName(name)
    return message_factory.GetMessageClass(descriptor.input_type)(**fields)


async def invoke(
    channel: grpc.aio.Channel, method: str, request: Any, metadata: Any
) -> tuple[grpc.StatusCode, str]:
    """Makes one call of any shape; the status it ends with (OK once it answers)."""
    service, _, name = method.strip("/").rpartition("/")
    descriptor = POOL.FindServiceByName(service).FindMethodByName(name)
    response = message_factory.GetMessageClass(descriptor.output_type)
    kwargs = {
        "request_serializer": type(request).SerializeToString,
        "response_deserializer": response.FromString,
    }
    try:
        if descriptor.client_streaming:
            call = channel.stream_stream(method, **kwargs)(metadata=metadata, timeout=TIMEOUT)
            await call.write(request)
            answer = await call.read()
            call.cancel()
            if answer is grpc.aio.EOF:
                return await call.code(), await call.details()
        elif descriptor.server_streaming:
            call = channel.unary_stream(method, **kwargs)(
                request, metadata=metadata, timeout=TIMEOUT
            )
            answer = await call.read()
            call.cancel()
            if answer is grpc.aio.EOF:
                return await call.code(), await call.details()
        else:
            await channel.unary_unary(method, **kwargs)(request, metadata=metadata, timeout=TIMEOUT)
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


@dataclass(frozen=True)
class Case:
    """A request, the rule that allows it and a related rule that does not."""

    fields: Callable[[], dict[str, Any]]
    right: str | None  # None: public; "": any valid token
    wrong: str = ""
    needs: str = ""  # what the refusal names (default: ``right``)


R, A, M, C = (
    "/ecosystem.v1.RegistryService/",
    "/ecosystem.v1.AgentService/",
    "/ecosystem.v1.MessagingService/",
    "/ecosystem.v1.AclService/",
)
INT = "/ecosystem.v1.IntentionService/"
RT = "/ecosystem.v1.RouteService/"
SY = "/ecosystem.v1.SyncService/"
PL = "/ecosystem.v1.PlatformService/"
DS = "/ecosystem.v1.CatalogService/"
XDS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"
CSDS = "/envoy.service.status.v3.ClientStatusDiscoveryService/"
_CDS = {"node": {"id": "n1"}, "type_url": "type.googleapis.com/envoy.config.cluster.v3.Cluster"}


def _sync_job() -> dict[str, Any]:
    return {
        "job": sync_pb2.SyncJob(
            name="photos",
            source="file:///a",
            destination="file:///b",
            every_seconds=60,
            on_node="nas-1",
        )
    }


_RUN = {"job": "photos", "number": 1, "node": "nas-1"}


def _platform() -> dict[str, Any]:
    return {"platform": platform_pb2.Platform(name="eu", kind=platform_pb2.PLATFORM_KIND_CORE)}


def _dataset() -> dict[str, Any]:
    return {"dataset": catalog_pb2.Dataset(name="orders", location="file:///data/orders")}


def _instance() -> dict[str, Any]:
    return {"instance": pb.Instance(id="i1", service="web", address="10.0.0.1", port=80)}


CASES: dict[str, Case] = {
    R + "RegisterInstance": Case(_instance, "service:web:write", "service:web:read"),
    R + "DeregisterInstance": Case(
        lambda: {"service": "web", "id": "i1"}, "service:web:write", "service:db:write"
    ),
    R + "KeepAlive": Case(
        lambda: {"lease_id": 1}, "service:web:write", "service:*:read", "service:*:write"
    ),
    R + "RevokeLease": Case(
        lambda: {"lease_id": 1}, "service:web:write", "service:*:read", "service:*:write"
    ),
    R + "GetService": Case(lambda: {"name": "web"}, "service:web:read", "service:db:read"),
    R + "ListServices": Case(dict, "service:web:read", "node:*:read", "service:*:read"),
    R + "ListInstances": Case(
        lambda: {"selector": pb.InstanceSelector(service="web")},
        "service:web:read",
        "service:db:write",
    ),
    R + "Watch": Case(
        lambda: {"selector": pb.InstanceSelector(service="web")},
        "service:web:read",
        "service:db:read",
    ),
    A + "Connect": Case(
        lambda: {"hello": apb.Hello(node=apb.Node(id="n1"))},
        "node:n1:write",
        "node:n2:write",
        "node:n1:write",
    ),
    A + "ListNodes": Case(dict, "node:n1:read", "service:*:read", "node:*:read"),
    A + "WaitForRevision": Case(
        lambda: {"revision": 1, "timeout_ms": 100},
        "service:web:read",
        "node:*:read",
        "service:*:read",
    ),
    M + "Publish": Case(
        lambda: {"subject": "orders.created"},
        "bus:orders.*:publish",
        "bus:orders.*:subscribe",
        "bus:orders.created:publish",
    ),
    M + "PublishBatch": Case(
        lambda: {"messages": [request_of(M + "Publish", subject="orders.created")]},
        "bus:orders.*:publish",
        "bus:orders.*:subscribe",
        "bus:orders.created:publish",
    ),
    M + "Subscribe": Case(
        lambda: {"subject": "orders.>"},
        "bus:orders.*:subscribe",
        "bus:orders.*:publish",
        "bus:orders.>:subscribe",
    ),
    M + "Ack": Case(
        lambda: {"items": [{"ack_id": "x"}]},
        "bus:orders.*:subscribe",
        "bus:orders.*:publish",
        "bus:*:subscribe",
    ),
    M + "Request": Case(
        lambda: {"subject": "orders.q", "timeout_ms": 100},
        "bus:orders.*:publish",
        "bus:orders.*:subscribe",
        "bus:orders.q:publish",
    ),
    M + "AddStream": Case(
        lambda: {"config": {"name": "ORDERS", "subjects": ["orders.>"]}},
        "bus:orders.*:write",
        "bus:orders.*:publish",
        "bus:orders.>:write",
    ),
    M + "ListStreams": Case(dict, "bus:orders.*:read", "service:*:read", "bus:*:read"),
    M + "DeleteStream": Case(lambda: {"name": "ORDERS"}, "bus:*:write", "bus:orders.*:write"),
    C + "Bootstrap": Case(dict, None),
    C + "CreatePolicy": Case(
        lambda: {
            "policy": acl_pb2.AclPolicy(
                name=f"x-{uuid.uuid4().hex[:6]}",
                rules=[acl_pb2.AclRule(resource="service", pattern="a", access="read")],
            )
        },
        "acl:policy:write",
        "acl:policy:read",
    ),
    C + "ListPolicies": Case(dict, "acl:policy:read", "acl:token:read"),
    C + "GetPolicy": Case(
        lambda: {"name": "global-management"}, "acl:policy:read", "acl:token:write"
    ),
    C + "DeletePolicy": Case(lambda: {"name": "nope"}, "acl:policy:write", "acl:policy:read"),
    C + "CreateToken": Case(
        lambda: {"policies": ["global-management"]}, "acl:token:write", "acl:policy:write"
    ),
    C + "ListTokens": Case(dict, "acl:token:read", "acl:policy:read"),
    C + "DeleteToken": Case(lambda: {"accessor_id": "nope"}, "acl:token:write", "acl:token:read"),
    C + "ResolveToken": Case(dict, ""),
    "/ecosystem.v1.CAService/GetTrustBundle": Case(dict, None),
    "/ecosystem.v1.CAService/RotateRoot": Case(dict, "operator:ca:write", "operator:ca:read"),
    INT + "CreateIntention": Case(
        lambda: {
            "intention": intention_pb2.Intention(
                source="web", destination="orders", action=intention_pb2.INTENTION_ACTION_DENY
            )
        },
        "service:orders:write",
        "service:orders:read",
    ),
    INT + "DeleteIntention": Case(
        lambda: {"source": "web", "destination": "orders"},
        "service:orders:write",
        "service:web:write",
    ),
    INT + "ListIntentions": Case(dict, "service:web:read", "node:*:read", "service:*:read"),
    INT + "CheckIntention": Case(
        lambda: {"source": "web", "destination": "orders"},
        "service:orders:read",
        "service:web:read",
    ),
    RT + "ApplyRoutes": Case(
        lambda: {
            "routes": [
                gateway_pb2.Route(
                    name="orders",
                    spec=struct_pb2.Struct(
                        fields={"upstream": struct_pb2.Value(string_value="orders")}
                    ),
                )
            ]
        },
        "route:orders:write",
        "route:orders:read",
    ),
    RT + "ListRoutes": Case(dict, "route:orders:read", "service:*:read", "route:*:read"),
    RT + "GetRoute": Case(lambda: {"name": "orders"}, "route:orders:read", "route:users:read"),
    RT + "DeleteRoute": Case(lambda: {"name": "orders"}, "route:orders:write", "route:orders:read"),
    RT + "WatchRoutes": Case(dict, "route:orders:read", "service:*:read", "route:*:read"),
    SY + "CreateSyncJob": Case(_sync_job, "sync:photos:write", "sync:photos:read"),
    SY + "UpdateSyncJob": Case(_sync_job, "sync:photos:write", "sync:photos:read"),
    SY + "GetSyncJob": Case(lambda: {"name": "photos"}, "sync:photos:read", "sync:docs:read"),
    SY + "ListSyncJobs": Case(dict, "sync:photos:read", "route:*:read", "sync:*:read"),
    SY + "DeleteSyncJob": Case(lambda: {"name": "photos"}, "sync:photos:write", "sync:*:read"),
    SY + "PauseSyncJob": Case(lambda: {"name": "photos"}, "sync:photos:write", "sync:*:read"),
    SY + "ResumeSyncJob": Case(lambda: {"name": "photos"}, "sync:photos:write", "sync:*:read"),
    SY + "ListSyncRuns": Case(lambda: {"job": "photos"}, "sync:photos:read", "sync:docs:read"),
    SY + "WatchSyncRuns": Case(lambda: {"node": "nas-1"}, "node:nas-1:write", "node:nas-1:read"),
    SY + "ClaimSyncRun": Case(lambda: dict(_RUN), "node:nas-1:write", "node:nas-1:read"),
    SY + "ReportSyncRun": Case(
        lambda: {**_RUN, "status": sync_pb2.SYNC_RUN_STATUS_COMPLETED},
        "node:nas-1:write",
        "node:nas-1:read",
    ),
    PL + "RegisterPlatform": Case(_platform, "platform:eu:write", "platform:eu:read"),
    PL + "GetPlatform": Case(lambda: {"name": "eu"}, "platform:eu:read", "platform:us:read"),
    PL + "ListPlatforms": Case(dict, "platform:eu:read", "dataset:*:read", "platform:*:read"),
    PL + "DeregisterPlatform": Case(lambda: {"name": "eu"}, "platform:eu:write", "platform:*:read"),
    PL + "WatchPlatforms": Case(dict, "platform:*:read", "platform:eu:read"),
    DS + "AddDataset": Case(_dataset, "dataset:orders:write", "dataset:orders:read"),
    DS + "UpdateDataset": Case(_dataset, "dataset:orders:write", "dataset:orders:read"),
    DS + "GetDataset": Case(lambda: {"name": "orders"}, "dataset:orders:read", "dataset:x:read"),
    DS + "ListDatasets": Case(dict, "dataset:orders:read", "platform:*:read", "dataset:*:read"),
    DS + "RemoveDataset": Case(
        lambda: {"name": "orders"}, "dataset:orders:write", "dataset:*:read"
    ),
    XDS + "StreamAggregatedResources": Case(
        lambda: dict(_CDS), "service:*:read", "service:web:read"
    ),
    XDS + "DeltaAggregatedResources": Case(
        lambda: dict(_CDS), "service:*:read", "service:web:read"
    ),
    CSDS + "FetchClientStatus": Case(dict, "node:*:read", "node:web-1:read"),
    CSDS + "StreamClientStatus": Case(dict, "node:*:read", "node:web-1:read"),
    "/grpc.health.v1.Health/Check": Case(dict, None),
    "/grpc.health.v1.Health/Watch": Case(dict, None),
    "/grpc.health.v1.Health/List": Case(dict, None),
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": Case(
        lambda: {"list_services": ""}, "operator:reflection:read", "operator:metrics:read"
    ),
}
AUTH = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


async def served_methods(acl: Acl) -> set[str]:
    """Every RPC the control plane serves, as its reflection lists them."""
    stub = reflection_pb2_grpc.ServerReflectionStub(acl.channel)
    call = stub.ServerReflectionInfo(metadata=acl.md(acl.management))
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    answer = await call.read()
    call.cancel()
    methods = set()
    for service in answer.list_services_response.service:
        for method in POOL.FindServiceByName(service.name).methods:
            methods.add(f"/{service.name}/{method.name}")
    return methods


async def test_every_rpc_the_control_plane_serves_has_a_rule_and_a_case(acl: Acl) -> None:
    served = await served_methods(acl)
    assert "/ecosystem.v1.RegistryService/RegisterInstance" in served
    assert served - set(TABLE) == set(), "RPCs without an access rule in controlplane.acl._table"
    assert served - set(CASES) == set(), "RPCs without a case in this test"


@pytest.mark.parametrize("method", sorted(CASES))
async def test_rpc(acl: Acl, method: str) -> None:
    case = CASES[method]
    try:
        POOL.FindServiceByName(method.strip("/").rpartition("/")[0])
    except KeyError:
        pytest.fail(f"{method}: its service is not in the generated code")
    if method not in await served_methods(acl):
        return  # a service this build does not serve (its case stays for when it does)
    request = request_of(method, **case.fields())
    if case.right is None:
        for metadata in (None, acl.md("not-a-token")):
            code, _ = await invoke(acl.channel, method, request, metadata)
            if metadata is None:
                assert code not in AUTH, f"{method} is public"
        assert method in PUBLIC
        return
    code, details = await invoke(acl.channel, method, request, None)
    assert code is grpc.StatusCode.UNAUTHENTICATED, (code, details)
    assert "requires a token" in details
    code, details = await invoke(acl.channel, method, request, acl.md("not-a-token"))
    assert (code, details) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "the token is not valid (unknown or deleted)",
    )
    if case.right == "":
        code, details = await invoke(acl.channel, method, request, acl.md(await acl.token()))
        assert code is grpc.StatusCode.OK, (code, details)
        return
    narrow = await acl.token(case.wrong)
    code, details = await invoke(acl.channel, method, request, acl.md(narrow))
    assert code is grpc.StatusCode.PERMISSION_DENIED, (code, details)
    assert f"the token lacks {case.needs or case.right}" in details
    right = await acl.token(case.right)
    code, details = await invoke(acl.channel, method, request, acl.md(right))
    assert code not in AUTH, (code, details)


def _own_address() -> str:
    """This host's address on its default route (not loopback): where a call
    from "another host" comes from, without another host."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: only a route is chosen
        address = str(probe.getsockname()[0])
    assert not address.startswith("127."), "this test needs a non-loopback interface"
    return address


async def test_bootstrap_is_accepted_only_from_the_control_planes_host(tmp_path: Path) -> None:
    config = ControlPlaneConfig(
        listen="0.0.0.0:0",
        admin_listen="127.0.0.1:0",
        store_url="memory://",
        grace=0.5,
        drain_delay=0,
        insecure=True,
        acl="deny",
        audit_log=str(tmp_path / "audit.log"),
    )
    async with ControlPlane(config) as cp:
        port = cp.address.rsplit(":", 1)[1]
        async with grpc.aio.insecure_channel(f"{_own_address()}:{port}") as remote:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await acl_pb2_grpc.AclServiceStub(remote).Bootstrap(acl_pb2.BootstrapRequest())
            assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert "only from the control plane's own host" in (err.value.details() or "")
            assert "eco acl bootstrap --server 127.0.0.1:PORT" in (err.value.details() or "")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as local:
            boot = await acl_pb2_grpc.AclServiceStub(local).Bootstrap(acl_pb2.BootstrapRequest())
            assert boot.secret
    refusal = json.loads((tmp_path / "audit.log").read_text().splitlines()[0])
    assert (refusal["rpc"], refusal["allowed"]) == ("/ecosystem.v1.AclService/Bootstrap", False)
    assert refusal["resource"].startswith("peer ipv4:")


async def test_a_lease_is_kept_alive_and_revoked_by_writers_of_what_it_holds(acl: Acl) -> None:
    from ecosystem.v1 import registry_pb2_grpc

    stub = registry_pb2_grpc.RegistryServiceStub(acl.channel)
    web, db = await acl.token("service:web:write"), await acl.token("service:db:write")

    async def register(secret: str, service: str, lease_id: int = 0) -> int:
        instance = pb.Instance(
            id=f"{service}-1",
            service=service,
            address="10.0.0.1",
            port=80,
            liveness=pb.LIVENESS_EPHEMERAL,
        )
        answer = await stub.RegisterInstance(
            pb.RegisterInstanceRequest(instance=instance, lease_id=lease_id, lease_ttl_seconds=30),
            metadata=acl.md(secret),
        )
        return int(answer.lease_id)

    lease = await register(db, "db")
    for call in (
        lambda md: stub.KeepAlive(pb.KeepAliveRequest(lease_id=lease), metadata=md),
        lambda md: stub.RevokeLease(pb.RevokeLeaseRequest(lease_id=lease), metadata=md),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(acl.md(web))
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "the token lacks service:db:write" in (err.value.details() or "")
    await stub.KeepAlive(pb.KeepAliveRequest(lease_id=lease), metadata=acl.md(db))
    # A lease holding web and db: only a token that writes both may revoke it.
    await register(acl.management, "web", lease)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RevokeLease(pb.RevokeLeaseRequest(lease_id=lease), metadata=acl.md(db))
    assert "the token lacks service:web:write" in (err.value.details() or "")
    both = await acl.token("service:web:write", "service:db:write")
    await stub.RevokeLease(pb.RevokeLeaseRequest(lease_id=lease), metadata=acl.md(both))
    listed = await stub.ListInstances(pb.ListInstancesRequest(), metadata=acl.md(acl.management))
    assert list(listed.instances) == []
    revokes = [
        (line["resource"], line["allowed"])
        for line in map(json.loads, acl.audit.read_text().splitlines())
        if line["rpc"].endswith("RevokeLease")
    ]
    assert revokes == [
        ("service:db:write", False),
        ("service:web:write", False),
        ("service:db:write,service:web:write", True),
    ]


async def test_a_watch_and_lists_show_only_what_the_token_may_read(acl: Acl) -> None:
    async with sdk.AsyncClient(acl.plane.address, token=acl.management) as admin:
        await admin.register("web", "10.0.0.1", 80)
        await admin.register("db", "10.0.0.2", 5432)
    reader = await acl.token("service:web:read")
    async with sdk.AsyncClient(acl.plane.address, token=reader) as client:
        services = await client.list_services()
        assert [s.name for s in services.services] == ["web"]
        assert {i.service for i in (await client.list_instances()).instances} == {"web"}
        watch = client.watch()
        seen = []
        async for event in watch:
            if event.type is sdk.WatchEventType.SNAPSHOT_END:
                break
            if event.instance is not None:
                seen.append(event.instance.service)
        assert seen == ["web"]
        async with sdk.AsyncClient(acl.plane.address, token=acl.management) as admin:
            await admin.register("db", "10.0.0.3", 5432)
            await admin.register("web", "10.0.0.4", 80)
        event = await anext(watch)
        while event.type is sdk.WatchEventType.PROGRESS:  # what db's event became
            event = await anext(watch)
        assert event.instance is not None and event.instance.address == "10.0.0.4"
        await watch.aclose()
        with pytest.raises(sdk.PermissionDeniedError, match="service:db:read"):
            await client.get_service("db")


async def test_a_sidecar_token_registers_on_its_own_node_only(acl: Acl) -> None:
    secret = await acl.token("node:edge-*:write", "service:web:write")
    from ecosystem.v1 import agent_pb2_grpc

    async def session(*messages: apb.ConnectRequest) -> tuple[grpc.StatusCode, str]:
        call = agent_pb2_grpc.AgentServiceStub(acl.channel).Connect(
            metadata=acl.md(secret), timeout=TIMEOUT
        )
        await call.write(messages[0])
        welcome = await call.read()
        assert welcome is not grpc.aio.EOF and welcome.HasField("welcome")
        for message in messages[1:]:
            await call.write(message)
        try:
            while True:
                answer = await asyncio.wait_for(call.read(), 0.5)
                if answer is grpc.aio.EOF:
                    return await call.code(), await call.details()
        except grpc.aio.AioRpcError as err:
            return err.code(), err.details() or ""
        except TimeoutError:
            call.cancel()
            return grpc.StatusCode.OK, ""

    def hello(node: str) -> apb.ConnectRequest:
        return apb.ConnectRequest(hello=apb.Hello(node=apb.Node(id=node)))

    def sync(service: str, node: str) -> apb.ConnectRequest:
        instance = pb.Instance(
            id=f"{service}-1", service=service, node=node, address="10.0.0.9", port=80
        )
        return apb.ConnectRequest(sync=apb.SyncInstances(instances=[instance]))

    assert await session(hello("edge-1"), sync("web", "edge-1")) == (grpc.StatusCode.OK, "")
    async with sdk.AsyncClient(acl.plane.address, token=acl.management) as admin:
        await assert_eventually(lambda: _has(admin, "web"))
    code, details = await session(hello("edge-2"), sync("web", "edge-9"))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert "a sidecar registers instances on its own node ('edge-2') only" in details
    code, details = await session(hello("edge-3"), sync("db", "edge-3"))
    assert (code, details[:34]) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "the token lacks service:db:write: ",
    )
    # Another node's hello with this token.
    call = agent_pb2_grpc.AgentServiceStub(acl.channel).Connect(
        metadata=acl.md(secret), timeout=TIMEOUT
    )
    await call.write(hello("core-1"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "node:core-1:write" in (err.value.details() or "")
    connects = [
        (line["resource"], line["allowed"])
        for line in map(json.loads, acl.audit.read_text().splitlines())
        if line["rpc"].endswith("AgentService/Connect")
    ]
    assert connects[:2] == [("node:edge-1:write", True), ("service:web:write", True)]
    assert ("service:db:write", False) in connects
    assert ("node:core-1:write", False) in connects


async def _has(client: sdk.AsyncClient, service: str) -> None:
    assert [i.service for i in (await client.list_instances(service=service)).instances] == [
        service
    ]


async def _policy(acl: Acl, name: str, *rules: str) -> None:
    """(Re)creates policy ``name`` with ``rules``: the way a token's rules change."""
    stub = acl_pb2_grpc.AclServiceStub(acl.channel)
    with contextlib.suppress(grpc.aio.AioRpcError):
        await stub.DeletePolicy(
            acl_pb2.DeletePolicyRequest(name=name), metadata=acl.md(acl.management)
        )
    if rules:
        parsed = [
            acl_pb2.AclRule(
                **dict(zip(("resource", "pattern", "access"), r.split(":"), strict=True))
            )
            for r in rules
        ]
        await stub.CreatePolicy(
            acl_pb2.CreatePolicyRequest(policy=acl_pb2.AclPolicy(name=name, rules=parsed)),
            metadata=acl.md(acl.management),
        )


async def _session_token(acl: Acl, *policies: str) -> tuple[str, str]:
    """A token of ``policies``: its secret and accessor id."""
    created = await acl_pb2_grpc.AclServiceStub(acl.channel).CreateToken(
        acl_pb2.CreateTokenRequest(policies=list(policies), description="sidecar"),
        metadata=acl.md(acl.management),
    )
    return created.secret, created.token.accessor_id


async def _rules_are(acl: Acl, secret: str, *rules: str) -> None:
    """Passes once the control plane resolves ``secret`` to ``rules`` (its cache has expired)."""
    answer = await acl_pb2_grpc.AclServiceStub(acl.channel).ResolveToken(
        acl_pb2.ResolveTokenRequest(), metadata=acl.md(secret)
    )
    assert [f"{r.resource}:{r.pattern}:{r.access}" for r in answer.rules] == list(rules)


def _instance_of(service: str, node: str) -> pb.Instance:
    return pb.Instance(id=f"{service}-1", service=service, node=node, address="10.0.0.9", port=80)


async def test_an_open_session_ends_when_its_token_is_deleted(acl: Acl) -> None:
    await _policy(acl, "node-s1", "node:s1:write", "service:web:write")
    secret, accessor = await _session_token(acl, "node-s1")
    stream = Stream(acl.channel, "s1", token=secret)
    await stream.connect()
    assert (await stream.sync(_instance_of("web", "s1"))).created == 1
    await acl_pb2_grpc.AclServiceStub(acl.channel).DeleteToken(
        acl_pb2.DeleteTokenRequest(accessor_id=accessor), metadata=acl.md(acl.management)
    )
    deleted = time.monotonic()
    err = await stream.ended(timeout=5)
    took = time.monotonic() - deleted
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED, err
    assert err.details() == "the token is not valid (unknown or deleted)"
    assert took < 2.0, f"the session ended {took:.2f}s after its token was deleted"
    ended = [
        line
        for line in map(json.loads, acl.audit.read_text().splitlines())
        if line["rpc"].endswith("AgentService/Connect") and not line["allowed"]
    ]
    assert ended[-1]["resource"] == "node:s1:write"
    assert ended[-1]["reason"] == "the token is not valid (unknown or deleted)"


async def test_an_open_session_ends_when_its_token_loses_its_node(acl: Acl) -> None:
    await _policy(acl, "node-s2", "node:s2:write")
    await _policy(acl, "svc-s2", "service:web:write")
    secret, _ = await _session_token(acl, "node-s2", "svc-s2")
    stream = Stream(acl.channel, "s2", token=secret)
    await stream.connect()
    await _policy(acl, "node-s2")  # deleted: the token keeps only svc-s2's rules
    changed = time.monotonic()
    err = await stream.ended(timeout=5)
    took = time.monotonic() - changed
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED, err
    assert (err.details() or "").startswith("the token lacks node:s2:write")
    assert took < 2.0, f"the session ended {took:.2f}s after its token lost its node"


async def test_an_open_session_loses_a_subscription_its_token_may_no_longer_read(
    acl: Acl,
) -> None:
    async with sdk.AsyncClient(acl.plane.address, token=acl.management) as admin:
        await admin.register("orders", "10.0.0.5", 8080)
    await _policy(acl, "node-s3", "node:s3:write")
    await _policy(acl, "reads-s3", "service:orders:read")
    secret, _ = await _session_token(acl, "node-s3", "reads-s3")
    stream = Stream(acl.channel, "s3", token=secret)
    await stream.connect()
    await stream.send(subscribe=apb.Subscribe(services=[apb.ServiceRef(name="orders")]))
    update = (await stream.read_kind("update")).update
    assert [len(s.instances) for s in update.services] == [1]
    await _policy(acl, "reads-s3", "service:billing:read")
    err = await stream.ended(timeout=5)
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED, err
    assert (err.details() or "").startswith("the token lacks service:orders:read")


async def test_an_open_sessions_next_messages_follow_its_tokens_rules(acl: Acl) -> None:
    await _policy(acl, "node-s4", "node:s4:write")
    await _policy(acl, "svc-s4", "service:web:write")
    secret, _ = await _session_token(acl, "node-s4", "svc-s4")
    stream = Stream(acl.channel, "s4", token=secret)
    await stream.connect()
    assert (await stream.sync(_instance_of("web", "s4"))).created == 1
    await _policy(acl, "svc-s4", "service:db:write")
    await assert_eventually(lambda: _rules_are(acl, secret, "node:s4:write", "service:db:write"))
    # Refused at the Hello's rules; allowed now, on the same stream.
    assert (await stream.sync(_instance_of("db", "s4"))).created == 1
    await stream.send(sync=apb.SyncInstances(instances=[_instance_of("web", "s4")]))
    err = await stream.ended(timeout=5)
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED, err
    assert (err.details() or "").startswith("the token lacks service:web:write")


async def test_only_the_control_plane_publishes_registry_events(acl: Acl) -> None:
    async with sdk.BusClient(acl.plane.address, token=acl.management) as bus:
        with pytest.raises(sdk.PermissionDeniedError, match="only the control plane publishes"):
            await bus.publish("eco.events.default.web", b"{}")
        await bus.publish("orders.created", b"{}")


async def test_a_deleted_token_is_refused(acl: Acl) -> None:
    secret = await acl.token("service:*:read")
    async with sdk.AsyncClient(acl.plane.address, token=secret) as client:
        await client.list_services()
        tokens = await acl_pb2_grpc.AclServiceStub(acl.channel).ListTokens(
            acl_pb2.ListTokensRequest(), metadata=acl.md(acl.management)
        )
        mine = [t.accessor_id for t in tokens.tokens if t.policies != ["global-management"]]
        for accessor in mine:
            await acl_pb2_grpc.AclServiceStub(acl.channel).DeleteToken(
                acl_pb2.DeleteTokenRequest(accessor_id=accessor), metadata=acl.md(acl.management)
            )

        async def refused() -> None:
            with pytest.raises(sdk.UnauthenticatedError):
                await client.list_services()

        await assert_eventually(refused, timeout=3)


async def test_audit_log_and_no_secret_anywhere(acl: Acl, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = await acl.token("service:web:write")
    async with sdk.AsyncClient(acl.plane.address, token=secret) as client:
        await client.register("web", "10.0.0.1", 80)
        with pytest.raises(sdk.PermissionDeniedError):
            await client.register("db", "10.0.0.1", 80)
    lines = [json.loads(line) for line in acl.audit.read_text().splitlines()]
    assert {"time", "identity", "rpc", "resource", "allowed"} <= set(lines[-1])
    written = [line for line in lines if line["rpc"].endswith("RegisterInstance")]
    assert [(line["resource"], line["allowed"]) for line in written] == [
        ("service:web:write", True),
        ("service:db:write", False),
    ]
    assert written[0]["identity"].split(" ", 1)[1].startswith("(test p-")  # accessor (description)
    assert any(line["rpc"].endswith("CreateToken") and line["allowed"] for line in lines)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://{acl.plane.admin_address}/metrics") as resp,
    ):
        metrics = await resp.text()
    for text in (acl.audit.read_text(), caplog.text, metrics):
        assert secret not in text
        assert acl.management not in text


async def test_replicas_pass_the_callers_token_on_to_each_other(tmp_path: Path) -> None:
    """`eco node list` through one replica asks the others with the caller's token:
    no refusal at the other replica, and its sidecars are counted."""
    from controlplane.store import open_store

    def config(name: str) -> ControlPlaneConfig:
        return ControlPlaneConfig(
            listen="127.0.0.1:0",
            admin_listen=None,
            store_url="memory://",
            grace=0.2,
            drain_delay=0,
            acl="deny",
            replica=name,
            rebalance_interval=0.1,
            audit_log=str(tmp_path / f"{name}.log"),
        )

    store = open_store("memory://")
    await store.start()
    try:
        async with (
            ControlPlane(config("a"), store=store) as a,
            ControlPlane(config("b"), store=store) as b,
        ):
            async with grpc.aio.insecure_channel(a.address) as channel:
                boot = await acl_pb2_grpc.AclServiceStub(channel).Bootstrap(
                    acl_pb2.BootstrapRequest()
                )
                helper = Acl(a, channel, boot.secret, tmp_path / "a.log")
                reader = await helper.token("node:*:read", "service:*:read")
            assert a.spreader is not None
            await assert_eventually(lambda: _check(bool(a.spreader and a.spreader.peers)))
            async with sdk.AsyncClient(a.address, token=reader) as client:
                await client.list_nodes()
                wait = await client.wait_for_revision(1, timeout=0.2)
                assert wait.applied
            refusals = (tmp_path / "b.log").read_text() if (tmp_path / "b.log").exists() else ""
            assert "ListNodes" not in refusals and "WaitForRevision" not in refusals, refusals
            assert b.authorizer is not None
    finally:
        await store.close()


def _check(condition: bool) -> None:
    assert condition


async def test_a_namespace_token_lists_its_namespace(acl: Acl) -> None:
    async with sdk.AsyncClient(acl.plane.address, token=acl.management) as admin:
        await admin.register("web", "10.0.0.1", 80, namespace="team-a")
        await admin.register("db", "10.0.0.2", 5432, namespace="team-a")
        await admin.register("web", "10.0.0.3", 80)
    team = await acl.token("namespace:team-a:read", "service:db:deny")
    async with sdk.AsyncClient(acl.plane.address, token=team) as client:
        services = await client.list_services(namespace="team-a")
        assert [(s.namespace, s.name) for s in services.services] == [("team-a", "web")]
        everything = await client.list_services()
        assert [(s.namespace, s.name) for s in everything.services] == [("team-a", "web")]
        with pytest.raises(sdk.PermissionDeniedError, match="service:web:read"):
            await client.get_service("web")  # namespace default


async def test_a_token_resolves_to_its_own_rules(acl: Acl) -> None:
    secret = await acl.token("bus:orders.*:publish", "service:web:read")
    stub = acl_pb2_grpc.AclServiceStub(acl.channel)
    answer = await stub.ResolveToken(acl_pb2.ResolveTokenRequest(), metadata=acl.md(secret))
    assert answer.token.accessor_id and answer.token.description.startswith("test p-")
    assert [(r.resource, r.pattern, r.access) for r in answer.rules] == [
        ("bus", "orders.*", "publish"),
        ("service", "web", "read"),
    ]
    assert answer.default_allow is False
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ResolveToken(acl_pb2.ResolveTokenRequest())
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
