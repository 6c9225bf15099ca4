"""The route book on the memory store: what a watcher is sent when it keeps
up, when it falls behind (a snapshot instead of its backlog), when it
resumes from a revision the book holds or no longer holds, and an apply
that another writer races."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from ecosystem.v1 import gateway_pb2 as gpb
from ecosystem.v1 import registry_pb2 as pb
from google.protobuf import struct_pb2

from controlplane.routes import RouteBook, RouteWatcher, prune_targets, route_key
from controlplane.store import MemoryStore
from serving.errors import RevisionConflictError
from tests.util import assert_eventually

PUT, DELETE = pb.WATCH_EVENT_TYPE_PUT, pb.WATCH_EVENT_TYPE_DELETE
RESYNC, END = pb.WATCH_EVENT_TYPE_RESYNC, pb.WATCH_EVENT_TYPE_SNAPSHOT_END


def apply(*names: str, upstream: str = "orders") -> gpb.ApplyRoutesRequest:
    request = gpb.ApplyRoutesRequest()
    for name in names:
        spec = struct_pb2.Struct()
        spec.update({"upstream": upstream})
        request.routes.add(name=name, spec=spec)
    return request


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    async with MemoryStore() as s:
        yield s


async def book_on(store: MemoryStore, **settings: int) -> RouteBook:
    book = RouteBook(store, store_id="s1", **settings)  # type: ignore[arg-type]
    await book.start()
    return book


async def caught_up(book: RouteBook, store: MemoryStore) -> None:
    def check() -> None:
        assert book.revision >= store.revision

    await assert_eventually(check)


async def next_events(watcher: RouteWatcher) -> list[tuple[int, str]]:
    """The events of the watcher's next response (one stream per watcher, as a servicer has)."""
    stream = getattr(watcher, "test_stream", None)
    if stream is None:
        stream = watcher.responses(60.0)
        watcher.test_stream = stream  # type: ignore[attr-defined]
    response = gpb.WatchRoutesResponse.FromString(await anext(stream))
    assert response.store_id == "s1"
    return [(e.type, e.route.name) for e in response.events]


async def test_a_watcher_that_keeps_up_gets_each_change(store: MemoryStore) -> None:
    book = await book_on(store)
    try:
        watcher = book.subscribe()
        assert await next_events(watcher) == [(RESYNC, ""), (END, "")]
        await book.apply(apply("a", "b"))
        await book.delete("a")
        await caught_up(book, store)
        # Everything pending in one response, in revision order.
        assert await next_events(watcher) == [(PUT, "a"), (PUT, "b"), (DELETE, "a")]
    finally:
        await book.close()


async def test_a_watcher_that_falls_behind_gets_a_snapshot_instead(store: MemoryStore) -> None:
    book = await book_on(store, max_pending_bytes=400)
    try:
        watcher = book.subscribe()
        assert await next_events(watcher) == [(RESYNC, ""), (END, "")]
        for i in range(20):
            await book.apply(apply("a", upstream=f"v{i}"))
        await caught_up(book, store)
        assert watcher.resync and not watcher.pending
        assert await next_events(watcher) == [(RESYNC, ""), (PUT, "a"), (END, "")]
    finally:
        await book.close()


async def test_resuming_from_a_revision_the_book_holds_or_not(store: MemoryStore) -> None:
    book = await book_on(store, ring_revisions=2)
    try:
        first = await book.apply(apply("a"))
        second = await book.apply(apply("b"))
        await book.apply(apply("c"))
        await book.apply(apply("d"))
        await caught_up(book, store)
        assert await next_events(book.subscribe(second.revision, "s1")) == [(PUT, "c"), (PUT, "d")]
        # Four changes, the last two kept: from the first, a snapshot.
        assert await next_events(book.subscribe(first.revision, "s1")) == [
            (RESYNC, ""),
            (PUT, "a"),
            (PUT, "b"),
            (PUT, "c"),
            (PUT, "d"),
            (END, ""),
        ]
        assert (await next_events(book.subscribe(second.revision, "other")))[0] == (RESYNC, "")
    finally:
        await book.close()


async def test_a_restarted_book_serves_recent_resumes_from_the_stores_history(
    store: MemoryStore,
) -> None:
    book = await book_on(store)
    first = await book.apply(apply("a"))
    await book.apply(apply("b"))
    await book.close()
    again = await book_on(store)
    try:
        assert sorted(again.routes) == ["a", "b"]
        assert await next_events(again.subscribe(first.revision, "s1")) == [(PUT, "b")]
    finally:
        await again.close()


async def test_an_apply_raced_by_another_writer_reads_again(store: MemoryStore) -> None:
    book = await book_on(store)
    try:
        await book.apply(apply("a"))
        real_range = store.range
        raced = False

        async def range_then_race(prefix: str, **kwargs: int) -> object:
            nonlocal raced
            result = await real_range(prefix, **kwargs)
            if not raced:
                raced = True  # another replica rewrites "a" between the read and the write
                await store.put(route_key("a"), gpb.Route(name="a", group="x").SerializeToString())
            return result

        store.range = range_then_race  # type: ignore[method-assign]
        answer = await book.apply(apply("a", upstream="mine"))
        assert raced and list(answer.updated) == ["a"]
        stored = await book.get("a")
        assert (stored.spec["upstream"], stored.group) == ("mine", "")
    finally:
        await book.close()


async def test_a_prune_deletes_only_the_routes_its_acl_check_saw(store: MemoryStore) -> None:
    """A route that joins the group between the ACL check of a pruning apply
    and the apply itself is not deleted unchecked: the apply is refused."""
    book = await book_on(store)
    try:
        await book.apply(apply("a", "b"))
        request = apply("a")
        request.prune = True
        assert await prune_targets(store, request) == ["b"]  # what the ACL check saw
        await book.apply(apply("c"))  # joins the group meanwhile
        with pytest.raises(RevisionConflictError, match="'c' joined group"):
            await book.apply(request)
        names = [r.name for r in (await book.list()).routes]
        assert names == ["a", "b", "c"]  # nothing deleted
    finally:
        await book.close()
