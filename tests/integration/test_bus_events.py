"""Registry events over the bus: EventPublisher on a real store and EmbeddedBroker,
ServiceEvents (the SDK) over gRPC against it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from ecosystem.v1 import registry_pb2 as rpb

import sdk
from controlplane.events import (
    EVENTS_REVISION_KEY,
    EventPublisher,
    EventPublisherConfig,
    classify,
    instance_dict,
)
from controlplane.leader import Election
from controlplane.registry import Registry, instance_key
from controlplane.store import Event, EventType, KeyValue, MemoryStore
from sdk import BusClient, ServiceEvent, ServiceEvents, ServiceEventType, StreamConfig
from tests.harness.bus_server import BusServer
from tests.util import assert_eventually

WAIT = 10.0
FAST = EventPublisherConfig(persist_every=1, persist_interval=0.05, progress_interval=0.05)


@dataclass
class Env:
    store: MemoryStore
    registry: Registry
    server: BusServer
    bus: BusClient

    async def register(self, service: str, iid: str, *, port: int = 80) -> None:
        await self.registry.register(
            rpb.RegisterInstanceRequest(
                instance=rpb.Instance(
                    id=iid, service=service, address="10.0.0.1", port=port, tags=["v1"]
                )
            )
        )

    async def deregister(self, service: str, iid: str) -> None:
        await self.registry.deregister(
            rpb.DeregisterInstanceRequest(service=service, id=iid, namespace="default")
        )

    async def set_health(self, service: str, iid: str, health: int) -> None:
        key = instance_key("default", service, iid)
        kv = await self.store.get(key)
        assert kv is not None
        inst = rpb.Instance.FromString(kv.value)
        inst.health = health  # type: ignore[assignment]
        await self.store.put(key, inst.SerializeToString(deterministic=True), lease=kv.lease)


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    store = MemoryStore()
    async with store, BusServer() as server, BusClient(server.address, timeout=WAIT) as bus:
        yield Env(store, Registry(store), server, bus)


@pytest.fixture
async def publisher(env: Env) -> AsyncIterator[EventPublisher]:
    pub = EventPublisher(env.store, env.server.broker, FAST)
    task = asyncio.create_task(pub.run())
    await assert_eventually(lambda: _persisted(env.store), timeout=WAIT)
    yield pub
    task.cancel()
    await asyncio.wait({task})


async def _persisted(store: MemoryStore) -> int:
    kv = await store.get(EVENTS_REVISION_KEY)
    assert kv is not None
    return int(kv.value)


def _recorder(events: ServiceEvents, service: str, **kw: object) -> list[ServiceEvent]:
    seen: list[ServiceEvent] = []

    @events.on(service, **kw)  # type: ignore[arg-type]
    async def record(event: ServiceEvent) -> None:
        seen.append(event)

    return seen


async def _count(seen: list[ServiceEvent], n: int) -> None:
    async def check() -> None:
        assert len(seen) >= n, [(e.type, e.instance.id) for e in seen]

    await assert_eventually(check, timeout=WAIT)


async def test_register_health_deregister_in_order(env: Env, publisher: EventPublisher) -> None:
    events = ServiceEvents(env.bus)
    seen = _recorder(events, "orders")
    async with events:
        await env.register("orders", "o-1")
        await env.register("orders", "o-1")  # the same registration again: no event
        await env.set_health("orders", "o-1", rpb.HEALTH_STATUS_CRITICAL)
        await env.register("orders", "o-1", port=81)
        await env.register("payments", "p-1")  # another service: not this handler's
        await env.deregister("orders", "o-1")
        await _count(seen, 4)

    assert [e.type for e in seen] == [
        ServiceEventType.PUT,
        ServiceEventType.HEALTH,
        ServiceEventType.PUT,
        ServiceEventType.DELETE,
    ]
    assert [e.revision for e in seen] == sorted(e.revision for e in seen)
    put, health, update, delete = seen
    assert put.instance.id == "o-1" and put.instance.port == 80 and put.previous_health is None
    assert put.instance.namespace == "default" and put.instance.tags == ("v1",)
    assert health.instance.health is sdk.HealthStatus.CRITICAL
    assert health.previous_health is sdk.HealthStatus.PASSING
    assert update.instance.port == 81 and update.previous_health is sdk.HealthStatus.CRITICAL
    assert delete.instance.port == 81
    assert put.message is not None
    assert put.message.subject == "eco.events.default.orders"
    assert put.message.headers["eco-event-type"] == "PUT"
    assert put.message.headers["eco-revision"] == str(put.revision)
    assert put.message.id == f"{put.revision}:o-1:PUT"
    assert json.loads(put.message.data)["instance"] == put.instance.to_dict()


def test_instance_dict_matches_the_sdk() -> None:
    inst = rpb.Instance(
        id="a",
        service="s",
        namespace="default",
        address="h",
        port=1,
        tags=["x"],
        metadata={"b": "2", "a": "1"},
        health=rpb.HEALTH_STATUS_WARNING,
        checks=[rpb.CheckStatus(name="c", status=rpb.HEALTH_STATUS_CRITICAL, output="o")],
        liveness=rpb.LIVENESS_EPHEMERAL,
        lease_id=7,
        create_revision=3,
        mod_revision=4,
    )
    assert instance_dict(inst) == sdk.Instance.from_proto(inst).to_dict()
    assert instance_dict(rpb.Instance()) == sdk.Instance.from_proto(rpb.Instance()).to_dict()


async def test_type_filter_and_failing_handler_isolated(
    env: Env, publisher: EventPublisher
) -> None:
    events = ServiceEvents(env.bus)
    deletes = _recorder(events, "orders", types={"DELETE"}, name="deletes")
    everything = _recorder(events, "*", name="everything")

    @events.on("orders")
    async def broken(event: ServiceEvent) -> None:
        raise RuntimeError("handler bug")

    async with events:
        await env.register("orders", "o-1")
        await env.register("orders", "o-2")
        await env.deregister("orders", "o-1")
        await _count(everything, 3)
        await _count(deletes, 1)
        await assert_eventually(lambda: _check(events.stats("broken").errors == 3), timeout=WAIT)
    assert [e.instance.id for e in deletes] == ["o-1"]
    assert events.stats("deletes").filtered == 2
    assert events.stats("everything").handled == 3


def _check(condition: bool) -> None:
    assert condition


async def test_concurrency_is_bounded(env: Env, publisher: EventPublisher) -> None:
    events = ServiceEvents(env.bus, concurrency=3)
    release = asyncio.Event()
    done: list[str] = []

    @events.on("orders")
    async def slow(event: ServiceEvent) -> None:
        await release.wait()
        done.append(event.instance.id)

    async with events:
        for i in range(8):
            await env.register("orders", f"o-{i}")
        await assert_eventually(lambda: _check(events.peak_concurrency == 3), timeout=WAIT)
        await asyncio.sleep(0.1)
        assert events.peak_concurrency == 3 and not done
        release.set()
        await assert_eventually(lambda: _check(len(done) == 8), timeout=WAIT)
    assert events.peak_concurrency == 3


async def test_durable_handler_failure_is_redelivered(env: Env, publisher: EventPublisher) -> None:
    await env.server.broker.add_stream(StreamConfig("registry-events", ("eco.events.>",)))
    events = ServiceEvents(env.bus, durable="app", retry_backoff=(0.05,))
    attempts: list[int] = []

    @events.on("orders")
    async def flaky(event: ServiceEvent) -> None:
        assert event.message is not None
        attempts.append(event.message.delivery_count)
        if len(attempts) < 3:
            raise RuntimeError("not yet")

    async with events:
        await env.register("orders", "o-1")
        await assert_eventually(lambda: _check(events.stats("flaky").handled == 1), timeout=WAIT)
    assert attempts == [1, 2, 3]
    assert events.stats("flaky").errors == 2


async def test_publisher_restart_resumes_without_losing_events(env: Env) -> None:
    broker = env.server.broker
    await broker.add_stream(StreamConfig("registry-events", ("eco.events.>",)))
    # A slow persist: a restart re-publishes some events, which the stream drops.
    slow = EventPublisherConfig(persist_every=1000, persist_interval=60, progress_interval=0.05)

    first = EventPublisher(env.store, broker, slow)
    task = asyncio.create_task(first.run())
    await assert_eventually(lambda: _persisted(env.store), timeout=WAIT)
    start = await _persisted(env.store)
    await env.register("orders", "o-1")
    await env.register("orders", "o-2")
    await assert_eventually(lambda: _check(first.published == 2), timeout=WAIT)
    task.cancel()
    await asyncio.wait({task})
    # As after a crash: the position written at start is all the next run knows.
    await env.store.put(EVENTS_REVISION_KEY, b"%020d" % start)

    await env.register("orders", "o-3")  # while no publisher runs
    await env.deregister("orders", "o-1")

    second = EventPublisher(env.store, broker, FAST)
    task = asyncio.create_task(second.run())
    try:
        events = ServiceEvents(env.bus, durable="app")
        seen = _recorder(events, "orders")
        async with events:
            await _count(seen, 4)
            await asyncio.sleep(0.2)
        assert [(e.type.value, e.instance.id) for e in seen] == [
            ("PUT", "o-1"),
            ("PUT", "o-2"),
            ("PUT", "o-3"),
            ("DELETE", "o-1"),
        ]
        assert second.published == 4  # two of them duplicates the stream dropped
        (info,) = await broker.streams()
        assert info.messages == 4
        await assert_eventually(
            lambda: _persisted_at_least(env.store, seen[-1].revision), timeout=WAIT
        )
    finally:
        task.cancel()
        await asyncio.wait({task})


async def _persisted_at_least(store: MemoryStore, revision: int) -> None:
    assert await _persisted(store) >= revision


async def test_events_of_one_instance_stay_in_order(env: Env, publisher: EventPublisher) -> None:
    events = ServiceEvents(env.bus, concurrency=4)
    ports: list[int] = []

    @events.on("orders")
    async def record(event: ServiceEvent) -> None:
        # Later events finish sooner unless they wait for the earlier ones.
        await asyncio.sleep(0.01 * (10 - event.instance.port))
        ports.append(event.instance.port)

    async with events:
        for port in range(1, 7):
            await env.register("orders", "o-1", port=port)
        await assert_eventually(lambda: _check(len(ports) == 6), timeout=WAIT)
    assert ports == [1, 2, 3, 4, 5, 6]


async def test_runs_under_the_leader_election(env: Env) -> None:
    election = Election(env.store, "replica-a", ttl=5.0)
    pub = EventPublisher(env.store, env.server.broker, FAST)
    election.while_leader("bus-events", pub.run)
    events = ServiceEvents(env.bus)
    seen = _recorder(events, "orders")
    async with events:
        await election.start()
        try:
            await assert_eventually(lambda: _persisted(env.store), timeout=WAIT)
            await env.register("orders", "o-1")
            await _count(seen, 1)
        finally:
            await election.close()
    assert seen[0].type is ServiceEventType.PUT
    # Stopping leading wrote the position.
    assert await _persisted(env.store) >= seen[0].revision


def test_classify() -> None:
    key = instance_key("default", "s", "a")
    base = rpb.Instance(id="a", service="s", namespace="default", address="h", port=1)
    checked = rpb.Instance()
    checked.CopyFrom(base)
    checked.checks.add(name="c", status=rpb.HEALTH_STATUS_PASSING, output="ok")
    moved = rpb.Instance()
    moved.CopyFrom(base)
    moved.port = 2

    def put(new: rpb.Instance, old: rpb.Instance | None, lease: int = 0) -> str | None:
        value = new.SerializeToString(deterministic=True)
        prev = None
        if old is not None:
            prev = KeyValue(key, old.SerializeToString(deterministic=True), 2, 2, 1)
        return classify(Event(EventType.PUT, KeyValue(key, value, 2, 3, 2, lease), prev))

    assert put(base, None) == "PUT"
    assert put(base, base) is None
    assert put(checked, base) == "HEALTH"
    assert put(moved, base) == "PUT"
    assert put(base, base, lease=9) == "PUT"


async def test_run_until_cancelled_and_malformed_payloads(
    env: Env, publisher: EventPublisher
) -> None:
    events = ServiceEvents(env.bus)
    seen = _recorder(events, "orders")
    task = asyncio.create_task(events.run())
    await assert_eventually(
        lambda: _check(env.server.servicer.subscription_count == 1), timeout=WAIT
    )
    await env.bus.publish("eco.events.default.orders", b"not json")
    await env.bus.publish("eco.events.default.orders", b'{"type": "NOPE"}')
    await env.register("orders", "o-1")
    await _count(seen, 1)
    assert events.stats("record").malformed == 2
    task.cancel()
    await asyncio.wait({task})
    await assert_eventually(
        lambda: _check(env.server.servicer.subscription_count == 0), timeout=WAIT
    )
    with pytest.raises(RuntimeError):
        await events.start()


async def test_the_position_only_moves_forward(env: Env) -> None:
    slow = EventPublisherConfig(persist_every=1000, persist_interval=60, progress_interval=0.05)
    deposed = EventPublisher(env.store, env.server.broker, slow)
    task = asyncio.create_task(deposed.run())
    await assert_eventually(lambda: _persisted(env.store), timeout=WAIT)
    await env.register("orders", "o-1")
    await assert_eventually(lambda: _check(deposed.published == 1), timeout=WAIT)
    ahead = env.store.revision + 100  # as written by a successor
    await env.store.put(EVENTS_REVISION_KEY, b"%020d" % ahead)
    task.cancel()
    await asyncio.wait({task})
    assert deposed.revision < ahead
    assert await _persisted(env.store) == ahead


async def test_a_poisoned_event_is_dead_lettered_and_later_events_flow(
    env: Env, publisher: EventPublisher
) -> None:
    """Hardening finding 2: data stored before the edge refused it (a service
    name ending in a newline, an instance over the bus's payload limit) must
    not stop registry events for everyone."""
    events = ServiceEvents(env.bus)
    seen = _recorder(events, "orders")
    async with events, env.bus.subscribe("eco.dlq.events") as dead:
        await assert_eventually(
            lambda: _check(env.server.servicer.subscription_count == 2), timeout=WAIT
        )
        bad_name = rpb.Instance(
            id="w-1", service="web\n", namespace="default", address="10.0.0.1", port=80
        )
        huge = rpb.Instance(
            id="h-1",
            service="huge",
            namespace="default",
            address="10.0.0.1",
            port=80,
            metadata={"k": "x" * (2 << 20)},
        )
        for inst in (bad_name, huge):
            key = instance_key("default", inst.service, inst.id)
            await env.store.put(key, inst.SerializeToString(deterministic=True))
        await env.register("orders", "o-1")
        await _count(seen, 1)
        reports = [json.loads((await anext(dead)).data) for _ in range(2)]
    assert [r["reason"] for r in reports] == ["InvalidSubjectError", "PayloadTooLargeError"]
    assert publisher.dead_lettered == 2
    assert all(len(json.dumps(r)) < 1024 for r in reports)
