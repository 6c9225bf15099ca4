"""Fuzzing the sidecar's bus bridge (``protocol: http``): HTTP, Server-Sent Events and WebSocket.

HTTP: each example is one connection with one or two requests to the
bridge's routes (:func:`tests.fuzz.bridge_plans.bridge_shapes`), with the
anomalies of :mod:`tests.fuzz.http_plans`. Properties: every response well
framed and parseable, never 500 (a 5xx is 503, 504 or 505, as documented),
an error body is the documented JSON and never the ``internal`` kind; every
whole request answered unless the connection closed or became an event
stream; a request in another HTTP version than 1.0 and 1.1 answered 505 (never
served, nor switched to WebSocket), and nothing after it.

WebSocket: each example opens a socket and sends one to four generated
frames. Properties: the handshake is answered 101 (in HTTP/1.1; one in four
handshakes says HTTP/1.0, 2.0 or 0.9, and is answered 400 or 505 and closed); every server frame is
well formed (unmasked, no reserved bits or opcodes), text frames are JSON
operations of the documented kinds, never an ``internal`` error; a close
carries a code a server may send, never 1011 (the server's own failure), and
nothing follows it; after a close frame or a break of the protocol (unmasked,
reserved bits or opcodes, a long or fragmented control frame, a stray
continuation, a text message that is not UTF-8) the server ends the
connection.

After each example a normal publish through the bridge is accepted, and the
sidecar process is alive; after each test a normal WebSocket subscribe and
publish round trip works and its memory grew within the bound of
:mod:`tests.fuzz.rpc`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import struct

import pytest
from hypothesis import given

from tests.fuzz.bridge_plans import (
    CLOSE_CODES,
    HANDSHAKE_VERSIONS,
    OP_CLOSE,
    OP_TEXT,
    SERVER_OPCODES,
    SERVER_OPS,
    WS_HANDSHAKE,
    Frame,
    bridge_shapes,
    frames,
    must_close,
    read_frames,
    ws_text,
)
from tests.fuzz.http_plans import TAG, Plan, plans
from tests.fuzz.http_wire import (
    Exchange,
    Response,
    SentRequest,
    converse,
    read_responses,
    sent_requests,
)
from tests.fuzz.profiles import fuzz_settings, run, time_limit
from tests.fuzz.rpc import say
from tests.fuzz.stack import Stack

pytestmark = pytest.mark.fuzz

READ_TIMEOUT = 10.0
# How long to wait for more once the expected answers are in.
QUIET = 0.15
# How long a server may take to close a WebSocket that must be closed.
CLOSING = 1.0

_checks = itertools.count(1)


def _is_json(response: Response) -> bool:
    return (response.header(b"content-type") or b"").startswith(b"application/json")


def _json_error(response: Response) -> None:
    """An error the bridge made is ``{"error": kind, …}`` and never ``internal``."""
    if response.status < 400 or not response.complete or not _is_json(response):
        return
    body = json.loads(response.body)
    assert isinstance(body, dict) and "error" in body, body
    assert body["error"] != "internal", body


def check_http(exchange: Exchange, requests: list[SentRequest]) -> None:
    """``requests``: those a strict parser finds whole in what the client sent."""
    whole = len(requests)
    if exchange.abandoned:
        return
    say(f"received {exchange.received[:1500]!r}")
    responses, problem = read_responses(
        exchange.received, ended=exchange.closed, close_framed_ok=True
    )
    assert problem is None, problem
    for response in responses:
        assert response.status != 500, response
        assert response.status < 500 or response.status in (503, 504, 505), response
        _json_error(response)
    # One answer per whole request, and at most one more: the refusal of what
    # followed them. More means bytes that were never a request were answered.
    final = [r for r in responses if r.status >= 200]
    assert len(final) <= whole + 1, f"{len(final)} answers to {whole} whole request(s)"
    # Answers come in the order of the requests (a switch to WebSocket is one): a
    # request in another version is refused, and the connection ends there.
    answers = [r for r in responses if r.status >= 200 or r.status == 101]
    for i, (request, response) in enumerate(zip(requests, answers, strict=False)):
        if request.version not in ("1.0", "1.1"):
            assert response.status == 505, f"HTTP/{request.version} answered {response}"
            assert i == len(answers) - 1, "answers after a 505"
            break
    streaming = any(r.streaming for r in responses)
    if not exchange.closed and not streaming:
        answered = sum(r.complete and r.status >= 200 for r in responses)
        assert answered >= whole, (
            f"{whole} whole request(s), {answered} answered, and the connection still open"
        )


async def _publish(address: str) -> Response:
    body = b'{"check": %d}' % next(_checks)
    request = (
        b"POST /v1/publish/fz.pub.check HTTP/1.1\r\nHost: fz\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    ) + body
    exchange = await converse(address, [request], expected=1, timeout=READ_TIMEOUT)
    responses, problem = read_responses(exchange.received, ended=exchange.closed)
    assert problem is None and len(responses) == 1, (problem, exchange)
    return responses[0]


def publish_works(stack: Stack) -> None:
    """A normal publish through the bridge is accepted."""
    response = asyncio.run(_publish(stack.bridge))
    assert response.status == 202, response


@pytest.mark.timeout(time_limit(120))
def test_http_bridge(stack: Stack, request: pytest.FixtureRequest) -> None:
    served = stack.served
    with served.bounded(lambda: publish_works(stack)):

        @fuzz_settings(50)
        @given(plans(bridge_shapes, most=2))
        def one(plan: Plan) -> None:
            pieces = plan.render(TAG)
            whole = sent_requests(b"".join(pieces))
            exchange = asyncio.run(
                converse(
                    stack.bridge,
                    pieces,
                    expected=len(whole),
                    timeout=READ_TIMEOUT,
                    quiet=QUIET,
                    abandon=plan.abandon,
                )
            )
            check_http(exchange, whole)
            publish_works(stack)
            served.pid  # noqa: B018 - fails when the sidecar has exited

        run(one, request)


# -- WebSocket --------------------------------------------------------------------------


class Socket:
    """A raw WebSocket client: the handshake, then frames as they are."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.received = b""
        self.closed = False

    @classmethod
    async def open(cls, address: str, version: bytes = b"HTTP/1.1") -> tuple[Socket, bytes]:
        host, port = address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        socket = cls(reader, writer)
        lines = [b"GET /v1/ws " + version, b"Host: fz", *WS_HANDSHAKE]
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
        async with asyncio.timeout(READ_TIMEOUT):
            head = await reader.readuntil(b"\r\n\r\n")
        return socket, head

    async def send(self, frames_: list[Frame]) -> None:
        with contextlib.suppress(ConnectionError):
            for frame in frames_:
                self.writer.write(frame.encode())
                await self.writer.drain()

    async def read(self, *, until: int = 1 << 30, quiet: float = QUIET) -> None:
        """Reads until the server closes, ``until`` frames have come, or ``quiet``."""
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                while len(read_frames(self.received)[0]) < until:
                    chunk = await asyncio.wait_for(self.reader.read(65536), quiet)
                    if not chunk:
                        self.closed = True
                        return
                    self.received += chunk
        except TimeoutError:
            pass
        except ConnectionError:
            self.closed = True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def check_frames(data: bytes, closed: bool) -> None:
    say(f"received {data[:1500]!r}")
    received, rest = read_frames(data)
    assert not (closed and rest), f"the connection ended inside a frame: {rest[:100]!r}"
    for i, frame in enumerate(received):
        assert frame.opcode in SERVER_OPCODES, frame
        assert not frame.masked and not frame.rsv, frame
        if frame.opcode == OP_TEXT:
            message = json.loads(frame.payload)
            assert isinstance(message, dict) and message.get("op") in SERVER_OPS, message
            assert message.get("error") != "internal", message
        if frame.opcode == OP_CLOSE:
            assert i == len(received) - 1, "frames after a close"
            if frame.payload:
                (code,) = struct.unpack("!H", frame.payload[:2])
                assert code in CLOSE_CODES or 3000 <= code <= 4999, code
                assert code != 1011, f"closed for an internal error: {frame.payload!r}"


async def _ws_example(
    address: str, frames_: list[Frame], quiet: float
) -> tuple[bytes, bytes, bool]:
    socket, head = await Socket.open(address)
    try:
        await socket.send(frames_)
        await socket.read(quiet=quiet)
        return head, socket.received, socket.closed
    finally:
        await socket.close()


async def _refused_handshake(address: str, version: bytes) -> bytes:
    """A handshake in ``version``: the head of the answer, once the bridge closed."""
    socket, head = await Socket.open(address, version)
    try:
        async with asyncio.timeout(READ_TIMEOUT):
            with contextlib.suppress(ConnectionError):
                await socket.reader.read()  # until the bridge closes
        return head
    finally:
        await socket.close()


async def _ws_round_trip(address: str) -> None:
    """A normal subscribe, publish and delivery over one socket."""
    subject = f"fz.sub.ws.check{next(_checks)}"
    socket, head = await Socket.open(address)
    try:
        assert head.startswith(b"HTTP/1.1 101"), head
        await socket.send([ws_text({"op": "sub", "id": "c1", "subject": subject})])
        await socket.read(until=1, quiet=READ_TIMEOUT)
        await socket.send([ws_text({"op": "pub", "subject": subject, "data": "ok"})])
        await socket.read(until=3, quiet=READ_TIMEOUT)
        messages = [json.loads(f.payload) for f in read_frames(socket.received)[0]]
        assert [m["op"] for m in messages] == ["ok", "ok", "msg"] or [
            m["op"] for m in messages
        ] == ["ok", "msg", "ok"], messages
        (delivery,) = [m for m in messages if m["op"] == "msg"]
        assert delivery["data"] == "ok" and delivery["sub"] == "c1", delivery
    finally:
        await socket.close()


@pytest.mark.timeout(time_limit(120))
def test_websocket_bridge(stack: Stack, request: pytest.FixtureRequest) -> None:
    served = stack.served

    def still_works() -> None:
        asyncio.run(_ws_round_trip(stack.bridge))
        publish_works(stack)

    with served.bounded(still_works):

        @fuzz_settings(40)
        @given(frames(), HANDSHAKE_VERSIONS)
        def one(frames_: list[Frame], version: bytes) -> None:
            if version != b"HTTP/1.1":
                # RFC 6455, 4.1: a handshake is a GET of HTTP/1.1 or later.
                head = asyncio.run(_refused_handshake(stack.bridge, version))
                status = head.split(b" ", 2)[1]
                assert status == (b"400" if version == b"HTTP/1.0" else b"505"), head
                publish_works(stack)
                return
            reason = must_close(frames_)
            quiet = CLOSING if reason else QUIET
            head, data, closed = asyncio.run(_ws_example(stack.bridge, frames_, quiet))
            assert head.startswith(b"HTTP/1.1 101"), head
            check_frames(data, closed)
            if reason is not None:
                said_close = any(f.opcode == OP_CLOSE for f in read_frames(data)[0])
                assert closed or said_close, f"after {reason}, the connection stays open"
            publish_works(stack)
            served.pid  # noqa: B018 - fails when the sidecar has exited

        run(one, request)
