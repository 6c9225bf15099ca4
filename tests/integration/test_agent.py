"""The control plane's side of the sidecar protocol, over a real Connect stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from ecosystem.v1 import agent_pb2 as apb
from ecosystem.v1 import agent_pb2_grpc
from ecosystem.v1 import registry_pb2 as pb
from ecosystem.v1 import registry_pb2_grpc as pb_grpc

from controlplane import ControlPlane, ControlPlaneConfig
from tests.integration.agent_stream import Stream, instances, session_status
from tests.util import assert_eventually, assert_stays


@pytest.fixture
async def agent_plane() -> AsyncIterator[ControlPlane]:
    config = ControlPlaneConfig(
        listen="127.0.0.1:0",
        admin_listen=None,
        store_url="memory://",
        drain_delay=0,
        grace=0.5,
    )
    async with ControlPlane(config) as cp:
        assert cp.agent is not None
        yield cp


@pytest.fixture
async def channel(agent_plane: ControlPlane) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(agent_plane.address) as ch:
        yield ch


class Sidecar(Stream):
    """A scripted sidecar with a platform, as a real one sends (no token: the
    control plane runs with ACLs "allow"; tests/integration/test_acl.py covers tokens)."""

    def __init__(self, channel: grpc.aio.Channel, node: str = "web-1", **hello: object) -> None:
        super().__init__(channel, node, platform="onprem", **hello)


def local(id: str, port: int = 8080, service: str = "web") -> pb.Instance:
    return pb.Instance(
        id=id, service=service, address="127.0.0.1", port=port, health=pb.HEALTH_STATUS_PASSING
    )


async def test_sync_creates_updates_and_removes_the_nodes_instances(
    channel: grpc.aio.Channel,
) -> None:
    sidecar = Sidecar(channel)
    welcome = await sidecar.connect()
    assert welcome.session_id and not welcome.resumed and welcome.grace_seconds == 15
    result = await sidecar.sync(local("a"), local("b", 8081))
    assert (result.created, result.updated, result.removed) == (2, 0, 0)
    got = await instances(channel)
    assert set(got) == {"a", "b"}
    assert got["a"].node == "web-1" and got["a"].zone == "eu-1a"
    assert got["a"].liveness == pb.LIVENESS_EPHEMERAL
    assert session_status(got["a"]) == pb.HEALTH_STATUS_PASSING

    again = await sidecar.sync(local("a"), local("b", 8081))
    assert (again.created, again.updated, again.removed) == (0, 0, 0), "unchanged sync wrote"
    fewer = await sidecar.sync(local("a", 9090))
    assert (fewer.created, fewer.updated, fewer.removed) == (0, 1, 1)
    got = await instances(channel)
    assert [(i.id, i.port) for i in got.values()] == [("a", 9090)]
    sidecar.drop()


async def test_bad_instances_in_a_sync_are_reported_and_skipped(
    channel: grpc.aio.Channel,
) -> None:
    sidecar = Sidecar(channel)
    await sidecar.connect()
    result = await sidecar.sync(local("a"), pb.Instance(id="b", service="web", port=0))
    assert result.created == 1
    assert any(e.startswith("instances[1].port") for e in result.errors), result.errors
    assert any(e.startswith("instances[1].address") for e in result.errors)
    assert set(await instances(channel)) == {"a"}
    sidecar.drop()


async def test_health_reports_change_the_instance(channel: grpc.aio.Channel) -> None:
    sidecar = Sidecar(channel)
    await sidecar.connect()
    await sidecar.sync(local("a"))
    await sidecar.send(
        health=apb.HealthReport(
            service="web",
            instance_id="a",
            health=pb.HEALTH_STATUS_CRITICAL,
            checks=[pb.CheckStatus(name="http", status=pb.HEALTH_STATUS_CRITICAL, output="503")],
        )
    )

    async def critical() -> None:
        inst = (await instances(channel))["a"]
        assert inst.health == pb.HEALTH_STATUS_CRITICAL
        assert {c.name: c.output for c in inst.checks}["http"] == "503"
        assert session_status(inst) == pb.HEALTH_STATUS_PASSING

    await assert_eventually(critical)
    sidecar.drop()


async def test_updates_acks_node_list_and_wait(channel: grpc.aio.Channel) -> None:
    registry = pb_grpc.RegistryServiceStub(channel)
    agents = agent_pb2_grpc.AgentServiceStub(channel)
    await registry.RegisterInstance(
        pb.RegisterInstanceRequest(instance=local("o1", service="orders"))
    )
    sidecar = Sidecar(channel)
    await sidecar.connect()
    await sidecar.send(subscribe=apb.Subscribe(services=[apb.ServiceRef(name="orders")]))
    first = (await sidecar.read_kind("update")).update
    assert first.full
    assert [(s.service.name, [i.id for i in s.instances]) for s in first.services] == [
        ("orders", ["o1"])
    ]
    await sidecar.send(ack=apb.Ack(version=first.version, nonce=first.nonce))

    async def synced() -> None:
        nodes = (await agents.ListNodes(apb.ListNodesRequest())).nodes
        assert [(n.node.id, n.status) for n in nodes] == [("web-1", apb.NODE_SYNC_STATUS_SYNCED)]
        assert nodes[0].applied_version == first.version

    await assert_eventually(synced)

    reg = await registry.RegisterInstance(
        pb.RegisterInstanceRequest(instance=local("o2", 8081, service="orders"))
    )
    update = (await sidecar.read_kind("update")).update
    assert update.version >= reg.revision and not update.full
    assert [i.id for i in update.services[0].instances] == ["o1", "o2"]
    # Not acknowledged yet: the change has not been applied everywhere.
    waited = await agents.WaitForRevision(
        apb.WaitForRevisionRequest(revision=reg.revision, timeout_ms=300)
    )
    assert not waited.applied and waited.affected == 1
    assert [n.node.id for n in waited.pending] == ["web-1"]
    assert waited.pending[0].status == apb.NODE_SYNC_STATUS_STALE

    wait = asyncio.ensure_future(
        agents.WaitForRevision(apb.WaitForRevisionRequest(revision=reg.revision, timeout_ms=5000))
    )
    await asyncio.sleep(0.1)
    await sidecar.send(ack=apb.Ack(version=update.version, nonce=update.nonce))
    assert (await wait).applied

    # A change to a service nobody subscribes to is applied everywhere at once.
    other = await registry.RegisterInstance(
        pb.RegisterInstanceRequest(instance=local("x", service="other"))
    )
    done = await agents.WaitForRevision(apb.WaitForRevisionRequest(revision=other.revision))
    assert done.applied and done.affected == 0
    sidecar.drop()


async def test_a_nack_leaves_the_node_stale_with_the_reason(channel: grpc.aio.Channel) -> None:
    agents = agent_pb2_grpc.AgentServiceStub(channel)
    sidecar = Sidecar(channel)
    await sidecar.connect()
    await sidecar.send(subscribe=apb.Subscribe(services=[apb.ServiceRef(name="orders")]))
    update = (await sidecar.read_kind("update")).update
    await sidecar.send(
        ack=apb.Ack(version=update.version, nonce=update.nonce, rejected=True, error="bad port")
    )

    async def stale() -> None:
        node = (await agents.ListNodes(apb.ListNodesRequest())).nodes[0]
        assert node.status == apb.NODE_SYNC_STATUS_STALE and node.last_error == "bad port"
        assert node.applied_version == 0

    await assert_eventually(stale)
    sidecar.drop()


async def test_lost_session_turns_critical_then_goes(
    agent_plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    agents = agent_pb2_grpc.AgentServiceStub(channel)
    sidecar = Sidecar(channel, grace_seconds=1, deregister_critical_after_seconds=1)
    await sidecar.connect()
    await sidecar.sync(local("a"))
    sidecar.drop()

    async def disconnected() -> None:
        node = (await agents.ListNodes(apb.ListNodesRequest())).nodes[0]
        assert node.status == apb.NODE_SYNC_STATUS_DISCONNECTED and not node.connected

    await assert_eventually(disconnected)
    assert (await instances(channel))["a"].health == pb.HEALTH_STATUS_PASSING  # in grace

    async def critical() -> None:
        inst = (await instances(channel))["a"]
        assert inst.health == pb.HEALTH_STATUS_CRITICAL
        assert session_status(inst) == pb.HEALTH_STATUS_CRITICAL

    await assert_eventually(critical, timeout=5)

    async def removed() -> None:
        assert await instances(channel) == {}

    await assert_eventually(removed, timeout=5)


async def test_reconnecting_within_grace_resumes_the_session(channel: grpc.aio.Channel) -> None:
    agents = agent_pb2_grpc.AgentServiceStub(channel)
    sidecar = Sidecar(channel, grace_seconds=2, deregister_critical_after_seconds=1)
    first = await sidecar.connect()
    await sidecar.sync(local("a"))
    sidecar.drop()

    async def disconnected() -> None:
        node = (await agents.ListNodes(apb.ListNodesRequest())).nodes[0]
        assert not node.connected

    await assert_eventually(disconnected)
    again = await sidecar.connect()
    assert again.resumed and again.session_id == first.session_id

    async def passing() -> None:
        inst = (await instances(channel))["a"]
        assert inst.health == pb.HEALTH_STATUS_PASSING

    # Past the grace (2 s) and a sweep: the resumed session holds the lease.
    await assert_stays(passing, duration=3)
    sidecar.drop()


@pytest.mark.parametrize(
    ("hello", "code"),
    [
        (apb.Hello(node=apb.Node(id="ok"), token="wrong"), grpc.StatusCode.UNAUTHENTICATED),
        (apb.Hello(node=apb.Node(id="bad id!"), token=""), grpc.StatusCode.INVALID_ARGUMENT),
        (apb.Hello(token=""), grpc.StatusCode.INVALID_ARGUMENT),
        (None, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_bad_hello_is_refused(
    channel: grpc.aio.Channel, hello: apb.Hello | None, code: grpc.StatusCode
) -> None:
    call = agent_pb2_grpc.AgentServiceStub(channel).Connect()
    if hello is None:
        await call.write(apb.ConnectRequest(subscribe=apb.Subscribe()))
    else:
        await call.write(apb.ConnectRequest(hello=hello))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == code


async def test_restart_with_an_empty_store_is_repaired_by_the_next_sync() -> None:
    config = ControlPlaneConfig(
        listen="127.0.0.1:0", admin_listen=None, store_url="memory://", drain_delay=0, grace=0.2
    )
    async with ControlPlane(config) as first:
        address = first.address
        async with grpc.aio.insecure_channel(address) as ch:
            sidecar = Sidecar(ch, node="n1")
            sidecar.hello.token = ""
            await sidecar.connect()
            await sidecar.sync(local("a"))
            sidecar.drop()
    second_config = config.model_copy(update={"listen": address})
    async with ControlPlane(second_config), grpc.aio.insecure_channel(address) as ch:
        assert await instances(ch) == {}
        sidecar = Sidecar(ch, node="n1", session_id=sidecar.hello.session_id)
        sidecar.hello.token = ""
        welcome = await sidecar.connect()
        assert not welcome.resumed  # the old session is unknown to the new store
        await sidecar.sync(local("a"))
        assert set(await instances(ch)) == {"a"}
        sidecar.drop()
