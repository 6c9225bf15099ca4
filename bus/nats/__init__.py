"""The NATS backend (``nats://HOST:PORT[,…]``): core messaging on NATS, durable
streams and consumers on JetStream (see `_broker`)."""

from bus.nats._broker import NatsBroker

__all__ = ["NatsBroker"]
