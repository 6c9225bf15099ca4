"""`SqliteStore`: the embedded engine made durable in one SQLite file.

The engine does the bookkeeping in memory; this module only persists it. Every
flush of the engine's group commit is one SQLite transaction, hence one fsync of
the write-ahead log (``journal_mode=WAL``, ``synchronous=FULL``), run on a single
dedicated worker thread so the event loop never waits on disk. A write is
acknowledged, and becomes visible to reads and watches, only once its flush has
committed (see `_core`), so whatever a caller has seen survives ``kill -9``.

Tables: ``kv`` (current keys), ``history`` (one row per event of every retained
revision, prev_kv included), ``leases`` (deadline as unix time, so expiry keeps
counting while the process is down) and ``meta`` (revision, compact_revision).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from ._core import DEFAULT_HISTORY_LIMIT, Engine
from ._journal import Change, LeaseRecord, Snapshot
from ._protocol import Event, EventType, KeyValue, StoreError

__all__ = ["SqliteStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kv (
    key             TEXT PRIMARY KEY,
    value           BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    mod_revision    INTEGER NOT NULL,
    version         INTEGER NOT NULL,
    lease           INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history (
    revision             INTEGER NOT NULL,
    idx                  INTEGER NOT NULL,
    type                 INTEGER NOT NULL,  -- 0 PUT, 1 DELETE
    key                  TEXT NOT NULL,
    value                BLOB NOT NULL,
    create_revision      INTEGER NOT NULL,
    mod_revision         INTEGER NOT NULL,
    version              INTEGER NOT NULL,
    lease                INTEGER NOT NULL,
    prev_value           BLOB,              -- prev_* are NULL when there was no prev_kv
    prev_create_revision INTEGER,
    prev_mod_revision    INTEGER,
    prev_version         INTEGER,
    prev_lease           INTEGER,
    PRIMARY KEY (revision, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    id       INTEGER PRIMARY KEY,
    ttl      REAL NOT NULL,
    deadline REAL NOT NULL
);
"""

_HistoryRow = tuple[
    int, int, int, str, bytes, int, int, int, int,
    bytes | None, int | None, int | None, int | None, int | None,
]  # fmt: skip


def _history_row(revision: int, idx: int, ev: Event) -> _HistoryRow:
    kv, prev = ev.kv, ev.prev_kv
    return (
        revision,
        idx,
        0 if ev.type is EventType.PUT else 1,
        kv.key,
        kv.value,
        kv.create_revision,
        kv.mod_revision,
        kv.version,
        kv.lease,
        None if prev is None else prev.value,
        None if prev is None else prev.create_revision,
        None if prev is None else prev.mod_revision,
        None if prev is None else prev.version,
        None if prev is None else prev.lease,
    )


def _event(row: _HistoryRow) -> Event:
    _, _, typ, key, value, crev, mrev, ver, lease, pval, pcrev, pmrev, pver, please = row
    prev = None
    if pmrev is not None:
        assert pval is not None and pcrev is not None and pver is not None and please is not None
        prev = KeyValue(key, pval, pcrev, pmrev, pver, please)
    kind = EventType.PUT if typ == 0 else EventType.DELETE
    return Event(kind, KeyValue(key, value, crev, mrev, ver, lease), prev)


def missing_directory(path: Path) -> Path | None:
    """The highest missing directory above the store file ``path`` when more than
    the file's own directory is missing (None when at most that one is): a
    mistyped path must not grow a tree of directories where nobody looks, so
    ``eco controlplane`` refuses it (see ``ControlPlaneConfig``)."""
    parent = path.parent
    if parent.is_dir() or parent.parent.is_dir():
        return None
    missing = parent.parent
    while not missing.parent.is_dir() and missing.parent != missing:
        missing = missing.parent
    return missing


def _make_parent(path: Path) -> None:
    """Creates the file's missing directories, and says so in the log."""
    parent = path.parent
    if parent.is_dir():
        return
    if parent.exists():
        raise StoreError(f"{path}: cannot create the store file: {parent} is not a directory")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{path}: cannot create {parent}: {exc.strerror or exc}") from exc
    logger.info("created the store's directory %s", parent)


class _SqliteFile:
    """Blocking access to the database file; only ever used from the worker thread."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._compact_revision = 1

    def open(self) -> Snapshot:
        _make_parent(self._path)
        # Autocommit mode: transactions are delimited explicitly in flush().
        conn = sqlite3.connect(self._path, isolation_level=None, timeout=2.0)
        self._conn = conn
        # The engine keeps the whole state in memory, so a second process writing
        # the same file would silently diverge: hold an exclusive lock while open.
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            conn.execute("BEGIN EXCLUSIVE")
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            raise StoreError(f"{self._path}: cannot open the store file: {exc}") from exc
        if str(mode).lower() != "wal":
            raise StoreError(f"{self._path}: could not switch to WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_SCHEMA)
        meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
        schema = meta.get("schema_version", _SCHEMA_VERSION)
        if schema != _SCHEMA_VERSION:
            raise StoreError(f"{self._path}: unsupported store schema version {schema}")
        revision = int(meta.get("revision", 1))
        self._compact_revision = int(meta.get("compact_revision", 1))
        kvs = [KeyValue(*row) for row in conn.execute("SELECT * FROM kv")]
        history: list[tuple[int, tuple[Event, ...]]] = []
        batch: list[Event] = []
        current = 0
        for row in conn.execute("SELECT * FROM history ORDER BY revision, idx"):
            if row[0] != current and batch:
                history.append((current, tuple(batch)))
                batch = []
            current = row[0]
            batch.append(_event(row))
        if batch:
            history.append((current, tuple(batch)))
        leases = [LeaseRecord(*row) for row in conn.execute("SELECT id, ttl, deadline FROM leases")]
        return Snapshot(revision, self._compact_revision, kvs, history, leases)

    def flush(self, changes: Sequence[Change], revision: int, compact_revision: int) -> None:
        conn = self._conn
        assert conn is not None
        # Only the last state of each key and lease in this flush matters for the
        # current-state tables; every event goes to history.
        final_kvs: dict[str, KeyValue | None] = {}
        final_leases: dict[int, LeaseRecord | None] = {}
        rows: list[_HistoryRow] = []
        for change in changes:
            for idx, ev in enumerate(change.events):
                final_kvs[ev.kv.key] = ev.kv if ev.type is EventType.PUT else None
                rows.append(_history_row(change.revision, idx, ev))
            for record in change.lease_puts:
                final_leases[record.id] = record
            for lease_id in change.lease_deletes:
                final_leases[lease_id] = None
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)
                    for kv in final_kvs.values()
                    if kv is not None
                ],
            )
            conn.executemany(
                "DELETE FROM kv WHERE key = ?",
                [(key,) for key, kv in final_kvs.items() if kv is None],
            )
            conn.executemany(
                "INSERT INTO history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
            )
            conn.executemany(
                "INSERT OR REPLACE INTO leases VALUES (?, ?, ?)",
                [(r.id, r.ttl, r.deadline) for r in final_leases.values() if r is not None],
            )
            conn.executemany(
                "DELETE FROM leases WHERE id = ?",
                [(lid,) for lid, r in final_leases.items() if r is None],
            )
            if compact_revision > self._compact_revision:
                conn.execute("DELETE FROM history WHERE revision < ?", (compact_revision,))
            conn.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [
                    ("schema_version", _SCHEMA_VERSION),
                    ("revision", revision),
                    ("compact_revision", compact_revision),
                ],
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._compact_revision = compact_revision

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class _SqliteJournal:
    """The `Journal` of `SqliteStore`: `_SqliteFile` run on one dedicated thread."""

    def __init__(self, path: Path) -> None:
        self._file = _SqliteFile(path)
        self._path = path
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def load(self) -> Snapshot:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="store-sqlite"
        )
        snap = await self._run(self._file.open)
        logger.info(
            "sqlite store loaded path=%s revision=%d history=%d",
            self._path,
            snap.revision,
            len(snap.history),
        )
        return snap

    async def flush(self, changes: Sequence[Change], revision: int, compact_revision: int) -> None:
        await self._run(self._file.flush, changes, revision, compact_revision)

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            # Queued behind any flush still running on the thread (e.g. one whose
            # awaiting task was cancelled), so the file is closed after it.
            await asyncio.get_running_loop().run_in_executor(executor, self._file.close)
        finally:
            executor.shutdown(wait=True)


class SqliteStore(Engine):
    """A durable `Store` in the SQLite file at ``path`` (missing directories are
    created on start, with a log line; ``eco controlplane`` creates only the
    file's own, see :func:`missing_directory`). One process at a time may use
    the file."""

    def __init__(
        self, path: str | os.PathLike[str], history_limit: int = DEFAULT_HISTORY_LIMIT
    ) -> None:
        self._path = Path(path)
        super().__init__(history_limit=history_limit, journal=_SqliteJournal(self._path))

    @property
    def path(self) -> Path:
        return self._path

    def __repr__(self) -> str:
        return f"SqliteStore({str(self._path)!r}, revision={self.revision})"
