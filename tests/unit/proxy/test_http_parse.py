"""The HTTP proxy's head rewriting helpers, and the proxy's own error answers."""

from __future__ import annotations

import httptools
import pytest

from sidecar.proxy.http._parse import (
    ACT_CONNECTION,
    ACT_CONTENT_LENGTH,
    ACT_DROP,
    ACT_FORWARDED_FOR,
    ACT_HOST,
    ACT_REQUEST_ID,
    ACT_TRANSFER_ENCODING,
    IDEMPOTENT,
    NEVER_HOP_BY_HOP,
    REQUEST_ACTIONS,
    RESPONSE_ACTIONS,
    UNCOUNTED,
    Rejected,
    chunk_size_line,
    connection_names,
    drop_named,
    error_response,
    feed_within,
    is_chunked,
    last_chunk,
    new_request_id,
    origin_form,
    status_class,
)


class _Message:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


def test_hop_by_hop_headers_are_dropped_on_both_sides() -> None:
    for table in (REQUEST_ACTIONS, RESPONSE_ACTIONS):
        for name in (b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade"):
            assert table[name] == ACT_DROP
        assert table[b"connection"] == ACT_CONNECTION
        assert table[b"transfer-encoding"] == ACT_TRANSFER_ENCODING
        assert b"x-custom" not in table
    assert REQUEST_ACTIONS[b"x-forwarded-for"] == ACT_FORWARDED_FOR
    assert REQUEST_ACTIONS[b"x-request-id"] == ACT_REQUEST_ID
    assert REQUEST_ACTIONS[b"x-forwarded-proto"] == ACT_DROP
    # Host is counted (one is required) and kept; a request's Content-Length is
    # written anew; a response's is passed on.
    assert REQUEST_ACTIONS[b"host"] == ACT_HOST
    assert REQUEST_ACTIONS[b"content-length"] == ACT_CONTENT_LENGTH
    assert RESPONSE_ACTIONS[b"content-length"] == ACT_CONTENT_LENGTH
    assert b"host" not in RESPONSE_ACTIONS


def test_connection_names_lists_extra_hop_by_hop_headers() -> None:
    assert connection_names(b"keep-alive") == frozenset()
    assert connection_names(b"Close") == frozenset()
    assert connection_names(b"keep-alive, X-Private ,  Upgrade,x-other,") == {
        b"x-private",
        b"x-other",
    }


def test_drop_named_removes_whole_headers_only() -> None:
    out = [b"GET / HTTP/1.1\r\n"]
    for name, value in ((b"X-Private", b"1"), (b"X-Keep", b"2"), (b"x-other", b"3")):
        out += (name, b": ", value, b"\r\n")
    kept = drop_named(out, frozenset({b"x-private", b"x-other"}))
    assert b"".join(kept) == b"GET / HTTP/1.1\r\nX-Keep: 2\r\n"


def test_rechunked_body_parses_back_with_trailers() -> None:
    msg = _Message()
    parser = httptools.HttpResponseParser(msg)
    trailers = [b"x-checksum", b": ", b"abc", b"\r\n"]
    body = [b"hello", b" ", b"world" * 1000]
    data = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    data += b"".join(chunk_size_line(len(c)) + c + b"\r\n" for c in body)
    data += last_chunk(trailers)
    parser.feed_data(data)
    assert msg.done
    assert msg.body == b"".join(body)
    assert msg.headers[-1] == (b"x-checksum", b"abc")
    assert last_chunk(None) == b"0\r\n\r\n"


def test_error_response_is_a_complete_message() -> None:
    data = error_response(
        503, "circuit_open", "upstream orders: circuit open (max_requests 1)", close=True
    )
    msg = _Message()
    parser = httptools.HttpResponseParser(msg)
    parser.feed_data(data)
    assert msg.done and parser.get_status_code() == 503
    headers = dict(msg.headers)
    assert headers[b"x-eco-proxy-error"] == b"circuit_open"
    assert headers[b"connection"] == b"close"
    assert headers[b"content-type"] == b"text/plain; charset=utf-8"
    assert msg.body == b"upstream orders: circuit open (max_requests 1)\n"
    assert data.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    kept = error_response(504, "timeout", "t", close=False, keep_alive_header=True)
    assert b"connection: keep-alive\r\n" in kept
    assert b"connection" not in error_response(502, "reset", "r", close=False)


def test_small_helpers() -> None:
    assert [status_class(s) for s in (101, 200, 302, 404, 503, 799)] == [
        "1xx",
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "other",
    ]
    ids = {new_request_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    # TRACE is refused unless a listener allows it, and then that listener adds it.
    assert {b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS"} == IDEMPOTENT
    assert chunk_size_line(255) == b"ff\r\n"


def test_connection_cannot_name_framing_host_or_what_the_proxy_writes() -> None:
    value = b"close, Content-Length, HOST, transfer-encoding, x-request-id, X-Forwarded-For"
    assert connection_names(value + b", x-forwarded-proto, connection, x-private") == {b"x-private"}
    assert {b"content-length", b"host", b"transfer-encoding", b"x-request-id"} <= NEVER_HOP_BY_HOP


def test_only_exactly_chunked_is_a_transfer_encoding() -> None:
    for value in (b"chunked", b"Chunked", b"chunked  ", b" CHUNKED"):
        assert is_chunked(value)
    for value, status in (
        (b"gzip", 400),
        (b"chunked, gzip", 400),
        (b"chunked, chunked", 400),
        (b"identity", 400),
        (b"xchunked", 400),
        (b"gzip, chunked", 501),
        (b"deflate,chunked", 501),
    ):
        with pytest.raises(Rejected) as caught:
            is_chunked(value)
        assert caught.value.status == status, value


class _Sections:
    """A fake counted connection over a toy format: each ``;`` ends a section
    (as a head's blank line would), ``|`` starts an uncounted stretch up to the
    next section (as a body would)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.room = limit
        self.fed: list[bytes] = []
        self.sections = 0

    def feed(self, data: memoryview) -> bool:
        self.fed.append(bytes(data))
        for byte in bytes(data):
            if byte == ord(";"):
                self.sections += 1
                self.room = self.limit
            elif byte == ord("|"):
                self.room = UNCOUNTED
        return True


def test_feed_within_stops_a_section_at_its_limit_and_lets_the_rest_through() -> None:
    data = b"abc;ef|" + b"x" * 100 + b";ghi"
    conn = _Sections(4)
    assert feed_within(conn, data)
    assert conn.sections == 2 and b"".join(conn.fed) == data
    assert conn.fed[:2] == [b"abc;", b"ef|x"]  # pieces end at the room left
    # Never more than the room left is fed while a section is open.
    conn = _Sections(4)
    assert not feed_within(conn, b"abcdefgh;")
    assert b"".join(conn.fed) == b"abcd" and conn.sections == 0
    conn = _Sections(4)
    conn.room = 2
    assert not feed_within(conn, b"abc;")
    assert b"".join(conn.fed) == b"ab"
    # Outside a section, a read of any length goes through whole.
    conn = _Sections(4)
    conn.room = UNCOUNTED
    assert feed_within(conn, b"x" * 100) and conn.fed == [b"x" * 100]


@pytest.mark.parametrize(
    ("method", "target", "forwarded", "host"),
    [
        (b"GET", b"http://h/p?q=1", b"/p?q=1", b"h"),
        (b"GET", b"http://h", b"/", b"h"),
        (b"GET", b"http://h?q", b"/?q", b"h"),
        (b"GET", b"hTTpS://H.example:8443/a/b/", b"/a/b/", b"H.example:8443"),
        (b"GET", b"http://h:/p", b"/p", b"h"),  # an empty port is no port
        (b"GET", b"http://10.0.0.1:80/p", b"/p", b"10.0.0.1:80"),
        (b"GET", b"http://[2001:db8::1]:80/p", b"/p", b"[2001:db8::1]:80"),
        (b"GET", b"http://h%41/p", b"/p", b"h%41"),
        (b"OPTIONS", b"http://h", b"*", b"h"),
        (b"OPTIONS", b"http://h?q", b"/?q", b"h"),
        (b"OPTIONS", b"http://h/", b"/", b"h"),
        (b"OPTIONS", b"*", b"*", None),
    ],
)
def test_origin_form_of_a_target(
    method: bytes, target: bytes, forwarded: bytes, host: bytes | None
) -> None:
    assert origin_form(method, target) == (forwarded, host)


@pytest.mark.parametrize(
    ("method", "target"),
    [
        (b"GET", b"*"),
        (b"GET", b"h:80"),
        (b"GET", b"ftp://h/p"),
        (b"GET", b"urn:x:y"),
        (b"GET", b"http://u@h/p"),
        (b"GET", b"http://u:pw@h/p"),
        (b"GET", b"http:///p"),
        (b"GET", b"http://h h/p"),
        (b"GET", b"http://h:8o/p"),
        (b"GET", b"http:/h/p"),
    ],
)
def test_targets_the_proxy_cannot_forward_are_refused(method: bytes, target: bytes) -> None:
    with pytest.raises(Rejected) as refused:
        origin_form(method, target)
    assert (refused.value.status, refused.value.kind) == (400, "bad_request")
