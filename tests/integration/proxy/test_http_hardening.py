"""The HTTP/1.1 proxy against hostile and ambiguous input, on real sockets on 127.0.0.1.

Request smuggling (``Connection`` naming framing headers, ambiguous framing
in either direction, bytes an upstream sends unasked), oversized heads and
trailers, TRACE, a pooled connection whose endpoint moved, heads and
trailers sent too slowly, and connections past the listener's caps. Clients are
raw sockets; upstreams run in the test process and parse what they receive
as a real server would, so a test can say exactly which requests reached
them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import socket
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from sidecar.proxy import Target, fixed_endpoint
from tests.integration.proxy.conftest import policy
from tests.integration.proxy.http_peers import (
    RawClient,
    RecordingUpstream,
    Reply,
    ScriptedUpstream,
    Seen,
    get,
    holds,
    on_uvloop,
    proxy,
)
from tests.integration.raw_http import trickle, trickling
from tests.util import assert_eventually, assert_stays

KIB = 1024
MB = 1_000_000


def to(upstream: ScriptedUpstream, **overrides: Any) -> Target:
    """A target with one endpoint, the upstream (``policy("http", **overrides)``)."""
    return Target.fixed("orders", policy("http", **overrides), [("127.0.0.1", upstream.port)])


async def refused(listener: Any, request: bytes) -> tuple[int, str | None]:
    """Sends ``request`` on a new connection; the status and error kind of the one answer,
    after checking that the proxy closed the connection."""
    client = await RawClient.connect(listener)
    await client.send(request)
    (reply,) = await client.replies_done(1, timeout=5)
    assert reply.header("connection") == "close"
    assert await client.closed()
    await client.close()
    return reply.status, reply.header("x-eco-proxy-error")


# -- Connection naming headers the proxy must keep --------------------------------------------

HIDDEN = b"GET /hidden HTTP/1.1\r\nHost: orders\r\n\r\n"


@pytest.mark.parametrize("connection", ["content-length", "keep-alive, Content-Length"])
async def test_connection_naming_content_length_smuggles_no_request(
    listeners: list[Any], connection: str
) -> None:
    """The finding, as reported: client A's body is a request; if the proxy dropped
    Content-Length because Connection names it, the upstream would take that body for a
    second request on the pooled connection, and client B would get its answer."""
    async with RecordingUpstream(hold=("/hidden",)) as upstream:
        listener = await proxy(listeners, to(upstream))
        a = await RawClient.connect(listener)
        await a.send(
            get(
                "/a",
                f"Connection: {connection}",
                f"Content-Length: {len(HIDDEN)}",
                method="POST",
            )
            + HIDDEN
        )
        (reply_a,) = await a.replies_done(1, timeout=5)
        b = await RawClient.connect(listener)
        await b.send(get("/b"))
        (reply_b,) = await b.replies_done(1, timeout=5)
        for client in (a, b):
            await client.close()
    assert [(s.method, s.path) for s in upstream.seen] == [("POST", "/a"), ("GET", "/b")]
    assert upstream.seen[0].body == HIDDEN
    assert upstream.seen[0].header("content-length") == str(len(HIDDEN))
    assert reply_a.status == 200 and reply_a.body == b"POST /a %d" % len(HIDDEN)
    assert reply_b.status == 200 and reply_b.body == b"GET /b 0"
    assert upstream.connections == 1  # the pooled connection carried both, in step


async def test_connection_cannot_strip_host_request_id_or_forwarding_headers(
    listeners: list[Any],
) -> None:
    async with RecordingUpstream() as upstream:
        listener = await proxy(listeners, to(upstream))
        client = await RawClient.connect(listener)
        await client.send(
            get(
                "/",
                "Connection: host, x-request-id, X-Forwarded-For, x-forwarded-proto, "
                "transfer-encoding, content-length, x-private",
                "X-Request-Id: my-id",
                "X-Forwarded-For: 10.1.2.3",
                "X-Private: secret",
            )
        )
        (reply,) = await client.replies_done(1, timeout=5)
        await client.close()
    assert reply.status == 200
    (seen,) = upstream.seen
    assert seen.all("host") == ["orders"]
    assert seen.all("x-request-id") == ["my-id"]
    assert seen.all("x-forwarded-for") == ["10.1.2.3, 127.0.0.1"]
    assert seen.all("x-forwarded-proto") == ["http"]
    assert seen.header("x-private") is None  # a genuine hop-by-hop header still goes
    assert seen.header("connection") is None


async def test_a_response_connection_header_cannot_strip_its_content_length(
    listeners: list[Any],
) -> None:
    def answer(seen: Seen) -> bytes:
        return (
            b"HTTP/1.1 200 OK\r\nConnection: content-length, x-private\r\nX-Private: 1\r\n"
            b"Content-Length: 5\r\n\r\nhello"
        )

    async with RecordingUpstream(answer=answer) as upstream:
        listener = await proxy(listeners, to(upstream))
        client = await RawClient.connect(listener)
        for i in range(2):
            await client.send(get(f"/{i}"))
            replies = await client.replies_done(i + 1, timeout=3)
        await client.close()
    for reply in replies:
        assert reply.status == 200 and reply.body == b"hello"
        assert reply.header("content-length") == "5"
        assert reply.header("x-private") is None
    assert upstream.connections == 1


# -- ambiguous request framing ----------------------------------------------------------------

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: orders\r\n\r\n"


def _post(*headers: bytes, body: bytes = b"", line: bytes = b"POST /p HTTP/1.1") -> bytes:
    return line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body + SMUGGLED


BAD_REQUESTS = {
    # both framings: which one the upstream believes decides where the next request starts
    "te_and_cl": (
        _post(b"Host: o", b"Transfer-Encoding: chunked", b"Content-Length: 4", body=b"0\r\n\r\n"),
        400,
        "bad_request",
    ),
    "cl_and_te": (
        _post(b"Host: o", b"Content-Length: 4", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
        400,
        "bad_request",
    ),
    "te_not_chunked": (_post(b"Host: o", b"Transfer-Encoding: gzip"), 400, "bad_request"),
    "te_chunked_not_final": (
        _post(b"Host: o", b"Transfer-Encoding: chunked, gzip", body=b"0\r\n\r\n"),
        400,
        "bad_request",
    ),
    "te_twice": (
        _post(b"Host: o", b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"),
        400,
        "bad_request",
    ),
    "te_unknown_coding_then_chunked": (
        _post(b"Host: o", b"Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"),
        501,
        "transfer_coding",
    ),
    "te_in_http10": (
        _post(
            b"Host: o",
            b"Transfer-Encoding: chunked",
            body=b"0\r\n\r\n",
            line=b"POST /p HTTP/1.0",
        ),
        400,
        "bad_request",
    ),
    "cl_twice_same": (
        _post(b"Host: o", b"Content-Length: 3", b"Content-Length: 3", body=b"abc"),
        400,
        "bad_request",
    ),
    "cl_twice_differing": (
        _post(b"Host: o", b"Content-Length: 3", b"Content-Length: 0", body=b"abc"),
        400,
        "bad_request",
    ),
    "cl_list": (_post(b"Host: o", b"Content-Length: 3, 3", body=b"abc"), 400, "bad_request"),
    "cl_signed": (_post(b"Host: o", b"Content-Length: +3", body=b"abc"), 400, "bad_request"),
    "cl_hex": (_post(b"Host: o", b"Content-Length: 0x3", body=b"abc"), 400, "bad_request"),
    "cl_overflow": (
        _post(b"Host: o", b"Content-Length: 99999999999999999999999", body=b"abc"),
        400,
        "bad_request",
    ),
    "obs_fold": (_post(b"Host: o", b"X-A: b", b" Content-Length: 3"), 400, "bad_request"),
    "space_before_colon": (
        _post(b"Host: o", b"Content-Length : 3", body=b"abc"),
        400,
        "bad_request",
    ),
    "bare_lf": (b"GET / HTTP/1.1\nHost: o\n\n" + SMUGGLED, 400, "bad_request"),
    "bare_cr": (b"GET / HTTP/1.1\r\nHost: o\rX: 1\r\n\r\n" + SMUGGLED, 400, "bad_request"),
    "nul_in_value": (b"GET / HTTP/1.1\r\nHost: o\x00\r\n\r\n" + SMUGGLED, 400, "bad_request"),
    "two_hosts": (b"GET / HTTP/1.1\r\nHost: o\r\nHost: p\r\n\r\n" + SMUGGLED, 400, "bad_request"),
    "no_host": (b"GET / HTTP/1.1\r\nX: 1\r\n\r\n" + SMUGGLED, 400, "bad_request"),
    "http_2_0": (b"GET / HTTP/2.0\r\nHost: o\r\n\r\n" + SMUGGLED, 505, "http_version"),
    "http_0_9": (b"GET / HTTP/0.9\r\nHost: o\r\n\r\n" + SMUGGLED, 505, "http_version"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
async def test_ambiguous_request_framing_is_refused_and_nothing_is_forwarded(
    listeners: list[Any], case: str
) -> None:
    request, status, kind = BAD_REQUESTS[case]
    async with RecordingUpstream() as upstream:
        tgt = to(upstream)
        listener = await proxy(listeners, tgt)
        assert await refused(listener, request) == (status, kind)
        assert upstream.seen == [] and upstream.connections == 0
        # The listener is unharmed.
        client = await RawClient.connect(listener)
        await client.send(get("/after"))
        (reply,) = await client.replies_done(1, timeout=5)
        await client.close()
    assert reply.body == b"GET /after 0"
    assert tgt.stats.responses["4xx" if status < 500 else "5xx"] == 1


async def test_chunked_and_http10_requests_without_ambiguity_still_pass(
    listeners: list[Any],
) -> None:
    async with RecordingUpstream() as upstream:
        listener = await proxy(listeners, to(upstream))
        client = await RawClient.connect(listener)
        await client.send(
            get("/c", "Transfer-Encoding:  Chunked  ", method="POST") + b"3\r\nabc\r\n0\r\n\r\n"
        )
        await client.send(get("/l", "Content-Length: 003", method="POST") + b"xyz")
        await client.send(b"GET /old HTTP/1.0\r\n\r\n")
        replies = await client.replies_done(3, timeout=5)
        await client.close()
    assert [r.body for r in replies] == [b"POST /c 3", b"POST /l 3", b"GET /old 0"]
    chunked, sized, old = upstream.seen
    assert chunked.all("transfer-encoding") == ["chunked"] and not chunked.all("content-length")
    assert sized.all("content-length") == ["3"] and not sized.all("transfer-encoding")
    assert not old.all("content-length") and not old.all("transfer-encoding")


# -- ambiguous response framing ---------------------------------------------------------------

BAD_RESPONSES = {
    "te_and_cl": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
    b"0\r\n\r\n",
    "cl_twice_differing": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "te_not_chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    "te_chunked_not_final": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    "te_unknown_coding_then_chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n"
    b"\r\n0\r\n\r\n",
    "te_twice": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"
    b"\r\n0\r\n\r\n",
    "obs_fold": b"HTTP/1.1 200 OK\r\nX-A: 1\r\n Content-Length: 2\r\nContent-Length: 0\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(BAD_RESPONSES))
async def test_ambiguous_response_framing_answers_502_and_is_not_pooled(
    listeners: list[Any], case: str
) -> None:
    def answer(seen: Seen) -> bytes:
        return (
            BAD_RESPONSES[case]
            if seen.path == "/bad"
            else b"HTTP/1.1 200 OK\r\n" + (b"Content-Length: 4\r\n\r\ngood")
        )

    async with RecordingUpstream(answer=answer) as upstream:
        tgt = to(upstream, retries=0)
        listener = await proxy(listeners, tgt)
        client = await RawClient.connect(listener)
        await client.send(get("/bad"))
        (bad,) = await client.replies_done(1, timeout=3)
        assert bad.status == 502 and bad.header("x-eco-proxy-error") == "bad_response"
        await client.send(get("/good"))
        replies = await client.replies_done(2, timeout=3)
        await client.close()
    assert replies[1].status == 200 and replies[1].body == b"good"
    assert upstream.connections == 2  # the connection that answered badly was not reused


async def test_bytes_an_upstream_sends_unasked_never_reach_the_next_client(
    listeners: list[Any],
) -> None:
    """A complete response with the start of another behind it, in one write: the
    connection is not pooled (the next client would get the rest of the stray one)."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await upstream.read_request(reader)
        if n == 0:
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"
                b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n"
            )
            await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nmine")
        await asyncio.Event().wait()

    async with ScriptedUpstream(script) as upstream:
        listener = await proxy(listeners, to(upstream))
        a = await RawClient.connect(listener)
        await a.send(get("/a"))
        (reply_a,) = await a.replies_done(1, timeout=3)
        b = await RawClient.connect(listener)
        await b.send(get("/b"))
        (reply_b,) = await b.replies_done(1, timeout=3)
        for client in (a, b):
            await client.close()
    assert reply_a.body == b"first"
    assert reply_b.status == 200 and reply_b.body == b"mine"


# -- limits on heads --------------------------------------------------------------------------


def padded(size: int, *headers: str, path: str = "/") -> bytes:
    """A GET whose head (start line to the blank line) is exactly ``size`` bytes."""
    bare = get(path, *headers, "X-Pad: ")
    return get(path, *headers, "X-Pad: " + "p" * (size - len(bare)))


async def test_request_heads_over_the_limit_answer_431_and_the_limit_can_be_raised(
    listeners: list[Any],
) -> None:
    async with RecordingUpstream() as upstream:
        listener = await proxy(listeners, to(upstream))
        client = await RawClient.connect(listener)
        await client.send(padded(60 * KIB, path="/at-limit"))
        (reply,) = await client.replies_done(1, timeout=5)
        await client.close()
        assert reply.status == 200
        assert await refused(listener, padded(60 * KIB + 1)) == (431, "headers_too_large")
        # The whole head counts: a long start line and many small headers too.
        many = get("/", *[f"X-H{i}: {'v' * 700}" for i in range(90)])
        assert len(many) > 60 * KIB
        assert await refused(listener, many) == (431, "headers_too_large")

        roomy = await proxy(listeners, to(upstream, max_request_headers_kb=128))
        client = await RawClient.connect(roomy)
        await client.send(padded(100 * KIB, path="/roomy"))
        (reply,) = await client.replies_done(1, timeout=5)
        await client.close()
        assert reply.status == 200
        assert await refused(roomy, padded(128 * KIB + 1)) == (431, "headers_too_large")
        tight = await proxy(listeners, to(upstream, max_request_headers_kb=1))
        assert await refused(tight, padded(KIB + 1)) == (431, "headers_too_large")
    assert [s.path for s in upstream.seen] == ["/at-limit", "/roomy"]


def _send_all_then_read(port: int, request: bytes) -> bytes:
    """A blocking client that reads only once it has sent everything."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


async def test_a_client_that_sends_everything_first_still_reads_the_431(
    listeners: list[Any],
) -> None:
    """The proxy reads and drops what follows a refused head for a while (up to 1 MiB)
    instead of closing with it unread, which would reset the connection under the answer."""
    async with RecordingUpstream() as upstream:
        listener = await proxy(listeners, to(upstream))
        port = int(listener.address.rsplit(":", 1)[1])
        answer = await asyncio.to_thread(_send_all_then_read, port, padded(900 * KIB))
        assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
        await assert_eventually(lambda: holds(not listener.downstreams))
    assert upstream.seen == []


async def test_a_head_split_over_many_reads_is_counted_whole(listeners: list[Any]) -> None:
    async with RecordingUpstream() as upstream:
        listener = await proxy(listeners, to(upstream, max_request_headers_kb=4))
        client = await RawClient.connect(listener)
        request = padded(5 * KIB)
        for i in range(0, len(request), 100):
            with contextlib.suppress(ConnectionError):
                await client.send(request[i : i + 100])
        (reply,) = await client.replies_done(1, timeout=5)
        assert reply.status == 431
        assert await client.closed()
        await client.close()
    assert upstream.seen == []


@pytest.mark.parametrize("kind", ["bytes", "fields"])
async def test_an_oversized_head_pipelined_behind_a_request_is_not_forwarded(
    listeners: list[Any], kind: str
) -> None:
    """Behind a request in the same read, a head is counted field by field: the
    request before it is answered, then the connection closes."""
    big = padded(5 * KIB) if kind == "bytes" else get("/", *[f"X-{i}: v" for i in range(12)])
    async with RecordingUpstream() as upstream:
        listener = await proxy(listeners, to(upstream, max_request_headers_kb=4, max_headers=10))
        client = await RawClient.connect(listener)
        await client.send(get("/first") + big)
        (first,) = await client.replies_done(1, timeout=5)
        assert first.status == 200 and first.header("connection") == "close"
        assert await client.closed()
        await client.close()
    assert [s.path for s in upstream.seen] == ["/first"]


async def test_empty_lines_before_a_request_count_toward_its_head(listeners: list[Any]) -> None:
    async with RecordingUpstream() as upstream:
        listener = await proxy(listeners, to(upstream, max_request_headers_kb=4))
        assert await refused(listener, b"\r\n" * (3 * KIB) + get("/")) == (
            431,
            "headers_too_large",
        )
        client = await RawClient.connect(listener)
        await client.send(get("/first") + b"\r\n" * (3 * KIB))
        (reply,) = await client.replies_done(1, timeout=5)
        await client.send(b"\r\n" * KIB)
        assert reply.status == 200 and await client.closed()
        await client.close()
    assert [s.path for s in upstream.seen] == ["/first"]


async def test_more_header_fields_than_allowed_answer_431(listeners: list[Any]) -> None:
    async with RecordingUpstream() as upstream:
        listener = await proxy(listeners, to(upstream))
        client = await RawClient.connect(listener)
        # Host and 99 more: 100 fields, the default limit.
        await client.send(get("/100", *[f"X-H{i}: v" for i in range(99)]))
        (reply,) = await client.replies_done(1, timeout=5)
        await client.close()
        assert reply.status == 200
        too_many = get("/101", *[f"X-H{i}: v" for i in range(100)])
        assert await refused(listener, too_many) == (431, "headers_too_large")
        few = await proxy(listeners, to(upstream, max_headers=5))
        assert await refused(few, get("/", *[f"X-H{i}: v" for i in range(5)])) == (
            431,
            "headers_too_large",
        )
    assert [s.path for s in upstream.seen] == ["/100"]


async def test_a_long_url_answers_414(listeners: list[Any]) -> None:
    async with RecordingUpstream() as upstream:
        listener = await proxy(listeners, to(upstream))
        at_limit = "/" + "u" * (16 * KIB - 1)
        client = await RawClient.connect(listener)
        await client.send(get(at_limit))
        (reply,) = await client.replies_done(1, timeout=5)
        await client.close()
        assert reply.status == 200
        assert await refused(listener, get(at_limit + "u")) == (414, "url_too_long")
        short = await proxy(listeners, to(upstream, max_url_kb=1))
        assert await refused(short, get("/" + "u" * KIB)) == (414, "url_too_long")
    assert [len(s.path) for s in upstream.seen] == [16 * KIB]


async def test_request_trailers_count_toward_the_limits(listeners: list[Any]) -> None:
    async with RecordingUpstream() as upstream:
        listener = await proxy(listeners, to(upstream, max_request_headers_kb=4, max_headers=10))
        client = await RawClient.connect(listener)
        await client.send(
            get("/ok", "Transfer-Encoding: chunked", method="POST")
            + b"3\r\nabc\r\n0\r\nx-sum: 1\r\n\r\n"
        )
        (reply,) = await client.replies_done(1, timeout=5)
        await client.close()
        assert reply.status == 200
        for trailers in (
            b"x-big: " + b"t" * (5 * KIB) + b"\r\n",
            b"".join(b"x-t%d: 1\r\n" % i for i in range(10)),
        ):
            client = await RawClient.connect(listener)
            await client.send(
                get("/big", "Transfer-Encoding: chunked", method="POST")
                + b"3\r\nabc\r\n0\r\n"
                + trailers
                + b"\r\n"
            )
            (reply,) = await client.replies_done(1, timeout=5)
            assert reply.status == 431
            assert reply.header("x-eco-proxy-error") == "headers_too_large"
            assert await client.closed()
            await client.close()
    assert [s.path for s in upstream.seen] == ["/ok"]


async def test_upstream_response_heads_are_bounded_too(listeners: list[Any]) -> None:
    def answer(seen: Seen) -> bytes:
        if seen.path == "/big":
            return (
                b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * (70 * KIB) + b"\r\nContent-Length: 0\r\n\r\n"
            )
        if seen.path in ("/many", "/100"):
            n = 101 if seen.path == "/many" else 100
            fields = b"".join(b"X-F%d: 1\r\n" % i for i in range(n - 1))
            return b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 0\r\n\r\n"
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    async with RecordingUpstream(answer=answer) as upstream:
        listener = await proxy(listeners, to(upstream, retries=0))
        client = await RawClient.connect(listener)
        for i, path in enumerate(("/big", "/many", "/100", "/fine")):
            await client.send(get(path))
            replies = await client.replies_done(i + 1, timeout=5)
        await client.close()
        big, many, at_limit, fine = replies
        assert big.status == 502 and big.header("x-eco-proxy-error") == "bad_response"
        assert many.status == 502 and many.header("x-eco-proxy-error") == "bad_response"
        assert at_limit.status == 200 and len(at_limit.headers) == 100
        assert fine.status == 200 and fine.body == b"ok"
        roomy = await proxy(listeners, to(upstream, max_response_headers_kb=128))
        client = await RawClient.connect(roomy)
        await client.send(get("/big"))
        (reply,) = await client.replies_done(1, timeout=5)
        await client.close()
        assert reply.status == 200 and len(reply.header("x-big") or "") == 70 * KIB


# -- TRACE ------------------------------------------------------------------------------------


async def test_trace_is_refused_unless_allowed(listeners: list[Any]) -> None:
    async with RecordingUpstream() as upstream:
        listener = await proxy(listeners, to(upstream))
        client = await RawClient.connect(listener)
        await client.send(get("/t", "Cookie: secret", method="TRACE") + get("/after"))
        refused_trace, after = await client.replies_done(2, timeout=5)
        await client.close()
        assert refused_trace.status == 405
        assert refused_trace.header("x-eco-proxy-error") == "method_not_allowed"
        assert after.status == 200  # the connection stays usable
        assert [s.path for s in upstream.seen] == ["/after"]

        allowing = await proxy(listeners, to(upstream, allow_trace=True))
        client = await RawClient.connect(allowing)
        await client.send(get("/t", method="TRACE"))
        (reply,) = await client.replies_done(1, timeout=5)
        await client.close()
        assert reply.status == 200 and reply.body == b"TRACE /t 0"
    assert [s.method for s in upstream.seen] == ["GET", "TRACE"]


# -- request targets --------------------------------------------------------------------------

#: (method, target as sent, version) -> (target the upstream sees, its Host)
ABSOLUTE_FORMS = {
    "path_and_query": ("GET", "http://evil.example/p?q=1", "1.1", "/p?q=1", "evil.example"),
    "no_path": ("GET", "http://evil.example", "1.1", "/", "evil.example"),
    "query_only": ("GET", "http://evil.example?q=1", "1.1", "/?q=1", "evil.example"),
    "scheme_in_capitals_and_port": (
        "GET",
        "HTTP://Evil.Example:8080/a/b",
        "1.1",
        "/a/b",
        "Evil.Example:8080",
    ),
    "https": ("GET", "https://evil.example/s", "1.1", "/s", "evil.example"),
    "ip_literal": ("GET", "http://[::1]:8080/v6", "1.1", "/v6", "[::1]:8080"),
    "options_without_path": ("OPTIONS", "http://evil.example", "1.1", "*", "evil.example"),
    "options_with_path": ("OPTIONS", "http://evil.example/o", "1.1", "/o", "evil.example"),
    "http10_without_host": ("GET", "http://evil.example/old", "1.0", "/old", "evil.example"),
}


@pytest.mark.parametrize("case", sorted(ABSOLUTE_FORMS))
async def test_an_absolute_form_target_is_forwarded_in_origin_form_with_its_host(
    listeners: list[Any], case: str
) -> None:
    """RFC 9112 3.2.2: a server takes the host of an absolute-form target, not Host; the
    proxy forwards origin-form with that host, so that the upstream and the proxy agree
    on which host was asked for."""
    method, target, version, path, host = ABSOLUTE_FORMS[case]
    request = f"{method} {target} HTTP/{version}\r\n".encode()
    request += b"Connection: keep-alive\r\n\r\n" if version == "1.0" else b"Host: fz-web\r\n\r\n"
    async with RecordingUpstream() as upstream:
        listener = await proxy(listeners, to(upstream))
        client = await RawClient.connect(listener)
        await client.send(request + get("/after"))
        replies = await client.replies_done(2, timeout=5)
        await client.close()
    assert [r.status for r in replies] == [200, 200]
    first, after = upstream.seen
    assert (first.method, first.path) == (method, path)
    assert first.all("host") == [host]
    assert (after.path, after.all("host")) == ("/after", ["orders"])


async def test_origin_and_asterisk_forms_pass_unchanged(listeners: list[Any]) -> None:
    async with RecordingUpstream() as upstream:
        listener = await proxy(listeners, to(upstream))
        client = await RawClient.connect(listener)
        await client.send(get("*", method="OPTIONS") + get("/a//b?c=http://x/y"))
        replies = await client.replies_done(2, timeout=5)
        await client.close()
    assert [r.status for r in replies] == [200, 200]
    assert [(s.path, s.all("host")) for s in upstream.seen] == [
        ("*", ["orders"]),
        ("/a//b?c=http://x/y", ["orders"]),
    ]


REFUSED_TARGETS = {
    "other_scheme": ("GET", "ftp://evil.example/p", 400, "bad_request"),
    "urn": ("GET", "urn:isbn:0451450523", 400, "bad_request"),
    "userinfo": ("GET", "http://user:pw@evil.example/p", 400, "bad_request"),
    "empty_authority": ("GET", "http:///p", 400, "bad_request"),
    "authority_form_not_connect": ("GET", "evil.example:80", 400, "bad_request"),
    "asterisk_not_options": ("GET", "*", 400, "bad_request"),
    "connect": ("CONNECT", "evil.example:443", 501, "upgrade"),
    # (the parser takes every CONNECT for an upgrade, whatever its target)
    "connect_origin_form": ("CONNECT", "/x", 501, "upgrade"),
    "connect_absolute_form": ("CONNECT", "http://evil.example/", 501, "upgrade"),
}


@pytest.mark.parametrize("case", sorted(REFUSED_TARGETS))
async def test_a_target_in_no_form_the_proxy_forwards_is_refused(
    listeners: list[Any], case: str
) -> None:
    method, target, status, kind = REFUSED_TARGETS[case]
    async with RecordingUpstream() as upstream:
        listener = await proxy(listeners, to(upstream))
        request = f"{method} {target} HTTP/1.1\r\nHost: orders\r\n\r\n".encode()
        assert await refused(listener, request + SMUGGLED) == (status, kind)
    assert upstream.seen == [] and upstream.connections == 0


# -- the pool ---------------------------------------------------------------------------------


async def test_a_pooled_connection_is_not_reused_after_its_endpoint_moved(
    listeners: list[Any],
) -> None:
    async with RecordingUpstream() as old, RecordingUpstream() as new:
        tgt = Target.fixed("orders", policy("http"), [])
        endpoint = dataclasses.replace(fixed_endpoint("127.0.0.1", old.port), id="orders-1")
        tgt.update([endpoint])
        listener = await proxy(listeners, tgt)
        client = await RawClient.connect(listener)
        await client.send(get("/1"))
        await client.replies_done(1, timeout=5)
        # Same id, another address (the instance was re-registered elsewhere).
        tgt.update([dataclasses.replace(endpoint, port=new.port)])
        await client.send(get("/2"))
        replies = await client.replies_done(2, timeout=5)
        await client.close()
        assert replies[1].status == 200 and replies[1].body == b"GET /2 0"
        assert [s.path for s in old.seen] == ["/1"]
        assert [s.path for s in new.seen] == ["/2"]
        # The connection to the old address is retired, not kept idle.
        await assert_eventually(lambda: holds(old.closed == 1))
        assert new.closed == 0


# -- time and connections --------------------------------------------------------------------


def errors(listener: Any) -> dict[str, int]:
    errors: dict[str, int] = listener.status()["stats"]["errors"]
    return errors


async def test_a_head_trickled_a_byte_at_a_time_is_answered_408_and_closed(
    listeners: list[Any],
) -> None:
    """Only ``idle_timeout`` (5 minutes) used to end it; a normal request goes through
    meanwhile."""
    async with RecordingUpstream() as upstream:
        listener = await proxy(listeners, to(upstream, head_timeout=1.0))
        loop = asyncio.get_running_loop()
        slow = await RawClient.connect(listener)
        started = loop.time()
        async with trickling(slow.writer, get("/slow", "X-Pad: " + "p" * 300)):
            client = await RawClient.connect(listener)
            await client.send(get("/normal"))
            (normal,) = await client.replies_done(1, timeout=5)
            await client.close()
            (reply,) = await slow.replies_done(1, timeout=10)
            answered = loop.time() - started
            assert await slow.closed()
        await slow.close()
        await assert_eventually(lambda: holds(not listener.downstreams))
    assert normal.status == 200
    assert reply.status == 408 and reply.header("x-eco-proxy-error") == "request_timeout"
    assert reply.header("connection") == "close"
    assert b"not complete within 1s" in reply.body
    # head_timeout, plus at most two sweeps of a quarter of it (and a loaded machine)
    assert 1.0 <= answered < 5.0, answered
    assert [s.path for s in upstream.seen] == ["/normal"]
    assert errors(listener)["request_timeout"] == 1


async def test_trickled_trailers_are_answered_408(listeners: list[Any]) -> None:
    async with RecordingUpstream() as upstream:
        listener = await proxy(listeners, to(upstream, head_timeout=1.0))
        client = await RawClient.connect(listener)
        await client.send(
            get("/upload", "Transfer-Encoding: chunked", method="POST") + b"5\r\nhello\r\n0\r\n"
        )
        async with trickling(client.writer, b"X-Checksum: " + b"c" * 300 + b"\r\n\r\n"):
            (reply,) = await client.replies_done(1, timeout=10)
            assert await client.closed()
        await client.close()
    assert reply.status == 408 and reply.header("x-eco-proxy-error") == "request_timeout"
    assert b"trailers not complete" in reply.body
    assert upstream.seen == []  # the upstream never got a whole request


async def test_a_body_trickled_for_longer_than_head_timeout_is_not_a_slow_head(
    listeners: list[Any],
) -> None:
    """Bodies are bounded by ``timeout``: chunk-size lines, chunks and a
    Content-Length body sent a byte at a time for over 2 s pass."""
    chunked = b"1\r\na\r\n1\r\nb\r\n1\r\nc\r\n0\r\n\r\n"
    async with RecordingUpstream() as upstream:
        listener = await proxy(listeners, to(upstream, head_timeout=1.0))
        a = await RawClient.connect(listener)
        b = await RawClient.connect(listener)
        await a.send(get("/chunked", "Transfer-Encoding: chunked", method="POST"))
        await b.send(get("/length", "Content-Length: 23", method="POST"))
        await asyncio.gather(trickle(a.writer, chunked), trickle(b.writer, b"x" * 23))
        (reply_a,) = await a.replies_done(1, timeout=5)
        (reply_b,) = await b.replies_done(1, timeout=5)
        for client in (a, b):
            await client.close()
    assert (reply_a.status, reply_a.body) == (200, b"POST /chunked 3")
    assert (reply_b.status, reply_b.body) == (200, b"POST /length 23")


async def test_a_trickled_head_pipelined_behind_a_request_is_answered_408_after_it(
    listeners: list[Any],
) -> None:
    async with RecordingUpstream() as upstream:
        listener = await proxy(listeners, to(upstream, head_timeout=1.0))
        client = await RawClient.connect(listener)
        await client.send(get("/first") + b"GET /second HTTP/1.1\r\nHo")
        async with trickling(client.writer, b"st: orders\r\nX-Pad: " + b"p" * 300 + b"\r\n\r\n"):
            first, second = await client.replies_done(2, timeout=10)
            assert await client.closed()
        await client.close()
    assert first.status == 200 and first.body == b"GET /first 0"
    assert second.status == 408 and second.header("x-eco-proxy-error") == "request_timeout"
    assert [s.path for s in upstream.seen] == ["/first"]


async def test_a_silent_new_connection_is_closed_but_an_idle_keep_alive_one_is_kept(
    listeners: list[Any],
) -> None:
    """``head_timeout`` counts from a new connection's opening until its first byte;
    between requests only ``idle_timeout`` applies."""
    async with RecordingUpstream() as upstream:
        listener = await proxy(listeners, to(upstream, head_timeout=1.0))
        kept = await RawClient.connect(listener)
        await kept.send(get("/1"))
        await kept.replies_done(1, timeout=5)
        silent = await RawClient.connect(listener)
        assert await silent.closed(timeout=5)
        assert silent.raw == b""  # nothing was asked: nothing is answered
        await silent.close()

        def kept_open() -> None:  # idle for longer than head_timeout and its sweeps
            assert not kept.reader.at_eof() and not kept.writer.is_closing()

        await assert_stays(kept_open, duration=1.0)
        await kept.send(get("/2"))
        _, second = await kept.replies_done(2, timeout=5)
        await kept.close()
    assert second.status == 200 and second.body == b"GET /2 0"


async def test_past_max_connections_a_new_connection_is_refused_while_open_ones_work(
    listeners: list[Any],
) -> None:
    async with RecordingUpstream() as upstream:
        listener = await proxy(listeners, to(upstream, max_connections=2))
        a = await RawClient.connect(listener)
        b = await RawClient.connect(listener)
        for client, path in ((a, "/a"), (b, "/b")):
            await client.send(get(path))
            await client.replies_done(1, timeout=5)
        over = await RawClient.connect(listener)
        (refusal,) = await over.replies_done(1, timeout=5)
        assert await over.closed()
        await over.close()
        for client, path in ((a, "/a2"), (b, "/b2")):
            await client.send(get(path))
            _, reply = await client.replies_done(2, timeout=5)
            assert reply.status == 200, path
        connections = listener.status()["connections"]
        assert connections == {"open": 2, "max": 2, "max_per_ip": 1000, "refused": 1}
        assert errors(listener)["connection_limit"] == 1
        await a.close()
        await assert_eventually(lambda: holds(listener.gate.count == 1))
        c = await RawClient.connect(listener)
        await c.send(get("/c"))
        (reply_c,) = await c.replies_done(1, timeout=5)
        for client in (b, c):
            await client.close()
    assert refusal.status == 503 and refusal.header("x-eco-proxy-error") == "connection_limit"
    assert refusal.header("connection") == "close"
    assert reply_c.status == 200
    assert [s.path for s in upstream.seen] == ["/a", "/b", "/a2", "/b2", "/c"]


async def test_max_connections_per_ip_refuses_one_address_not_another(
    listeners: list[Any],
) -> None:
    async with RecordingUpstream() as upstream:
        listener = await proxy(listeners, to(upstream, max_connections_per_ip=1))
        first = await RawClient.connect(listener, source="127.0.0.1")
        await first.send(get("/first"))
        await first.replies_done(1, timeout=5)
        again = await RawClient.connect(listener, source="127.0.0.1")
        (refusal,) = await again.replies_done(1, timeout=5)
        await again.close()
        other = await RawClient.connect(listener, source="127.0.0.2")
        await other.send(get("/other"))
        (reply,) = await other.replies_done(1, timeout=5)
        for client in (first, other):
            await client.close()
    assert refusal.status == 503 and refusal.header("x-eco-proxy-error") == "connection_limit"
    assert reply.status == 200
    assert [s.path for s in upstream.seen] == ["/first", "/other"]


def test_head_timeout_and_connection_limit_on_uvloop() -> None:
    """The production event loop: the 503 is written before the close (uvloop's
    transports are not asyncio's classes), and a trickled head gets its 408."""

    async def scenario(listeners: list[Any]) -> None:
        async with RecordingUpstream() as upstream:
            listener = await proxy(listeners, to(upstream, head_timeout=1.0, max_connections=1))
            slow = await RawClient.connect(listener)
            async with trickling(slow.writer, get("/slow", "X-Pad: " + "p" * 300)):
                over = await RawClient.connect(listener)
                (refusal,) = await over.replies_done(1, timeout=5)
                await over.close()
                (reply,) = await slow.replies_done(1, timeout=10)
            await slow.close()
            await assert_eventually(lambda: holds(listener.gate.count == 0))
            client = await RawClient.connect(listener)
            await client.send(get("/after"))
            (after,) = await client.replies_done(1, timeout=5)
            await client.close()
        assert refusal.status == 503 and reply.status == 408 and after.status == 200
        assert [s.path for s in upstream.seen] == ["/after"]

    on_uvloop(scenario)


# -- a client that half-closes ----------------------------------------------------------------


async def half_closed(listener: Any, request: bytes, answers: int) -> tuple[list[Reply], bool]:
    """Sends ``request``, shuts the sending side (``shutdown(SHUT_WR)``), reads ``answers``
    responses; and whether the proxy then closed the connection."""
    client = await RawClient.connect(listener)
    await client.send(request)
    client.writer.write_eof()
    replies = await client.replies_done(answers, timeout=5)
    closed = await client.closed()
    await client.close()
    return replies, closed


async def half_close_scenarios(listeners: list[Any]) -> None:
    async def slow_answers(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        # Each request answered 50 ms after it came, with its path: the client's end of
        # sending reaches the proxy while a request is in flight.
        while True:
            path = (await upstream.read_request(reader)).split(b" ", 2)[1]
            await asyncio.sleep(0.05)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(path), path))

    async with ScriptedUpstream(slow_answers) as upstream:
        listener = await proxy(listeners, to(upstream))
        # One request, then the end of sending: still answered (RFC 9112 9.6).
        (one,), closed = await half_closed(listener, get("/one"), 1)
        assert (one.status, one.body, closed) == (200, b"/one", True)
        assert one.header("connection") == "close"
        # Pipelined ones, every one answered in order, the last saying it closes.
        replies, closed = await half_closed(listener, get("/p1") + get("/p2") + get("/p3"), 3)
        assert [(r.status, r.body) for r in replies] == [
            (200, b"/p1"),
            (200, b"/p2"),
            (200, b"/p3"),
        ]
        assert replies[-1].header("connection") == "close" and closed
        # An HTTP/1.0 client that half-closes after its request (as some do).
        (old,), closed = await half_closed(listener, b"GET /old HTTP/1.0\r\n\r\n", 1)
        assert (old.status, old.body, closed) == (200, b"/old", True)
        # A request cut short by the end of sending: the whole ones are answered, then
        # it is answered 400, and the connection closes.
        cut = get("/whole") + b"GET /cut HTTP/1.1\r\nHo"
        (whole, bad), closed = await half_closed(listener, cut, 2)
        assert (whole.status, whole.body) == (200, b"/whole") and closed
        assert bad.status == 400 and bad.header("x-eco-proxy-error") == "bad_request"
        assert bad.header("connection") == "close"
        # A body cut short: its head went upstream; the request is answered 400.
        body = get("/body", "Content-Length: 10", method="POST") + b"abc"
        (short,), closed = await half_closed(listener, body, 1)
        assert short.status == 400 and short.header("x-eco-proxy-error") == "bad_request"
        assert closed
        # Nothing pending: closed at once, nothing said.
        client = await RawClient.connect(listener)
        client.writer.write_eof()
        assert await client.closed() and client.raw == b""
        await client.close()
        await assert_eventually(lambda: holds(not listener.downstreams))
    # (the head of the cut body may have gone upstream, or not yet when it was refused)
    heads = [r.split(b" ", 2)[1] for r in upstream.requests if b" /body " not in r]
    assert heads == [b"/one", b"/p1", b"/p2", b"/p3", b"/old", b"/whole"]


async def test_a_client_that_half_closes_after_its_requests_is_answered(
    listeners: list[Any],
) -> None:
    await half_close_scenarios(listeners)


def test_a_client_that_half_closes_is_answered_on_uvloop() -> None:
    on_uvloop(half_close_scenarios)


UPSTREAM_HALF_CLOSES = {
    "framed_by_close": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody until the end",
    "length_and_close": b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 4\r\n\r\nbody",
    "length_keep_alive": b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody",
}


@pytest.mark.parametrize("case", sorted(UPSTREAM_HALF_CLOSES))
async def test_an_upstream_that_half_closes_after_its_answer_is_passed_on(
    listeners: list[Any], case: str
) -> None:
    answer = UPSTREAM_HALF_CLOSES[case]

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await upstream.read_request(reader)
        writer.write(answer)
        writer.write_eof()
        await reader.read()  # until the proxy closes its side

    async with ScriptedUpstream(script) as upstream:
        listener = await proxy(listeners, to(upstream))
        client = await RawClient.connect(listener)
        for i in range(2):
            await client.send(get(f"/{i}"))
            replies = await client.replies_done(i + 1, timeout=5)
        await client.close()
        await assert_eventually(lambda: holds(upstream.closed == 2))
    assert [(r.status, r.body) for r in replies] == [(200, answer.split(b"\r\n\r\n")[1])] * 2
    assert upstream.connections == 2


# -- memory -----------------------------------------------------------------------------------


def rss() -> int:
    """This process's resident set size, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def test_oversized_heads_take_no_memory_and_leave_none_behind(listeners: list[Any]) -> None:
    """Clients streaming 8 MiB header values: the proxy refuses each after the limit and
    never holds more than a little per connection, and what it held is given back."""
    piece = b"a" * (64 * KIB)

    async def hostile(listener: Any) -> None:
        host, port = listener.address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: orders\r\nX-Big: ")
            for _ in range(128):
                writer.write(piece)
                await writer.drain()
            writer.write(b"\r\n\r\n")
            await writer.drain()
            await reader.read()
        except ConnectionError:
            pass  # refused, and the connection closed under the sending client
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async with RecordingUpstream() as upstream:
        listener = await proxy(listeners, to(upstream))
        await hostile(listener)  # once, so that first-use allocations are made
        gc.collect()
        before = rss()
        tracemalloc.start()
        try:
            for _ in range(3):
                await asyncio.gather(*(hostile(listener) for _ in range(4)))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        await assert_eventually(lambda: holds(not listener.downstreams))
        gc.collect()
        grown = rss() - before
        client = await RawClient.connect(listener)
        await client.send(get("/after"))
        (reply,) = await client.replies_done(1, timeout=5)
        await client.close()
    # 12 clients sent 8 MiB each (4 at a time); the proxy held a few reads' worth.
    assert peak < 8 * MB, f"peak {peak / MB:.1f} MB traced"
    assert grown < 8 * MB, f"RSS grew by {grown / MB:.1f} MB"
    assert reply.status == 200
    assert upstream.seen[-1].path == "/after" and len(upstream.seen) == 1


def test_refusals_and_smuggling_on_uvloop() -> None:
    """The production event loop: a refused head is answered before the close, the
    smuggling scenario stays in step, TRACE is refused."""

    async def scenario(listeners: list[Any]) -> None:
        async with RecordingUpstream(hold=("/hidden",)) as upstream:
            listener = await proxy(listeners, to(upstream))
            assert await refused(listener, padded(60 * KIB + 1)) == (431, "headers_too_large")
            # More than the limit in one write: the answer is read, not a reset.
            client = await RawClient.connect(listener)
            await client.send(padded(200 * KIB))
            (reply,) = await client.replies_done(1, timeout=5)
            assert reply.status == 431 and await client.closed()
            await client.close()
            a = await RawClient.connect(listener)
            await a.send(
                get("/a", "Connection: content-length", f"Content-Length: {len(HIDDEN)}") + HIDDEN
            )
            b = await RawClient.connect(listener)
            (reply_a,) = await a.replies_done(1, timeout=5)
            await b.send(get("/b", method="TRACE") + get("/b"))
            trace, reply_b = await b.replies_done(2, timeout=5)
            for client in (a, b):
                await client.close()
            assert reply_a.body == b"GET /a %d" % len(HIDDEN)
            assert trace.status == 405 and reply_b.body == b"GET /b 0"
            assert [s.path for s in upstream.seen] == ["/a", "/b"]

    on_uvloop(scenario)
