"""What a broker raises, how each kind is served, and the way back.

::

    BusError                    .message, .field (the input it blames, if any)
    ├── InvalidSubjectError     INVALID_ARGUMENT, reason INVALID_SUBJECT + BadRequest
    ├── PayloadTooLargeError    INVALID_ARGUMENT, reason PAYLOAD_TOO_LARGE + BadRequest
    ├── StreamNotFoundError     NOT_FOUND, reason STREAM_NOT_FOUND
    ├── StreamConflictError     ALREADY_EXISTS, reason STREAM_CONFLICT
    ├── AckNotFoundError        NOT_FOUND, reason ACK_NOT_FOUND
    ├── NoRespondersError       UNAVAILABLE, reason NO_RESPONDERS
    ├── BusUnavailableError     UNAVAILABLE, reason BUS_UNAVAILABLE
    ├── BusClosedError          UNAVAILABLE, reason BUS_CLOSED
    └── UpstreamError           the code a MessagingService forwarded to answered
        └── UpstreamTimeoutError    DEADLINE_EXCEEDED (also a TimeoutError)

Each kind says its status on its class (``status_code``, and the
``google.rpc.ErrorInfo`` reason in :attr:`BusError.error_domain`; the field
it blames travels as the ErrorInfo's ``field`` metadata), and
``serving.errors.to_status`` encodes it: one translation on the server's
side. :func:`broker_error` is the one translation back, for a broker that
forwards to a ``MessagingService`` (the sidecar's relay): from the SDK error
the answer became to the broker error that ``to_status`` encodes into the
same status again — code, message, ErrorInfo reason and metadata,
BadRequest violations — so a status crosses a relay unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import grpc

import sdk
from serving.errors import InvalidArgumentError

__all__ = [
    "AckNotFoundError",
    "BusClosedError",
    "BusError",
    "BusUnavailableError",
    "InvalidSubjectError",
    "NoRespondersError",
    "PayloadTooLargeError",
    "StreamConflictError",
    "StreamNotFoundError",
    "UpstreamError",
    "UpstreamTimeoutError",
    "broker_error",
]


class BusError(Exception):
    """Root of what a broker raises; ``field`` names the offending input, if any.

    Each kind says the gRPC status it is served as (``status_code``) and the
    ``google.rpc.ErrorInfo`` reason that names it (in ``error_domain``);
    ``serving.errors.to_status`` reads them.
    """

    error_domain: ClassVar[str] = "bus.ecosystem"
    error_reason: ClassVar[str] = ""
    #: The request field a rejected input is reported on when the broker did not say.
    input_field: ClassVar[str] = ""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    @property
    def violations(self) -> tuple[sdk.FieldViolation, ...]:
        """The rejected input, for an error that rejects one."""
        if not self.input_field:
            return ()
        return (sdk.FieldViolation(self.field or self.input_field, self.message),)

    @property
    def error_metadata(self) -> Mapping[str, str]:
        """The ErrorInfo metadata: the input blamed, so that it survives a relay."""
        blamed = self.field or self.input_field
        return {"field": blamed} if blamed else {}


class InvalidSubjectError(BusError):
    """A subject or pattern is malformed (INVALID_ARGUMENT)."""

    status_code = grpc.StatusCode.INVALID_ARGUMENT
    error_reason = "INVALID_SUBJECT"
    input_field = "subject"


class PayloadTooLargeError(BusError):
    """The payload is over the broker's limit (INVALID_ARGUMENT)."""

    status_code = grpc.StatusCode.INVALID_ARGUMENT
    error_reason = "PAYLOAD_TOO_LARGE"
    input_field = "data"


class StreamNotFoundError(BusError):
    """No stream by that name, or none captures the subject (NOT_FOUND)."""

    status_code = grpc.StatusCode.NOT_FOUND
    error_reason = "STREAM_NOT_FOUND"


class StreamConflictError(BusError):
    """A stream exists with another config, or its subjects overlap another's (ALREADY_EXISTS)."""

    status_code = grpc.StatusCode.ALREADY_EXISTS
    error_reason = "STREAM_CONFLICT"


class NoRespondersError(BusError):
    """A request found no subscriber (UNAVAILABLE, reason NO_RESPONDERS)."""

    status_code = grpc.StatusCode.UNAVAILABLE
    error_reason = "NO_RESPONDERS"


class AckNotFoundError(BusError):
    """An ack id that is unknown or no longer pending (NOT_FOUND)."""

    status_code = grpc.StatusCode.NOT_FOUND
    error_reason = "ACK_NOT_FOUND"


class BusUnavailableError(BusError):
    """The backend (e.g. nats-server, or the control plane a relay forwards to)
    cannot be reached now (UNAVAILABLE)."""

    status_code = grpc.StatusCode.UNAVAILABLE
    error_reason = "BUS_UNAVAILABLE"


class BusClosedError(BusError):
    """The broker was closed (UNAVAILABLE)."""

    status_code = grpc.StatusCode.UNAVAILABLE
    error_reason = "BUS_CLOSED"


class UpstreamError(BusError):
    """The ``MessagingService`` a broker forwards to answered with a status none
    of the kinds above names (a limit it enforces, a failure): served again
    with the same code and message, and no ErrorInfo, as it came."""

    status_code: grpc.StatusCode

    def __init__(self, message: str, *, status_code: grpc.StatusCode, field: str = "") -> None:
        super().__init__(message, field=field)
        self.status_code = status_code

    @property
    def error_metadata(self) -> Mapping[str, str]:
        return {}


class UpstreamTimeoutError(UpstreamError, TimeoutError):
    """The upstream answered DEADLINE_EXCEEDED (a request nobody replied to in
    time) or did not answer within the call's deadline; a ``TimeoutError``,
    as the Broker protocol's ``request`` raises."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message, status_code=grpc.StatusCode.DEADLINE_EXCEEDED, field=field)


# Every kind that names itself by a reason, by that reason: the inverse of the classes above.
_BY_REASON: dict[str, type[BusError]] = {
    kind.error_reason: kind
    for kind in (
        InvalidSubjectError,
        PayloadTooLargeError,
        StreamNotFoundError,
        StreamConflictError,
        NoRespondersError,
        AckNotFoundError,
        BusUnavailableError,
        BusClosedError,
    )
}


def broker_error(err: sdk.EcoError, field: str = "") -> Exception:
    """The broker error for what an upstream ``MessagingService`` answered.

    ``err`` is the answer as the SDK read it (its one translation); the
    result is what ``serving.errors.to_status`` serves as the same status.
    A bus kind is told by its ErrorInfo reason and keeps the field the
    answer blamed (its metadata, else its BadRequest violation). Without a
    bus reason: INVALID_ARGUMENT is the request check's
    ``InvalidArgumentError`` with the same violations; DEADLINE_EXCEEDED an
    :class:`UpstreamTimeoutError`; UNAVAILABLE (the upstream is unreachable
    or draining) the broker's own :class:`BusUnavailableError`, "control
    plane: …"; any other code an :class:`UpstreamError` with that code.
    ``field`` is the input to blame when the answer names none (for the
    bridges' error bodies; it never changes the status).
    """
    violations = list(getattr(err, "field_violations", ()))
    named = err.metadata.get("field") or (violations[0].field if violations else "")
    kind = _BY_REASON.get(err.reason)
    if kind is not None:
        return kind(err.message, field=named)
    field = named or field
    code = grpc.StatusCode.__members__.get(err.code, grpc.StatusCode.UNKNOWN)
    if code is grpc.StatusCode.INVALID_ARGUMENT and violations:
        return InvalidArgumentError(violations)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return UpstreamTimeoutError(err.message, field=field)
    if code is grpc.StatusCode.UNAVAILABLE:
        return BusUnavailableError(f"control plane: {err.message}")
    return UpstreamError(err.message, status_code=code, field=field)
