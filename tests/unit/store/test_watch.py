"""Conformance: watches, progress, compaction and release."""

from __future__ import annotations

import asyncio

import pytest

from controlplane.store import (
    Compacted,
    DeleteOp,
    EventType,
    PutOp,
    Store,
    StoreClosed,
    WatchBatch,
)
from tests.util import assert_eventually

from .conftest import OpenStore, next_batch, next_events_batch, watching


def keys(batch: WatchBatch) -> list[str]:
    return [e.kv.key for e in batch.events]


async def test_watch_from_zero_sees_only_future_changes(store: Store) -> None:
    await store.put("/w/old", b"")
    async with watching(store, "/w/") as watch:
        rev = await store.put("/w/new", b"v")
        batch = await next_batch(watch)
    assert batch.revision == rev
    assert [(e.type, e.kv.key, e.kv.value) for e in batch.events] == [
        (EventType.PUT, "/w/new", b"v")
    ]


async def test_watch_from_an_old_revision_replays_then_goes_live(store: Store) -> None:
    start = await store.put("/w/a", b"1")
    await store.put("/w/b", b"1")
    await store.put("/w/a", b"2")
    await store.delete("/w/b")
    seen: list[tuple[int, str, EventType]] = []
    async with watching(store, "/w/", start_revision=start) as watch:
        for _ in range(4):
            batch = await next_batch(watch)
            seen += [(batch.revision, e.kv.key, e.type) for e in batch.events]
        await store.put("/w/c", b"1")
        await store.txn((), [PutOp("/w/d", b""), DeleteOp("/w/a")])
        for _ in range(2):
            batch = await next_batch(watch)
            seen += [(batch.revision, e.kv.key, e.type) for e in batch.events]
    put, delete = EventType.PUT, EventType.DELETE
    assert seen == [
        (2, "/w/a", put),
        (3, "/w/b", put),
        (4, "/w/a", put),
        (5, "/w/b", delete),
        (6, "/w/c", put),
        (7, "/w/d", put),
        (7, "/w/a", delete),
    ]


async def test_watch_events_carry_prev_kv(store: Store) -> None:
    async with watching(store, "/p") as watch:
        await store.put("/p", b"1")
        await store.put("/p", b"2")
        await store.delete("/p")
        first, second, third = [await next_batch(watch) for _ in range(3)]
    assert first.events[0].prev_kv is None
    prev = second.events[0].prev_kv
    assert prev is not None and prev.value == b"1"
    gone = third.events[0]
    assert gone.type is EventType.DELETE
    assert gone.kv.key == "/p" and gone.kv.value == b"" and gone.kv.mod_revision == third.revision
    assert gone.prev_kv is not None and gone.prev_kv.value == b"2"


async def test_watch_filters_by_prefix(store: Store) -> None:
    async with watching(store, "/svc/a/", progress_interval=60) as watch:
        await store.put("/svc/ab", b"")
        await store.put("/svc/b/1", b"")
        rev = await store.put("/svc/a/1", b"")
        await store.put("/other", b"")
        rev2 = await store.put("/svc/a/2", b"")
        batches = [await next_batch(watch), await next_batch(watch)]
    # Revisions without a matching event are skipped, not sent empty.
    assert [(b.revision, keys(b)) for b in batches] == [(rev, ["/svc/a/1"]), (rev2, ["/svc/a/2"])]


async def test_a_revision_is_one_batch_never_split(store: Store) -> None:
    ops = [PutOp(f"/batch/{i:03}", b"") for i in range(50)] + [PutOp("/elsewhere", b"")]
    async with watching(store, "/batch/") as watch:
        result = await store.txn((), ops)
        await store.put("/batch/after", b"")
        batch = await next_batch(watch)
        after = await next_batch(watch)
    assert batch.revision == result.revision
    assert keys(batch) == [f"/batch/{i:03}" for i in range(50)]
    assert keys(after) == ["/batch/after"]


async def test_progress_while_idle(store: Store) -> None:
    async with watching(store, "/quiet/", progress_interval=0.1) as watch:
        batch = await next_batch(watch, timeout=2)
        assert batch.is_progress and batch.events == ()
        assert batch.revision == store.revision
        # Changes elsewhere do not reset idleness; progress reports their revision.
        await store.put("/loud/1", b"")
        rev = await store.put("/loud/2", b"")

        async def progressed() -> None:
            batch = await next_batch(watch, timeout=2)
            assert batch.is_progress and batch.revision == rev

        await assert_eventually(progressed, timeout=3)  # type: ignore[arg-type]


async def test_watch_below_compaction_raises_compacted(store: Store) -> None:
    for i in range(6):
        await store.put(f"/c/{i}", b"")
    await store.compact(4)
    watch = store.watch("/c/", start_revision=3)
    with pytest.raises(Compacted) as info:
        await next_batch(watch)
    assert info.value.compact_revision == 4
    async with watching(store, "/c/", start_revision=4) as ok:
        batch = await next_batch(ok)
    assert batch.revision == 4 and keys(batch) == ["/c/2"]


async def test_automatic_compaction_at_history_limit(open_store: OpenStore) -> None:
    store = await open_store(history_limit=10)
    for i in range(30):
        await store.put(f"/h/{i}", b"")
    assert store.revision == 31
    assert store.compact_revision == store.revision - 10 + 1
    with pytest.raises(Compacted):
        await store.range("/h/", revision=store.compact_revision - 1)
    assert len((await store.range("/h/", revision=store.compact_revision)).kvs) == 21
    with pytest.raises(Compacted):
        await next_batch(store.watch("/h/", start_revision=store.compact_revision - 1))
    async with watching(store, "/h/", start_revision=store.compact_revision) as watch:
        batch = await next_batch(watch)
    assert batch.revision == store.compact_revision


async def test_slow_watcher_overtaken_by_compaction_gets_compacted(
    open_store: OpenStore,
) -> None:
    store = await open_store(history_limit=5)
    async with watching(store, "/s/", start_revision=1) as watch:
        await store.put("/s/0", b"")
        await store.put("/s/1", b"")
        assert keys(await next_batch(watch)) == ["/s/0"]
        for i in range(2, 12):
            await store.put(f"/s/{i}", b"")
        with pytest.raises(Compacted):
            await next_batch(watch)


async def test_aclose_releases_the_watch(store: Store) -> None:
    async with watching(store, "/r/") as watch:
        await store.put("/r/1", b"")
        await next_batch(watch)
        if hasattr(store, "watch_count"):
            assert store.watch_count == 1
        await watch.aclose()
        if hasattr(store, "watch_count"):
            assert store.watch_count == 0
        with pytest.raises(StopAsyncIteration):
            await anext(watch)


async def test_cancelling_the_consumer_releases_the_watch(store: Store) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        async with watching(store, "/c/") as watch:
            started.set()
            async for _ in watch:
                pass

    task = asyncio.create_task(consume())
    await started.wait()
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    if hasattr(store, "watch_count"):
        assert store.watch_count == 0


async def test_close_ends_watches_with_store_closed(open_store: OpenStore) -> None:
    store = await open_store()
    results: list[BaseException] = []
    ready = asyncio.Event()

    async def consume(start: int) -> None:
        try:
            async for _ in store.watch("/", start_revision=start):
                ready.set()
        except BaseException as exc:
            results.append(exc)
            raise

    await store.put("/a", b"")
    tasks = [asyncio.create_task(consume(0)), asyncio.create_task(consume(1))]
    await ready.wait()  # the replaying one got its batch; the other is waiting
    await store.close()
    for task in tasks:
        with pytest.raises(StoreClosed):
            await asyncio.wait_for(task, 5)
    assert len(results) == 2


async def test_concurrent_writers_and_watchers_see_every_revision_in_order(
    store: Store,
) -> None:
    async def writer(n: int) -> None:
        for i in range(25):
            await store.put(f"/cw/{n}/{i}", b"")

    start = store.revision + 1
    async with (
        watching(store, "/cw/", start_revision=start) as w1,
        watching(store, "/cw/3/", start_revision=start) as w2,
    ):
        await asyncio.gather(*(writer(n) for n in range(8)))
        revisions = [(await next_events_batch(w1)).revision for _ in range(200)]
        only3 = [keys(await next_events_batch(w2))[0] for _ in range(25)]
    assert revisions == list(range(start, start + 200))
    assert only3 == [f"/cw/3/{i}" for i in range(25)]
