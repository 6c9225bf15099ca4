"""The HTTP bridge's routes: publish, request and Server-Sent-Events subscribe.

Imported only by :mod:`sidecar.bridges.web` (which imports aiohttp): a sidecar
without bridges never loads it. The routes translate HTTP to the `Broker`
protocol and back; broker errors become JSON ``{"error", "message",
"field"}`` bodies in one table (:func:`error_response`), which the WebSocket
bridge reuses for its ``err`` frames.

A publish or request body must say it is ``application/json``,
``application/octet-stream`` or another type that is not one of the three a
web page may send to another site without asking first (``text/plain``,
``application/x-www-form-urlencoded``, ``multipart/form-data``; nor none at
all): 415 otherwise. A browser then sends a CORS preflight, which only an
allowed origin passes. A body must arrive within ``body_timeout`` (408), and
an event stream whose client takes nothing for ``send_timeout`` is ended.
The bodies held at once (being read, published, or waiting for a reply) add
up to at most :data:`BODIES_HELD` times ``max_body``: past it, 503.

Off loopback the bridge has a :class:`~sidecar.acl.Guard` (``ctx.guard``) and
every route checks the token the client presents (``Authorization: Bearer
<secret>``, or an ``access_token`` query parameter for browsers, RFC 6750
§2.3; not both) before anything else, with the rights the gRPC API's RPCs
need (``serving.acl.MESSAGING_NEEDS``): 401 ``unauthenticated`` (with
``WWW-Authenticate: Bearer``), 403 ``permission_denied`` naming the right,
503 ``unavailable``. An event stream checks its token again every
:data:`RECHECK` seconds and ends (an ``event: error``) once it is refused.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiohttp import web
from ecosystem.v1 import messaging_pb2 as pb

from bus import (
    AckNotFoundError,
    Broker,
    BusClosedError,
    BusError,
    BusUnavailableError,
    Delivery,
    InvalidSubjectError,
    NoRespondersError,
    OutgoingMessage,
    PayloadTooLargeError,
    StreamConflictError,
    StreamNotFoundError,
    Subscription,
    SubscriptionSpec,
)
from bus.convert import publish_from_proto, subscription_from_proto
from sdk import AckKind
from serving.acl import MESSAGING_NEEDS, Need, PermissionDeniedError, bearer
from serving.errors import (
    FieldViolation,
    InvalidArgumentError,
    UnauthenticatedError,
    UnavailableError,
)
from sidecar.acl import Guard

__all__ = [
    "HEADER_PREFIX",
    "RECHECK",
    "BridgeContext",
    "authorize",
    "delivery_json",
    "error_field",
    "error_kind",
    "handle_publish",
    "handle_request",
    "handle_subscribe",
    "parse_timeout",
    "presented_token",
    "publish_message",
    "subscription_spec",
]

logger = logging.getLogger(__name__)

#: Request headers ``Eco-Header-<Name>: value`` become message headers (and back, on replies).
HEADER_PREFIX = "Eco-Header-"
MSG_ID_HEADER = "Eco-Msg-Id"
DEFAULT_REQUEST_TIMEOUT = 5.0
MAX_REQUEST_TIMEOUT = 300.0
#: How many bodies of ``max_body`` bytes the bridge holds in memory at once, at most.
BODIES_HELD = 64
#: Seconds between checks of the token of a held-open subscription (off loopback).
RECHECK = 1.0
#: The query parameter a browser's EventSource or WebSocket sends its token in.
ACCESS_TOKEN = "access_token"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m)?")
_FIELD_PREFIX = re.compile(r"([a-z_]+(?:\[[^\]]*\])?):")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}
#: The content types a page may send to another site without a preflight (Fetch's
#: "CORS-safelisted"); a publish must not have one of them, nor none.
_SIMPLE_TYPES = frozenset(
    ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data")
)
_MEDIA_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+")


class BridgeContext:
    """What the routes share: the broker, the limits, and the open streaming sessions
    (each a close callback) so that :meth:`close_sessions` can end them on stop."""

    def __init__(
        self,
        broker: Broker,
        *,
        max_body: int,
        heartbeat: float,
        send_queue: int,
        body_timeout: float = 30.0,
        send_timeout: float = 30.0,
        max_subscriptions: int = 256,
        guard: Guard | None = None,
    ) -> None:
        self.broker = broker
        #: TLS and the token checker off loopback; None on loopback (nothing is checked)
        self.guard = guard
        self.max_body = max_body
        self.heartbeat = heartbeat
        self.send_queue = send_queue
        self.body_timeout = body_timeout
        self.send_timeout = send_timeout
        self.max_subscriptions = max_subscriptions
        self.body_budget = BODIES_HELD * max_body
        #: bytes of request bodies held now (reserved when a body is about to be read)
        self.bodies_held = 0
        self.closing = False
        self.sessions: dict[object, Callable[[], Awaitable[None]]] = {}

    async def close_sessions(self) -> None:
        self.closing = True
        closes = [close() for close in self.sessions.values()]
        for result in await asyncio.gather(*closes, return_exceptions=True):
            if isinstance(result, Exception):
                logger.warning("bridge: closing a session failed: %s", result)


# -- errors -------------------------------------------------------------------------------

#: broker error class -> (kind, HTTP status); the first match wins.
_ERRORS: tuple[tuple[type[BaseException], str, int], ...] = (
    (UnauthenticatedError, "unauthenticated", 401),
    (PermissionDeniedError, "permission_denied", 403),
    (UnavailableError, "unavailable", 503),
    (InvalidArgumentError, "invalid_argument", 400),
    (InvalidSubjectError, "invalid_subject", 400),
    (PayloadTooLargeError, "payload_too_large", 413),
    (StreamNotFoundError, "stream_not_found", 404),
    (StreamConflictError, "stream_conflict", 409),
    (AckNotFoundError, "ack_not_found", 404),
    (NoRespondersError, "no_responders", 503),
    (BusClosedError, "unavailable", 503),
    (BusUnavailableError, "unavailable", 503),
    (BusError, "unavailable", 503),
    (TimeoutError, "timeout", 504),
    (ValueError, "invalid_argument", 400),
)


def error_kind(exc: BaseException) -> tuple[str, int]:
    """The JSON ``error`` kind and HTTP status for an exception the broker raised."""
    if isinstance(exc, InvalidArgumentError) and error_field(exc) in ("subject", "reply_to"):
        return "invalid_subject", 400
    for cls, kind, status in _ERRORS:
        if isinstance(exc, cls):
            return kind, status
    return "internal", 500


def error_field(exc: BaseException) -> str:
    """The input an error names: a BusError's ``field``, or the ``name:`` a ValueError's
    message starts with (the broker's validators write them so)."""
    if isinstance(exc, BusError):
        return exc.field
    if isinstance(exc, InvalidArgumentError):
        return exc.violations[0].field if exc.violations else ""
    match = _FIELD_PREFIX.match(str(exc))
    return match.group(1) if match else ""


def error_body(kind: str, message: str, field: str = "") -> dict[str, str]:
    return {"error": kind, "message": message, "field": field}


def error_message(exc: BaseException) -> str:
    if isinstance(exc, BusError):
        return exc.message
    if isinstance(exc, InvalidArgumentError):
        return "; ".join(f"{v.field}: {v.description}" for v in exc.violations)
    return str(exc) or type(exc).__name__


def error_response(exc: BaseException) -> web.Response:
    kind, status = error_kind(exc)
    body = error_body(kind, error_message(exc), error_field(exc))
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return web.json_response(body, status=status, headers=headers)


# -- tokens (off loopback) ------------------------------------------------------------------


def presented_token(request: web.Request) -> str:
    """The token ``request`` presents: its ``Authorization: Bearer`` secret, or its
    ``access_token`` query parameter ("" for none). Raises InvalidArgumentError when
    it sends both (RFC 6750 §2: one method per request)."""
    header = request.headers.get("Authorization")
    query = request.query.get(ACCESS_TOKEN)
    if header is not None and query is not None:
        raise InvalidArgumentError(
            [FieldViolation(ACCESS_TOKEN, "send the token once: Authorization or access_token")]
        )
    return bearer(header) if header is not None else query or ""


async def authorize(
    request: web.Request, ctx: BridgeContext, needs: Sequence[Need]
) -> tuple[str, web.Response | None]:
    """The token ``request`` presents and, when the bridge checks tokens and this one
    lacks one of ``needs``, the error response to give instead (else None)."""
    if ctx.guard is None:
        return "", None
    try:
        secret = presented_token(request)
        await ctx.guard.tokens.check(secret, needs)
    except (
        UnauthenticatedError,
        PermissionDeniedError,
        UnavailableError,
        InvalidArgumentError,
    ) as exc:
        return "", error_response(exc)
    return secret, None


def publish_needs(subject: str) -> Sequence[Need]:
    """What publishing (or a request) on ``subject`` needs, as in the gRPC API."""
    return MESSAGING_NEEDS["Publish"](pb.PublishRequest(subject=subject))


def subscribe_needs(subject: str, stream: str = "") -> Sequence[Need]:
    """What a subscription needs, as in the gRPC API."""
    return MESSAGING_NEEDS["Subscribe"](pb.SubscribeRequest(subject=subject, stream=stream))


def _bad(
    message: str, field: str, kind: str = "invalid_argument", status: int = 400
) -> web.Response:
    return web.json_response(error_body(kind, message, field), status=status)


# -- encoding -----------------------------------------------------------------------------


def delivery_json(delivery: Delivery) -> dict[str, Any]:
    """A delivery as JSON, as `eco bus subscribe` prints it: ``data`` as text, or base64
    with ``"encoding": "base64"`` when it is not UTF-8."""
    out: dict[str, Any] = {"subject": delivery.subject}
    try:
        out["data"] = delivery.data.decode("utf-8")
    except UnicodeDecodeError:
        out["data"] = base64.b64encode(delivery.data).decode("ascii")
        out["encoding"] = "base64"
    out["headers"] = dict(delivery.headers)
    if delivery.id:
        out["id"] = delivery.id
    if delivery.reply_to:
        out["reply_to"] = delivery.reply_to
    if delivery.stream:
        out["stream"] = delivery.stream
    out["sequence"] = delivery.sequence
    out["redelivered"] = delivery.redelivered
    if delivery.delivery_count:
        out["delivery_count"] = delivery.delivery_count
    out["published_at_ms"] = int(delivery.published_at * 1000)
    return out


def parse_timeout(text: str) -> float:
    """``2s``, ``500ms``, ``1m`` or a number of seconds; 1 ms to 300 s. Raises ValueError."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"timeout: {text!r} is not a duration (e.g. 2s, 500ms)")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not 0.001 <= seconds <= MAX_REQUEST_TIMEOUT:
        raise ValueError(f"timeout: must be between 1ms and 300s (got {text})")
    return seconds


def _message_headers(request: web.Request) -> dict[str, str]:
    prefix = HEADER_PREFIX.lower()
    return {
        name[len(prefix) :]: value
        for name, value in request.headers.items()
        if name.lower().startswith(prefix) and len(name) > len(prefix)
    }


def _needs_preflight(content_type: str | None) -> bool:
    """Whether a browser must ask (preflight) before sending this Content-Type cross-site."""
    if content_type is None:
        return False
    essence = content_type.partition(";")[0].strip().lower()
    return _MEDIA_TYPE.fullmatch(essence) is not None and essence not in _SIMPLE_TYPES


@contextlib.asynccontextmanager
async def _body_of(request: web.Request, ctx: BridgeContext) -> AsyncIterator[bytes | web.Response]:
    """The request's body, or the error response to give instead. The body counts against
    the bridge's budget of bodies held (its declared length, else ``max_body``) until the
    block ends."""
    refused = _check_body(request, ctx)
    if refused is not None:
        yield refused
        return
    size = ctx.max_body if request.content_length is None else request.content_length
    if ctx.bodies_held + size > ctx.body_budget:
        held = ctx.bodies_held // 1024
        yield web.json_response(
            error_body("unavailable", f"the bridge holds {held} KiB of bodies, its limit"),
            status=503,
            headers={"Retry-After": "1"},
        )
        return
    ctx.bodies_held += size
    try:
        yield await _read_body(request, ctx)
    finally:
        ctx.bodies_held -= size


def _check_body(request: web.Request, ctx: BridgeContext) -> web.Response | None:
    content_types = request.headers.getall("Content-Type", [])
    if len(content_types) != 1 or not _needs_preflight(content_types[0]):
        got = content_types[0][:100] if content_types else "none"
        return _bad(
            f"Content-Type: send application/json or application/octet-stream (got {got!r}); "
            "a type a web page may send to any site is refused",
            "",
            "unsupported_media_type",
            415,
        )
    if request.content_length is not None and request.content_length > ctx.max_body:
        return _bad(
            f"data: {request.content_length} bytes is over the limit of {ctx.max_body}",
            "data",
            "payload_too_large",
            413,
        )
    return None


async def _read_body(request: web.Request, ctx: BridgeContext) -> bytes | web.Response:
    try:
        async with asyncio.timeout(ctx.body_timeout):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _bad(
            f"data: over the limit of {ctx.max_body} bytes", "data", "payload_too_large", 413
        )
    except TimeoutError:
        response = _bad(
            f"data: the body did not arrive within {ctx.body_timeout:g}s",
            "data",
            "request_timeout",
            408,
        )
        response.force_close()  # the rest of the body is not worth waiting for
        return response


# -- checked at the edge, as the gRPC API checks them ---------------------------------------

_DELIVER = {
    "": pb.DELIVER_POLICY_UNSPECIFIED,
    "all": pb.DELIVER_POLICY_ALL,
    "new": pb.DELIVER_POLICY_NEW,
    "last": pb.DELIVER_POLICY_LAST,
}


def publish_message(
    subject: str, data: bytes, headers: Mapping[str, str], msg_id: str = "", reply_to: str = ""
) -> OutgoingMessage:
    """The message to publish, checked against the limits of docs/bus.md (the same checks as
    the gRPC API's); raises InvalidArgumentError naming each bad field."""
    request = pb.PublishRequest(
        subject=subject, data=data, headers=dict(headers), id=msg_id, reply_to=reply_to
    )
    return publish_from_proto(request)


def subscription_spec(
    subject: str, *, queue: str = "", durable: str = "", stream: str = "", deliver: str = ""
) -> SubscriptionSpec:
    """A subscription checked as the gRPC API checks one (``deliver``: all, new or last);
    raises InvalidArgumentError naming each bad field."""
    if deliver not in _DELIVER:
        raise InvalidArgumentError(
            [FieldViolation("deliver", f"must be all, new or last (got {deliver!r})")]
        )
    request = pb.SubscribeRequest(
        subject=subject,
        queue_group=queue,
        durable=durable,
        stream=stream,
        deliver=_DELIVER[deliver],
    )
    return subscription_from_proto(request)


# -- routes -------------------------------------------------------------------------------


async def handle_publish(request: web.Request, ctx: BridgeContext) -> web.Response:
    """``POST /v1/publish/{subject}``: 202 with where the message went."""
    _, refused = await authorize(request, ctx, publish_needs(request.match_info["subject"]))
    if refused is not None:
        return refused
    async with _body_of(request, ctx) as body:
        if isinstance(body, web.Response):
            return body
        try:
            message = publish_message(
                request.match_info["subject"],
                body,
                _message_headers(request),
                request.headers.get(MSG_ID_HEADER, ""),
            )
            ack = await ctx.broker.publish(message)
        except (BusError, ValueError, InvalidArgumentError) as exc:
            return error_response(exc)
    return web.json_response(
        {"stream": ack.stream, "sequence": ack.sequence, "duplicate": ack.duplicate}, status=202
    )


async def handle_request(request: web.Request, ctx: BridgeContext) -> web.Response:
    """``POST /v1/request/{subject}?timeout=2s``: 200 with the first reply."""
    _, refused = await authorize(request, ctx, publish_needs(request.match_info["subject"]))
    if refused is not None:
        return refused
    try:
        timeout = parse_timeout(request.query.get("timeout", "") or str(DEFAULT_REQUEST_TIMEOUT))
    except ValueError as exc:
        return _bad(str(exc), "timeout")
    subject = request.match_info["subject"]
    async with _body_of(request, ctx) as body:
        if isinstance(body, web.Response):
            return body
        try:
            checked = publish_message(subject, body, _message_headers(request))
            reply = await ctx.broker.request(subject, body, checked.headers, timeout)
        except TimeoutError:
            return web.json_response(
                error_body("timeout", f"no reply on {subject} within {timeout:g}s"), status=504
            )
        except (BusError, ValueError, InvalidArgumentError) as exc:
            return error_response(exc)
    headers = {HEADER_PREFIX + name: value for name, value in reply.headers.items()}
    headers["Eco-Subject"] = reply.subject
    return web.Response(body=reply.data, headers=headers, content_type="application/octet-stream")


def _event(event_id: int, payload: Mapping[str, Any]) -> bytes:
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"event: message\nid: {event_id}\ndata: {data}\n\n".encode()


async def _pump(sub: Subscription, queue: asyncio.Queue[Delivery | None]) -> None:
    # A bounded hand-off: when the client reads slowly this waits, and the broker
    # drops core messages for the subscription (counted) or holds durable ones back.
    # None tells the writer that the subscription ended; when the writer cancels this
    # (its client is gone), nobody reads the queue any more: waiting to put would hang.
    try:
        async for delivery in sub:
            await queue.put(delivery)
    except Exception:
        await queue.put(None)
        raise
    await queue.put(None)


async def _give_back(
    broker: Broker, unwritten: Delivery | None, queue: asyncio.Queue[Delivery | None]
) -> None:
    # Durable deliveries taken but not written: NAK them so that they come again
    # now (to another subscriber, or this client when it reconnects) and not only
    # after their ack_wait.
    pending = [unwritten] if unwritten is not None else []
    while not queue.empty():
        item = queue.get_nowait()
        if item is not None:
            pending.append(item)
    for delivery in pending:
        if delivery.ack_id:
            with contextlib.suppress(BusError):
                await broker.ack(delivery.ack_id, AckKind.NAK)


async def handle_subscribe(request: web.Request, ctx: BridgeContext) -> web.StreamResponse:
    """``GET /v1/subscribe/{subject}``: the subscription's messages as Server-Sent Events.

    The response starts (with a ``: subscribed`` comment) once the subscription is in
    place; errors before that are JSON. Durable messages are acknowledged once written
    to the client's socket; a reconnecting client (``Last-Event-ID`` or not) resumes the
    durable consumer where it is. Off loopback its token is checked again every
    :data:`RECHECK` seconds: refused, the stream ends with an ``event: error``."""
    if ctx.closing:
        return web.json_response(error_body("unavailable", "the bridge is stopping"), status=503)
    query = request.query
    needs = subscribe_needs(request.match_info["subject"], query.get("stream", ""))
    secret, refused = await authorize(request, ctx, needs)
    if refused is not None:
        return refused
    try:
        spec = subscription_spec(
            request.match_info["subject"],
            queue=query.get("queue", ""),
            durable=query.get("durable", ""),
            stream=query.get("stream", ""),
            deliver=query.get("deliver", ""),
        )
        sub = await ctx.broker.subscribe(spec)
    except (BusError, ValueError, InvalidArgumentError) as exc:
        return error_response(exc)
    token = object()
    ctx.sessions[token] = sub.close
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    counter = 0
    unwritten: Delivery | None = None
    queue: asyncio.Queue[Delivery | None] = asyncio.Queue(maxsize=64)
    loop = asyncio.get_running_loop()
    guard = ctx.guard
    recheck_at = loop.time() + RECHECK
    heartbeat_at = loop.time() + ctx.heartbeat

    async def send(data: bytes) -> None:
        # A client that takes nothing for send_timeout holds its subscription's
        # messages back (durable ones) for nobody: end the stream.
        try:
            async with asyncio.timeout(ctx.send_timeout):
                await response.write(data)
        except TimeoutError:
            if request.transport is not None:
                request.transport.abort()  # close() would wait for the unsent data
            raise ConnectionError(f"the client took nothing for {ctx.send_timeout:g}s") from None

    try:
        await response.prepare(request)
        await send(b": subscribed\n\n")
        pump = asyncio.create_task(_pump(sub, queue), name="bridge-sse-pump")
        try:
            while True:
                if guard is not None and loop.time() >= recheck_at:
                    refusal = await _recheck(guard, secret, needs)
                    if refusal is not None:
                        await send(b"event: error\ndata: %s\n\n" % refusal)
                        break
                    recheck_at = loop.time() + RECHECK
                wake = heartbeat_at if guard is None else min(heartbeat_at, recheck_at)
                try:
                    delivery = await asyncio.wait_for(queue.get(), max(0.0, wake - loop.time()))
                except TimeoutError:
                    if loop.time() >= heartbeat_at:
                        await send(b": heartbeat\n\n")
                        heartbeat_at = loop.time() + ctx.heartbeat
                    continue
                if delivery is None:
                    break
                counter += 1
                event_id = delivery.sequence if delivery.sequence else counter
                unwritten = delivery
                await send(_event(event_id, delivery_json(delivery)))
                unwritten = None
                heartbeat_at = loop.time() + ctx.heartbeat
                if delivery.ack_id:
                    # AckNotFound: its ack_wait passed while writing; it comes again.
                    with contextlib.suppress(AckNotFoundError):
                        await ctx.broker.ack(delivery.ack_id, AckKind.ACK)
        finally:
            pump.cancel()
            await asyncio.wait([pump])
            if not pump.cancelled() and pump.exception() is not None:
                logger.info(
                    "bridge: SSE subscription to %s failed: %s", spec.subject, pump.exception()
                )
    except (ConnectionError, BusError) as exc:
        logger.info("bridge: SSE subscription to %s ended: %s", spec.subject, exc)
    finally:
        ctx.sessions.pop(token, None)
        await sub.close()
        await _give_back(ctx.broker, unwritten, queue)
    return response


async def _recheck(guard: Guard, secret: str, needs: Sequence[Need]) -> bytes | None:
    """None while ``secret`` still has ``needs``; else the error, as JSON. (The
    control plane unreachable is no refusal: the last answer stands.)"""
    try:
        await guard.tokens.check(secret, needs)
    except (UnauthenticatedError, PermissionDeniedError) as exc:
        kind, _ = error_kind(exc)
        return json.dumps(error_body(kind, error_message(exc))).encode()
    except UnavailableError:
        return None
    return None
