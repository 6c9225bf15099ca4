"""The health engine's exceptions::

    HealthError                   base of the expected failures: .check_id
    ├── CheckNotFoundError        no check has this id (removed, or never added)
    ├── DuplicateCheckError       the instance already has a check with this name
    └── NotATtlCheckError         a TTL update for a check of another kind: .kind

    EngineClosedError (RuntimeError)  the engine was used after close(): misuse

The local API maps these to status codes: NOT_FOUND, ALREADY_EXISTS and
FAILED_PRECONDITION respectively.
"""

from __future__ import annotations

import grpc

from sidecar.health._base import CheckKind

__all__ = [
    "CheckNotFoundError",
    "DuplicateCheckError",
    "EngineClosedError",
    "HealthError",
    "NotATtlCheckError",
]


class HealthError(Exception):
    """An expected failure of a health-engine call about one check."""

    def __init__(self, message: str, *, check_id: str) -> None:
        super().__init__(message)
        self.check_id = check_id


class CheckNotFoundError(HealthError):
    status_code = grpc.StatusCode.NOT_FOUND

    def __init__(self, check_id: str) -> None:
        super().__init__(f"no health check {check_id!r}", check_id=check_id)


class DuplicateCheckError(HealthError):
    status_code = grpc.StatusCode.ALREADY_EXISTS

    def __init__(self, check_id: str) -> None:
        super().__init__(f"health check {check_id!r} already exists", check_id=check_id)


class NotATtlCheckError(HealthError):
    status_code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, check_id: str, kind: CheckKind) -> None:
        super().__init__(
            f"health check {check_id!r} is a {kind.value} check; only TTL checks take updates",
            check_id=check_id,
        )
        self.kind = kind


class EngineClosedError(RuntimeError):
    """The engine was used after ``close()``; it cannot be reopened."""
