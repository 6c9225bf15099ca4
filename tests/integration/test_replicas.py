"""Several control-plane replicas in one process over one shared store.

Each replica is a real `ControlPlane` on 127.0.0.1:0 (gRPC and admin HTTP);
they share a `MemoryStore`, as replicas share an etcd cluster. Sidecars are
real `AgentSession`s and clients real `AsyncClient`s, given every replica's
address. The same scenarios with separate processes over etcd are in
tests/e2e/test_ha.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from ecosystem.v1 import registry_pb2 as pb

from controlplane import ControlPlane, ControlPlaneConfig
from controlplane.registry import INSTANCES_PREFIX
from controlplane.store import Event, MemoryStore
from controlplane.view import Selector
from sdk import (
    AgentNode,
    AgentSession,
    AsyncClient,
    EndpointUpdate,
    HealthStatus,
    Instance,
    NodeState,
    ServiceRef,
    WatchEvent,
    WatchEventType,
)
from tests.harness.ports import free_port
from tests.util import assert_eventually, assert_stays


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    async with MemoryStore() as s:
        yield s


def config(**overrides: Any) -> ControlPlaneConfig:
    base: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:0",
        "store_url": "memory://",
        "grace": 0.5,
        "drain_delay": 0,
        "leader_ttl": 1.0,
        "rebalance_interval": 0.3,
        "rebalance_batch": 3,
    }
    return ControlPlaneConfig(**{**base, **overrides})


@contextlib.asynccontextmanager
async def replica(store: MemoryStore, **overrides: Any) -> AsyncIterator[ControlPlane]:
    plane = ControlPlane(config(**overrides), store=store)
    await plane.start()
    try:
        yield plane
    finally:
        await plane.stop(grace=0)


class InstanceEvents:
    """Every change of an instance in the shared store from now on."""

    def __init__(self, store: MemoryStore) -> None:
        self.events: list[Event] = []
        self._watch = store.watch(INSTANCES_PREFIX, progress_interval=0.2)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> InstanceEvents:
        self._task = asyncio.create_task(self._collect())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.wait({self._task})
        await self._watch.aclose()

    async def _collect(self) -> None:
        async for batch in self._watch:
            self.events.extend(batch.events)

    def critical(self) -> list[str]:
        return [
            e.kv.key
            for e in self.events
            if e.kv.value and pb.Instance.FromString(e.kv.value).health == pb.HEALTH_STATUS_CRITICAL
        ]


def sidecar(
    node: str,
    servers: list[str],
    *,
    grace: float = 15.0,
    subscriptions: tuple[str, ...] = (),
    on_update: Callable[[EndpointUpdate], None] = lambda _update: None,
) -> AgentSession:
    local = Instance(
        id=f"{node}-web", service="web", address="127.0.0.1", port=8080, health=HealthStatus.PASSING
    )
    return AgentSession(
        servers,
        AgentNode(id=node),
        instances=lambda: [local],
        on_update=on_update,
        subscriptions=[ServiceRef(name) for name in subscriptions],
        grace=grace,
        initial_backoff=0.05,
        max_backoff=0.5,
    )


@contextlib.asynccontextmanager
async def sidecars(nodes: list[AgentSession]) -> AsyncIterator[list[AgentSession]]:
    async with contextlib.AsyncExitStack() as stack:
        for node in nodes:
            await stack.enter_async_context(node)
        yield nodes


async def metric(plane: ControlPlane, name: str) -> float:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://{plane.admin_address}/metrics") as response,
    ):
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def passing(plane: ControlPlane, count: int) -> None:
    instances = plane.view.select(Selector())
    assert len(instances) == count, len(instances)
    assert all(i.health == pb.HEALTH_STATUS_PASSING for i in instances)


def check(condition: bool, message: str = "") -> None:
    assert condition, message


async def test_replicas_serve_one_state_and_elect_one_leader(store: MemoryStore) -> None:
    async with replica(store) as a, replica(store) as b, replica(store, leader_ttl=30) as c:
        planes = [a, b, c]
        assert len({p.replica for p in planes}) == 3
        async with AsyncClient(a.address) as writer, AsyncClient(c.address) as reader:
            await writer.register("web", "10.0.0.1", 80, id="w1")
            got = await reader.list_instances(service="web")
            assert [i.id for i in got] == ["w1"]

        def one_leader() -> ControlPlane:
            leaders = [p for p in planes if p.is_leader]
            assert len(leaders) == 1, [p.replica for p in leaders]
            return leaders[0]

        leader = await assert_eventually(one_leader, timeout=10)
        for plane in planes:
            assert await metric(plane, "eco_controlplane_leader") == (plane is leader)
            assert plane.election is not None and plane.election.leader == leader.replica
        reapers = [t for t in asyncio.all_tasks() if t.get_name() == "session-reaper"]
        assert len(reapers) == 1, "the reaper runs on the leader only"

        # A leader that stops hands over at once, well within its lease's TTL.
        loop = asyncio.get_running_loop()
        started = loop.time()
        await leader.stop(grace=0)
        planes.remove(leader)
        successor = await assert_eventually(one_leader, timeout=10)
        assert loop.time() - started < 5
        assert successor.election is not None and successor.election.terms == 1
        reapers = [t for t in asyncio.all_tasks() if t.get_name() == "session-reaper"]
        assert len(reapers) == 1


async def test_load_spreads_to_a_replica_that_starts_later(store: MemoryStore) -> None:
    later = f"127.0.0.1:{free_port()}"
    async with replica(store) as a:
        nodes = [sidecar(f"n{i}", [a.address, later]) for i in range(10)]
        async with sidecars(nodes):
            assert a.agent is not None
            await assert_eventually(lambda: check(a.agent.stream_count == 10), timeout=10)
            await assert_eventually(lambda: passing(a, 10), timeout=10)
            sessions = {n.status().session_id for n in nodes}
            async with InstanceEvents(store) as changes, replica(store, listen=later) as b:
                assert b.agent is not None

                def spread() -> None:
                    # Shedding stops once A holds no more than 1.5 x its share + 1 (8.5).
                    assert b.agent is not None and a.agent is not None
                    assert a.agent.stream_count <= 8, a.agent.stream_count
                    assert a.agent.stream_count + b.agent.stream_count == 10

                await assert_eventually(spread, timeout=20)
                await assert_eventually(lambda: check(all(n.connected for n in nodes)))
                # Resumed, not restarted: same sessions, nothing re-registered,
                # no instance ever critical.
                assert {n.status().session_id for n in nodes} == sessions
                moved = [n for n in nodes if n.status().address == later]
                assert moved and all(n.status().resumed for n in moved)

                def unchanged() -> None:
                    assert changes.critical() == []
                    assert changes.events == [], "a moved session rewrote its instances"

                await assert_stays(unchanged, duration=0.5)
                await passing(b, 10)
                assert await metric(a, "eco_controlplane_agent_streams_shed_total") >= 2
                # Either replica lists every node as connected, to where it is now
                # (the replica left behind does not record a stale disconnect).
                where = {n.status().session_id: n.status().replica for n in nodes}
                for plane in (a, b):
                    async with AsyncClient(plane.address) as client:
                        listed = await client.list_nodes()
                    assert all(n.connected for n in listed), listed
                    assert {n.session_id: n.replica for n in listed} == where
                # Settled: the replicas stop moving streams once both hold a fair share.
                counts = (a.agent.stream_count, b.agent.stream_count)

                def settled() -> None:
                    assert a.agent is not None and b.agent is not None
                    assert (a.agent.stream_count, b.agent.stream_count) == counts

                await assert_stays(settled, duration=1.0)


async def test_a_sidecar_that_knows_one_address_is_shed_once_at_most(
    store: MemoryStore,
) -> None:
    async with replica(store) as a, replica(store) as b:
        nodes = [sidecar(f"n{i}", [a.address]) for i in range(6)]
        async with sidecars(nodes):
            assert a.agent is not None and a.spreader is not None and b.agent is not None
            await assert_eventually(lambda: check(a.agent.stream_count == 6), timeout=10)
            # Over ten rounds (3 s), each of which may end one or two streams.
            spreader = a.spreader
            await assert_stays(lambda: check(spreader.shed_total <= 6), duration=3)
            assert spreader.shed_total >= 1
            await assert_eventually(lambda: check(all(n.connected for n in nodes)))
            assert a.agent.stream_count == 6 and b.agent.stream_count == 0


async def test_sidecars_of_a_crashed_replica_resume_on_another(store: MemoryStore) -> None:
    async with replica(store, rebalance_batch=0) as a, replica(store, rebalance_batch=0) as b:
        grace = 2
        nodes = [sidecar(f"n{i}", [a.address, b.address], grace=grace) for i in range(6)]
        async with sidecars(nodes):
            assert a.agent is not None and b.agent is not None
            await assert_eventually(lambda: check(a.agent.stream_count == 6), timeout=10)
            await assert_eventually(lambda: passing(b, 6), timeout=10)
            sessions = {n.status().session_id for n in nodes}
            async with InstanceEvents(store) as changes:
                loop = asyncio.get_running_loop()
                crashed = loop.time()
                await a.abort()  # no hand-over: leases run out as after kill -9

                def all_on_b() -> None:
                    assert b.agent is not None
                    assert b.agent.stream_count == 6
                    assert all(n.connected and n.status().replica == b.replica for n in nodes)

                await assert_eventually(all_on_b, timeout=10)
                assert loop.time() - crashed < grace, "not back within the grace period"
                assert {n.status().session_id for n in nodes} == sessions
                assert all(n.status().resumed for n in nodes)
                # Past the grace, with B leading (so its reaper, sweeping every
                # second, would have seen a lost session): still passing.
                await assert_eventually(lambda: check(b.is_leader), timeout=10)

                def unchanged() -> None:
                    assert changes.critical() == []
                    assert changes.events == [], "a resumed session rewrote its instances"

                await assert_stays(
                    unchanged, duration=max(1.5, crashed + grace + 1.5 - loop.time())
                )
                await passing(b, 6)


async def test_node_list_and_wait_for_revision_cover_every_replica(store: MemoryStore) -> None:
    """A sidecar's live state is known to the replica holding its stream: asked
    through any replica, ListNodes and WaitForRevision include the others'."""

    def refuse(update: EndpointUpdate) -> None:
        if any(s.service.name == "orders" and s.instances for s in update.services):
            raise ValueError("cannot use this")

    async with replica(store, rebalance_batch=0) as a, replica(store, rebalance_batch=0) as b:
        nodes = [
            sidecar("on-a-1", [a.address], subscriptions=("orders",)),
            sidecar("on-a-2", [a.address], subscriptions=("orders",)),
            sidecar("on-b-1", [b.address], subscriptions=("orders",)),
            sidecar("on-b-2", [b.address], subscriptions=("orders",), on_update=refuse),
        ]
        async with sidecars(nodes), AsyncClient(a.address) as client:
            assert a.spreader is not None and b.spreader is not None
            await assert_eventually(lambda: check(all(n.connected for n in nodes)), timeout=10)
            await assert_eventually(lambda: check(list(a.spreader.peers) == [b.replica]))
            registered = await client.register("orders", "10.0.0.1", 80, id="o1")
            wait = await client.wait_for_revision(registered.mod_revision, timeout=2)
            assert wait.affected == 4
            assert not wait.applied and [n.id for n in wait.pending] == ["on-b-2"]

            listed = {n.id: n for n in await client.list_nodes()}
            assert {n: listed[n].replica for n in listed} == {
                "on-a-1": a.replica,
                "on-a-2": a.replica,
                "on-b-1": b.replica,
                "on-b-2": b.replica,
            }
            assert listed["on-b-1"].state is NodeState.SYNCED
            assert listed["on-b-2"].state is NodeState.STALE
            assert "cannot use this" in listed["on-b-2"].last_error


@pytest.mark.parametrize("how", ["stop", "abort"])
async def test_a_watch_moves_to_another_replica_without_losing_or_repeating_events(
    store: MemoryStore, how: str
) -> None:
    async with replica(store, rebalance_batch=0) as a, replica(store, rebalance_batch=0) as b:
        written: list[tuple[str, int]] = []
        seen: list[WatchEvent] = []
        total = 150

        async with (
            AsyncClient([a.address, b.address]) as watcher,
            AsyncClient(b.address) as writer,
        ):
            await writer.register("orders", "10.0.0.1", 1, id="before")

            async def watch() -> None:
                async for event in watcher.watch("orders", progress_interval=0.2):
                    seen.append(event)

            watching = asyncio.create_task(watch())
            try:
                await assert_eventually(
                    lambda: check(any(e.type is WatchEventType.SNAPSHOT_END for e in seen))
                )
                for i in range(total):
                    if i == total // 3:
                        await (a.stop(grace=0) if how == "stop" else a.abort())
                    if i % 10 == 9:
                        done = await writer.deregister("orders", f"o{i - 1}")
                        written.append((f"-o{i - 1}", done.revision))
                    else:
                        inst = await writer.register("orders", "10.0.0.1", 1000 + i, id=f"o{i}")
                        written.append((f"o{i}", inst.mod_revision))
                    await asyncio.sleep(0.005)
                last = written[-1][1]
                await assert_eventually(
                    lambda: check(bool(seen) and seen[-1].revision >= last), timeout=15
                )
            finally:
                watching.cancel()
                await asyncio.wait({watching})

        kinds = [e.type for e in seen]
        assert kinds[:3] == [
            WatchEventType.RESYNC,
            WatchEventType.PUT,
            WatchEventType.SNAPSHOT_END,
        ], kinds[:5]
        assert kinds.count(WatchEventType.RESYNC) == 1, "the resume fell back to a snapshot"
        deltas = [
            (("-" if e.type is WatchEventType.DELETE else "") + _id(e), e.revision)
            for e in seen[3:]
            if e.type in (WatchEventType.PUT, WatchEventType.DELETE)
        ]
        assert deltas == written


def _id(event: WatchEvent) -> str:
    assert event.instance is not None
    return event.instance.id
