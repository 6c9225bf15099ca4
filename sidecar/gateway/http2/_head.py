"""An h2 request's header list written as an HTTP/1.1 head for the hop, and
checked on the way (RFC 9113 §8.1.1, §8.2, §8.3.1): what is malformed is said,
so that the stream alone is reset."""

from __future__ import annotations

import re

__all__ = ["CONNECTION_SPECIFIC", "request_head", "trailer_block"]

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
#: what no field value may hold (RFC 9113 §8.2.1), nor begin or end with
_BAD_VALUE = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z")
_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f]")
#: fields that name a hop-by-hop connection, not the message (RFC 9113 §8.2.2)
CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"}
)
#: methods whose empty body is said with ``content-length: 0`` (as HTTP/1.1 clients do)
_BODYLESS_WITH_CL0 = frozenset({b"POST", b"PUT", b"PATCH"})


def request_head(
    headers: list[tuple[bytes, bytes]], ended: bool
) -> tuple[bytes, bytes, bool] | str:
    """An h2 request's header list as an HTTP/1.1 head: (head, method, chunked),
    or why it is malformed (RFC 9113 §8.1.1, §8.2, §8.3.1)."""
    method = path = scheme = authority = host = length = None
    lines: list[bytes] = []
    cookies: list[bytes] = []
    regular = False
    for name, value in headers:
        if name[:1] == b":":
            if regular:
                return "a pseudo-header field after a regular one"
            if name == b":method" and method is None:
                method = value
            elif name == b":path" and path is None:
                path = value
            elif name == b":scheme" and scheme is None:
                scheme = value
            elif name == b":authority" and authority is None:
                authority = value
            else:
                return f"pseudo-header field {name!r} unknown or repeated"
            continue
        regular = True
        if _TOKEN.fullmatch(name) is None:
            return f"field name {name!r} is not a lowercase token"
        if _BAD_VALUE.search(value) is not None:
            return f"field {name!r} has a value with CR, LF, NUL or surrounding whitespace"
        if name in CONNECTION_SPECIFIC:
            return f"connection-specific field {name!r}"
        if name == b"te":
            if value != b"trailers":
                return "te other than trailers"
        elif name == b"host":
            if host is not None:
                return "host repeated"
            host = value
        elif name == b"cookie":
            cookies.append(value)
        elif name == b"content-length":
            if not value.isdigit() or (length is not None and value != length):
                return "content-length not one number"
            length = value
        else:
            lines += (name, b": ", value, b"\r\n")
    if method is None or _TOKEN.fullmatch(method.lower()) is None:
        return "no valid :method"
    if authority is None:
        authority = host
    elif host is not None and host != authority:
        return "host and :authority differ"
    if authority is None or not authority or _BAD_TARGET.search(authority) is not None:
        return "no valid :authority"
    if method == b"CONNECT":
        if path is not None or scheme is not None:
            return "extended CONNECT is not offered"
        target = authority  # (the data plane answers 501: it does not tunnel)
    else:
        if path is None or scheme is None:
            return ":path and :scheme are required"
        if not path or _BAD_TARGET.search(path) is not None or path[:1] not in b"/*":
            return "no valid :path"
        target = path
    if cookies:
        lines += (b"cookie: ", b"; ".join(cookies), b"\r\n")
    chunked = False
    if length is not None:
        lines += (b"content-length: ", length, b"\r\n")
    elif not ended:
        lines.append(b"transfer-encoding: chunked\r\n")
        chunked = True
    elif method in _BODYLESS_WITH_CL0:
        lines.append(b"content-length: 0\r\n")
    head = b"%s %s HTTP/1.1\r\nhost: %s\r\n%s\r\n" % (method, target, authority, b"".join(lines))
    return head, method, chunked


def trailer_block(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """A request's trailers as the end of a chunked body, or None when malformed."""
    parts = [b"0\r\n"]
    for name, value in headers:
        if (
            name[:1] == b":"
            or _TOKEN.fullmatch(name) is None
            or _BAD_VALUE.search(value) is not None
            or name in CONNECTION_SPECIFIC
        ):
            return None
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)
