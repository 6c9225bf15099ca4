"""The HTTP/1.1 proxy listener against real backend processes on 127.0.0.1.

``http_backend.py`` processes answer, fail, hang, reset and stream; a few
tests need byte-exact upstream behaviour (trailers, hop-by-hop response
headers, a pooled connection closed under the proxy) and use a scripted
upstream in the test process instead. Clients are aiohttp, or raw sockets
where the exact bytes matter (both peers are in ``http_peers``).
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest
import uvloop

from sidecar.proxy import Target, fixed_endpoint
from sidecar.proxy.http import HttpListener
from tests.harness.ports import free_port
from tests.integration.proxy.conftest import Backend, policy, target
from tests.integration.proxy.http_peers import (
    RawClient,
    ScriptedUpstream,
    get,
    holds,
    proxy,
    url,
)
from tests.util import assert_eventually, assert_stays

PATTERN = bytes(range(256)) * 256


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Backend, Backend]]:
    """Two well-behaved backends shared by the tests that only need answers."""
    b1 = Backend("http_backend.py", "--name", "b1").start()
    b2 = Backend("http_backend.py", "--name", "b2").start()
    yield b1, b2
    b1.stop()
    b2.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
        yield s


async def count(session: aiohttp.ClientSession, backend: Backend) -> int:
    async with session.get(f"http://127.0.0.1:{backend.port}/count") as resp:
        n: int = (await resp.json())["count"]
    return n


# -- headers ---------------------------------------------------------------------------------


async def test_request_headers_are_added_and_hop_by_hop_ones_removed(
    pair: tuple[Backend, Backend], listeners: list[Any]
) -> None:
    listener = await proxy(listeners, target("orders", "http", pair[0]))
    client = await RawClient.connect(listener)
    await client.send(
        get(
            "/?q=1",
            "X-Forwarded-For: 10.1.2.3",
            "Connection: keep-alive, X-Private",
            "X-Private: secret",
            "Keep-Alive: timeout=5",
            "TE: trailers",
            "Proxy-Connection: keep-alive",
            "X-Custom: kept",
        )
        + get("/", "X-Request-Id: my-id-1")
    )
    first, second = await client.replies_done(2)
    await client.close()
    assert first.status == 200
    seen = json.loads(first.body)
    names = {k.lower() for k, _ in seen["headers"]}
    sent = {k.lower(): v for k, v in seen["headers"]}
    assert seen["path"] == "/?q=1"
    assert sent["host"] == "orders"
    assert sent["x-custom"] == "kept"
    assert sent["x-forwarded-for"] == "10.1.2.3, 127.0.0.1"
    assert sent["x-forwarded-proto"] == "http"
    assert len(sent["x-request-id"]) == 32
    assert not names & {"connection", "keep-alive", "x-private", "te", "proxy-connection"}
    assert first.header("x-backend") == "b1"
    # An id the client sent is kept.
    sent2 = {k.lower(): v for k, v in json.loads(second.body)["headers"]}
    assert sent2["x-request-id"] == "my-id-1"
    assert sent2["x-forwarded-for"] == "127.0.0.1"


async def test_response_hop_by_hop_headers_removed_and_trailers_passed_on(
    listeners: list[Any],
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await upstream.read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Private\r\nX-Private: 1\r\n"
                b"Keep-Alive: timeout=5\r\nTrailer: x-checksum\r\nX-Kept: yes\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc\r\n\r\n"
            )

    async with ScriptedUpstream(script) as upstream:
        tgt = Target.fixed("orders", policy("http"), [("127.0.0.1", upstream.port)])
        listener = await proxy(listeners, tgt)
        client = await RawClient.connect(listener)
        await client.send(get("/a"))
        (reply,) = await client.replies_done(1)
        assert reply.status == 200
        assert reply.body == b"hello world"
        assert reply.header("x-kept") == "yes"
        assert reply.header("transfer-encoding") == "chunked"
        assert not reply.names & {"connection", "keep-alive", "x-private"}
        assert reply.trailers == [("x-checksum", "abc")]
        await client.close()

        # An HTTP/1.0 client gets the body up to the close, and no trailers.
        client = await RawClient.connect(listener)
        await client.send(get("/b", version="1.0"))
        (reply,) = await client.replies_done(1)
        assert reply.body == b"hello world"
        assert reply.header("transfer-encoding") is None
        assert reply.header("connection") == "close"
        assert await client.closed()
        await client.close()
        assert upstream.connections == 1  # one pooled upstream connection for both


async def test_a_body_up_to_the_close_is_rechunked_and_the_client_keeps_its_connection(
    listeners: list[Any],
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nno length, ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"the close ends it")

    async with ScriptedUpstream(script) as upstream:
        tgt = Target.fixed("orders", policy("http"), [("127.0.0.1", upstream.port)])
        listener = await proxy(listeners, tgt)
        client = await RawClient.connect(listener)
        for i in range(2):
            await client.send(get("/"))
            replies = await client.replies_done(i + 1)
            assert replies[i].body == b"no length, the close ends it"
            assert replies[i].header("transfer-encoding") == "chunked"
            assert replies[i].header("connection") is None
        await client.close()
    assert upstream.connections == 2
    assert tgt.stats.responses["2xx"] == 2 and not tgt.stats.errors


async def test_chunked_request_is_rechunked_with_its_trailers(listeners: list[Any]) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await upstream.read_request(reader)
        body = await reader.readuntil(b"0\r\n")
        body += await reader.readuntil(b"\r\n\r\n")
        upstream.requests.append(body)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await asyncio.Event().wait()

    async with ScriptedUpstream(script) as upstream:
        tgt = Target.fixed("orders", policy("http"), [("127.0.0.1", upstream.port)])
        listener = await proxy(listeners, tgt)
        client = await RawClient.connect(listener)
        await client.send(get("/up", "Transfer-Encoding: chunked", method="POST") + b"3\r\nabc\r\n")
        await asyncio.sleep(0.05)
        await client.send(b"2\r\nde\r\n0\r\nx-sum: 5\r\n\r\n")
        (reply,) = await client.replies_done(1)
        await client.close()
    assert reply.status == 200 and reply.body == b"ok"
    head, body = upstream.requests
    assert head.startswith(b"POST /up HTTP/1.1\r\n")
    assert b"transfer-encoding: chunked\r\n" in head.lower()
    assert body == b"3\r\nabc\r\n2\r\nde\r\n0\r\nx-sum: 5\r\n\r\n"


async def test_expect_100_continue_is_passed_on(
    pair: tuple[Backend, Backend], listeners: list[Any]
) -> None:
    listener = await proxy(listeners, target("orders", "http", pair[0]))
    client = await RawClient.connect(listener)
    await client.send(get("/echo", "Content-Length: 5", "Expect: 100-continue", method="POST"))
    replies = await client.replies_done(1)
    assert replies[0].status == 100
    await client.send(b"hello")
    replies = await client.replies_done(2)
    assert replies[1].status == 200 and replies[1].body == b"hello"
    await client.close()


async def test_an_answer_before_the_whole_request_closes_after_it(listeners: list[Any]) -> None:
    """The upstream answers 413 without reading the body: the client gets the
    answer, the rest of its body is read and dropped, then the connection closes."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nbig")
        await asyncio.Event().wait()

    async with ScriptedUpstream(script) as upstream:
        tgt = Target.fixed("orders", policy("http"), [("127.0.0.1", upstream.port)])
        listener = await proxy(listeners, tgt)
        client = await RawClient.connect(listener)
        await client.send(get("/up", "Content-Length: 300000", method="POST") + b"x" * 1000)
        (reply,) = await client.replies_done(1)
        assert reply.status == 413 and reply.body == b"big"
        assert reply.header("connection") == "close"
        await client.send(b"x" * 299_000)
        assert await client.closed()
        await client.close()
    assert tgt.requests == 0 and tgt.stats.responses["4xx"] == 1


# -- keep-alive, pipelining, streaming, big bodies -----------------------------------------


async def test_keep_alive_on_both_sides_and_pipelining(
    pair: tuple[Backend, Backend], listeners: list[Any]
) -> None:
    listener = await proxy(listeners, target("orders", "http", pair[0]))
    client = await RawClient.connect(listener)
    await client.send(get("/"))
    await client.replies_done(1)
    await client.send(get("/"))
    await client.replies_done(2)
    ports = {json.loads(r.body)["peer_port"] for r in client.replies}
    assert len(ports) == 1, "the upstream connection was not reused"
    # Pipelined: three requests in one write, answered in order, the slow one first.
    await client.send(get("/slow?ms=300") + get("/status/201") + get("/"))
    replies = await client.replies_done(5)
    assert [r.status for r in replies[2:]] == [200, 201, 200]
    assert replies[2].body == b"b1"
    assert replies[3].body == b"b1 201"
    # A HEAD answer has no body, and the connection goes on.
    await client.send(get("/", method="HEAD"))
    head = await client.head_reply()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: " in head
    await client.send(get("/"))
    replies = await client.replies_done(6)
    assert replies[5].status == 200
    await client.close()
    assert listener.target.stats.responses["2xx"] == 7


async def test_http10_client_keep_alive(
    pair: tuple[Backend, Backend], listeners: list[Any]
) -> None:
    listener = await proxy(listeners, target("orders", "http", pair[0]))
    client = await RawClient.connect(listener)
    await client.send(get("/", "Connection: keep-alive", version="1.0"))
    (reply,) = await client.replies_done(1)
    assert reply.header("connection") == "keep-alive"
    await client.send(get("/", version="1.0"))
    replies = await client.replies_done(2)
    assert replies[1].header("connection") == "close"
    assert await client.closed()
    await client.close()


async def test_chunked_response_streams_incrementally(
    pair: tuple[Backend, Backend], listeners: list[Any], session: aiohttp.ClientSession
) -> None:
    listener = await proxy(listeners, target("orders", "http", pair[0]))
    started = time.monotonic()
    async with session.get(url(listener, "/stream?chunks=4&delay=300")) as resp:
        first = await resp.content.readline()
        first_at = time.monotonic() - started
        rest = await resp.read()
        total = time.monotonic() - started
    assert first == b"b1:0\n"
    assert rest == b"b1:1\nb1:2\nb1:3\n"
    assert total >= 0.85
    assert first_at < 0.45, f"the first chunk took {first_at:.2f}s: buffered"


async def test_20_mib_upload_and_download_intact(
    pair: tuple[Backend, Backend], listeners: list[Any], session: aiohttp.ClientSession
) -> None:
    listener = await proxy(listeners, target("orders", "http", pair[0]))
    size = 20 * 1024 * 1024
    upload = (PATTERN * (size // len(PATTERN) + 1))[:size]
    upload = upload[7:] + upload[:7]  # not aligned with the download's pattern
    async with session.post(url(listener, "/echo"), data=upload) as resp:
        assert resp.status == 200
        assert await resp.read() == upload

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, size, 1 << 20):
            yield upload[i : i + (1 << 20)]

    async with session.post(url(listener, "/echo"), data=chunks()) as resp:
        assert resp.headers.get("transfer-encoding") == "chunked"
        assert await resp.read() == upload
    async with session.get(url(listener, "/big?mb=20")) as resp:
        assert resp.headers["content-length"] == str(size)
        body = await resp.read()
    assert body == PATTERN * (size // len(PATTERN))
    stats = listener.target.stats
    assert stats.bytes_received > 2 * size
    assert stats.bytes_sent > 3 * size


async def test_slow_reader_does_not_make_the_proxy_buffer(
    pair: tuple[Backend, Backend], listeners: list[Any]
) -> None:
    listener = await proxy(listeners, target("orders", "http", pair[0]))
    client = await RawClient.connect(listener)
    await client.send(get("/big?mb=20"))

    def bounded() -> None:  # the client reads nothing meanwhile
        buffered = sum(d.transport.get_write_buffer_size() for d in listener.downstreams)
        assert buffered <= 1024 * 1024

    await assert_stays(bounded, duration=0.5)
    (reply,) = await client.replies_done(1, timeout=20)
    assert len(reply.body) == 20 * 1024 * 1024
    await client.close()


# -- upstream failures, retries and timeouts -----------------------------------------------


async def test_5xx_forwarded_as_is_and_retried_only_for_idempotent_requests(
    backends: Callable[..., Backend], listeners: list[Any], session: aiohttp.ClientSession
) -> None:
    bad = backends("http_backend.py", "--name", "bad", "--fail", "503")
    good = backends("http_backend.py", "--name", "good")
    tgt = target("orders", "http", bad, good, outlier={"consecutive_failures": 0})
    listener = await proxy(listeners, tgt)
    # POST: no retry, the 503 reaches the client as the upstream sent it.
    statuses = []
    for _ in range(4):
        async with session.post(url(listener), data=b"x") as resp:
            statuses.append((resp.status, resp.headers["x-backend"]))
            assert "x-eco-proxy-error" not in resp.headers
            if resp.status == 503:
                assert await resp.text() == "bad 503"
    assert sorted(statuses) == [(200, "good"), (200, "good"), (503, "bad"), (503, "bad")]
    assert await count(session, bad) == 2 and await count(session, good) == 2
    # GET: a 503 is retried on the other backend.
    for _ in range(4):
        async with session.get(url(listener)) as resp:
            assert resp.status == 200
            assert resp.headers["x-backend"] == "good"
    assert await count(session, good) == 6
    assert await count(session, bad) > 2
    assert tgt.stats.retries == await count(session, bad) - 2
    assert tgt.stats.responses["5xx"] == 2


async def test_connect_failure_is_retried_on_a_live_backend(
    pair: tuple[Backend, Backend], listeners: list[Any], session: aiohttp.ClientSession
) -> None:
    dead = free_port()
    tgt = Target.fixed(
        "orders",
        policy("http", outlier={"consecutive_failures": 0}),
        [("127.0.0.1", dead), pair[0].address],
    )
    listener = await proxy(listeners, tgt)
    for method in ("GET", "POST", "GET", "POST"):
        async with session.request(method, url(listener), data=b"body") as resp:
            assert resp.status == 200
            assert (await resp.json())["name"] == "b1"
    assert tgt.stats.errors["connect_failure"] >= 2
    assert tgt.connections <= 1

    # Only dead endpoints: 502 naming the failure.
    tgt = Target.fixed("orders", policy("http", retries=1), [("127.0.0.1", dead)])
    listener = await proxy(listeners, tgt)
    async with session.get(url(listener)) as resp:
        assert resp.status == 502
        assert resp.headers["x-eco-proxy-error"] == "connect_failure"
        text = await resp.text()
    assert text.startswith(f"upstream orders: connect failed (127.0.0.1:{dead}: ")
    assert "after 2 attempts" in text


async def test_per_try_timeout_then_success_on_the_other_backend(
    backends: Callable[..., Backend], listeners: list[Any], session: aiohttp.ClientSession
) -> None:
    hung = backends("http_backend.py", "--name", "hung", "--fail", "hang")
    good = backends("http_backend.py", "--name", "good")
    tgt = target("orders", "http", hung, good, per_try_timeout=0.3)
    listener = await proxy(listeners, tgt)
    took = []
    for _ in range(2):
        started = time.monotonic()
        async with session.get(url(listener)) as resp:
            assert resp.status == 200
            assert (await resp.json())["name"] == "good"
        took.append(time.monotonic() - started)
    assert max(took) >= 0.3
    assert tgt.stats.errors["timeout"] >= 1
    # Not for a POST: the per-try timeout answers 504.
    for _ in range(2):
        async with session.post(url(listener), data=b"x") as resp:
            if resp.status != 200:
                assert resp.status == 504
                assert await resp.text() == "upstream orders: timeout after 0.3s (per try)\n"


async def test_whole_request_timeout_answers_504(
    pair: tuple[Backend, Backend], listeners: list[Any], session: aiohttp.ClientSession
) -> None:
    tgt = target("orders", "http", *pair, timeout=0.5)
    listener = await proxy(listeners, tgt)
    started = time.monotonic()
    async with session.get(url(listener, "/hang")) as resp:
        assert resp.status == 504
        assert resp.headers["x-eco-proxy-error"] == "timeout"
        assert await resp.text() == "upstream orders: timeout after 0.5s\n"
    assert 0.45 <= time.monotonic() - started < 2.5
    assert tgt.stats.errors["timeout"] == 1
    assert tgt.requests == 0 and tgt.stats.active == 0


async def test_reset_answers_502_for_post_and_is_retried_for_get(
    backends: Callable[..., Backend], listeners: list[Any], session: aiohttp.ClientSession
) -> None:
    resetter = backends("http_backend.py", "--name", "resetter", "--fail", "reset")
    good = backends("http_backend.py", "--name", "good")
    tgt = target("orders", "http", resetter, good, outlier={"consecutive_failures": 0})
    listener = await proxy(listeners, tgt)
    for _ in range(3):
        async with session.get(url(listener)) as resp:
            assert resp.status == 200
    statuses = []
    for _ in range(2):
        async with session.post(url(listener), data=b"x") as resp:
            statuses.append((resp.status, resp.headers.get("x-eco-proxy-error")))
            if resp.status == 502:
                assert await resp.text() == "upstream orders: connection reset\n"
    assert sorted(statuses) == [(200, None), (502, "reset")]
    assert await count(session, good) == 4
    assert tgt.stats.errors["reset"] >= 2


async def test_a_response_cut_short_is_cut_short_for_the_client(
    pair: tuple[Backend, Backend], listeners: list[Any], session: aiohttp.ClientSession
) -> None:
    tgt = target("orders", "http", pair[0])
    listener = await proxy(listeners, tgt)
    with pytest.raises(aiohttp.ClientPayloadError):
        async with session.get(url(listener, "/reset?after=1000")) as resp:
            assert resp.status == 200
            await resp.read()
    assert tgt.stats.errors["reset"] == 1
    async with session.get(url(listener)) as resp:  # the proxy goes on
        assert resp.status == 200


async def test_stale_pooled_connection_is_replaced_without_counting_a_failure(
    listeners: list[Any],
) -> None:
    """The upstream closes a keep-alive connection just as the proxy sends on it:
    even a POST is sent again, on a new connection."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await upstream.read_request(reader)
        await reader.readexactly(4)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        if n == 0:
            await upstream.read_request(reader)  # read, then close without answering
            return
        await asyncio.Event().wait()

    async with ScriptedUpstream(script) as upstream:
        tgt = Target.fixed("orders", policy("http"), [("127.0.0.1", upstream.port)])
        listener = await proxy(listeners, tgt)
        client = await RawClient.connect(listener)
        post = get("/", "Content-Length: 4", method="POST") + b"data"
        await client.send(post)
        await client.replies_done(1)
        await client.send(post)
        replies = await client.replies_done(2)
        await client.close()
    assert [r.status for r in replies] == [200, 200]
    assert upstream.connections == 2
    assert len(upstream.requests) == 3
    assert not tgt.stats.errors
    assert tgt.stats.retries == 0


async def test_a_client_that_resets_its_connection_cancels_its_request(
    pair: tuple[Backend, Backend], listeners: list[Any]
) -> None:
    tgt = target("orders", "http", pair[0])
    listener = await proxy(listeners, tgt)
    client = await RawClient.connect(listener)
    await client.send(get("/slow?ms=5000"))
    await assert_eventually(lambda: holds(tgt.requests == 1 and tgt.connections == 1))
    sock = client.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await client.close()  # a reset (RST), not an end of sending (FIN)
    # The upstream connection carrying it is closed; nothing counts as a failure.
    await assert_eventually(lambda: holds(tgt.requests == 0 and tgt.connections == 0))
    assert tgt.balancer.in_flight(f"127.0.0.1:{pair[0].port}") == 0
    assert not tgt.stats.errors
    assert tgt.stats.requests == 1


async def test_a_client_that_closes_has_its_request_finished_then_the_connection_ends(
    pair: tuple[Backend, Backend], listeners: list[Any]
) -> None:
    """A client's FIN cannot be told from a half-close, after which the client may still
    read (RFC 9112, 9.6): its request runs to its answer (or ``timeout``), whose write
    finds the connection gone; nothing is left behind."""
    tgt = target("orders", "http", pair[0])
    listener = await proxy(listeners, tgt)
    client = await RawClient.connect(listener)
    await client.send(get("/slow?ms=300"))
    await assert_eventually(lambda: holds(tgt.requests == 1))
    await client.close()
    await assert_eventually(lambda: holds(tgt.requests == 0 and not listener.downstreams))
    assert tgt.balancer.in_flight(f"127.0.0.1:{pair[0].port}") == 0
    assert not tgt.stats.errors
    assert tgt.stats.responses["2xx"] == 1


# -- circuit breaking, endpoints, ejection -------------------------------------------------


async def test_no_endpoints_answers_503(
    listeners: list[Any], session: aiohttp.ClientSession
) -> None:
    tgt = Target.fixed("orders", policy("http"), [])
    listener = await proxy(listeners, tgt)
    async with session.get(url(listener)) as resp:
        assert resp.status == 503
        assert resp.headers["x-eco-proxy-error"] == "no_endpoints"
        assert await resp.text() == "upstream orders: no endpoints to pick from\n"
    assert tgt.stats.responses["5xx"] == 1
    assert tgt.stats.errors["no_endpoints"] == 1


async def test_circuit_overflow_fails_fast(
    pair: tuple[Backend, Backend], listeners: list[Any], session: aiohttp.ClientSession
) -> None:
    tgt = target("orders", "http", *pair, circuit_breaker={"max_requests": 1})
    listener = await proxy(listeners, tgt)

    async def slow() -> int:
        async with session.get(url(listener, "/slow?ms=1000")) as resp:
            await resp.read()
            return resp.status

    in_flight = asyncio.create_task(slow())
    await assert_eventually(lambda: holds(tgt.requests == 1))
    started = time.monotonic()
    async with session.get(url(listener)) as resp:
        assert resp.status == 503
        assert resp.headers["x-eco-proxy-error"] == "circuit_open"
        assert await resp.text() == "upstream orders: circuit open (max_requests 1)\n"
    assert time.monotonic() - started < 0.5  # not queued behind the slow one
    assert await in_flight == 200
    async with session.get(url(listener)) as resp:
        assert resp.status == 200
    assert tgt.stats.errors["circuit_open"] == 1


async def test_outlier_ejection_and_recovery(
    backends: Callable[..., Backend], listeners: list[Any], session: aiohttp.ClientSession
) -> None:
    failing = backends("http_backend.py", "--name", "failing", "--fail", "500")
    good = backends("http_backend.py", "--name", "good")
    tgt = target(
        "orders",
        "http",
        failing,
        good,
        retries=0,
        outlier={"consecutive_failures": 2, "base_ejection": 1.0},
    )
    listener = await proxy(listeners, tgt)
    seen = []
    for _ in range(6):
        async with session.get(url(listener)) as resp:
            seen.append(resp.status)
    assert seen.count(500) == 2, seen  # ejected after two 500s in a row
    assert tgt.balancer.ejected == {f"127.0.0.1:{failing.port}"}
    assert tgt.stats.ejections == 1
    for _ in range(4):
        async with session.get(url(listener)) as resp:
            assert resp.headers["x-backend"] == "good"
    # The backend recovers; once the ejection ends it gets traffic again.
    failing.stop()
    recovered = Backend("http_backend.py", "--name", "failing", port=failing.port).start()

    try:
        deadline = time.monotonic() + 5
        while True:
            async with session.get(url(listener)) as resp:
                assert resp.status == 200
                if resp.headers["x-backend"] == "failing":
                    break
            assert time.monotonic() < deadline, "the ejection did not end"
            await asyncio.sleep(0.05)
    finally:
        recovered.stop()


async def test_endpoint_removal_lets_the_request_in_flight_finish(
    pair: tuple[Backend, Backend], listeners: list[Any], session: aiohttp.ClientSession
) -> None:
    tgt = target("orders", "http", *pair)
    listener = await proxy(listeners, tgt)
    for _ in range(2):  # a pooled connection to each
        async with session.get(url(listener)) as resp:
            await resp.read()

    async def slow() -> str:
        async with session.get(url(listener, "/slow?ms=800")) as resp:
            assert resp.status == 200
            return await resp.text()

    in_flight = asyncio.create_task(slow())
    await assert_eventually(lambda: holds(tgt.requests == 1))
    busy = next(b for b in pair if tgt.balancer.in_flight(f"127.0.0.1:{b.port}"))
    other = next(b for b in pair if b is not busy)
    tgt.update([fixed_endpoint(*other.address)])
    assert listener.pool.idle_count == 1  # the idle connection to the removed one is closed
    for _ in range(3):
        async with session.get(url(listener)) as resp:
            assert (await resp.json())["name"] == ("b1" if other is pair[0] else "b2")
    assert await in_flight == ("b1" if busy is pair[0] else "b2")
    # Its connection was closed, not pooled.
    await assert_eventually(lambda: holds(tgt.connections == 1))


async def test_drain_finishes_requests_in_flight_and_refuses_new_connections(
    pair: tuple[Backend, Backend], listeners: list[Any]
) -> None:
    listener = await proxy(listeners, target("orders", "http", *pair))
    idle = await RawClient.connect(listener)
    await idle.send(get("/"))
    await idle.replies_done(1)
    busy = await RawClient.connect(listener)
    await busy.send(get("/slow?ms=700"))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    drain = asyncio.create_task(listener.drain(5.0))
    assert await idle.closed(timeout=1.0)  # an idle keep-alive connection closes at once
    with pytest.raises(OSError):
        await RawClient.connect(listener)
    (reply,) = await busy.replies_done(1)
    assert reply.status == 200 and reply.body in (b"b1", b"b2")
    assert reply.header("connection") == "close"
    assert await busy.closed()
    await drain
    assert time.monotonic() - started < 3.5  # the busy request's 0.7 s, not the 5 s grace
    await listener.drain(5.0)  # idempotent
    for client in (idle, busy):
        await client.close()
    assert listener.target.connections == 0


async def test_drain_grace_cuts_what_is_left(
    pair: tuple[Backend, Backend], listeners: list[Any]
) -> None:
    tgt = target("orders", "http", pair[0])
    listener = await proxy(listeners, tgt)
    client = await RawClient.connect(listener)
    await client.send(get("/hang"))
    await assert_eventually(lambda: holds(tgt.requests == 1))
    started = time.monotonic()
    await listener.drain(0.3)
    assert 0.25 <= time.monotonic() - started < 1.5
    assert await client.closed()
    await client.close()
    assert tgt.requests == 0 and tgt.pending == 0 and tgt.connections == 0


# -- protocol edges ------------------------------------------------------------------------


async def test_upgrade_connect_and_garbage_are_refused(
    pair: tuple[Backend, Backend], listeners: list[Any]
) -> None:
    listener = await proxy(listeners, target("orders", "http", pair[0]))
    for request, status in (
        (get("/ws", "Connection: Upgrade", "Upgrade: websocket"), 501),
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501),
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
    ):
        client = await RawClient.connect(listener)
        await client.send(request)
        (reply,) = await client.replies_done(1)
        assert reply.status == status
        assert reply.header("connection") == "close"
        assert await client.closed()
        await client.close()
    # A good request with garbage behind it: the good one is answered, then the close.
    client = await RawClient.connect(listener)
    await client.send(get("/") + b"GARBAGE\r\n\r\n")
    (reply,) = await client.replies_done(1)
    assert reply.status == 200
    assert reply.header("connection") == "close"
    assert await client.closed()
    await client.close()


async def test_idle_keep_alive_connection_is_closed_after_idle_timeout(
    pair: tuple[Backend, Backend], listeners: list[Any]
) -> None:
    listener = await proxy(listeners, target("orders", "http", pair[0], idle_timeout=0.3))
    client = await RawClient.connect(listener)
    await client.send(get("/"))
    await client.replies_done(1)
    started = time.monotonic()
    assert await client.closed(timeout=3)
    assert 0.25 <= time.monotonic() - started < 1.5
    await client.close()
    await assert_eventually(lambda: holds(listener.pool.idle_count == 0))


def test_works_on_uvloop(pair: tuple[Backend, Backend]) -> None:
    """The production event loop: keep-alive, chunked and big bodies, errors."""

    async def scenario() -> None:
        tgt = target("orders", "http", *pair)
        listener = HttpListener("orders", "127.0.0.1:0", tgt, tgt.policy)
        await listener.start()
        try:
            async with aiohttp.ClientSession() as session:
                names = set()
                for _ in range(4):
                    async with session.get(url(listener)) as resp:
                        names.add((await resp.json())["name"])
                assert names == {"b1", "b2"}
                async with session.get(url(listener, "/stream?chunks=3")) as resp:
                    assert await resp.read() == b"".join(
                        f"{resp.headers['x-backend']}:{i}\n".encode() for i in range(3)
                    )
                body = PATTERN * 64
                async with session.post(url(listener, "/echo"), data=body) as resp:
                    assert await resp.read() == body
                async with session.get(url(listener, "/status/404")) as resp:
                    assert resp.status == 404
                with pytest.raises(aiohttp.ClientPayloadError):
                    async with session.get(url(listener, "/reset?after=100")) as resp:
                        await resp.read()
                # A client that goes away, then a drain with a request in flight.
                client = await RawClient.connect(listener)
                await client.send(get("/slow?ms=3000"))
                await asyncio.sleep(0.2)
                await client.close()
                await assert_eventually(lambda: holds(tgt.requests == 0))

                async def slow() -> bytes:
                    async with session.get(url(listener, "/slow?ms=300")) as resp:
                        assert resp.headers["connection"] == "close"
                        return await resp.read()

                in_flight = asyncio.create_task(slow())
                await asyncio.sleep(0.1)
                await listener.drain(5.0)
                assert await in_flight in (b"b1", b"b2")
        finally:
            await listener.drain(0.0)
        assert tgt.connections == 0 and tgt.requests == 0 and tgt.pending == 0

    uvloop.run(scenario())
