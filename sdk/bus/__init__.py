"""The message bus client: publish, subscribe, request/reply and durable streams.

:class:`BusClient` talks to ``MessagingService`` (a control plane, or the
local sidecar's relay) through the SDK's transport. Inside:

- ``_client``: :class:`BusClient`;
- ``_subscription``: :class:`BusSubscription`, one ``Subscribe`` stream read
  into a bounded queue;
- ``_batch``: the batchers that send concurrent publishes and acks together
  (low-level: documented with :mod:`sdk.lowlevel`);
- ``_types``: the bus's values, defined once for client and server
  (:class:`BusMessage`, :class:`StreamConfig`, :class:`StreamInfo`,
  :class:`ConsumerInfo`, :class:`AckKind`, :class:`DeliverPolicy`,
  :class:`PublishResult`); the server side (the ``bus`` package) uses these
  same types.

Everything here is also exported by :mod:`sdk`, the batchers by
:mod:`sdk.lowlevel`.
"""

from sdk.bus._batch import AckBatcher, PublishBatcher, publish_request
from sdk.bus._client import BusClient
from sdk.bus._subscription import BusSubscription
from sdk.bus._types import (
    AckKind,
    BusMessage,
    ConsumerInfo,
    DeliverPolicy,
    PublishResult,
    StreamConfig,
    StreamInfo,
)

__all__ = [
    "AckBatcher",
    "AckKind",
    "BusClient",
    "BusMessage",
    "BusSubscription",
    "ConsumerInfo",
    "DeliverPolicy",
    "PublishBatcher",
    "PublishResult",
    "StreamConfig",
    "StreamInfo",
    "publish_request",
]
