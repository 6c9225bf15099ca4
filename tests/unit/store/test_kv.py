"""Conformance: revisions, get/range, transactions, deletes, compaction, lifecycle."""

from __future__ import annotations

import pytest

from controlplane.store import (
    Compacted,
    Compare,
    DeleteOp,
    LeaseNotFound,
    PutOp,
    Store,
    StoreClosed,
)

from .conftest import OpenStore


async def test_revision_starts_at_one_and_bumps_once_per_writing_txn(store: Store) -> None:
    assert store.revision == 1
    assert store.compact_revision <= 1
    assert await store.put("/a", b"1") == 2
    result = await store.txn((), [PutOp("/b", b"1"), PutOp("/c", b"1"), DeleteOp("/a")])
    assert result.succeeded and result.revision == 3
    assert store.revision == 3
    # Nothing changes: no new revision.
    assert await store.delete("/missing") == 0
    assert store.revision == 3
    result = await store.txn([Compare("/b", "exists", "==", False)], [PutOp("/x", b"")])
    assert not result.succeeded and result.revision == 3
    result = await store.txn([], [])
    assert result.succeeded and result.revision == 3
    assert store.revision == 3


async def test_create_and_mod_revision_and_version(store: Store) -> None:
    r1 = await store.put("/k", b"v1")
    kv = await store.get("/k")
    assert kv is not None
    assert (kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) == (
        b"v1",
        r1,
        r1,
        1,
        0,
    )
    r2 = await store.put("/k", b"v2")
    kv = await store.get("/k")
    assert kv is not None
    assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (b"v2", r1, r2, 2)
    await store.delete("/k")
    assert await store.get("/k") is None
    r4 = await store.put("/k", b"v3")
    kv = await store.get("/k")
    assert kv is not None
    assert (kv.create_revision, kv.mod_revision, kv.version) == (r4, r4, 1)


async def test_range_prefix_order_and_limit(store: Store) -> None:
    for key in ["/b/2", "/a/1", "/b/10", "/ab", "/b/1", "/c"]:
        await store.put(key, key.encode())
    result = await store.range("/b/")
    assert [kv.key for kv in result.kvs] == ["/b/1", "/b/10", "/b/2"]
    assert result.revision == store.revision
    assert [kv.key for kv in (await store.range("/a")).kvs] == ["/a/1", "/ab"]
    assert [kv.key for kv in (await store.range("/b/", limit=2)).kvs] == ["/b/1", "/b/10"]
    assert len((await store.range("")).kvs) == 6
    assert (await store.range("/zzz")).kvs == ()
    assert await store.get("/b") is None
    with pytest.raises(ValueError):
        await store.range("/", limit=-1)


async def test_range_and_get_at_an_older_revision(store: Store) -> None:
    r_a1 = await store.put("/p/a", b"1")
    r_b = await store.put("/p/b", b"1")
    r_a2 = await store.put("/p/a", b"2")
    r_del = await store.txn((), [DeleteOp("/p/b"), PutOp("/p/c", b"1")])

    def view(kvs: tuple[object, ...]) -> list[tuple[str, bytes]]:
        return [(kv.key, kv.value) for kv in kvs]  # type: ignore[attr-defined]

    assert view((await store.range("/p/", revision=1)).kvs) == []
    assert view((await store.range("/p/", revision=r_a1)).kvs) == [("/p/a", b"1")]
    old = await store.range("/p/", revision=r_b)
    assert old.revision == r_b
    assert view(old.kvs) == [("/p/a", b"1"), ("/p/b", b"1")]
    assert view((await store.range("/p/", revision=r_a2)).kvs) == [("/p/a", b"2"), ("/p/b", b"1")]
    assert view((await store.range("/p/", revision=r_del.revision)).kvs) == [
        ("/p/a", b"2"),
        ("/p/c", b"1"),
    ]
    assert view((await store.range("/p/", revision=r_b, limit=1)).kvs) == [("/p/a", b"1")]
    kv = await store.get("/p/a", revision=r_b)
    assert kv is not None and kv.value == b"1" and kv.mod_revision == r_a1
    assert await store.get("/p/c", revision=r_a2) is None
    assert await store.get("/p/b", revision=r_del.revision) is None


async def test_read_at_future_revision_is_value_error(store: Store) -> None:
    await store.put("/a", b"")
    with pytest.raises(ValueError):
        await store.range("/", revision=store.revision + 1)
    with pytest.raises(ValueError):
        await store.get("/a", revision=store.revision + 5)
    with pytest.raises(ValueError):
        await store.compact(store.revision + 1)


async def test_read_below_compaction_raises_compacted(store: Store) -> None:
    for i in range(5):
        await store.put(f"/k{i}", b"x")
    await store.put("/k0", b"y")
    target = store.revision - 2
    await store.compact(target)
    assert store.compact_revision == target
    with pytest.raises(Compacted) as info:
        await store.range("/", revision=target - 1)
    assert info.value.compact_revision == target
    with pytest.raises(Compacted):
        await store.get("/k0", revision=1)
    # The compaction revision itself is still readable.
    at = await store.range("/", revision=target)
    assert at.revision == target and len(at.kvs) == target - 1
    # Compacting again at or below the compaction point changes nothing.
    await store.compact(target - 1)
    assert store.compact_revision == target


@pytest.mark.parametrize(
    ("target", "op", "value", "expected"),
    [
        ("version", "==", 2, True),
        ("version", "!=", 2, False),
        ("version", "<", 3, True),
        ("version", ">", 2, False),
        ("create_revision", "==", 2, True),
        ("create_revision", ">", 2, False),
        ("mod_revision", "==", 3, True),
        ("mod_revision", "<", 3, False),
        ("mod_revision", ">", 2, True),
        ("value", "==", b"v2", True),
        ("value", "!=", b"v2", False),
        ("value", "<", b"v3", True),
        ("value", ">", b"v3", False),
        ("lease", "==", 0, True),
        ("lease", "!=", 0, False),
        ("exists", "==", True, True),
        ("exists", "!=", True, False),
    ],
)
async def test_txn_compare_on_each_target(
    store: Store, target: str, op: str, value: int | bytes | bool, expected: bool
) -> None:
    assert await store.put("/k", b"v1") == 2
    assert await store.put("/k", b"v2") == 3
    result = await store.txn(
        [Compare("/k", target, op, value)],  # type: ignore[arg-type]
        [PutOp("/then", b"")],
        [PutOp("/else", b"")],
    )
    assert result.succeeded is expected
    assert result.revision == 4
    assert (await store.get("/then") is not None) is expected
    assert (await store.get("/else") is not None) is not expected


@pytest.mark.parametrize(
    ("target", "value"),
    [("version", 0), ("create_revision", 0), ("mod_revision", 0), ("lease", 0), ("value", b"")],
)
async def test_txn_compare_on_missing_key_sees_zero_values(
    store: Store, target: str, value: int | bytes
) -> None:
    result = await store.txn(
        [Compare("/nope", target, "==", value), Compare("/nope", "exists", "==", False)],  # type: ignore[arg-type]
        [PutOp("/nope", b"created")],
    )
    assert result.succeeded


async def test_txn_compare_and_swap_on_mod_revision(store: Store) -> None:
    rev = await store.put("/cas", b"a")
    ok = await store.txn([Compare("/cas", "mod_revision", "==", rev)], [PutOp("/cas", b"b")])
    assert ok.succeeded and ok.prev_kvs[0] is not None and ok.prev_kvs[0].value == b"a"
    # The same swap again loses: the key moved on.
    lost = await store.txn([Compare("/cas", "mod_revision", "==", rev)], [PutOp("/cas", b"c")], [])
    assert not lost.succeeded and lost.prev_kvs == ()
    kv = await store.get("/cas")
    assert kv is not None and kv.value == b"b"


async def test_txn_failure_branch_and_prev_kvs(store: Store) -> None:
    await store.put("/x/1", b"1")
    await store.put("/x/2", b"2")
    result = await store.txn(
        [Compare("/x/1", "value", "==", b"other")],
        [PutOp("/never", b"")],
        [PutOp("/x/1", b"new"), PutOp("/fresh", b""), DeleteOp("/x/2"), DeleteOp("/gone")],
    )
    assert not result.succeeded
    assert result.revision == store.revision == 4
    prev = result.prev_kvs
    assert len(prev) == 4
    assert prev[0] is not None and prev[0].value == b"1"
    assert prev[1] is None
    assert prev[2] is not None and prev[2].key == "/x/2"
    assert prev[3] is None
    assert await store.get("/never") is None
    kv = await store.get("/x/1")
    assert kv is not None and kv.value == b"new" and kv.mod_revision == 4
    assert await store.get("/x/2") is None


async def test_txn_with_missing_lease_changes_nothing(store: Store) -> None:
    await store.put("/a", b"1")
    before = store.revision
    with pytest.raises(LeaseNotFound) as info:
        await store.txn(
            (), [PutOp("/a", b"2"), PutOp("/b", b"1"), PutOp("/c", b"1", lease=123456789)]
        )
    assert info.value.lease_id == 123456789
    assert store.revision == before
    kv = await store.get("/a")
    assert kv is not None and kv.value == b"1"
    assert await store.get("/b") is None
    with pytest.raises(LeaseNotFound):
        await store.put("/c", b"", lease=987654321)
    assert store.revision == before


async def test_txn_rejects_a_key_written_twice(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.txn((), [PutOp("/a", b"1"), PutOp("/a", b"2")])
    with pytest.raises(ValueError):
        await store.txn((), [DeleteOp("/a/", prefix=True), PutOp("/a/b", b"2")])
    assert store.revision == 1


async def test_delete_and_prefix_delete(store: Store) -> None:
    for key in ["/d/1", "/d/2", "/d/3/x", "/e"]:
        await store.put(key, b"v")
    assert await store.delete("/d/1") == 1
    assert await store.delete("/d/1") == 0
    before = store.revision
    result = await store.txn((), [DeleteOp("/d/", prefix=True)])
    assert result.revision == before + 1
    assert sorted(kv.key for kv in result.prev_kvs if kv is not None) == ["/d/2", "/d/3/x"]
    assert (await store.range("/d/")).kvs == ()
    assert await store.get("/e") is not None
    assert await store.delete("/d/", prefix=True) == 0
    assert store.revision == before + 1
    assert await store.delete("", prefix=True) == 1
    assert (await store.range("")).kvs == ()


async def test_lifecycle(open_store: OpenStore) -> None:
    store = await open_store()
    await store.start()  # idempotent while running
    await store.put("/a", b"")
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StoreClosed):
        await store.get("/a")
    with pytest.raises(StoreClosed):
        await store.put("/a", b"")
    with pytest.raises(StoreClosed):
        await store.grant(5)
    with pytest.raises(RuntimeError):
        await store.start()
