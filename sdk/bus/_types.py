"""Values of the message bus: messages, streams, consumers, results.

The one definition of each: the SDK hands them out, and the server side
(``bus``: the brokers, the ``MessagingService`` servicer; the sidecar's relay
and bridges) takes and returns the same types. Each converts itself to and
from its ``ecosystem.v1.messaging`` message; checking a request at the edge
is the servicer's (``bus.convert``).
"""

from __future__ import annotations

import base64
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ecosystem.v1 import messaging_pb2 as pb

from sdk._types import frozen_mapping

__all__ = [
    "AckKind",
    "BusMessage",
    "ConsumerInfo",
    "DeliverPolicy",
    "MessageOwner",
    "PublishResult",
    "StreamConfig",
    "StreamInfo",
    "payload_dict",
]


class AckKind(enum.StrEnum):
    """How a durable delivery is settled (the WebSocket bridge's ``kind`` names)."""

    #: done: never deliver it again
    ACK = "ack"
    #: deliver it again (after a delay, if given)
    NAK = "nak"
    #: give up on it: never again, not dead-lettered
    TERM = "term"
    #: still working on it: restart its ack_wait
    IN_PROGRESS = "in_progress"

    def to_proto(self) -> pb.AckKind:
        return _ACK_TO_PB[self]


_ACK_TO_PB: dict[AckKind, pb.AckKind] = {
    AckKind.ACK: pb.ACK_KIND_ACK,
    AckKind.NAK: pb.ACK_KIND_NAK,
    AckKind.TERM: pb.ACK_KIND_TERM,
    AckKind.IN_PROGRESS: pb.ACK_KIND_IN_PROGRESS,
}


class DeliverPolicy(enum.StrEnum):
    """Where a new durable consumer starts (an existing one resumes where it was)."""

    #: the stream's first message (the default)
    ALL = "all"
    #: only messages published after the consumer is created
    NEW = "new"
    #: from ``start_sequence``
    BY_SEQUENCE = "by_sequence"
    #: from the first message at or after ``start_time``
    BY_TIME = "by_time"
    #: the last message, then new ones
    LAST = "last"

    def to_proto(self) -> pb.DeliverPolicy:
        return _DELIVER_TO_PB[self]


_DELIVER_TO_PB: dict[DeliverPolicy, pb.DeliverPolicy] = {
    DeliverPolicy.ALL: pb.DELIVER_POLICY_ALL,
    DeliverPolicy.NEW: pb.DELIVER_POLICY_NEW,
    DeliverPolicy.BY_SEQUENCE: pb.DELIVER_POLICY_BY_SEQUENCE,
    DeliverPolicy.BY_TIME: pb.DELIVER_POLICY_BY_TIME,
    DeliverPolicy.LAST: pb.DELIVER_POLICY_LAST,
}


class MessageOwner(Protocol):
    """What a message needs from the client that received it."""

    async def _settle(self, ack_id: str, kind: AckKind, delay: float) -> bool: ...

    async def _reply(self, subject: str, data: bytes, headers: Mapping[str, str]) -> None: ...


def payload_dict(data: bytes) -> dict[str, str]:
    """``{"data": text}`` for UTF-8 payloads, else base64 with ``"encoding": "base64"``."""
    try:
        return {"data": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"data": base64.b64encode(data).decode("ascii"), "encoding": "base64"}


@dataclass(frozen=True, slots=True, eq=False)
class BusMessage:
    """One message as a subscriber (or a requester) receives it.

    Durable deliveries (``durable`` is True) must be settled with
    :meth:`ack`, :meth:`nak`, :meth:`term` or extended with
    :meth:`in_progress`; otherwise they come again after the consumer's
    ``ack_wait``. Each of those returns False when the delivery was no
    longer pending (e.g. its ``ack_wait`` had passed and it went to another
    subscriber). A request's handler answers with :meth:`respond`.
    """

    subject: str
    data: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    #: the publisher's message id
    id: str = ""
    #: where a reply goes (request/reply); empty otherwise
    reply_to: str = ""
    #: durable messages: the stream that stored it and its sequence there
    stream: str = ""
    sequence: int = 0
    #: Unix time (seconds) when the broker accepted it
    published_at: float = 0.0
    #: durable deliveries: 1 the first time, 2… when redelivered
    delivery_count: int = 0
    ack_id: str = field(default="", repr=False)
    _owner: MessageOwner | None = field(default=None, repr=False, compare=False)

    @property
    def durable(self) -> bool:
        """True for a durable consumer's delivery (one to acknowledge)."""
        return bool(self.ack_id)

    @property
    def redelivered(self) -> bool:
        return self.delivery_count > 1

    @property
    def text(self) -> str:
        """The payload decoded as UTF-8 (UnicodeDecodeError if it is not)."""
        return self.data.decode("utf-8")

    async def ack(self) -> bool:
        """Done: never deliver it again."""
        return await self._settle(AckKind.ACK, 0.0)

    async def nak(self, delay: float = 0.0) -> bool:
        """Deliver it again, after ``delay`` seconds (at once by default)."""
        if delay < 0:
            raise ValueError("delay must not be negative")
        return await self._settle(AckKind.NAK, delay)

    async def term(self) -> bool:
        """Give up on it: never deliver it again, and do not dead-letter it."""
        return await self._settle(AckKind.TERM, 0.0)

    async def in_progress(self) -> bool:
        """Still working on it: restart its ``ack_wait`` timer."""
        return await self._settle(AckKind.IN_PROGRESS, 0.0)

    async def respond(
        self, data: bytes | str = b"", *, headers: Mapping[str, str] | None = None
    ) -> None:
        """Publishes ``data`` to ``reply_to``: the answer to a request."""
        if not self.reply_to:
            raise ValueError(f"the message on {self.subject!r} has no reply_to: nothing to answer")
        if self._owner is None:
            raise ValueError("this message was not received through a client")
        payload = data.encode() if isinstance(data, str) else bytes(data)
        await self._owner._reply(self.reply_to, payload, dict(headers or {}))

    async def _settle(self, kind: AckKind, delay: float) -> bool:
        if not self.ack_id:
            raise ValueError(
                f"the message on {self.subject!r} is not a durable delivery: nothing to settle"
            )
        if self._owner is None:
            raise ValueError("this message was not received through a client")
        return await self._owner._settle(self.ack_id, kind, delay)

    @classmethod
    def from_proto(cls, msg: pb.Message, owner: MessageOwner | None = None) -> BusMessage:
        return cls(
            subject=msg.subject,
            data=bytes(msg.data),
            headers=frozen_mapping(msg.headers),
            id=msg.id,
            reply_to=msg.reply_to,
            stream=msg.stream,
            sequence=msg.sequence,
            published_at=msg.published_at_ms / 1000,
            delivery_count=msg.delivery_count,
            ack_id=msg.ack_id,
            _owner=owner,
        )

    def to_dict(self) -> dict[str, Any]:
        """For JSON: ``data`` as text, or base64 with ``"encoding": "base64"``;
        stream fields only for stored messages, delivery fields only for
        durable deliveries."""
        out: dict[str, Any] = {"subject": self.subject, **payload_dict(self.data)}
        out["headers"] = dict(self.headers)
        if self.id:
            out["id"] = self.id
        if self.reply_to:
            out["reply_to"] = self.reply_to
        if self.stream:
            out["stream"] = self.stream
            out["sequence"] = self.sequence
        if self.durable:
            out["redelivered"] = self.redelivered
            out["delivery_count"] = self.delivery_count
        if self.published_at:
            out["published_at_ms"] = round(self.published_at * 1000)
        return out


@dataclass(frozen=True, slots=True)
class PublishResult:
    """Where a published message went: empty ``stream`` when no stream captured
    its subject (core only); ``duplicate`` when its id was seen within the
    stream's duplicate window (``sequence`` is then the first copy's)."""

    subject: str
    stream: str = ""
    sequence: int = 0
    duplicate: bool = False

    @property
    def stored(self) -> bool:
        return bool(self.stream)

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "stream": self.stream,
            "sequence": self.sequence,
            "duplicate": self.duplicate,
        }


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """A durable stream's settings; durations in seconds, 0 limits mean none."""

    name: str
    subjects: tuple[str, ...]
    max_age: float = 0.0
    max_msgs: int = 0
    max_bytes: int = 0
    duplicate_window: float = 120.0
    #: empty: ``eco.dlq.<name>``
    dead_letter_subject: str = ""

    @property
    def dlq_subject(self) -> str:
        """Where dead letters go: ``dead_letter_subject``, or ``eco.dlq.<name>``."""
        return self.dead_letter_subject or f"eco.dlq.{self.name}"

    @classmethod
    def from_proto(cls, msg: pb.StreamConfig) -> StreamConfig:
        return cls(
            name=msg.name,
            subjects=tuple(msg.subjects),
            max_age=msg.max_age_ms / 1000,
            max_msgs=msg.max_msgs,
            max_bytes=msg.max_bytes,
            duplicate_window=msg.duplicate_window_ms / 1000,
            dead_letter_subject=msg.dead_letter_subject,
        )

    def to_proto(self) -> pb.StreamConfig:
        """The message, naming the dead-letter subject in effect."""
        return pb.StreamConfig(
            name=self.name,
            subjects=list(self.subjects),
            max_age_ms=round(self.max_age * 1000),
            max_msgs=self.max_msgs,
            max_bytes=self.max_bytes,
            duplicate_window_ms=round(self.duplicate_window * 1000),
            dead_letter_subject=self.dlq_subject,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "subjects": list(self.subjects),
            "max_age_seconds": self.max_age,
            "max_msgs": self.max_msgs,
            "max_bytes": self.max_bytes,
            "duplicate_window_seconds": self.duplicate_window,
            "dead_letter_subject": self.dead_letter_subject,
        }


@dataclass(frozen=True, slots=True)
class ConsumerInfo:
    """A durable consumer of a stream."""

    name: str
    #: next sequence to deliver for the first time
    next_sequence: int
    #: delivered and not yet acknowledged
    pending: int
    redelivered: int = 0
    dead_lettered: int = 0
    #: connected subscribers
    subscribers: int = 0

    @classmethod
    def from_proto(cls, msg: pb.ConsumerInfo) -> ConsumerInfo:
        return cls(
            name=msg.name,
            next_sequence=msg.next_sequence,
            pending=msg.pending,
            redelivered=msg.redelivered,
            dead_lettered=msg.dead_lettered,
            subscribers=msg.subscribers,
        )

    def to_proto(self) -> pb.ConsumerInfo:
        return pb.ConsumerInfo(
            name=self.name,
            next_sequence=self.next_sequence,
            pending=self.pending,
            redelivered=self.redelivered,
            dead_lettered=self.dead_lettered,
            subscribers=self.subscribers,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "next_sequence": self.next_sequence,
            "pending": self.pending,
            "redelivered": self.redelivered,
            "dead_lettered": self.dead_lettered,
            "subscribers": self.subscribers,
        }


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """A durable stream: its settings, what it holds and its consumers."""

    config: StreamConfig
    messages: int
    bytes: int
    first_sequence: int
    last_sequence: int
    consumers: tuple[ConsumerInfo, ...] = ()
    #: Unix time, seconds
    created_at: float = 0.0

    @property
    def name(self) -> str:
        return self.config.name

    @classmethod
    def from_proto(cls, msg: pb.StreamInfo) -> StreamInfo:
        return cls(
            config=StreamConfig.from_proto(msg.config),
            messages=msg.messages,
            bytes=msg.bytes,
            first_sequence=msg.first_sequence,
            last_sequence=msg.last_sequence,
            consumers=tuple(ConsumerInfo.from_proto(c) for c in msg.consumers),
            created_at=msg.created_at_ms / 1000,
        )

    def to_proto(self) -> pb.StreamInfo:
        return pb.StreamInfo(
            config=self.config.to_proto(),
            messages=self.messages,
            bytes=self.bytes,
            first_sequence=self.first_sequence,
            last_sequence=self.last_sequence,
            consumers=[c.to_proto() for c in self.consumers],
            created_at_ms=round(self.created_at * 1000),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.config.to_dict(),
            "messages": self.messages,
            "bytes": self.bytes,
            "first_sequence": self.first_sequence,
            "last_sequence": self.last_sequence,
            "consumers": [c.to_dict() for c in self.consumers],
            "created_at_ms": round(self.created_at * 1000),
        }
