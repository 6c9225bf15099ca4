"""The message bus: core pub/sub, durable streams, request/reply (see `_protocol`).

Backends: the embedded broker (``embedded://``, the default; durable
streams in a file next to the control plane's store) and NATS
(``nats://HOST:PORT[,HOST:PORT…]``, JetStream for durable streams), each
imported only when opened. ``MessagingServicer`` serves either over gRPC.
Errors::

    BusError
    ├── InvalidSubjectError     INVALID_ARGUMENT
    ├── PayloadTooLargeError    INVALID_ARGUMENT
    ├── StreamNotFoundError     NOT_FOUND
    ├── StreamConflictError     ALREADY_EXISTS
    ├── AckNotFoundError        NOT_FOUND
    ├── NoRespondersError       UNAVAILABLE (reason NO_RESPONDERS)
    ├── BusUnavailableError     UNAVAILABLE
    └── BusClosedError          UNAVAILABLE
"""

from typing import TYPE_CHECKING, Any

from controlplane.bus._open import open_broker
from controlplane.bus._protocol import (
    MAX_PAYLOAD,
    AckKind,
    AckNotFoundError,
    Broker,
    BusClosedError,
    BusError,
    BusUnavailableError,
    ConsumerInfo,
    DeliverPolicy,
    Delivery,
    InvalidSubjectError,
    NoRespondersError,
    OutgoingMessage,
    PayloadTooLargeError,
    PublishAck,
    StreamConfig,
    StreamConflictError,
    StreamInfo,
    StreamNotFoundError,
    Subscription,
    SubscriptionSpec,
)

__all__ = [
    "MAX_PAYLOAD",
    "AckKind",
    "AckNotFoundError",
    "Broker",
    "BusClosedError",
    "BusError",
    "BusUnavailableError",
    "ConsumerInfo",
    "DeliverPolicy",
    "Delivery",
    "InvalidSubjectError",
    "MessagingServicer",
    "NoRespondersError",
    "OutgoingMessage",
    "PayloadTooLargeError",
    "PublishAck",
    "StreamConfig",
    "StreamConflictError",
    "StreamInfo",
    "StreamNotFoundError",
    "Subscription",
    "SubscriptionSpec",
    "open_broker",
]

if TYPE_CHECKING:
    from controlplane.bus._servicer import MessagingServicer


def __getattr__(name: str) -> Any:
    # The gRPC face is imported on first use: it needs controlplane.errors,
    # which imports this package's errors (and backends never need gRPC).
    if name == "MessagingServicer":
        from controlplane.bus._servicer import MessagingServicer

        return MessagingServicer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
