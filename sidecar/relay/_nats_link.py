"""The relay's link to NATS itself: the bus's own NATS backend (``bus.nats``).

The control plane names the broker in the sidecar's session when the
deployment's bus is NATS; the relay then opens a :class:`bus.nats.NatsBroker`
of its own and the control plane is out of the messages' path. Subjects,
streams, durable consumers and ack ids are the same as the control plane's
(one bus), so what an application did through either is valid through the
other.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence

from bus import (
    BusError,
    BusUnavailableError,
    Delivery,
    OutgoingMessage,
    PublishAck,
    SubscriptionSpec,
    open_broker,
)
from bus.nats import NatsBroker
from bus.subjects import subject_matches
from sdk import AckKind, StreamConfig, StreamInfo
from sidecar.relay._link import Subscribed

__all__ = ["NatsLink", "redacted"]


def redacted(url: str) -> str:
    """``url`` without user names and passwords (for logs and status)."""
    parts = []
    for server in url.split(","):
        scheme, sep, rest = server.strip().rpartition("://")
        if "@" in rest:
            rest = "***@" + rest.rpartition("@")[2]
        parts.append(f"{scheme}{sep}{rest}")
    return ",".join(parts)


class NatsLink:
    """A :class:`~bus.nats.NatsBroker` on ``url`` (``nats://HOST:PORT``, several
    comma-separated). ``patterns``: the captured subjects last known, used
    until the broker has read the streams itself."""

    kind = "nats"

    def __init__(self, url: str, *, patterns: Sequence[str] = ()) -> None:
        self.url = url
        broker = open_broker(url, None)
        if not isinstance(broker, NatsBroker):
            raise BusError(f"{redacted(url)!r} is not a NATS URL", field="bus")
        self._broker = broker
        self._patterns = tuple(patterns)
        self._lock = asyncio.Lock()
        self._started = False

    @property
    def where(self) -> str:
        return redacted(self.url)

    @property
    def available(self) -> bool:
        return self._broker.connected

    @property
    def attempts(self) -> int:
        return 1

    async def open(self) -> None:
        """Connects on first use (the broker then reconnects by itself);
        BusUnavailableError while NATS cannot be reached."""
        async with self._lock:
            if not self._started:
                await self._broker.start()
                self._started = True
        if not self._broker.connected:
            raise BusUnavailableError(f"NATS at {self.where}: connection lost; reconnecting")

    async def close(self) -> None:
        await self._broker.close()

    def captures(self, subject: str) -> bool:
        if self._started:
            return self._broker.stream_for(subject) is not None
        return any(subject_matches(p, subject) for p in self._patterns)

    async def captured(self) -> tuple[str, ...]:
        await self.open()
        return self._broker.captured_subjects()

    async def publish(self, message: OutgoingMessage) -> PublishAck:
        return await self._broker.publish(message)

    async def publish_many(
        self, messages: Sequence[OutgoingMessage]
    ) -> list[PublishAck | Exception]:
        return await self._broker.publish_many(messages)

    async def _ready(self) -> None:
        """Fails fast (BusUnavailableError) while NATS is away, rather than
        after a call's timeout."""
        if not self._broker.connected:
            await self.open()

    async def ack(self, ack_id: str, kind: AckKind, delay: float) -> None:
        await self._ready()
        await self._broker.ack(ack_id, kind, delay)

    async def request(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None, timeout: float
    ) -> Delivery:
        await self._ready()
        return await self._broker.request(subject, data, headers, timeout)

    async def add_stream(self, config: StreamConfig) -> tuple[StreamInfo, bool]:
        await self._ready()
        return await self._broker.add_stream(config)

    async def streams(self) -> list[StreamInfo]:
        await self._ready()
        return await self._broker.streams()

    async def delete_stream(self, name: str) -> None:
        await self._ready()
        await self._broker.delete_stream(name)

    async def subscribe(self, spec: SubscriptionSpec) -> AsyncIterator[Subscribed | Delivery]:
        await self.open()
        sub = await self._broker.subscribe(spec)
        try:
            yield Subscribed(str(getattr(sub, "stream", "") or ""), sub.next_sequence)
            async for delivery in sub:
                yield delivery
        finally:
            with contextlib.suppress(BusError):
                await sub.close()
        raise BusUnavailableError(f"NATS at {self.where}: the subscription ended")
