"""The embedded broker's streams in memory: messages by sequence, limits, de-duplication.

A `Stream` is the authoritative copy; the journal (`_journal`) only makes
it durable. Sequences are assigned at publish (``last_seq``) but consumers see a
message only once its journal flush has committed (``stored_seq``), so nothing a
crash could lose is ever delivered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sdk import ConsumerInfo, StreamConfig, StreamInfo

from ._journal import Op

__all__ = [
    "SQL_DELETE_STREAM",
    "SQL_DROP_MESSAGES",
    "SQL_INSERT_MESSAGE",
    "SQL_INSERT_STREAM",
    "StoredMessage",
    "Stream",
    "config_from_json",
    "config_to_json",
    "message_size",
    "same_config",
]

SQL_INSERT_MESSAGE = "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)"
SQL_DROP_MESSAGES = "DELETE FROM messages WHERE stream = ? AND seq < ?"
SQL_INSERT_STREAM = "INSERT INTO streams VALUES (?, ?, ?, ?)"
_SQL_STREAM_LAST_SEQ = "UPDATE streams SET last_seq = ? WHERE name = ?"
#: every statement takes the stream's name
SQL_DELETE_STREAM = [
    f"DELETE FROM {table} WHERE {column} = ?"
    for table, column in (
        ("streams", "name"),
        ("messages", "stream"),
        ("consumers", "stream"),
        ("acks", "stream"),
        ("deliveries", "stream"),
    )
]


@dataclass(slots=True, eq=False)
class StoredMessage:
    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]
    id: str
    #: Unix time, seconds
    published_at: float
    #: what counts against ``max_bytes``
    size: int


def message_size(subject: str, data: bytes, headers: dict[str, str]) -> int:
    """Bytes a message counts for in a stream: payload, subject and headers."""
    return len(data) + len(subject) + sum(len(k) + len(v) + 2 for k, v in headers.items())


def config_to_json(config: StreamConfig) -> str:
    return json.dumps(
        {
            "name": config.name,
            "subjects": list(config.subjects),
            "max_age": config.max_age,
            "max_msgs": config.max_msgs,
            "max_bytes": config.max_bytes,
            "duplicate_window": config.duplicate_window,
            "dead_letter_subject": config.dead_letter_subject,
        }
    )


def config_from_json(text: str) -> StreamConfig:
    raw: dict[str, Any] = json.loads(text)
    return StreamConfig(
        name=raw["name"],
        subjects=tuple(raw["subjects"]),
        max_age=float(raw["max_age"]),
        max_msgs=int(raw["max_msgs"]),
        max_bytes=int(raw["max_bytes"]),
        duplicate_window=float(raw["duplicate_window"]),
        dead_letter_subject=raw["dead_letter_subject"],
    )


def same_config(a: StreamConfig, b: StreamConfig) -> bool:
    """Equal but for the order (and repetition) of subjects."""
    return a == b or (
        sorted(set(a.subjects)) == sorted(set(b.subjects))
        and a.name == b.name
        and a.max_age == b.max_age
        and a.max_msgs == b.max_msgs
        and a.max_bytes == b.max_bytes
        and a.duplicate_window == b.duplicate_window
        and a.dead_letter_subject == b.dead_letter_subject
    )


class Stream:
    """One durable stream's messages and counters (the consumers live in the broker)."""

    def __init__(self, config: StreamConfig, created_at: float, last_seq: int = 0) -> None:
        self.config = config
        self.created_at = created_at
        #: seq -> message, oldest first (limits only ever remove from the front)
        self.messages: dict[int, StoredMessage] = {}
        self.last_seq = last_seq
        #: the newest sequence that is durable (consumers deliver up to it)
        self.stored_seq = last_seq
        self.bytes = 0
        #: message id -> (sequence, Unix time first seen), oldest first
        self._dedupe: dict[str, tuple[int, float]] = {}
        self.deleted = False

    @property
    def name(self) -> str:
        return self.config.name

    def rows(self) -> list[Op]:
        """The stream's counters, for the journal's next flush."""
        if self.deleted:
            return []
        return [(_SQL_STREAM_LAST_SEQ, (self.last_seq, self.name))]

    @property
    def first_seq(self) -> int:
        for seq in self.messages:
            return seq
        return self.last_seq + 1

    def restore(self, msg: StoredMessage, now: float) -> None:
        """Adds a message loaded from the journal (in sequence order)."""
        self.messages[msg.seq] = msg
        self.bytes += msg.size
        self.last_seq = max(self.last_seq, msg.seq)
        self.stored_seq = self.last_seq
        window = self.config.duplicate_window
        if msg.id and window > 0 and msg.published_at > now - window:
            self._dedupe[msg.id] = (msg.seq, msg.published_at)

    def duplicate_of(self, msg_id: str, now: float) -> int:
        """The sequence of an earlier message with this id within the window, else 0."""
        window = self.config.duplicate_window
        if not msg_id or window <= 0:
            return 0
        self.prune_dedupe(now)
        hit = self._dedupe.get(msg_id)
        return hit[0] if hit is not None else 0

    def prune_dedupe(self, now: float) -> None:
        horizon = now - self.config.duplicate_window
        dedupe = self._dedupe
        while dedupe:
            key = next(iter(dedupe))
            if dedupe[key][1] > horizon:
                break
            del dedupe[key]

    def append(
        self, subject: str, data: bytes, headers: dict[str, str], msg_id: str, now: float
    ) -> StoredMessage:
        self.last_seq += 1
        msg = StoredMessage(
            self.last_seq, subject, data, headers, msg_id, now, message_size(subject, data, headers)
        )
        self.messages[msg.seq] = msg
        self.bytes += msg.size
        if msg_id and self.config.duplicate_window > 0:
            self._dedupe[msg_id] = (msg.seq, now)
        return msg

    def enforce_limits(self, now: float) -> int:
        """Drops the oldest messages over ``max_msgs``/``max_bytes`` (the newest always
        stays) and those older than ``max_age``; the new first sequence if any went, else 0."""
        cfg = self.config
        messages = self.messages
        dropped = False
        while len(messages) > 1 and (
            (cfg.max_msgs and len(messages) > cfg.max_msgs)
            or (cfg.max_bytes and self.bytes > cfg.max_bytes)
        ):
            self._drop_oldest()
            dropped = True
        if cfg.max_age > 0:
            horizon = now - cfg.max_age
            while messages:
                oldest = messages[next(iter(messages))]
                if oldest.published_at > horizon:
                    break
                self._drop_oldest()
                dropped = True
        return self.first_seq if dropped else 0

    def next_expiry(self) -> float | None:
        """When (Unix time) the oldest message outlives ``max_age``; None: never."""
        if self.config.max_age <= 0 or not self.messages:
            return None
        return self.messages[next(iter(self.messages))].published_at + self.config.max_age

    def _drop_oldest(self) -> None:
        seq = next(iter(self.messages))
        self.bytes -= self.messages.pop(seq).size

    def first_at_or_after(self, when: float) -> int:
        """The first sequence published at or after ``when`` (else the next one)."""
        for seq, msg in self.messages.items():
            if msg.published_at >= when:
                return seq
        return self.last_seq + 1

    def info(self, consumers: tuple[ConsumerInfo, ...]) -> StreamInfo:
        return StreamInfo(
            config=self.config,
            messages=len(self.messages),
            bytes=self.bytes,
            first_sequence=self.first_seq,
            last_sequence=self.last_seq,
            consumers=consumers,
            created_at=self.created_at,
        )
