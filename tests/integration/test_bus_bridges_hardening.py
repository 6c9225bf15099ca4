"""The HTTP/WebSocket bus bridge against hostile and slow clients, over real sockets.

Raw clients where a stock one would not send the bytes: half-sent request
heads, bodies that stop, a flood of connections from one address, requests
from a web page of another origin, unmasked and malformed WebSocket frames,
JSON nested past any sense, requests that are not HTTP. Each test states
what a user of the bridge notices.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import uvloop

from bus import OutgoingMessage, Subscription, SubscriptionSpec
from bus.embedded import EmbeddedBroker
from serving.http_limits import HttpLimits
from sidecar.bridges.web import BridgeServer
from sidecar.config import HttpBridgeConfig
from tests.integration.raw_http import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    RawConnection,
    closed_within,
    head,
    open_raw,
    trickling,
)
from tests.util import assert_eventually, assert_stays

APP = "https://app.example"
EVIL = "https://evil.example"
#: Small limits, so that the tests are quick.
LIMITS = HttpLimits(
    head_timeout=0.5,
    body_timeout=0.5,
    idle_timeout=1.0,
    max_connections=12,
    max_connections_per_ip=6,
)
HALF_SENT = b"POST /v1/publish/orders.eu HTTP/1.1\r\nHost: bridge\r\nContent-Le"
JSON = "Content-Type: application/json"


@pytest.fixture
async def bridge(broker: EmbeddedBroker) -> AsyncIterator[BridgeServer]:
    server = BridgeServer(
        broker,
        "127.0.0.1:0",
        max_body=1024,
        heartbeat=0.2,
        limits=LIMITS,
        allowed_origins=(APP,),
        max_subscriptions=3,
    )
    async with server:
        yield server


@pytest.fixture
async def http(bridge: BridgeServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(f"http://{bridge.address}") as session:
        yield session


@pytest.fixture
async def published(broker: EmbeddedBroker) -> AsyncIterator[Subscription]:
    """Everything published on the bus while the test runs."""
    sub = await broker.subscribe(SubscriptionSpec(">"))
    try:
        yield sub
    finally:
        await sub.close()


async def next_subject(sub: Subscription) -> str:
    async with asyncio.timeout(5):
        return (await anext(aiter(sub))).subject


async def nothing_was_published(broker: EmbeddedBroker, sub: Subscription) -> None:
    """What the bus delivers first after this test's requests is a marker published now."""
    await broker.publish(OutgoingMessage("marker", b""))
    assert await next_subject(sub) == "marker"


async def raw(bridge: BridgeServer, source: str = "127.0.0.1") -> RawConnection:
    return await open_raw(bridge.address, source=source)


# -- slow clients (finding 7) -------------------------------------------------------------


async def test_half_sent_request_heads_are_closed_after_the_head_timeout(
    bridge: BridgeServer,
) -> None:
    clients = [await raw(bridge) for _ in range(4)]
    for client in clients:
        client.send(HALF_SENT)
    # one more sends its head a byte at a time, never finishing
    dribbler = await raw(bridge)
    async with trickling(dribbler.writer, HALF_SENT * 100, every=0.05):
        for client in [*clients, dribbler]:
            answer = await client.until_closed(timeout=5)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408 "), answer
    for client in [*clients, dribbler]:
        client.close()


async def test_a_body_that_stops_gets_408_and_publishes_nothing(
    bridge: BridgeServer, broker: EmbeddedBroker, published: Subscription
) -> None:
    client = await raw(bridge)
    client.send(
        b"POST /v1/publish/orders.eu HTTP/1.1\r\nHost: bridge\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Length: 100\r\n\r\n0123456789"
    )
    response = await client.response(timeout=5)
    assert response.status == 408
    assert json.loads(response.body)["error"] == "request_timeout"
    assert await client.until_closed() == b""
    client.close()
    await nothing_was_published(broker, published)


async def test_bodies_held_at_once_are_bounded(broker: EmbeddedBroker) -> None:
    # 64 bodies of max_body (1 KiB) in all: 64 slow publishes hold it, the next gets 503.
    limits = HttpLimits(head_timeout=5.0, body_timeout=2.0)
    async with BridgeServer(broker, "127.0.0.1:0", max_body=1024, limits=limits) as bridge:
        slow = [await raw(bridge) for _ in range(64)]
        for client in slow:
            client.send(
                b"POST /v1/publish/a HTTP/1.1\r\nHost: bridge\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1024\r\n\r\n{"
            )
        other = await raw(bridge, source="127.0.0.2")

        async def refused() -> None:
            other.send(head("POST", "/v1/publish/a", JSON, body=b"{}"))
            response = await other.response()
            assert response.status == 503, response
            assert json.loads(response.body)["error"] == "unavailable"

        await assert_eventually(refused)
        # once the slow bodies time out (408), there is room again
        for client in slow:
            assert (await client.response()).status == 408
            client.close()
        other.send(head("POST", "/v1/publish/a", JSON, body=b"{}"))
        assert (await other.response()).status == 202
        other.close()


async def test_an_idle_keep_alive_connection_is_closed(bridge: BridgeServer) -> None:
    client = await raw(bridge)
    for _ in range(2):  # kept alive between requests
        client.send(head("POST", "/v1/publish/a", JSON, body=b"{}"))
        assert (await client.response()).status == 202
    # then closed once idle for idle_timeout (1 s)
    assert await client.until_closed(timeout=5) == b""
    client.close()


async def test_connections_over_the_caps_are_refused_and_others_still_served(
    broker: EmbeddedBroker,
) -> None:
    # A head timeout long enough for the whole flood to be in place at once.
    limits = HttpLimits(
        head_timeout=3.0, idle_timeout=3.0, max_connections=12, max_connections_per_ip=6
    )
    async with BridgeServer(broker, "127.0.0.1:0", limits=limits) as bridge:
        # One address opens 30 half-sent requests: 6 are held (its share), 24 refused at once.
        flood = [await raw(bridge) for _ in range(30)]
        for client in flood:
            client.send(HALF_SENT)
        refused = await closed_within(flood, 0.5)
        assert len(refused) == 24
        assert all(answer.startswith(b"HTTP/1.1 503 ") for answer in refused), refused[0]
        _connections(bridge, 6)

        # Meanwhile another client host is served: a publish and a live event stream.
        other = await raw(bridge, source="127.0.0.2")
        other.send(head("POST", "/v1/publish/orders.eu", JSON, body=b'{"n": 1}'))
        assert (await other.response()).status == 202
        stream = await raw(bridge, source="127.0.0.2")
        stream.send(head("GET", "/v1/subscribe/orders.>"))
        assert (await stream.response()).status == 200
        await asyncio.wait_for(stream.reader.readuntil(b": subscribed\n"), 5)

        # The server holds 12 at most: with 4 more from the second host, a third finds it full.
        more = [await raw(bridge, source="127.0.0.2") for _ in range(4)]
        for client in more:
            client.send(HALF_SENT)
        await assert_eventually(lambda: _connections(bridge, 12))
        third = await raw(bridge, source="127.0.0.3")
        assert (await third.until_closed(timeout=2)).startswith(b"HTTP/1.1 503 ")

        # The flood is closed by the head timeout; then its address is served again.
        for client in flood:
            await client.until_closed(timeout=5)
        for client in [*flood, other, stream, *more, third]:
            client.close()
        async with (
            aiohttp.ClientSession(f"http://{bridge.address}") as http,
            http.post("/v1/publish/orders.eu", json={"n": 2}) as resp,
        ):
            assert resp.status == 202


async def test_an_sse_stream_is_not_cut_by_the_timeouts(
    bridge: BridgeServer, broker: EmbeddedBroker
) -> None:
    client = await raw(bridge)
    client.send(head("GET", "/v1/subscribe/orders.>"))
    async with asyncio.timeout(5):
        assert (await client.reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
        await client.reader.readuntil(b": subscribed\n")

    # longer than the head and idle timeouts together, the stream stays open
    def still_open() -> None:
        assert not client.reader.at_eof() and not client.writer.is_closing()

    await assert_stays(still_open, duration=2 * (LIMITS.head_timeout + LIMITS.idle_timeout))
    await broker.publish(OutgoingMessage("orders.eu", b"late"))
    async with asyncio.timeout(5):
        await client.reader.readuntil(b"late")
    client.close()


class CountingBroker(EmbeddedBroker):
    """Counts the requests waiting for a reply."""

    waiting = 0

    async def request(self, *args: Any, **kwargs: Any) -> Any:
        self.waiting += 1
        try:
            return await super().request(*args, **kwargs)
        finally:
            self.waiting -= 1


async def test_a_client_that_gives_up_on_a_request_frees_what_it_held() -> None:
    broker = CountingBroker(None)
    await broker.start()
    silent = await broker.subscribe(SubscriptionSpec("slow"))  # a responder that never answers
    try:
        async with BridgeServer(broker, "127.0.0.1:0") as bridge:
            for _ in range(3):
                client = await raw(bridge)
                client.send(head("POST", "/v1/request/slow?timeout=300s", JSON, body=b"{}"))
                await assert_eventually(lambda: _waiting(broker, 1))
                client.close()  # gone: the request is not waited for 300 s
                await assert_eventually(lambda: _waiting(broker, 0))
    finally:
        await silent.close()
        await broker.close()


def _waiting(broker: CountingBroker, count: int) -> None:
    assert broker.waiting == count


async def test_an_event_stream_whose_client_reads_nothing_is_ended(
    bridge: BridgeServer, broker: EmbeddedBroker
) -> None:
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        host, _, port = bridge.address.rpartition(":")
        await loop.sock_connect(sock, (host, int(port)))
        await loop.sock_sendall(sock, head("GET", "/v1/subscribe/big.>"))
        await assert_eventually(lambda: _streams(bridge, 1))
        # Never read: once the socket takes no more, the stream ends within idle_timeout.
        payload = b"x" * 16384
        for n in range(10_000):
            if bridge.status()["streams"] == 0:
                break
            await broker.publish(OutgoingMessage(f"big.{n}", payload))
            await asyncio.sleep(0 if n % 8 else 0.001)
        await assert_eventually(lambda: _streams(bridge, 0))


def _streams(bridge: BridgeServer, count: int) -> None:
    assert bridge.status()["streams"] == count


# -- Origin and cross-site requests (finding 8) --------------------------------------------


async def test_a_page_of_another_origin_can_neither_publish_nor_subscribe(
    bridge: BridgeServer,
    http: aiohttp.ClientSession,
    broker: EmbeddedBroker,
    published: Subscription,
) -> None:
    origin = {"Origin": EVIL}
    async with http.post("/v1/publish/eco.events.x", json={}, headers=origin) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"] == "forbidden_origin"
        assert "Access-Control-Allow-Origin" not in resp.headers
    async with http.post("/v1/request/a", data=b"", headers=origin) as resp:
        assert resp.status == 403
    async with http.get("/v1/subscribe/>", headers=origin) as resp:
        assert resp.status == 403
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect("/v1/ws", origin=EVIL)
    assert refused.value.status == 403
    # "null" is what sandboxed pages and files send: refused too
    async with http.post("/v1/publish/a", json={}, headers={"Origin": "null"}) as resp:
        assert resp.status == 403
    await nothing_was_published(broker, published)


async def test_a_refused_request_s_body_is_discarded_and_the_connection_closed(
    bridge: BridgeServer,
) -> None:
    # The answer comes before the body; the body, however long, is not taken for a head.
    client = await raw(bridge)
    request = head("POST", "/v1/publish/a", f"Origin: {EVIL}", JSON, body=b"x" * 100_000)
    client.send(request[:200])
    assert (await client.response()).status == 403
    client.send(request[200:])
    assert await client.until_closed() == b""
    client.close()


async def test_an_allowed_origin_is_served_with_cors_headers(
    http: aiohttp.ClientSession, published: Subscription
) -> None:
    async with http.post("/v1/publish/orders.eu", json={"n": 1}, headers={"Origin": APP}) as resp:
        assert resp.status == 202
        assert resp.headers["Access-Control-Allow-Origin"] == APP
        assert "Origin" in resp.headers["Vary"]
    assert await next_subject(published) == "orders.eu"
    async with http.ws_connect("/v1/ws", origin=APP) as ws:
        await ws.send_json({"op": "pub", "ref": "p", "subject": "orders.ws"})
        assert json.loads((await ws.receive(timeout=5)).data)["op"] == "ok"
    assert await next_subject(published) == "orders.ws"


async def test_a_bridge_allows_no_origin_unless_configured(broker: EmbeddedBroker) -> None:
    async with (
        BridgeServer(broker, "127.0.0.1:0") as bridge,
        aiohttp.ClientSession(f"http://{bridge.address}") as http,
    ):
        own = {"Origin": f"http://{bridge.address}"}
        async with http.post("/v1/publish/a", json={}, headers=own) as resp:
            assert resp.status == 403
        async with http.post("/v1/publish/a", json={}) as resp:  # curl, a service: no Origin
            assert resp.status == 202


async def test_a_bridge_made_from_its_config_applies_its_origins_and_limits(
    broker: EmbeddedBroker,
) -> None:
    config = HttpBridgeConfig(
        listen="127.0.0.1:0",
        allowed_origins=("https://App.Example/",),
        max_connections=1,
        max_subscriptions=1,
    )
    async with (
        BridgeServer.from_config(broker, config) as bridge,
        aiohttp.ClientSession(f"http://{bridge.address}") as http,
        http.ws_connect("/v1/ws", origin=APP) as ws,
    ):
        second = await raw(bridge)  # over max_connections
        assert (await second.until_closed()).startswith(b"HTTP/1.1 503 ")
        second.close()
        for n in range(2):
            await ws.send_json({"op": "sub", "id": f"s{n}", "subject": "a"})
            answer = json.loads((await ws.receive(timeout=5)).data)
        assert answer["error"] == "too_many_subscriptions"


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        None,
    ],
)
async def test_a_publish_a_browser_could_send_without_asking_is_refused(
    bridge: BridgeServer, broker: EmbeddedBroker, published: Subscription, content_type: str | None
) -> None:
    client = await raw(bridge)
    headers = [f"Content-Type: {content_type}"] if content_type else []
    for path in ("/v1/publish/orders.eu", "/v1/request/orders.eu"):
        client.send(head("POST", path, *headers, body=b"{}"))
        response = await client.response()
        assert response.status == 415, response
        assert json.loads(response.body)["error"] == "unsupported_media_type"
    client.close()
    await nothing_was_published(broker, published)


@pytest.mark.parametrize("content_type", ["application/json", "application/octet-stream"])
async def test_a_publish_with_a_content_type_that_needs_a_preflight_is_served(
    http: aiohttp.ClientSession, content_type: str
) -> None:
    headers = {"Content-Type": content_type}
    async with http.post("/v1/publish/a", data=b"{}", headers=headers) as resp:
        assert resp.status == 202


async def test_preflight_is_answered_only_for_allowed_origins(
    http: aiohttp.ClientSession,
) -> None:
    asking = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, eco-msg-id",
    }
    async with http.options("/v1/publish/a", headers={"Origin": APP, **asking}) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == APP
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
        allowed = resp.headers["Access-Control-Allow-Headers"].lower()
        assert "content-type" in allowed and "eco-msg-id" in allowed
    async with http.options("/v1/publish/a", headers={"Origin": EVIL, **asking}) as resp:
        assert resp.status == 403
        assert "Access-Control-Allow-Origin" not in resp.headers


# -- WebSocket protocol (finding 8) --------------------------------------------------------


async def ws_client(bridge: BridgeServer) -> RawConnection:
    client = await raw(bridge)
    response = await client.ws_handshake()
    assert response.status == 101, response
    return client


async def test_an_unmasked_client_frame_closes_the_socket_with_1002(
    bridge: BridgeServer, broker: EmbeddedBroker, published: Subscription
) -> None:
    client = await ws_client(bridge)
    frame = json.dumps({"op": "pub", "ref": "p", "subject": "eco.events.x"}).encode()
    client.ws_send(OP_TEXT, frame, mask=False)
    assert await client.ws_close_code() == 1002
    client.ws_send(OP_CLOSE, b"\x03\xea")
    assert await client.until_closed() == b""
    client.close()
    await nothing_was_published(broker, published)


async def test_an_unmasked_frame_after_masked_ones_is_refused_too(bridge: BridgeServer) -> None:
    client = await ws_client(bridge)
    frame = json.dumps({"op": "pub", "ref": "p", "subject": "a"}).encode()
    client.ws_send(OP_TEXT, frame)
    opcode, payload = await client.ws_frame()
    assert opcode == OP_TEXT and json.loads(payload)["op"] == "ok"
    # a long masked frame and an unmasked one in one write
    big = json.dumps({"op": "pub", "ref": "q", "subject": "a", "data": "x" * 300}).encode()
    client.ws_send(OP_TEXT, big)
    client.ws_send(OP_TEXT, frame, mask=False)
    assert await client.ws_close_code() == 1002
    client.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"opcode": OP_TEXT, "payload": b"{}", "rsv": 0b010}, 1002),  # reserved bit
        ({"opcode": OP_PING, "payload": b"", "fin": False}, 1002),  # fragmented control
        ({"opcode": 0x3, "payload": b""}, 1002),  # reserved opcode
        ({"opcode": OP_TEXT, "payload": b'{"op": "\xff"}'}, 1007),  # not UTF-8
        ({"opcode": OP_BINARY, "payload": b"x" * 70_000}, 1009),  # over the size limit
    ],
)
async def test_frames_rfc_6455_forbids_close_the_socket(
    bridge: BridgeServer, frame: dict[str, Any], code: int
) -> None:
    client = await ws_client(bridge)
    client.ws_send(**frame)
    assert await client.ws_close_code() == code
    client.close()


async def test_deeply_nested_json_is_an_err_frame_and_the_socket_stays_usable(
    bridge: BridgeServer, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    async with http.ws_connect("/v1/ws") as ws:
        for text in ["[" * 50_000, '{"op": "pub", "subject": "a", "x": ' + "[" * 40 + "]" * 40]:
            await ws.send_str(text)
            err = json.loads((await ws.receive(timeout=5)).data)
            assert err["op"] == "err" and err["error"] == "invalid_frame", err
            assert "deep" in err["message"]
        await ws.send_json({"op": "pub", "ref": "after", "subject": "a"})
        assert json.loads((await ws.receive(timeout=5)).data)["ref"] == "after"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_socket_has_a_bounded_number_of_subscriptions(
    http: aiohttp.ClientSession,
) -> None:
    async with http.ws_connect("/v1/ws") as ws:
        for n in range(4):
            await ws.send_json({"op": "sub", "id": f"s{n}", "subject": f"a.{n}"})
            answer = json.loads((await ws.receive(timeout=5)).data)
            if n < 3:
                assert answer == {"op": "ok", "ref": f"s{n}"}
        assert answer["op"] == "err" and answer["error"] == "too_many_subscriptions", answer
        # closing one makes room
        await ws.send_json({"op": "unsub", "id": "s0"})
        assert json.loads((await ws.receive(timeout=5)).data)["op"] == "ok"
        await ws.send_json({"op": "sub", "id": "s9", "subject": "a.9"})
        assert json.loads((await ws.receive(timeout=5)).data) == {"op": "ok", "ref": "s9"}


# -- HTTP versions ----------------------------------------------------------------------------

HANDSHAKE = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)
REQUESTS = {
    "ws": "GET /v1/ws {version}\r\nHost: bridge\r\n" + HANDSHAKE + "\r\n",
    "publish": "POST /v1/publish/orders.eu {version}\r\nHost: bridge\r\n"
    "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}",
    "subscribe": "GET /v1/subscribe/orders.eu {version}\r\nHost: bridge\r\n\r\n",
}


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/0.9"])
@pytest.mark.parametrize("kind", sorted(REQUESTS))
async def test_a_request_in_another_http_version_than_1_0_and_1_1_is_answered_505(
    bridge: BridgeServer,
    broker: EmbeddedBroker,
    published: Subscription,
    kind: str,
    version: str,
) -> None:
    """It was served as if it were HTTP/1.x: a WebSocket handshake got its 101."""
    client = await raw(bridge)
    client.send(REQUESTS[kind].format(version=version).encode())
    answer = await client.until_closed()
    client.close()
    assert answer.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n"), answer[:200]
    assert b"\r\nConnection: close\r\n" in answer
    await nothing_was_published(broker, published)


@pytest.mark.parametrize(
    "line", ["GET /v1/ws HTTP/1.0", "HEAD /v1/ws HTTP/1.1", "POST /v1/ws HTTP/1.1"]
)
async def test_a_websocket_handshake_must_be_a_get_in_http_1_1(
    bridge: BridgeServer, line: str
) -> None:
    """RFC 6455 4.1: "the method of the request MUST be GET, and the HTTP version MUST
    be at least 1.1"; anything else is answered 400, never 101."""
    client = await raw(bridge)
    client.send(f"{line}\r\nHost: bridge\r\n{HANDSHAKE}\r\n".encode())
    async with asyncio.timeout(5):
        answer = await client.reader.readuntil(b"\r\n\r\n")
    client.close()
    assert answer.split(b" ", 2)[1] in (b"400", b"405"), answer


# -- malformed requests are the client's problem -------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /v1/ws HTTP/1.1\r\nHost: bridge\r\nNo colon here\r\n\r\n",
        b"GET /v1/publish/a HTTP/1.1\r\nHost: bridge\r\nX: " + b"x" * 20_000 + b"\r\n\r\n",
        b"POST /v1/publish/a HTTP/1.1\r\nHost: b\r\nContent-Length: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # TLS to a plain port
        b"GET / HTTP/1.1\r\n" + b"X-Many: 1\r\n" * 200 + b"\r\n",
    ],
)
async def test_a_malformed_request_is_answered_400_and_logged_quietly(
    bridge: BridgeServer, caplog: pytest.LogCaptureFixture, request_bytes: bytes
) -> None:
    caplog.set_level(logging.DEBUG)
    client = await raw(bridge)
    client.send(request_bytes)
    answer = await client.until_closed()
    assert answer == b"" or answer.split(b" ")[1] in (b"400", b"431"), answer[:200]
    client.close()
    await assert_eventually(lambda: _connections(bridge, 0))
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not loud, [(r.name, r.levelname, r.getMessage()) for r in loud]


def _connections(bridge: BridgeServer, count: int) -> None:
    assert bridge.status()["connections"] == count


# -- on the sidecar's event loop ------------------------------------------------------------


def test_the_limits_hold_on_uvloop() -> None:
    """The sidecar runs on uvloop, whose transports are not asyncio's own classes."""

    async def scenario() -> None:
        broker = EmbeddedBroker(None)
        await broker.start()
        limits = HttpLimits(head_timeout=0.5, max_connections=10, max_connections_per_ip=2)
        try:
            async with BridgeServer(broker, "127.0.0.1:0", limits=limits) as bridge:
                flood = [await raw(bridge) for _ in range(5)]
                for client in flood:
                    client.send(HALF_SENT)
                answers = [await client.until_closed() for client in flood]
                assert (
                    sorted(answer[:12] for answer in answers)
                    == [b"HTTP/1.1 408"] * 2 + [b"HTTP/1.1 503"] * 3
                )
                ws = await ws_client(bridge)
                ws.ws_send(OP_TEXT, b'{"op": "pub", "subject": "a"}', mask=False)
                assert await ws.ws_close_code() == 1002
                http2 = await raw(bridge)
                http2.send(REQUESTS["ws"].format(version="HTTP/2.0").encode())
                assert (await http2.until_closed()).startswith(b"HTTP/1.1 505 ")
                for client in [*flood, ws, http2]:
                    client.close()
        finally:
            await broker.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(uvloop.run, scenario()).result(timeout=30)
