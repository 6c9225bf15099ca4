"""Domain errors of the control plane and the one table that maps them to gRPC.

::

    ControlPlaneError
    ├── InvalidArgumentError      INVALID_ARGUMENT + google.rpc.BadRequest
    ├── NotFoundError             NOT_FOUND
    ├── AlreadyExistsError        ALREADY_EXISTS  (expected "absent", found one)
    ├── RevisionConflictError     ABORTED         (expected revision N, found M)
    ├── FailedPreconditionError   FAILED_PRECONDITION
    ├── UnauthenticatedError      UNAUTHENTICATED (a sidecar's token is wrong)
    ├── UnavailableError          UNAVAILABLE     (draining, store gone)
    ├── DeadlineExceededError     DEADLINE_EXCEEDED (a bus request got no reply in time)
    └── ResourceExhaustedError    RESOURCE_EXHAUSTED (e.g. too many bus subscriptions)

Servicers raise these (or let store and bus errors through, which ``to_status``
translates too: see ``controlplane.bus`` for the bus rows; each bus error also
carries a ``google.rpc.ErrorInfo`` whose reason names it, e.g. NO_RESPONDERS);
nothing else in the control plane knows about status codes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from controlplane.bus._protocol import (
    AckNotFoundError,
    BusClosedError,
    BusError,
    BusUnavailableError,
    InvalidSubjectError,
    NoRespondersError,
    PayloadTooLargeError,
    StreamConflictError,
    StreamNotFoundError,
)
from controlplane.store import Compacted, LeaseNotFound, StoreClosed, StoreUnavailable

__all__ = [
    "BUS_ERROR_DOMAIN",
    "AlreadyExistsError",
    "ControlPlaneError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FieldViolation",
    "InvalidArgumentError",
    "NotFoundError",
    "ResourceExhaustedError",
    "RevisionConflictError",
    "UnauthenticatedError",
    "UnavailableError",
    "bad_request",
    "cut",
    "end_call",
    "excerpt",
    "to_status",
]


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


class ControlPlaneError(Exception):
    """Root of the control plane's expected failures."""


class InvalidArgumentError(ControlPlaneError):
    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        self.violations = tuple(violations)
        detail = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(f"invalid request: {detail}")


class NotFoundError(ControlPlaneError):
    pass


class AlreadyExistsError(ControlPlaneError):
    pass


class RevisionConflictError(ControlPlaneError):
    pass


class FailedPreconditionError(ControlPlaneError):
    pass


class UnauthenticatedError(ControlPlaneError):
    pass


class UnavailableError(ControlPlaneError):
    pass


class DeadlineExceededError(ControlPlaneError):
    pass


class ResourceExhaustedError(ControlPlaneError):
    pass


# The one mapping table: domain (and store) error → gRPC status code.
_CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (RevisionConflictError, grpc.StatusCode.ABORTED),
    (FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (LeaseNotFound, grpc.StatusCode.NOT_FOUND),
    (Compacted, grpc.StatusCode.OUT_OF_RANGE),
    (StoreClosed, grpc.StatusCode.UNAVAILABLE),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (InvalidSubjectError, grpc.StatusCode.INVALID_ARGUMENT),
    (PayloadTooLargeError, grpc.StatusCode.INVALID_ARGUMENT),
    (StreamNotFoundError, grpc.StatusCode.NOT_FOUND),
    (StreamConflictError, grpc.StatusCode.ALREADY_EXISTS),
    (AckNotFoundError, grpc.StatusCode.NOT_FOUND),
    (NoRespondersError, grpc.StatusCode.UNAVAILABLE),
    (BusUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (BusClosedError, grpc.StatusCode.UNAVAILABLE),
)

#: ``google.rpc.ErrorInfo.domain`` of the bus errors; the reasons follow.
BUS_ERROR_DOMAIN = "bus.ecosystem"
_BUS_REASONS: tuple[tuple[type[BusError], str], ...] = (
    (InvalidSubjectError, "INVALID_SUBJECT"),
    (PayloadTooLargeError, "PAYLOAD_TOO_LARGE"),
    (StreamNotFoundError, "STREAM_NOT_FOUND"),
    (StreamConflictError, "STREAM_CONFLICT"),
    (AckNotFoundError, "ACK_NOT_FOUND"),
    (NoRespondersError, "NO_RESPONDERS"),
    (BusUnavailableError, "BUS_UNAVAILABLE"),
    (BusClosedError, "BUS_CLOSED"),
)
# Bus errors rejecting an input, and the request field to name when the
# broker did not say which.
_BUS_INPUT_FIELDS: tuple[tuple[type[BusError], str], ...] = (
    (InvalidSubjectError, "subject"),
    (PayloadTooLargeError, "data"),
)


#: An error never carries more than this back: bytes of its message, of each
#: field path and description, and of its BadRequest detail in all. A
#: rejected input is quoted, not echoed, and the whole status stays well
#: inside the 8 KiB of trailers a stock gRPC client accepts (the message
#: travels twice, percent-encoded and inside the base64 detail).
MAX_MESSAGE = 512
MAX_FIELD = 128
MAX_DESCRIPTION = 256
MAX_BAD_REQUEST = 3 * 1024


def cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8 (marked with "…")."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode(errors="ignore") + "…"


def excerpt(value: str, limit: int = 32) -> str:
    """``value`` quoted for an error message, cut to ``limit`` characters.

    Errors travel back in status details (and trailers): quoting a rejected
    megabyte would make the error itself too large for a stock client and
    keep the input alive in memory, so only the start of it is shown.
    """
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value)} characters)"


def bad_request(violations: Iterable[tuple[str, str]]) -> error_details_pb2.BadRequest:
    """A BadRequest of ``(field, description)`` pairs, cut to fit in
    ``MAX_BAD_REQUEST`` bytes: the violations that do not fit are counted in a
    last one."""
    detail = error_details_pb2.BadRequest()
    size = 0
    left = 0
    for field, description in violations:
        item = error_details_pb2.BadRequest.FieldViolation(
            field=cut(field, MAX_FIELD), description=cut(description, MAX_DESCRIPTION)
        )
        grown = size + item.ByteSize() + 3
        if left or grown > MAX_BAD_REQUEST - 64:
            left += 1
            continue
        detail.field_violations.append(item)
        size = grown
    if left:
        detail.field_violations.add(field="", description=f"and {left} more problems")
    return detail


def code_for(exc: BaseException) -> grpc.StatusCode | None:
    """The status code for an expected error, or None for a bug."""
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return None


def to_status(exc: BaseException) -> status_pb2.Status:
    """A google.rpc.Status for ``exc`` (INTERNAL for anything unexpected)."""
    code = code_for(exc)
    if code is None:
        return status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")
    status = status_pb2.Status(code=code.value[0], message=cut(str(exc), MAX_MESSAGE))
    violations: Sequence[FieldViolation] = ()
    if isinstance(exc, InvalidArgumentError):
        violations = exc.violations
    elif isinstance(exc, BusError):
        violations = _bus_violations(exc)
        for kind, reason in _BUS_REASONS:
            if isinstance(exc, kind):
                _add_detail(
                    status, error_details_pb2.ErrorInfo(reason=reason, domain=BUS_ERROR_DOMAIN)
                )
                break
    if violations:
        _add_detail(status, bad_request((v.field, v.description) for v in violations))
    return status


def _bus_violations(exc: BusError) -> tuple[FieldViolation, ...]:
    for kind, default_field in _BUS_INPUT_FIELDS:
        if isinstance(exc, kind):
            return (FieldViolation(exc.field or default_field, exc.message),)
    return ()


def _add_detail(status: status_pb2.Status, detail: Message) -> None:
    packed = any_pb2.Any()
    packed.Pack(detail)
    status.details.append(packed)


def end_call(context: grpc.aio.ServicerContext[Any, Any], status: status_pb2.Status) -> None:
    """Sets ``status`` as the call's outcome without raising: the handler then
    returns (a unary one returns None) and the server sends the status.

    Not ``context.abort()``: that keeps the exception it raises in the call's
    state, and that exception's traceback holds the handler's frames, the
    request among them: a reference cycle that only a full garbage
    collection frees, which a process tuned for rare full collections seldom
    runs (60 rejected 1 MiB requests kept 70 MB that way).
    """
    grpc_status = rpc_status.to_status(status)
    context.set_code(grpc_status.code)
    context.set_details(grpc_status.details)
    context.set_trailing_metadata(grpc_status.trailing_metadata)
