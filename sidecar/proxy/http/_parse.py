"""HTTP/1.1 message heads as the proxy rewrites them, and the proxy's own answers.

The parser (``httptools``) hands over each header as a ``(name, value)``
pair; the proxy sorts it with one dict lookup on the lower-cased name
(:data:`REQUEST_ACTIONS`, :data:`RESPONSE_ACTIONS`) and appends the headers
it keeps, byte for byte, to a flat list ``[start line, name, b": ", value,
b"\\r\\n", …]`` that becomes the forwarded head with one ``join``.
Hop-by-hop headers (``Connection`` and the headers it names,
``Keep-Alive``, ``Proxy-Connection``, ``TE``, ``Trailer``,
``Transfer-Encoding``, ``Upgrade``) are dropped on both sides: each hop
frames its own body (chunked bodies are re-chunked, a request's
``Content-Length`` is written anew from the value the parser framed the body
by) and decides its own keep-alive. ``Connection`` cannot name a header the
framing or the proxy depends on (:data:`NEVER_HOP_BY_HOP`): that name is
ignored, so the length sent on is always the length of the body sent on.

Limits are counted where bytes arrive, before the parser (which joins a
header's pieces in memory) is given them: a connection in a head or a
trailer section has ``room`` bytes left (elsewhere :data:`UNCOUNTED`, so that
a read costs one subtraction either way); a read that does not fit goes
through :func:`feed_within`. The count is exact for a section that begins
a read; one that begins in the middle of a read (a pipelined request, the
trailers after a body) is counted from the next piece, and also field by
field as the parser reports them.

Request targets (RFC 9112, 3.2): a target in origin-form (``/path?query``)
is forwarded as it is; :func:`origin_form` turns the others, which a client
sends rarely, into what an origin server expects. It is called only for a
target whose first byte is not ``/``, so the common request pays one
comparison for it.
"""

from __future__ import annotations

import http
import re
from random import getrandbits
from typing import Protocol

__all__ = [
    "ACT_CONNECTION",
    "ACT_CONTENT_LENGTH",
    "ACT_DROP",
    "ACT_FORWARDED_FOR",
    "ACT_HOST",
    "ACT_REQUEST_ID",
    "ACT_TRANSFER_ENCODING",
    "CRLF",
    "IDEMPOTENT",
    "LAST_CHUNK",
    "NEVER_HOP_BY_HOP",
    "REQUEST_ACTIONS",
    "RESPONSE_ACTIONS",
    "UNCOUNTED",
    "Counted",
    "Rejected",
    "chunk_size_line",
    "connection_names",
    "drop_named",
    "error_response",
    "feed_within",
    "is_chunked",
    "last_chunk",
    "local_response",
    "new_request_id",
    "origin_form",
    "status_class",
]

#: what the proxy does with a header (absent from the tables: keep it as is)
ACT_DROP = 1
ACT_CONNECTION = 2
ACT_TRANSFER_ENCODING = 3
ACT_FORWARDED_FOR = 4
ACT_REQUEST_ID = 5
ACT_CONTENT_LENGTH = 6
ACT_HOST = 7

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
    # counted (exactly one), and kept
    b"host": ACT_HOST,
    # written anew from the value the body was framed by
    b"content-length": ACT_CONTENT_LENGTH,
}

#: response headers (lower-cased names) the proxy does not simply pass on
RESPONSE_ACTIONS: dict[bytes, int] = {
    **_HOP_BY_HOP,
    b"content-length": ACT_CONTENT_LENGTH,
}

#: methods whose requests may be sent twice (RFC 9110, 9.2.2); TRACE too where
#: a listener lets it through (it is refused by default)
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"})

#: names a ``Connection`` header cannot make hop-by-hop: the framing, the
#: target's host, and what the proxy itself writes (RFC 9110, 7.6.1: a sender
#: must not list them; a receiver that dropped them would be steered by its client)
NEVER_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"content-length",
        b"host",
        b"transfer-encoding",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-request-id",
    }
)

CRLF = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"

# Connection options that are about this hop's keep-alive, not header names.
_CONNECTION_OPTIONS = frozenset({b"close", b"keep-alive", b"upgrade"})
_COMMON_CONNECTION = frozenset({b"keep-alive", b"close", b"Keep-Alive", b"Close", b"upgrade"})
_NO_NAMES: frozenset[bytes] = frozenset()
_STATUS_CLASSES = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")
_REASONS = {int(s): s.phrase.encode() for s in http.HTTPStatus}


class Rejected(Exception):
    """A message the proxy will not pass on, and how it answers: ``status`` and
    ``kind`` (``x-eco-proxy-error``). Raised in parser callbacks; the parser
    hands it back as the context of its own error."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


def connection_names(value: bytes) -> frozenset[bytes]:
    """The header names a ``Connection`` value lists (lower-cased), beyond
    ``close``, ``keep-alive`` and ``upgrade``: hop-by-hop headers too. Names in
    :data:`NEVER_HOP_BY_HOP` are left out."""
    if value in _COMMON_CONNECTION:
        return _NO_NAMES
    names = {token.strip().lower() for token in value.split(b",")}
    names -= _CONNECTION_OPTIONS
    names -= NEVER_HOP_BY_HOP
    names.discard(b"")
    return frozenset(names)


def is_chunked(value: bytes) -> bool:
    """Whether a ``Transfer-Encoding`` value (every field line's, joined with
    commas) is exactly ``chunked``. Raises :class:`Rejected`: 400 when chunked
    is not the one final coding (the body's end could not be found, RFC 9112,
    6.3), 501 for other codings before it, which the proxy does not apply."""
    if value == b"chunked":
        return True
    codings = [c.strip().lower() for c in value.split(b",")]
    if codings == [b"chunked"]:
        return True
    if codings[-1] != b"chunked" or codings.count(b"chunked") > 1:
        raise Rejected(
            400, "bad_request", f"Transfer-Encoding {_excerpt(value)}: chunked must be last, once"
        )
    raise Rejected(
        501, "transfer_coding", f"Transfer-Encoding {_excerpt(value)}: only chunked is supported"
    )


def _excerpt(value: bytes) -> str:
    text = value[:64].decode("ascii", "replace")
    return repr(text + "…" if len(value) > 64 else text)


#: ``room`` outside a head or a trailer section: no read gets it to 0
UNCOUNTED = 1 << 62


class Counted(Protocol):
    """A connection whose head and trailer bytes are counted as they arrive:
    ``room`` bytes are left before the limit; its parser's callbacks set it
    (the limit when a section begins, :data:`UNCOUNTED` when it ends)."""

    room: int

    def feed(self, data: memoryview) -> bool:
        """Parses ``data``; False once the connection stopped reading."""
        ...


def feed_within(conn: Counted, data: bytes) -> bool:
    """Feeds a read longer than ``conn.room`` in pieces that stop at the room
    left, so that the parser never holds a section past its limit. A piece
    may end the section (the callbacks then give new room) and the rest goes
    on. False when a section outgrew its room: the caller refuses the message."""
    view = memoryview(data)
    while view:
        room = conn.room
        if len(view) <= room:
            conn.room = room - len(view)
            conn.feed(view)
            return True
        conn.room = 0
        if not conn.feed(view[:room]):
            return True
        if conn.room == 0:
            return False
        view = view[room:]
    return True


#: an absolute-form target: scheme, authority, and what follows (path, query)
_ABSOLUTE = re.compile(rb"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)", re.DOTALL)
#: an authority a request may name (RFC 3986, 3.2): a host (a name, IPv4, or an IP
#: literal in brackets) and perhaps a port; no userinfo (RFC 9110, 4.2.4)
_AUTHORITY = re.compile(
    rb"(?:[A-Za-z0-9._~%!$&'()*+,;=-]+"  # a name or IPv4 (reg-name)
    rb"|\[[0-9A-Fa-f:.]+\]"  # an IPv6 literal
    rb"|\[[vV][0-9A-Fa-f]+\.[A-Za-z0-9._~!$&'()*+,;=:-]+\])"  # IPvFuture
    rb"(?::[0-9]*)?"
)


def origin_form(method: bytes, target: bytes) -> tuple[bytes, bytes | None]:
    """A request target that does not start with ``/``, as the proxy forwards it to an
    origin server (RFC 9112, 3.2), and the ``Host`` to send with it (None: the client's).

    ``*`` (asterisk-form) passes for OPTIONS. An absolute-form target
    (``http://host:port/path?query``) becomes its path and query (``/`` for an empty
    path; ``*`` for OPTIONS with neither), and its authority the Host: an origin server
    takes a request's host from an absolute-form target, not from Host (RFC 9112,
    3.2.2), and a proxy forwards the host the target names (RFC 9110, 7.2). Raises
    :class:`Rejected` (400) for anything else: another form (authority-form is for
    CONNECT, refused before this), a scheme other than http and https, an authority
    that is empty or has userinfo."""
    if target == b"*":
        if method == b"OPTIONS":
            return target, None
        raise Rejected(
            400, "bad_request", f"request target * with {_excerpt(method)}: OPTIONS only"
        )
    match = _ABSOLUTE.fullmatch(target)
    if match is None:
        raise Rejected(
            400, "bad_request", f"request target {_excerpt(target)}: not a path or an absolute URI"
        )
    scheme, authority, rest = match.groups()
    if scheme.lower() not in (b"http", b"https"):
        raise Rejected(
            400, "bad_request", f"request target {_excerpt(target)}: only http and https URIs"
        )
    if _AUTHORITY.fullmatch(authority) is None:
        what = "userinfo" if b"@" in authority else "no valid host"
        raise Rejected(400, "bad_request", f"request target {_excerpt(target)}: {what}")
    if authority[-1:] == b":":
        authority = authority[:-1]  # an empty port is no port (RFC 3986, 6.2.3)
    if rest[:1] != b"/":
        # An empty path: "/" (RFC 9112, 3.2.1), or "*" for OPTIONS without a query (3.2.4).
        rest = b"*" if method == b"OPTIONS" and rest[:1] != b"?" else b"/" + rest
    return rest, authority


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


def local_response(
    status: int,
    fields: list[bytes],
    body: bytes,
    *,
    close: bool,
    keep_alive_header: bool = False,
    head_only: bool = False,
    length: int | None = None,
) -> bytes:
    """A complete response made here: ``fields`` are header lines (each ending
    in CRLF; no Content-Length or Connection: this adds them), ``body`` the
    body (not sent for a HEAD, ``head_only``; none with a 204 or 304);
    ``length`` the Content-Length to declare when it is not the body's (a HEAD
    answered for a stored GET)."""
    connection = b"connection: close\r\n" if close else b""
    if keep_alive_header and not close:
        connection = b"connection: keep-alive\r\n"
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"")),
            *fields,
            # (no Content-Length in a 1xx, 204 or 304 response: RFC 9110, 8.6)
            b""
            if status < 200 or status in (204, 304)
            else b"content-length: %d\r\n" % (len(body) if length is None else length),
            connection,
            CRLF,
            b"" if head_only or status in (204, 304) else body,
        )
    )


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
