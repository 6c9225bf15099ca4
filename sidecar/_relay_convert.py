"""Conversions of the relay: broker values to and from the upstream protos, and
the one place where the control plane's answers (SDK errors) become broker errors."""

from __future__ import annotations

import re

from ecosystem.v1 import messaging_pb2 as pb

from controlplane.bus._protocol import (
    AckKind,
    AckNotFoundError,
    BusError,
    BusUnavailableError,
    ConsumerInfo,
    DeliverPolicy,
    InvalidSubjectError,
    NoRespondersError,
    PayloadTooLargeError,
    StreamConfig,
    StreamConflictError,
    StreamInfo,
    StreamNotFoundError,
    SubscriptionSpec,
)
from sdk import _errors as sdk_errors

__all__ = ["ACK_KINDS", "bus_error", "stream_info_from_proto", "subscribe_request"]

ACK_KINDS = {
    AckKind.ACK: pb.ACK_KIND_ACK,
    AckKind.NAK: pb.ACK_KIND_NAK,
    AckKind.TERM: pb.ACK_KIND_TERM,
    AckKind.IN_PROGRESS: pb.ACK_KIND_IN_PROGRESS,
}
_DELIVER = {
    DeliverPolicy.ALL: pb.DELIVER_POLICY_ALL,
    DeliverPolicy.NEW: pb.DELIVER_POLICY_NEW,
    DeliverPolicy.BY_SEQUENCE: pb.DELIVER_POLICY_BY_SEQUENCE,
    DeliverPolicy.BY_TIME: pb.DELIVER_POLICY_BY_TIME,
    DeliverPolicy.LAST: pb.DELIVER_POLICY_LAST,
}


_FIELD_PREFIX = re.compile(
    r"^(?:invalid request: )?(?:config\.|items\[\d+\]\.)?([a-z_]+)(?:\[\d+\])?: "
)
_KNOWN_FIELDS = frozenset(
    {
        "subject",
        "subjects",
        "name",
        "durable",
        "stream",
        "dead_letter_subject",
        "data",
        "ack_id",
        "reply_to",
    }
)
_BY_REASON: dict[str, type[BusError]] = {
    "PAYLOAD_TOO_LARGE": PayloadTooLargeError,
    "STREAM_NOT_FOUND": StreamNotFoundError,
    "STREAM_CONFLICT": StreamConflictError,
    "ACK_NOT_FOUND": AckNotFoundError,
    "NO_RESPONDERS": NoRespondersError,
}


def _field_of(err: sdk_errors.EcoError, default: str) -> str:
    """The input the control plane blamed: its BadRequest violation when it
    sent one, else the "field: …" its message starts with (only INVALID_ARGUMENT
    carries violations), else ``default``."""
    texts = [v.field + ": " for v in getattr(err, "field_violations", ())]
    for text in [*texts, err.message]:
        match = _FIELD_PREFIX.match(text)
        if match and match.group(1) in _KNOWN_FIELDS:
            return match.group(1)
    return default


def bus_error(err: sdk_errors.EcoError, field: str = "") -> Exception:
    """The broker error for what the control plane answered (the one place
    where SDK errors become broker errors; the servicer then maps those back
    to the same status codes)."""
    message = err.message
    field = _field_of(err, field)
    kind = _BY_REASON.get(err.reason)
    if kind is not None:
        return kind(message, field=field)
    if isinstance(err, sdk_errors.NoRespondersError):
        return NoRespondersError(message)
    if isinstance(err, sdk_errors.NotFoundError):
        return StreamNotFoundError(message, field=field)
    if isinstance(err, sdk_errors.AlreadyExistsError):
        return StreamConflictError(message, field=field)
    if isinstance(err, sdk_errors.InvalidArgumentError):
        return InvalidSubjectError(message, field=field)
    if isinstance(err, sdk_errors.DeadlineExceededError):
        return TimeoutError(message)
    return BusUnavailableError(f"control plane: {message}")


def stream_info_from_proto(msg: pb.StreamInfo) -> StreamInfo:
    c = msg.config
    config = StreamConfig(
        name=c.name,
        subjects=tuple(c.subjects),
        max_age=c.max_age_ms / 1000,
        max_msgs=c.max_msgs,
        max_bytes=c.max_bytes,
        duplicate_window=c.duplicate_window_ms / 1000,
        dead_letter_subject=c.dead_letter_subject,
    )
    consumers = tuple(
        ConsumerInfo(
            name=x.name,
            next_sequence=x.next_sequence,
            pending=x.pending,
            redelivered=x.redelivered,
            dead_lettered=x.dead_lettered,
            subscribers=x.subscribers,
        )
        for x in msg.consumers
    )
    return StreamInfo(
        config=config,
        messages=msg.messages,
        bytes=msg.bytes,
        first_sequence=msg.first_sequence,
        last_sequence=msg.last_sequence,
        consumers=consumers,
        created_at=msg.created_at_ms / 1000,
    )


def subscribe_request(spec: SubscriptionSpec) -> pb.SubscribeRequest:
    """The upstream request for ``spec`` (already validated by the local servicer)."""
    if not spec.durable:
        return pb.SubscribeRequest(subject=spec.subject, queue_group=spec.queue_group, batched=True)
    return pb.SubscribeRequest(
        batched=True,
        subject=spec.subject,
        queue_group=spec.queue_group,
        durable=spec.durable,
        stream=spec.stream,
        deliver=_DELIVER[spec.deliver],
        start_sequence=spec.start_sequence,
        start_time_ms=round(spec.start_time * 1000),
        ack_wait_ms=round(spec.ack_wait * 1000),
        max_deliver=spec.max_deliver,
        max_ack_pending=spec.max_ack_pending,
        backoff_ms=[max(1, round(b * 1000)) for b in spec.backoff],
    )
