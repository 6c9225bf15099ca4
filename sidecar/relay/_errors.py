"""The one place where the control plane's answers (SDK errors) become broker
errors in the relay. (The stream values are the SDK's and convert themselves.)"""

from __future__ import annotations

import re

import sdk
from bus import (
    AckNotFoundError,
    BusError,
    BusUnavailableError,
    InvalidSubjectError,
    NoRespondersError,
    PayloadTooLargeError,
    StreamConflictError,
    StreamNotFoundError,
)

__all__ = ["bus_error"]

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


def _field_of(err: sdk.EcoError, default: str) -> str:
    """The input the control plane blamed: its BadRequest violation when it
    sent one, else the "field: …" its message starts with (only INVALID_ARGUMENT
    carries violations), else ``default``."""
    texts = [v.field + ": " for v in getattr(err, "field_violations", ())]
    for text in [*texts, err.message]:
        match = _FIELD_PREFIX.match(text)
        if match and match.group(1) in _KNOWN_FIELDS:
            return match.group(1)
    return default


def bus_error(err: sdk.EcoError, field: str = "") -> Exception:
    """The broker error for what the control plane answered (the one place
    where SDK errors become broker errors; the servicer then maps those back
    to the same status codes)."""
    message = err.message
    field = _field_of(err, field)
    kind = _BY_REASON.get(err.reason)
    if kind is not None:
        return kind(message, field=field)
    if isinstance(err, sdk.NoRespondersError):
        return NoRespondersError(message)
    if isinstance(err, sdk.NotFoundError):
        return StreamNotFoundError(message, field=field)
    if isinstance(err, sdk.AlreadyExistsError):
        return StreamConflictError(message, field=field)
    if isinstance(err, sdk.InvalidArgumentError):
        return InvalidSubjectError(message, field=field)
    if isinstance(err, sdk.DeadlineExceededError):
        return TimeoutError(message)
    return BusUnavailableError(f"control plane: {message}")
