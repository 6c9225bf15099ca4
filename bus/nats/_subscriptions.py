"""Subscriptions of the NATS backend: core ones, durable ones (JetStream pull), and
the table of deliveries that lets ``ack`` tell a stale ack id.

A core subscription is a NATS subscription whose callback fills a bounded
buffer (full: the message is dropped and counted). A durable subscription
pulls its JetStream consumer (``$JS.API.CONSUMER.MSG.NEXT``) into its buffer,
each pull request with its own reply subject under the subscription's inbox:
JetStream spreads messages over the waiting pull requests of every
subscription of the consumer (so they share it), holds them back at
``max_ack_pending``, and redelivers (or gives up after ``max_deliver``) only
into a waiting pull request. Pull requests do not survive a server restart:
after a reconnect they are sent again, and one that neither delivered nor
expired in time is replaced.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from bus._errors import AckNotFoundError
from bus._protocol import Delivery, SubscriptionSpec
from bus._waiter import Waiter
from bus.nats._jetstream import (
    ACK_PREFIX,
    PUBACK_PREFIX,
    AckRef,
    inner_headers,
    ns,
    parse_ack_id,
)
from bus.subjects import subject_matches

__all__ = ["HAND_BACK", "AckTable", "CoreSubscription", "DurableSubscription"]

log = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[Any, Any, None]], None]

#: Seconds a pull request waits on the server before it expires (and is sent again).
#: Short on purpose: nats-server 2.9 may pick a message for a waiting pull request
#: whose subscriber is gone and then drop the delivery (it comes back only after
#: its ack wait); an expired request is never picked.
PULL_EXPIRES = 2.0
# Beyond its expiry, how long a pull request may stay silent before it is taken for lost.
_PULL_GRACE = 1.0
#: What a subscription (or broker) going away hands back while pull requests of its
#: may still wait: a NAK that takes effect once they have expired (see PULL_EXPIRES).
HAND_BACK = b"-NAK " + json.dumps({"delay": round((PULL_EXPIRES + 0.5) * 1e9)}).encode()
# After "too many waiting pull requests" (409), wait this long before pulling again.
_PULL_PAUSE = 1.0


class AckTable:
    """What this broker knows of each durable message it delivered: its latest
    delivery (ack id and delivery count), or that it was settled (ACK, TERM) or
    dead-lettered. So ``ack`` refuses an ack id that is no longer pending, and
    a delivery the server repeats after losing its own record of it (kill -9 of
    nats-server loses the last moments of a consumer's state) is still counted
    as a redelivery, or, when it was settled, settled again instead of
    delivered.

    Bounded (oldest forgotten first): an ack id it no longer knows is passed to
    the server, which ignores it if the delivery is gone.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        # (stream, consumer, sequence) -> (latest ack id, its delivery count), or a
        # settled / dead-lettered mark
        self._latest: OrderedDict[tuple[str, str, int], tuple[str, int] | str] = OrderedDict()
        self._out: OrderedDict[str, None] = OrderedDict()

    def delivered(self, ref: AckRef) -> int | None:
        """Records a delivery; its delivery count, None when the message was
        settled or dead-lettered already (the caller settles it again), or 0
        when this very delivery came before (the same ack subject: the server
        sent it twice, as it may around a restart), which the caller drops: the
        first copy is the one a reader has."""
        key = ref.message
        prev = self._latest.get(key)
        if isinstance(prev, str):
            return None
        if prev is not None and prev[0] == ref.subject:
            return 0
        count = ref.delivery_count
        if prev is not None:
            count = max(count, prev[1] + 1)
        self._remember(key, (ref.subject, count))
        return count

    def _remember(self, key: tuple[str, str, int], value: tuple[str, int] | str) -> None:
        self._latest[key] = value
        self._latest.move_to_end(key)
        while len(self._latest) > self._capacity:
            self._latest.popitem(last=False)

    def check(self, ref: AckRef) -> None:
        """Raises AckNotFoundError when the delivery was settled or superseded."""
        prev = self._latest.get(ref.message)
        if prev is None:
            return
        where = f"{ref.stream}/{ref.consumer} sequence {ref.stream_sequence}"
        if isinstance(prev, str):
            raise AckNotFoundError(f"ack_id: {where} was {prev} already", field="ack_id")
        if prev[0] != ref.subject:
            raise AckNotFoundError(
                f"ack_id: {where} was delivered again (delivery {prev[1]}) since",
                field="ack_id",
            )

    def superseded(self, ref: AckRef) -> bool:
        """Delivered again, settled or dead-lettered since this delivery."""
        prev = self._latest.get(ref.message)
        return prev is not None and (isinstance(prev, str) or prev[0] != ref.subject)

    def settled(self, ref: AckRef) -> None:
        self._remember(ref.message, "acknowledged")
        self._out.pop(ref.subject, None)

    def dead(self, stream: str, consumer: str, sequence: int) -> None:
        self._remember((stream, consumer, sequence), "dead-lettered")

    def forget_stream(self, stream: str) -> None:
        """The stream was deleted (or made anew): its sequences mean other messages now."""
        for key in [k for k in self._latest if k[0] == stream]:
            del self._latest[key]

    def handed_out(self, ref: AckRef) -> None:
        """A reader got this delivery (see `unsettled`)."""
        self._out[ref.subject] = None
        while len(self._out) > self._capacity:
            self._out.popitem(last=False)

    def handed_back(self, ack_id: str) -> None:
        """NAKed: the server redelivers it; nothing to hand back at close."""
        self._out.pop(ack_id, None)

    def unsettled(self) -> list[str]:
        """Ack ids of deliveries readers got and did not settle, oldest first."""
        return list(self._out)


class _Buffered:
    """A bounded buffer of deliveries iterated until closed."""

    def __init__(self) -> None:
        self._buffer: deque[Delivery] = deque()
        self._closed = False
        self._waiter = Waiter()

    def _push(self, delivery: Delivery) -> None:
        self._buffer.append(delivery)
        self._wake()

    def _wake(self) -> None:
        self._waiter.wake()

    async def _next(self) -> Delivery:
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            await self._waiter.wait()
        if self._closed:
            raise StopAsyncIteration
        return self._buffer.popleft()


class CoreSubscription(_Buffered):
    """At most once: what NATS delivers to ``pattern`` while the subscription lives."""

    def __init__(
        self, pattern: str, capacity: int, on_close: Callable[[CoreSubscription], None]
    ) -> None:
        super().__init__()
        self.pattern = pattern
        self._capacity = capacity
        self._on_close = on_close
        self._dropped = 0
        # NATS matches a leading wildcard against "$JS…" API traffic and inbox
        # replies too; the bus's patterns never mean those.
        self._skip_dollar = pattern.split(".", 1)[0] in ("*", ">")
        self._nsub: NatsSubscription | None = None

    def attach(self, nsub: NatsSubscription) -> None:
        self._nsub = nsub

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def next_sequence(self) -> int:
        return 0

    async def on_msg(self, msg: Msg) -> None:
        if self._closed or msg.reply.startswith(ACK_PREFIX):
            return  # a JetStream delivery to some pull request's inbox
        if self._skip_dollar and msg.subject.startswith("$"):
            return
        if len(self._buffer) >= self._capacity:
            self._dropped += 1
            if self._dropped == 1:
                log.warning(
                    "bus subscription %s is slow: its queue of %d is full, dropping messages",
                    self.pattern,
                    self._capacity,
                )
            return
        headers, message_id, reply_to = inner_headers(msg.headers)
        self._push(
            Delivery(
                subject=msg.subject,
                data=msg.data,
                headers=headers,
                id=message_id,
                reply_to=reply_to if msg.reply.startswith(PUBACK_PREFIX) else msg.reply,
                published_at=time.time(),
            )
        )

    def __aiter__(self) -> CoreSubscription:
        return self

    async def __anext__(self) -> Delivery:
        return await self._next()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        self._wake()
        self._on_close(self)
        nsub, self._nsub = self._nsub, None
        if nsub is not None:
            with contextlib.suppress(nats.errors.Error):
                await nsub.unsubscribe()


class DurableSubscription(_Buffered):
    """At least once: deliveries of a JetStream durable consumer, pulled into a buffer.

    Like the embedded broker's, it takes deliveries as far as its buffer has room
    (``credit``: ``max_ack_pending`` or the queue limit, whichever is less) and
    JetStream's ``max_ack_pending`` allows: one pull request asks for what is
    missing, another once half of it has arrived. JetStream round-robins
    between the waiting pull requests of a consumer's subscriptions.
    """

    def __init__(
        self,
        nc: Client,
        acks: AckTable,
        spec: SubscriptionSpec,
        *,
        stream: str,
        floor: int,
        local_filter: bool,
        next_sequence: int,
        credit: int,
        spawn: Spawn,
        on_close: Callable[[DurableSubscription], None],
    ) -> None:
        super().__init__()
        self.stream = stream
        self.consumer = spec.durable
        self._pattern = spec.subject
        self._nc = nc
        self._acks = acks
        self._floor = floor
        self._local_filter = local_filter
        self._next_sequence = next_sequence
        self._credit = max(1, credit)
        self._spawn = spawn
        self._on_close = on_close
        self._inbox = ""
        self._nsub: NatsSubscription | None = None
        self._pull_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{spec.durable}"
        self._tokens = itertools.count(1)
        # reply token of each waiting pull request -> (messages still to come, when to
        # give up on it (monotonic))
        self._waiting: dict[str, tuple[int, float]] = {}
        self._paused_until = 0.0

    @property
    def dropped(self) -> int:
        return 0

    @property
    def next_sequence(self) -> int:
        return self._next_sequence

    async def open(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._nsub = await self._nc.subscribe(self._inbox + ".*", cb=self._on_msg)
        await self._pull()
        await self._nc.flush()

    def __aiter__(self) -> DurableSubscription:
        return self

    async def __anext__(self) -> Delivery:
        while True:
            # Pull before taking from the buffer: a cancellation in between would lose
            # the delivery taken.
            await self._pull()
            delivery = await self._next()
            ref = parse_ack_id(delivery.ack_id)
            if ref is None:
                return delivery
            if not self._acks.superseded(ref):
                self._acks.handed_out(ref)
                return delivery
            # else: redelivered (to another member) while it waited here

    async def _on_msg(self, msg: Msg) -> None:
        if msg.reply.startswith(ACK_PREFIX):
            # A delivery shows the message's subject, not which pull it answers:
            # count it against the oldest.
            for token, (left, deadline) in self._waiting.items():
                if left <= 1:
                    del self._waiting[token]
                else:
                    self._waiting[token] = (left - 1, deadline)
                break
            await self._accept(msg)
        else:
            # Status messages come to the pull's own reply subject.
            self._waiting.pop(msg.subject[len(self._inbox) + 1 :], None)
            self._on_status(msg)
        await self._pull()

    async def _accept(self, msg: Msg) -> None:
        ref = parse_ack_id(msg.reply)
        if ref is None:
            return
        skip = ref.stream_sequence < self._floor or (
            self._local_filter and not subject_matches(self._pattern, msg.subject)
        )
        if self._closed:
            with contextlib.suppress(nats.errors.Error):
                await self._nc.publish(msg.reply, HAND_BACK)
            return
        count = None if skip else self._acks.delivered(ref)
        if count == 0:
            return  # a second copy of a delivery already taken
        if count is None:
            # Below the requested start or outside the pattern (see NatsBroker), or
            # settled before the server lost track of it: settle it (again).
            with contextlib.suppress(nats.errors.Error):
                await self._nc.publish(msg.reply, b"+ACK")
            return
        if ref.delivery_count == 1 and ref.stream_sequence >= self._next_sequence:
            self._next_sequence = ref.stream_sequence + 1
        headers, message_id, reply_to = inner_headers(msg.headers)
        self._push(
            Delivery(
                subject=msg.subject,
                data=msg.data,
                headers=headers,
                id=message_id,
                reply_to=reply_to,
                stream=ref.stream,
                sequence=ref.stream_sequence,
                published_at=ref.timestamp,
                delivery_count=count,
                ack_id=msg.reply,
            )
        )

    def _on_status(self, msg: Msg) -> None:
        headers = msg.headers or {}
        status = headers.get("Status", "")
        description = str(headers.get("Description", ""))
        if status in ("100", "404", "408"):
            return  # heartbeat, nothing pending, the request expired
        if status == "503" or "Deleted" in description:
            log.info(
                "bus: consumer %s of stream %s is gone (%s %s); ending its subscription",
                self.consumer,
                self.stream,
                status,
                description,
            )
            self._spawn(self.close())
            return
        # "Exceeded MaxWaiting" and the like: too many pulls queued on the consumer.
        log.debug("bus: pull on %s/%s: %s %s", self.stream, self.consumer, status, description)
        self._paused_until = time.monotonic() + _PULL_PAUSE

    async def _pull(self) -> None:
        """Asks for what the buffer has room for, once at least half of it is missing
        (or nothing is asked for at all)."""
        if self._closed or not self._nc.is_connected:
            return
        now = time.monotonic()
        if now < self._paused_until:
            return
        asked = sum(n for n, _ in self._waiting.values())
        missing = self._credit - len(self._buffer) - asked
        if missing <= 0 or (asked and missing < max(1, self._credit // 2)):
            return
        token = str(next(self._tokens))
        self._waiting[token] = (missing, now + PULL_EXPIRES + _PULL_GRACE)
        body = json.dumps({"batch": missing, "expires": ns(PULL_EXPIRES)}).encode()
        try:
            await self._nc.publish(self._pull_subject, body, reply=f"{self._inbox}.{token}")
        except nats.errors.Error:
            self._waiting.pop(token, None)

    async def tick(self) -> None:
        """Forgets pull requests gone silent past their expiry, and pulls again."""
        now = time.monotonic()
        for token in [t for t, (_, deadline) in self._waiting.items() if deadline < now]:
            del self._waiting[token]
        await self._pull()

    async def reconnected(self) -> None:
        """The server may have restarted, losing every waiting pull request."""
        self._waiting.clear()
        await self._pull()

    @property
    def pulls_waiting(self) -> bool:
        """Whether pull requests of this subscription may still wait on the server."""
        return bool(self._waiting)

    async def close(self) -> None:
        """Stops pulling; hands what is buffered back (NAK) so that another member
        gets it: at once, or once this subscription's pull requests have expired."""
        if self._closed:
            return
        unread = list(self._buffer)
        hand_back = HAND_BACK if self._waiting else b"-NAK"
        self._closed = True
        self._buffer.clear()
        self._wake()
        self._on_close(self)
        nsub, self._nsub = self._nsub, None
        with contextlib.suppress(nats.errors.Error):
            if nsub is not None:
                await nsub.unsubscribe()
            for delivery in unread:
                await self._nc.publish(delivery.ack_id, hand_back)
