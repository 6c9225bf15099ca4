"""SQLite backend only: durability across close/reopen, leases across restarts, WAL
mode, and the group-commit visibility rules. (Its kill -9 test, which runs the
store in a process of its own, is in tests/integration/store.)"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from controlplane.store import (
    Compare,
    DeleteOp,
    EventType,
    LeaseNotFound,
    PutOp,
    SqliteStore,
    StoreClosed,
    StoreError,
    WatchBatch,
)
from controlplane.store._journal import Change

from .conftest import next_batch, next_events_batch, watching


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "eco.db"


async def _replay(store: SqliteStore, start: int) -> list[WatchBatch]:
    out: list[WatchBatch] = []
    async with watching(store, "", start_revision=start, progress_interval=60) as watch:
        while not out or out[-1].revision < store.revision:
            out.append(await next_batch(watch))
    return out


async def test_data_revision_and_history_survive_reopen(path: Path) -> None:
    async with SqliteStore(path, history_limit=100) as store:
        lease = await store.grant(60)
        await store.put("/a", b"1")
        await store.put("/b", b"2", lease=lease)
        await store.txn([Compare("/a", "version", "==", 1)], [PutOp("/a", b"3"), DeleteOp("/b")])
        await store.put("/c/1", b"x")
        await store.compact(3)
        revision = store.revision
        current = await store.range("")
        at_four = await store.range("", revision=4)
        history = await _replay(store, 3)

    async with SqliteStore(path, history_limit=100) as store:
        assert store.revision == revision
        assert store.compact_revision == 3
        assert await store.range("") == current
        assert await store.range("", revision=4) == at_four
        assert await _replay(store, 3) == history
        assert (await store.lease_ttl(lease))[0] == 60
        assert await store.put("/d", b"") == revision + 1


async def test_lease_expiry_continues_after_restart(path: Path) -> None:
    async with SqliteStore(path) as store:
        lease = await store.grant(60)
        await store.put("/l/a", b"", lease=lease)
        await store.put("/l/b", b"", lease=lease)
        long = await store.grant(60)
        await store.put("/l/long", b"", lease=long)
        revision = store.revision
    # As if the process had been down for 30 s: one lease expired, the other is half-way.
    with sqlite3.connect(path) as db:
        db.execute("UPDATE leases SET deadline = deadline - 61 WHERE id = ?", (lease,))
        db.execute("UPDATE leases SET deadline = deadline - 30 WHERE id = ?", (long,))
    db.close()

    async with SqliteStore(path) as store:
        assert store.revision == revision
        ttl, remaining = await store.lease_ttl(long)
        assert ttl == 60 and remaining < 31  # the stored deadline, not a fresh TTL
        async with watching(store, "/l/", start_revision=revision + 1) as watch:
            batch = await next_events_batch(watch)
        assert batch.revision == revision + 1
        assert [(e.type, e.kv.key) for e in batch.events] == [
            (EventType.DELETE, "/l/a"),
            (EventType.DELETE, "/l/b"),
        ]
        with pytest.raises(LeaseNotFound):
            await store.keepalive(lease)
        assert [kv.key for kv in (await store.range("/l/")).kvs] == ["/l/long"]

    # The revocation itself was durable.
    async with SqliteStore(path) as store:
        assert store.revision == revision + 1
        with pytest.raises(LeaseNotFound):
            await store.lease_ttl(lease)


async def test_short_lease_expires_after_reopen(path: Path) -> None:
    async with SqliteStore(path) as store:
        lease = await store.grant(0.5)
        await store.put("/short", b"", lease=lease)
        revision = store.revision
    async with SqliteStore(path) as store:
        async with watching(store, "/short", start_revision=revision + 1) as watch:
            batch = await next_events_batch(watch)
        assert batch.events[0].type is EventType.DELETE


async def test_wal_mode_and_exclusive_use(path: Path) -> None:
    async with SqliteStore(path) as store:
        await store.put("/a", b"")
        with pytest.raises(StoreError):
            await SqliteStore(path).start()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


class _Gate:
    """Holds the journal's flushes until opened, to observe not-yet-durable writes."""

    def __init__(self, store: SqliteStore) -> None:
        self.open = asyncio.Event()
        self.entered = asyncio.Event()
        self.fail = False
        journal = store._journal
        assert journal is not None
        inner = journal.flush

        async def flush(changes: Sequence[Change], revision: int, compact_revision: int) -> None:
            self.entered.set()
            await self.open.wait()
            if self.fail:
                raise OSError("disk on fire")
            await inner(changes, revision, compact_revision)

        journal.flush = flush  # type: ignore[method-assign]


async def test_writes_are_invisible_until_durable(path: Path) -> None:
    async with SqliteStore(path) as store:
        gate = _Gate(store)
        async with watching(store, "/", progress_interval=60) as watch:
            first = asyncio.create_task(store.put("/k", b"1"))
            await gate.entered.wait()
            # Queued behind the flush in progress: evaluated against the pending write.
            cas = asyncio.create_task(
                store.txn([Compare("/k", "version", "==", 1)], [PutOp("/k", b"2")])
            )
            check = asyncio.create_task(store.txn([Compare("/k", "exists", "==", True)], []))
            await asyncio.sleep(0.05)
            assert not first.done() and not cas.done() and not check.done()
            assert store.revision == 1
            assert await store.get("/k") is None
            assert (await store.range("")).kvs == ()
            with pytest.raises(ValueError):
                await store.get("/k", revision=2)
            gate.open.set()
            assert await first == 2
            result = await cas
            assert result.succeeded and result.revision == 3
            assert (await check).succeeded
            kv = await store.get("/k")
            assert kv is not None and kv.value == b"2"
            assert [(await next_batch(watch)).revision for _ in range(2)] == [2, 3]


async def test_a_failed_flush_fails_the_store_closed(path: Path) -> None:
    store = SqliteStore(path)
    await store.start()
    try:
        await store.put("/ok", b"")
        gate = _Gate(store)
        gate.fail = True
        async with watching(store, "/") as watch:
            pending = asyncio.create_task(store.put("/lost", b""))
            await gate.entered.wait()
            queued = asyncio.create_task(store.put("/lost2", b""))
            gate.open.set()
            for task in (pending, queued):
                with pytest.raises(StoreClosed):
                    await task
            with pytest.raises(StoreClosed):
                await next_batch(watch)
        with pytest.raises(StoreClosed):
            await store.get("/ok")
    finally:
        await store.close()
    async with SqliteStore(path) as store:
        assert store.revision == 2
        assert [kv.key for kv in (await store.range("")).kvs] == ["/ok"]


async def test_close_makes_queued_writes_durable(path: Path) -> None:
    store = SqliteStore(path)
    await store.start()
    writes = [asyncio.create_task(store.put(f"/q/{i}", b"")) for i in range(100)]
    await asyncio.sleep(0)
    await store.close()
    revisions = [await w for w in writes]
    assert sorted(revisions) == list(range(2, 102))
    async with SqliteStore(path) as store:
        assert store.revision == 101
        assert len((await store.range("/q/")).kvs) == 100
