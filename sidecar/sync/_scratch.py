"""A run's scratch database: both listings, then the plan's actions, on disk.

A bucket of 10 million objects does not fit in a process's memory as
:class:`Entry` objects (about 600 bytes each, per side). So each side's
listing streams into a table of its own (batched inserts), the planner walks
the union of the two listings and the job's state in path order through one
SQL cursor, and every action it decides goes to a third table, from which
the executor is fed after the deletion guard has seen the plan's totals.
What stays in memory is bounded: a batch of rows, SQLite's page cache
(:data:`CACHE_KIB`), and the capped decisions of the report.

The file is scratch: no journal, no fsync, deleted on close. A run with a
state file keeps it beside that file (``NAME.db.scratch``, on the same disk,
replaced if a killed run left one); a dry run (which must not write beside
the state) and a run without a state file keep it in the system's temporary
directory (``TMPDIR``). SQLite's own sort space follows ``SQLITE_TMPDIR``
or ``TMPDIR``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from sidecar.sync._plan import Action
from sidecar.sync._state import entry_from_json, entry_to_json
from sidecar.sync.connectors._base import Entry

__all__ = ["BATCH", "CACHE_KIB", "Scratch"]

#: Rows per insert (one statement, one implicit transaction) and per fetch.
BATCH = 2000

#: SQLite's page cache for the scratch file, KiB.
CACHE_KIB = 8192

_TABLES = {"source": "listed_source", "destination": "listed_destination"}

_SCHEMA = """
CREATE TABLE listed_source (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime REAL NOT NULL, hashes TEXT,
    etag TEXT, version TEXT, is_dir INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE listed_destination (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime REAL NOT NULL, hashes TEXT,
    etag TEXT, version TEXT, is_dir INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE actions (
    seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, path TEXT NOT NULL, side TEXT NOT NULL,
    source TEXT, destination TEXT, rename TEXT NOT NULL
);
CREATE TABLE entries (
    side TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL, mtime REAL NOT NULL,
    hashes TEXT NOT NULL, etag TEXT, version TEXT, is_dir INTEGER NOT NULL,
    PRIMARY KEY (side, path)
);
"""

_COLUMNS = "size, mtime, hashes, etag, version, is_dir"


def _row(entry: Entry) -> tuple[Any, ...]:
    # The hashes as the state file keeps them (JSON), so that an entry equal
    # to its base is found equal in SQL, without building either.
    hashes = json.dumps(dict(entry.hashes)) if entry.hashes else "{}"
    return (entry.path, entry.size, entry.mtime, hashes, entry.etag, entry.version, entry.is_dir)


def _entry(path: str, row: tuple[Any, ...], at: int) -> Entry | None:
    size, mtime, hashes, etag, version, is_dir = row[at : at + 6]
    if size is None:
        return None
    parsed = json.loads(hashes) if hashes != "{}" else {}
    return Entry(path, size, mtime, parsed, etag, version, bool(is_dir))


def _same(a: str, b: str) -> str:
    """SQL: row ``a`` holds exactly what row ``b`` does (then the planner's
    ``unchanged`` is true of them too)."""
    return " AND ".join(
        f"{a}.{c} = {b}.{c}" if c in ("size", "mtime", "is_dir") else f"{a}.{c} IS {b}.{c}"
        for c in _COLUMNS.split(", ")
    )


#: A path's source, destination, source base and destination base entries.
Entries = tuple[Entry | None, Entry | None, Entry | None, Entry | None]


class Scratch:
    """The scratch file of one run (``beside``: the state file to sit next
    to, or "" for the temporary directory). ``bases`` is read from the job's
    state file attached read-only, when given."""

    def __init__(self, beside: str = "") -> None:
        self._beside = beside
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._path = ""
        self._db: sqlite3.Connection | None = None
        self._base = "main"

    def open(self) -> Scratch:
        if self._beside:
            self._path = f"{self._beside}.scratch"
            Path(self._path).unlink(missing_ok=True)  # a killed run's
        else:
            self._dir = tempfile.TemporaryDirectory(prefix="eco-sync-")
            self._path = os.path.join(self._dir.name, "scratch.db")
        db = sqlite3.connect(self._path, isolation_level=None, uri=False)
        # Private to the run: an exclusive lock kept for the connection's life
        # spares a lock and a cache check per statement (6x faster inserts).
        db.execute("PRAGMA main.locking_mode=EXCLUSIVE")
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("PRAGMA temp_store=FILE")
        db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        db.executescript(_SCHEMA)
        self._db = db
        return self

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
        elif self._path:
            Path(self._path).unlink(missing_ok=True)
        self._path = ""

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("scratch database is not open")
        return self._db

    def attach_bases(self, state_path: str) -> None:
        """Reads the last run's bases from the job's state file (read-only);
        none when there is no file (a first dry run, a run without state)."""
        if not state_path or not os.path.exists(state_path):
            return
        uri = f"file:{Path(state_path).as_posix()}?mode=ro"
        self.db.execute("ATTACH DATABASE ? AS state", (uri,))
        self._base = "state"

    # -- listings ----------------------------------------------------------

    def clear(self, side: str) -> None:
        """Drops what a side listed (its listing starts again)."""
        self.db.execute(f"DELETE FROM {_TABLES[side]}")

    async def fill(self, side: str, entries: AsyncIterator[Entry], on_entry: Any = None) -> int:
        """Stores a side's listing as it streams in, :data:`BATCH` rows at a
        time (a path listed twice keeps its last entry); returns the count
        of rows received. ``on_entry()`` is called per entry (progress)."""
        sql = f"INSERT OR REPLACE INTO {_TABLES[side]} VALUES (?, ?, ?, ?, ?, ?, ?)"
        batch: list[tuple[Any, ...]] = []
        count = 0
        async for entry in entries:
            batch.append(_row(entry))
            count += 1
            if on_entry is not None:
                on_entry()
            if len(batch) >= BATCH:
                self.db.executemany(sql, batch)
                batch.clear()
        if batch:
            self.db.executemany(sql, batch)
        return count

    def walk(self) -> Iterator[tuple[str, Entries | None]]:
        """Every path listed on a side or held in the state, in path order,
        with its :data:`Entries`; None instead when both sides list it
        exactly as their base (the common case, not worth building)."""
        base = self._base
        cols = ", ".join(
            f"{alias}.{c}" for alias in ("s", "d", "bs", "bd") for c in _COLUMNS.split(", ")
        )
        sql = (
            f"SELECT k.path, {cols}, ({_same('s', 'bs')} AND {_same('d', 'bd')}) FROM ("
            " SELECT path FROM listed_source UNION SELECT path FROM listed_destination"
            f" UNION SELECT path FROM {base}.entries"
            ") AS k"
            " LEFT JOIN listed_source s ON s.path = k.path"
            " LEFT JOIN listed_destination d ON d.path = k.path"
            f" LEFT JOIN {base}.entries bs ON bs.side = 'source' AND bs.path = k.path"
            f" LEFT JOIN {base}.entries bd ON bd.side = 'destination' AND bd.path = k.path"
            " ORDER BY k.path"
        )
        cursor = self.db.execute(sql)
        try:
            while rows := cursor.fetchmany(BATCH):
                for row in rows:
                    path = row[0]
                    if row[25]:
                        yield path, None
                        continue
                    yield (
                        path,
                        (
                            _entry(path, row, 1),
                            _entry(path, row, 7),
                            _entry(path, row, 13),
                            _entry(path, row, 19),
                        ),
                    )
        finally:
            cursor.close()

    def occupied(self, directory: str) -> bool:
        """Whether either side lists a file under ``directory``."""
        low, high = f"{directory}/", f"{directory}0"  # "0" follows "/" in byte order
        for table in _TABLES.values():
            found = self.db.execute(
                f"SELECT 1 FROM {table} WHERE path >= ? AND path < ? AND NOT is_dir LIMIT 1",
                (low, high),
            ).fetchone()
            if found is not None:
                return True
        return False

    # -- the plan's actions ------------------------------------------------

    def sink(self) -> ActionWriter:
        return ActionWriter(self.db)

    def actions(self, kinds: tuple[str, ...]) -> Iterator[Action]:
        """The stored actions of ``kinds``, in the order they were decided."""
        marks = ", ".join("?" for _ in kinds)
        cursor = self.db.execute(
            "SELECT kind, path, side, source, destination, rename FROM actions"
            f" WHERE kind IN ({marks}) ORDER BY seq",
            kinds,
        )
        try:
            while rows := cursor.fetchmany(BATCH):
                for kind, path, side, source, destination, rename in rows:
                    yield Action(
                        kind,
                        path,
                        side,
                        entry_from_json(source),
                        entry_from_json(destination),
                        rename,
                    )
        finally:
            cursor.close()


class ActionWriter:
    """Collects actions into the scratch table, :data:`BATCH` per insert;
    :meth:`flush` writes the rest."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._batch: list[tuple[Any, ...]] = []

    def __call__(self, action: Action) -> None:
        self._batch.append(
            (
                action.kind,
                action.path,
                action.side,
                entry_to_json(action.source),
                entry_to_json(action.destination),
                action.rename,
            )
        )
        if len(self._batch) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if self._batch:
            self._db.executemany(
                "INSERT INTO actions (kind, path, side, source, destination, rename)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                self._batch,
            )
            self._batch.clear()
