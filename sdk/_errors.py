"""The SDK's exceptions, and the one mapping from gRPC status codes to them.

Every failure the control plane reports reaches the caller as one of these
classes; generated or gRPC exception types never escape the SDK::

    EcoError                         base: .code (status name), .message, .address, .reason,
                                     .metadata
    ├── NotFoundError                NOT_FOUND: unknown service, instance or lease
    │   └── StreamNotFoundError      … or bus stream (reason STREAM_NOT_FOUND)
    ├── ConflictError                an optimistic-concurrency check failed
    │   ├── AlreadyExistsError       ALREADY_EXISTS: expected_revision=0 but it exists
    │   └── RevisionMismatchError    ABORTED: expected_revision is not the current one
    ├── InvalidArgumentError         INVALID_ARGUMENT / OUT_OF_RANGE: .field_violations
    ├── FailedPreconditionError      FAILED_PRECONDITION: e.g. a lease expired under a request
    ├── UnavailableError             UNAVAILABLE: unreachable, or draining (safe calls are retried)
    ├── NoRespondersError            UNAVAILABLE, reason NO_RESPONDERS: a bus request found no
    │                                subscriber (the control plane answered: no failover, no retry)
    ├── DeadlineExceededError        DEADLINE_EXCEEDED: the call's deadline passed
    ├── RequestCancelledError        CANCELLED: the server cancelled the call
    ├── ResourceExhaustedError       RESOURCE_EXHAUSTED: a limit was hit
    ├── UnauthenticatedError         UNAUTHENTICATED
    ├── PermissionDeniedError        PERMISSION_DENIED
    ├── UnimplementedError           UNIMPLEMENTED: the server lacks this call
    └── InternalError                INTERNAL, UNKNOWN, DATA_LOSS: a server-side bug

    ClientClosedError (RuntimeError) the client was used after close(): misuse, not an EcoError

This module is the SDK's one translation from gRPC statuses to these
classes: one table (by code, then by code and ErrorInfo reason), and two
ways in. Every call path raises through :func:`translated` — the
transport's unary calls and server streams (registry, watch, bus
subscriptions), the agent session's stream, the proxyless channel's sidecar
source — which raises ``from_rpc_error(err) from err`` so the original gRPC
error stays on ``__cause__``; a status carried inside a response (one
message of a ``PublishBatch``) goes through :func:`from_status`. ``reason``
and ``metadata`` are the ``google.rpc.ErrorInfo`` reason and metadata the
server attached, if any (the bus names each of its errors that way, and the
input it blames as ``metadata["field"]``). The errors a proxyless channel's calls
get from the application's own backends are not translated: those statuses
are the application's.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "AlreadyExistsError",
    "ClientClosedError",
    "ConflictError",
    "DeadlineExceededError",
    "EcoError",
    "FailedPreconditionError",
    "FieldViolation",
    "InternalError",
    "InvalidArgumentError",
    "NoRespondersError",
    "NotFoundError",
    "PermissionDeniedError",
    "RequestCancelledError",
    "ResourceExhaustedError",
    "RevisionMismatchError",
    "StreamNotFoundError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "from_rpc_error",
    "from_status",
    "translated",
]

logger = logging.getLogger(__name__)

_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One rejected field of a request: its path (e.g. ``instance.port``) and why."""

    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}"


class EcoError(Exception):
    """Root of every error the control plane reports through the SDK.

    ``code`` is the gRPC status name (``"NOT_FOUND"``), ``message`` the
    server's description, ``address`` the control plane that answered,
    when known, ``reason`` the machine-readable cause the server gave
    (``"NO_RESPONDERS"``), or "", and ``metadata`` what the server's
    ErrorInfo added to it (e.g. ``{"field": "stream"}``).
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "UNKNOWN",
        address: str | None = None,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.address = address
        self.reason = reason
        self.metadata: Mapping[str, str] = dict(metadata or {})

    def __str__(self) -> str:
        return self.message or self.code.lower().replace("_", " ")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class NotFoundError(EcoError):
    """The service, instance or lease does not exist."""


class StreamNotFoundError(NotFoundError):
    """No bus stream by that name, or none captures the subject."""


class ConflictError(EcoError):
    """A write's expected revision did not hold; re-read and try again."""


class AlreadyExistsError(ConflictError):
    """``expected_revision=0`` was given but the instance already exists."""


class RevisionMismatchError(ConflictError):
    """The instance's current revision differs from ``expected_revision``."""


class InvalidArgumentError(EcoError):
    """The request was rejected at the edge; ``field_violations`` names each bad field."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "INVALID_ARGUMENT",
        address: str | None = None,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: list[FieldViolation] | None = None,
    ) -> None:
        super().__init__(message, code=code, address=address, reason=reason, metadata=metadata)
        self.field_violations: list[FieldViolation] = list(field_violations or [])

    def __str__(self) -> str:
        if not self.field_violations:
            return super().__str__()
        return "; ".join(str(v) for v in self.field_violations)


class FailedPreconditionError(EcoError):
    """The system is not in a state that allows the call (e.g. the lease expired)."""


class UnavailableError(EcoError):
    """No control plane could be reached, or the one reached is draining."""


class NoRespondersError(EcoError):
    """A bus request found nothing subscribed to its subject.

    Not an :class:`UnavailableError`: the control plane answered, so the
    SDK neither fails over nor retries.
    """


class DeadlineExceededError(EcoError):
    """The call did not finish before its deadline."""


class RequestCancelledError(EcoError):
    """The server cancelled the call (for example while shutting down).

    Cancelling your own task raises :class:`asyncio.CancelledError` as usual;
    the SDK never converts that.
    """


class ResourceExhaustedError(EcoError):
    """A server-side limit (size, rate, quota) was hit."""


class UnauthenticatedError(EcoError):
    """The call carried no valid credentials."""


class PermissionDeniedError(EcoError):
    """The caller may not do this."""


class UnimplementedError(EcoError):
    """The control plane does not implement this call (an older version?)."""


class InternalError(EcoError):
    """The control plane failed in a way it did not expect; see its logs."""


class ClientClosedError(RuntimeError):
    """A client was used after ``close()``; create a new one instead."""

    def __init__(self, message: str = "the client is closed; create a new one") -> None:
        super().__init__(message)


_BY_CODE: dict[grpc.StatusCode, type[EcoError]] = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.ABORTED: RevisionMismatchError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: RequestCancelledError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNKNOWN: InternalError,
    grpc.StatusCode.DATA_LOSS: InternalError,
}

# More specific classes by (code, google.rpc.ErrorInfo reason).
_BY_REASON: dict[tuple[grpc.StatusCode, str], type[EcoError]] = {
    (grpc.StatusCode.UNAVAILABLE, "NO_RESPONDERS"): NoRespondersError,
    (grpc.StatusCode.NOT_FOUND, "STREAM_NOT_FOUND"): StreamNotFoundError,
}


_CODE_BY_NUMBER: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


@contextlib.contextmanager
def translated(
    address: str | None = None, *, on_error: Callable[[EcoError], None] | None = None
) -> Iterator[None]:
    """The one point where a call's gRPC error becomes an SDK error.

    A ``grpc.RpcError`` raised inside the block is raised again as the most
    specific :class:`EcoError` (``from`` the gRPC error), naming ``address``
    as the server that answered; ``on_error`` sees the SDK error first (the
    transport fails over on UNAVAILABLE). Anything else passes untouched.
    """
    try:
        yield
    except grpc.RpcError as err:
        error = from_rpc_error(err, address=address)
        if on_error is not None:
            on_error(error)
        raise error from err


def from_rpc_error(err: grpc.RpcError, *, address: str | None = None) -> EcoError:
    """Returns the most specific :class:`EcoError` for a gRPC error.

    Reads the status code, the details string, and the rich status trailer:
    its ``google.rpc.ErrorInfo`` reason (which may pick a more specific
    class) and, for INVALID_ARGUMENT, its ``google.rpc.BadRequest`` field
    violations. Works for both synchronous and asyncio calls.
    """
    code = _call_attr(err, "code")
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    details = _call_attr(err, "details")
    message = details if isinstance(details, str) else ""
    status = _rich_status(err)
    reason, metadata = _error_info(status)
    return _build(code, message, reason, metadata, _field_violations(status), address)


def from_status(
    code: int,
    message: str,
    reason: str = "",
    violations: Sequence[tuple[str, str]] = (),
    address: str | None = None,
) -> EcoError:
    """The :class:`EcoError` for a status carried in a response (one message of a
    ``PublishBatch``): a numeric gRPC code, its message, the ErrorInfo reason
    and the ``(field, description)`` violations."""
    status_code = _CODE_BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
    fields = [FieldViolation(field, description) for field, description in violations]
    return _build(status_code, message, reason, {}, fields, address)


def _build(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    metadata: Mapping[str, str],
    violations: list[FieldViolation],
    address: str | None,
) -> EcoError:
    """The one choice of a class for a status: by code and reason, then by code."""
    cls = _BY_REASON.get((code, reason)) or _BY_CODE.get(code, EcoError)
    name = code.name
    if issubclass(cls, InvalidArgumentError):
        return cls(
            message,
            code=name,
            address=address,
            reason=reason,
            metadata=metadata,
            field_violations=violations,
        )
    return cls(message, code=name, address=address, reason=reason, metadata=metadata)


def _call_attr(err: grpc.RpcError, name: str) -> Any:
    method = getattr(err, name, None)
    if not callable(method):
        return None
    try:
        return method()
    except Exception:  # a half-built call object; the code falls back to UNKNOWN
        logger.debug("could not read %s from %r", name, err, exc_info=True)
        return None


def _rich_status(err: grpc.RpcError) -> status_pb2.Status | None:
    trailing = _call_attr(err, "trailing_metadata") or ()
    for key, value in trailing:
        if key != _DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status()
        try:
            status.ParseFromString(value)
        except Exception:
            logger.debug("unparseable %s trailer", _DETAILS_KEY, exc_info=True)
            continue
        return status
    return None


def _error_info(status: status_pb2.Status | None) -> tuple[str, dict[str, str]]:
    """The ErrorInfo's reason and metadata ("" and {} without one)."""
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason), dict(info.metadata)
    return "", {}


def _field_violations(status: status_pb2.Status | None) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend(
                FieldViolation(str(v.field), str(v.description)) for v in bad.field_violations
            )
    return violations
