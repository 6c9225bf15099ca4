"""Watch over real gRPC: snapshot, deltas, resume, progress, fan-out, drain."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from ecosystem.v1 import registry_pb2 as pb
from ecosystem.v1 import registry_pb2_grpc as pb_grpc

from controlplane import ControlPlane, ControlPlaneConfig

PUT, DELETE = pb.WATCH_EVENT_TYPE_PUT, pb.WATCH_EVENT_TYPE_DELETE
RESYNC, END, PROGRESS = (
    pb.WATCH_EVENT_TYPE_RESYNC,
    pb.WATCH_EVENT_TYPE_SNAPSHOT_END,
    pb.WATCH_EVENT_TYPE_PROGRESS,
)


def inst(id: str, service: str = "web", **kw: object) -> pb.Instance:
    return pb.Instance(id=id, service=service, address="127.0.0.1", port=8000, **kw)  # type: ignore[arg-type]


async def put(stub: pb_grpc.RegistryServiceStub, i: pb.Instance) -> int:
    resp = await stub.RegisterInstance(pb.RegisterInstanceRequest(instance=i))
    return resp.revision


class Events:
    """Reads a watch stream event by event."""

    def __init__(self, call: grpc.aio.UnaryStreamCall) -> None:  # type: ignore[type-arg]
        self._call = call
        self._buffer: list[pb.WatchEvent] = []
        self.messages = 0

    async def next(self, timeout: float = 5.0) -> pb.WatchEvent:
        while not self._buffer:
            resp = await asyncio.wait_for(self._call.read(), timeout)
            assert resp is not grpc.aio.EOF, "watch stream ended"
            self.messages += 1
            self._buffer.extend(resp.events)
        return self._buffer.pop(0)

    async def take(self, n: int) -> list[pb.WatchEvent]:
        return [await self.next() for _ in range(n)]

    async def skip_progress(self) -> pb.WatchEvent:
        while (event := await self.next()).type == PROGRESS:
            pass
        return event


def watch(stub: pb_grpc.RegistryServiceStub, **kw: object) -> grpc.aio.UnaryStreamCall:  # type: ignore[type-arg]
    return stub.Watch(pb.WatchRequest(**kw))  # type: ignore[arg-type]


async def test_snapshot_then_ordered_deltas(stub: pb_grpc.RegistryServiceStub) -> None:
    await put(stub, inst("a"))
    rev_b = await put(stub, inst("b"))
    call = watch(stub, selector=pb.InstanceSelector(service="web"))
    events = Events(call)
    first = await events.take(4)
    assert [e.type for e in first] == [RESYNC, PUT, PUT, END]
    assert {e.instance.id for e in first[1:3]} == {"a", "b"}
    assert first[-1].revision >= rev_b

    rev_c = await put(stub, inst("c"))
    await put(stub, inst("x", service="other"))  # not selected
    dereg = await stub.DeregisterInstance(pb.DeregisterInstanceRequest(service="web", id="a"))
    c, gone = await events.take(2)
    assert (c.type, c.instance.id, c.revision) == (PUT, "c", rev_c)
    assert (gone.type, gone.instance.id, gone.revision) == (DELETE, "a", dereg.revision)
    call.cancel()


async def test_resume_from_revision_replays_exactly_what_was_missed(
    stub: pb_grpc.RegistryServiceStub,
) -> None:
    seen = await put(stub, inst("a"))
    missed = [await put(stub, inst(f"m{i}")) for i in range(5)]
    call = watch(stub, since_revision=seen)
    events = Events(call)
    replay = await events.take(5)
    assert [e.revision for e in replay] == missed
    assert all(e.type == PUT for e in replay)
    live = await put(stub, inst("live"))
    assert (await events.skip_progress()).revision == live
    call.cancel()


async def test_progress_while_idle_carries_a_resumable_revision(
    stub: pb_grpc.RegistryServiceStub,
) -> None:
    rev = await put(stub, inst("a"))
    call = watch(stub, since_revision=rev, progress_interval_ms=100)
    event = await Events(call).next(timeout=2)
    assert event.type == PROGRESS and event.revision >= rev
    call.cancel()


async def test_health_filter_turns_a_failing_instance_into_delete(
    stub: pb_grpc.RegistryServiceStub,
) -> None:
    await put(stub, inst("a"))
    call = watch(stub, selector=pb.InstanceSelector(health=[pb.HEALTH_STATUS_PASSING]))
    events = Events(call)
    assert [e.type for e in await events.take(3)] == [RESYNC, PUT, END]
    await put(stub, inst("a", health=pb.HEALTH_STATUS_CRITICAL))
    event = await events.skip_progress()
    assert (event.type, event.instance.id) == (DELETE, "a")
    call.cancel()


async def test_future_revision_gets_a_resync(stub: pb_grpc.RegistryServiceStub) -> None:
    await put(stub, inst("a"))
    call = watch(stub, since_revision=10_000_000)
    assert [e.type for e in await Events(call).take(3)] == [RESYNC, PUT, END]
    call.cancel()


async def test_bad_watch_request(stub: pb_grpc.RegistryServiceStub) -> None:
    call = watch(stub, since_revision=-1, progress_interval_ms=5)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_thousand_watchers_all_see_a_change(
    plane: ControlPlane, stub: pb_grpc.RegistryServiceStub
) -> None:
    # The control plane's own followers of the view (the xDS cache) count too.
    before = plane.view.subscriber_count
    calls = [watch(stub, selector=pb.InstanceSelector(service="web")) for _ in range(1000)]
    streams = [Events(c) for c in calls]
    # Each gets an (empty) snapshot first.
    for s in streams:
        assert [e.type for e in await s.take(2)] == [RESYNC, END]
    assert plane.view.subscriber_count == before + 1000
    rev = await put(stub, inst("a"))
    got = await asyncio.gather(*(s.skip_progress() for s in streams))
    assert all((e.type, e.revision, e.instance.id) == (PUT, rev, "a") for e in got)
    for c in calls:
        c.cancel()
    for _ in range(100):
        if plane.view.subscriber_count == before:
            break
        await asyncio.sleep(0.02)
    left = plane.view.subscriber_count - before
    assert left == 0, "cancelled watch streams left subscribers behind"


async def test_drain_ends_watches_and_refuses_calls() -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    config = ControlPlaneConfig(
        listen="127.0.0.1:0", admin_listen=None, store_url="memory://", grace=2, drain_delay=1
    )
    plane = ControlPlane(config)
    await plane.start()
    try:
        async with grpc.aio.insecure_channel(plane.address) as ch:
            stub = pb_grpc.RegistryServiceStub(ch)
            health = health_pb2_grpc.HealthStub(ch)
            await put(stub, inst("a"))
            call = watch(stub)
            events = Events(call)
            await events.take(3)
            hwatch = health.Watch(health_pb2.HealthCheckRequest(service=""))
            assert (await hwatch.read()).status == health_pb2.HealthCheckResponse.SERVING
            stopping = asyncio.create_task(plane.stop())
            assert (await hwatch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await put(stub, inst("b"))
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await events.next()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            await stopping
    finally:
        await plane.stop()


async def test_shutdown_leaves_no_task_or_thread_behind(tmp_path: object) -> None:
    import threading

    before_tasks = set(asyncio.all_tasks())
    before_threads = set(threading.enumerate())
    config = ControlPlaneConfig(
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        store_url=f"sqlite://{tmp_path}/cp.db",
        grace=0.5,
        drain_delay=0,
    )
    async with ControlPlane(config) as plane, grpc.aio.insecure_channel(plane.address) as ch:
        stub = pb_grpc.RegistryServiceStub(ch)
        await stub.RegisterInstance(
            pb.RegisterInstanceRequest(
                instance=inst("a", liveness=pb.LIVENESS_EPHEMERAL), lease_ttl_seconds=30
            )
        )
        calls = [watch(stub) for _ in range(20)]
        for call in calls:
            await Events(call).take(3)
    leftover = [t for t in asyncio.all_tasks() - before_tasks if not t.done()]
    leftover = [t for t in leftover if t is not asyncio.current_task()]
    assert not leftover, f"tasks left after shutdown: {leftover}"
    for _ in range(50):
        # grpc's own process-wide poller thread starts with the first channel; not ours.
        threads = [
            t
            for t in set(threading.enumerate()) - before_threads
            if t.is_alive() and "_poll_wrapper" not in t.name
        ]
        if not threads:
            break
        await asyncio.sleep(0.02)
    assert not threads, f"threads left after shutdown: {threads}"


async def test_resume_against_another_store_gets_a_snapshot(
    plane: ControlPlane, stub: pb_grpc.RegistryServiceStub
) -> None:
    seen = await put(stub, inst("a"))
    await put(stub, inst("b"))
    call = watch(stub, since_revision=seen, store_id="some-other-store")
    first = await call.read()
    assert [e.type for e in first.events] == [RESYNC, PUT, PUT, END]
    assert first.store_id == plane.store_id != ""
    call.cancel()
    # With its own store id, the same request resumes.
    call = watch(stub, since_revision=seen, store_id=plane.store_id)
    assert [(e.type, e.instance.id) for e in (await call.read()).events] == [(PUT, "b")]
    call.cancel()


async def test_watch_streams_are_capped_server_wide() -> None:
    """Hardening finding 9: there was no cap on registry watch streams."""
    from tests.util import assert_eventually

    config = ControlPlaneConfig(
        listen="127.0.0.1:0", admin_listen=None, store_url="memory://", max_watch_streams=2
    )
    async with ControlPlane(config) as cp, grpc.aio.insecure_channel(cp.address) as channel:
        stub = pb_grpc.RegistryServiceStub(channel)
        streams = [stub.Watch(pb.WatchRequest()) for _ in range(2)]
        for stream in streams:
            await stream.read()  # RESYNC … SNAPSHOT_END: the stream is being served
        third = stub.Watch(pb.WatchRequest())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await third.read()
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        streams[0].cancel()

        async def admitted() -> None:
            again = stub.Watch(pb.WatchRequest())
            try:
                await again.read()
            finally:
                again.cancel()

        await assert_eventually(admitted, timeout=5)
        streams[1].cancel()
