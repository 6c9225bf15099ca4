"""The agent stream under a hostile or careless caller, against a real control plane.

Each test reproduces one finding of the hardening review: unvalidated
reports, Hellos and subscriptions; node records that pile up and break
``eco node list``; a Hello that takes over a connected node; a service too
large for one endpoint update; and one stream taking what belongs to all.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from ecosystem.v1 import agent_pb2 as apb
from ecosystem.v1 import agent_pb2_grpc
from ecosystem.v1 import registry_pb2 as pb
from ecosystem.v1 import registry_pb2_grpc as pb_grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from controlplane import ControlPlane, ControlPlaneConfig
from controlplane.agent import Reaper
from controlplane.agent._nodes import node_key
from controlplane.store import MemoryStore
from sdk import (
    AgentNode,
    AgentSession,
    AsyncClient,
    EndpointUpdate,
    HealthStatus,
    Instance,
    ServiceRef,
)
from sdk._types import CheckStatus
from sidecar.app import Sidecar
from sidecar.config import SidecarConfig
from tests.integration.agent_stream import Stream, instances, session_status
from tests.util import assert_eventually, assert_stays


@pytest.fixture
async def plane() -> AsyncIterator[ControlPlane]:
    config = ControlPlaneConfig(
        listen="127.0.0.1:0", admin_listen=None, store_url="memory://", drain_delay=0, grace=0.5
    )
    async with ControlPlane(config) as cp:
        yield cp


@pytest.fixture
async def channel(plane: ControlPlane) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(plane.address) as ch:
        yield ch


def limit(plane: ControlPlane, **changes: Any) -> None:
    """Gives the running control plane's agent service other stream limits."""
    assert plane.agent is not None
    limits = dataclasses.replace(plane.agent.settings.limits, **changes)
    plane.agent.settings = dataclasses.replace(plane.agent.settings, limits=limits)


def violations(err: grpc.aio.AioRpcError) -> dict[str, str]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, f"no google.rpc.BadRequest details: {err.details()}"
    found: dict[str, str] = {}
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            found.update({v.field: v.description for v in bad.field_violations})
    return found


def local(id: str = "a", service: str = "web", **fields: Any) -> pb.Instance:
    return pb.Instance(
        id=id,
        service=service,
        address="127.0.0.1",
        port=8080,
        health=pb.HEALTH_STATUS_PASSING,
        **fields,
    )


def maximal(i: int, service: str = "big") -> pb.Instance:
    """An instance with every field near its limit and within all of them (~62 KiB)."""
    return pb.Instance(
        id=f"{service}-{i:03d}",
        service=service,
        address=f"10.0.{i // 250}.{i % 250 + 1}",
        port=8000 + i,
        health=pb.HEALTH_STATUS_PASSING,
        tags=[f"t{k:02d}-" + "x" * 124 for k in range(64)],
        metadata={f"meta-{k:02d}": "v" * 249 for k in range(64)},
        checks=[
            pb.CheckStatus(
                name=f"check-{k:02d}-" + "n" * 119,
                status=pb.HEALTH_STATUS_PASSING,
                output="o" * 1024,
                changed_at_ms=1_700_000_000_000,
            )
            for k in range(32)
        ],
    )


# -- finding 4: every agent-stream message is validated at the edge ---------------------------


@pytest.mark.parametrize(
    ("hello", "field"),
    [
        ({"grace_seconds": 2**31 - 1}, "hello.grace_seconds"),
        ({"grace_seconds": -1}, "hello.grace_seconds"),
        ({"deregister_critical_after_seconds": -1}, "hello.deregister_critical_after_seconds"),
        ({"deregister_critical_after_seconds": 10**9}, "hello.deregister_critical_after_seconds"),
        ({"applied_version": -5}, "hello.applied_version"),
        ({"session_id": "s" * 10_000}, "hello.session_id"),
    ],
)
async def test_a_hello_out_of_range_is_refused_naming_the_field(
    channel: grpc.aio.Channel, hello: dict[str, Any], field: str
) -> None:
    err = await Stream(channel, **hello).refused()
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert field in violations(err)
    assert len(err.details() or "") < 1024, "the error echoes the input"


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({f"k{i}": "v" * 100_000 for i in range(30)}, "hello"),  # 3 MB: over the message limit
        ({f"k{i}": "v" * 2_000 for i in range(100)}, "hello.node.metadata"),
        ({"owner": "v" * 2_000}, 'hello.node.metadata["owner"]'),
        ({f"k{i}": "v" * 1_000 for i in range(20)}, "hello.node.metadata"),  # 20 KB in all
    ],
)
async def test_a_hello_with_oversized_node_metadata_is_refused_and_stores_nothing(
    channel: grpc.aio.Channel, metadata: dict[str, str], field: str
) -> None:
    """The finding: two Hellos with large metadata made `eco node list` fail for everyone."""
    stream = Stream(channel, node="meta-1")
    stream.hello.node.metadata.update(metadata)
    err = await stream.refused()
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(err)
    assert field in found, found
    assert len(err.details() or "") < 4096

    nodes = await agent_pb2_grpc.AgentServiceStub(channel).ListNodes(apb.ListNodesRequest())
    assert [n.node.id for n in nodes.nodes] == []


async def test_a_health_report_of_3_mb_with_an_unknown_status_is_refused(
    channel: grpc.aio.Channel,
) -> None:
    """The finding: health=99 and 111 checks of 30,000 characters were stored."""
    stream = Stream(channel)
    await stream.connect()
    assert (await stream.sync(local("a"))).created == 1
    await stream.send(
        health=apb.HealthReport(
            service="web",
            instance_id="a",
            health=99,  # type: ignore[arg-type]
            checks=[
                pb.CheckStatus(name=f"c{i}", status=pb.HEALTH_STATUS_PASSING, output="x" * 30_000)
                for i in range(111)
            ],
        )
    )
    err = await stream.ended()
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert len(err.details() or "") < 4096
    inst = (await instances(channel))["a"]
    assert inst.health == pb.HEALTH_STATUS_PASSING
    assert inst.ByteSize() < 1024, "the report was stored"


async def test_a_health_report_names_each_bad_field(channel: grpc.aio.Channel) -> None:
    stream = Stream(channel)
    await stream.connect()
    await stream.sync(local("a"))
    await stream.send(
        health=apb.HealthReport(
            service="web",
            instance_id="a",
            health=99,  # type: ignore[arg-type]
            checks=[
                pb.CheckStatus(name="http", status=pb.HEALTH_STATUS_PASSING, output="x" * 5000),
                pb.CheckStatus(name="tcp", status=42),  # type: ignore[arg-type]
            ],
        )
    )
    err = await stream.ended()
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(err)
    assert {"health.health", "health.checks[0].output", "health.checks[1].status"} <= set(found)
    assert (await instances(channel))["a"].health == pb.HEALTH_STATUS_PASSING


async def test_a_health_report_may_carry_32_checks(channel: grpc.aio.Channel) -> None:
    """The limit is the instance's 32 checks; the control plane's own session
    check does not take one of them."""
    stream = Stream(channel)
    await stream.connect()
    checks = [pb.CheckStatus(name=f"c{i}", status=pb.HEALTH_STATUS_PASSING) for i in range(32)]
    result = await stream.sync(local("a", checks=checks))
    assert (result.created, list(result.errors)) == (1, [])
    checks[0].status = pb.HEALTH_STATUS_CRITICAL
    await stream.send(
        health=apb.HealthReport(
            service="web", instance_id="a", health=pb.HEALTH_STATUS_CRITICAL, checks=checks
        )
    )

    async def critical() -> None:
        inst = (await instances(channel))["a"]
        assert inst.health == pb.HEALTH_STATUS_CRITICAL and len(inst.checks) == 33

    await assert_eventually(critical)
    stream.drop()


async def test_a_subscribe_to_50000_services_is_refused(channel: grpc.aio.Channel) -> None:
    stream = Stream(channel)
    await stream.connect()
    await stream.send(
        subscribe=apb.Subscribe(services=[apb.ServiceRef(name=f"s-{i}") for i in range(50_000)])
    )
    err = await stream.ended()
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert "subscribe.services" in violations(err)
    assert len(err.details() or "") < 1024


async def test_a_subscribe_names_bad_and_repeated_services(channel: grpc.aio.Channel) -> None:
    stream = Stream(channel)
    await stream.connect()
    await stream.send(
        subscribe=apb.Subscribe(
            services=[
                apb.ServiceRef(name="orders"),
                apb.ServiceRef(name="Bad Name" * 1000),
                apb.ServiceRef(name="orders", namespace="default"),
                apb.ServiceRef(name="users", namespace="NOPE"),
            ]
        )
    )
    err = await stream.ended()
    found = violations(err)
    assert set(found) == {
        "subscribe.services[1].name",
        "subscribe.services[2]",
        "subscribe.services[3].namespace",
    }, found
    assert len(found["subscribe.services[1].name"]) < 300


@pytest.mark.parametrize(
    ("ack", "field"),
    [
        (apb.Ack(version=1, nonce="n" * 10_000), "ack.nonce"),
        (apb.Ack(version=-1, nonce="n"), "ack.version"),
        (apb.Ack(version=1, nonce="n", rejected=True, error="e" * 100_000), "ack.error"),
    ],
)
async def test_an_oversized_ack_ends_the_stream(
    channel: grpc.aio.Channel, ack: apb.Ack, field: str
) -> None:
    stream = Stream(channel)
    await stream.connect()
    await stream.send(ack=ack)
    err = await stream.ended()
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(err)


async def test_the_errors_of_a_sync_are_bounded(channel: grpc.aio.Channel) -> None:
    stream = Stream(channel)
    await stream.connect()
    bad = [pb.Instance(id=f"b{i}", service="Web!", port=0) for i in range(1000)]
    result = await stream.sync(*bad)
    assert result.created == 0
    assert len(result.errors) <= 101
    assert "more" in result.errors[-1], result.errors[-1]
    assert result.ByteSize() < 64 * 1024
    stream.drop()


async def test_one_oversized_message_ends_the_stream(channel: grpc.aio.Channel) -> None:
    """Every message has a size limit (a Sync larger than that comes in parts)."""
    stream = Stream(channel)
    await stream.connect()
    await stream.send(sync=apb.SyncInstances(instances=[maximal(i, "web") for i in range(20)]))
    err = await stream.ended()
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert "sync" in violations(err)
    assert await instances(channel) == {}


async def test_a_sync_in_parts_is_applied_whole(channel: grpc.aio.Channel) -> None:
    stream = Stream(channel)
    await stream.connect()
    await stream.send(sync=apb.SyncInstances(instances=[local("a")], more=True))
    await stream.send(sync=apb.SyncInstances(instances=[local("b")], more=True))
    assert await instances(channel) == {}, "a part of a sync was applied"
    await stream.send(sync=apb.SyncInstances(instances=[local("c")]))
    result = (await stream.read_kind("sync_result")).sync_result
    assert result.created == 3
    assert set(await instances(channel)) == {"a", "b", "c"}
    stream.drop()


# -- finding 6: node records, and a Hello that takes over a connected node ---------------------


async def test_an_anonymous_hello_cannot_take_over_a_connected_node(
    channel: grpc.aio.Channel,
) -> None:
    """The finding: a Hello reusing a connected node's id took over its session,
    and after the grace the real, healthy sidecar's instances turned CRITICAL."""
    real = Stream(channel, node="web-1", grace_seconds=1, deregister_critical_after_seconds=60)
    await real.connect()
    await real.sync(local("a"))

    err = await Stream(channel, node="web-1", grace_seconds=1).refused()
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS, err.details()
    assert "web-1" in (err.details() or "") and "another sidecar" in (err.details() or "")

    async def passing() -> None:
        inst = (await instances(channel))["a"]
        assert inst.health == pb.HEALTH_STATUS_PASSING
        assert session_status(inst) == pb.HEALTH_STATUS_PASSING

    await assert_stays(passing, duration=2.5)  # past the grace and a reaper sweep
    # The real sidecar's stream is still up.
    await real.send(ping=apb.Ping(nonce=7))
    assert (await real.read_kind("pong")).pong.nonce == 7
    real.drop()


async def test_a_sidecar_whose_stream_is_gone_comes_back_at_once(
    channel: grpc.aio.Channel,
) -> None:
    first = Stream(channel, node="web-1", grace_seconds=5)
    await first.connect()
    await first.sync(local("a"))
    first.drop()
    # A restarted sidecar has no session id; the old stream is gone: it may start anew.
    again = Stream(channel, node="web-1", grace_seconds=5)

    async def admitted() -> None:
        try:
            welcome = await again.connect()
        except AssertionError:
            again.drop()
            raise
        assert not welcome.resumed

    await assert_eventually(admitted, timeout=3)
    again.drop()


async def test_resuming_a_connected_session_ends_the_old_stream_as_taken_over(
    channel: grpc.aio.Channel,
) -> None:
    old = Stream(channel, node="web-1")
    welcome = await old.connect()
    new = Stream(channel, node="web-1", session_id=welcome.session_id)
    assert (await new.connect()).resumed
    err = await old.ended()
    assert err.code() == grpc.StatusCode.ABORTED, err.details()
    assert (err.details() or "").startswith("session taken over")
    new.drop()


async def test_a_node_connected_to_one_replica_cannot_be_taken_over_on_another() -> None:
    config = ControlPlaneConfig(
        listen="127.0.0.1:0", admin_listen=None, store_url="memory://", drain_delay=0, grace=0.5
    )
    async with (
        MemoryStore() as store,
        ControlPlane(config, store=store) as a,
        ControlPlane(config, store=store) as b,
        grpc.aio.insecure_channel(a.address) as to_a,
        grpc.aio.insecure_channel(b.address) as to_b,
    ):
        real = Stream(to_a, node="web-1", grace_seconds=3)
        welcome = await real.connect()
        err = await Stream(to_b, node="web-1").refused()
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS, err.details()
        assert a.replica in (err.details() or "")

        # Resumed on B with the session id: A ends its stream (within a third
        # of the grace: 1 s here).
        moved = Stream(to_b, node="web-1", session_id=welcome.session_id, grace_seconds=3)
        assert (await moved.connect()).resumed
        ended = await real.ended(timeout=5)
        assert ended.code() == grpc.StatusCode.ABORTED
        assert (ended.details() or "").startswith("session taken over")
        assert b.replica in (ended.details() or "")
        moved.drop()


async def test_the_sdk_notices_that_its_session_was_taken_over(
    plane: ControlPlane, channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    session = AgentSession(
        [plane.address],
        AgentNode(id="web-1"),
        instances=lambda: [Instance(id="a", service="web", address="127.0.0.1", port=8080)],
        on_update=lambda update: None,
        grace=2.0,
        initial_backoff=0.01,
        max_backoff=0.2,
    )
    async with session:
        await session.wait_connected()
        thief = Stream(channel, node="web-1", session_id=session.session_id)
        with caplog.at_level(logging.ERROR, logger="sdk.agent._session"):
            assert (await thief.connect()).resumed

            def noticed() -> None:
                assert any(
                    "taken over" in r.getMessage() and r.levelno == logging.ERROR
                    for r in caplog.records
                ), caplog.records
                assert not session.connected
                assert "another sidecar" in session.status().last_error, session.status()

            await assert_eventually(noticed)

        # It does not take the session back while the other stream holds it ...
        def still_out() -> None:
            assert not session.connected

        await assert_stays(still_out, duration=0.5)
        thief.drop()
        # ... and gets back in once it is gone.
        await asyncio.wait_for(session.wait_connected(), 10)


async def test_a_sidecar_shows_a_takeover_in_its_status(
    plane: ControlPlane, channel: grpc.aio.Channel, tmp_path: Path
) -> None:
    config = SidecarConfig.model_validate(
        {
            "node": {"id": "web-1"},
            "controlplane": {"addresses": [plane.address]},
            "data_dir": str(tmp_path / "web-1"),
            "local_api": "127.0.0.1:0",
            "admin": "127.0.0.1:0",
            "grace": "2s",
        }
    )
    async with Sidecar(config) as sidecar, aiohttp.ClientSession() as http:
        session = sidecar.session
        assert session is not None
        await asyncio.wait_for(session.wait_connected(), 10)
        thief = Stream(channel, node="web-1", session_id=session.session_id)
        assert (await thief.connect()).resumed

        async def shown() -> None:
            async with http.get(f"http://{sidecar.admin_address}/status") as response:
                doc = await response.json()
            assert not doc["connected"]
            assert "another sidecar" in doc["controlplane"]["last_error"], doc["controlplane"]

        await assert_eventually(shown)
        thief.drop()
        await asyncio.wait_for(session.wait_connected(), 15)


async def test_a_sidecar_with_all_the_node_metadata_it_may_have_connects(
    plane: ControlPlane, channel: grpc.aio.Channel, tmp_path: Path
) -> None:
    """64 configured entries leave no room for the version the sidecar adds:
    it is left out rather than making every Hello too large."""
    metadata = {f"m{k:02d}": "v" * 200 for k in range(64)}
    config = SidecarConfig.model_validate(
        {
            "node": {"id": "meta-full", "metadata": metadata},
            "controlplane": {"addresses": [plane.address]},
            "data_dir": str(tmp_path / "meta-full"),
            "local_api": "127.0.0.1:0",
            "admin": "off",
        }
    )
    async with Sidecar(config) as sidecar:
        assert sidecar.session is not None
        await asyncio.wait_for(sidecar.session.wait_connected(), 10)
    nodes = (await agent_pb2_grpc.AgentServiceStub(channel).ListNodes(apb.ListNodesRequest())).nodes
    assert dict(nodes[0].node.metadata) == metadata


async def test_node_records_of_gone_sidecars_are_deleted_after_the_retention(
    plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    agents = agent_pb2_grpc.AgentServiceStub(channel)
    gone = Stream(channel, node="gone-1", grace_seconds=1)
    await gone.connect()
    gone.drop()
    owner = Stream(channel, node="owner-1", grace_seconds=1, deregister_critical_after_seconds=600)
    await owner.connect()
    await owner.sync(local("a"))
    owner.drop()
    live = Stream(channel, node="live-1", grace_seconds=1)
    await live.connect()

    reaper = Reaper(
        plane.store, plane.view, default_deregister_after=60, node_retention=0.5, node_interval=0
    )

    async def forgotten() -> None:
        await reaper.sweep()
        listed = await agents.ListNodes(apb.ListNodesRequest())
        assert [n.node.id for n in listed.nodes] == ["live-1", "owner-1"]

    await assert_eventually(forgotten, timeout=10)
    assert await plane.store.get(node_key("gone-1")) is None
    live.drop()


async def test_node_list_is_paged_and_the_sdk_follows_the_pages(
    plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    """The finding: node records could make ListNodes too large for any stock client."""
    for i in range(300):
        status = apb.NodeStatus(
            node=apb.Node(id=f"n-{i:03d}", metadata={f"m{k:02d}": "v" * 250 for k in range(64)}),
            status=apb.NODE_SYNC_STATUS_DISCONNECTED,
        )
        await plane.store.put(node_key(status.node.id), status.SerializeToString())
    agents = agent_pb2_grpc.AgentServiceStub(channel)
    first = await agents.ListNodes(apb.ListNodesRequest())
    assert 0 < len(first.nodes) < 300 and first.next_page_token
    assert first.ByteSize() <= 1024 * 1024
    second = await agents.ListNodes(apb.ListNodesRequest(page_token=first.next_page_token))
    assert second.nodes[0].node.id > first.nodes[-1].node.id

    small = await agents.ListNodes(apb.ListNodesRequest(page_size=7))
    assert [n.node.id for n in small.nodes] == [f"n-{i:03d}" for i in range(7)]

    async with AsyncClient(plane.address) as client:
        nodes = await client.list_nodes()
    assert [n.id for n in nodes] == [f"n-{i:03d}" for i in range(300)]


async def test_a_bad_page_request_is_refused(channel: grpc.aio.Channel) -> None:
    agents = agent_pb2_grpc.AgentServiceStub(channel)
    for request, field in (
        (apb.ListNodesRequest(page_size=-1), "page_size"),
        (apb.ListNodesRequest(page_token="!" * 5000), "page_token"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await agents.ListNodes(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in violations(caught.value)


# -- finding 5: a service larger than one message reaches its subscribers ----------------------


class Recorder:
    def __init__(self) -> None:
        self.updates: list[EndpointUpdate] = []

    def __call__(self, update: EndpointUpdate) -> None:
        self.updates.append(update)

    def instances(self, service: str) -> list[str]:
        latest: dict[str, list[str]] = {}
        for update in self.updates:
            for entry in update.services:
                latest[entry.service.name] = [i.id for i in entry.instances]
        return latest.get(service, [])


async def test_a_sidecar_subscribed_to_a_service_of_5_mb_gets_all_of_it(
    plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    """The finding: thirty maximal instances made every subscribed sidecar
    reconnect about 12 times a second and stay disconnected."""
    registry = pb_grpc.RegistryServiceStub(channel)
    for i in range(80):
        await registry.RegisterInstance(pb.RegisterInstanceRequest(instance=maximal(i)))
    recorder = Recorder()
    session = AgentSession(
        [plane.address],
        AgentNode(id="reader-1"),
        instances=list,
        on_update=recorder,
        subscriptions=[ServiceRef("big")],
        initial_backoff=0.01,
        max_backoff=0.2,
    )
    async with session:
        expected = [f"big-{i:03d}" for i in range(80)]
        await assert_eventually(lambda: _equal(recorder.instances("big"), expected), timeout=20)
        # A change is one more complete update, in parts again.
        await registry.RegisterInstance(pb.RegisterInstanceRequest(instance=maximal(80)))
        await assert_eventually(
            lambda: _equal(recorder.instances("big"), [*expected, "big-080"]), timeout=20
        )
        status = session.status()
        assert status.connected and status.connects == 1, status
        assert status.updates_rejected == 0

    agents = agent_pb2_grpc.AgentServiceStub(channel)
    nodes = (await agents.ListNodes(apb.ListNodesRequest())).nodes
    assert [n.node.id for n in nodes] == ["reader-1"]


async def test_a_sidecar_with_instances_larger_than_one_message_registers_them_all(
    plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    def big(i: int) -> Instance:
        raw = maximal(i, "web")
        return Instance(
            id=raw.id,
            service="web",
            address=raw.address,
            port=raw.port,
            tags=tuple(raw.tags),
            metadata=dict(raw.metadata),
            health=HealthStatus.PASSING,
            checks=tuple(
                CheckStatus(name=c.name, status=HealthStatus.PASSING, output=c.output)
                for c in raw.checks
            ),
        )

    local_instances = [big(i) for i in range(40)]  # ~2.5 MB in one Sync
    session = AgentSession(
        [plane.address],
        AgentNode(id="big-host"),
        instances=lambda: local_instances,
        on_update=lambda update: None,
        initial_backoff=0.01,
        max_backoff=0.2,
    )
    async with session:

        async def registered() -> None:
            last = session.status().last_sync
            assert last is not None and last.created == 40, session.status()
            assert last.errors == ()

        await assert_eventually(registered, timeout=20)
        assert session.status().connects == 1


def _equal(got: object, expected: object) -> None:
    assert got == expected


# -- one stream cannot take what belongs to all -----------------------------------------------


async def test_agent_streams_are_capped_per_replica_and_per_peer(
    plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    limit(plane, max_streams=3, max_streams_per_peer=2)
    a, b = Stream(channel, node="a"), Stream(channel, node="b")
    await a.connect()
    await b.connect()
    err = await Stream(channel, node="c").refused()
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
    assert "127.0.0.1" in (err.details() or "")

    limit(plane, max_streams=2, max_streams_per_peer=10)
    err = await Stream(channel, node="c").refused()
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "this replica" in (err.details() or "")

    a.drop()
    c = Stream(channel, node="c")

    async def admitted() -> None:
        try:
            await c.connect()
        except (AssertionError, grpc.aio.AioRpcError) as exc:
            c.drop()
            raise AssertionError(str(exc)) from None

    await assert_eventually(admitted)
    b.drop()
    c.drop()


async def test_a_flood_on_one_stream_is_slowed_and_others_are_not(
    plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    limit(plane, rate=100.0, burst=100)
    flood = Stream(channel, node="flood")
    other = Stream(channel, node="other")
    await flood.connect()
    await other.connect()
    for nonce in range(400):
        await flood.send(ping=apb.Ping(nonce=nonce))
    started = time.monotonic()
    await other.send(ping=apb.Ping(nonce=1))
    assert (await other.read_kind("pong")).pong.nonce == 1
    assert time.monotonic() - started < 1.0, "the flood slowed another stream"

    last = 0
    while last < 399:
        last = (await flood.read_kind("pong")).pong.nonce
    assert time.monotonic() - started > 2.0, "the flood was not slowed"
    # Slowed, not ended.
    await flood.send(ping=apb.Ping(nonce=1000))
    assert (await flood.read_kind("pong")).pong.nonce == 1000
    flood.drop()
    other.drop()


async def test_a_stream_that_never_says_hello_is_ended(
    plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    limit(plane, hello_timeout=0.3)
    call = agent_pb2_grpc.AgentServiceStub(channel).Connect()
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(call.read(), 5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3


async def test_hellos_beyond_the_rate_are_refused(
    plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    limit(plane, hellos_per_second=1.0, hello_burst=3)
    streams = [Stream(channel, node=f"h{i}") for i in range(3)]
    for stream in streams:
        await stream.connect()
    err = await Stream(channel, node="h9").refused()
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "Hello" in (err.details() or "")
    for stream in streams:
        stream.drop()


async def test_a_hung_sidecar_is_ended_so_a_replacement_gets_in(
    plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    """A sidecar whose stream is up but which says nothing (its process hung)
    holds its node only until the idle timeout."""
    limit(plane, idle_timeout=1.0)
    hung = Stream(channel, node="web-1", grace_seconds=30)
    await hung.connect()
    await hung.sync(local("a"))
    started = time.monotonic()
    refused = await Stream(channel, node="web-1").refused()
    assert refused.code() == grpc.StatusCode.ALREADY_EXISTS

    replacement = Stream(channel, node="web-1")

    async def admitted() -> None:
        try:
            await replacement.connect()
        except (AssertionError, grpc.aio.AioRpcError) as exc:
            replacement.drop()
            raise AssertionError(str(exc)) from None

    await assert_eventually(admitted, timeout=10)
    assert time.monotonic() - started < 5  # the idle timeout (1 s), not the grace (30 s)
    err = await hung.ended()
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "nothing from the sidecar" in (err.details() or "")
    replacement.drop()


async def test_an_sdk_session_stays_up_under_the_idle_timeout(plane: ControlPlane) -> None:
    """The SDK pings often enough, whether or not the control plane speaks."""
    limit(plane, idle_timeout=1.5)
    session = AgentSession(
        [plane.address], AgentNode(id="quiet-1"), instances=list, on_update=lambda u: None, grace=2
    )
    async with session:
        await session.wait_connected()

        def up() -> None:
            assert session.connected and session.status().connects == 1

        await assert_stays(up, duration=4)


async def test_the_stream_caps_come_from_the_control_plane_config() -> None:
    """`eco controlplane --max-agent-streams/--max-agent-streams-per-peer` reach the servicer."""
    config = ControlPlaneConfig(
        listen="127.0.0.1:0",
        admin_listen=None,
        store_url="memory://",
        drain_delay=0,
        grace=0.5,
        max_agent_streams=1,
    )
    async with ControlPlane(config) as cp, grpc.aio.insecure_channel(cp.address) as channel:
        first = Stream(channel, node="a")
        await first.connect()
        err = await Stream(channel, node="b").refused()
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
        first.drop()
