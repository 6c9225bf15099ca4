"""The embedded broker's journal: group commit of its state changes to ``bus.db``.

The broker changes its in-memory state at once, on the event loop, and queues the
SQL that makes each change durable (`Journal.add`), plus callbacks to run once it
is (`Journal.after`: e.g. let consumers see a new message). One flush task hands
everything queued to a single worker thread as one SQLite transaction (WAL,
``synchronous=FULL``: one fsync); while it runs, new changes queue up for the
next one. So concurrent publishers share commits, and a caller that awaits
`Journal.commit` knows that everything it did before is durable.

State that changes often — a consumer's position and ack floor, a stream's last
sequence — is not queued per change: its owner is marked dirty (`Journal.touch`)
and asked for its rows once per flush.

`MemoryJournal` has the same interface and persists nothing (``data_dir=None``).
A failed flush is fatal: the broker fails closed (see `EmbeddedBroker`).
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import logging
import sqlite3
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bus._errors import BusUnavailableError

__all__ = ["Journal", "MemoryJournal", "Op", "Snapshot", "SqliteJournal"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: one SQL statement and its parameters
Op = tuple[str, tuple[Any, ...]]

_SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS streams (
    name       TEXT PRIMARY KEY,
    config     TEXT NOT NULL,     -- JSON of StreamConfig
    created_at REAL NOT NULL,
    last_seq   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    stream       TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    subject      TEXT NOT NULL,
    data         BLOB NOT NULL,
    headers      TEXT NOT NULL,   -- JSON object
    id           TEXT NOT NULL,
    published_at REAL NOT NULL,
    PRIMARY KEY (stream, seq)
);
CREATE TABLE IF NOT EXISTS consumers (
    stream        TEXT NOT NULL,
    name          TEXT NOT NULL,
    config        TEXT NOT NULL,  -- JSON: filter, ack_wait, max_deliver, ...
    next_seq      INTEGER NOT NULL,  -- every sequence below was delivered (or skipped)
    ack_floor     INTEGER NOT NULL,  -- every sequence up to it was acknowledged
    dead_lettered INTEGER NOT NULL,
    PRIMARY KEY (stream, name)
) WITHOUT ROWID;
-- Sequences in (ack_floor, next_seq) that were acknowledged (or terminated, or
-- dead-lettered): out-of-order acks only; the rest of that range is pending.
CREATE TABLE IF NOT EXISTS acks (
    stream   TEXT NOT NULL,
    consumer TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    PRIMARY KEY (stream, consumer, seq)
) WITHOUT ROWID;
-- Pending sequences delivered more than once (absent: once).
CREATE TABLE IF NOT EXISTS deliveries (
    stream   TEXT NOT NULL,
    consumer TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    count    INTEGER NOT NULL,
    PRIMARY KEY (stream, consumer, seq)
) WITHOUT ROWID;
"""

#: (name, config JSON, created_at, last_seq)
StreamRow = tuple[str, str, float, int]
#: (stream, seq, subject, data, headers JSON, id, published_at)
MessageRow = tuple[str, int, str, bytes, str, str, float]
#: (stream, name, config JSON, next_seq, ack_floor, dead_lettered)
ConsumerRow = tuple[str, str, str, int, int, int]


@dataclass
class Snapshot:
    streams: list[StreamRow] = field(default_factory=list)
    messages: list[MessageRow] = field(default_factory=list)
    consumers: list[ConsumerRow] = field(default_factory=list)
    #: (stream, consumer, seq)
    acks: list[tuple[str, str, int]] = field(default_factory=list)
    #: (stream, consumer, seq, count)
    deliveries: list[tuple[str, str, int, int]] = field(default_factory=list)


class _SqliteFile:
    """Blocking access to ``bus.db``; only ever used from the journal's worker thread."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None

    def open(self) -> Snapshot:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, isolation_level=None, timeout=1.0)
        self._conn = conn
        # The broker keeps its whole state in memory; a second process on the same
        # file would diverge from it silently, so hold the file exclusively.
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            conn.execute("BEGIN EXCLUSIVE")
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            conn.close()
            self._conn = None
            raise BusUnavailableError(
                f"{self._path}: cannot open the bus file: {exc}", field="data_dir"
            ) from exc
        if str(mode).lower() != "wal":
            raise BusUnavailableError(f"{self._path}: could not switch to WAL (got {mode!r})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_SCHEMA)
        meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
        version = meta.get("schema_version", _SCHEMA_VERSION)
        if version != _SCHEMA_VERSION:
            raise BusUnavailableError(f"{self._path}: unsupported bus schema version {version}")
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (_SCHEMA_VERSION,))
        return Snapshot(
            streams=conn.execute(
                "SELECT name, config, created_at, last_seq FROM streams"
            ).fetchall(),
            messages=conn.execute(
                "SELECT stream, seq, subject, data, headers, id, published_at"
                " FROM messages ORDER BY stream, seq"
            ).fetchall(),
            consumers=conn.execute(
                "SELECT stream, name, config, next_seq, ack_floor, dead_lettered FROM consumers"
            ).fetchall(),
            acks=conn.execute("SELECT stream, consumer, seq FROM acks").fetchall(),
            deliveries=conn.execute(
                "SELECT stream, consumer, seq, count FROM deliveries"
            ).fetchall(),
        )

    def flush(self, ops: Sequence[Op]) -> None:
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Runs of the same statement go through executemany.
            i = 0
            while i < len(ops):
                sql = ops[i][0]
                j = i + 1
                while j < len(ops) and ops[j][0] == sql:
                    j += 1
                if j == i + 1:
                    conn.execute(sql, ops[i][1])
                else:
                    conn.executemany(sql, [op[1] for op in ops[i:j]])
                i = j
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Journal(abc.ABC):
    """What the broker needs from persistence (see the module docstring)."""

    @abc.abstractmethod
    def add(self, op: Op) -> None:
        """Queues ``op`` for the next flush."""

    @abc.abstractmethod
    def after(self, callback: Callable[[], None]) -> None:
        """Runs ``callback`` on the loop once everything queued so far is durable."""

    @abc.abstractmethod
    def touch(self, key: Hashable, rows: Callable[[], list[Op]]) -> None:
        """Marks ``key`` dirty: ``rows()`` is called once at the next flush."""

    @abc.abstractmethod
    def commit(self) -> asyncio.Future[None] | None:
        """A future done once everything queued so far is durable; None if it already is."""

    @abc.abstractmethod
    async def load(self) -> Snapshot:
        """Everything stored, read once at start."""

    @abc.abstractmethod
    async def close(self, grace: float) -> None:
        """Flushes what is queued (waiting up to ``grace`` s), then closes."""


class MemoryJournal(Journal):
    """Nothing to persist: callbacks run at once, commits are immediate."""

    def add(self, op: Op) -> None:
        pass

    def after(self, callback: Callable[[], None]) -> None:
        callback()

    def touch(self, key: Hashable, rows: Callable[[], list[Op]]) -> None:
        pass

    def commit(self) -> asyncio.Future[None] | None:
        return None

    async def load(self) -> Snapshot:
        return Snapshot()

    async def close(self, grace: float) -> None:
        pass


class SqliteJournal(Journal):
    """Group commit to a SQLite file on one dedicated worker thread."""

    def __init__(self, path: Path, on_failure: Callable[[BaseException], None]) -> None:
        self._path = path
        self._file = _SqliteFile(path)
        self._on_failure = on_failure
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._ops: list[Op] = []
        self._callbacks: list[Callable[[], None]] = []
        self._dirty: dict[Hashable, Callable[[], list[Op]]] = {}
        self._waiters: list[asyncio.Future[None]] = []
        # Waiters for the flush in progress (for commit() when nothing is queued).
        self._inflight: list[asyncio.Future[None]] | None = None
        self._wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._draining = False
        self._failure: BaseException | None = None

    @property
    def path(self) -> Path:
        return self._path

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def load(self) -> Snapshot:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="bus-sqlite"
        )
        snap = await self._run(self._file.open)
        self._task = asyncio.create_task(self._flush_loop(), name="bus-journal-flush")
        return snap

    def add(self, op: Op) -> None:
        self._ops.append(op)
        self._wanted.set()

    def after(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)
        self._wanted.set()

    def touch(self, key: Hashable, rows: Callable[[], list[Op]]) -> None:
        self._dirty[key] = rows
        self._wanted.set()

    def commit(self) -> asyncio.Future[None] | None:
        if self._failure is not None:
            raise BusUnavailableError(f"bus storage failed: {self._failure!r}")
        queued = self._ops or self._callbacks or self._dirty
        if not queued and self._inflight is None:
            return None
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if queued:
            self._waiters.append(fut)
            self._wanted.set()
        else:
            assert self._inflight is not None
            self._inflight.append(fut)
        return fut

    async def _flush_loop(self) -> None:
        while True:
            if not (self._ops or self._callbacks or self._dirty or self._waiters):
                if self._draining:
                    return
                self._wanted.clear()
                await self._wanted.wait()
                continue
            ops, callbacks, waiters, dirty = self._ops, self._callbacks, self._waiters, self._dirty
            self._ops, self._callbacks, self._waiters, self._dirty = [], [], [], {}
            for rows in dirty.values():
                ops.extend(rows())
            self._inflight = waiters
            try:
                if ops:
                    await self._run(self._file.flush, ops)
            except asyncio.CancelledError:
                self._fail_waiters(waiters, "the bus closed before the change was durable")
                raise
            except Exception as exc:
                logger.exception("bus journal flush failed path=%s; the broker stops", self._path)
                self._failure = exc
                self._fail_waiters(waiters, f"bus storage failed: {exc!r}")
                self._on_failure(exc)
                return
            finally:
                self._inflight = None
            for cb in callbacks:
                try:
                    cb()
                except Exception:
                    logger.exception("bus journal callback failed")
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    def _fail_waiters(self, waiters: list[asyncio.Future[None]], message: str) -> None:
        for w in [*waiters, *self._waiters, *(self._inflight or [])]:
            if not w.done():
                w.set_exception(BusUnavailableError(message))
        self._waiters = []

    async def close(self, grace: float) -> None:
        """Lets what is queued become durable (within ``grace``), then releases the file."""
        task, self._task = self._task, None
        if task is not None:
            self._draining = True
            self._wanted.set()
            if not task.done():
                done, _ = await asyncio.wait({task}, timeout=grace)
                if not done:
                    task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        self._fail_waiters([], "the bus closed before the change was durable")
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            # Queued behind any flush still running on the thread.
            await asyncio.get_running_loop().run_in_executor(executor, self._file.close)
        finally:
            executor.shutdown(wait=True)
