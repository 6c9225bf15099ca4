"""The relay's outbox: publishes made while the broker is unreachable.

Bounded (messages and bytes, together across memory and disk) and in
order. Messages for subjects a durable stream captures are also written to
a small SQLite file in the sidecar's data_dir before ``publish`` returns, so
a sidecar restart does not lose them; core messages live in memory only
(at most once anyway). The file also remembers the subjects the durable
streams captured when last seen, so a sidecar restarted while the control
plane is down still knows which publishes to keep on disk, and the broker
the control plane named last, so that such a sidecar relays to it at once.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bus import BusUnavailableError, OutgoingMessage

__all__ = ["BUFFER_FILE", "Outbox", "Queued"]

logger = logging.getLogger(__name__)

BUFFER_FILE = "bus-relay.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    subject TEXT NOT NULL,
    data BLOB NOT NULL,
    headers TEXT NOT NULL,
    id TEXT NOT NULL,
    reply_to TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS captured (pattern TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS remembered (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Queued:
    """One buffered publish; ``row`` is its row in the file (None: memory only)."""

    message: OutgoingMessage
    row: int | None

    @property
    def size(self) -> int:
        headers = sum(len(k) + len(v) for k, v in self.message.headers.items())
        return len(self.message.subject) + len(self.message.data) + headers


class Outbox:
    """FIFO of buffered publishes; ``open()`` loads what a previous run left on disk."""

    def __init__(self, path: Path | None, *, max_messages: int, max_bytes: int) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("the relay buffer limits must be positive")
        self._path = path
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._items: deque[Queued] = deque()
        self._bytes = 0
        self._db: sqlite3.Connection | None = None

    def open(self) -> list[str]:
        """Opens the file and loads its messages; returns the remembered captured patterns."""
        if self._path is None:
            return []
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._path, isolation_level=None)
        # WAL with NORMAL sync survives the process being killed (not power loss).
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        self._db = db
        rows = db.execute(
            "SELECT seq, subject, data, headers, id, reply_to FROM outbox ORDER BY seq"
        ).fetchall()
        for seq, subject, data, headers, id_, reply_to in rows:
            message = OutgoingMessage(
                subject=subject,
                data=bytes(data),
                headers=json.loads(headers),
                id=id_,
                reply_to=reply_to,
            )
            self._append(Queued(message, int(seq)))
        if rows:
            logger.info("bus relay: %d buffered publish(es) loaded from %s", len(rows), self._path)
        return [p for (p,) in db.execute("SELECT pattern FROM captured")]

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def remember_captured(self, patterns: Iterable[str]) -> None:
        if self._db is None:
            return
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM captured")
            self._db.executemany("INSERT INTO captured VALUES (?)", [(p,) for p in patterns])

    def remembered_broker(self) -> str | None:
        """The broker URL the control plane named last ("" for itself), or None
        when it never did (or there is no file)."""
        if self._db is None:
            return None
        row = self._db.execute("SELECT value FROM remembered WHERE key = 'broker'").fetchone()
        return str(row[0]) if row is not None else None

    def remember_broker(self, url: str) -> None:
        if self._db is not None:
            self._db.execute("INSERT OR REPLACE INTO remembered VALUES ('broker', ?)", (url,))

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        return self._bytes

    def push(self, message: OutgoingMessage, *, durable: bool, unreachable: str) -> None:
        """Appends ``message`` (to disk too when ``durable``); BusUnavailableError
        (saying that ``unreachable`` cannot be reached) when full."""
        item = Queued(message, None)
        if len(self._items) >= self._max_messages or self._bytes + item.size > self._max_bytes:
            raise BusUnavailableError(
                f"{unreachable} is unreachable and the relay buffer is full "
                f"({len(self._items)} messages, {self._bytes} bytes)"
            )
        if durable and self._db is not None:
            cursor = self._db.execute(
                "INSERT INTO outbox (subject, data, headers, id, reply_to) VALUES (?, ?, ?, ?, ?)",
                (
                    message.subject,
                    message.data,
                    json.dumps(dict(message.headers)),
                    message.id,
                    message.reply_to,
                ),
            )
            item = Queued(message, cursor.lastrowid)
        self._append(item)

    def _append(self, item: Queued) -> None:
        self._items.append(item)
        self._bytes += item.size

    def peek(self) -> Queued | None:
        return self._items[0] if self._items else None

    def pop(self) -> None:
        """Removes the first message (sent, or given up on)."""
        item = self._items.popleft()
        self._bytes -= item.size
        if item.row is not None and self._db is not None:
            self._db.execute("DELETE FROM outbox WHERE seq = ?", (item.row,))

    def drop_memory(self) -> int:
        """Forgets the memory-only messages (on close); returns how many."""
        kept = deque(i for i in self._items if i.row is not None)
        lost = len(self._items) - len(kept)
        self._items = kept
        self._bytes = sum(i.size for i in kept)
        return lost
