"""``NatsBroker``: the bus on a NATS server or cluster, JetStream for durable streams.

Mapping (see ``bus._protocol`` for the semantics it keeps):

- core publish, subscribe, queue groups and request: NATS core; a request
  nobody subscribes to gets NATS's "no responders" status at once;
- a stream: a JetStream stream (file storage, limits ``max_age``,
  ``max_msgs``, ``max_bytes``, ``duplicate_window``); a publish to a subject
  a stream captures is a JetStream publish (``Nats-Msg-Id`` for the message
  id), which returns once stored;
- a durable consumer: a JetStream durable pull consumer (explicit acks,
  ``ack_wait``, ``max_deliver``, backoff, ``max_ack_pending``, deliver
  policy), pulled by each of its subscriptions (see ``_subscriptions``); the ack
  id is JetStream's ack subject, so any broker on the same NATS can settle it;
- dead letters: JetStream drops a message from a consumer after
  ``max_deliver`` and publishes an advisory; one broker (a queue group over
  all of them) fetches the message from the stream and publishes it to the
  stream's dead-letter subject with the ``eco-dlq-*`` headers.

Which subjects streams capture is cached and refreshed on JetStream's stream
advisories, after a reconnect and every 30 s; a stream another process added
a moment ago may be missed by one publish, which NATS still stores but
without returning its sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import re
import secrets
import time
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from bus._errors import (
    AckNotFoundError,
    BusClosedError,
    BusError,
    BusUnavailableError,
    NoRespondersError,
    PayloadTooLargeError,
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
from bus.nats._jetstream import (
    INBOX_PREFIX,
    MSG_ID,
    PUBACK_PREFIX,
    REPLY_TO,
    JetStreamApi,
    consumer_info,
    header_bytes,
    inner_headers,
    nats_headers,
    ns,
    parse_ack_id,
    start_floor,
    stream_info,
    unreserved,
)
from bus.nats._streams import DeadLetters, StreamCache, ensure_consumer
from bus.nats._subscriptions import HAND_BACK, AckTable, CoreSubscription, DurableSubscription
from bus.subjects import (
    validate_headers,
    validate_name,
    validate_spec,
    validate_stream_config,
    validate_subject,
)
from sdk import AckKind, StreamConfig, StreamInfo

__all__ = ["NatsBroker"]

log = logging.getLogger(__name__)

_DLQ_QUEUE = "eco-bus-dlq"
_MAX_DELIVERIES = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>"
_STREAM_EVENTS = "$JS.EVENT.ADVISORY.STREAM.*.*"
_TICK = 0.5
#: JetStream's PubAck as it writes it (stream names are letters, digits, - and _),
#: with the optional domain: ``{"stream":"S", "seq":7,"duplicate": true}``.
_PUB_ACK = re.compile(
    rb'\{"stream": ?"([A-Za-z0-9_-]+)", ?"seq": ?(\d+)'
    rb'(?:, ?"domain": ?"[^"\\]*")?(, ?"duplicate": ?true)?\}'
)
#: What a core publish returns (nothing stored): the same every time.
_CORE_ACK = PublishAck()
_PUBLISH_LOST = (
    "NATS: the connection was lost before JetStream confirmed the publish; it may be "
    "stored: publish it again (with the same id, to store it once)"
)
_REFRESH_EVERY = 30.0
#: Core messages buffered per subscription before it drops.
DEFAULT_QUEUE_LIMIT = 10_000


class NatsBroker:
    """The bus on NATS (``nats://HOST:PORT``, several for a cluster); JetStream required.

    ``start()`` connects (raising BusUnavailableError within a few seconds when
    no server answers, or JetStream is off); later outages are waited out
    with reconnects, during which calls may time out with BusUnavailableError.
    ``replicas`` is the JetStream replica count of the streams it adds.
    """

    def __init__(
        self,
        servers: list[str],
        *,
        max_payload: int = MAX_PAYLOAD,
        name: str = "ecosystem-bus",
        replicas: int = 1,
        api_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        reconnect_wait: float = 0.25,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
    ) -> None:
        if not servers:
            raise ValueError("name at least one NATS server")
        if max_payload < 1 or queue_limit < 1:
            raise ValueError("max_payload and queue_limit must be positive")
        self._servers = list(servers)
        self._max_payload = max_payload
        self._name = name
        self._replicas = replicas
        self._api_timeout = api_timeout
        self._connect_timeout = connect_timeout
        self._reconnect_wait = reconnect_wait
        self._queue_limit = queue_limit
        self._state = "new"
        self._lifecycle = asyncio.Lock()
        self._nc: Client | None = None
        self._js: JetStreamApi | None = None
        self._internal_subs: list[NatsSubscription] = []
        self._streams = StreamCache()
        self._core: set[CoreSubscription] = set()
        self._durable: set[DurableSubscription] = set()
        self._acks = AckTable()
        self._dead_letters = DeadLetters(
            self._streams,
            self._acks,
            self.publish,
            lambda coro: self._spawn(coro, "dead-letter"),
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._reply_inbox = f"{PUBACK_PREFIX}{secrets.token_hex(11)}."
        self._reply_tokens = itertools.count(1)
        # token -> (the answer to come, what to say if the connection drops first)
        self._answers: dict[str, tuple[asyncio.Future[Msg], str]] = {}
        self._last_error: Exception | None = None

    async def __aenter__(self) -> NatsBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connects, checks JetStream and reads the streams. A closed broker cannot
        be started again."""
        async with self._lifecycle:
            if self._state == "started":
                return
            if self._state != "new":
                raise RuntimeError("a closed broker cannot be started again")
            await self._connect()

    async def _connect(self) -> None:
        nc = Client()
        options: dict[str, Any] = {
            "servers": self._servers,
            "name": self._name,
            "allow_reconnect": True,
            # Two tries at start (then fail fast); unlimited once connected (below).
            "max_reconnect_attempts": 1,
            "connect_timeout": self._connect_timeout,
            "reconnect_time_wait": self._reconnect_wait,
            "ping_interval": 10,
            "max_outstanding_pings": 3,
            "inbox_prefix": INBOX_PREFIX,
            # Subjects are checked by the bus's own, stricter rules before they get here.
            "skip_subject_validation": True,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
            "closed_cb": self._on_closed,
        }
        where = ", ".join(self._servers)
        try:
            await nc.connect(**options)
        except (TimeoutError, OSError, nats.errors.Error, ValueError) as e:
            with contextlib.suppress(Exception):
                await nc.close()
            cause = self._last_error if isinstance(e, nats.errors.NoServersError) else e
            reason = str(cause) or type(cause).__name__
            raise BusUnavailableError(
                f"cannot connect to NATS at {where}: {reason}", field="bus"
            ) from e
        nc.options["max_reconnect_attempts"] = -1
        self._nc, self._js = nc, JetStreamApi(nc, self._api_timeout)
        try:
            await self._js.call("INFO")
            await self._streams.refresh(self._js)
            self._dead_letters.attach(self._js)
            self._internal_subs = [
                await nc.subscribe(self._reply_inbox + "*", cb=self._on_answer),
                await nc.subscribe(
                    _MAX_DELIVERIES, queue=_DLQ_QUEUE, cb=self._dead_letters.on_advisory
                ),
                await nc.subscribe(_STREAM_EVENTS, cb=self._on_stream_event),
            ]
            await nc.flush()
        except (BusError, nats.errors.Error) as e:
            await nc.close()
            self._nc = self._js = None
            if isinstance(e, BusError):
                raise
            raise BusUnavailableError(f"NATS at {where}: {e!r}", field="bus") from e
        self._state = "started"
        self._spawn(self._maintain(), "maintain")
        log.info(
            "bus: connected to NATS at %s", nc.connected_url.netloc if nc.connected_url else where
        )

    async def close(self) -> None:
        """Ends every subscription and disconnects. What readers got from durable
        consumers and did not settle is handed back (NAK): its readers' streams end
        with this broker, so it is due again in a few seconds (see
        ``_subscriptions.HAND_BACK``), as after an embedded broker's restart, rather
        than after its ack wait. Idempotent."""
        async with self._lifecycle:
            if self._state == "closed":
                return
            was, self._state = self._state, "closed"
            if was == "started":
                await self._shut_down()

    async def _shut_down(self) -> None:
        for core in list(self._core):
            await core.close()
        pulling: set[tuple[str, str]] = set()
        for durable in list(self._durable):
            if durable.pulls_waiting:
                pulling.add((durable.stream, durable.consumer))
            await durable.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        nc, self._nc = self._nc, None
        if nc is None:
            return
        # The reader tasks of these subscriptions are nats-py's: close() ends
        # them only if it gets that far, and with the server gone its final
        # flush fails first. Unsubscribing ends them (and sends nothing while
        # the connection is down).
        internal, self._internal_subs = self._internal_subs, []
        for sub in internal:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        with contextlib.suppress(Exception):
            if nc.is_connected:
                for ack_id in self._acks.unsettled():
                    ref = parse_ack_id(ack_id)
                    late = ref is not None and (ref.stream, ref.consumer) in pulling
                    await nc.publish(ack_id, HAND_BACK if late else b"-NAK")
            await nc.close()

    @property
    def connected(self) -> bool:
        """Connected to a NATS server now: False before ``start()``, while the
        connection is being re-established, and once closed."""
        return self._state == "started" and self._nc is not None and self._nc.is_connected

    def stream_for(self, subject: str) -> str | None:
        """The stream that stores what is published to ``subject`` (None: core),
        as this broker knows the streams."""
        return self._streams.capturing(subject)

    def captured_subjects(self) -> tuple[str, ...]:
        """The subjects and patterns the streams capture, as this broker last read
        them (kept current by JetStream's stream advisories)."""
        return self._streams.patterns()

    def _ready(self) -> tuple[Client, JetStreamApi]:
        if self._state == "closed":
            raise BusClosedError("the bus is closed")
        if self._nc is None or self._js is None:
            raise RuntimeError("NatsBroker.start() was not called")
        return self._nc, self._js

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        if self._state == "closed":
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro, name=f"nats-bus-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("bus: %s failed", task.get_name(), exc_info=task.exception())

    # -- publishing -----------------------------------------------------------------------

    async def publish(self, message: OutgoingMessage) -> PublishAck:
        nc, _ = self._ready()
        stream, headers = self._prepare(nc, message)
        if stream is None:
            await self._send(nc, message.subject, message.data, message.reply_to, headers)
            return _CORE_ACK
        asked = await self._ask(nc, message.subject, message.data, headers, _PUBLISH_LOST)
        return await self._stored(message.subject, *asked)

    async def publish_many(
        self, messages: Sequence[OutgoingMessage]
    ) -> list[PublishAck | Exception]:
        """Each message as :meth:`publish` would, in order: every one is written to
        the connection before any answer is awaited (a core one needs none, so a
        batch of them costs no task each), then the stored ones' confirmations
        are awaited together. A refused message is its error."""
        nc, _ = self._ready()
        results: list[PublishAck | Exception] = []
        asked: list[tuple[int, str, str, asyncio.Future[Msg]]] = []
        try:
            for message in messages:
                try:
                    stream, headers = self._prepare(nc, message)
                    if stream is None:
                        await self._send(
                            nc, message.subject, message.data, message.reply_to, headers
                        )
                        results.append(_CORE_ACK)
                        continue
                    token, answered = await self._ask(
                        nc, message.subject, message.data, headers, _PUBLISH_LOST
                    )
                except BusError as e:
                    results.append(e)
                    continue
                asked.append((len(results), message.subject, token, answered))
                results.append(_CORE_ACK)  # replaced by the confirmation below
        except BaseException:  # a bug, or cancelled: the answers asked for are nobody's
            for _, _, token, answered in asked:
                self._answers.pop(token, None)
                answered.cancel()
            raise
        if asked:
            # One wait for every confirmation (not a task each): JetStream answers
            # them in order, quickly.
            await asyncio.wait([answered for *_, answered in asked], timeout=self._api_timeout)
            for index, subject, token, answered in asked:
                self._answers.pop(token, None)
                try:
                    if not answered.done():
                        answered.cancel()
                        results[index] = await self._not_stored_in_time(subject)
                    else:
                        results[index] = await self._read_answer(subject, answered.result())
                except BusError as e:
                    results[index] = e
        return results

    def _prepare(self, nc: Client, message: OutgoingMessage) -> tuple[str | None, dict[str, str]]:
        """Checks ``message``; the stream that captures its subject (None: core) and
        the NATS headers it is sent with."""
        validate_subject(message.subject, field="subject")
        unreserved(message.subject, pattern=False)
        if message.reply_to:
            validate_subject(message.reply_to, field="reply_to")
            unreserved(message.reply_to, pattern=False, field="reply_to")
        headers = nats_headers(validate_headers(message.headers)) if message.headers else {}
        if message.id:
            headers[MSG_ID] = message.id
        stream = self._capturing(message.subject)
        if stream is not None and message.reply_to:
            headers[REPLY_TO] = message.reply_to
        self._check_size(nc, message.data, headers)
        return stream, headers

    def _check_size(self, nc: Client, data: bytes, headers: Mapping[str, str]) -> None:
        if len(data) > self._max_payload:
            raise PayloadTooLargeError(
                f"data: {len(data)} bytes is over the limit of {self._max_payload}",
                field="data",
            )
        total = len(data) + header_bytes(headers)
        if total > nc.max_payload:
            raise PayloadTooLargeError(
                f"data: with its headers the message takes {total} bytes, over the NATS "
                f"server's max_payload of {nc.max_payload}",
                field="data",
            )

    async def _send(
        self, nc: Client, subject: str, data: bytes, reply: str, headers: Mapping[str, str]
    ) -> None:
        try:
            await nc.publish(subject, data, reply=reply, headers=dict(headers) or None)
        except nats.errors.Error as e:
            raise self._unavailable(e) from e

    async def _confirmed(
        self,
        nc: Client,
        subject: str,
        data: bytes,
        headers: Mapping[str, str] | None,
        lost: str,
    ) -> Msg:
        """Publishes with this broker's own reply inbox (``$ECO.PUBACK.…``) and returns
        the answer: JetStream's PubAck, or its reply to an ack. Core subscribers take
        no such inbox for a reply subject. Raises TimeoutError, or BusUnavailableError
        (saying ``lost``) when the connection drops before the answer comes."""
        return await self._answer(*await self._ask(nc, subject, data, headers, lost))

    async def _ask(
        self,
        nc: Client,
        subject: str,
        data: bytes,
        headers: Mapping[str, str] | None,
        lost: str,
    ) -> tuple[str, asyncio.Future[Msg]]:
        """Publishes with a reply token of this broker's inbox; the token and the
        future its answer will resolve (see :meth:`_answer`)."""
        token = str(next(self._reply_tokens))
        answered: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._answers[token] = (answered, lost)
        try:
            await nc.publish(
                subject, data, reply=self._reply_inbox + token, headers=dict(headers or {}) or None
            )
        except nats.errors.Error as e:
            self._answers.pop(token, None)
            raise self._unavailable(e) from e
        return token, answered

    async def _answer(self, token: str, answered: asyncio.Future[Msg]) -> Msg:
        try:
            return await asyncio.wait_for(answered, self._api_timeout)
        finally:
            self._answers.pop(token, None)

    async def _stored(self, subject: str, token: str, answered: asyncio.Future[Msg]) -> PublishAck:
        """What JetStream answered a publish (see :meth:`_ask`): returns once it
        stored the message."""
        try:
            answer = await self._answer(token, answered)
        except TimeoutError:
            return await self._not_stored_in_time(subject)
        return await self._read_answer(subject, answer)

    async def _not_stored_in_time(self, subject: str) -> PublishAck:
        await self._refresh_streams_quietly()
        if self._capturing(subject) is None:
            return PublishAck()  # the stream is gone: a core publish after all
        raise BusUnavailableError(f"NATS: JetStream did not store {subject!r} in time")

    async def _read_answer(self, subject: str, answer: Msg) -> PublishAck:
        """JetStream's PubAck in ``answer``, or what its absence means."""
        if answer.headers and answer.headers.get("Status") == "503":
            # Nothing answered for JetStream: either the stream is gone (then this
            # was a core publish after all), or JetStream is not serving it yet
            # (just after a server restart): then nothing is stored, say so.
            await self._refresh_streams_quietly()
            if self._capturing(subject) is None:
                return PublishAck()
            raise BusUnavailableError(
                f"NATS: JetStream did not answer for {subject!r} (not ready yet?); publish "
                "it again (with the same id, to store it once)"
            )
        plain = _PUB_ACK.fullmatch(answer.data)
        if plain is not None:  # the usual answer, read without a JSON parser
            stream, sequence, duplicate = plain.groups()
            return PublishAck(stream.decode(), int(sequence), duplicate is not None)
        try:
            ack = json.loads(answer.data)
        except ValueError as e:
            raise BusError(f"JetStream answered a publish to {subject!r} with non-JSON") from e
        if "error" in ack:
            error = ack["error"]
            raise BusError(f"JetStream refused {subject!r}: {error.get('description', error)}")
        return PublishAck(
            stream=str(ack.get("stream", "")),
            sequence=int(ack.get("seq", 0)),
            duplicate=bool(ack.get("duplicate", False)),
        )

    async def _on_answer(self, msg: Msg) -> None:
        entry = self._answers.get(msg.subject[len(self._reply_inbox) :])
        if entry is not None and not entry[0].done():
            entry[0].set_result(msg)

    def _unavailable(self, error: Exception) -> BusError:
        if self._state == "closed":
            return BusClosedError("the bus is closed")
        return BusUnavailableError(f"NATS: {error!r}")

    # -- request/reply --------------------------------------------------------------------

    async def request(
        self,
        subject: str,
        data: bytes,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
    ) -> Delivery:
        nc, _ = self._ready()
        validate_subject(subject, field="subject")
        unreserved(subject, pattern=False)
        if not timeout > 0:
            raise ValueError(f"timeout: must be positive (got {timeout})")
        hdrs = nats_headers(validate_headers(headers)) if headers else {}
        if self._capturing(subject) is not None:
            return await self._request_through_stream(nc, subject, data, hdrs, timeout)
        self._check_size(nc, data, hdrs)
        try:
            msg = await nc.request(subject, data, timeout=timeout, headers=hdrs or None)
        except nats.errors.NoRespondersError as e:
            raise NoRespondersError(
                f"subject: no subscriber for {subject!r}", field="subject"
            ) from e
        except nats.errors.TimeoutError as e:
            raise TimeoutError(f"no reply to {subject!r} within {timeout:g}s") from e
        except nats.errors.Error as e:
            raise self._unavailable(e) from e
        return self._reply(msg)

    async def _request_through_stream(
        self, nc: Client, subject: str, data: bytes, headers: Mapping[str, str], timeout: float
    ) -> Delivery:
        """A request to a subject a stream captures: stored like any publish, with the
        inbox in ``Eco-Reply-To`` (the NATS reply carries JetStream's PubAck). NATS
        cannot tell here whether anyone subscribes: no reply is a TimeoutError."""
        inbox = nc.new_inbox()
        answer: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        try:
            sub = await nc.subscribe(inbox, max_msgs=1, future=answer)
        except nats.errors.Error as e:
            raise self._unavailable(e) from e
        try:
            async with asyncio.timeout(timeout):
                await self.publish(OutgoingMessage(subject, data, headers, reply_to=inbox))
                return self._reply(await answer)
        except TimeoutError as e:
            raise TimeoutError(f"no reply to {subject!r} within {timeout:g}s") from e
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    @staticmethod
    def _reply(msg: Msg) -> Delivery:
        headers, message_id, _ = inner_headers(msg.headers)
        return Delivery(
            subject=msg.subject,
            data=msg.data,
            headers=headers,
            id=message_id,
            published_at=time.time(),
        )

    # -- subscriptions --------------------------------------------------------------------

    async def subscribe(self, spec: SubscriptionSpec) -> Subscription:
        nc, js = self._ready()
        validate_spec(spec)
        unreserved(spec.subject, pattern=True)
        if spec.durable:
            return await self._subscribe_durable(nc, js, spec)
        sub = CoreSubscription(spec.subject, self._queue_limit, self._core.discard)
        try:
            sub.attach(await nc.subscribe(spec.subject, queue=spec.queue_group, cb=sub.on_msg))
            await nc.flush(timeout=max(1, round(self._api_timeout)))
        except nats.errors.Error as e:
            await sub.close()
            raise self._unavailable(e) from e
        self._core.add(sub)
        return sub

    async def _subscribe_durable(
        self, nc: Client, js: JetStreamApi, spec: SubscriptionSpec
    ) -> DurableSubscription:
        meta = await self._streams.find_for(js, spec)
        info, native = await ensure_consumer(js, meta, spec)
        sub = DurableSubscription(
            nc,
            self._acks,
            spec,
            stream=meta.name,
            floor=start_floor(info.get("config") or {}),
            local_filter=not native,
            next_sequence=consumer_info(info).next_sequence,
            credit=min(spec.max_ack_pending, self._queue_limit),
            spawn=lambda coro: self._spawn(coro, "end-subscription"),
            on_close=self._durable.discard,
        )
        try:
            await sub.open()
        except nats.errors.Error as e:
            await sub.close()
            raise self._unavailable(e) from e
        self._durable.add(sub)
        return sub

    async def ack(self, ack_id: str, kind: AckKind, delay: float = 0.0) -> None:
        nc, _ = self._ready()
        if delay < 0:
            raise ValueError(f"delay: must not be negative (got {delay})")
        ref = parse_ack_id(ack_id) if isinstance(ack_id, str) else None
        if ref is None:
            raise AckNotFoundError(f"ack_id: {ack_id!r} is not a pending delivery", field="ack_id")
        self._acks.check(ref)
        if kind is AckKind.ACK:
            payload = b"+ACK"
        elif kind is AckKind.NAK:
            payload = b"-NAK"
            if delay > 0:
                payload += b" " + json.dumps({"delay": ns(delay)}).encode()
        elif kind is AckKind.TERM:
            payload = b"+TERM"
        else:
            payload = b"+WPI"
        try:
            answer = await self._confirmed(
                nc,
                ack_id,
                payload,
                None,
                "NATS: the connection was lost before JetStream confirmed the ack; "
                "ack again (the delivery may come again, marked redelivered)",
            )
        except TimeoutError as e:
            raise BusUnavailableError(f"NATS: no answer to the {kind.value} in time") from e
        if (answer.headers or {}).get("Status") == "503":
            raise AckNotFoundError(
                f"ack_id: consumer {ref.consumer} of stream {ref.stream} no longer exists",
                field="ack_id",
            )
        if kind is AckKind.ACK or kind is AckKind.TERM:
            self._acks.settled(ref)
        elif kind is AckKind.NAK:
            self._acks.handed_back(ack_id)

    # -- streams --------------------------------------------------------------------------

    async def add_stream(self, config: StreamConfig) -> tuple[StreamInfo, bool]:
        _, js = self._ready()
        validate_stream_config(config)
        for pattern in config.subjects:
            unreserved(pattern, pattern=True, field="subjects")
        if config.dead_letter_subject:
            unreserved(config.dead_letter_subject, pattern=False, field="dead_letter_subject")
        config = StreamConfig(
            name=config.name,
            subjects=tuple(config.subjects),
            max_age=float(config.max_age),
            max_msgs=int(config.max_msgs),
            max_bytes=int(config.max_bytes),
            duplicate_window=float(config.duplicate_window),
            dead_letter_subject=config.dead_letter_subject,
        )
        info, created = await self._streams.add(js, config, replicas=self._replicas)
        if created:
            log.info("bus: stream %s added (%s)", config.name, ",".join(config.subjects))
            return stream_info(info), True
        return await self._with_consumers(info), False

    async def streams(self) -> list[StreamInfo]:
        _, js = self._ready()
        infos = await js.stream_infos()
        return sorted(
            [await self._with_consumers(info) for info in infos], key=lambda s: s.config.name
        )

    async def _with_consumers(self, info: Mapping[str, Any]) -> StreamInfo:
        _, js = self._ready()
        name = str(info["config"]["name"])
        live: dict[str, int] = {}
        for sub in self._durable:
            if sub.stream == name:
                live[sub.consumer] = live.get(sub.consumer, 0) + 1
        consumers = [
            consumer_info(
                c,
                dead_lettered=self._dead_letters.count(name, str(c.get("name"))),
                subscribers=live.get(str(c.get("name")), 0),
            )
            for c in await js.consumers(name)
        ]
        return stream_info(info, tuple(sorted(consumers, key=lambda c: c.name)))

    async def delete_stream(self, name: str) -> None:
        _, js = self._ready()
        validate_name(name, field="name")
        try:
            await js.call(f"STREAM.DELETE.{name}")
        except StreamNotFoundError as e:
            raise StreamNotFoundError(f"name: no stream {name!r}", field="name") from e
        self._streams.drop(name)
        self._acks.forget_stream(name)
        for sub in [s for s in self._durable if s.stream == name]:
            await sub.close()
        log.info("bus: stream %s deleted", name)

    def _capturing(self, subject: str) -> str | None:
        return self._streams.capturing(subject)

    async def _refresh_streams_quietly(self) -> None:
        if self._js is not None:
            await self._streams.refresh_quietly(self._js)

    # -- background -----------------------------------------------------------------------

    async def _maintain(self) -> None:
        last_refresh = time.monotonic()
        while True:
            await asyncio.sleep(_TICK)
            for sub in list(self._durable):
                await sub.tick()
            if time.monotonic() - last_refresh > _REFRESH_EVERY:
                last_refresh = time.monotonic()
                await self._refresh_streams_quietly()

    async def _on_stream_event(self, msg: Msg) -> None:
        # $JS.EVENT.ADVISORY.STREAM.<CREATED|DELETED|UPDATED>.<name>
        tokens = msg.subject.split(".")
        if tokens[4] in ("CREATED", "DELETED"):
            self._acks.forget_stream(tokens[5])
        if tokens[4] in ("CREATED", "DELETED", "UPDATED"):
            self._spawn(self._refresh_streams_quietly(), "refresh-streams")

    async def _on_error(self, error: Exception) -> None:
        self._last_error = error
        if isinstance(error, nats.errors.SlowConsumerError) or self._state != "started":
            return  # counted by the subscription itself; or start() reports it
        log.warning("bus: NATS: %r", error)

    async def _on_disconnected(self) -> None:
        if self._state == "started":
            log.warning("bus: disconnected from NATS; reconnecting")
        # An answer still due may never come: say so now rather than at the timeout.
        for answered, lost in self._answers.values():
            if not answered.done():
                answered.set_exception(BusUnavailableError(lost))

    async def _on_reconnected(self) -> None:
        log.info("bus: reconnected to NATS")
        self._spawn(self._after_reconnect(), "reconnected")

    async def _after_reconnect(self) -> None:
        for sub in list(self._durable):
            await sub.reconnected()
        await self._refresh_streams_quietly()

    async def _on_closed(self) -> None:
        if self._state == "started":
            log.error("bus: the NATS connection closed for good")
