"""What the fuzz tests send to the sidecar's bus bridge: HTTP requests and WebSocket frames.

:func:`bridge_shapes` draws a valid request to one of the bridge's routes
(publish, request, subscribe, the WebSocket handshake, or none of them);
:mod:`tests.fuzz.http_plans` adds the anomalies. Subjects that subscriptions
use (``fz.sub.…``) never match those that requests use (``fz.req.…``), so a
request never waits for a reply from an event stream left open.

:func:`frames` draws a short sequence of WebSocket frames: JSON operations
with generated fields, other JSON, invalid UTF-8, reserved opcodes and bits,
unmasked or fragmented frames, lengths that lie. :func:`read_frames` reads
what the server sent back.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from tests.fuzz.http_plans import Shape

ALLOWED_ORIGIN = "http://fz.example"

PUB_SUBJECTS = ["fz.pub.a", "fz.pub.b.c", "fz.s.bridge", "fz.pub.%3E", "fz.pub.a%20b"]
REQ_SUBJECTS = ["fz.req.a", "fz.req.b.c"]
SUB_SUBJECTS = ["fz.sub.a", "fz.sub.>", "fz.sub.*.x", "fz.sub.%3E", "fz.s.>"]
ODD_SUBJECTS = ["", "fz..a", "fz.", ".fz", "fz.%00", "fz.a b", "%C3%A9", "x" * 300, "fz.%ZZ"]
ODD_SUBJECTS += ["fz.pub." + "a" * 250, "fz/a", "fz.a?", "%2e%2e"]
TIMEOUTS = ["", "?timeout=50ms", "?timeout=1s", "?timeout=0", "?timeout=-1", "?timeout=abc"]
TIMEOUTS += ["?timeout=301s", "?timeout=1e9", "?timeout=0.5", "?timeout=2m", "?timeout="]
SUB_QUERIES = ["", "?queue=fz-q", "?durable=fz-bridge&stream=FZ&deliver=all", "?deliver=new"]
SUB_QUERIES += ["?deliver=bogus", "?durable=", "?queue=" + "q" * 100, "?durable=a%20b"]
SUB_QUERIES += ["?stream=NOPE&durable=fz-b2", "?deliver=last&durable=fz-b3", "?x=1&x=2"]

JSON = b"Content-Type: application/json"
#: A WebSocket handshake's version: HTTP/1.1, one in four times another, which the
#: bridge refuses (RFC 6455, 4.1: at least 1.1; the bridge speaks 1.0 and 1.1 only).
HANDSHAKE_VERSIONS = st.sampled_from([b"HTTP/1.1"] * 9 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9"])
WS_HANDSHAKE = [
    b"Upgrade: websocket",
    b"Connection: Upgrade",
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    b"Sec-WebSocket-Version: 13",
]
ODD_BRIDGE_HEADERS = [
    b"Origin: " + ALLOWED_ORIGIN.encode(),
    b"Origin: http://evil.example",
    b"Origin: null",
    b"Origin: ",
    b"Origin: HTTP://FZ.EXAMPLE:80",
    b"Content-Type: text/plain",
    b"Content-Type: multipart/form-data; boundary=x",
    b"Content-Type: application/x-www-form-urlencoded",
    b"Content-Type: ",
    b"Content-Type: application/json; charset=\xff",
    b"Eco-Header-: x",
    b"Eco-Header-A b: x",
    b"Eco-Header-X: " + b"v" * 70_000,
    b"Eco-Header-\xc3\xa9: x",
    b"Eco-Msg-Id: " + b"m" * 300,
    b"Eco-Msg-Id: ",
    b"Last-Event-ID: -1",
    b"Access-Control-Request-Method: POST",
    b"Access-Control-Request-Headers: eco-header-x, content-type",
    b"Sec-WebSocket-Version: 8",
    b"Sec-WebSocket-Key: short",
    b"Sec-WebSocket-Extensions: permessage-deflate",
    b"Upgrade: h2c",
]


@st.composite
def _route(draw: st.DrawFn) -> tuple[bytes, bytes, list[bytes]]:
    """A method, a target and the headers that make a valid request of one route."""
    route = draw(st.sampled_from(["publish", "publish", "request", "subscribe", "ws", "other"]))
    odd = st.sampled_from(ODD_SUBJECTS)
    if route == "publish":
        subject = draw(st.one_of(st.sampled_from(PUB_SUBJECTS), odd))
        headers = [
            JSON,
            *draw(
                st.lists(
                    st.sampled_from([b"Eco-Header-Source: web", b"Eco-Msg-Id: m-1"]), max_size=2
                )
            ),
        ]
        return b"POST", b"/v1/publish/" + subject.encode(), headers
    if route == "request":
        subject = draw(st.one_of(st.sampled_from(REQ_SUBJECTS), odd))
        query = draw(st.sampled_from(TIMEOUTS))
        return b"POST", f"/v1/request/{subject}{query}".encode(), [JSON]
    if route == "subscribe":
        subject = draw(st.one_of(st.sampled_from(SUB_SUBJECTS), odd))
        query = draw(st.sampled_from(SUB_QUERIES))
        return b"GET", f"/v1/subscribe/{subject}{query}".encode(), [b"Accept: text/event-stream"]
    if route == "ws":
        return b"GET", b"/v1/ws", list(WS_HANDSHAKE)
    target = draw(st.sampled_from([b"/", b"/v1", b"/v1/", b"/v1/publish/", b"/v1/publish/a/b"]))
    return draw(st.sampled_from([b"GET", b"OPTIONS", b"DELETE"])), target, []


def bridge_shapes(_index: int) -> st.SearchStrategy[Shape]:
    """Valid requests to the bridge, one route each."""

    def shape(route: tuple[bytes, bytes, list[bytes]]) -> Shape:
        method, target, headers = route
        return Shape(
            methods=st.just(method),
            targets=st.just(target),
            odd_targets=st.sampled_from([b"*", b"", b"http://fz/v1/ws", target + b" x"]),
            headers=st.just(headers),
            bodies=(
                st.one_of(
                    st.just(b'{"id": 8}'),
                    st.binary(max_size=32),
                    st.just(b"a" * 65_536),  # max_body exactly
                    st.just(b"a" * 70_000),
                )
                if method == b"POST"
                else st.just(b"")
            ),
            odd_headers=st.lists(st.sampled_from(ODD_BRIDGE_HEADERS), min_size=1, max_size=3),
        )

    return _route().map(shape)


# -- WebSocket -------------------------------------------------------------------------

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
SERVER_OPCODES = {OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG}
# Close codes a server may send (RFC 6455 7.4): the defined ones, and 3000-4999.
CLOSE_CODES = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
SERVER_OPS = {"ok", "err", "msg", "warn"}


@dataclass(frozen=True)
class Frame:
    opcode: int
    payload: bytes
    fin: bool = True
    rsv: int = 0
    masked: bool = True
    # Declare this many more payload bytes than are sent (the rest never comes).
    short_by: int = 0

    def encode(self) -> bytes:
        first = (0x80 if self.fin else 0) | (self.rsv & 0x7) << 4 | (self.opcode & 0xF)
        size = len(self.payload) + self.short_by
        mask_bit = 0x80 if self.masked else 0
        if size < 126:
            head = struct.pack("!BB", first, mask_bit | size)
        elif size < 1 << 16:
            head = struct.pack("!BBH", first, mask_bit | 126, size)
        else:
            head = struct.pack("!BBQ", first, mask_bit | 127, size)
        payload = self.payload
        if self.masked:
            key = os.urandom(4)
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
            head += key
        return head + payload


def ws_text(value: Any) -> Frame:
    return Frame(OP_TEXT, json.dumps(value).encode())


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
OP_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "ref": st.sampled_from(["r1", "", 7]),
    "id": st.sampled_from(["s1", "s2", "", "x" * 300]),
    "subject": st.sampled_from(["fz.sub.ws", "fz.sub.>", "fz.pub.ws", "", ">", "fz..x", 5]),
    "queue": st.sampled_from(["", "fz-q", None]),
    "durable": st.sampled_from(["", "fz-ws", "bad name"]),
    "stream": st.sampled_from(["", "FZ", "NOPE"]),
    "deliver": st.sampled_from(["", "all", "new", "last", "bogus"]),
    "data": st.sampled_from(["hi", "", "aGk=", "!!", "x" * 70_000]),
    "encoding": st.sampled_from(["base64", "utf-8", ""]),
    "headers": st.sampled_from([{}, {"a": "b"}, {"": "x"}, {"a b": "c"}, {"a": 1}, []]),
    "msg_id": st.sampled_from(["", "m-1"]),
    "reply_to": st.sampled_from(["", "fz.sub.reply", "bad subject"]),
    "ack_id": st.sampled_from(["", "nope", "1:2:3"]),
    "kind": st.sampled_from(["ack", "nak", "term", "in_progress", "bogus"]),
    "delay": st.sampled_from([0, -1, 10, 10**12, "1s"]),
}
VALID_OPS = [
    {"op": "sub", "id": "s1", "subject": "fz.sub.ws"},
    {"op": "pub", "subject": "fz.pub.ws", "data": "hi"},
    {"op": "unsub", "id": "s1"},
    {"op": "ack", "ack_id": "nope", "kind": "ack"},
]


@st.composite
def operations(draw: st.DrawFn) -> dict[str, Any]:
    """A client frame's JSON: a valid operation with some fields changed, or any op."""
    op = dict(draw(st.sampled_from(VALID_OPS)))
    if draw(st.booleans()):
        op["op"] = draw(st.sampled_from(["sub", "unsub", "pub", "ack", "nope", "", 1, None]))
    for name in draw(st.lists(st.sampled_from(sorted(OP_FIELDS)), max_size=3)):
        op[name] = draw(OP_FIELDS[name])
    if draw(st.integers(0, 7)) == 0:
        op[draw(st.text(max_size=8))] = draw(JSON_VALUES)
    return op


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@st.composite
def frames(draw: st.DrawFn) -> list[Frame]:
    """One to four client frames, mostly valid ones."""
    payloads = st.one_of(
        operations().map(lambda op: json.dumps(op).encode()),
        st.sampled_from([b"{", b"[]", b"null", b'"op"', b"{}", nested(20), nested(10_000)]),
        st.sampled_from([b"\xff\xfe", b'{"op": "pub", "data": "\xc3"}', b""]),
        st.binary(max_size=16),
    )

    @st.composite
    def one(draw_: st.DrawFn) -> Frame:
        payload = draw_(payloads)
        if draw_(st.integers(0, 3)) != 0:
            return Frame(OP_TEXT, payload)
        return Frame(
            opcode=draw_(
                st.sampled_from(
                    [OP_TEXT, OP_BINARY, OP_CONTINUATION, OP_CLOSE, OP_PING, OP_PONG, 3, 11, 15]
                )
            ),
            payload=payload
            if draw_(st.booleans())
            else draw_(st.sampled_from([b"\x03\xe8", b"\x00", b"x" * 200])),
            fin=draw_(st.integers(0, 3)) != 0,
            rsv=draw_(st.sampled_from([0, 0, 0, 1, 4, 7])),
            masked=draw_(st.integers(0, 7)) != 0,
            short_by=draw_(st.sampled_from([0, 0, 0, 0, 1, 1000, 1 << 40])),
        )

    return draw(st.lists(one(), min_size=1, max_size=4))


RESERVED_OPCODES = {3, 4, 5, 6, 7, 11, 12, 13, 14, 15}


def must_close(frames_: list[Frame]) -> str | None:
    """Why a server must end the connection after ``frames_``, if it must: a
    close frame, or a break of RFC 6455 that fails the connection (5.1, 5.2,
    5.4, 5.5, 8.1). Only frames received whole count: a frame that announces
    more than is sent swallows what follows it."""
    fragmented = False
    for frame in frames_:
        if frame.short_by:
            return None
        if not frame.masked:
            return "an unmasked frame"
        if frame.rsv:
            return "reserved bits set without an extension"
        if frame.opcode in RESERVED_OPCODES:
            return f"reserved opcode {frame.opcode}"
        if frame.opcode >= OP_CLOSE:
            if len(frame.payload) > 125 or not frame.fin:
                return "a control frame longer than 125 bytes or fragmented"
            if frame.opcode == OP_CLOSE:
                return "a close frame"
            continue
        if frame.opcode == OP_CONTINUATION and not fragmented:
            return "a continuation frame with nothing to continue"
        if frame.opcode != OP_CONTINUATION and fragmented:
            return "a new message inside a fragmented one"
        fragmented = not frame.fin
        if frame.opcode == OP_TEXT and frame.fin:
            try:
                frame.payload.decode("utf-8")
            except UnicodeDecodeError:
                return "a text message that is not UTF-8"
    return None


@dataclass
class ServerFrame:
    opcode: int
    payload: bytes
    fin: bool
    rsv: int
    masked: bool


def read_frames(data: bytes) -> tuple[list[ServerFrame], bytes]:
    """The whole frames in ``data`` and the bytes left after them."""
    out: list[ServerFrame] = []
    at = 0
    while len(data) - at >= 2:
        first, second = data[at], data[at + 1]
        size, offset = second & 0x7F, at + 2
        if size == 126:
            if len(data) - offset < 2:
                break
            (size,) = struct.unpack("!H", data[offset : offset + 2])
            offset += 2
        elif size == 127:
            if len(data) - offset < 8:
                break
            (size,) = struct.unpack("!Q", data[offset : offset + 8])
            offset += 8
        masked = bool(second & 0x80)
        if masked:
            offset += 4
        if len(data) - offset < size:
            break
        out.append(
            ServerFrame(
                first & 0x0F,
                data[offset : offset + size],
                bool(first & 0x80),
                (first >> 4) & 7,
                masked,
            )
        )
        at = offset + size
    return out, data[at:]
