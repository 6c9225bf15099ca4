"""Conformance: lease grant, keepalive, TTL, revoke and expiry."""

from __future__ import annotations

import asyncio

import pytest

from controlplane.store import EventType, LeaseNotFound, PutOp, Store
from tests.util import assert_eventually

from .conftest import next_events_batch, watching


async def test_grant_ttl_keepalive_revoke(store: Store) -> None:
    lease = await store.grant(30)
    assert lease > 0
    ttl, remaining = await store.lease_ttl(lease)
    assert ttl == 30 and 0 < remaining <= 30
    assert await store.keepalive(lease) == 30
    _, renewed = await store.lease_ttl(lease)
    assert renewed >= remaining - 0.5
    await store.revoke(lease)
    with pytest.raises(LeaseNotFound):
        await store.lease_ttl(lease)
    with pytest.raises(LeaseNotFound):
        await store.keepalive(lease)
    with pytest.raises(LeaseNotFound) as info:
        await store.revoke(lease)
    assert info.value.lease_id == lease
    with pytest.raises(ValueError):
        await store.grant(0)
    assert await store.grant(30) != await store.grant(30)


async def test_lease_operations_without_keys_do_not_bump_the_revision(store: Store) -> None:
    lease = await store.grant(30)
    await store.keepalive(lease)
    await store.revoke(lease)
    assert store.revision == 1


async def test_revoke_deletes_attached_keys_in_one_revision(store: Store) -> None:
    lease = await store.grant(30)
    other = await store.grant(30)
    await store.txn((), [PutOp("/l/a", b"1", lease), PutOp("/l/b", b"2", lease)])
    await store.put("/l/c", b"3", lease=other)
    await store.put("/l/plain", b"4")
    # Re-putting a key under another lease (or none) detaches it from the first.
    await store.put("/l/moved", b"5", lease=lease)
    await store.put("/l/moved", b"6", lease=other)
    kv = await store.get("/l/a")
    assert kv is not None and kv.lease == lease
    before = store.revision
    async with watching(store, "/l/") as watch:
        await store.revoke(lease)
        batch = await next_events_batch(watch)
    assert store.revision == before + 1
    assert batch.revision == before + 1
    assert [(e.type, e.kv.key) for e in batch.events] == [
        (EventType.DELETE, "/l/a"),
        (EventType.DELETE, "/l/b"),
    ]
    assert all(e.kv.mod_revision == before + 1 for e in batch.events)
    assert [e.prev_kv.value for e in batch.events if e.prev_kv] == [b"1", b"2"]
    assert [kv.key for kv in (await store.range("/l/")).kvs] == ["/l/c", "/l/moved", "/l/plain"]


async def test_expiry_deletes_keys_in_one_revision(store: Store) -> None:
    lease = await store.grant(0.3)
    await store.put("/exp/a", b"", lease=lease)
    await store.put("/exp/b", b"", lease=lease)
    await store.put("/exp/keep", b"")
    before = store.revision
    async with watching(store, "/exp/") as watch:
        batch = await next_events_batch(watch, timeout=5)
    assert batch.revision == before + 1
    assert [(e.type, e.kv.key) for e in batch.events] == [
        (EventType.DELETE, "/exp/a"),
        (EventType.DELETE, "/exp/b"),
    ]
    assert [kv.key for kv in (await store.range("/exp/")).kvs] == ["/exp/keep"]
    with pytest.raises(LeaseNotFound):
        await store.keepalive(lease)
    with pytest.raises(LeaseNotFound):
        await store.lease_ttl(lease)


async def test_expired_lease_cannot_be_kept_alive(store: Store) -> None:
    lease = await store.grant(0.2)

    async def gone() -> None:
        try:
            await store.lease_ttl(lease)
        except LeaseNotFound:
            return
        raise AssertionError("lease still alive")

    await assert_eventually(gone, timeout=5)  # type: ignore[arg-type]
    with pytest.raises(LeaseNotFound):
        await store.keepalive(lease)
    with pytest.raises(LeaseNotFound):
        await store.put("/x", b"", lease=lease)


async def test_keepalive_keeps_keys(store: Store) -> None:
    lease = await store.grant(0.4)
    await store.put("/alive", b"", lease=lease)
    for _ in range(8):
        await asyncio.sleep(0.1)
        await store.keepalive(lease)
    # 0.8 s later, twice the TTL: still there thanks to the renewals.
    kv = await store.get("/alive")
    assert kv is not None and kv.lease == lease
