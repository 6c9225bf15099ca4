"""The view and its fan-out, over the memory store, without sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from ecosystem.v1 import registry_pb2 as pb

from controlplane.registry import Registry
from controlplane.store import MemoryStore
from controlplane.view import InstanceView, Selector, ViewConfig

PUT, DELETE, RESYNC, END = (
    pb.WATCH_EVENT_TYPE_PUT,
    pb.WATCH_EVENT_TYPE_DELETE,
    pb.WATCH_EVENT_TYPE_RESYNC,
    pb.WATCH_EVENT_TYPE_SNAPSHOT_END,
)


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    async with MemoryStore() as s:
        yield s


async def make_view(store: MemoryStore, **config: int) -> InstanceView:
    view = InstanceView(store, ViewConfig(store_progress_interval=0.05, **config))  # type: ignore[arg-type]
    await view.start()
    return view


async def register(registry: Registry, id: str, service: str = "web") -> int:
    reg = await registry.register(
        pb.RegisterInstanceRequest(
            instance=pb.Instance(id=id, service=service, address="10.0.0.1", port=80)
        )
    )
    return reg.revision


async def next_response(stream: AsyncIterator[bytes]) -> pb.WatchResponse:
    return pb.WatchResponse.FromString(await asyncio.wait_for(stream.__anext__(), 2))


async def test_changes_arriving_together_are_one_message(store: MemoryStore) -> None:
    view = await make_view(store)
    registry = Registry(store)
    sub = view.subscribe(Selector(service="web"))
    stream = sub.responses(progress_interval=5)
    assert [e.type for e in (await next_response(stream)).events] == [RESYNC, END]
    revisions = [await register(registry, f"i{n}") for n in range(10)]
    await view.wait_for(revisions[-1])
    batch = await next_response(stream)
    assert [e.revision for e in batch.events] == revisions
    await stream.aclose()  # type: ignore[attr-defined]
    assert view.subscriber_count == 0
    await view.close()


async def test_slow_watcher_gets_resync_instead_of_backlog(store: MemoryStore) -> None:
    view = await make_view(store, max_pending=16)
    registry = Registry(store)
    sub = view.subscribe(Selector())
    stream = sub.responses(progress_interval=5)
    await next_response(stream)  # initial snapshot
    for n in range(40):  # more than the watcher may hold
        await register(registry, f"i{n}")
    await view.wait_for(store.revision)
    assert sub.resync and not sub.pending, "overflowing watcher kept a backlog"
    events = []
    while not events or events[-1].type != END:
        events.extend((await next_response(stream)).events)
    assert events[0].type == RESYNC
    assert sorted(e.instance.id for e in events if e.type == PUT) == sorted(
        f"i{n}" for n in range(40)
    )
    assert events[-1].revision == store.revision
    await stream.aclose()  # type: ignore[attr-defined]
    await view.close()


async def test_other_watchers_are_unaffected_by_a_slow_one(store: MemoryStore) -> None:
    view = await make_view(store, max_pending=8)
    registry = Registry(store)
    slow = view.subscribe(Selector(service="web"))
    fast = view.subscribe(Selector(service="web"), since_revision=store.revision)
    fast_stream = fast.responses(progress_interval=5)
    for n in range(5):
        await register(registry, f"i{n}")
        await view.wait_for(store.revision)
        batch = await next_response(fast_stream)
        assert [e.instance.id for e in batch.events] == [f"i{n}"]
    assert slow.resync  # never read: it is owed a snapshot, not a backlog
    await fast_stream.aclose()  # type: ignore[attr-defined]
    view.unsubscribe(slow)
    await view.close()


async def test_view_restarted_on_old_history_serves_resumes(store: MemoryStore) -> None:
    registry = Registry(store)
    seen = await register(registry, "a")
    missed = [await register(registry, f"m{n}") for n in range(3)]
    view = await make_view(store)  # a fresh process over an existing store
    sub = view.subscribe(Selector(), since_revision=seen)
    stream = sub.responses(progress_interval=5)
    batch = await next_response(stream)
    assert [e.revision for e in batch.events] == missed
    await stream.aclose()  # type: ignore[attr-defined]
    await view.close()


async def test_close_ends_subscribers(store: MemoryStore) -> None:
    from serving.errors import UnavailableError

    view = await make_view(store)
    stream = view.subscribe(Selector()).responses(progress_interval=5)
    await next_response(stream)
    await view.close()
    with pytest.raises(UnavailableError):
        await next_response(stream)


async def test_instances_are_indexed_by_node_as_they_move(store: MemoryStore) -> None:
    view = await make_view(store)

    async def put(id: str, node: str) -> None:
        await Registry(store).register(
            pb.RegisterInstanceRequest(
                instance=pb.Instance(id=id, service="web", node=node, address="10.0.0.1", port=80)
            )
        )
        await view.wait_for(store.revision)

    await put("a", "n1")
    await put("b", "n1")
    await put("c", "")
    assert sorted(i.id for i in view.node_instances("n1").values()) == ["a", "b"]
    await put("b", "n2")  # moved to another node
    assert sorted(i.id for i in view.node_instances("n1").values()) == ["a"]
    assert sorted(i.id for i in view.node_instances("n2").values()) == ["b"]
    await Registry(store).deregister(pb.DeregisterInstanceRequest(service="web", id="a"))
    await view.wait_for(store.revision)
    assert view.node_instances("n1") == {}
    assert view.node_instances("") == {}
    await view.close()


async def test_a_backlog_is_cut_at_revision_boundaries(store: MemoryStore) -> None:
    from controlplane.view import Watcher

    view = await make_view(store)
    try:
        sub = Watcher(view, Selector(), max_pending=100, max_pending_bytes=10_000)
        sub.offer([b"a" * 300, b"b" * 300])  # revision 1: 600 bytes
        sub.offer([b"c" * 300])  # revision 2
        sub.offer([b"d" * 300] * 5)  # revision 3: 1500 bytes, more than a response
        sub.offer([b"e" * 10])  # revision 4
        frames, continues = sub.take(1000)
        assert frames == [b"a" * 300, b"b" * 300, b"c" * 300] and not continues
        frames, continues = sub.take(1000)
        assert len(frames) == 3 and continues  # inside revision 3
        frames, continues = sub.take(1000)
        assert frames == [b"d" * 300] * 2 + [b"e" * 10] and not continues
        assert sub.pending == [] and sub.pending_bytes == 0
        sub.offer([b"f" * 20_000])  # past max_pending_bytes: a RESYNC instead
        assert sub.resync and sub.pending == []
    finally:
        await view.close()
