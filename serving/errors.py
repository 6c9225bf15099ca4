"""The expected failures of the project's gRPC servers, and how they become statuses.

::

    ServiceError
    ├── InvalidArgumentError      INVALID_ARGUMENT + google.rpc.BadRequest
    ├── NotFoundError             NOT_FOUND
    ├── AlreadyExistsError        ALREADY_EXISTS  (expected "absent", found one)
    ├── RevisionConflictError     ABORTED         (expected revision N, found M)
    ├── FailedPreconditionError   FAILED_PRECONDITION
    ├── UnauthenticatedError      UNAUTHENTICATED (a sidecar's token is wrong)
    ├── UnavailableError          UNAVAILABLE     (draining, store gone)
    ├── DeadlineExceededError     DEADLINE_EXCEEDED (a bus request got no reply in time)
    └── ResourceExhaustedError    RESOURCE_EXHAUSTED (e.g. too many bus subscriptions)

An error class of a higher layer says its own status by a ``status_code``
class attribute (the bus's errors in ``bus``, the store's in
``controlplane.store``); it may name a ``google.rpc.ErrorInfo`` reason
(``error_reason``, in ``error_domain``, with ``error_metadata`` for the
ErrorInfo's metadata) and carry ``violations`` (a sequence
of :class:`FieldViolation`, the SDK's: one model of a rejected field, on
both sides of the wire). :func:`to_status` reads those and nothing else,
so an exception without a ``status_code`` is a bug: INTERNAL, with no
detail. Servicers raise these; nothing else knows about status codes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from sdk import FieldViolation

__all__ = [
    "AlreadyExistsError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FieldViolation",
    "InvalidArgumentError",
    "NotFoundError",
    "ResourceExhaustedError",
    "RevisionConflictError",
    "ServiceError",
    "UnauthenticatedError",
    "UnavailableError",
    "bad_request",
    "cut",
    "end_call",
    "excerpt",
    "to_status",
]


class ServiceError(Exception):
    """Root of the expected failures a servicer reports; each kind has its status."""

    status_code: ClassVar[grpc.StatusCode]


class InvalidArgumentError(ServiceError):
    status_code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        self.violations = tuple(violations)
        detail = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(f"invalid request: {detail}")


class NotFoundError(ServiceError):
    status_code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(ServiceError):
    status_code = grpc.StatusCode.ALREADY_EXISTS


class RevisionConflictError(ServiceError):
    status_code = grpc.StatusCode.ABORTED


class FailedPreconditionError(ServiceError):
    status_code = grpc.StatusCode.FAILED_PRECONDITION


class UnauthenticatedError(ServiceError):
    status_code = grpc.StatusCode.UNAUTHENTICATED


class UnavailableError(ServiceError):
    status_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(ServiceError):
    status_code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhaustedError(ServiceError):
    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


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
    """The status code of an expected error (its class's ``status_code``), or None for a bug."""
    code = getattr(exc, "status_code", None)
    return code if isinstance(code, grpc.StatusCode) else None


def to_status(exc: BaseException) -> status_pb2.Status:
    """A google.rpc.Status for ``exc`` (INTERNAL for anything unexpected)."""
    code = code_for(exc)
    if code is None:
        return status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")
    status = status_pb2.Status(code=code.value[0], message=cut(str(exc), MAX_MESSAGE))
    reason = getattr(exc, "error_reason", "")
    if reason:
        info = error_details_pb2.ErrorInfo(reason=reason, domain=getattr(exc, "error_domain", ""))
        metadata: Mapping[str, str] = getattr(exc, "error_metadata", None) or {}
        for key, value in metadata.items():
            info.metadata[key] = cut(value, MAX_FIELD)
        _add_detail(status, info)
    violations: Sequence[FieldViolation] = getattr(exc, "violations", ())
    if violations:
        _add_detail(status, bad_request((v.field, v.description) for v in violations))
    return status


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
