"""The HTTP/1.1 proxy: its listener (`_listener`), the client side of a
connection (`_downstream`), one request's way through (`_exchange`), the
parsing and rewriting rules (`_parse`) and the upstream connection pool
(`_pool`)."""

from sidecar.proxy.http._listener import HttpListener

__all__ = ["HttpListener"]
