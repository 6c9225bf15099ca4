"""The WebSocket bridge: subscribe, publish and acknowledge over one socket, JSON frames.

One :class:`WsSession` per socket (``GET /v1/ws``, in HTTP/1.1: another
method or version is answered 400, RFC 6455 §4.1): a reader (this handler's
task) that executes the client's frames, one pump task per subscription, and
one writer task that drains a bounded send queue. When the queue is full a
core message is dropped and counted (the client is told once, with a ``warn``
frame, when room returns), a durable one waits (the broker holds further
deliveries back), and a reply frame closes the socket with 1008: a client
that does not read its replies is broken. When the socket closes, every
subscription it opened is closed.

What a client may send is bounded: a message of at most twice ``max_body``
plus 64 KiB (larger: close 1009), JSON nested at most :data:`MAX_DEPTH` deep and at
most ``max_subscriptions`` subscriptions open (else an ``err`` frame); frames
RFC 6455 forbids (unmasked, reserved bits or opcodes, fragmented control
frames: 1002; text that is not UTF-8: 1007) close the socket
(`serving.web_server`).

Off loopback (``ctx.guard``) the upgrade request must present a token
(``Authorization: Bearer``, or ``access_token`` in the URL for a browser),
refused with a JSON 401/403/503 like any route; then every ``sub``, ``pub``
and ``ack`` frame is checked against that token (the checker caches its
answer for a second) and a refused one gets an ``err`` frame
(``unauthenticated``, ``permission_denied``, ``unavailable``). Every
:data:`~sidecar.bridges._http.RECHECK` seconds the subscriptions are checked
again: one the token no longer allows ends with an ``err`` frame whose
``ref`` is its id.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp.http import HttpVersion11

from bus import BusError, Subscription
from sdk import AckKind
from serving.acl import MESSAGING_NEEDS, Need, PermissionDeniedError
from serving.errors import InvalidArgumentError, UnauthenticatedError, UnavailableError
from sidecar.bridges._http import (
    RECHECK,
    BridgeContext,
    authorize,
    delivery_json,
    error_body,
    error_field,
    error_kind,
    error_message,
    publish_message,
    publish_needs,
    subscribe_needs,
    subscription_spec,
)

__all__ = ["WsSession", "handle_ws"]

logger = logging.getLogger(__name__)

#: WebSocket close code for a client that does not read its frames (policy violation).
CLOSE_SLOW = 1008
#: How deep a client frame's JSON may nest (a frame's own objects nest 2 deep).
MAX_DEPTH = 16
#: A JSON string, or a bracket outside of one.
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_ACK_KINDS = {kind.value: kind for kind in AckKind}


class FrameError(ValueError):
    """A client frame that is not understood; answered with an ``err`` frame."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


def _nesting(text: str, limit: int) -> int:
    """How deep ``text`` nests JSON arrays and objects, counted up to ``limit`` + 1."""
    depth = deepest = 0
    for token in _JSON_TOKEN.finditer(text):
        bracket = token.group()
        if bracket in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                break
        elif bracket in "]}":
            depth -= 1
    return deepest


def _parse_frame(text: str) -> dict[str, Any]:
    """A client frame: a JSON object nested at most MAX_DEPTH deep; raises FrameError."""
    # Counting brackets first keeps a frame of plain text from being scanned twice.
    if text.count("[") + text.count("{") > MAX_DEPTH and _nesting(text, MAX_DEPTH) > MAX_DEPTH:
        raise FrameError(f"JSON nested deeper than {MAX_DEPTH} levels")
    try:
        frame = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FrameError(f"not JSON: {exc}") from None
    except RecursionError:  # not expected past the check above; never let it escape
        raise FrameError("JSON nested too deep") from None
    if not isinstance(frame, dict):
        raise FrameError("a frame is a JSON object")
    return frame


def _str(frame: Mapping[str, Any], key: str, *, required: bool = False) -> str:
    value = frame.get(key, "")
    if not isinstance(value, str):
        raise FrameError(f"{key}: must be a string", key)
    if required and not value:
        raise FrameError(f"{key}: required", key)
    return value


class WsSession:
    """One socket's subscriptions and send queue (see the module docstring)."""

    def __init__(self, ws: web.WebSocketResponse, ctx: BridgeContext, secret: str = "") -> None:
        self._ws = ws
        self._ctx = ctx
        self._secret = secret  # the token presented at the upgrade (off loopback)
        self._out: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=ctx.send_queue)
        self._subs: dict[str, tuple[Subscription, asyncio.Task[None]]] = {}
        self._needs: dict[str, Sequence[Need]] = {}  # what each subscription needs
        self._tg: asyncio.TaskGroup | None = None
        #: core messages dropped because the send queue was full
        self.dropped = 0
        self._dropped_reported = 0
        self._slow = False

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            writer = tg.create_task(self._write_loop(), name="bridge-ws-writer")
            watcher = (
                tg.create_task(self._recheck_loop(), name="bridge-ws-recheck")
                if self._ctx.guard is not None
                else None
            )
            try:
                await self._read_loop()
            finally:
                await self._close_subscriptions()
                writer.cancel()
                if watcher is not None:
                    watcher.cancel()
        if self._slow:
            await self._ws.close(code=CLOSE_SLOW, message=b"slow consumer")

    async def close(self) -> None:
        """Closes the socket (1001, going away); :meth:`run` then ends."""
        await self._ws.close(code=1001, message=b"bridge stopping")

    # -- reading ---------------------------------------------------------------------

    async def _read_loop(self) -> None:
        async for msg in self._ws:
            if msg.type is not WSMsgType.TEXT:
                if msg.type is WSMsgType.BINARY:
                    self._reply_err("", "invalid_frame", "frames are JSON text", "")
                continue
            ref = ""
            try:
                frame = _parse_frame(msg.data)
                ref = _str(frame, "ref") or (
                    frame["id"] if isinstance(frame.get("id"), str) else ""
                )
                await self._execute(frame, ref)
            except FrameError as exc:
                self._reply_err(ref, "invalid_frame", exc.message, exc.field)
            except (
                BusError,
                ValueError,
                TimeoutError,
                InvalidArgumentError,
                UnauthenticatedError,
                PermissionDeniedError,
                UnavailableError,
            ) as exc:
                kind, _ = error_kind(exc)
                self._reply_err(ref, kind, error_message(exc), error_field(exc))
            if self._slow:
                return

    async def _execute(self, frame: Mapping[str, Any], ref: str) -> None:
        op = _str(frame, "op", required=True)
        if op == "sub":
            await self._sub(frame, ref)
        elif op == "unsub":
            sub_id = _str(frame, "id", required=True)
            entry = self._subs.pop(sub_id, None)
            if entry is None:
                raise FrameError(f"id: no subscription {sub_id!r}", "id")
            self._needs.pop(sub_id, None)
            await entry[0].close()
            entry[1].cancel()
            self._reply({"op": "ok", "ref": ref})
        elif op == "pub":
            await self._pub(frame, ref)
        elif op == "ack":
            ack_id = _str(frame, "ack_id", required=True)
            await self._check(MESSAGING_NEEDS["Ack"](None))
            kind = _ACK_KINDS.get(_str(frame, "kind") or "ack")
            if kind is None:
                raise FrameError("kind: one of ack, nak, term, in_progress", "kind")
            delay = frame.get("delay", 0)
            if not isinstance(delay, int | float) or delay < 0:
                raise FrameError("delay: a number of seconds, not negative", "delay")
            await self._ctx.broker.ack(ack_id, kind, float(delay))
            self._reply({"op": "ok", "ref": ref})
        else:
            raise FrameError(f"op: unknown operation {op!r}", "op")

    async def _sub(self, frame: Mapping[str, Any], ref: str) -> None:
        sub_id = _str(frame, "id", required=True)
        if sub_id in self._subs:
            raise FrameError(f"id: subscription {sub_id!r} exists", "id")
        if len(self._subs) >= self._ctx.max_subscriptions:
            limit = self._ctx.max_subscriptions
            message = f"id: this socket holds {limit} subscriptions, its limit; unsub one first"
            self._reply_err(ref, "too_many_subscriptions", message, "id")
            return
        subject = _str(frame, "subject", required=True)
        stream = _str(frame, "stream")
        needs = subscribe_needs(subject, stream)
        await self._check(needs)
        spec = subscription_spec(
            subject,
            queue=_str(frame, "queue"),
            durable=_str(frame, "durable"),
            stream=stream,
            deliver=_str(frame, "deliver"),
        )
        sub = await self._ctx.broker.subscribe(spec)
        assert self._tg is not None
        # ok before any message of the subscription: the pump starts after this.
        self._reply({"op": "ok", "ref": ref})
        task = self._tg.create_task(self._pump(sub_id, sub), name=f"bridge-ws-sub-{sub_id}")
        self._subs[sub_id] = (sub, task)
        self._needs[sub_id] = needs

    async def _pub(self, frame: Mapping[str, Any], ref: str) -> None:
        subject = _str(frame, "subject", required=True)
        await self._check(publish_needs(subject))
        data_text = _str(frame, "data")
        encoding = _str(frame, "encoding")
        if encoding == "base64":
            try:
                data = base64.b64decode(data_text, validate=True)
            except binascii.Error as exc:
                raise FrameError(f"data: not base64: {exc}", "data") from exc
        elif encoding:
            raise FrameError("encoding: only base64", "encoding")
        else:
            data = data_text.encode("utf-8")
        if len(data) > self._ctx.max_body:
            kind_error = f"data: {len(data)} bytes is over the limit of {self._ctx.max_body}"
            self._reply_err(ref, "payload_too_large", kind_error, "data")
            return
        headers = frame.get("headers", {})
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise FrameError("headers: an object of strings", "headers")
        message = publish_message(
            subject,
            data,
            headers,
            _str(frame, "msg_id"),
            _str(frame, "reply_to"),
        )
        ack = await self._ctx.broker.publish(message)
        self._reply(
            {
                "op": "ok",
                "ref": ref,
                "stream": ack.stream,
                "sequence": ack.sequence,
                "duplicate": ack.duplicate,
            }
        )

    # -- tokens (off loopback) --------------------------------------------------------

    async def _check(self, needs: Sequence[Need]) -> None:
        """Raises the refusal when the socket's token lacks one of ``needs``."""
        if self._ctx.guard is not None:
            await self._ctx.guard.tokens.check(self._secret, needs)

    async def _recheck_loop(self) -> None:
        """Ends each subscription its token no longer allows (deleted, or a policy
        changed), within about RECHECK plus the checker's cache of a second."""
        assert self._ctx.guard is not None
        tokens = self._ctx.guard.tokens
        while True:
            await asyncio.sleep(RECHECK)
            for sub_id, needs in list(self._needs.items()):
                try:
                    await tokens.check(self._secret, needs)
                except UnavailableError:
                    continue  # never resolved and the control plane away: try again later
                except (UnauthenticatedError, PermissionDeniedError) as exc:
                    if self._needs.get(sub_id) is not needs:
                        continue  # unsubscribed (or replaced) meanwhile
                    entry = self._subs.pop(sub_id, None)
                    self._needs.pop(sub_id, None)
                    if entry is not None:
                        await entry[0].close()
                        entry[1].cancel()
                    self._reply_err(sub_id, error_kind(exc)[0], str(exc), "")

    # -- writing ---------------------------------------------------------------------

    async def _pump(self, sub_id: str, sub: Subscription) -> None:
        try:
            async for delivery in sub:
                frame = {"op": "msg", "sub": sub_id, **delivery_json(delivery)}
                if delivery.ack_id:
                    frame["ack_id"] = delivery.ack_id
                    await self._out.put(frame)  # durable: wait, the broker holds back
                    continue
                try:
                    self._out.put_nowait(frame)
                except asyncio.QueueFull:
                    self.dropped += 1
                    if self.dropped == 1:
                        logger.warning("bridge: slow WebSocket client, dropping core messages")
        except BusError as exc:
            self._reply_err(sub_id, error_kind(exc)[0], exc.message, exc.field)
        finally:
            await sub.close()

    def _reply(self, frame: dict[str, Any]) -> None:
        try:
            self._out.put_nowait(frame)
        except asyncio.QueueFull:
            if not self._slow:
                logger.warning("bridge: WebSocket client does not read its replies; closing it")
            self._slow = True  # the reader stops, and run() closes with CLOSE_SLOW

    def _reply_err(self, ref: str, kind: str, message: str, field: str) -> None:
        self._reply({"op": "err", "ref": ref, "error": kind, "message": message, "field": field})

    async def _write_loop(self) -> None:
        while True:
            frame = await self._out.get()
            try:
                if self.dropped > self._dropped_reported:
                    self._dropped_reported = self.dropped
                    warn = {"op": "warn", "error": "slow_consumer", "dropped": self.dropped}
                    await self._ws.send_str(json.dumps(warn))
                await self._ws.send_str(json.dumps(frame, separators=(",", ":")))
            except ConnectionError:
                return

    async def _close_subscriptions(self) -> None:
        subs, self._subs = self._subs, {}
        self._needs.clear()
        for sub, task in subs.values():
            await sub.close()
            task.cancel()


async def handle_ws(request: web.Request, ctx: BridgeContext) -> web.StreamResponse:
    """``GET /v1/ws``: a WebSocket session (see the module docstring)."""
    if request.method != "GET" or request.version != HttpVersion11:
        # RFC 6455, 4.1: the handshake is a GET in HTTP/1.1 or later (the server refuses
        # other versions with 505); aiohttp's handshake checks neither, and a HEAD comes
        # here too. (HTTP/1.0 knows no Upgrade: RFC 9110, 7.8.)
        message = "a WebSocket handshake is a GET request in HTTP/1.1"
        return web.json_response(error_body("invalid_argument", message), status=400)
    # The token is checked before the upgrade: a refusal is an HTTP answer.
    secret, refused = await authorize(request, ctx, ())
    if refused is not None:
        return refused
    # timeout: how long close() waits for the client's close frame (bounds stop()).
    ws = web.WebSocketResponse(
        heartbeat=ctx.heartbeat, timeout=2.0, max_msg_size=ctx.max_body * 2 + 65536
    )
    await ws.prepare(request)
    session = WsSession(ws, ctx, secret)
    if ctx.closing:
        await ws.close(code=1001, message=b"bridge stopping")
        return ws
    ctx.sessions[session] = session.close
    try:
        await session.run()
    finally:
        ctx.sessions.pop(session, None)
        if not ws.closed:
            await ws.close()
    return ws
