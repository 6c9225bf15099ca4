"""The sidecar's expected failures, and the one table that maps them to gRPC statuses.

::

    SidecarError                    base of what the local API reports
    ├── UnknownServiceError         NOT_FOUND: not an upstream (or local service) of this sidecar
    ├── UnknownInstanceError        NOT_FOUND: no such local instance of a local service
    ├── UnknownPickError            NOT_FOUND: a pick_id that is unknown, reported or expired
    ├── BadRequestError             INVALID_ARGUMENT + google.rpc.BadRequest field violations
    ├── TooManyWatchesError         RESOURCE_EXHAUSTED: the cap on WatchEndpoints streams
    └── ShuttingDownError           UNAVAILABLE: the sidecar is stopping

    from other packages, mapped by the same table:
    sdk.balancer.NoEndpointsError           UNAVAILABLE: nothing to route to
    sidecar.health.CheckNotFoundError       NOT_FOUND
    sidecar.health.NotATtlCheckError        FAILED_PRECONDITION
    sidecar.health.DuplicateCheckError      ALREADY_EXISTS

    StartupError (Exception)        the sidecar could not start (address in use, data dir …)

The local API's servicer raises these and lets :func:`to_status` translate
them; nothing else in the sidecar knows about status codes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, status_pb2
from grpc_status import rpc_status

from sdk.balancer import NoEndpointsError
from serving.errors import MAX_MESSAGE, FieldViolation, bad_request, cut, excerpt
from sidecar.health import CheckNotFoundError, DuplicateCheckError, NotATtlCheckError

__all__ = [
    "BadRequestError",
    "ShuttingDownError",
    "SidecarError",
    "StartupError",
    "TooManyWatchesError",
    "UnknownInstanceError",
    "UnknownPickError",
    "UnknownServiceError",
    "code_for",
    "end_call",
    "excerpt",
    "to_status",
]


class StartupError(Exception):
    """The sidecar could not start; the message says what to fix."""


class SidecarError(Exception):
    """Root of the failures the local API reports to applications."""


class UnknownServiceError(SidecarError):
    """The service is not one this sidecar knows (``kind`` says which list)."""

    def __init__(self, service: str, namespace: str, known: Sequence[str], kind: str) -> None:
        self.service = service
        self.namespace = namespace
        where = (
            f" in namespace {excerpt(namespace)}" if namespace and namespace != "default" else ""
        )
        listed = ", ".join(known) if known else "none"
        super().__init__(
            f"service {excerpt(service)}{where} is not {kind} of this sidecar "
            f"(configured: {listed})"
        )


class UnknownInstanceError(SidecarError):
    def __init__(self, service: str, instance_id: str, known: Sequence[str]) -> None:
        self.service = service
        self.instance_id = instance_id
        super().__init__(
            f"service {excerpt(service)} has no local instance {excerpt(instance_id)} "
            f"(local instances: {', '.join(known) or 'none'})"
        )


class UnknownPickError(SidecarError):
    def __init__(self, pick_id: str) -> None:
        self.pick_id = pick_id
        super().__init__(
            f"pick_id {excerpt(pick_id)} is unknown: already reported, expired or never made"
        )


class BadRequestError(SidecarError):
    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        self.violations = tuple(violations)
        detail = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(f"invalid request: {detail}")

    @classmethod
    def one(cls, field: str, description: str) -> BadRequestError:
        return cls([FieldViolation(field, description)])


class TooManyWatchesError(SidecarError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"at most {limit} WatchEndpoints streams may be open at once")


class ShuttingDownError(SidecarError):
    def __init__(self) -> None:
        super().__init__("the sidecar is shutting down")


# The one mapping table: expected error → gRPC status code.
_CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (BadRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (UnknownServiceError, grpc.StatusCode.NOT_FOUND),
    (UnknownInstanceError, grpc.StatusCode.NOT_FOUND),
    (UnknownPickError, grpc.StatusCode.NOT_FOUND),
    (TooManyWatchesError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ShuttingDownError, grpc.StatusCode.UNAVAILABLE),
    (NoEndpointsError, grpc.StatusCode.UNAVAILABLE),
    (CheckNotFoundError, grpc.StatusCode.NOT_FOUND),
    (NotATtlCheckError, grpc.StatusCode.FAILED_PRECONDITION),
    (DuplicateCheckError, grpc.StatusCode.ALREADY_EXISTS),
)


def code_for(exc: BaseException) -> grpc.StatusCode | None:
    """The status code of an expected error, or None for a bug."""
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return None


def to_status(exc: BaseException) -> status_pb2.Status:
    """A google.rpc.Status for ``exc``: INTERNAL, with no detail, for anything unexpected."""
    code = code_for(exc)
    if code is None:
        return status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")
    status = status_pb2.Status(code=code.value[0], message=cut(str(exc), MAX_MESSAGE))
    if isinstance(exc, BadRequestError):
        detail = any_pb2.Any()
        detail.Pack(bad_request((v.field, v.description) for v in exc.violations))
        status.details.append(detail)
    return status


def end_call(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
    """Sets the status for ``exc`` as the call's outcome without raising (the
    handler then returns): ``context.abort()`` would leave a reference cycle
    holding the request until a full garbage collection."""
    status = rpc_status.to_status(to_status(exc))
    context.set_code(status.code)
    context.set_details(status.details)
    context.set_trailing_metadata(status.trailing_metadata)
