"""The embedded broker (``embedded://``, the default): core routing in memory,
durable streams and consumers kept by a journal file (see `_broker`)."""

from bus.embedded._broker import EmbeddedBroker

__all__ = ["EmbeddedBroker"]
