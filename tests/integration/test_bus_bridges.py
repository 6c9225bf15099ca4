"""The bus bridges over real sockets: HTTP, Server-Sent Events and WebSocket clients
against a `BridgeServer` on 127.0.0.1:0 in front of an in-memory `EmbeddedBroker`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from bus import (
    NoRespondersError,
    OutgoingMessage,
    Subscription,
    SubscriptionSpec,
)
from bus.embedded import EmbeddedBroker
from sdk import StreamConfig
from sidecar.bridges.web import BridgeServer
from tests.harness.sse import read_event
from tests.util import assert_eventually

WAIT = 10.0


@pytest.fixture
async def bridge(broker: EmbeddedBroker) -> AsyncIterator[BridgeServer]:
    async with BridgeServer(broker, "127.0.0.1:0", max_body=1024, heartbeat=0.2) as server:
        yield server


@pytest.fixture
async def http(bridge: BridgeServer) -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=None, sock_read=WAIT)
    async with aiohttp.ClientSession(f"http://{bridge.address}", timeout=timeout) as session:
        yield session


# -- helpers ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def sse(
    http: aiohttp.ClientSession, path: str, **headers: str
) -> AsyncIterator[aiohttp.ClientResponse]:
    async with http.get(path, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        # ": subscribed" arrives once the subscription is in place
        assert (await resp.content.readline()).startswith(b": subscribed")
        yield resp


async def durable_info(broker: EmbeddedBroker, stream: str, name: str) -> Any:
    [info] = [s for s in await broker.streams() if s.config.name == stream]
    return next(c for c in info.consumers if c.name == name)


async def ws_recv(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    async with asyncio.timeout(WAIT):
        msg = await ws.receive()
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    frame = json.loads(msg.data)
    assert isinstance(frame, dict)
    return frame


async def respond_forever(sub: Subscription, broker: EmbeddedBroker) -> None:
    async for request in sub:
        await broker.publish(
            OutgoingMessage(
                subject=request.reply_to,
                data=b"re:" + request.data,
                headers={"answered-by": "test", **request.headers},
            )
        )


# -- HTTP ---------------------------------------------------------------------------------


async def test_publish_reaches_an_sse_subscriber(http: aiohttp.ClientSession) -> None:
    async with sse(http, "/v1/subscribe/orders.>") as events:
        async with http.post(
            "/v1/publish/orders.eu.created",
            data=b'{"id": 7}',
            headers={"Eco-Header-Source": "web", "Eco-Msg-Id": "order-7"},
        ) as resp:
            assert resp.status == 202
            assert await resp.json() == {"stream": "", "sequence": 0, "duplicate": False}
        await http.post("/v1/publish/orders.bin", data=b"\xff\x00")
        first, second = await read_event(events), await read_event(events)
    assert first["event"] == "message"
    assert first["id"] == "1" and second["id"] == "2"
    message = json.loads(first["data"])
    assert message["subject"] == "orders.eu.created"
    assert message["data"] == '{"id": 7}'
    assert message["headers"] == {"Source": "web"}
    assert message["id"] == "order-7"
    assert message["sequence"] == 0 and message["redelivered"] is False
    binary = json.loads(second["data"])
    assert binary["encoding"] == "base64"
    assert base64.b64decode(binary["data"]) == b"\xff\x00"


async def test_publish_to_a_stream_reports_sequence_and_duplicates(
    http: aiohttp.ClientSession, broker: EmbeddedBroker
) -> None:
    await broker.add_stream(StreamConfig("ORDERS", ("orders.>",)))
    results = []
    for _ in range(2):
        async with http.post(
            "/v1/publish/orders.a", data=b"x", headers={"Eco-Msg-Id": "m1"}
        ) as resp:
            assert resp.status == 202
            results.append(await resp.json())
    assert results == [
        {"stream": "ORDERS", "sequence": 1, "duplicate": False},
        {"stream": "ORDERS", "sequence": 1, "duplicate": True},
    ]


async def test_request_gets_the_reply_with_its_headers(
    http: aiohttp.ClientSession, broker: EmbeddedBroker
) -> None:
    sub = await broker.subscribe(SubscriptionSpec("prices.quote", queue_group="pricing"))
    async with asyncio.TaskGroup() as tg:
        responder = tg.create_task(respond_forever(sub, broker))
        async with http.post(
            "/v1/request/prices.quote?timeout=2s",
            data=b"A1",
            headers={"Eco-Header-Trace": "t-1"},
        ) as resp:
            assert resp.status == 200
            assert await resp.read() == b"re:A1"
            assert resp.headers["Eco-Header-answered-by"] == "test"
            assert resp.headers["Eco-Header-Trace"] == "t-1"
        await sub.close()
        await responder


async def test_request_without_responders_is_503_and_without_reply_504(
    http: aiohttp.ClientSession, broker: EmbeddedBroker
) -> None:
    async with http.post("/v1/request/prices.quote", data=b"") as resp:
        assert resp.status == 503
        assert (await resp.json())["error"] == "no_responders"
    silent = await broker.subscribe(SubscriptionSpec("prices.quote"))
    try:
        async with http.post("/v1/request/prices.quote?timeout=100ms", data=b"") as resp:
            assert resp.status == 504
            assert (await resp.json())["error"] == "timeout"
    finally:
        await silent.close()


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "kind", "field"),
    [
        ("POST", "/v1/publish/orders.*", b"", 400, "invalid_subject", "subject"),
        ("POST", "/v1/publish/a..b", b"", 400, "invalid_subject", "subject"),
        ("POST", "/v1/publish/big", b"x" * 1025, 413, "payload_too_large", "data"),
        ("POST", "/v1/request/q?timeout=forever", b"", 400, "invalid_argument", "timeout"),
        ("POST", "/v1/request/q?timeout=301s", b"", 400, "invalid_argument", "timeout"),
        ("GET", "/v1/subscribe/a..b", b"", 400, "invalid_subject", "subject"),
        ("GET", "/v1/subscribe/x?durable=d1", b"", 404, "stream_not_found", ""),
        ("GET", "/v1/subscribe/x?deliver=soon", b"", 400, "invalid_argument", ""),
    ],
)
async def test_errors_are_json_with_a_status(
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    body: bytes,
    status: int,
    kind: str,
    field: str,
) -> None:
    async with http.request(method, path, data=body) as resp:
        assert resp.status == status
        error = await resp.json()
    assert error["error"] == kind
    assert error["message"]
    if field:
        assert error["field"] == field


async def test_bad_input_is_named_and_a_chunked_body_is_limited(
    http: aiohttp.ClientSession,
) -> None:
    async with http.post("/v1/publish/a", data=b"", headers={"Eco-Msg-Id": "i" * 300}) as resp:
        assert resp.status == 400
        assert (await resp.json())["field"] == "id"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x" * 512

    async with http.post("/v1/publish/a", data=chunks()) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"] == "payload_too_large"


async def test_durable_sse_acks_what_it_wrote_and_resumes(
    http: aiohttp.ClientSession, broker: EmbeddedBroker
) -> None:
    await broker.add_stream(StreamConfig("ORDERS", ("orders.>",)))
    for n in (1, 2):
        await http.post(f"/v1/publish/orders.{n}", data=str(n).encode())
    async with sse(http, "/v1/subscribe/orders.>?durable=billing") as events:
        got = [await read_event(events) for _ in range(2)]
        assert [e["id"] for e in got] == ["1", "2"]
        assert json.loads(got[0]["data"])["delivery_count"] == 1

        async def all_acked() -> None:
            info = await durable_info(broker, "ORDERS", "billing")
            assert info.pending == 0 and info.next_sequence == 3

        await assert_eventually(all_acked)

    # the server notices the client gone at its next write (a heartbeat at the latest)
    async def gone() -> None:
        assert (await durable_info(broker, "ORDERS", "billing")).subscribers == 0

    await assert_eventually(gone)
    await http.post("/v1/publish/orders.3", data=b"3")
    async with sse(http, "/v1/subscribe/orders.>?durable=billing", **{"Last-Event-ID": "2"}) as ev:
        third = await read_event(ev)
    assert third["id"] == "3"
    assert json.loads(third["data"])["stream"] == "ORDERS"


async def test_sse_heartbeats_find_a_client_gone(
    http: aiohttp.ClientSession, broker: EmbeddedBroker
) -> None:
    await broker.add_stream(StreamConfig("ORDERS", ("orders.>",)))
    async with sse(http, "/v1/subscribe/orders.>?durable=d") as resp:
        async with asyncio.timeout(WAIT):
            assert (await resp.content.readline()) == b"\n"
            assert (await resp.content.readline()).startswith(b": heartbeat")
        assert (await durable_info(broker, "ORDERS", "d")).subscribers == 1

    async def gone() -> None:
        assert (await durable_info(broker, "ORDERS", "d")).subscribers == 0

    await assert_eventually(gone)


async def test_stop_ends_sse_streams_and_websockets(broker: EmbeddedBroker) -> None:
    server = BridgeServer(broker, "127.0.0.1:0")
    address = await server.start()
    async with (
        aiohttp.ClientSession(f"http://{address}") as http,
        sse(http, "/v1/subscribe/a.>") as events,
        http.ws_connect("/v1/ws") as ws,
    ):
        await ws.send_json({"op": "sub", "id": "s1", "subject": "b.>"})
        assert (await ws_recv(ws))["op"] == "ok"
        await server.stop()
        await server.stop()  # idempotent
        with pytest.raises(EOFError):
            await read_event(events)
        async with asyncio.timeout(WAIT):
            closed = await ws.receive()
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    with pytest.raises(NoRespondersError):
        await broker.request("b.x", b"", timeout=1)


# -- WebSocket ----------------------------------------------------------------------------


async def test_ws_sub_pub_unsub(http: aiohttp.ClientSession) -> None:
    async with http.ws_connect("/v1/ws") as ws:
        await ws.send_json({"op": "sub", "id": "s1", "subject": "orders.>"})
        assert await ws_recv(ws) == {"op": "ok", "ref": "s1"}
        await ws.send_json(
            {
                "op": "pub",
                "ref": "p1",
                "subject": "orders.eu",
                "data": "hello",
                "headers": {"k": "v"},
                "msg_id": "m-1",
            }
        )
        frames = [await ws_recv(ws), await ws_recv(ws)]
        ok = next(f for f in frames if f["op"] == "ok")
        msg = next(f for f in frames if f["op"] == "msg")
        assert ok == {"op": "ok", "ref": "p1", "stream": "", "sequence": 0, "duplicate": False}
        assert msg["sub"] == "s1" and msg["subject"] == "orders.eu"
        assert msg["data"] == "hello" and msg["headers"] == {"k": "v"} and msg["id"] == "m-1"

        # binary payloads go both ways as base64; an HTTP publish reaches the socket too
        async with http.post("/v1/publish/orders.bin", data=b"\x00\xff") as resp:
            assert resp.status == 202
        msg = await ws_recv(ws)
        assert msg["encoding"] == "base64" and base64.b64decode(msg["data"]) == b"\x00\xff"

        await ws.send_json({"op": "unsub", "id": "s1"})
        assert await ws_recv(ws) == {"op": "ok", "ref": "s1"}
        raw = base64.b64encode(b"\x01").decode()
        await ws.send_json(
            {"op": "pub", "ref": "p2", "subject": "orders.eu", "data": raw, "encoding": "base64"}
        )
        assert (await ws_recv(ws))["ref"] == "p2"
        await ws.send_json({"op": "unsub", "id": "s1"})
        assert (await ws_recv(ws))["op"] == "err"  # not the message: it is unsubscribed


async def test_ws_durable_messages_are_acked_by_the_client(
    http: aiohttp.ClientSession, broker: EmbeddedBroker
) -> None:
    await broker.add_stream(StreamConfig("JOBS", ("jobs.>",)))
    await broker.publish(OutgoingMessage("jobs.resize", b"img-1"))
    async with http.ws_connect("/v1/ws") as ws:
        await ws.send_json({"op": "sub", "id": "d", "subject": "jobs.>", "durable": "workers"})
        assert (await ws_recv(ws))["op"] == "ok"
        msg = await ws_recv(ws)
        assert msg["op"] == "msg" and msg["sequence"] == 1 and msg["ack_id"]
        assert (await durable_info(broker, "JOBS", "workers")).pending == 1
        await ws.send_json({"op": "ack", "ref": "a1", "ack_id": msg["ack_id"]})
        assert await ws_recv(ws) == {"op": "ok", "ref": "a1"}
        assert (await durable_info(broker, "JOBS", "workers")).pending == 0
        await ws.send_json({"op": "ack", "ref": "a2", "ack_id": msg["ack_id"]})
        assert (await ws_recv(ws))["error"] == "ack_not_found"
    # the socket closed: so did its subscriptions

    async def gone() -> None:
        assert (await durable_info(broker, "JOBS", "workers")).subscribers == 0

    await assert_eventually(gone)


async def test_ws_close_ends_its_core_subscriptions(
    http: aiohttp.ClientSession, broker: EmbeddedBroker
) -> None:
    async with http.ws_connect("/v1/ws") as ws:
        await ws.send_json({"op": "sub", "id": "q", "subject": "prices.quote", "queue": "p"})
        assert (await ws_recv(ws))["op"] == "ok"
        request = asyncio.create_task(broker.request("prices.quote", b"A1", timeout=WAIT))
        try:
            msg = await ws_recv(ws)
            await ws.send_json(
                {"op": "pub", "subject": msg["reply_to"], "data": "12.5", "ref": "r"}
            )
            assert (await request).data == b"12.5"
        finally:
            request.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await request

    async def no_responders() -> None:
        with pytest.raises(NoRespondersError):
            await broker.request("prices.quote", b"", timeout=0.5)

    await assert_eventually(no_responders)


@pytest.mark.parametrize(
    ("frame", "kind", "field"),
    [
        ("not json", "invalid_frame", ""),
        ("[1, 2]", "invalid_frame", ""),
        ('{"ref": "r", "op": "dance"}', "invalid_frame", "op"),
        ('{"ref": "r"}', "invalid_frame", "op"),
        ('{"ref": "r", "op": "sub", "subject": "a"}', "invalid_frame", "id"),
        ('{"ref": "r", "op": "sub", "id": "x", "subject": "a..b"}', "invalid_subject", "subject"),
        ('{"ref": "r", "op": "pub", "subject": "a.*"}', "invalid_subject", "subject"),
        ('{"ref": "r", "op": "pub", "subject": 5}', "invalid_frame", "subject"),
        ('{"ref": "r", "op": "pub", "subject": "a", "headers": []}', "invalid_frame", "headers"),
        (
            '{"ref": "r", "op": "pub", "subject": "a", "data": "!", "encoding": "base64"}',
            "invalid_frame",
            "data",
        ),
        (
            '{"ref": "r", "op": "pub", "subject": "a", "data": "' + "x" * 1025 + '"}',
            "payload_too_large",
            "data",
        ),
        ('{"ref": "r", "op": "ack", "ack_id": "nope"}', "ack_not_found", ""),
        ('{"ref": "r", "op": "ack", "ack_id": "x", "kind": "maybe"}', "invalid_frame", "kind"),
        ('{"ref": "r", "op": "unsub", "id": "never"}', "invalid_frame", "id"),
        (
            '{"ref": "r", "op": "sub", "id": "d", "subject": "x", "durable": "d"}',
            "stream_not_found",
            "",
        ),
    ],
)
async def test_ws_bad_frames_get_err_frames(
    http: aiohttp.ClientSession, frame: str, kind: str, field: str
) -> None:
    async with http.ws_connect("/v1/ws") as ws:
        await ws.send_str(frame)
        err = await ws_recv(ws)
        assert err["op"] == "err" and err["error"] == kind, err
        assert err["message"]
        if field:
            assert err["field"] == field
        if frame.startswith("{"):
            assert err["ref"] == "r"
        # the socket stays usable
        await ws.send_json({"op": "pub", "ref": "after", "subject": "a"})
        assert (await ws_recv(ws))["ref"] == "after"


async def test_ws_binary_frames_are_refused(http: aiohttp.ClientSession) -> None:
    async with http.ws_connect("/v1/ws") as ws:
        await ws.send_bytes(b"\x00")
        assert (await ws_recv(ws))["error"] == "invalid_frame"


async def test_a_durable_message_caught_by_a_dead_sse_stream_comes_again_soon(
    http: aiohttp.ClientSession, broker: EmbeddedBroker
) -> None:
    # ack_wait is 30 s: the message must come back through the NAK of what was
    # taken from the subscription but never written, not through redelivery.
    await broker.add_stream(StreamConfig("ORDERS", ("orders.>",)))
    async with sse(http, "/v1/subscribe/orders.>?durable=d"):
        pass
    await broker.publish(OutgoingMessage("orders.1", b"1"))
    async with sse(http, "/v1/subscribe/orders.>?durable=d") as events:
        event = await read_event(events)
    assert event["id"] == "1"


async def test_escaped_wildcards_in_the_path(http: aiohttp.ClientSession) -> None:
    async with sse(http, "/v1/subscribe/orders.%3E") as events:
        await http.post("/v1/publish/orders.eu", data=b"x")
        assert json.loads((await read_event(events))["data"])["subject"] == "orders.eu"


# -- a socket that does not read: WsSession with a fake socket ------------------------------


class StuckSocket:
    """The part of aiohttp's WebSocketResponse a WsSession uses; sends block until
    ``unblock`` is set, received frames come from ``incoming``."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[aiohttp.WSMessage | None] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.unblock = asyncio.Event()
        self.close_code: int | None = None

    def __aiter__(self) -> StuckSocket:
        return self

    async def __anext__(self) -> aiohttp.WSMessage:
        msg = await self.incoming.get()
        if msg is None:
            raise StopAsyncIteration
        return msg

    def feed(self, frame: dict[str, Any]) -> None:
        self.incoming.put_nowait(aiohttp.WSMessage(aiohttp.WSMsgType.TEXT, json.dumps(frame), None))

    async def send_str(self, data: str) -> None:
        await self.unblock.wait()
        self.sent.append(json.loads(data))

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        self.close_code = code
        self.incoming.put_nowait(None)
        return True


async def test_a_slow_socket_drops_core_messages_then_is_told(broker: EmbeddedBroker) -> None:
    from sidecar.bridges._http import BridgeContext
    from sidecar.bridges._ws import WsSession

    ctx = BridgeContext(broker, max_body=1024, heartbeat=15, send_queue=4)
    ws = StuckSocket()
    session = WsSession(ws, ctx)  # type: ignore[arg-type]
    run = asyncio.create_task(session.run())
    try:
        ws.feed({"op": "sub", "id": "s", "subject": "x"})

        async def subscribed() -> None:
            # one probe message reaches the subscription (and counts below)
            try:
                await broker.request("x", b"", timeout=0.01)
            except NoRespondersError:
                raise AssertionError("not subscribed yet") from None
            except TimeoutError:
                pass

        await assert_eventually(subscribed)
        for n in range(20):
            await broker.publish(OutgoingMessage("x", str(n).encode()))

        def dropped() -> None:
            # 21 messages: the writer is stuck on the "ok" frame, 4 fit in the queue
            assert session.dropped == 17

        await assert_eventually(dropped)
        ws.unblock.set()

        def told() -> None:
            assert any(f.get("op") == "warn" for f in ws.sent), ws.sent
            assert len([f for f in ws.sent if f["op"] == "msg"]) == 4, ws.sent

        await assert_eventually(told)
        warn = next(f for f in ws.sent if f["op"] == "warn")
        received = [f for f in ws.sent if f["op"] == "msg"]
        assert warn["dropped"] == 17 and len(received) == 4
    finally:
        await ws.close()
        await run


async def test_a_socket_that_does_not_read_its_answers_is_closed_1008(
    broker: EmbeddedBroker,
) -> None:
    from sidecar.bridges._http import BridgeContext
    from sidecar.bridges._ws import WsSession

    ctx = BridgeContext(broker, max_body=1024, heartbeat=15, send_queue=2)
    ws = StuckSocket()
    session = WsSession(ws, ctx)  # type: ignore[arg-type]
    run = asyncio.create_task(session.run())
    for n in range(10):
        ws.feed({"op": "pub", "ref": str(n), "subject": "x"})
    async with asyncio.timeout(WAIT):
        await run
    assert ws.close_code == 1008
