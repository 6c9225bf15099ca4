"""HTTP/1.1 message heads as the proxy rewrites them, and the proxy's own answers.

The parser (``httptools``) hands over each header as a ``(name, value)``
pair; the proxy sorts it with one dict lookup on the lower-cased name
(:data:`REQUEST_ACTIONS`, :data:`RESPONSE_ACTIONS`) and appends the headers
it keeps, byte for byte, to a flat list ``[start line, name, b": ", value,
b"\\r\\n", …]`` that becomes the forwarded head with one ``join``.
Hop-by-hop headers (``Connection`` and the headers it names,
``Keep-Alive``, ``Proxy-Connection``, ``TE``, ``Trailer``,
``Transfer-Encoding``, ``Upgrade``) are dropped on both sides: each hop
frames its own body (chunked bodies are re-chunked) and decides its own
keep-alive.
"""

from __future__ import annotations

import http
from random import getrandbits

__all__ = [
    "ACT_CONNECTION",
    "ACT_CONTENT_LENGTH",
    "ACT_DROP",
    "ACT_FORWARDED_FOR",
    "ACT_REQUEST_ID",
    "ACT_TRANSFER_ENCODING",
    "CRLF",
    "IDEMPOTENT",
    "LAST_CHUNK",
    "REQUEST_ACTIONS",
    "RESPONSE_ACTIONS",
    "chunk_size_line",
    "connection_names",
    "drop_named",
    "error_response",
    "last_chunk",
    "new_request_id",
    "status_class",
]

#: what the proxy does with a header (absent from the tables: keep it as is)
ACT_DROP = 1
ACT_CONNECTION = 2
ACT_TRANSFER_ENCODING = 3
ACT_FORWARDED_FOR = 4
ACT_REQUEST_ID = 5
ACT_CONTENT_LENGTH = 6

_HOP_BY_HOP = {
    b"connection": ACT_CONNECTION,
    b"keep-alive": ACT_DROP,
    b"proxy-connection": ACT_DROP,
    b"te": ACT_DROP,
    b"trailer": ACT_DROP,
    b"transfer-encoding": ACT_TRANSFER_ENCODING,
    b"upgrade": ACT_DROP,
}

#: request headers (lower-cased names) the proxy does not simply pass on
REQUEST_ACTIONS: dict[bytes, int] = {
    **_HOP_BY_HOP,
    b"x-forwarded-for": ACT_FORWARDED_FOR,
    # the proxy says how it was reached; a client cannot claim https through it
    b"x-forwarded-proto": ACT_DROP,
    b"x-request-id": ACT_REQUEST_ID,
}

#: response headers (lower-cased names) the proxy does not simply pass on
RESPONSE_ACTIONS: dict[bytes, int] = {
    **_HOP_BY_HOP,
    b"content-length": ACT_CONTENT_LENGTH,
}

#: methods whose requests may be sent twice (RFC 9110, 9.2.2)
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

CRLF = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"

# Connection options that are about this hop's keep-alive, not header names.
_CONNECTION_OPTIONS = frozenset({b"close", b"keep-alive", b"upgrade"})
_COMMON_CONNECTION = frozenset({b"keep-alive", b"close", b"Keep-Alive", b"Close", b"upgrade"})
_NO_NAMES: frozenset[bytes] = frozenset()
_STATUS_CLASSES = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")
_REASONS = {int(s): s.phrase.encode() for s in http.HTTPStatus}


def connection_names(value: bytes) -> frozenset[bytes]:
    """The header names a ``Connection`` value lists (lower-cased), beyond
    ``close``, ``keep-alive`` and ``upgrade``: hop-by-hop headers too."""
    if value in _COMMON_CONNECTION:
        return _NO_NAMES
    names = {token.strip().lower() for token in value.split(b",")}
    names -= _CONNECTION_OPTIONS
    names.discard(b"")
    return frozenset(names)


def drop_named(out: list[bytes], names: frozenset[bytes]) -> list[bytes]:
    """``out`` (a start line, then ``name, b": ", value, b"\\r\\n"`` quads)
    without the headers called one of ``names`` (lower-cased)."""
    kept = [out[0]]
    for i in range(1, len(out) - 3, 4):
        if out[i].lower() not in names:
            kept.extend(out[i : i + 4])
    return kept


def chunk_size_line(size: int) -> bytes:
    """The line that starts a chunk of ``size`` bytes."""
    return b"%x\r\n" % size


def last_chunk(trailers: list[bytes] | None) -> bytes:
    """The end of a chunked body, with trailer fields (flat ``name, ": ", value, CRLF``)."""
    if not trailers:
        return LAST_CHUNK
    return b"".join((b"0\r\n", *trailers, CRLF))


def status_class(status: int) -> str:
    """``2xx`` for 200 … 299 and so on; ``other`` past 599."""
    return _STATUS_CLASSES[status // 100] if status < 600 else "other"


def new_request_id() -> bytes:
    """A random 128-bit request id, 32 hex digits (not a secret: no CSPRNG needed)."""
    return b"%032x" % getrandbits(128)


def error_response(
    status: int, kind: str, message: str, *, close: bool, keep_alive_header: bool = False
) -> bytes:
    """A complete response made by the proxy: a one-line ``text/plain`` body
    and ``x-eco-proxy-error: kind``. ``close`` adds ``Connection: close``;
    ``keep_alive_header`` adds ``Connection: keep-alive`` (an HTTP/1.0 client
    that asked to keep the connection)."""
    body = message.encode("utf-8", "replace") + b"\n"
    connection = b"connection: close\r\n" if close else b""
    if keep_alive_header and not close:
        connection = b"connection: keep-alive\r\n"
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"")),
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            b"x-eco-proxy-error: %s\r\n" % kind.encode("ascii"),
            connection,
            CRLF,
            body,
        )
    )
