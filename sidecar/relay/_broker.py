"""The sidecar's bus relay: applications use the bus through their local sidecar.

:class:`RelayBroker` implements :class:`bus.Broker` over one link at a time
(``_link``): to the control plane (the SDK's transport, failing over between
the sidecar's ``controlplane.addresses``), or, when the control plane names
the deployment's broker in the sidecar's session (:meth:`RelayBroker.use_broker`),
straight to NATS with the bus's own NATS backend, so that messages do not
pass through the control plane. :func:`attach_relay` serves it as
``MessagingService`` on the sidecar's local API server, so ``eco bus …
--server <local api>`` and ``sdk.BusClient(<local api>)`` work unchanged.

- Core subscriptions to the same pattern and queue group share one upstream
  subscription (reference-counted) and fan out locally, each local
  subscriber with its own bounded queue: a slow one is reported once and
  loses messages without stalling the others. Durable subscriptions get one
  upstream subscription each (per-consumer flow control). Upstream
  subscriptions subscribe again by themselves when the broker comes back,
  and over the new link when the link changes.
- Publishes while the link's broker is unreachable are buffered (bounded:
  ``max_buffered`` messages and ``max_buffered_bytes``; beyond,
  BusUnavailableError) and flushed in order when it is back; those for
  subjects a durable stream captures are kept on disk (``_outbox``)
  and survive a sidecar restart. A buffered publish returns a
  :class:`QueuedPublishAck` (``stream=""``, ``sequence=0``, ``queued=True``).
  A durable publish without an id is given one before it is first sent, so
  that a publish sent again after a lost answer is stored once.
- Ack, request and the stream calls pass through; UNAVAILABLE when the
  broker cannot be reached. Errors are the broker's (a control plane's
  answers become broker errors in ``bus.broker_error``), so the local
  servicer answers with the same statuses.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bus import (
    MAX_PAYLOAD,
    BusClosedError,
    BusError,
    BusUnavailableError,
    Delivery,
    InvalidSubjectError,
    OutgoingMessage,
    PayloadTooLargeError,
    PublishAck,
    Subscription,
    SubscriptionSpec,
)
from bus.convert import subject_problem
from bus.servicer import MessagingServicer, add_messaging
from sdk import AckKind, ChannelFactory, StreamConfig, StreamInfo
from sdk.lowlevel import Backoff
from sidecar.relay._controlplane_link import ControlPlaneLink
from sidecar.relay._link import CUT_OFF, Link
from sidecar.relay._outbox import BUFFER_FILE, Outbox
from sidecar.relay._subscriptions import Upstream

__all__ = ["QueuedPublishAck", "RelayBroker", "attach_relay"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class QueuedPublishAck(PublishAck):
    """A publish the relay buffered (the broker was unreachable).

    Over gRPC it reads as ``stream=""``, ``sequence=0``: for a subject a
    durable stream captures, that pair means "queued by the relay".
    """

    queued: bool = True


class RelayBroker:
    """A :class:`~bus.Broker` that forwards to the control plane, or to the
    broker it names.

    ``addresses``: the control planes, in order of preference. ``data_dir``:
    where durable-subject publishes are buffered and the broker last named is
    remembered (None: memory only). ``broker_url``: the broker to start with
    ("" the control plane; None: the one remembered in ``data_dir``, else the
    control plane). ``queue_limit``: each local subscriber's queue.
    ``start()`` loads the buffer and begins connecting; ``close()``
    (idempotent) ends every subscription and keeps the on-disk buffer for
    the next start.
    """

    def __init__(
        self,
        addresses: Sequence[str],
        data_dir: Path | None,
        *,
        broker_url: str | None = None,
        timeout: float = 5.0,
        queue_limit: int = 1024,
        max_buffered: int = 10_000,
        max_buffered_bytes: int = 64 * 1024 * 1024,
        channel_factory: ChannelFactory | None = None,
        token: str = "",
    ) -> None:
        if queue_limit < 1:
            raise ValueError("queue_limit must be positive")
        self._addresses = tuple(addresses)
        self._timeout = timeout
        self._channel_factory = channel_factory
        self._token = token
        path = data_dir / BUFFER_FILE if data_dir is not None else None
        self._outbox = Outbox(path, max_messages=max_buffered, max_bytes=max_buffered_bytes)
        self._queue_limit = queue_limit
        self._wanted: str | None = broker_url
        self._captured: tuple[str, ...] = ()
        self._link: Link = self._make_link("")
        self._retired: set[Link] = set()
        self._upstreams: dict[tuple[str, str], Upstream] = {}
        self._durables: set[Upstream] = set()
        self._connected = False
        # Set once the current link had its first try: publishes wait for it
        # (briefly) rather than queue behind a link that is coming up.
        self._settled = asyncio.Event()
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._wake = asyncio.Event()
        self._last_error = ""
        self._ids = itertools.count(1)
        self._id_prefix = f"relay-{secrets.token_hex(6)}-"
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False

    # -- observability ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the broker answers and nothing waits to flush."""
        return self._connected and self._link.available and not len(self._outbox)

    @property
    def buffered(self) -> int:
        """Publishes waiting for the broker."""
        return len(self._outbox)

    @property
    def upstream_subscriptions(self) -> int:
        """Open upstream subscriptions (shared core ones count once)."""
        return len(self._upstreams) + len(self._durables)

    @property
    def route(self) -> str:
        """``"controlplane"`` or ``"nats"``: where messages go now."""
        return self._link.kind

    def status(self) -> dict[str, Any]:
        """The relay's part of the sidecar's ``/status``."""
        return {
            "route": self._link.kind,
            "broker": self._link.where,
            "connected": self.connected,
            "buffered": len(self._outbox),
            "buffered_bytes": self._outbox.bytes,
            "upstream_subscriptions": self.upstream_subscriptions,
            "last_error": self._last_error,
        }

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("a relay can be started once")
        self._started = True
        self._captured = tuple(self._outbox.open())
        if self._wanted is None:
            self._wanted = self._outbox.remembered_broker() or ""
        else:
            self._outbox.remember_broker(self._wanted)
        try:
            self._link = self._make_link(self._wanted)
        except BusError as err:
            logger.error("bus relay: cannot relay to %r: %s", self._wanted, err)
            self._wanted = ""
            self._link = self._make_link("")
        if self._wanted:
            logger.info("bus relay: relaying to NATS at %s", self._link.where)
        else:
            # Optimistic until a call fails: publishes go straight through (unless
            # a previous run left some to flush first, which keeps them in order).
            self._connected = True
            self._settled.set()
        self._task = asyncio.create_task(self._connect_loop(), name="relay-connect")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
        for upstream in [*self._upstreams.values(), *self._durables]:
            await upstream.close()
        for link in [*self._retired, self._link]:
            await link.close()
        lost = self._outbox.drop_memory()
        if lost:
            logger.warning("bus relay closed: %d buffered core publish(es) lost", lost)
        if len(self._outbox):
            logger.info("bus relay closed: %d durable publish(es) kept on disk", len(self._outbox))
        self._outbox.close()

    def _check_open(self) -> None:
        if self._closed or not self._started:
            raise BusClosedError(
                "the relay is closed" if self._closed else "the relay is not started"
            )

    def use_broker(self, url: str) -> None:
        """Relays to the broker at ``url`` from now on ("": through the control
        plane), as the control plane said in the sidecar's session; remembered
        in ``data_dir`` for the next start. Returns at once: the relay changes
        links in the background (in-flight publishes finish first, publishes
        meanwhile keep their order, subscriptions move over)."""
        if url == self._wanted:
            return
        self._wanted = url
        self._outbox.remember_broker(url)
        self._wake.set()

    # -- connection -------------------------------------------------------------------------

    def _make_link(self, url: str) -> Link:
        patterns = self._captured
        if not url:
            return ControlPlaneLink(
                self._addresses,
                timeout=self._timeout,
                patterns=patterns,
                channel_factory=self._channel_factory,
                token=self._token,
            )
        from sidecar.relay._nats_link import NatsLink  # nats-py only when NATS is named

        return NatsLink(url, patterns=patterns)

    def _disconnected(self, err: BaseException) -> None:
        self._last_error = str(err)
        if self._connected and not self._closed:
            logger.warning(
                "bus relay: %s unreachable (%s); buffering publishes", self._describe(), err
            )
        self._connected = False
        self._wake.set()

    def _describe(self) -> str:
        link = self._link
        return f"NATS at {link.where}" if link.kind == "nats" else "the control plane"

    async def _connect_loop(self) -> None:
        """Opens the link, learns the captured subjects and flushes the buffer
        in order, first on start and then whenever a call found the broker
        unreachable (retrying with jittered backoff until it answers); moves to
        another link when the control plane names another broker."""
        backoff = Backoff(0.05, 2.0)
        due = True
        while True:
            if self._wanted is not None and self._wanted != self._link.url:
                await self._switch(self._wanted)
                due = True
                backoff.reset()
            if self._connected and not due and not len(self._outbox):
                await self._wake.wait()
                self._wake.clear()
                continue
            try:
                await self._link.open()
                await self._refresh_captured()
                await self._flush()
            except CUT_OFF as err:
                self._disconnected(err)
                self._settled.set()  # publishes buffer now rather than wait
                self._wake.clear()
                try:
                    async with asyncio.timeout(backoff.next_delay()):
                        await self._wake.wait()  # or a new broker named meanwhile
                except TimeoutError:
                    pass
                continue
            due = False
            backoff.reset()
            self._settled.set()
            if not self._connected:
                self._connected = True
                self._last_error = ""
                logger.info("bus relay: connected to %s", self._describe_where())

    def _describe_where(self) -> str:
        link = self._link
        return f"NATS at {link.where}" if link.kind == "nats" else link.where

    async def _switch(self, url: str) -> None:
        """Moves to the link for ``url``: publishes wait (briefly) while the
        ones in flight on the old link finish, then the old link closes and the
        subscriptions subscribe again over the new one."""
        old = self._link
        self._settled.clear()
        self._connected = False
        try:
            async with asyncio.timeout(self._timeout):
                await self._idle.wait()
        except TimeoutError:
            logger.warning("bus relay: publishes still in flight on %s; moving on", old.where)
        try:
            new = self._make_link(url)
        except BusError as err:
            logger.error("bus relay: cannot relay to %r: %s; keeping %s", url, err, old.where)
            self._wanted = old.url
            self._connected = True
            self._settled.set()
            return
        self._link = new
        # Closed by close() instead if the relay closes while this one closes.
        self._retired.add(old)
        await old.close()
        self._retired.discard(old)
        logger.info("bus relay: relaying to %s (was %s)", self._describe(), old.where or old.kind)
        for upstream in [*self._upstreams.values(), *self._durables]:
            await upstream.relink()

    async def _refresh_captured(self) -> None:
        patterns = await self._link.captured()
        if patterns != self._captured:
            self._captured = patterns
            self._outbox.remember_captured(patterns)

    async def _flush(self) -> None:
        sent = 0
        while (item := self._outbox.peek()) is not None:
            try:
                await self._link.publish(item.message)
            except CUT_OFF:
                raise
            except BusError as err:  # refused: it never will be taken
                logger.warning(
                    "bus relay: buffered publish to %r refused: %s", item.message.subject, err
                )
            self._outbox.pop()
            sent += 1
        if sent:
            logger.info("bus relay: %d buffered publish(es) flushed", sent)

    # -- publish ----------------------------------------------------------------------------

    def _straight(self) -> bool:
        """Whether a publish may go to the broker now (else: the buffer)."""
        return self._connected and not len(self._outbox) and self._link.available

    async def _wait_settled(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._settled.wait()
        except TimeoutError:
            pass

    def _with_id(self, message: OutgoingMessage) -> OutgoingMessage:
        """A durable publish without an id gets one, so that sending it again
        (after an answer was lost) stores it once."""
        if message.id or not self._link.captures(message.subject):
            return message
        m, mid = message, f"{self._id_prefix}{next(self._ids)}"
        return OutgoingMessage(m.subject, m.data, m.headers, mid, m.reply_to)

    def _begin(self) -> None:
        self._inflight += 1
        self._idle.clear()

    def _end(self) -> None:
        self._inflight -= 1
        if not self._inflight:
            self._idle.set()

    async def publish(self, message: OutgoingMessage) -> PublishAck:
        self._check_open()
        if not self._settled.is_set():
            await self._wait_settled()
        message = self._with_id(message)
        # While anything waits in the buffer, new publishes queue behind it (order).
        if self._straight():
            self._begin()
            try:
                return await self._link.publish(message)
            except CUT_OFF as err:
                self._disconnected(err)
            finally:
                self._end()
        return self._buffer(message)

    async def publish_many(
        self, messages: Sequence[OutgoingMessage]
    ) -> list[PublishAck | Exception]:
        """Each message as :meth:`publish` would, in order, going upstream together."""
        self._check_open()
        if not self._settled.is_set():
            await self._wait_settled()
        messages = [self._with_id(m) for m in messages]
        if not self._straight():
            return [self._buffer_or_error(message) for message in messages]
        self._begin()
        try:
            outcomes = await self._link.publish_many(messages)
        finally:
            self._end()
        results: list[PublishAck | Exception] = []
        for message, outcome in zip(messages, outcomes, strict=True):
            if isinstance(outcome, CUT_OFF):
                self._disconnected(outcome)
                results.append(self._buffer_or_error(message))
            else:
                results.append(outcome)
        return results

    def _buffer_or_error(self, message: OutgoingMessage) -> PublishAck | Exception:
        try:
            return self._buffer(message)
        except BusError as exc:
            return exc

    def _buffer(self, message: OutgoingMessage) -> PublishAck:
        """Keeps ``message`` for the flush (on disk when a stream captures it)."""
        # What the broker would refuse at the flush is refused now.
        problem = subject_problem(message.subject, pattern=False)
        if problem is not None:
            raise InvalidSubjectError(problem, field="subject")
        if len(message.data) > MAX_PAYLOAD:
            raise PayloadTooLargeError(
                f"{len(message.data)} bytes is over the limit of {MAX_PAYLOAD}", field="data"
            )
        if self._connected and not self._link.available:
            self._disconnected(BusUnavailableError(f"{self._describe()}: not connected"))
        durable = self._link.captures(message.subject)
        self._outbox.push(message, durable=durable, unreachable=self._describe())
        self._wake.set()
        return QueuedPublishAck()

    # -- subscribe --------------------------------------------------------------------------

    async def subscribe(self, spec: SubscriptionSpec) -> Subscription:
        self._check_open()
        if spec.durable:
            upstream = Upstream(spec, lambda: self._link, on_idle=self._durables.discard)
            self._durables.add(upstream)
            return await upstream.attach(self._queue_limit, self._timeout)
        key = (spec.subject, spec.queue_group)
        shared = self._upstreams.get(key)
        if shared is None:
            shared = Upstream(spec, lambda: self._link, on_idle=self._forget)
            self._upstreams[key] = shared
        return await shared.attach(self._queue_limit, self._timeout)

    def _forget(self, upstream: Upstream) -> None:
        if self._upstreams.get(upstream.key) is upstream:
            del self._upstreams[upstream.key]

    # -- pass-through -----------------------------------------------------------------------

    async def _through(self, call: Callable[[Link], Any]) -> Any:
        self._check_open()
        try:
            return await call(self._link)
        except CUT_OFF as err:
            self._disconnected(err)
            raise

    async def ack(self, ack_id: str, kind: AckKind, delay: float = 0.0) -> None:
        await self._through(lambda link: link.ack(ack_id, kind, delay))

    async def request(
        self,
        subject: str,
        data: bytes,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
    ) -> Delivery:
        reply: Delivery = await self._through(
            lambda link: link.request(subject, data, headers, timeout)
        )
        return reply

    async def add_stream(self, config: StreamConfig) -> tuple[StreamInfo, bool]:
        added: tuple[StreamInfo, bool] = await self._through(lambda link: link.add_stream(config))
        await self._note_streams()
        return added

    async def streams(self) -> list[StreamInfo]:
        infos: list[StreamInfo] = await self._through(lambda link: link.streams())
        return infos

    async def delete_stream(self, name: str) -> None:
        await self._through(lambda link: link.delete_stream(name))
        await self._note_streams()

    async def _note_streams(self) -> None:
        """Learns the captured subjects again after a stream change (best effort)."""
        try:
            await self._refresh_captured()
        except BusError as err:
            logger.debug("bus relay: cannot list streams: %s", err)


async def attach_relay(
    server: grpc.aio.Server,
    addresses: Sequence[str],
    data_dir: Path | None,
    is_draining: Callable[[], bool],
    *,
    broker_url: str | None = None,
    channel_factory: ChannelFactory | None = None,
) -> tuple[RelayBroker, MessagingServicer]:
    """Starts a relay to ``addresses`` (or to ``broker_url``, see
    :class:`RelayBroker`) and adds ``MessagingService`` over it to ``server``
    (not yet started). The caller stops the server, then ``await relay.close()``."""
    relay = RelayBroker(addresses, data_dir, broker_url=broker_url, channel_factory=channel_factory)
    await relay.start()
    servicer = add_messaging(server, relay, is_draining)
    return relay, servicer
