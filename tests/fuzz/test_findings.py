"""Regression tests for what the fuzz tests found, each the smallest request that showed it.

A finding not fixed yet is marked ``xfail(strict=True)``: the day it is
fixed, the test passes, strict xfail reports that as a failure, and the mark
comes off here (with the finding's entry in :mod:`tests.fuzz.findings`).
"""

from __future__ import annotations

import grpc
import pytest
from ecosystem.v1 import messaging_pb2, messaging_pb2_grpc

from tests.fuzz.stack import Stack

pytestmark = pytest.mark.fuzz


def test_subscribe_with_negative_start_time_is_invalid_argument(stack: Stack) -> None:
    # Was INTERNAL (a ValueError below the request checks) without a deliver policy.
    bus = messaging_pb2_grpc.MessagingServiceStub(stack.plane.served.channel)
    request = messaging_pb2.SubscribeRequest(subject="fz.>", durable="fz-neg", start_time_ms=-1)
    with pytest.raises(grpc.RpcError) as err:
        next(bus.Subscribe(request, timeout=5))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, err.value
    stack.plane.served.assert_serving()
