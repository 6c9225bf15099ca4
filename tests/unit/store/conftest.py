"""Fixtures of the store conformance suite.

Every test that takes ``store`` (or ``open_store``, or ``backend``) runs against
each backend in `BACKENDS`: here the in-process ones, memory and SQLite.
tests/integration/store runs the same test modules against etcd (a real etcd
process) with a ``backend`` fixture of its own. A new backend is one more entry
in one of them: a factory that builds an unstarted store, and whether it lets
the test choose the history limit (a server-side store compacts on its own
schedule, so tests of automatic compaction are skipped for it). Nothing else
in the suite may depend on the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest

from controlplane.store import MemoryStore, SqliteStore, Store, WatchBatch


@dataclass(frozen=True)
class Backend:
    name: str
    # (directory for files, history limit or None for the default) -> unstarted store
    create: Callable[[Path, int | None], Store]
    configurable_history: bool = True


def _memory(_: Path, history_limit: int | None) -> Store:
    return MemoryStore() if history_limit is None else MemoryStore(history_limit)


def _sqlite(tmp: Path, history_limit: int | None) -> Store:
    path = tmp / "sqlite" / "store.db"
    return SqliteStore(path) if history_limit is None else SqliteStore(path, history_limit)


BACKENDS = [
    Backend("memory", _memory),
    Backend("sqlite", _sqlite),
]

OpenStore = Callable[..., Awaitable[Store]]


@pytest.fixture(params=BACKENDS, ids=[b.name for b in BACKENDS])
def backend(request: pytest.FixtureRequest) -> Backend:
    return cast(Backend, request.param)


@pytest.fixture
async def open_store(backend: Backend, tmp_path: Path) -> AsyncIterator[OpenStore]:
    """Opens (and at teardown closes) a fresh store of the backend under test."""
    opened: list[Store] = []

    async def _open(*, history_limit: int | None = None) -> Store:
        if history_limit is not None and not backend.configurable_history:
            pytest.skip(f"{backend.name}: history limit is not configurable")
        store = backend.create(tmp_path / f"s{len(opened)}", history_limit)
        await store.start()
        opened.append(store)
        return store

    yield _open
    for store in opened:
        await store.close()


@pytest.fixture
async def store(open_store: OpenStore) -> Store:
    return await open_store()


@pytest.fixture(autouse=True)
def _no_leaked_store_threads() -> Iterator[None]:
    """Runs after the store fixtures are closed (autouse fixtures are set up first)."""
    yield
    leaked = [t.name for t in threading.enumerate() if t.name.startswith("store-")]
    assert not leaked, f"store threads still running: {leaked}"


async def next_batch(it: AsyncIterator[WatchBatch], timeout: float = 5.0) -> WatchBatch:
    """The next batch of a watch, failing the test if none comes within ``timeout``."""
    return await asyncio.wait_for(anext(it), timeout)


async def next_events_batch(it: AsyncIterator[WatchBatch], timeout: float = 5.0) -> WatchBatch:
    """The next batch that carries events (progress notifications are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            batch = await anext(it)
            if not batch.is_progress:
                return batch


@contextlib.asynccontextmanager
async def watching(
    store: Store, prefix: str, *, start_revision: int = 0, progress_interval: float = 5.0
) -> AsyncIterator[AsyncGenerator[WatchBatch, None]]:
    """A watch that is closed when the block ends, whatever happens in it."""
    it = store.watch(prefix, start_revision=start_revision, progress_interval=progress_interval)
    gen = cast(AsyncGenerator[WatchBatch, None], it)
    try:
        yield gen
    finally:
        await gen.aclose()
