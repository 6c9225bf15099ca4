"""Bus requests checked at the edge and turned into the broker's values, and back.

Each ``*_from_proto`` collects every problem of a request as a
``FieldViolation`` naming the field by its path in the request (``subject``,
``headers["x"]``, ``config.subjects[1]``, ``items[0].delay_ms``) and raises
one ``InvalidArgumentError``; what passes is a value that a broker takes as
is (the bus's own, or the SDK's stream values). The ``*_to_proto`` functions
go the other way; the SDK's values convert themselves (``StreamInfo.to_proto``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ecosystem.v1 import messaging_pb2 as pb
from google.rpc import error_details_pb2

from bus._errors import InvalidSubjectError
from bus._protocol import Delivery, OutgoingMessage, PublishAck, SubscriptionSpec
from bus.subjects import (
    subject_matches,
    validate_name,
    validate_pattern,
    validate_subject,
)
from sdk import AckKind, DeliverPolicy, StreamConfig
from serving.errors import FieldViolation, InvalidArgumentError, to_status

__all__ = [
    "LIMITS",
    "ack_items_from_proto",
    "delivery_to_proto",
    "publish_ack_to_proto",
    "publish_error",
    "publish_from_proto",
    "request_from_proto",
    "stream_config_from_proto",
    "stream_name_from_proto",
    "subject_matches",
    "subject_problem",
    "subscription_from_proto",
]


class LIMITS:
    """Bounds checked at the edge (documented in docs/bus.md)."""

    id_length = 256
    headers = 64
    header_key_length = 256
    header_bytes = 64 * 1024
    stream_subjects = 64
    ack_items = 1000
    # Milliseconds.
    request_timeout_ms = 300_000
    default_request_timeout_ms = 5_000
    ack_wait_ms = 24 * 3600 * 1000
    backoff_ms = 24 * 3600 * 1000
    backoff_steps = 32
    delay_ms = 24 * 3600 * 1000
    duplicate_window_ms = 7 * 24 * 3600 * 1000
    max_deliver = 10_000
    max_ack_pending = 100_000


# The last millisecond of year 9999: later times have no calendar date.
_LAST_MS = 253_402_300_799_999
_HEADER_KEY = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")

# Request enums to the SDK's values, by the SDK's own mapping.
_KINDS = {kind.to_proto(): kind for kind in AckKind}
_POLICIES = {policy.to_proto(): policy for policy in DeliverPolicy}


class _Violations:
    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgumentError(self.items)


def subject_problem(value: str, *, pattern: bool) -> str | None:
    """Why ``value`` is not a subject (with ``pattern``: not a subscription
    pattern), or None. The rules are ``_subjects``' (use it directly)."""
    try:
        (validate_pattern if pattern else validate_subject)(value, field="subject")
    except InvalidSubjectError as err:
        return _description(err, "subject")
    return None


def _check_subject(v: _Violations, field: str, value: str, *, pattern: bool) -> None:
    try:
        (validate_pattern if pattern else validate_subject)(value, field=field)
    except InvalidSubjectError as err:
        v.add(field, _description(err, field))


def _check_name(v: _Violations, field: str, value: str, *, required: bool) -> None:
    if not value and not required:
        return
    try:
        validate_name(value, field=field)
    except InvalidSubjectError as err:
        v.add(field, _description(err, field))


def _description(err: InvalidSubjectError, field: str) -> str:
    # The shared validators say "<field>: …"; a violation names the field already.
    return err.message.removeprefix(f"{field}: ")


def _check_headers(v: _Violations, field: str, headers: Mapping[str, str]) -> None:
    if len(headers) > LIMITS.headers:
        v.add(field, f"at most {LIMITS.headers} headers are allowed, got {len(headers)}")
        return
    total = 0
    for key, value in headers.items():
        total += len(key) + len(value.encode())
        if len(key) > LIMITS.header_key_length or not _HEADER_KEY.match(key):
            v.add(
                f'{field}["{key}"]',
                "a header name is 1-256 letters, digits or !#$%&'*+.^_`|~- (no ':' or spaces)",
            )
        elif "\r" in value or "\n" in value:
            v.add(f'{field}["{key}"]', "a header value must not contain line breaks")
    if total > LIMITS.header_bytes:
        v.add(field, f"headers take {total} bytes; at most {LIMITS.header_bytes} are allowed")


def _check_id(v: _Violations, field: str, value: str) -> None:
    if len(value) > LIMITS.id_length:
        v.add(field, f"longer than {LIMITS.id_length} characters")
    elif value and not value.isprintable():
        v.add(field, "must not contain control characters")


def _check_range(v: _Violations, field: str, value: int, low: int, high: int, note: str) -> None:
    if not low <= value <= high:
        v.add(field, f"must be between {low} and {high}{note}, got {value}")


# -- requests -------------------------------------------------------------------------------


def publish_from_proto(request: pb.PublishRequest) -> OutgoingMessage:
    v = _Violations()
    _check_subject(v, "subject", request.subject, pattern=False)
    if request.reply_to:
        _check_subject(v, "reply_to", request.reply_to, pattern=False)
    _check_headers(v, "headers", request.headers)
    _check_id(v, "id", request.id)
    v.raise_if_any()
    return OutgoingMessage(
        subject=request.subject,
        data=request.data,
        headers=dict(request.headers),
        id=request.id,
        reply_to=request.reply_to,
    )


def request_from_proto(
    request: pb.RequestRequest,
) -> tuple[str, bytes, dict[str, str], float]:
    """Subject, data, headers and timeout (seconds) of a request."""
    v = _Violations()
    _check_subject(v, "subject", request.subject, pattern=False)
    _check_headers(v, "headers", request.headers)
    _check_range(v, "timeout_ms", request.timeout_ms, 0, LIMITS.request_timeout_ms, " (0: 5000)")
    v.raise_if_any()
    timeout_ms = request.timeout_ms or LIMITS.default_request_timeout_ms
    return request.subject, request.data, dict(request.headers), timeout_ms / 1000


def subscription_from_proto(request: pb.SubscribeRequest) -> SubscriptionSpec:
    v = _Violations()
    _check_subject(v, "subject", request.subject, pattern=True)
    _check_name(v, "queue_group", request.queue_group, required=False)
    _check_name(v, "durable", request.durable, required=False)
    _check_name(v, "stream", request.stream, required=False)
    policy = _deliver_policy(v, request)
    _check_range(v, "ack_wait_ms", request.ack_wait_ms, 0, LIMITS.ack_wait_ms, " (0: 30000)")
    _check_range(v, "max_deliver", request.max_deliver, 0, LIMITS.max_deliver, " (0: 5)")
    _check_range(
        v, "max_ack_pending", request.max_ack_pending, 0, LIMITS.max_ack_pending, " (0: 1000)"
    )
    if len(request.backoff_ms) > LIMITS.backoff_steps:
        v.add("backoff_ms", f"at most {LIMITS.backoff_steps} steps are allowed")
    for i, step in enumerate(request.backoff_ms):
        _check_range(v, f"backoff_ms[{i}]", step, 1, LIMITS.backoff_ms, "")
    if not request.durable:
        # Consumer settings on a core subscription would be silently ignored.
        for name, given in (
            ("stream", bool(request.stream)),
            ("deliver", request.deliver != pb.DELIVER_POLICY_UNSPECIFIED),
            ("start_sequence", request.start_sequence != 0),
            ("start_time_ms", request.start_time_ms != 0),
            ("ack_wait_ms", request.ack_wait_ms != 0),
            ("max_deliver", request.max_deliver != 0),
            ("max_ack_pending", request.max_ack_pending != 0),
            ("backoff_ms", bool(request.backoff_ms)),
        ):
            if given:
                v.add(name, "applies to durable consumers only: set durable too")
    v.raise_if_any()
    return SubscriptionSpec(
        subject=request.subject,
        queue_group=request.queue_group,
        durable=request.durable,
        stream=request.stream,
        deliver=policy,
        start_sequence=request.start_sequence,
        start_time=request.start_time_ms / 1000,
        ack_wait=(request.ack_wait_ms or 30_000) / 1000,
        max_deliver=request.max_deliver or 5,
        max_ack_pending=request.max_ack_pending or 1000,
        backoff=tuple(step / 1000 for step in request.backoff_ms),
    )


def _deliver_policy(v: _Violations, request: pb.SubscribeRequest) -> DeliverPolicy:
    """The policy asked for; start_sequence or start_time_ms alone imply theirs."""
    if not 0 <= request.start_time_ms <= _LAST_MS:
        v.add("start_time_ms", f"must be Unix milliseconds between 0 and {_LAST_MS}")
    deliver = request.deliver
    if deliver == pb.DELIVER_POLICY_UNSPECIFIED:
        if request.start_sequence and request.start_time_ms:
            v.add("start_time_ms", "give start_sequence or start_time_ms, not both")
            return DeliverPolicy.ALL
        if request.start_sequence:
            return DeliverPolicy.BY_SEQUENCE
        if request.start_time_ms:
            return DeliverPolicy.BY_TIME
        return DeliverPolicy.ALL
    policy = _POLICIES.get(deliver)
    if policy is None:
        v.add("deliver", f"unknown deliver policy {deliver}")
        return DeliverPolicy.ALL
    if policy is DeliverPolicy.BY_SEQUENCE:
        if request.start_sequence < 1:
            v.add("start_sequence", "is required (1 or more) with deliver BY_SEQUENCE")
    elif request.start_sequence:
        v.add("start_sequence", "applies to deliver BY_SEQUENCE only")
    if policy is DeliverPolicy.BY_TIME:
        if request.start_time_ms <= 0:
            v.add("start_time_ms", "is required (Unix milliseconds) with deliver BY_TIME")
    elif request.start_time_ms:
        v.add("start_time_ms", "applies to deliver BY_TIME only")
    return policy


def ack_items_from_proto(request: pb.AckRequest) -> list[tuple[str, AckKind, float]]:
    """(ack id, kind, delay in seconds) of each item, in request order."""
    v = _Violations()
    if not request.items:
        v.add("items", "name at least one delivery to acknowledge")
    elif len(request.items) > LIMITS.ack_items:
        v.add("items", f"at most {LIMITS.ack_items} items per call, got {len(request.items)}")
    items: list[tuple[str, AckKind, float]] = []
    for i, item in enumerate(request.items):
        field = f"items[{i}]"
        if not item.ack_id:
            v.add(f"{field}.ack_id", "is required")
        elif len(item.ack_id) > LIMITS.id_length:
            v.add(f"{field}.ack_id", f"longer than {LIMITS.id_length} characters")
        kind = _KINDS.get(item.kind)
        if kind is None:
            v.add(f"{field}.kind", "is required: ACK, NAK, TERM or IN_PROGRESS")
        elif item.delay_ms and kind is not AckKind.NAK:
            v.add(f"{field}.delay_ms", "applies to NAK only")
        _check_range(v, f"{field}.delay_ms", item.delay_ms, 0, LIMITS.delay_ms, "")
        items.append((item.ack_id, kind or AckKind.ACK, item.delay_ms / 1000))
    v.raise_if_any()
    return items


def stream_config_from_proto(config: pb.StreamConfig, *, prefix: str = "config.") -> StreamConfig:
    v = _Violations()
    _check_name(v, f"{prefix}name", config.name, required=True)
    subjects = list(config.subjects)
    if not subjects:
        v.add(f"{prefix}subjects", "name at least one subject or pattern to capture")
    elif len(subjects) > LIMITS.stream_subjects:
        v.add(f"{prefix}subjects", f"at most {LIMITS.stream_subjects} subjects are allowed")
    seen: set[str] = set()
    for i, subject in enumerate(subjects):
        field = f"{prefix}subjects[{i}]"
        before = len(v.items)
        _check_subject(v, field, subject, pattern=True)
        if len(v.items) == before and subject in seen:
            v.add(field, f"{subject!r} is listed twice")
        seen.add(subject)
    for name, value in (
        ("max_age_ms", config.max_age_ms),
        ("max_msgs", config.max_msgs),
        ("max_bytes", config.max_bytes),
    ):
        if value < 0:
            v.add(f"{prefix}{name}", f"must not be negative (0: no limit), got {value}")
    _check_range(
        v,
        f"{prefix}duplicate_window_ms",
        config.duplicate_window_ms,
        0,
        LIMITS.duplicate_window_ms,
        " (0: 120000)",
    )
    if config.max_age_ms and config.duplicate_window_ms > config.max_age_ms:
        v.add(f"{prefix}duplicate_window_ms", "must not be longer than max_age_ms")
    dlq = config.dead_letter_subject
    if dlq:
        _check_subject(v, f"{prefix}dead_letter_subject", dlq, pattern=False)
    if not v.items:
        effective = dlq or f"eco.dlq.{config.name}"
        if any(subject_matches(p, effective) for p in subjects):
            v.add(
                f"{prefix}dead_letter_subject",
                f"dead letters go to {effective!r}, which the stream itself captures: "
                "they would loop; name another dead_letter_subject",
            )
    v.raise_if_any()
    return StreamConfig(
        name=config.name,
        subjects=tuple(subjects),
        max_age=config.max_age_ms / 1000,
        max_msgs=config.max_msgs,
        max_bytes=config.max_bytes,
        duplicate_window=(config.duplicate_window_ms or 120_000) / 1000,
        dead_letter_subject=dlq,
    )


def stream_name_from_proto(name: str, *, field: str = "name") -> str:
    v = _Violations()
    _check_name(v, field, name, required=True)
    v.raise_if_any()
    return name


# -- responses ------------------------------------------------------------------------------


def delivery_to_proto(delivery: Delivery) -> pb.Message:
    message = pb.Message(
        subject=delivery.subject,
        data=delivery.data,
        id=delivery.id,
        reply_to=delivery.reply_to,
        stream=delivery.stream,
        sequence=delivery.sequence,
        published_at_ms=round(delivery.published_at * 1000),
        delivery_count=delivery.delivery_count,
        ack_id=delivery.ack_id,
    )
    if delivery.headers:  # a map field fills item by item: skip it when empty
        message.headers.update(delivery.headers)
    return message


def publish_ack_to_proto(ack: PublishAck) -> pb.PublishResponse:
    return pb.PublishResponse(stream=ack.stream, sequence=ack.sequence, duplicate=ack.duplicate)


def publish_error(exc: BaseException) -> pb.PublishError:
    """What Publish would have failed with, for one message of a batch: the
    same code, message, ErrorInfo reason and field violations."""
    status = to_status(exc)
    error = pb.PublishError(code=status.code, message=status.message)
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            error.reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            error.violations.extend(
                pb.FieldViolation(field=v.field, description=v.description)
                for v in bad.field_violations
            )
    return error
