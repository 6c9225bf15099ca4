"""The package surface: exports, `open_store` URLs, the async context manager."""

from __future__ import annotations

from pathlib import Path

import pytest

import controlplane.store as store_pkg
from controlplane.store import MemoryStore, SqliteStore, Store, open_store

from .conftest import Backend


def test_public_names_are_pinned() -> None:
    assert sorted(store_pkg.__all__) == [
        "Compacted",
        "Compare",
        "CompareOp",
        "CompareTarget",
        "DeleteOp",
        "Event",
        "EventType",
        "KeyValue",
        "LeaseNotFound",
        "MemoryStore",
        "Op",
        "PutOp",
        "RangeResult",
        "SqliteStore",
        "Store",
        "StoreClosed",
        "StoreError",
        "StoreUnavailable",
        "TxnResult",
        "WatchBatch",
        "open_store",
    ]


def test_backends_implement_the_protocol(tmp_path: Path) -> None:
    assert isinstance(MemoryStore(), Store)
    assert isinstance(SqliteStore(tmp_path / "x.db"), Store)
    assert not (tmp_path / "x.db").exists()  # no I/O before start()


async def test_open_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    absolute = open_store(f"sqlite://{tmp_path}/abs/eco.db")
    assert isinstance(absolute, SqliteStore) and absolute.path == tmp_path / "abs" / "eco.db"
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite://rel/dir/eco.db")
    assert isinstance(relative, SqliteStore)
    async with relative as store:
        await store.put("/a", b"")
    assert (tmp_path / "rel" / "dir" / "eco.db").exists()


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("etcd://", "host"),
        ("memory://extra", "memory://"),
        ("sqlite://", "path"),
        ("postgres://db", "sqlite://PATH"),
        ("eco.db", "sqlite://PATH"),
    ],
)
def test_open_store_rejects_other_urls(url: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        open_store(url)


async def test_async_context_manager(backend: Backend, tmp_path: Path) -> None:
    async with backend.create(tmp_path, None) as store:
        assert await store.put("/a", b"") == 2
    with pytest.raises(Exception, match="closed"):
        await store.get("/a")
