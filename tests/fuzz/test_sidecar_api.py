"""Fuzzing every RPC of the sidecar's local API, ``ecosystem.v1.SidecarService``.

The sidecar has ``fz-api`` (two instances) and ``fz-web`` as upstreams and a
local service ``fz-ttl`` with a TTL check ``ttl``, so that generated requests
can name real ones. WatchEndpoints is read until its first answer and then
cancelled. The properties are those of every fuzz test
(:mod:`tests.fuzz.rpc`); afterwards a normal resolve, pick and report still
work.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ecosystem.v1 import registry_pb2, sidecar_pb2, sidecar_pb2_grpc
from google.protobuf.message import Message
from hypothesis import given

from tests.fuzz.findings import step_over
from tests.fuzz.profiles import fuzz_settings, run, time_limit
from tests.fuzz.protos import requests
from tests.fuzz.rpc import Rpc, call, check_outcome, rpcs
from tests.fuzz.stack import Stack

pytestmark = pytest.mark.fuzz

pb = sidecar_pb2
RPCS = rpcs(pb.DESCRIPTOR.services_by_name["SidecarService"])
PASSING = registry_pb2.HEALTH_STATUS_PASSING

Seeds = dict[str, list[Message]]


@pytest.fixture(scope="module")
def seeds(stack: Stack) -> Iterator[Seeds]:
    local = sidecar_pb2_grpc.SidecarServiceStub(stack.served.channel)
    pick = local.PickEndpoint(pb.PickEndpointRequest(service="fz-api"), timeout=10)
    yield {
        "ResolveEndpoints": [
            pb.ResolveEndpointsRequest(service="fz-api"),
            pb.ResolveEndpointsRequest(
                service="fz-web",
                namespace="default",
                health=[PASSING, registry_pb2.HEALTH_STATUS_CRITICAL],
            ),
        ],
        "PickEndpoint": [
            pb.PickEndpointRequest(service="fz-api", key="user-1"),
            pb.PickEndpointRequest(service="fz-web"),
        ],
        "WatchEndpoints": [pb.WatchEndpointsRequest(service="fz-api")],
        "UpdateTTL": [
            pb.UpdateTTLRequest(service="fz-ttl", check="ttl", status=PASSING, note="ok"),
            pb.UpdateTTLRequest(
                service="fz-ttl",
                instance_id="fz-node-fz-ttl-9",
                check="ttl",
                status=registry_pb2.HEALTH_STATUS_WARNING,
            ),
        ],
        "ReportResult": [
            pb.ReportResultRequest(pick_id=pick.pick_id, latency_seconds=0.01),
            pb.ReportResultRequest(pick_id="fz-no-such-pick", failed=True),
        ],
    }


def still_works(stack: Stack) -> None:
    local = sidecar_pb2_grpc.SidecarServiceStub(stack.served.channel)
    resolved = local.ResolveEndpoints(pb.ResolveEndpointsRequest(service="fz-api"), timeout=10)
    assert sorted(e.id for e in resolved.endpoints) == ["fz-api-1", "fz-api-2"], resolved
    pick = local.PickEndpoint(pb.PickEndpointRequest(service="fz-api"), timeout=10)
    assert pick.endpoint.id in ("fz-api-1", "fz-api-2"), pick
    local.ReportResult(pb.ReportResultRequest(pick_id=pick.pick_id), timeout=10)
    local.UpdateTTL(pb.UpdateTTLRequest(service="fz-ttl", check="ttl", status=PASSING), timeout=10)


@pytest.mark.timeout(time_limit(90))
@pytest.mark.parametrize("rpc", RPCS, ids=str)
def test_sidecar_rpc(stack: Stack, seeds: Seeds, rpc: Rpc, request: pytest.FixtureRequest) -> None:
    served = stack.served
    with served.bounded(lambda: still_works(stack)):

        @fuzz_settings(30)
        @given(requests(rpc.request, seeds[rpc.name]))
        def one(request: Message | bytes) -> None:
            step_over(rpc, request)
            timeout = 1.0 if rpc.server_streaming else 5.0
            outcome = call(served.channel, rpc, request, timeout=timeout, max_responses=1)
            check_outcome(outcome, exhausted_ok=rpc.name == "WatchEndpoints", server=served)
            served.assert_serving()

        run(one, request)
