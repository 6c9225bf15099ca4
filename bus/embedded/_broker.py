"""`EmbeddedBroker`: the message bus inside the control plane process.

Core routing is in memory: a `SubjectIndex` (token trie) finds the subscriptions
matching a subject, each with a bounded buffer that drops (and counts) rather
than block a publisher. Durable streams and consumers live in memory too and are
made durable by a journal (`_journal`): ``bus.db`` in ``data_dir`` (WAL,
``synchronous=FULL``, group commit on one worker thread), or nothing when
``data_dir`` is None. Three tasks per broker, owned and stopped by ``close()``:

- the journal's flush task (group commit; see `_journal`);
- the dispatcher: asks consumers with work for deliveries, commits the journal
  once for all of them, hands the deliveries out (`_consumers`);
- the scheduler: one heap of redelivery deadlines, plus ``max_age`` expiry.

What is durable when. A durable ``publish`` returns once its message is committed;
consumers and core subscribers see it only then. An ``ack`` (or ``term``) returns
once it is committed. A delivery reaches a subscriber only once the consumer's
position past it is committed. So after ``kill -9`` every published message is
there, nothing acknowledged comes back, and anything a client may have seen
unacknowledged comes back with ``delivery_count`` > 1. NAK and in-progress are not
persisted (after a restart every pending delivery is due at once anyway).

Limits: the whole state, payloads included, is held in memory (the file is
read once, on start); size streams with ``max_msgs``/``max_bytes``/``max_age``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

from bus._errors import (
    AckNotFoundError,
    BusClosedError,
    BusError,
    BusUnavailableError,
    NoRespondersError,
    PayloadTooLargeError,
    StreamConflictError,
    StreamNotFoundError,
)
from bus._protocol import (
    MAX_PAYLOAD,
    Delivery,
    OutgoingMessage,
    PublishAck,
    Subscription,
    SubscriptionSpec,
)
from bus.subjects import (
    validate_headers,
    validate_name,
    validate_spec,
    validate_stream_config,
    validate_subject,
)
from sdk import AckKind, StreamConfig, StreamInfo

from ._catalog import StreamCatalog
from ._consumers import Consumer, ConsumerConfig, DurableSubscription, parse_ack_id
from ._journal import Journal, MemoryJournal, SqliteJournal
from ._streams import (
    SQL_DELETE_STREAM,
    SQL_DROP_MESSAGES,
    SQL_INSERT_MESSAGE,
    SQL_INSERT_STREAM,
    StoredMessage,
    Stream,
    config_to_json,
)
from ._subscriptions import CoreRouter, Route
from ._timers import Timers

__all__ = ["EmbeddedBroker"]

logger = logging.getLogger(__name__)

#: Core messages buffered per subscription before it drops.
DEFAULT_QUEUE_LIMIT = 10_000


class EmbeddedBroker:
    """The built-in `Broker` (see the module docstring). ``start()`` before use,
    ``close()`` when done (idempotent); a closed broker cannot be started again."""

    def __init__(
        self,
        data_dir: Path | None,
        *,
        max_payload: int = MAX_PAYLOAD,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
        close_grace: float = 5.0,
    ) -> None:
        if max_payload < 1 or queue_limit < 1:
            raise ValueError("max_payload and queue_limit must be positive")
        self._data_dir = data_dir
        self._max_payload = max_payload
        self._queue_limit = queue_limit
        self._close_grace = close_grace
        self._state = "new"
        self._failure: BaseException | None = None
        self._lifecycle = asyncio.Lock()
        self._journal: Journal = MemoryJournal()
        self._core = CoreRouter(queue_limit)
        self._registry = StreamCatalog()
        # consumers with deliveries to make, for the dispatcher
        self._ready: dict[Consumer, None] = {}
        self._ready_event = asyncio.Event()
        self._timers = Timers(lambda wall: self._registry.expire(wall, self._journal))
        self._tasks: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        where = str(self._data_dir) if self._data_dir is not None else "memory"
        return f"EmbeddedBroker({where!r}, state={self._state})"

    @property
    def journal(self) -> Journal:
        return self._journal

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Loads ``bus.db`` (if any) and starts the broker's tasks."""
        async with self._lifecycle:
            if self._state == "running":
                return
            if self._state != "new":
                raise RuntimeError("a closed broker cannot be started again")
            if self._data_dir is not None:
                self._journal = SqliteJournal(self._data_dir / "bus.db", self._on_journal_failure)
            try:
                self._registry.restore(await self._journal.load(), self)
            except BaseException:
                self._state = "closed"
                await self._journal.close(0)
                raise
            self._tasks = [
                asyncio.create_task(self._dispatch_loop(), name="bus-dispatch"),
                asyncio.create_task(self._timers.run(), name="bus-timers"),
            ]
            self._state = "running"
        logger.info(
            "bus started data_dir=%s streams=%d consumers=%d",
            self._data_dir,
            len(self._registry.streams),
            sum(1 for _ in self._registry.all_consumers()),
        )

    async def close(self) -> None:
        """Ends every subscription, lets queued writes become durable (within the
        grace period), stops the tasks and releases the file. Idempotent."""
        async with self._lifecycle:
            if self._state == "closed":
                return
            if self._state == "new":
                self._state = "closed"
                return
            self._state = "closing"
            self._end_subscriptions()
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                try:
                    await task
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise
                except Exception:
                    logger.exception("bus task %s failed", task.get_name())
            self._tasks = []
            try:
                await self._journal.close(self._close_grace)
            finally:
                self._state = "closed"
        logger.info("bus closed data_dir=%s", self._data_dir)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _check_running(self) -> None:
        if self._state == "running":
            return
        if self._state == "new":
            raise RuntimeError("broker not started; call start() or use 'async with'")
        if self._failure is not None:
            raise BusUnavailableError(f"bus storage failed: {self._failure!r}")
        raise BusClosedError("the bus is closed")

    def _end_subscriptions(self) -> None:
        self._core.end_all()
        for consumer in self._registry.all_consumers():
            consumer.end()
        self._ready.clear()

    def _on_journal_failure(self, exc: BaseException) -> None:
        self._failure = exc
        if self._state == "running":
            self._state = "failed"
        self._end_subscriptions()

    # -- core --------------------------------------------------------------------------

    async def publish(self, message: OutgoingMessage) -> PublishAck:
        """Routes ``message``; for a subject a stream captures, returns once it is stored."""
        self._check_running()
        ack, stored = self._accept(message)
        if stored:
            await self._commit()
        return ack

    async def publish_many(
        self, messages: Sequence[OutgoingMessage]
    ) -> list[PublishAck | Exception]:
        """Publishes each message in order as :meth:`publish` would, the stored ones
        in one commit; a refused message is its error in the list, not raised."""
        self._check_running()
        results: list[PublishAck | Exception] = []
        stored = False
        for message in messages:
            try:
                ack, kept = self._accept(message)
            except BusError as exc:
                results.append(exc)
            else:
                results.append(ack)
                stored = stored or kept
        if stored:
            await self._commit()
        return results

    def _accept(self, message: OutgoingMessage) -> tuple[PublishAck, bool]:
        """Checks and routes ``message``; whether its ack must wait for the journal."""
        validate_subject(message.subject, field="subject")
        if message.reply_to:
            validate_subject(message.reply_to, field="reply_to")
        if len(message.data) > self._max_payload:
            raise PayloadTooLargeError(
                f"data: {len(message.data)} bytes is over the limit of {self._max_payload}",
                field="data",
            )
        headers = validate_headers(message.headers) if message.headers else {}
        ack, stored, _ = self._route(
            message.subject, bytes(message.data), headers, message.id, message.reply_to
        )
        return ack, stored

    def _route(
        self, subject: str, data: bytes, headers: dict[str, str], msg_id: str, reply_to: str
    ) -> tuple[PublishAck, bool, int]:
        """Hands a valid message to core subscribers and, if captured, to its stream
        (now, or once stored). Returns the ack, whether the caller must await the
        journal, and how many core subscriptions (or groups) it was routed to."""
        now = time.time()
        route = self._core.route(subject)
        stream = self._registry.capturing(subject)
        delivery = Delivery(subject, data, headers, msg_id, reply_to, published_at=now)
        if stream is None:
            self._core.deliver(route, delivery)
            return PublishAck(), False, len(route)
        dup = stream.duplicate_of(msg_id, now)
        if dup:
            # The core tier sees every publish; the stream stores the first one.
            self._core.deliver(route, delivery)
            return PublishAck(stream.name, dup, duplicate=True), True, len(route)
        had_messages = bool(stream.messages)
        msg = stream.append(subject, data, headers, msg_id, now)
        journal = self._journal
        headers_json = json.dumps(headers) if headers else "{}"
        journal.add(
            (
                SQL_INSERT_MESSAGE,
                (stream.name, msg.seq, subject, data, headers_json, msg_id, now),
            )
        )
        first = stream.enforce_limits(now)
        if first:
            journal.add((SQL_DROP_MESSAGES, (stream.name, first)))
        journal.touch(stream, stream.rows)
        journal.after(lambda: self._stored(stream, msg.seq, route, delivery))
        if not had_messages and stream.config.max_age > 0:
            self._timers.poke()
        return PublishAck(stream.name, msg.seq), True, len(route)

    def _stored(self, stream: Stream, seq: int, route: Route, delivery: Delivery) -> None:
        """A message is durable: core subscribers get it, consumers may deliver it."""
        if stream.deleted:
            return
        if seq > stream.stored_seq:
            stream.stored_seq = seq
        self._core.deliver(route, delivery)
        for consumer in self._registry.consumers_of(stream).values():
            if consumer.subs:
                self.wake(consumer)

    async def subscribe(self, spec: SubscriptionSpec) -> Subscription:
        """A core subscription, or one of a durable consumer (created on first use)."""
        self._check_running()
        validate_spec(spec)
        if not spec.durable:
            return self._core.subscribe(spec.subject, spec.queue_group)
        stream = self._registry.stream_for(spec)
        config = ConsumerConfig(
            spec.subject, spec.ack_wait, spec.max_deliver, spec.max_ack_pending, spec.backoff
        )
        consumer = self._registry.consumer(stream.name, spec.durable)
        if consumer is not None and consumer.config.filter != spec.subject:
            raise StreamConflictError(
                f"durable: consumer {spec.durable!r} of stream {stream.name!r} takes"
                f" {consumer.config.filter!r}, not {spec.subject!r}",
                field="durable",
            )
        if consumer is None:
            start = self._registry.start_sequence(stream, spec)
            consumer = Consumer(self, stream, spec.durable, config, start)
            self._registry.add_consumer(consumer)
            self._journal.add(consumer.insert_op())
            await self._commit()
            self._check_running()
            if consumer.deleted:
                raise StreamNotFoundError(f"stream {stream.name!r} was deleted", field="stream")
        else:
            consumer.update_config(config)
        sub = DurableSubscription(consumer, self._queue_limit)
        consumer.attach(sub)
        return sub

    async def ack(self, ack_id: str, kind: AckKind, delay: float = 0.0) -> None:
        """Acknowledges one delivery; ACK and TERM return once durable."""
        self._check_running()
        if delay < 0:
            raise ValueError(f"delay: must not be negative (got {delay})")
        parsed = parse_ack_id(ack_id) if isinstance(ack_id, str) else None
        consumer = self._registry.consumer(parsed[0], parsed[1]) if parsed else None
        if parsed is None or consumer is None:
            raise AckNotFoundError(f"ack_id: {ack_id!r} is not a pending delivery", field="ack_id")
        if consumer.ack(parsed[2], parsed[3], kind, delay):
            await self._commit()

    async def request(
        self,
        subject: str,
        data: bytes,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
    ) -> Delivery:
        """Publishes to ``subject`` with a fresh inbox as ``reply_to``; the first reply."""
        self._check_running()
        validate_subject(subject, field="subject")
        if not timeout > 0:
            raise ValueError(f"timeout: must be positive (got {timeout})")
        if len(data) > self._max_payload:
            raise PayloadTooLargeError(
                f"data: {len(data)} bytes is over the limit of {self._max_payload}", field="data"
            )
        hdrs = validate_headers(headers) if headers else {}
        inbox = f"_INBOX.{secrets.token_hex(12)}"
        sub = self._core.subscribe(inbox, limit=1)
        try:
            _, stored, routed = self._route(subject, bytes(data), hdrs, "", inbox)
            if not routed and not self._registry.has_listener(subject):
                raise NoRespondersError(f"subject: no subscriber for {subject!r}", field="subject")
            if stored:
                await self._commit()
            try:
                async with asyncio.timeout(timeout):
                    return await anext(sub)
            except (TimeoutError, StopAsyncIteration):
                self._check_running()
                raise TimeoutError(f"no reply to {subject!r} within {timeout:g}s") from None
        finally:
            await sub.close()

    # -- streams -----------------------------------------------------------------------

    async def add_stream(self, config: StreamConfig) -> tuple[StreamInfo, bool]:
        self._check_running()
        validate_stream_config(config)
        config = StreamConfig(
            name=config.name,
            subjects=tuple(config.subjects),
            max_age=float(config.max_age),
            max_msgs=int(config.max_msgs),
            max_bytes=int(config.max_bytes),
            duplicate_window=float(config.duplicate_window),
            dead_letter_subject=config.dead_letter_subject,
        )
        existing = self._registry.admit(config)
        if existing is not None:
            await self._commit()  # it may have been added by a call still committing
            return self._registry.info(existing), False
        stream = Stream(config, time.time())
        self._registry.add(stream)
        self._journal.add(
            (SQL_INSERT_STREAM, (config.name, config_to_json(config), stream.created_at, 0))
        )
        await self._commit()
        logger.info("bus stream added name=%s subjects=%s", config.name, ",".join(config.subjects))
        return self._registry.info(stream), True

    async def streams(self) -> list[StreamInfo]:
        self._check_running()
        return self._registry.infos()

    async def delete_stream(self, name: str) -> None:
        self._check_running()
        validate_name(name, field="name")
        for consumer in self._registry.remove(name):
            self._ready.pop(consumer, None)
        for sql in SQL_DELETE_STREAM:
            self._journal.add((sql, (name,)))
        await self._commit()
        logger.info("bus stream deleted name=%s", name)

    async def _commit(self) -> None:
        fut = self._journal.commit()
        if fut is not None:
            await fut

    # -- the consumers' host: dispatcher and scheduler ------------------------------------

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def wake(self, consumer: Consumer) -> None:
        if not consumer.deleted:
            self._ready[consumer] = None
            self._ready_event.set()

    def dead_letter(self, consumer: Consumer, msg: StoredMessage, deliveries: int) -> None:
        stream = consumer.stream
        headers = dict(msg.headers)
        headers.update(
            {
                "eco-dlq-stream": stream.name,
                "eco-dlq-sequence": str(msg.seq),
                "eco-dlq-consumer": consumer.name,
                "eco-dlq-deliveries": str(deliveries),
            }
        )
        subject = stream.config.dlq_subject
        logger.warning(
            "bus dead letter stream=%s consumer=%s sequence=%d deliveries=%d to=%s",
            stream.name,
            consumer.name,
            msg.seq,
            deliveries,
            subject,
        )
        # Queued in the same journal flush as the consumer's record of it.
        self._route(subject, msg.data, headers, "", "")

    def schedule(self, deadline: float, consumer: Consumer, seq: int, token: int) -> None:
        self._timers.schedule(deadline, consumer, seq, token)

    async def _dispatch_loop(self) -> None:
        while True:
            if not self._ready:
                self._ready_event.clear()
                await self._ready_event.wait()
                continue
            consumers = list(self._ready)
            self._ready.clear()
            work = []
            for consumer in consumers:
                batch, more = consumer.collect()
                if batch:
                    work.append((consumer, batch))
                if more:
                    self._ready[consumer] = None
            if work:
                try:
                    await self._commit()
                except BusUnavailableError:
                    return  # the journal failed; the broker is failing closed
                for consumer, batch in work:
                    consumer.hand_out(batch)
            await asyncio.sleep(0)  # let subscribers and publishers run between rounds
