"""What the relay sends its applications' traffic over: a :class:`Link`.

Two kinds: to the control plane (``_controlplane_link``: its
``MessagingService`` over gRPC, the embedded broker's only way in) and to
NATS itself (``_nats_link``: the bus's own NATS backend), which the control
plane names in the sidecar's session when the deployment's broker is NATS.

Every link raises broker errors (:class:`bus.BusError` and ``TimeoutError``);
:class:`bus.BusUnavailableError` and :class:`bus.BusClosedError` mean "not
reachable now": the relay then buffers publishes and resubscribes later.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from bus import (
    BusClosedError,
    BusUnavailableError,
    Delivery,
    OutgoingMessage,
    PublishAck,
    SubscriptionSpec,
)
from sdk import AckKind, StreamConfig, StreamInfo

__all__ = ["CUT_OFF", "Link", "Subscribed"]

#: What a link raises when its broker cannot be reached (now, or any more).
CUT_OFF = (BusUnavailableError, BusClosedError)


@dataclass(frozen=True, slots=True)
class Subscribed:
    """The first event of a link's subscription: it is in place upstream."""

    stream: str = ""
    next_sequence: int = 0


class Link(Protocol):
    """One way to the broker. ``open()`` connects (raising
    BusUnavailableError when it cannot), ``close()`` ends it; the rest is the
    broker's API."""

    #: "controlplane" or "nats"
    kind: str
    #: the broker URL it was made for ("" for the control plane)
    url: str

    @property
    def where(self) -> str:
        """Where it goes, for logs and status (no credentials)."""
        ...

    @property
    def available(self) -> bool:
        """Whether a publish may go straight through now (False: buffer it)."""
        ...

    @property
    def attempts(self) -> int:
        """How many tries a first subscribe gets before its error is the caller's."""
        ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def captures(self, subject: str) -> bool:
        """Whether a durable stream captures ``subject``, as far as the link knows."""
        ...

    async def captured(self) -> tuple[str, ...]:
        """The subjects and patterns the streams capture, read again."""
        ...

    async def publish(self, message: OutgoingMessage) -> PublishAck: ...

    async def publish_many(
        self, messages: Sequence[OutgoingMessage]
    ) -> list[PublishAck | Exception]: ...

    async def ack(self, ack_id: str, kind: AckKind, delay: float) -> None: ...

    async def request(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None, timeout: float
    ) -> Delivery: ...

    async def add_stream(self, config: StreamConfig) -> tuple[StreamInfo, bool]: ...

    async def streams(self) -> list[StreamInfo]: ...

    async def delete_stream(self, name: str) -> None: ...

    def subscribe(self, spec: SubscriptionSpec) -> AsyncIterator[Subscribed | Delivery]:
        """:class:`Subscribed` once the subscription is in place, then its
        deliveries; ends only by raising (a cut-off error when it was cut off)."""
        ...
