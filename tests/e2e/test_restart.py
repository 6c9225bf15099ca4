"""kill -9, restart, resume: what a control plane on SQLite promises across crashes."""

from __future__ import annotations

import asyncio
import signal
import time

import grpc
from ecosystem.v1 import registry_pb2 as pb
from ecosystem.v1 import registry_pb2_grpc as pb_grpc

import sdk
from sdk import WatchEventType
from tests.harness.controlplane import ControlPlaneProcess
from tests.util import assert_eventually


def instance(i: int, **kw: object) -> pb.Instance:
    return pb.Instance(id=f"i{i}", service="web", address="10.0.0.1", port=1000 + i, **kw)  # type: ignore[arg-type]


async def test_kill_9_keeps_every_acknowledged_instance_and_the_revision(
    sqlite_plane: ControlPlaneProcess,
) -> None:
    acked: dict[str, int] = {}

    async def writer(stub: pb_grpc.RegistryServiceStub, start: int) -> None:
        for i in range(start, start + 100_000, 16):
            try:
                resp = await stub.RegisterInstance(
                    pb.RegisterInstanceRequest(instance=instance(i)), timeout=5
                )
            except grpc.aio.AioRpcError:
                return  # the server died under us: this write was not acknowledged
            acked[resp.instance.id] = resp.revision

    async with grpc.aio.insecure_channel(sqlite_plane.address) as channel:
        stub = pb_grpc.RegistryServiceStub(channel)
        writers = [asyncio.create_task(writer(stub, n)) for n in range(16)]
        await assert_eventually(lambda: _at_least(acked, 500), timeout=30)
        sqlite_plane.kill(signal.SIGKILL)
        await asyncio.gather(*writers)
    last_acked = max(acked.values())

    sqlite_plane.start()
    async with sdk.AsyncClient(sqlite_plane.address) as client:
        stored = await client.list_instances(service="web")
    stored_ids = {i.id for i in stored.instances}
    missing = set(acked) - stored_ids
    assert not missing, f"{len(missing)} acknowledged instances lost, e.g. {sorted(missing)[:5]}"
    assert stored.revision >= last_acked, "the revision went backwards across kill -9"
    by_id = {i.id: i for i in stored.instances}
    assert all(by_id[id].mod_revision == rev for id, rev in acked.items())


def _at_least(acked: dict[str, int], n: int) -> None:
    assert len(acked) >= n


async def test_watcher_resumes_across_restarts_without_loss_or_duplicates(
    sqlite_plane: ControlPlaneProcess,
) -> None:
    seen: list[sdk.WatchEvent] = []
    total = 60

    async def follow() -> None:
        async with sdk.AsyncClient(sqlite_plane.address) as client:
            async for event in client.watch("web", progress_interval=0.2):
                seen.append(event)
                puts = [e for e in seen if e.type is WatchEventType.PUT]
                if len(puts) >= total:
                    return

    watcher = asyncio.create_task(follow())
    await assert_eventually(lambda: _has_snapshot_end(seen), timeout=10)
    async with sdk.AsyncClient(sqlite_plane.address, timeout=2) as client:
        for i in range(total):
            if i in (20, 40):
                sqlite_plane.kill(signal.SIGKILL if i == 20 else signal.SIGTERM)
                sqlite_plane.start()
            await client.register("web", "10.0.0.1", 1000 + i, id=f"i{i}")
    await asyncio.wait_for(watcher, 30)

    types = [e.type for e in seen]
    assert types.count(WatchEventType.RESYNC) == 1, f"watch resynced instead of resuming: {types}"
    puts = [e for e in seen if e.type is WatchEventType.PUT]
    assert [e.instance.id for e in puts if e.instance] == [f"i{i}" for i in range(total)]
    revisions = [e.revision for e in puts]
    assert revisions == sorted(set(revisions)), "events out of order or duplicated"


def _has_snapshot_end(seen: list[sdk.WatchEvent]) -> None:
    assert any(e.type is WatchEventType.SNAPSHOT_END for e in seen)


async def test_expired_lease_deletes_instance_and_watchers_see_it(
    sqlite_plane: ControlPlaneProcess,
) -> None:
    async with grpc.aio.insecure_channel(sqlite_plane.address) as channel:
        stub = pb_grpc.RegistryServiceStub(channel)
        watch = stub.Watch(pb.WatchRequest(selector=pb.InstanceSelector(service="web")))
        assert [e.type for e in (await watch.read()).events] == [
            pb.WATCH_EVENT_TYPE_RESYNC,
            pb.WATCH_EVENT_TYPE_SNAPSHOT_END,
        ]
        reg = await stub.RegisterInstance(
            pb.RegisterInstanceRequest(
                instance=instance(1, liveness=pb.LIVENESS_EPHEMERAL), lease_ttl_seconds=1
            )
        )
        # Nobody keeps the lease alive.
        events: list[pb.WatchEvent] = []
        while len(events) < 2:
            resp = await asyncio.wait_for(watch.read(), 5)
            events.extend(e for e in resp.events if e.type != pb.WATCH_EVENT_TYPE_PROGRESS)
        assert [(e.type, e.instance.id) for e in events] == [
            (pb.WATCH_EVENT_TYPE_PUT, "i1"),
            (pb.WATCH_EVENT_TYPE_DELETE, "i1"),
        ]
        assert events[1].revision > reg.revision
        watch.cancel()


async def test_lease_expiry_continues_after_a_restart(sqlite_plane: ControlPlaneProcess) -> None:
    async with sdk.AsyncClient(sqlite_plane.address) as client:
        await client.register("web", "10.0.0.1", 80, id="kept")
    async with grpc.aio.insecure_channel(sqlite_plane.address) as channel:
        stub = pb_grpc.RegistryServiceStub(channel)
        await stub.RegisterInstance(
            pb.RegisterInstanceRequest(
                instance=instance(2, liveness=pb.LIVENESS_EPHEMERAL), lease_ttl_seconds=2
            )
        )
    sqlite_plane.kill(signal.SIGKILL)
    sqlite_plane.start()  # the lease's 2 s run on from where they were

    async def only_persistent() -> None:
        async with sdk.AsyncClient(sqlite_plane.address) as client:
            got = await client.list_instances(service="web")
        assert [i.id for i in got.instances] == ["kept"]

    await assert_eventually(only_persistent, timeout=5)


def test_sigterm_exits_cleanly_and_a_second_signal_at_once(
    sqlite_plane: ControlPlaneProcess,
) -> None:
    started = time.monotonic()
    assert sqlite_plane.kill(signal.SIGTERM) == 0
    assert time.monotonic() - started < 5
    assert "Task was destroyed" not in sqlite_plane.log()
    assert "Traceback" not in sqlite_plane.log()

    # With a health watcher attached a drain waits for the grace period;
    # a second signal cuts it short.
    sqlite_plane.start()
    with grpc.insecure_channel(sqlite_plane.address) as channel:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        next(stream)
        assert sqlite_plane.proc is not None
        sqlite_plane.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        started = time.monotonic()
        code = sqlite_plane.kill(signal.SIGTERM)
        assert time.monotonic() - started < 1.0
        assert code != 0
        stream.cancel()
