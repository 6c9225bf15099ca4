"""High availability with real processes: a three-member etcd cluster, several
`eco controlplane` replicas over it, `eco sidecar`s and SDK clients given
every replica's address.

What is checked: a write through one replica reaches watchers on all of
them; the elected leader, killed under write load, loses and repeats no event
for the watchers that were on it, the sidecars that were on it move elsewhere
and resume their sessions without their instances turning critical or being
rewritten, and another replica takes the lead; an etcd member dying (a
follower, then the leader) does not stop writes; a full stop and start keeps
the state and the history; a watcher that was away across a compaction
resumes with deltas where a replica still holds them, and gets RESYNC and
the right state where none does; a replica whose etcd goes away says
NOT_SERVING, and SERVING again once etcd is back; SDK clients leave a
replica that hangs without closing its connections.

Everything blocking (process starts, waits, etcdctl) runs in threads, so the
event loop that runs the watchers never stalls.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import sdk
from sdk import HealthStatus, WatchEventType
from tests.harness.controlplane import ControlPlaneProcess
from tests.harness.etcd_cluster import EtcdCluster
from tests.harness.sidecar import SidecarProcess
from tests.util import assert_eventually

pytestmark = pytest.mark.e2e

# A sidecar session outlives its replica for `grace`: long enough for a
# reconnect on a busy machine, short enough that a lost session would show.
SIDECAR_TIMING = """\
sync_interval: 2s
grace: 3s
deregister_critical_after: 20s
"""

# The elected leader's lease: a dead leader is replaced within this.
LEADER_TTL = 3

Event = tuple[int, str, str]  # (revision, instance id, PUT or DELETE)


class HA:
    """The etcd cluster, the replicas and the sidecars of one test."""

    def __init__(self, tmp_path: Path, replicas: int) -> None:
        self.tmp_path = tmp_path
        self.etcd = EtcdCluster(tmp_path / "logs")
        self.replicas = [
            ControlPlaneProcess(
                self.etcd.store_url(),
                tmp_path / "logs" / f"replica-{i + 1}.log",
                ["--replica-id", f"replica-{i + 1}", "--leader-ttl", str(LEADER_TTL)],
                # Each its own working directory: what a replica keeps locally
                # (the embedded bus's .eco/bus) must not be shared.
                cwd=self._workdir(tmp_path / f"replica-{i + 1}"),
            )
            for i in range(replicas)
        ]
        self.sidecars: list[SidecarProcess] = []

    @staticmethod
    def _workdir(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def addresses(self) -> list[str]:
        return [r.address for r in self.replicas]

    async def start(self) -> None:
        await self.start_etcd()
        await self.start_replicas()

    async def start_etcd(self) -> None:
        # Launched from this thread (see EtcdCluster), waited for in another.
        self.etcd.launch_all()
        await asyncio.to_thread(self.etcd.wait_leader)

    async def start_replicas(self) -> None:
        await asyncio.gather(*(asyncio.to_thread(r.start, 30.0) for r in self.replicas))

    async def stop_replicas(self) -> None:
        await asyncio.gather(*(asyncio.to_thread(r.stop) for r in self.replicas))

    async def kill(self, replica: ControlPlaneProcess) -> None:
        await asyncio.to_thread(replica.kill, signal.SIGKILL)

    async def sidecar(
        self, name: str, port: int, addresses: Sequence[str] | None = None
    ) -> SidecarProcess:
        """A sidecar registering service "web" on ``port`` with a TCP check."""
        body = (
            "services:\n"
            "  - name: web\n"
            "    address: 127.0.0.1\n"
            f"    port: {port}\n"
            f'    checks: [{{tcp: "127.0.0.1:{port}", interval: 200ms}}]\n'
        )
        side = SidecarProcess(
            self.tmp_path, name, body, list(addresses or self.addresses), timing=SIDECAR_TIMING
        )
        self.sidecars.append(side)
        await side.start(timeout=30)
        return side

    async def close(self) -> None:
        for side in self.sidecars:
            await side.stop()
        await self.stop_replicas()
        await asyncio.to_thread(self.etcd.close)

    async def leaders(self) -> list[int]:
        """Which running replicas say they are the elected leader (``/healthz``)."""
        found = []
        async with aiohttp.ClientSession() as http:
            for i, replica in enumerate(self.replicas):
                if replica.proc is None or replica.proc.poll() is not None:
                    continue
                url = f"http://127.0.0.1:{replica.admin_port}/healthz"
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(url) as answer:
                        if answer.headers.get("X-Eco-Leader") == "1":
                            found.append(i)
        return found


async def _ha(tmp_path: Path, replicas: int) -> AsyncIterator[HA]:
    ha = HA(tmp_path, replicas)
    try:
        await ha.start()
        yield ha
    finally:
        await ha.close()


@pytest.fixture
async def ha3(tmp_path: Path) -> AsyncIterator[HA]:
    async for ha in _ha(tmp_path, 3):
        yield ha


@pytest.fixture
async def ha2(tmp_path: Path) -> AsyncIterator[HA]:
    async for ha in _ha(tmp_path, 2):
        yield ha


@pytest.fixture
async def backend() -> AsyncIterator[int]:
    """A TCP port that accepts connections: what the sidecars' checks probe."""

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


class Recorder:
    """One SDK watch of a service, recording every event it yields."""

    def __init__(
        self, servers: Sequence[str], service: str = "load", since_revision: int = 0
    ) -> None:
        self.client = sdk.AsyncClient(list(servers), timeout=5)
        self.service = service
        self.events: list[sdk.WatchEvent] = []
        self._task = asyncio.create_task(self._follow(since_revision), name=f"watch-{service}")

    async def _follow(self, since_revision: int) -> None:
        async for event in self.client.watch(
            self.service, since_revision=since_revision, progress_interval=0.5
        ):
            self.events.append(event)

    @property
    def address(self) -> str:
        return self.client._transport.current_address

    def deltas(self) -> list[Event]:
        """PUTs and DELETEs outside snapshots, in the order received."""
        out: list[Event] = []
        in_snapshot = False
        for e in self.events:
            if e.type is WatchEventType.RESYNC:
                in_snapshot = True
            elif e.type is WatchEventType.SNAPSHOT_END:
                in_snapshot = False
            elif e.type in (WatchEventType.PUT, WatchEventType.DELETE) and not in_snapshot:
                assert e.instance is not None
                out.append((e.revision, e.instance.id, e.type.value))
        return out

    def state(self) -> dict[str, int]:
        """What the watcher holds: instance id → mod revision, applying RESYNC."""
        held: dict[str, int] = {}
        for e in self.events:
            if e.type is WatchEventType.RESYNC:
                held.clear()
            elif e.type is WatchEventType.PUT:
                assert e.instance is not None
                held[e.instance.id] = e.instance.mod_revision
            elif e.type is WatchEventType.DELETE:
                assert e.instance is not None
                held.pop(e.instance.id, None)
        return held

    def count(self, kind: WatchEventType) -> int:
        return sum(1 for e in self.events if e.type is kind)

    @property
    def revision(self) -> int:
        """The last revision this watcher is known to be complete up to."""
        return max((e.revision for e in self.events), default=0)

    async def ready(self, timeout: float = 15) -> None:
        def snapshot_done() -> None:
            assert self.count(WatchEventType.SNAPSHOT_END) >= 1

        await assert_eventually(snapshot_done, timeout=timeout)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.client.close()


class Writer:
    """Writers registering and deregistering persistent "load" instances
    continuously, recording what each acknowledged write did."""

    def __init__(self, servers_per_client: Sequence[Sequence[str]], tasks_per_client: int = 2):
        self.clients = [sdk.AsyncClient(list(s), timeout=10) for s in servers_per_client]
        self.acked: list[Event] = []
        self.errors: list[str] = []
        self.ack_times: list[float] = []
        self._numbers = itertools.count()
        self._stop = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._run(client, k), name=f"writer-{i}-{k}")
            for i, client in enumerate(self.clients)
            for k in range(tasks_per_client)
        ]

    async def _run(self, client: sdk.AsyncClient, k: int) -> None:
        mine: list[str] = []
        while not self._stop.is_set():
            n = next(self._numbers)
            try:
                if n % 4 == 3 and mine:
                    victim = mine.pop(0)
                    done = await client.deregister("load", victim)
                    if done.deleted:
                        self._ack((done.revision, victim, "DELETE"))
                    else:
                        # A retry whose first attempt removed it: the removal's
                        # revision is unknown, so the test cannot check its event.
                        self.errors.append(f"deregister {victim}: removed by a lost attempt")
                else:
                    inst = await client.register("load", "10.0.0.1", 1000 + n % 50000, id=f"w{n}")
                    mine.append(inst.id)
                    self._ack((inst.mod_revision, inst.id, "PUT"))
            except sdk.EcoError as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.005)

    def _ack(self, event: Event) -> None:
        self.acked.append(event)
        self.ack_times.append(time.monotonic())

    def expected(self) -> list[Event]:
        return sorted(self.acked)

    def acked_since(self, moment: float) -> int:
        return sum(1 for t in self.ack_times if t > moment)

    def max_gap(self, after: float) -> float:
        """The longest time without an acknowledged write after ``after``."""
        times = [after, *sorted(t for t in self.ack_times if t > after)]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for client in self.clients:
            await client.close()


async def health_of(address: str) -> int | None:
    """The replica's grpc.health.v1 status ("" service), None if unreachable."""
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.aio.AioRpcError:
            return None
        return int(answer.status)


async def web_health(address: str) -> dict[str, HealthStatus]:
    async with sdk.AsyncClient(address, timeout=5) as client:
        try:
            detail = await client.get_service("web")
        except sdk.NotFoundError:
            return {}
    return {i.id: i.health for i in detail.instances}


def _caught_up(recorders: Sequence[Recorder], revision: int) -> None:
    for r in recorders:
        assert r.revision >= revision, f"watcher on {r.address} at {r.revision} < {revision}"


# -- a. one write, every replica's watchers --------------------------------------------


async def test_a_write_through_one_replica_reaches_watchers_on_every_replica(ha3: HA) -> None:
    recorders = [Recorder([address]) for address in ha3.addresses]
    try:
        for r in recorders:
            await r.ready()
        async with sdk.AsyncClient(ha3.addresses[0]) as client:
            inst = await client.register("load", "10.0.0.1", 80, id="one")
        expected = [(inst.mod_revision, "one", "PUT")]

        def everyone_saw_it() -> None:
            for r in recorders:
                assert r.deltas() == expected, r.address

        await assert_eventually(everyone_saw_it, timeout=10)
        # And the other replicas serve it on reads, too.
        for address in ha3.addresses[1:]:
            async with sdk.AsyncClient(address) as client:
                got = await client.get_service("load")
            assert [i.id for i in got.instances] == ["one"]
    finally:
        for r in recorders:
            await r.close()


# -- b. kill -9 a replica under load ---------------------------------------------------


@pytest.mark.timeout(120)
async def test_kill_9_of_the_leader_replica_under_load_loses_and_repeats_nothing(
    ha3: HA, backend: int
) -> None:
    # The victim is the elected leader, so its leader-only work must move too.
    async def one_leader() -> int:
        leaders = await ha3.leaders()
        assert len(leaders) == 1, leaders
        return leaders[0]

    victim = await assert_eventually(one_leader, timeout=20, interval=0.2)
    gone = ha3.addresses[victim]
    a, b = (address for address in ha3.addresses if address != gone)
    # Everything attached to the victim first (the first address), with the others to go to.
    sidecars = await asyncio.gather(
        ha3.sidecar("node-a", backend, [gone, a, b]), ha3.sidecar("node-b", backend, [gone, b, a])
    )
    watchers = [Recorder([gone, a, b]), Recorder([gone, b, a]), Recorder([gone, a, b])]
    control = Recorder([a])  # never moves: what a watcher that did not fail over sees
    writer: Writer | None = None
    bad_health: list[str] = []
    polling = True

    async def all_passing() -> dict[str, HealthStatus]:
        health = await web_health(a)
        assert len(health) == 2 and set(health.values()) == {HealthStatus.PASSING}, health
        return health

    async def poll_health() -> None:
        while polling:
            try:
                health = await web_health(a)
            except sdk.EcoError as exc:
                bad_health.append(f"read failed: {exc}")
            else:
                if len(health) != 2 or any(h is not HealthStatus.PASSING for h in health.values()):
                    bad_health.append(f"{time.monotonic():.2f}: {health}")
            await asyncio.sleep(0.1)

    poller: asyncio.Task[None] | None = None
    try:
        for w in [*watchers, control]:
            await w.ready()
        await assert_eventually(all_passing, timeout=20, interval=0.2)
        for side in sidecars:
            status = await side.status()
            assert status["connected"] and status["controlplane"]["address"] == gone, status
        before = {s.name: await s.status() for s in sidecars}
        async with sdk.AsyncClient(a) as client:
            web_before = {i.id: i.mod_revision for i in (await client.get_service("web")).instances}
        assert all(w.address == gone for w in watchers)
        poller = asyncio.create_task(poll_health(), name="health-poller")

        writer = Writer([[a, b], [b, a]])
        await assert_eventually(lambda: _at_least(writer.acked, 100), timeout=20)
        revision_at_kill = max(rev for rev, _, _ in writer.acked)
        killed_at = time.monotonic()
        await ha3.kill(ha3.replicas[victim])

        # The sidecars move to another replica and resume their sessions.
        async def moved() -> None:
            for side in sidecars:
                status = await side.status()
                assert status["connected"], status["message"]
                assert status["controlplane"]["address"] != gone

        await assert_eventually(moved, timeout=20, interval=0.1)
        moved_after = time.monotonic() - killed_at
        # Another replica takes the lead once the leader's lease (3 s) runs out.
        new_leader = await assert_eventually(one_leader, timeout=5 * LEADER_TTL, interval=0.1)
        led_after = time.monotonic() - killed_at
        assert new_leader != victim

        await assert_eventually(lambda: _at_least_since(writer, killed_at, 150), timeout=20)
        await writer.stop()
        expected = writer.expected()
        assert not writer.errors, writer.errors[:5]

        await assert_eventually(
            lambda: _caught_up([*watchers, control], expected[-1][0]), timeout=20, interval=0.1
        )
        assert control.deltas() == expected, "the watcher that stayed put missed events"
        for w in watchers:
            assert w.address != gone
            got = w.deltas()
            assert w.count(WatchEventType.RESYNC) == 1, (
                f"watcher resynced instead of resuming on {w.address}"
            )
            missing = sorted(set(expected) - set(got))
            extra = sorted(set(got) - set(expected))
            assert not missing and not extra, f"missing {missing[:5]}, unexpected {extra[:5]}"
            assert got == expected, "events out of order or repeated"

        polling = False
        await poller
        assert not bad_health, f"sidecar instances not PASSING during failover: {bad_health[:5]}"
        for side in sidecars:
            status = await side.status()
            assert (
                status["controlplane"]["session_id"]
                == before[side.name]["controlplane"]["session_id"]
            ), "the sidecar's session was not resumed on the new replica"
            assert status["controlplane"]["resumed"] is True
        async with sdk.AsyncClient([a, b]) as client:
            nodes = await client.list_nodes()
        assert sorted((n.id, n.connected) for n in nodes) == [("node-a", True), ("node-b", True)]
        assert not {n.replica for n in nodes} & {f"replica-{victim + 1}"}, nodes

        # A resumed session re-sends its instances (a full sync, now or at the
        # next interval): unchanged, they must not be written again — with
        # thousands of sidecars that would be a storm of events for every watcher.
        async def synced_since_the_move() -> None:
            for side in sidecars:
                last = (await side.status())["controlplane"]["last_sync"]
                assert last is not None and last["revision"] > revision_at_kill, last

        await assert_eventually(synced_since_the_move, timeout=15, interval=0.2)
        async with sdk.AsyncClient(a) as client:
            after = (await client.get_service("web")).instances
        web_after = {i.id: i.mod_revision for i in after}
        assert web_after == web_before, (
            "the sidecars' unchanged instances were rewritten after moving: "
            + "; ".join(f"{i.id}: {[(c.name, c.output) for c in i.checks]}" for i in after)
        )
        assert moved_after < 10
        assert led_after < 5 * LEADER_TTL
    finally:
        polling = False
        if poller is not None:
            await poller
        if writer is not None:
            await writer.stop()
        for w in [*watchers, control]:
            await w.close()


def _at_least(items: Sequence[object], n: int) -> None:
    assert len(items) >= n


def _at_least_since(writer: Writer, moment: float, n: int) -> None:
    assert writer.acked_since(moment) >= n


# -- c. an etcd member dies ------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_writes_continue_when_an_etcd_member_dies(ha2: HA) -> None:
    r1, r2 = ha2.addresses
    watcher = Recorder([r2, r1])
    writer: Writer | None = None
    try:
        await watcher.ready()
        writer = Writer([[r1, r2], [r2, r1]])
        await assert_eventually(lambda: _at_least(writer.acked, 50), timeout=20)
        # First the member the replicas talk to (the first one listed) while it
        # is a follower: they move to another member. Then the leader: an election.
        if await asyncio.to_thread(ha2.etcd.leader_index) == 0:
            await asyncio.to_thread(ha2.etcd.move_leader, 1)
        for victim in ("first", "leader"):
            index = 0 if victim == "first" else await asyncio.to_thread(ha2.etcd.leader_index)
            if victim == "first":
                assert await asyncio.to_thread(ha2.etcd.leader_index) != 0
            killed_at = time.monotonic()
            await asyncio.to_thread(ha2.etcd.kill, index)
            await assert_eventually(
                lambda at=killed_at: _at_least_since(writer, at, 100), timeout=30, interval=0.1
            )
            gap = writer.max_gap(killed_at)
            assert gap < 10, f"writes stalled {gap:.1f}s after the {victim} member died"
            ha2.etcd.start(index)
            await asyncio.to_thread(ha2.etcd.wait_leader)
        await writer.stop()
        expected = writer.expected()
        await assert_eventually(lambda: _caught_up([watcher], expected[-1][0]), timeout=20)
        # A write that was retried after its member died may appear twice
        # (it was applied, then applied again): every acknowledged one is there.
        got = watcher.deltas()
        assert not set(expected) - set(got)
        revisions = [rev for rev, _, _ in got]
        assert revisions == sorted(set(revisions)), "events out of order or repeated"
        for r in ha2.replicas:
            assert await health_of(r.address) == health_pb2.HealthCheckResponse.SERVING
    finally:
        if writer is not None:
            await writer.stop()
        await watcher.close()


# -- d. stop everything, start it again ------------------------------------------------


@pytest.mark.timeout(90)
async def test_stop_everything_and_start_again_keeps_the_state(ha2: HA, backend: int) -> None:
    r1, r2 = ha2.addresses
    side = await ha2.sidecar("node-a", backend)
    async with sdk.AsyncClient([r1, r2]) as client:
        for i in range(20):
            await client.register("load", "10.0.0.1", 2000 + i, id=f"p{i}")
        await client.deregister("load", "p0")

        async def web_passing() -> None:
            assert list((await web_health(r1)).values()) == [HealthStatus.PASSING]

        await assert_eventually(web_passing, timeout=20, interval=0.2)
        before = await client.get_service("load")
    watcher = Recorder([r2, r1])
    await watcher.ready()
    resume_from = watcher.revision
    await watcher.close()

    await side.stop()
    await ha2.stop_replicas()
    await asyncio.to_thread(ha2.etcd.stop_all)
    await ha2.start_etcd()
    await ha2.start_replicas()
    await side.start(timeout=30)

    async with sdk.AsyncClient([r2, r1]) as client:
        after = await client.get_service("load")
        assert after.instances == before.instances
        assert after.revision >= before.revision
        await assert_eventually(web_passing, timeout=20, interval=0.2)
        nodes = await client.list_nodes()
        assert [(n.id, n.connected) for n in nodes] == [("node-a", True)]
        inst = await client.register("load", "10.0.0.1", 3000, id="after-restart")
    # History survived too: a watcher resumes from before the stop with deltas only.
    resumed = Recorder([r1, r2], since_revision=resume_from)
    try:

        def sees_new_write() -> None:
            assert (inst.mod_revision, "after-restart", "PUT") in resumed.deltas()

        await assert_eventually(sees_new_write, timeout=15)
        assert resumed.count(WatchEventType.RESYNC) == 0
    finally:
        await resumed.close()


# -- e. compaction while a watcher is away ---------------------------------------------


@pytest.mark.timeout(90)
async def test_a_watcher_away_across_a_compaction_gets_resync_and_the_right_state(
    ha2: HA,
) -> None:
    r1, r2 = ha2.addresses
    async with sdk.AsyncClient([r1, r2]) as client:
        for i in range(10):
            await client.register("load", "10.0.0.1", 2000 + i, id=f"c{i}")
        watcher = Recorder([r1, r2])
        await watcher.ready()
        away_at = watcher.revision
        await watcher.close()
        assert set(watcher.state()) == {f"c{i}" for i in range(10)}

        # While it is away: deletions of what it holds, updates, new instances.
        for i in range(5):
            await client.deregister("load", f"c{i}")
        for i in range(5, 8):
            await client.register("load", "10.0.0.2", 4000 + i, id=f"c{i}")
        for i in range(10, 15):
            await client.register("load", "10.0.0.1", 2000 + i, id=f"c{i}")
        truth = {i.id: i.mod_revision for i in (await client.get_service("load")).instances}
    revision = await asyncio.to_thread(ha2.etcd.revision)
    await asyncio.to_thread(ha2.etcd.compact, revision)

    # A replica that still holds those events in memory resumes the watcher with deltas.
    back = Recorder([r1], since_revision=away_at)
    try:
        await assert_eventually(lambda: _holds(back, truth, base=watcher.state()), timeout=15)
        assert back.count(WatchEventType.RESYNC) == 0
    finally:
        await back.close()

    # Replicas started after the compaction cannot: RESYNC, then the current state.
    await ha2.stop_replicas()
    await ha2.start_replicas()
    back = Recorder([r2, r1], since_revision=away_at)
    try:
        await assert_eventually(lambda: _holds(back, truth, base=watcher.state()), timeout=15)
        assert back.count(WatchEventType.RESYNC) == 1
        assert back.events[0].type is WatchEventType.RESYNC
    finally:
        await back.close()


def _holds(recorder: Recorder, truth: dict[str, int], base: dict[str, int]) -> None:
    """The watcher's state, continuing from ``base``, equals ``truth``."""
    held = dict(base)
    for e in recorder.events:
        if e.type is WatchEventType.RESYNC:
            held.clear()
        elif e.type is WatchEventType.PUT and e.instance is not None:
            held[e.instance.id] = e.instance.mod_revision
        elif e.type is WatchEventType.DELETE and e.instance is not None:
            held.pop(e.instance.id, None)
    assert held == truth
    if recorder.count(WatchEventType.RESYNC):
        assert recorder.count(WatchEventType.SNAPSHOT_END), "snapshot not finished"


# -- f. etcd goes away while the replicas run ------------------------------------------


@pytest.mark.timeout(90)
async def test_replicas_turn_not_serving_without_etcd_and_recover(ha2: HA) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    watcher = Recorder(ha2.addresses)
    try:
        await watcher.ready()
        async with sdk.AsyncClient(ha2.addresses) as client:
            await client.register("load", "10.0.0.1", 80, id="before")
        await assert_eventually(lambda: _caught_up([watcher], 2), timeout=10)

        await asyncio.to_thread(ha2.etcd.stop_all)

        async def all_not_serving() -> None:
            for r in ha2.replicas:
                assert await health_of(r.address) == not_serving, r.address

        await assert_eventually(all_not_serving, timeout=15, interval=0.2)
        for r in ha2.replicas:
            assert r.proc is not None and r.proc.poll() is None, "a replica exited"

        await ha2.start_etcd()

        async def all_serving() -> None:
            for r in ha2.replicas:
                assert await health_of(r.address) == serving, r.address

        await assert_eventually(all_serving, timeout=30, interval=0.2)
        async with sdk.AsyncClient(ha2.addresses[::-1]) as client:
            inst = await client.register("load", "10.0.0.1", 81, id="after")

        def resumed() -> None:
            assert (inst.mod_revision, "after", "PUT") in watcher.deltas()

        await assert_eventually(resumed, timeout=20)
        assert [i for _, i, _ in watcher.deltas()] == ["before", "after"]
        assert watcher.count(WatchEventType.RESYNC) == 1
    finally:
        await watcher.close()


# -- a replica that hangs instead of dying ---------------------------------------------


async def test_sdk_clients_leave_a_replica_that_stops_answering(ha2: HA) -> None:
    # SIGSTOP: the connections stay open and the kernel keeps acknowledging
    # them, as with a hung process or a network partition; no error ever comes.
    r1, r2 = ha2.addresses
    frozen = ha2.replicas[0].proc
    assert frozen is not None
    watcher = Recorder([r1, r2])
    try:
        await watcher.ready()
        frozen.send_signal(signal.SIGSTOP)
        async with sdk.AsyncClient(r2) as writer:
            inst = await writer.register("load", "10.0.0.1", 80, id="while-frozen")

        def saw_it() -> None:
            assert (inst.mod_revision, "while-frozen", "PUT") in watcher.deltas()

        # Silence for 3 progress intervals + 2 s, then the next address.
        await assert_eventually(saw_it, timeout=15, interval=0.1)
        assert watcher.address == r2
        assert watcher.count(WatchEventType.RESYNC) == 1, "resumed with a snapshot"

        async with sdk.AsyncClient([r1, r2], timeout=1) as client:
            with contextlib.suppress(sdk.DeadlineExceededError):
                await client.get_service("load")  # may time out once on the frozen one
            got = await client.get_service("load")  # then every call goes elsewhere
            assert [i.id for i in got.instances] == ["while-frozen"]
            assert client._transport.current_address == r2
    finally:
        frozen.send_signal(signal.SIGCONT)
        await watcher.close()
