"""The message bus: core pub/sub, durable streams, request/reply (see `_protocol`).

The values a broker shares with its clients (``StreamConfig``, ``StreamInfo``,
``ConsumerInfo``, ``AckKind``, ``DeliverPolicy``) are the SDK's: import them
from ``sdk``.

Backends: the embedded broker (``embedded://``, the default; durable
streams in a file next to the control plane's store) and NATS
(``nats://HOST:PORT[,HOST:PORT…]``, JetStream for durable streams), each
imported only when opened. ``MessagingServicer`` serves any broker over gRPC:
the control plane mounts it with its broker, the sidecar with its relay.
Errors (``_errors``; each is served with its code and an ErrorInfo reason
of the same name)::

    BusError
    ├── InvalidSubjectError     INVALID_ARGUMENT
    ├── PayloadTooLargeError    INVALID_ARGUMENT
    ├── StreamNotFoundError     NOT_FOUND
    ├── StreamConflictError     ALREADY_EXISTS
    ├── AckNotFoundError        NOT_FOUND
    ├── NoRespondersError       UNAVAILABLE
    ├── BusUnavailableError     UNAVAILABLE
    ├── BusClosedError          UNAVAILABLE
    └── UpstreamError           the code an upstream MessagingService answered
        └── UpstreamTimeoutError    DEADLINE_EXCEEDED (a TimeoutError too)

:func:`broker_error` turns what an upstream ``MessagingService`` answered
(an SDK error) back into the broker error that is served with the same
status: the relay's one translation.
"""

from bus._errors import (
    AckNotFoundError,
    BusClosedError,
    BusError,
    BusUnavailableError,
    InvalidSubjectError,
    NoRespondersError,
    PayloadTooLargeError,
    StreamConflictError,
    StreamNotFoundError,
    UpstreamError,
    UpstreamTimeoutError,
    broker_error,
)
from bus._open import open_broker
from bus._protocol import (
    MAX_PAYLOAD,
    BatchPublisher,
    Broker,
    Delivery,
    OutgoingMessage,
    PublishAck,
    Subscription,
    SubscriptionSpec,
)
from bus.servicer import MessagingServicer

__all__ = [
    "MAX_PAYLOAD",
    "AckNotFoundError",
    "BatchPublisher",
    "Broker",
    "BusClosedError",
    "BusError",
    "BusUnavailableError",
    "Delivery",
    "InvalidSubjectError",
    "MessagingServicer",
    "NoRespondersError",
    "OutgoingMessage",
    "PayloadTooLargeError",
    "PublishAck",
    "StreamConflictError",
    "StreamNotFoundError",
    "Subscription",
    "SubscriptionSpec",
    "UpstreamError",
    "UpstreamTimeoutError",
    "broker_error",
    "open_broker",
]
