"""The embedded broker's durable state in memory: streams by name, the index of the
subjects they capture, and their consumers, with the rules for adding streams,
finding the stream of a durable subscription and where a new consumer starts."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from bus._errors import StreamConflictError, StreamNotFoundError
from bus._protocol import SubscriptionSpec
from bus.subjects import SubjectIndex, patterns_overlap, subject_matches
from sdk import DeliverPolicy, StreamConfig, StreamInfo

from ._consumers import Consumer, ConsumerConfig, Host
from ._journal import Journal, Snapshot
from ._streams import (
    SQL_DROP_MESSAGES,
    StoredMessage,
    Stream,
    config_from_json,
    message_size,
    same_config,
)

__all__ = ["StreamCatalog"]


class StreamCatalog:
    """Streams and consumers (see the module docstring)."""

    def __init__(self) -> None:
        self.streams: dict[str, Stream] = {}
        self._capture: SubjectIndex[Stream] = SubjectIndex()
        self._consumers: dict[str, dict[str, Consumer]] = {}

    # -- streams -----------------------------------------------------------------------

    def capturing(self, subject: str) -> Stream | None:
        """The stream that stores ``subject`` (streams never overlap: at most one)."""
        found = self._capture.match(subject)
        return found[0] if found else None

    def admit(self, config: StreamConfig) -> Stream | None:
        """The existing stream if it has this config; None if a new one may be added.
        Raises StreamConflictError for another config or overlapping subjects."""
        existing = self.streams.get(config.name)
        if existing is not None:
            if not same_config(existing.config, config):
                raise StreamConflictError(
                    f"name: stream {config.name!r} exists with another config", field="name"
                )
            return existing
        for other in self.streams.values():
            for mine in config.subjects:
                for theirs in other.config.subjects:
                    if patterns_overlap(mine, theirs):
                        raise StreamConflictError(
                            f"subjects: {mine!r} overlaps {theirs!r} of stream {other.name!r}",
                            field="subjects",
                        )
        return None

    def add(self, stream: Stream) -> None:
        self.streams[stream.name] = stream
        self._consumers[stream.name] = {}
        for pattern in stream.config.subjects:
            self._capture.add(pattern, stream)

    def remove(self, name: str) -> list[Consumer]:
        """Takes the stream out; its consumers (ended) are returned."""
        stream = self.streams.pop(name, None)
        if stream is None:
            raise StreamNotFoundError(f"name: no stream {name!r}", field="name")
        stream.deleted = True
        for pattern in stream.config.subjects:
            self._capture.remove(pattern, stream)
        consumers = list(self._consumers.pop(name, {}).values())
        for consumer in consumers:
            consumer.deleted = True
            consumer.end()
        return consumers

    def info(self, stream: Stream) -> StreamInfo:
        consumers = self._consumers.get(stream.name, {})
        return stream.info(tuple(consumers[name].info() for name in sorted(consumers)))

    def infos(self) -> list[StreamInfo]:
        return [self.info(self.streams[name]) for name in sorted(self.streams)]

    def expire(self, wall: float, journal: Journal) -> float | None:
        """Drops messages past their stream's ``max_age`` and prunes duplicate windows;
        when (Unix time) the next message expires, or None."""
        soonest: float | None = None
        for stream in self.streams.values():
            stream.prune_dedupe(wall)
            if stream.config.max_age <= 0:
                continue
            first = stream.enforce_limits(wall)
            if first:
                journal.add((SQL_DROP_MESSAGES, (stream.name, first)))
            expiry = stream.next_expiry()
            if expiry is not None and (soonest is None or expiry < soonest):
                soonest = expiry
        return soonest

    # -- consumers ---------------------------------------------------------------------

    def consumers_of(self, stream: Stream) -> dict[str, Consumer]:
        return self._consumers[stream.name]

    def consumer(self, stream_name: str, name: str) -> Consumer | None:
        return self._consumers.get(stream_name, {}).get(name)

    def all_consumers(self) -> Iterator[Consumer]:
        for consumers in self._consumers.values():
            yield from consumers.values()

    def has_listener(self, subject: str) -> bool:
        """Whether a durable subscription is connected that would get ``subject``."""
        stream = self.capturing(subject)
        if stream is None:
            return False
        return any(c.subs and c.matches(subject) for c in self._consumers[stream.name].values())

    def stream_for(self, spec: SubscriptionSpec) -> Stream:
        """The stream a durable subscription consumes: the one named, else the only one
        whose subjects overlap the subscription's."""
        if spec.stream:
            stream = self.streams.get(spec.stream)
            if stream is None:
                raise StreamNotFoundError(f"stream: no stream {spec.stream!r}", field="stream")
            if not any(patterns_overlap(p, spec.subject) for p in stream.config.subjects):
                raise StreamNotFoundError(
                    f"subject: stream {stream.name!r} does not capture {spec.subject!r}",
                    field="subject",
                )
            return stream
        found = [
            s
            for s in self.streams.values()
            if any(patterns_overlap(p, spec.subject) for p in s.config.subjects)
        ]
        if not found:
            raise StreamNotFoundError(
                f"subject: no stream captures {spec.subject!r} (add one first)", field="subject"
            )
        if len(found) > 1:
            names = ", ".join(sorted(s.name for s in found))
            raise StreamNotFoundError(
                f"stream: {spec.subject!r} spans several streams ({names}); name one",
                field="stream",
            )
        return found[0]

    @staticmethod
    def start_sequence(stream: Stream, spec: SubscriptionSpec) -> int:
        """Where a new consumer starts, by its deliver policy."""
        policy = spec.deliver
        if policy is DeliverPolicy.NEW:
            return stream.last_seq + 1
        if policy is DeliverPolicy.BY_SEQUENCE:
            return max(spec.start_sequence, stream.first_seq)
        if policy is DeliverPolicy.BY_TIME:
            return stream.first_at_or_after(spec.start_time)
        if policy is DeliverPolicy.LAST:
            for seq in range(stream.last_seq, stream.first_seq - 1, -1):
                msg = stream.messages.get(seq)
                if msg is not None and subject_matches(spec.subject, msg.subject):
                    return seq
            return stream.last_seq + 1
        return stream.first_seq

    def add_consumer(self, consumer: Consumer) -> None:
        self._consumers[consumer.stream.name][consumer.name] = consumer

    # -- loading -----------------------------------------------------------------------

    def restore(self, snap: Snapshot, host: Host) -> None:
        """Rebuilds streams and consumers from the journal's snapshot."""
        now = time.time()
        for _, config, created_at, last_seq in snap.streams:
            self.add(Stream(config_from_json(config), created_at, last_seq))
        for stream_name, seq, subject, data, headers_json, msg_id, published_at in snap.messages:
            stream = self.streams.get(stream_name)
            if stream is not None:
                headers: dict[str, str] = json.loads(headers_json)
                size = message_size(subject, data, headers)
                stream.restore(
                    StoredMessage(seq, subject, data, headers, msg_id, published_at, size), now
                )
        acks: dict[tuple[str, str], set[int]] = {}
        for stream_name, consumer_name, seq in snap.acks:
            acks.setdefault((stream_name, consumer_name), set()).add(seq)
        counts: dict[tuple[str, str], dict[int, int]] = {}
        for stream_name, consumer_name, seq, count in snap.deliveries:
            counts.setdefault((stream_name, consumer_name), {})[seq] = count
        for stream_name, name, config, next_seq, ack_floor, dead_lettered in snap.consumers:
            stream = self.streams.get(stream_name)
            if stream is None:
                continue
            cfg = ConsumerConfig.from_json(config)
            consumer = Consumer(host, stream, name, cfg, next_seq, dead_lettered)
            key = (stream_name, name)
            consumer.restore_pending(ack_floor, acks.get(key, set()), counts.get(key, {}))
            self.add_consumer(consumer)
