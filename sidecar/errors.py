"""The sidecar's expected failures; each says its gRPC status on its class.

::

    SidecarError                    base of what the local API reports
    ├── UnknownServiceError         NOT_FOUND: not an upstream (or local service) of this sidecar
    ├── UnknownInstanceError        NOT_FOUND: no such local instance of a local service
    ├── UnknownPickError            NOT_FOUND: a pick_id that is unknown, reported or expired
    ├── BadRequestError             INVALID_ARGUMENT + google.rpc.BadRequest field violations
    ├── TooManyWatchesError         RESOURCE_EXHAUSTED: the cap on WatchEndpoints streams
    └── ShuttingDownError           UNAVAILABLE: the sidecar is stopping
    NoRouteError (sdk.balancer.NoEndpointsError)   UNAVAILABLE: nothing to route to

    from sidecar.health:
    CheckNotFoundError              NOT_FOUND
    NotATtlCheckError               FAILED_PRECONDITION
    DuplicateCheckError             ALREADY_EXISTS

    StartupError (Exception)        the sidecar could not start (address in use, data dir …)

The local API's servicer raises these; :func:`serving.errors.to_status` (the
one translation of every server here) reads their ``status_code``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from sdk.balancer import NoEndpointsError
from serving import errors as serving_errors
from serving.errors import FieldViolation, code_for, excerpt, to_status

__all__ = [
    "BadRequestError",
    "NoRouteError",
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

    status_code = grpc.StatusCode.NOT_FOUND

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
    status_code = grpc.StatusCode.NOT_FOUND

    def __init__(self, service: str, instance_id: str, known: Sequence[str]) -> None:
        self.service = service
        self.instance_id = instance_id
        super().__init__(
            f"service {excerpt(service)} has no local instance {excerpt(instance_id)} "
            f"(local instances: {', '.join(known) or 'none'})"
        )


class UnknownPickError(SidecarError):
    status_code = grpc.StatusCode.NOT_FOUND

    def __init__(self, pick_id: str) -> None:
        self.pick_id = pick_id
        super().__init__(
            f"pick_id {excerpt(pick_id)} is unknown: already reported, expired or never made"
        )


class BadRequestError(SidecarError):
    status_code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        self.violations = tuple(violations)
        detail = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(f"invalid request: {detail}")

    @classmethod
    def one(cls, field: str, description: str) -> BadRequestError:
        return cls([FieldViolation(field, description)])


class TooManyWatchesError(SidecarError):
    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, limit: int) -> None:
        super().__init__(f"at most {limit} WatchEndpoints streams may be open at once")


class ShuttingDownError(SidecarError):
    status_code = grpc.StatusCode.UNAVAILABLE

    def __init__(self) -> None:
        super().__init__("the sidecar is shutting down")


class NoRouteError(NoEndpointsError):
    """Nothing of an upstream may be picked now (UNAVAILABLE): the balancer's
    :class:`~sdk.balancer.NoEndpointsError`, naming the service."""

    status_code = grpc.StatusCode.UNAVAILABLE


def end_call(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
    """Sets the status for ``exc`` as the call's outcome without raising (see
    :func:`serving.errors.end_call`)."""
    serving_errors.end_call(context, to_status(exc))
