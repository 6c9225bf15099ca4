"""The `Broker` protocol: what the message bus needs from a backend.

The embedded broker (``EmbeddedBroker``, the default) and NATS
(``NatsBroker``, JetStream for durable streams) implement it, and one
conformance suite (tests/unit/bus/) holds both to the same behaviour. The
gRPC ``MessagingService`` (proto/ecosystem/v1/messaging.proto) is a thin
adapter over it; the sidecar relay implements it. What a broker raises is
the tree in ``_errors``.

Semantics (the proto's comments say the same from the client's side):

- **Subjects** are dot-separated tokens of letters, digits, ``-`` and ``_``
  (and ``$`` for inbox subjects); patterns use ``*`` for one token and a
  trailing ``>`` for one or more. ``bus.subjects`` validates them.
- **Core** (at most once): ``publish`` hands the message to every core
  subscription whose pattern matches and that exists at that moment; within
  a queue group, to exactly one member. Nothing is stored; a subscriber
  whose queue is full loses the message and is counted as slow.
- **Durable**: when a stream captures the subject, ``publish`` returns only
  after the message is stored (durably: it survives kill -9 of the process),
  with its sequence; a message id seen within the stream's duplicate window
  is not stored again (``duplicate=True``, the first sequence). Core
  subscribers matching the subject get it too.
- **Durable consumers** (``subscribe`` with ``durable``): named, per stream;
  position and pending acknowledgements survive disconnects and restarts.
  All live subscriptions with the same durable name share its deliveries
  (each message to one of them). A delivery not acknowledged within
  ``ack_wait`` (or NAKed) is redelivered with ``delivery_count + 1`` after
  the backoff for that attempt; after ``max_deliver`` deliveries it is
  published to the stream's dead-letter subject (headers
  ``eco-dlq-stream``, ``eco-dlq-sequence``, ``eco-dlq-consumer``,
  ``eco-dlq-deliveries``) and dropped from the consumer. At most
  ``max_ack_pending`` deliveries are outstanding per consumer; more wait.
  Per subject, first deliveries are in publish order.
- **Request/reply**: ``request`` subscribes a unique inbox, publishes with
  ``reply_to`` set to it, and returns the first reply; ``NoRespondersError``
  at once when no subscription matches the subject.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from sdk import AckKind, DeliverPolicy, StreamConfig, StreamInfo

__all__ = [
    "BatchPublisher",
    "Broker",
    "Delivery",
    "OutgoingMessage",
    "PublishAck",
    "Subscription",
    "SubscriptionSpec",
]

#: Default payload limit (bytes); brokers may be configured lower or higher.
MAX_PAYLOAD = 1024 * 1024


# -- values -------------------------------------------------------------------------------
# The stream and consumer values (StreamConfig, StreamInfo, ConsumerInfo) and
# AckKind / DeliverPolicy are the SDK's: one definition for client and server.


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    subject: str
    data: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    #: the publisher's id, for de-duplication within a stream's window
    id: str = ""
    reply_to: str = ""


@dataclass(frozen=True, slots=True)
class PublishAck:
    #: empty when no stream captured the subject
    stream: str = ""
    sequence: int = 0
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message as a subscriber gets it."""

    subject: str
    data: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    id: str = ""
    reply_to: str = ""
    stream: str = ""
    sequence: int = 0
    #: Unix time, seconds
    published_at: float = 0.0
    #: durable: 1 on the first delivery
    delivery_count: int = 0
    #: durable: what ``ack`` takes; empty for core messages
    ack_id: str = ""

    @property
    def redelivered(self) -> bool:
        return self.delivery_count > 1


@dataclass(frozen=True, slots=True)
class SubscriptionSpec:
    subject: str
    queue_group: str = ""
    #: a durable consumer's name; empty: core
    durable: str = ""
    #: empty: the stream capturing ``subject``
    stream: str = ""
    deliver: DeliverPolicy = DeliverPolicy.ALL
    start_sequence: int = 0
    #: Unix time, seconds
    start_time: float = 0.0
    ack_wait: float = 30.0
    max_deliver: int = 5
    max_ack_pending: int = 1000
    #: seconds, one per redelivery attempt (the last repeats); empty: ack_wait
    backoff: tuple[float, ...] = ()


# -- the protocol -------------------------------------------------------------------------


@runtime_checkable
class Subscription(Protocol):
    """Deliveries of one subscription; iterate, then ``close()`` (idempotent).

    Ready when ``subscribe`` returns: a message published after that reaches
    it. The iterator ends when the subscription or the broker is closed.
    Each subscription has a bounded queue; the broker never blocks on a slow
    core subscriber (it drops and counts), and holds durable deliveries back
    instead (``max_ack_pending``).
    """

    def __aiter__(self) -> AsyncIterator[Delivery]: ...

    async def close(self) -> None: ...

    @property
    def dropped(self) -> int:
        """Core messages lost because this subscriber's queue was full."""
        ...

    @property
    def next_sequence(self) -> int:
        """Durable: the consumer's next first-delivery sequence (0 for core)."""
        ...


@runtime_checkable
class BatchPublisher(Protocol):
    """A broker that also takes several publishes at once (optional; the gRPC
    servicer uses it for ``PublishBatch`` when the broker has it)."""

    async def publish_many(
        self, messages: Sequence[OutgoingMessage]
    ) -> list[PublishAck | Exception]:
        """Each message as ``publish`` would, in order; a refused one is its error."""
        ...


@runtime_checkable
class Broker(Protocol):
    """A message bus backend. ``start()`` before use; ``close()`` is idempotent."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, message: OutgoingMessage) -> PublishAck: ...

    async def subscribe(self, spec: SubscriptionSpec) -> Subscription:
        """Raises InvalidSubjectError, StreamNotFoundError (durable, no stream)."""
        ...

    async def ack(self, ack_id: str, kind: AckKind, delay: float = 0.0) -> None:
        """Raises AckNotFoundError when the delivery is unknown or no longer pending."""
        ...

    async def request(
        self,
        subject: str,
        data: bytes,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
    ) -> Delivery:
        """Raises NoRespondersError, TimeoutError."""
        ...

    async def add_stream(self, config: StreamConfig) -> tuple[StreamInfo, bool]:
        """The stream and whether it was created (False: an identical one existed)."""
        ...

    async def streams(self) -> list[StreamInfo]: ...

    async def delete_stream(self, name: str) -> None: ...
