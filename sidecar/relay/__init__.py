"""The sidecar's bus relay: applications use the bus through their local sidecar.

``RelayBroker`` (``_broker``) implements :class:`bus.Broker` for the
sidecar's local API and bridges; :func:`attach_relay` serves it as
``MessagingService`` on a gRPC server. It relays over one link at a time:
straight to NATS when the control plane names it in the sidecar's session,
else through the control plane. Inside:

- ``_broker``: the relay itself (publish, buffering and flushing, the
  subscriptions' sharing, pass-through calls, moving between links);
- ``_link``: what a link is (the broker's API, and "cut off" errors);
- ``_controlplane_link``: the link to the control plane's
  ``MessagingService`` over gRPC;
- ``_nats_link``: the link to NATS itself, the bus's own NATS backend;
- ``_outbox``: the ordered buffer of publishes made while the broker is
  unreachable, on disk for subjects a durable stream captures, and the
  broker last named;
- ``_subscriptions``: upstream subscriptions and the local subscribers they
  feed.
"""

from sidecar.relay._broker import QueuedPublishAck, RelayBroker, attach_relay

__all__ = ["QueuedPublishAck", "RelayBroker", "attach_relay"]
