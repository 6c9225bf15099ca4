"""AsyncClient and Client over fake channels: requests built, results typed, lifecycle."""

from __future__ import annotations

import asyncio
import threading

import pytest
from ecosystem.v1 import registry_pb2 as pb

import sdk
from tests.unit.sdk.fakes import FakeControlPlane, batch, event, instance_pb, script


def echo_register(_address: str, request: pb.RegisterInstanceRequest) -> object:
    stored = pb.Instance()
    stored.CopyFrom(request.instance)
    stored.namespace = stored.namespace or "default"
    stored.mod_revision = 4
    stored.lease_id = request.lease_id or (7 if stored.liveness == pb.LIVENESS_EPHEMERAL else 0)
    return pb.RegisterInstanceResponse(
        instance=stored, revision=4, lease_id=stored.lease_id, lease_ttl_seconds=10
    )


def get_service(_address: str, request: pb.GetServiceRequest) -> object:
    return pb.GetServiceResponse(
        service=pb.Service(name=request.name, namespace="default", instance_count=1),
        instances=[instance_pb(health=pb.HEALTH_STATUS_CRITICAL)],
        revision=12,
    )


@pytest.fixture
def plane() -> FakeControlPlane:
    return FakeControlPlane(
        unary={
            "RegisterInstance": echo_register,
            "DeregisterInstance": lambda _a, _r: pb.DeregisterInstanceResponse(
                revision=5, deleted=True
            ),
            "GetService": get_service,
            "ListServices": lambda _a, _r: pb.ListServicesResponse(
                services=[pb.Service(name="web")], revision=3
            ),
            "ListInstances": lambda _a, _r: pb.ListInstancesResponse(
                instances=[instance_pb()], revision=3
            ),
            "KeepAlive": lambda _a, r: pb.KeepAliveResponse(lease_id=r.lease_id, ttl_seconds=10),
        }
    )


def client_for(plane: FakeControlPlane, servers: str = "a:1") -> sdk.AsyncClient:
    return sdk.AsyncClient(servers, timeout=1.0, channel_factory=plane.channel_factory)


async def test_register_builds_the_request_and_returns_the_stored_instance(
    plane: FakeControlPlane,
) -> None:
    async with client_for(plane) as client:
        instance = await client.register(
            "web",
            "10.0.0.9",
            8080,
            zone="z1",
            tags=["v2"],
            metadata={"k": "v"},
            weight=3,
        )
    (request,) = plane.requests("RegisterInstance")
    assert request.instance.id == ""  # the control plane picks it (controlplane/registry.py)
    assert request.instance.liveness == pb.LIVENESS_PERSISTENT
    assert request.instance.health == pb.HEALTH_STATUS_UNSPECIFIED  # the server decides
    assert not request.HasField("expected_revision")
    assert list(request.instance.tags) == ["v2"]
    assert isinstance(instance, sdk.Instance)
    assert instance.namespace == "default" and instance.mod_revision == 4
    assert instance.metadata == {"k": "v"}


async def test_expected_revision_is_sent_and_not_retried(plane: FakeControlPlane) -> None:
    plane.down.add("a:1")
    async with client_for(plane, "a:1,b:2") as client:
        with pytest.raises(sdk.UnavailableError):
            await client.register("web", "10.0.0.9", 8080, id="web-1", expected_revision=0)
        assert len(plane.calls) == 1
        await client.register("web", "10.0.0.9", 8080, id="web-1", expected_revision=0)
    assert plane.requests("RegisterInstance")[-1].expected_revision == 0


async def test_ephemeral_registrations_share_the_client_lease(plane: FakeControlPlane) -> None:
    before = asyncio.all_tasks()
    async with client_for(plane) as client:
        first = await client.register("web", "10.0.0.9", 8080, ephemeral=True, lease_ttl=6)
        second = await client.register("api", "10.0.0.9", 8081, ephemeral=True, lease_ttl=6)
        assert first.liveness is sdk.Liveness.EPHEMERAL
        assert first.lease_id == second.lease_id == 7
        assert len(asyncio.all_tasks() - before) == 1  # the keepalive
    assert asyncio.all_tasks() - before == set()
    requests = plane.requests("RegisterInstance")
    assert [r.lease_id for r in requests] == [0, 7]
    assert requests[0].lease_ttl_seconds == 6


async def test_reads_return_typed_results(plane: FakeControlPlane) -> None:
    async with client_for(plane) as client:
        detail = await client.get_service("web")
        services = await client.list_services(namespace="prod")
        instances = await client.list_instances(
            service="web", zone="z1", tags=["a", "b"], health=["passing", sdk.HealthStatus.WARNING]
        )
        removed = await client.deregister("web", "web-1")
    assert detail.revision == 12 and detail.service.name == "web"
    assert detail.instances[0].health is sdk.HealthStatus.CRITICAL
    assert [s.name for s in services] == ["web"] and services.revision == 3
    assert [i.id for i in instances] == ["web-1"]
    assert removed == sdk.Deregistration(revision=5, deleted=True)
    (selector,) = [r.selector for r in plane.requests("ListInstances")]
    assert list(selector.health) == [pb.HEALTH_STATUS_PASSING, pb.HEALTH_STATUS_WARNING]
    assert list(selector.tags) == ["a", "b"] and selector.zone == "z1"
    assert plane.requests("ListServices")[0].namespace == "prod"


async def test_watch_yields_typed_events(plane: FakeControlPlane) -> None:
    plane.watch_scripts.append(
        script(batch(event("RESYNC", 3), event("SNAPSHOT_END", 3)), hang=True)
    )
    async with client_for(plane) as client:
        events = client.watch("web", zone="z1", progress_interval=1.5)
        assert (await anext(events)).type is sdk.WatchEventType.RESYNC
        await events.aclose()
    (request,) = plane.requests("Watch")
    assert request.selector.service == "web" and request.progress_interval_ms == 1500


async def test_a_watch_ends_when_its_client_closes(plane: FakeControlPlane) -> None:
    plane.watch_scripts.append(script(batch(event("PROGRESS", 3)), hang=True))
    client = client_for(plane)
    events = client.watch("web")
    assert (await anext(events)).revision == 3
    await client.close()
    with pytest.raises(StopAsyncIteration):
        await anext(events)


@pytest.mark.parametrize("bad", [{"progress_interval": 0.01}, {"since_revision": -1}])
async def test_watch_arguments_are_checked(plane: FakeControlPlane, bad: dict[str, float]) -> None:
    async with client_for(plane) as client:
        with pytest.raises(ValueError):
            client.watch("web", **bad)  # type: ignore[arg-type]


async def test_a_closed_client_refuses_everything(plane: FakeControlPlane) -> None:
    client = client_for(plane)
    await client.list_services()
    await client.close()
    await client.close()
    assert client.closed
    with pytest.raises(sdk.ClientClosedError):
        await client.list_services()
    with pytest.raises(sdk.ClientClosedError):
        client.watch()
    with pytest.raises(sdk.ClientClosedError):
        async with client:
            pass


def test_servers_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECO_SERVER", "x:1,y:2")
    assert sdk.AsyncClient().servers == ("x:1", "y:2")
    assert sdk.Client().servers == ("x:1", "y:2")


class TestSyncClient:
    def test_calls_run_on_the_private_loop(self, plane: FakeControlPlane) -> None:
        with sdk.Client("a:1", channel_factory=plane.channel_factory) as client:
            instance = client.register("web", "10.0.0.9", 8080, id="web-1")
            assert instance.id == "web-1"
            assert client.get_service("web").revision == 12
            assert client.deregister("web", "web-1") == sdk.Deregistration(5, deleted=True)
        assert client.closed
        assert not [t for t in threading.enumerate() if t.name.startswith("eco-client-")]

    def test_errors_are_the_same(self, plane: FakeControlPlane) -> None:
        plane.down.add("a:1")
        client = sdk.Client("a:1", channel_factory=plane.channel_factory, timeout=0.5)
        with pytest.raises(sdk.UnavailableError):
            client.list_services()
        client.close()

    def test_watch_is_a_plain_iterator(self, plane: FakeControlPlane) -> None:
        plane.watch_scripts.append(
            script(batch(event("RESYNC", 3), event("PUT", 3, instance_pb())), hang=True)
        )
        with (
            sdk.Client("a:1", channel_factory=plane.channel_factory) as client,
            client.watch("web") as events,
        ):
            first, second = next(events), next(events)
        assert first.type is sdk.WatchEventType.RESYNC
        assert second.instance is not None and second.instance.id == "web-1"
        assert list(events) == []  # closed

    def test_close_ends_open_watches(self, plane: FakeControlPlane) -> None:
        client = sdk.Client("a:1", channel_factory=plane.channel_factory)
        events = client.watch("web")
        client.close()
        client.close()
        assert list(events) == []
        with pytest.raises(sdk.ClientClosedError):
            client.list_services()

    def test_nothing_starts_before_the_first_call(self) -> None:
        sdk.Client("a:1").close()
        assert not [t for t in threading.enumerate() if t.name.startswith("eco-client-")]
