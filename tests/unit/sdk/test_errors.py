"""Translation of every gRPC status into the SDK's error tree."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

import sdk
from sdk._errors import from_rpc_error, from_status, translated
from sdk._transport import Transport
from tests.unit.sdk.fakes import FakeControlPlane, rpc_error

EXPECTED: dict[grpc.StatusCode, type[sdk.EcoError]] = {
    grpc.StatusCode.NOT_FOUND: sdk.NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: sdk.AlreadyExistsError,
    grpc.StatusCode.ABORTED: sdk.RevisionMismatchError,
    grpc.StatusCode.INVALID_ARGUMENT: sdk.InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: sdk.InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: sdk.FailedPreconditionError,
    grpc.StatusCode.UNAVAILABLE: sdk.UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: sdk.DeadlineExceededError,
    grpc.StatusCode.CANCELLED: sdk.RequestCancelledError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: sdk.ResourceExhaustedError,
    grpc.StatusCode.UNAUTHENTICATED: sdk.UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: sdk.PermissionDeniedError,
    grpc.StatusCode.UNIMPLEMENTED: sdk.UnimplementedError,
    grpc.StatusCode.INTERNAL: sdk.InternalError,
    grpc.StatusCode.UNKNOWN: sdk.InternalError,
    grpc.StatusCode.DATA_LOSS: sdk.InternalError,
}


def test_every_error_status_code_has_a_class() -> None:
    assert set(EXPECTED) == set(grpc.StatusCode) - {grpc.StatusCode.OK}


@pytest.mark.parametrize("code", list(EXPECTED), ids=lambda c: c.name)
def test_status_code_maps_to_the_most_specific_class(code: grpc.StatusCode) -> None:
    err = from_rpc_error(rpc_error(code, "it went wrong"), address="10.0.0.1:7400")
    assert type(err) is EXPECTED[code]
    assert isinstance(err, sdk.EcoError)
    assert err.code == code.name
    assert err.message == "it went wrong"
    assert err.address == "10.0.0.1:7400"
    assert str(err) == "it went wrong"


def test_conflicts_share_a_parent() -> None:
    assert issubclass(sdk.AlreadyExistsError, sdk.ConflictError)
    assert issubclass(sdk.RevisionMismatchError, sdk.ConflictError)


def test_invalid_argument_carries_the_bad_request_field_violations() -> None:
    error = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid request",
        violations=[("instance.port", "must be 1-65535"), ("instance.service", "bad name")],
    )
    err = from_rpc_error(error)
    assert isinstance(err, sdk.InvalidArgumentError)
    assert err.field_violations == [
        sdk.FieldViolation("instance.port", "must be 1-65535"),
        sdk.FieldViolation("instance.service", "bad name"),
    ]
    assert str(err) == "instance.port: must be 1-65535; instance.service: bad name"


def test_invalid_argument_without_details_has_no_violations() -> None:
    err = from_rpc_error(rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "nope"))
    assert isinstance(err, sdk.InvalidArgumentError)
    assert err.field_violations == []
    assert str(err) == "nope"


def test_garbage_details_trailer_is_ignored() -> None:
    error = grpc.aio.AioRpcError(
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(("grpc-status-details-bin", b"\xff\x00not a status")),
        "bad",
        None,
    )
    err = from_rpc_error(error)
    assert isinstance(err, sdk.InvalidArgumentError)
    assert err.field_violations == []


class _SyncStyleError(grpc.RpcError):
    """A synchronous-stack error: trailing metadata is a tuple of pairs."""

    def __init__(self, trailing: tuple[Any, ...]) -> None:
        self._trailing = trailing

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.INVALID_ARGUMENT

    def details(self) -> str:
        return "bad"

    def trailing_metadata(self) -> tuple[Any, ...]:
        return self._trailing


def test_synchronous_call_errors_are_read_too() -> None:
    aio_error = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "bad", violations=[("id", "empty")])
    err = from_rpc_error(_SyncStyleError(tuple(aio_error.trailing_metadata())))
    assert isinstance(err, sdk.InvalidArgumentError)
    assert err.field_violations == [sdk.FieldViolation("id", "empty")]


def test_an_error_without_a_code_is_internal_not_a_crash() -> None:
    err = from_rpc_error(grpc.RpcError())
    assert isinstance(err, sdk.InternalError)
    assert err.code == "UNKNOWN"


def test_client_closed_is_misuse_not_an_eco_error() -> None:
    assert issubclass(sdk.ClientClosedError, RuntimeError)
    assert not issubclass(sdk.ClientClosedError, sdk.EcoError)


async def test_the_transport_raises_from_the_grpc_error() -> None:
    plane = FakeControlPlane()
    failure = rpc_error(grpc.StatusCode.NOT_FOUND, "no such instance")

    def fail(_address: str, _request: object) -> object:
        raise failure

    plane.unary["GetService"] = fail
    transport = Transport(["a:1"], timeout=1.0, channel_factory=plane.channel_factory)
    with pytest.raises(sdk.NotFoundError) as caught:
        await transport.unary("GetService", object(), idempotent=True)
    assert caught.value.__cause__ is failure
    assert caught.value.address == "a:1"
    await transport.close()


@pytest.mark.parametrize("code", list(EXPECTED), ids=lambda c: c.name)
def test_a_status_carried_in_a_response_reads_as_the_same_error(code: grpc.StatusCode) -> None:
    # One message of a PublishBatch carries its own status: same table, same error.
    violations = [("subject", "empty")] if code is grpc.StatusCode.INVALID_ARGUMENT else []
    raised = from_rpc_error(rpc_error(code, "refused", violations=violations), address="a:1")
    carried = from_status(code.value[0], "refused", "", violations, address="a:1")
    assert type(carried) is type(raised)
    assert (carried.code, carried.message, carried.address) == (
        raised.code,
        raised.message,
        raised.address,
    )
    assert getattr(carried, "field_violations", []) == getattr(raised, "field_violations", [])


def test_a_reason_picks_the_more_specific_class_either_way() -> None:
    assert type(from_status(14, "nobody", "NO_RESPONDERS")) is sdk.NoRespondersError
    assert type(from_status(5, "none", "STREAM_NOT_FOUND")) is sdk.StreamNotFoundError
    assert type(from_status(5, "none", "ACK_NOT_FOUND")) is sdk.NotFoundError


def test_translated_raises_the_sdk_error_from_the_grpc_one() -> None:
    seen: list[sdk.EcoError] = []
    failure = rpc_error(grpc.StatusCode.UNAVAILABLE, "gone")
    with pytest.raises(sdk.UnavailableError) as caught, translated("b:2", on_error=seen.append):
        raise failure
    assert caught.value.__cause__ is failure
    assert caught.value.address == "b:2"
    assert seen == [caught.value]
    with pytest.raises(KeyError), translated("b:2", on_error=seen.append):
        raise KeyError("not a gRPC error: untouched")
    assert len(seen) == 1
