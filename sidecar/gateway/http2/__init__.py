"""HTTP/2 at the gateway's edge (ALPN ``h2`` on its TLS listener): each stream
is carried through the HTTP/1.1 data plane by an in-memory hop. The connection
(`_connection`, whose docstring tells the design and its limits), one stream
and its hop (`_stream`), the request head's checks and translation (`_head`)."""

from sidecar.gateway.http2._connection import (
    MAX_CONCURRENT_STREAMS,
    Http2Connection,
    Http2Listener,
)

__all__ = ["MAX_CONCURRENT_STREAMS", "Http2Connection", "Http2Listener"]
