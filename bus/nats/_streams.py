"""The NATS backend's view of JetStream's streams and consumers, and its dead letters.

`StreamCache` knows which subjects streams capture (a publish must know whether
to wait for JetStream's PubAck) and which stream a durable subscription
consumes, as the embedded broker picks it. `ensure_consumer` creates or
updates a subscription's durable consumer. `DeadLetters` does what JetStream
leaves to its clients after ``max_deliver``: it only drops the message from the
consumer and publishes an advisory.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import replace
from typing import Any

from nats.aio.msg import Msg

from bus._errors import BusError, StreamConflictError, StreamNotFoundError
from bus._protocol import OutgoingMessage, PublishAck, SubscriptionSpec
from bus.nats._jetstream import (
    ConsumerNotFoundError,
    JetStreamApi,
    StreamMeta,
    consumer_config,
    consumer_subject,
    inner_headers,
    same_config,
    stream_config_to_js,
    stream_meta,
)
from bus.nats._subscriptions import AckTable
from bus.subjects import patterns_overlap, subject_matches
from sdk import DeliverPolicy, StreamConfig

__all__ = ["DeadLetters", "StreamCache", "covers", "ensure_consumer"]

log = logging.getLogger(__name__)

_DLQ_ATTEMPTS = 10


def covers(wide: str, narrow: str) -> bool:
    """True when every subject matching pattern ``narrow`` matches pattern ``wide``."""
    a, b = wide.split("."), narrow.split(".")
    for i, token in enumerate(a):
        if token == ">":
            return len(b) > i
        if i >= len(b) or b[i] == ">":
            return False
        if token != "*" and token != b[i]:
            return False
    return len(a) == len(b)


#: Subjects whose capturing stream is remembered at once, at most.
_MEMO = 10_000


class StreamCache:
    """The streams on the server as last read (refreshed by the broker)."""

    def __init__(self) -> None:
        self._streams: dict[str, StreamMeta] = {}
        # subject -> the stream capturing it (None: core), as the streams are now:
        # every publish asks, so it is worked out once per subject.
        self._capturing: dict[str, str | None] = {}

    def get(self, name: str) -> StreamMeta | None:
        return self._streams.get(name)

    def put(self, meta: StreamMeta) -> None:
        self._streams[meta.name] = meta
        self._capturing.clear()

    def drop(self, name: str) -> None:
        self._streams.pop(name, None)
        self._capturing.clear()

    def patterns(self) -> tuple[str, ...]:
        """Every subject and pattern the streams capture."""
        return tuple(p for meta in self._streams.values() for p in meta.subjects)

    def capturing(self, subject: str) -> str | None:
        """The stream that stores messages published to ``subject``, if any."""
        try:
            return self._capturing[subject]
        except KeyError:
            pass
        found = None
        for meta in self._streams.values():
            if any(subject_matches(p, subject) for p in meta.subjects):
                found = meta.name
                break
        if len(self._capturing) >= _MEMO:
            self._capturing.clear()
        self._capturing[subject] = found
        return found

    async def refresh(self, js: JetStreamApi) -> None:
        infos = await js.stream_infos()
        self._streams = {m.name: m for m in (stream_meta(i["config"]) for i in infos)}
        self._capturing.clear()

    async def refresh_quietly(self, js: JetStreamApi) -> None:
        try:
            await self.refresh(js)
        except BusError as e:
            log.debug("bus: refreshing the streams failed: %s", e)

    async def find_for(self, js: JetStreamApi, spec: SubscriptionSpec) -> StreamMeta:
        """The stream a durable subscription consumes: the one named, or the only
        one whose subjects overlap the pattern."""
        if spec.stream:
            try:
                answer = await js.call(f"STREAM.INFO.{spec.stream}")
            except StreamNotFoundError as e:
                raise StreamNotFoundError(
                    f"stream: no stream {spec.stream!r}", field="stream"
                ) from e
            meta = stream_meta(answer["config"])
            self.put(meta)
            if not any(patterns_overlap(p, spec.subject) for p in meta.subjects):
                raise StreamNotFoundError(
                    f"subject: stream {meta.name!r} does not capture {spec.subject!r}",
                    field="subject",
                )
            return meta
        found: list[StreamMeta] = []
        for attempt in range(2):
            found = [
                m
                for m in self._streams.values()
                if any(patterns_overlap(p, spec.subject) for p in m.subjects)
            ]
            if found or attempt:
                break
            await self.refresh(js)  # another process may have added it
        if not found:
            raise StreamNotFoundError(
                f"subject: no stream captures {spec.subject!r} (add one first)", field="subject"
            )
        if len(found) > 1:
            names = ", ".join(sorted(m.name for m in found))
            raise StreamNotFoundError(
                f"stream: {spec.subject!r} spans several streams ({names}); name one",
                field="stream",
            )
        return found[0]

    async def add(
        self, js: JetStreamApi, config: StreamConfig, *, replicas: int
    ) -> tuple[dict[str, Any], bool]:
        """Creates the stream, or finds an identical one; its JetStream info and
        whether it was created. Raises StreamConflictError (field ``name`` or
        ``subjects``)."""
        for attempt in range(2):
            try:
                existing: dict[str, Any] | None = await js.call(f"STREAM.INFO.{config.name}")
            except StreamNotFoundError:
                existing = None
            if existing is not None:
                meta = stream_meta(existing["config"])
                self.put(meta)
                if not same_config(meta.config, config):
                    break
                return existing, False
            try:
                created = await js.call(
                    f"STREAM.CREATE.{config.name}", stream_config_to_js(config, replicas=replicas)
                )
            except StreamConflictError as e:
                if attempt == 0 and "already in use" in e.message:
                    continue  # created meanwhile: compare with that one
                raise self._overlap_error(config) from e
            self.put(stream_meta(created["config"]))
            return created, True
        raise StreamConflictError(
            f"name: stream {config.name!r} exists with another config", field="name"
        )

    def _overlap_error(self, config: StreamConfig) -> StreamConflictError:
        """JetStream refused ``config`` for overlapping subjects: say with what."""
        for other in self._streams.values():
            for mine in config.subjects:
                for theirs in other.subjects:
                    if other.name != config.name and patterns_overlap(mine, theirs):
                        return StreamConflictError(
                            f"subjects: {mine!r} overlaps {theirs!r} of stream {other.name!r}",
                            field="subjects",
                        )
        return StreamConflictError(
            f"subjects: {', '.join(config.subjects)} overlap another stream's", field="subjects"
        )


def _changed(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Whether an existing consumer's config differs from ``wanted`` in what an update sets."""
    for key in ("ack_wait", "max_deliver", "max_ack_pending", "filter_subject", "description"):
        if current.get(key) != wanted.get(key):
            return True
    return list(current.get("backoff") or []) != list(wanted.get("backoff") or [])


async def ensure_consumer(
    js: JetStreamApi, meta: StreamMeta, spec: SubscriptionSpec
) -> tuple[dict[str, Any], bool]:
    """The durable consumer of ``spec`` (created, or updated to its ack settings), and
    whether JetStream filters it (else the subscription filters deliveries itself).

    JetStream takes a filter that some stream subject contains or is contained in
    (``>`` or ``orders.eu.*`` on ``orders.>``, not ``*.created``); the consumer's
    description keeps the pattern, which a durable may not change.
    """
    native = any(covers(s, spec.subject) or covers(spec.subject, s) for s in meta.subjects)
    path = f"{meta.name}.{spec.durable}"
    try:
        existing: dict[str, Any] | None = await js.call(f"CONSUMER.INFO.{path}")
    except ConsumerNotFoundError:
        existing = None
    current: dict[str, Any] | None = None
    if existing is not None:
        current = existing.get("config") or {}
        takes = consumer_subject(current) or current.get("filter_subject") or ">"
        if takes != spec.subject:
            raise StreamConflictError(
                f"durable: consumer {spec.durable!r} of stream {meta.name!r} takes"
                f" {takes!r}, not {spec.subject!r}",
                field="durable",
            )
    if existing is None and not native and spec.deliver is DeliverPolicy.LAST:
        # JetStream's "last" is the stream's last message, which the subscription's
        # own filter may drop: start at the last message matching the pattern.
        spec = replace(
            spec,
            deliver=DeliverPolicy.BY_SEQUENCE,
            start_sequence=await _last_matching(js, meta.name, spec.subject),
        )
    config = consumer_config(spec, spec.subject if native else "", current)
    if existing is not None and current is not None and not _changed(current, config):
        return existing, native
    try:
        created = await js.call(
            f"CONSUMER.DURABLE.CREATE.{path}", {"stream_name": meta.name, "config": config}
        )
    except BusError as e:
        if existing is None or isinstance(e, StreamNotFoundError):
            raise
        log.warning("bus: consumer %s keeps its settings: %s", path, e.message)
        return existing, native
    return created, native


async def _last_matching(js: JetStreamApi, stream: str, pattern: str) -> int:
    """The sequence of the stream's last message matching ``pattern`` (else the next one)."""
    try:
        answer = await js.call(f"STREAM.MSG.GET.{stream}", {"last_by_subj": pattern})
        return int(answer["message"]["seq"])
    except BusError as e:
        if "no message found" not in e.message:
            raise
    info = await js.call(f"STREAM.INFO.{stream}")
    return int((info.get("state") or {}).get("last_seq", 0)) + 1


class DeadLetters:
    """Moves messages that ran out of deliveries to their stream's dead-letter subject.

    Every broker subscribes to JetStream's max-deliveries advisories in one queue
    group, so each message is moved by one of them: fetched from its stream by
    sequence and published (through ``publish``, so a stream may capture the
    dead-letter subject) with the ``eco-dlq-*`` headers. JetStream itself no
    longer delivers it to the consumer. Only streams added through the bus are
    handled; the count of dead letters is this broker's, since it started.
    """

    def __init__(
        self,
        streams: StreamCache,
        acks: AckTable,
        publish: Callable[[OutgoingMessage], Awaitable[PublishAck]],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self._streams = streams
        self._acks = acks
        self._publish = publish
        self._spawn = spawn
        self._js: JetStreamApi | None = None
        self._counts: dict[tuple[str, str], int] = {}

    def attach(self, js: JetStreamApi) -> None:
        self._js = js

    def count(self, stream: str, consumer: str) -> int:
        return self._counts.get((stream, consumer), 0)

    async def on_advisory(self, msg: Msg) -> None:
        """``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>``"""
        try:
            event = json.loads(msg.data)
            stream, consumer = str(event["stream"]), str(event["consumer"])
            sequence, deliveries = int(event["stream_seq"]), int(event.get("deliveries", 0))
        except (ValueError, KeyError, TypeError):
            log.warning("bus: unreadable max-deliveries advisory: %r", msg.data[:200])
            return
        self._acks.dead(stream, consumer, sequence)
        self._spawn(self._move(stream, consumer, sequence, deliveries))

    async def _move(self, stream: str, consumer: str, sequence: int, deliveries: int) -> None:
        js = self._js
        assert js is not None, "attach() first"
        meta = self._streams.get(stream)
        if meta is None:
            await self._streams.refresh_quietly(js)
            meta = self._streams.get(stream)
        if meta is None or not meta.managed:
            return  # not a bus stream: its owner handles its advisories
        subject = meta.config.dlq_subject
        for attempt in range(_DLQ_ATTEMPTS):
            try:
                stored = await js.stored_message(stream, sequence)
                headers, _, _ = inner_headers(stored["headers"])
                headers.update(
                    {
                        "eco-dlq-stream": stream,
                        "eco-dlq-sequence": str(sequence),
                        "eco-dlq-consumer": consumer,
                        "eco-dlq-deliveries": str(deliveries),
                    }
                )
                await self._publish(OutgoingMessage(subject, stored["data"], headers))
            except StreamNotFoundError:
                return
            except BusError as e:
                if "no message found" in e.message or attempt == _DLQ_ATTEMPTS - 1:
                    log.error(
                        "bus: could not dead-letter %s#%d (consumer %s): %s",
                        stream,
                        sequence,
                        consumer,
                        e.message,
                    )
                    return
                await asyncio.sleep(min(0.1 * 2**attempt, 5.0))
                continue
            key = (stream, consumer)
            self._counts[key] = self._counts.get(key, 0) + 1
            log.warning(
                "bus dead letter stream=%s consumer=%s sequence=%d deliveries=%d to=%s",
                stream,
                consumer,
                sequence,
                deliveries,
                subject,
            )
            return
