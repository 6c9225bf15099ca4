"""A job's memory between runs, in one SQLite file beside the job.

Three tables:

``entries``    what each side held at each path when the two were last known to
               agree (size, mtime, hashes, etag, version): the base of the
               three-way comparison. A row is written only after a transfer was
               verified, or when both sides were seen equal.
``journal``    transfers planned or in flight, with the connector's last resume
               token, so a run killed with -9 resumes a multipart upload instead
               of starting it again.
``conflicts``  the manual conflict queue: paths changed on both sides, and the
               choice ``eco sync resolve`` recorded for the next run.

WAL with ``synchronous=NORMAL``: a commit survives the process being killed
(not a power cut), at a cost small enough to commit after every transfer.
The engine calls this from the event loop's thread only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.sync.connectors._base import Entry, ResumeToken

__all__ = ["JobBusyError", "QueuedConflict", "StateStore", "entry_from_json", "entry_to_json"]

SIDES = ("source", "destination")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    side TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL, mtime REAL NOT NULL,
    hashes TEXT NOT NULL, etag TEXT, version TEXT, is_dir INTEGER NOT NULL,
    PRIMARY KEY (side, path)
);
CREATE TABLE IF NOT EXISTS journal (
    path TEXT NOT NULL, direction TEXT NOT NULL, size INTEGER NOT NULL, mtime REAL NOT NULL,
    token TEXT, updated REAL NOT NULL, PRIMARY KEY (path, direction)
);
CREATE TABLE IF NOT EXISTS conflicts (
    path TEXT PRIMARY KEY, source TEXT, destination TEXT, detected REAL NOT NULL,
    resolution TEXT
);
"""


def entry_to_json(entry: Entry | None) -> str | None:
    if entry is None:
        return None
    return json.dumps(
        {
            "path": entry.path,
            "size": entry.size,
            "mtime": entry.mtime,
            "hashes": dict(entry.hashes),
            "etag": entry.etag,
            "version": entry.version,
            "is_dir": entry.is_dir,
        }
    )


def entry_from_json(text: str | None) -> Entry | None:
    if text is None:
        return None
    data = json.loads(text)
    return Entry(**data)


class JobBusyError(RuntimeError):
    """Another run of the same job (the same state file) is under way."""


@dataclass(frozen=True, slots=True)
class QueuedConflict:
    """A path waiting for ``eco sync resolve`` (or resolved, to apply next run)."""

    path: str
    source: Entry | None
    destination: Entry | None
    detected: float
    resolution: str | None  # None, "source", "destination", "both"

    def to_dict(self) -> dict[str, Any]:
        def side(entry: Entry | None) -> dict[str, Any] | None:
            if entry is None:
                return None
            return {"size": entry.size, "mtime": entry.mtime}

        return {
            "path": self.path,
            "source": side(self.source),
            "destination": side(self.destination),
            "detected": self.detected,
            "resolution": self.resolution,
        }


class StateStore:
    """The job's state database. ``read_only`` (a dry run) never creates nor
    writes the file: a missing one reads as empty, an existing one is opened
    read-only and every write is dropped."""

    def __init__(self, path: str, *, read_only: bool = False, exclusive: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self.exclusive = exclusive
        self._db: sqlite3.Connection | None = None
        self._lock: int | None = None
        # Inside grouped(): [transactions since the last commit, commit every].
        self._group: list[int] | None = None

    def open(self) -> StateStore:
        if self.read_only and (not self.path or not os.path.exists(self.path)):
            self._db = sqlite3.connect(":memory:")
            self._db.executescript(_SCHEMA)
            return self
        if self.read_only:
            self._db = sqlite3.connect(f"file:{Path(self.path).as_posix()}?mode=ro", uri=True)
            return self
        if self.path:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            if self.exclusive:
                self._take_lock()
        db = sqlite3.connect(self.path or ":memory:", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
        self._db = db
        return self

    def _take_lock(self) -> None:
        """One run of a job at a time: a second would transfer the same files
        and interleave its state with the first's. The lock is the kernel's
        (flock), so a run killed with -9 leaves nothing to clean up."""
        lock = f"{self.path}.lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            message = f"another run of this job is in progress (it holds {lock})"
            raise JobBusyError(message) from None
        self._lock = fd

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor releases the lock
            self._lock = None

    def __enter__(self) -> StateStore:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("state store is not open")
        return self._db

    def _write(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        if not self.read_only:
            self.db.execute(sql, params)

    # -- the stores this state belongs to -----------------------------------

    def bind(self, source: str, destination: str) -> bool:
        """Ties the state to the two URLs; state kept for other URLs is dropped
        (it describes other stores). Returns whether what the store holds is
        this pair's (False: it was another pair's, and is dropped)."""
        rows = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        if rows.get("source") == source and rows.get("destination") == destination:
            return True
        with self.transaction():
            self._write("DELETE FROM entries")
            self._write("DELETE FROM journal")
            self._write("DELETE FROM conflicts")
            self._write("INSERT OR REPLACE INTO meta VALUES ('source', ?)", (source,))
            self._write("INSERT OR REPLACE INTO meta VALUES ('destination', ?)", (destination,))
        return not rows

    # -- the base of the comparison ----------------------------------------

    def bases(self) -> Iterator[tuple[str, str, Entry]]:
        """Every recorded (side, path, entry)."""
        for side, path, size, mtime, hashes, etag, version, is_dir in self.db.execute(
            "SELECT side, path, size, mtime, hashes, etag, version, is_dir FROM entries"
        ):
            yield (
                side,
                path,
                Entry(path, size, mtime, json.loads(hashes), etag, version, bool(is_dir)),
            )

    def record(self, path: str, source: Entry, destination: Entry) -> None:
        """Both sides agree at ``path`` now (after a verified transfer, or seen equal)."""
        with self.transaction():
            for side, entry in zip(SIDES, (source, destination), strict=True):
                self._write(
                    "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        side,
                        path,
                        entry.size,
                        entry.mtime,
                        json.dumps(dict(entry.hashes)),
                        entry.etag,
                        entry.version,
                        int(entry.is_dir),
                    ),
                )
            self._write("DELETE FROM journal WHERE path = ?", (path,))
            self._write("DELETE FROM conflicts WHERE path = ?", (path,))

    def forget(self, path: str) -> None:
        """The path is gone from both sides."""
        with self.transaction():
            self._write("DELETE FROM entries WHERE path = ?", (path,))
            self._write("DELETE FROM journal WHERE path = ?", (path,))
            self._write("DELETE FROM conflicts WHERE path = ?", (path,))

    # -- transfers in flight -----------------------------------------------

    def journal(self) -> dict[tuple[str, str], tuple[int, float, ResumeToken | None]]:
        """(path, direction) → (size, mtime, resume token) of unfinished transfers."""
        return {
            (path, direction): (size, mtime, json.loads(token) if token else None)
            for path, direction, size, mtime, token in self.db.execute(
                "SELECT path, direction, size, mtime, token FROM journal"
            )
        }

    def begin(self, path: str, direction: str, size: int, mtime: float) -> None:
        self._write(
            "INSERT INTO journal VALUES (?, ?, ?, ?, NULL, ?)"
            " ON CONFLICT (path, direction) DO UPDATE SET"
            " token = CASE WHEN size = excluded.size AND mtime = excluded.mtime"
            " THEN token ELSE NULL END, size = excluded.size, mtime = excluded.mtime,"
            " updated = excluded.updated",
            (path, direction, size, mtime, time.time()),
        )

    def checkpoint(self, path: str, direction: str, token: ResumeToken) -> None:
        self._write(
            "UPDATE journal SET token = ?, updated = ? WHERE path = ? AND direction = ?",
            (json.dumps(dict(token)), time.time(), path, direction),
        )

    def clear_journal(self) -> None:
        self._write("DELETE FROM journal")

    # -- the manual conflict queue -----------------------------------------

    def queue(self, path: str, source: Entry | None, destination: Entry | None) -> None:
        """Queues a conflict (its resolution, if any, is kept: it is still wanted)."""
        self._write(
            "INSERT INTO conflicts VALUES (?, ?, ?, ?, NULL) ON CONFLICT (path) DO UPDATE SET"
            " source = excluded.source, destination = excluded.destination",
            (path, entry_to_json(source), entry_to_json(destination), time.time()),
        )

    def conflicts(self) -> list[QueuedConflict]:
        return [
            QueuedConflict(path, entry_from_json(src), entry_from_json(dst), detected, resolution)
            for path, src, dst, detected, resolution in self.db.execute(
                "SELECT path, source, destination, detected, resolution FROM conflicts"
                " ORDER BY path"
            )
        ]

    def resolve(self, path: str, keep: str) -> bool:
        """Records the choice for ``path``; False when no such conflict is queued."""
        if keep not in ("source", "destination", "both"):
            raise ValueError(f"keep: source, destination or both, not {keep!r}")
        cursor = self.db.execute("UPDATE conflicts SET resolution = ? WHERE path = ?", (keep, path))
        return cursor.rowcount > 0

    def transaction(self) -> _Transaction:
        return _Transaction(self)

    @contextlib.contextmanager
    def grouped(self, every: int = 5000) -> Iterator[None]:
        """Commits the transactions inside ``every`` at a time, not one by
        one: bookkeeping of a million paths (each a record or a forget)
        costs a commit per path otherwise. What a kill loses is bookkeeping
        the next run redoes; not for transfers, which commit each."""
        if self.read_only or self._group is not None:
            yield
            return
        self.db.execute("BEGIN IMMEDIATE")
        self._group = [0, every]
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")
        finally:
            self._group = None

    def _grouped_commit(self) -> None:
        """One more transaction done inside :meth:`grouped`."""
        group = self._group
        assert group is not None
        group[0] += 1
        if group[0] >= group[1]:
            group[0] = 0
            self.db.execute("COMMIT")
            self.db.execute("BEGIN IMMEDIATE")


class _Transaction:
    """BEGIN … COMMIT (ROLLBACK on an exception); nothing on a read-only store.
    Inside :meth:`StateStore.grouped`, part of the group's transaction."""

    def __init__(self, store: StateStore) -> None:
        self._store = store

    def __enter__(self) -> None:
        if not self._store.read_only and self._store._group is None:
            self._store.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self._store.read_only:
            return
        if self._store._group is not None:
            if exc_type is None:
                self._store._grouped_commit()
            return  # an error rolls the whole group back as it passes out
        self._store.db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
