"""The sidecar's bus relay: applications use the bus through their local sidecar.

``RelayBroker`` (``_broker``) implements :class:`bus.Broker` for the
sidecar's local API and bridges; :func:`attach_relay` serves it as
``MessagingService`` on a gRPC server. Inside:

- ``_broker``: the relay itself (publish, buffering and flushing, the
  subscriptions' sharing, pass-through calls);
- ``_outbox``: the ordered buffer of publishes made while the upstream is
  unreachable, on disk for subjects a durable stream captures;
- ``_subscriptions``: upstream ``Subscribe`` streams and the local
  subscribers they feed;
"""

from sidecar.relay._broker import QueuedPublishAck, RelayBroker, attach_relay

__all__ = ["QueuedPublishAck", "RelayBroker", "attach_relay"]
