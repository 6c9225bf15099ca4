"""Domain errors of the control plane and the one table that maps them to gRPC.

::

    ControlPlaneError
    ├── InvalidArgumentError      INVALID_ARGUMENT + google.rpc.BadRequest
    ├── NotFoundError             NOT_FOUND
    ├── AlreadyExistsError        ALREADY_EXISTS  (expected "absent", found one)
    ├── RevisionConflictError     ABORTED         (expected revision N, found M)
    ├── FailedPreconditionError   FAILED_PRECONDITION
    ├── UnauthenticatedError      UNAUTHENTICATED (a sidecar's token is wrong)
    └── UnavailableError          UNAVAILABLE     (draining, store gone)

Servicers raise these (or let store errors through, which ``to_status``
translates too); nothing else in the control plane knows about status codes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from controlplane.store import Compacted, LeaseNotFound, StoreClosed, StoreUnavailable

__all__ = [
    "AlreadyExistsError",
    "ControlPlaneError",
    "FailedPreconditionError",
    "FieldViolation",
    "InvalidArgumentError",
    "NotFoundError",
    "RevisionConflictError",
    "UnauthenticatedError",
    "UnavailableError",
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
)


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
    status = status_pb2.Status(code=code.value[0], message=str(exc))
    if isinstance(exc, InvalidArgumentError):
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in exc.violations
                ]
            )
        )
        status.details.append(detail)
    return status
