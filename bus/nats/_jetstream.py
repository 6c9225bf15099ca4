"""What the NATS backend says to JetStream, and how its answers become bus values.

JetStream's API is JSON over request/reply on ``$JS.API.…``; ``JetStreamApi``
sends one request and turns an error answer into the bus's error tree (by
JetStream's ``err_code``). The converters map a ``StreamConfig`` to a
JetStream stream config and back: what JetStream has no field for (the
dead-letter subject, a duplicate window longer than ``max_age``) travels in
the stream's description, so a stream reads back exactly as it was added.

Also here: the internal headers (``Nats-Msg-Id`` carries the message id;
``Eco-Reply-To`` carries ``reply_to`` through a stream, which keeps no reply
subject), the ack-id format (the JetStream ack subject itself) and the
subject rules the NATS backend adds to the bus's.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import nats.errors
from nats.aio.client import Client

from bus._errors import (
    BusError,
    BusUnavailableError,
    InvalidSubjectError,
    StreamConflictError,
    StreamNotFoundError,
)
from bus._protocol import SubscriptionSpec
from sdk import ConsumerInfo, DeliverPolicy, StreamConfig, StreamInfo

__all__ = [
    "ACK_PREFIX",
    "INBOX_PREFIX",
    "MSG_ID",
    "PUBACK_PREFIX",
    "REPLY_TO",
    "AckRef",
    "ConsumerNotFoundError",
    "JetStreamApi",
    "StreamMeta",
    "consumer_config",
    "consumer_info",
    "consumer_subject",
    "header_bytes",
    "inner_headers",
    "nats_headers",
    "ns",
    "parse_ack_id",
    "parse_time",
    "same_config",
    "start_floor",
    "stream_config_to_js",
    "stream_info",
    "stream_meta",
    "unreserved",
]

#: Message id header: JetStream de-duplicates on it.
MSG_ID = "Nats-Msg-Id"
#: ``reply_to`` of a message published through a stream (its NATS reply is the PubAck inbox).
REPLY_TO = "Eco-Reply-To"
#: Inboxes of this backend: requests' replies and pull deliveries.
INBOX_PREFIX = "$ECO.INBOX"
#: Where JetStream's PubAcks come back; a core subscriber seeing a message with such
#: a reply subject takes ``reply_to`` from the ``Eco-Reply-To`` header instead.
PUBACK_PREFIX = "$ECO.PUBACK."
ACK_PREFIX = "$JS.ACK."
#: Prefix of the JSON a stream's or consumer's description keeps for this backend.
_DESCRIPTION_PREFIX = "eco-bus "
_INTERNAL_HEADERS = frozenset({MSG_ID, REPLY_TO})
# First tokens NATS (and this backend) keep for themselves: JetStream's API and
# acks, the system account, KV and object stores, raft, MQTT.
_RESERVED = frozenset({"$JS", "$SYS", "$KV", "$O", "$NRG", "$MQTT", "$ECO", "$G"})

# JetStream err_code values this backend maps.
_STREAM_NOT_FOUND = 10059
_CONSUMER_NOT_FOUND = 10014
_STREAM_NAME_IN_USE = 10058
_SUBJECTS_OVERLAP = 10065
_JS_NOT_ENABLED = (10039, 10076)


def unreserved(subject: str, *, pattern: bool, field: str = "subject") -> None:
    """Raises InvalidSubjectError for a (valid) subject under NATS's reserved prefixes
    (``$JS``, ``$SYS``, ``$KV``…): through them a client could drive JetStream's
    API. Replies to this backend's inboxes (``$ECO.INBOX.…``) are the one
    exception, for publishing."""
    first = subject.split(".", 1)[0]
    if first in _RESERVED and not (not pattern and subject.startswith(INBOX_PREFIX + ".")):
        raise InvalidSubjectError(
            f"{field}: {subject!r} is under {first!r}, which NATS reserves", field=field
        )


def ns(seconds: float) -> int:
    """Seconds as JetStream's nanoseconds."""
    return round(seconds * 1_000_000_000)


_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_time(text: str) -> float:
    """An RFC 3339 time from JetStream (nanoseconds, ``Z``) as Unix seconds; 0 for none."""
    if not text or text.startswith("0001-"):
        return 0.0
    try:
        return datetime.fromisoformat(_FRACTION.sub(r"\1", text)).timestamp()
    except ValueError:
        return 0.0


def format_time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def nats_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` (already checked by the bus) as NATS takes them; raises ValueError
    (naming ``headers``) for a name NATS refuses: it allows only HTTP token
    characters, where the bus allows any printable ASCII but ':'."""
    for name in headers:
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(
                f"headers: {name!r} is not a header name NATS takes (letters, digits and "
                "!#$%&'*+-.^_`|~)"
            )
    return dict(headers)


def header_bytes(headers: Mapping[str, str]) -> int:
    """Size of the NATS header block that carries ``headers`` (0 for none)."""
    if not headers:
        return 0
    return 12 + sum(len(k) + len(v.encode()) + 4 for k, v in headers.items())


def inner_headers(headers: Mapping[str, str] | None) -> tuple[dict[str, str], str, str]:
    """The user's headers of a NATS message, its message id, and the ``reply_to`` it
    carries in a header (it went through a stream)."""
    if not headers:
        return {}, "", ""
    user = {k: v for k, v in headers.items() if k not in _INTERNAL_HEADERS}
    return user, headers.get(MSG_ID, ""), headers.get(REPLY_TO, "")


# -- ack ids --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AckRef:
    """What an ack id (a JetStream ack subject) says about its delivery."""

    subject: str
    stream: str
    consumer: str
    delivery_count: int
    stream_sequence: int
    timestamp: float

    @property
    def message(self) -> tuple[str, str, int]:
        return self.stream, self.consumer, self.stream_sequence


def parse_ack_id(ack_id: str) -> AckRef | None:
    """The delivery an ack id names, or None when it is not one.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>``, or
    with a domain and account hash after ``ACK`` (12 tokens, newer servers).
    """
    if not ack_id.startswith(ACK_PREFIX):
        return None
    tokens = ack_id.split(".")
    if len(tokens) == 9:
        base = 2
    elif len(tokens) >= 11:
        base = 4
    else:
        return None
    try:
        dc, sseq, _cseq, stamp = (int(t) for t in tokens[base + 2 : base + 6])
    except ValueError:
        return None
    return AckRef(ack_id, tokens[base], tokens[base + 1], dc, sseq, stamp / 1e9)


# -- the API --------------------------------------------------------------------------------


class JetStreamApi:
    """JSON requests to ``$JS.API.…`` with JetStream's errors mapped to the bus's."""

    def __init__(self, nc: Client, timeout: float) -> None:
        self._nc = nc
        self._timeout = timeout

    async def call(self, subject: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        payload = json.dumps(body).encode() if body is not None else b""
        try:
            msg = await self._nc.request(f"$JS.API.{subject}", payload, timeout=self._timeout)
        except nats.errors.NoRespondersError as e:
            raise BusUnavailableError("JetStream is not enabled on the NATS server") from e
        except nats.errors.TimeoutError as e:
            raise BusUnavailableError(f"NATS: no answer from JetStream ({subject})") from e
        except nats.errors.Error as e:
            raise BusUnavailableError(f"NATS: {e}") from e
        try:
            answer: dict[str, Any] = json.loads(msg.data)
        except ValueError as e:
            raise BusError(f"JetStream answered {subject} with something that is not JSON") from e
        error = answer.get("error")
        if error:
            raise _api_error(error)
        return answer

    async def stream_infos(self) -> list[dict[str, Any]]:
        """Every stream's info (config and state), across pages."""
        infos: list[dict[str, Any]] = []
        while True:
            page = await self.call("STREAM.LIST", {"offset": len(infos)})
            batch = page.get("streams") or []
            infos.extend(batch)
            if not batch or len(infos) >= int(page.get("total", 0)):
                return infos

    async def consumers(self, stream: str) -> list[dict[str, Any]]:
        infos: list[dict[str, Any]] = []
        while True:
            page = await self.call(f"CONSUMER.LIST.{stream}", {"offset": len(infos)})
            batch = page.get("consumers") or []
            infos.extend(batch)
            if not batch or len(infos) >= int(page.get("total", 0)):
                return infos

    async def stored_message(self, stream: str, sequence: int) -> dict[str, Any]:
        """``subject``, ``data`` (bytes), ``headers`` and ``time`` of a stored message."""
        answer = await self.call(f"STREAM.MSG.GET.{stream}", {"seq": sequence})
        raw = answer["message"]
        return {
            "subject": raw.get("subject", ""),
            "data": base64.b64decode(raw.get("data") or ""),
            "headers": _parse_header_block(base64.b64decode(raw.get("hdrs") or "")),
            "time": parse_time(raw.get("time", "")),
        }


def _api_error(error: Mapping[str, Any]) -> BusError:
    code = int(error.get("err_code", 0))
    text = str(error.get("description", "JetStream error"))
    if code == _STREAM_NOT_FOUND:
        return StreamNotFoundError(f"JetStream: {text}", field="stream")
    if code in (_STREAM_NAME_IN_USE, _SUBJECTS_OVERLAP):
        return StreamConflictError(f"JetStream: {text}", field="config")
    if code in _JS_NOT_ENABLED:
        return BusUnavailableError(f"JetStream: {text}")
    error_type = ConsumerNotFoundError if code == _CONSUMER_NOT_FOUND else BusError
    return error_type(f"JetStream: {text} (err_code {code})")


class ConsumerNotFoundError(BusError):
    """No durable consumer by that name (internal: the backend then creates it)."""


def _parse_header_block(raw: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    if not raw:
        return headers
    for line in raw.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip():
            headers[name.strip().decode("ascii", "replace")] = value.strip().decode(
                "utf-8", "replace"
            )
    return headers


# -- streams --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamMeta:
    """A stream as this backend knows it from its JetStream config."""

    name: str
    subjects: tuple[str, ...]
    #: what the stream's description keeps; None for a stream not added through the bus
    dead_letter_subject: str | None
    config: StreamConfig

    @property
    def managed(self) -> bool:
        return self.dead_letter_subject is not None


def stream_config_to_js(config: StreamConfig, *, replicas: int) -> dict[str, Any]:
    extra = {
        "dead_letter_subject": config.dead_letter_subject,
        "duplicate_window": config.duplicate_window,
    }
    window = config.duplicate_window
    if config.max_age > 0 and (window <= 0 or window > config.max_age):
        # JetStream refuses a window longer than max_age: nothing older is kept anyway.
        window = config.max_age
    js: dict[str, Any] = {
        "name": config.name,
        "subjects": list(config.subjects),
        "retention": "limits",
        "storage": "file",
        "discard": "old",
        "max_age": ns(config.max_age),
        "max_msgs": config.max_msgs or -1,
        "max_bytes": config.max_bytes or -1,
        "num_replicas": replicas,
        "description": _DESCRIPTION_PREFIX + json.dumps(extra, sort_keys=True),
    }
    if window > 0:
        js["duplicate_window"] = ns(window)
    return js


def stream_meta(js: Mapping[str, Any]) -> StreamMeta:
    """The bus's view of a JetStream stream config."""
    description = str(js.get("description") or "")
    extra: dict[str, Any] | None = None
    if description.startswith(_DESCRIPTION_PREFIX):
        try:
            extra = json.loads(description[len(_DESCRIPTION_PREFIX) :])
        except ValueError:
            extra = None
    name = str(js["name"])
    subjects = tuple(js.get("subjects") or ())
    window = int(js.get("duplicate_window") or 0) / 1e9
    dlq: str | None = None
    if extra is not None:
        dlq = str(extra.get("dead_letter_subject", ""))
        window = float(extra.get("duplicate_window", 120.0))
    config = StreamConfig(
        name=name,
        subjects=subjects,
        max_age=int(js.get("max_age") or 0) / 1e9,
        max_msgs=max(0, int(js.get("max_msgs") or 0)),
        max_bytes=max(0, int(js.get("max_bytes") or 0)),
        duplicate_window=window,
        dead_letter_subject=dlq or "",
    )
    return StreamMeta(name, subjects, dlq, config)


def same_config(a: StreamConfig, b: StreamConfig) -> bool:
    """Equal but for the order (and repetition) of subjects; times to the nanosecond."""

    def key(c: StreamConfig) -> tuple[Any, ...]:
        return (
            c.name,
            sorted(set(c.subjects)),
            ns(c.max_age),
            c.max_msgs,
            c.max_bytes,
            ns(c.duplicate_window),
            c.dlq_subject,
        )

    return key(a) == key(b)


def stream_info(js: Mapping[str, Any], consumers: tuple[ConsumerInfo, ...] = ()) -> StreamInfo:
    state = js.get("state") or {}
    messages = int(state.get("messages", 0))
    last = int(state.get("last_seq", 0))
    return StreamInfo(
        config=stream_meta(js["config"]).config,
        messages=messages,
        bytes=int(state.get("bytes", 0)),
        # An empty stream's next message will be last + 1 (JetStream says 0 when new).
        first_sequence=int(state.get("first_seq", 0)) if messages else last + 1,
        last_sequence=last,
        consumers=consumers,
        created_at=parse_time(str(js.get("created", ""))),
    )


# -- consumers ------------------------------------------------------------------------------

_POLICIES = {
    DeliverPolicy.ALL: "all",
    DeliverPolicy.NEW: "new",
    DeliverPolicy.BY_SEQUENCE: "by_start_sequence",
    DeliverPolicy.BY_TIME: "by_start_time",
    DeliverPolicy.LAST: "last",
}


def consumer_config(
    spec: SubscriptionSpec, filter_subject: str, existing: Mapping[str, Any] | None
) -> dict[str, Any]:
    """A durable pull consumer for ``spec``; an existing one keeps where it starts.

    Its description keeps the subscription's pattern (see `consumer_subject`).
    JetStream wants ``max_deliver`` > len(backoff), so only the first
    ``max_deliver - 1`` steps are kept: the wait after the last delivery
    (before dead-lettering) is then the last kept step, not the next one.
    """
    max_deliver = spec.max_deliver if spec.max_deliver > 0 else -1
    config: dict[str, Any] = {
        "durable_name": spec.durable,
        "description": _DESCRIPTION_PREFIX + json.dumps({"subject": spec.subject}),
        "ack_policy": "explicit",
        "ack_wait": ns(spec.ack_wait),
        "max_deliver": max_deliver,
        "max_ack_pending": spec.max_ack_pending if spec.max_ack_pending > 0 else -1,
        "replay_policy": "instant",
    }
    if filter_subject:
        config["filter_subject"] = filter_subject
    steps = list(spec.backoff)
    if max_deliver > 0:
        steps = steps[: max_deliver - 1]
    if steps:
        config["backoff"] = [ns(step) for step in steps]
    if existing is not None:
        for key in ("deliver_policy", "opt_start_seq", "opt_start_time"):
            if key in existing:
                config[key] = existing[key]
        return config
    config["deliver_policy"] = _POLICIES[spec.deliver]
    if spec.deliver is DeliverPolicy.BY_SEQUENCE:
        config["opt_start_seq"] = max(1, spec.start_sequence)
    elif spec.deliver is DeliverPolicy.BY_TIME:
        config["opt_start_time"] = format_time(spec.start_time)
    return config


def consumer_subject(config: Mapping[str, Any]) -> str | None:
    """The pattern a consumer was created for through the bus (None: not by the bus)."""
    description = str(config.get("description") or "")
    if not description.startswith(_DESCRIPTION_PREFIX):
        return None
    try:
        return str(json.loads(description[len(_DESCRIPTION_PREFIX) :])["subject"])
    except (ValueError, KeyError, TypeError):
        return None


def start_floor(config: Mapping[str, Any]) -> int:
    """The first sequence a consumer may deliver.

    nats-server 2.9 starts a ``by_start_sequence`` consumer created past the
    stream's end at the end instead (at 1 on an empty stream): the
    subscription skips (and acknowledges) what lies below this floor.
    """
    if config.get("deliver_policy") == "by_start_sequence":
        return int(config.get("opt_start_seq") or 0)
    return 0


def consumer_info(
    js: Mapping[str, Any], *, dead_lettered: int = 0, subscribers: int = 0
) -> ConsumerInfo:
    config = js.get("config") or {}
    delivered = js.get("delivered") or {}
    return ConsumerInfo(
        name=str(js.get("name") or config.get("durable_name", "")),
        next_sequence=max(int(delivered.get("stream_seq", 0)) + 1, start_floor(config)),
        pending=int(js.get("num_ack_pending", 0)),
        redelivered=int(js.get("num_redelivered", 0)),
        dead_lettered=dead_lettered,
        subscribers=subscribers,
    )
