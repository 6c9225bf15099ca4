"""A broker error's status survives a relay: served, read by the SDK, turned back
into a broker error by ``bus.broker_error`` and served again, it is the same."""

from __future__ import annotations

import grpc
import pytest
from grpc_status import rpc_status

import bus
import sdk
from sdk._errors import from_rpc_error
from serving.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    ResourceExhaustedError,
    to_status,
)

SERVED: list[Exception] = [
    bus.InvalidSubjectError("subject: empty token", field="subject"),
    bus.InvalidSubjectError("config.subjects[1]: bad", field="config.subjects[1]"),
    bus.InvalidSubjectError("no field said"),
    bus.PayloadTooLargeError("2000000 bytes is over the limit", field="data"),
    bus.StreamNotFoundError("stream: no stream 'NOPE'", field="stream"),
    bus.StreamNotFoundError("nothing captures it"),
    bus.StreamConflictError("name: exists with other subjects", field="name"),
    bus.AckNotFoundError("ack_id: not pending", field="ack_id"),
    bus.NoRespondersError("no subscriber of 'x'"),
    bus.BusClosedError("the broker is closed"),
    InvalidArgumentError([sdk.FieldViolation("headers", "too many"), sdk.FieldViolation("id", "")]),
    DeadlineExceededError("no reply on 'x' within 0.2s"),
    ResourceExhaustedError("this control plane serves 1 subscriptions already"),
]


def _answer(error: Exception) -> sdk.EcoError:
    """What an SDK client reads when a server fails a call with ``error``."""
    status = rpc_status.to_status(to_status(error))
    failure = grpc.aio.AioRpcError(
        status.code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*status.trailing_metadata),
        status.details,
        None,
    )
    return from_rpc_error(failure)


@pytest.mark.parametrize("error", SERVED, ids=lambda e: f"{type(e).__name__}:{e}")
def test_a_status_crosses_a_relay_unchanged(error: Exception) -> None:
    relayed = bus.broker_error(_answer(error))
    assert to_status(relayed) == to_status(error)


def test_the_kind_and_the_blamed_field_come_back() -> None:
    relayed = bus.broker_error(_answer(bus.StreamNotFoundError("no", field="stream")))
    assert type(relayed) is bus.StreamNotFoundError
    assert relayed.field == "stream"
    timeout = bus.broker_error(_answer(DeadlineExceededError("slow")))
    assert isinstance(timeout, TimeoutError) and isinstance(timeout, bus.BusError)


def test_an_unreachable_upstream_is_the_relays_own_unavailable() -> None:
    relayed = bus.broker_error(sdk.UnavailableError("connection refused", code="UNAVAILABLE"))
    assert type(relayed) is bus.BusUnavailableError
    assert relayed.message == "control plane: connection refused"
