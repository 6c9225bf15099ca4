"""Durable consumers of the embedded broker: position, pending acks, redelivery.

A `Consumer` is a named cursor over one stream (``next_seq``: the next sequence to
deliver for the first time) and the deliveries not yet acknowledged (``pending``,
in sequence order). Each pending entry is in one of three states:

- ``DUE``: to be (re)delivered as soon as a subscriber has room;
- ``RESERVED``: picked for delivery, waiting for the journal to record it;
- ``IN_FLIGHT``: in a subscriber's buffer or with the client; its timer (in the
  broker's scheduler) makes it ``DUE`` again after ``ack_wait`` or the backoff.

The broker's dispatcher calls `Consumer.collect` to pick deliveries, commits the
journal once for all consumers, then `Consumer.hand_out`. So a delivery reaches a
client only once the consumer's position past it is durable: after a crash, every
message a client may have seen and not acknowledged comes back marked redelivered.

Persisted (see `_journal`): the consumer row (``next_seq``, ack floor,
config), out-of-order acks above the floor, and delivery counts above one. What is
pending is recomputed from those on load, every entry ``DUE``.
"""

from __future__ import annotations

import enum
import json
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from bus._errors import AckNotFoundError
from bus._protocol import Delivery
from bus.subjects import subject_matches
from sdk import AckKind, ConsumerInfo

from ._journal import Journal, Op
from ._streams import StoredMessage, Stream
from ._subscriptions import SubscriptionBase

__all__ = [
    "Consumer",
    "ConsumerConfig",
    "DurableSubscription",
    "Host",
    "format_ack_id",
    "parse_ack_id",
]

#: Most deliveries one consumer picks per dispatcher round.
_BATCH = 1024
#: Most stream sequences one consumer skips (filtered out) per round.
_SCAN = 10_000

SQL_INSERT_CONSUMER = "INSERT OR REPLACE INTO consumers VALUES (?, ?, ?, ?, ?, ?)"
_SQL_UPDATE_CONSUMER = (
    "UPDATE consumers SET config = ?, next_seq = ?, ack_floor = ?, dead_lettered = ?"
    " WHERE stream = ? AND name = ?"
)
_SQL_PRUNE_ACKS = "DELETE FROM acks WHERE stream = ? AND consumer = ? AND seq <= ?"
_SQL_PRUNE_DELIVERIES = "DELETE FROM deliveries WHERE stream = ? AND consumer = ? AND seq <= ?"
_SQL_INSERT_ACK = "INSERT OR IGNORE INTO acks VALUES (?, ?, ?)"
_SQL_PUT_DELIVERIES = "INSERT OR REPLACE INTO deliveries VALUES (?, ?, ?, ?)"


def format_ack_id(stream: str, consumer: str, seq: int, count: int) -> str:
    # Names hold no '.', so the id splits back unambiguously.
    return f"{stream}.{consumer}.{seq}.{count}"


def parse_ack_id(ack_id: str) -> tuple[str, str, int, int] | None:
    parts = ack_id.split(".")
    if len(parts) != 4 or not parts[2].isdigit() or not parts[3].isdigit():
        return None
    return parts[0], parts[1], int(parts[2]), int(parts[3])


@dataclass(frozen=True, slots=True)
class ConsumerConfig:
    filter: str
    ack_wait: float
    max_deliver: int
    max_ack_pending: int
    backoff: tuple[float, ...] = ()

    def wait(self, count: int) -> float:
        """How long delivery number ``count`` may stay unacknowledged."""
        if self.backoff:
            return self.backoff[min(count, len(self.backoff)) - 1]
        return self.ack_wait

    def to_json(self) -> str:
        return json.dumps(
            {
                "filter": self.filter,
                "ack_wait": self.ack_wait,
                "max_deliver": self.max_deliver,
                "max_ack_pending": self.max_ack_pending,
                "backoff": list(self.backoff),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ConsumerConfig:
        raw: dict[str, Any] = json.loads(text)
        return cls(
            filter=raw["filter"],
            ack_wait=float(raw["ack_wait"]),
            max_deliver=int(raw["max_deliver"]),
            max_ack_pending=int(raw["max_ack_pending"]),
            backoff=tuple(float(b) for b in raw["backoff"]),
        )


class Host(Protocol):
    """What a consumer needs from its broker."""

    @property
    def journal(self) -> Journal: ...

    def now(self) -> float:
        """The scheduler's clock (monotonic seconds)."""
        ...

    def schedule(self, deadline: float, consumer: Consumer, seq: int, token: int) -> None: ...

    def wake(self, consumer: Consumer) -> None:
        """Asks the dispatcher to run `collect` and `hand_out` for ``consumer``."""
        ...

    def dead_letter(self, consumer: Consumer, msg: StoredMessage, deliveries: int) -> None:
        """Publishes ``msg`` to the stream's dead-letter subject (durably, with the
        consumer's next journal flush)."""
        ...


class _State(enum.Enum):
    DUE = "due"
    RESERVED = "reserved"
    IN_FLIGHT = "in_flight"


@dataclass(slots=True, eq=False)
class _Pending:
    seq: int
    #: deliveries handed out so far
    count: int
    state: _State
    #: bumped whenever the entry's timer is replaced, so stale timers are ignored
    token: int = 0
    sub: DurableSubscription | None = None


@dataclass(slots=True, eq=False)
class _Entry:
    seq: int
    count: int
    delivery: Delivery


class Consumer:
    """One durable consumer (see the module docstring)."""

    def __init__(
        self,
        host: Host,
        stream: Stream,
        name: str,
        config: ConsumerConfig,
        next_seq: int,
        dead_lettered: int = 0,
    ) -> None:
        self._host = host
        self.stream = stream
        self.name = name
        self.config = config
        self.next_seq = next_seq
        self.dead_lettered = dead_lettered
        #: seq -> entry; insertion order is sequence order (entries are only added at
        #: next_seq, and restored in order), so the first key is the lowest
        self.pending: dict[int, _Pending] = {}
        self._due: deque[int] = deque()
        self.subs: list[DurableSubscription] = []
        self._rr = 0
        self.deleted = False
        self._persisted_floor = -1
        self._match_all = config.filter == ">"

    def __repr__(self) -> str:
        return f"<Consumer {self.stream.name}/{self.name} next={self.next_seq}>"

    # -- state -----------------------------------------------------------------------

    @property
    def ack_floor(self) -> int:
        for seq in self.pending:
            return seq - 1
        return self.next_seq - 1

    def info(self) -> ConsumerInfo:
        return ConsumerInfo(
            name=self.name,
            next_sequence=self.next_seq,
            pending=len(self.pending),
            redelivered=sum(1 for p in self.pending.values() if p.count > 1),
            dead_lettered=self.dead_lettered,
            subscribers=len(self.subs),
        )

    def insert_op(self) -> Op:
        return (
            SQL_INSERT_CONSUMER,
            (
                self.stream.name,
                self.name,
                self.config.to_json(),
                self.next_seq,
                self.ack_floor,
                self.dead_lettered,
            ),
        )

    def rows(self) -> list[Op]:
        """The consumer's current state, for the journal's next flush."""
        if self.deleted:
            return []
        key = (self.stream.name, self.name)
        floor = self.ack_floor
        ops: list[Op] = [
            (
                _SQL_UPDATE_CONSUMER,
                (self.config.to_json(), self.next_seq, floor, self.dead_lettered, *key),
            )
        ]
        if floor != self._persisted_floor:
            ops.append((_SQL_PRUNE_ACKS, (*key, floor)))
            ops.append((_SQL_PRUNE_DELIVERIES, (*key, floor)))
            self._persisted_floor = floor
        return ops

    def _touch(self) -> None:
        self._host.journal.touch(self, self.rows)

    def restore_pending(self, ack_floor: int, acked: set[int], counts: dict[int, int]) -> None:
        """Rebuilds what is pending from the persisted floor, acks and counts: every
        entry due at once (its subscribers are gone)."""
        self._persisted_floor = ack_floor
        for seq in range(max(ack_floor + 1, self.stream.first_seq), self.next_seq):
            msg = self.stream.messages.get(seq)
            if seq in acked or msg is None or not self.matches(msg.subject):
                continue
            self.pending[seq] = _Pending(seq, counts.get(seq, 1), _State.DUE)
            self._due.append(seq)

    def update_config(self, config: ConsumerConfig) -> None:
        if config != self.config:
            self.config = config
            self._touch()
            self._host.wake(self)

    def wake(self) -> None:
        self._host.wake(self)

    def matches(self, subject: str) -> bool:
        return self._match_all or subject_matches(self.config.filter, subject)

    # -- delivery ----------------------------------------------------------------------

    def collect(self) -> tuple[list[_Pending], bool]:
        """Picks the deliveries to make now (due ones first, then new ones) as far as
        subscribers have room and ``max_ack_pending`` allows; whether there is more."""
        if self.deleted or not self.subs:
            return [], False
        cap = min(_BATCH, sum(s.room() for s in self.subs))
        if cap <= 0:
            return [], False
        stream, cfg, pending = self.stream, self.config, self.pending
        journal = self._host.journal
        batch: list[_Pending] = []
        touched = False
        while self._due and len(batch) < cap:
            seq = self._due.popleft()
            p = pending.get(seq)
            if p is None or p.state is not _State.DUE:
                continue  # acknowledged, or queued twice
            msg = stream.messages.get(seq)
            if msg is None:  # gone by the stream's limits
                del pending[seq]
                touched = True
                continue
            if p.count >= cfg.max_deliver:
                del pending[seq]
                self.dead_lettered += 1
                self._host.dead_letter(self, msg, p.count)
                self._record_done(seq)
                touched = True
                continue
            p.count += 1
            p.state = _State.RESERVED
            batch.append(p)
            if p.count > 1:
                journal.add((_SQL_PUT_DELIVERIES, (stream.name, self.name, seq, p.count)))
        scanned = 0
        stored = stream.stored_seq
        while (
            len(batch) < cap
            and len(pending) < cfg.max_ack_pending
            and self.next_seq <= stored
            and scanned < _SCAN
        ):
            seq = self.next_seq
            self.next_seq += 1
            scanned += 1
            touched = True
            msg = stream.messages.get(seq)
            if msg is None or not self.matches(msg.subject):
                continue
            p = _Pending(seq, 1, _State.RESERVED)
            pending[seq] = p
            batch.append(p)
        if touched:
            self._touch()
        return batch, len(batch) >= _BATCH or scanned >= _SCAN

    def hand_out(self, batch: list[_Pending]) -> None:
        """Gives the collected (and now recorded) deliveries to subscribers."""
        if self.deleted:
            return
        now = self._host.now()
        back: list[_Pending] = []
        for p in batch:
            if p.state is not _State.RESERVED or self.pending.get(p.seq) is not p:
                continue
            msg = self.stream.messages.get(p.seq)
            if msg is None:
                del self.pending[p.seq]
                self._touch()
                continue
            sub = self._pick()
            if sub is None:  # every subscriber left meanwhile
                back.append(p)
                continue
            p.state = _State.IN_FLIGHT
            p.token += 1
            p.sub = sub
            self._host.schedule(now + self.config.wait(p.count), self, p.seq, p.token)
            sub.push(_Entry(p.seq, p.count, self._delivery(msg, p.count)))
        self._requeue(back)

    def _requeue(self, entries: list[_Pending]) -> None:
        """Makes never-seen deliveries due again, first in line, as if never made."""
        if not entries:
            return
        entries.sort(key=lambda p: p.seq, reverse=True)
        for p in entries:
            p.count -= 1
            p.state = _State.DUE
            p.token += 1
            p.sub = None
            self._due.appendleft(p.seq)
        self._host.wake(self)

    def _pick(self) -> DurableSubscription | None:
        """The subscriber with the fewest buffered deliveries (round robin on ties)."""
        subs = self.subs
        n = len(subs)
        best: DurableSubscription | None = None
        for i in range(n):
            sub = subs[(self._rr + i) % n]
            if sub.room() > 0 and (best is None or sub.buffered < best.buffered):
                best = sub
        if n:
            self._rr = (self._rr + 1) % n
        return best

    def _delivery(self, msg: StoredMessage, count: int) -> Delivery:
        return Delivery(
            subject=msg.subject,
            data=msg.data,
            headers=msg.headers,
            id=msg.id,
            stream=self.stream.name,
            sequence=msg.seq,
            published_at=msg.published_at,
            delivery_count=count,
            ack_id=format_ack_id(self.stream.name, self.name, msg.seq, count),
        )

    def on_timeout(self, seq: int, token: int) -> None:
        p = self.pending.get(seq)
        if p is not None and p.token == token and p.state is _State.IN_FLIGHT:
            p.state = _State.DUE
            p.sub = None
            self._due.append(seq)
            self._host.wake(self)

    def timer_is_live(self, seq: int, token: int) -> bool:
        p = self.pending.get(seq)
        return (
            not self.deleted and p is not None and p.token == token and p.state is _State.IN_FLIGHT
        )

    # -- acknowledgements --------------------------------------------------------------

    def ack(self, seq: int, count: int, kind: AckKind, delay: float) -> bool:
        """Applies an acknowledgement of delivery ``count`` of ``seq``; True when the
        change must be durable before the caller is answered. Raises AckNotFoundError
        when that delivery is not pending (acknowledged, or delivered again since)."""
        p = self.pending.get(seq)
        if p is None or p.count != count or p.state is _State.RESERVED:
            raise AckNotFoundError(
                f"ack_id: delivery {count} of {self.stream.name}/{self.name} sequence {seq}"
                " is not pending (acknowledged, or delivered again since)",
                field="ack_id",
            )
        if kind is AckKind.ACK or kind is AckKind.TERM:
            was_full = len(self.pending) >= self.config.max_ack_pending
            del self.pending[seq]
            p.token += 1
            self._record_done(seq)
            self._touch()
            if was_full or self._due:
                self._host.wake(self)
            return True
        p.token += 1
        if kind is AckKind.NAK and delay <= 0:
            p.state = _State.DUE
            p.sub = None
            self._due.append(seq)
            self._host.wake(self)
            return False
        wait = delay if kind is AckKind.NAK else self.config.wait(p.count)
        p.state = _State.IN_FLIGHT
        self._host.schedule(self._host.now() + wait, self, seq, p.token)
        return False

    def _record_done(self, seq: int) -> None:
        """Persists that ``seq`` needs no more deliveries (the floor covers the rest)."""
        if seq > self.ack_floor:
            self._host.journal.add((_SQL_INSERT_ACK, (self.stream.name, self.name, seq)))

    # -- subscribers -------------------------------------------------------------------

    def attach(self, sub: DurableSubscription) -> None:
        self.subs.append(sub)
        self._host.wake(self)

    def detach(self, sub: DurableSubscription, unread: list[_Entry]) -> None:
        """Removes ``sub``; what it buffered but never handed to its reader is due again."""
        if sub in self.subs:
            self.subs.remove(sub)
        back = []
        for entry in unread:
            p = self.pending.get(entry.seq)
            if (
                p is not None
                and p.sub is sub
                and p.count == entry.count
                and p.state is _State.IN_FLIGHT
            ):
                back.append(p)
        self._requeue(back)

    def end(self) -> None:
        """Ends its subscriptions (the broker is closing, or the stream was deleted,
        which also sets ``deleted``)."""
        for sub in list(self.subs):
            sub.end()
        self.subs.clear()


class DurableSubscription(SubscriptionBase[_Entry]):
    """A subscription sharing a durable consumer's deliveries with its other ones."""

    def __init__(self, consumer: Consumer, limit: int) -> None:
        super().__init__(limit)
        self.consumer = consumer

    def __repr__(self) -> str:
        return f"<DurableSubscription {self.consumer.stream.name}/{self.consumer.name}>"

    @property
    def dropped(self) -> int:
        return 0

    @property
    def next_sequence(self) -> int:
        return self.consumer.next_seq

    def push(self, entry: _Entry) -> None:
        self._append(entry)

    def _take(self, entry: _Entry) -> Delivery | None:
        consumer = self.consumer
        if len(self._buffer) + 1 == self._limit:  # it was full: there is room again
            consumer.wake()
        p = consumer.pending.get(entry.seq)
        if p is None or p.count != entry.count or p.sub is not self:
            return None  # acknowledged or redelivered while it waited here
        return entry.delivery

    async def close(self) -> None:
        if self._closed:
            return
        unread = list(self._buffer)
        self.end()
        self.consumer.detach(self, unread)
