"""Fuzzing every RPC of ``ecosystem.v1.RegistryService`` on a real control plane.

Each example sends one generated request (a message drawn from the request
type's descriptor, a valid seed with a few fields overwritten, or a seed's
bytes mutated) and checks: no INTERNAL or UNKNOWN, small error details, the
process alive and SERVING, and, for the writes, that a call that failed left
the store revision where it was (no partial write). After each test a normal
register and get still work and the process's memory grew within the bound.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ecosystem.v1 import registry_pb2
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.findings import step_over
from tests.fuzz.profiles import fuzz_settings, run, time_limit
from tests.fuzz.protos import requests
from tests.fuzz.rpc import Outcome, Rpc, call, check_outcome, rpcs
from tests.fuzz.stack import Plane

pytestmark = pytest.mark.fuzz

pb = registry_pb2
RPCS = rpcs(pb.DESCRIPTOR.services_by_name["RegistryService"])
# Calls that write: one that fails must leave the store revision unchanged.
WRITES = {"RegisterInstance", "DeregisterInstance", "KeepAlive", "RevokeLease"}
EXAMPLES = {"Watch": 15}
DEFAULT_EXAMPLES = 30

Seeds = dict[str, list[Message]]
# What the module's control plane holds from the start: (namespace, service, id).
SEEDED = {
    ("default", "fz-web", "fz-1"),
    ("default", "fz-web", "fz-2"),
    ("fz-ns", "fz-api", "fz-1"),
    ("default", "fz-web", "fz-eph"),
}


def instance(**fields: object) -> registry_pb2.Instance:
    values: dict[str, object] = {
        "id": "fz-1",
        "service": "fz-web",
        "address": "10.0.0.1",
        "port": 8080,
        "tags": ["v1", "blue"],
        "metadata": {"owner": "fz", "tier": "web"},
        "weight": 10,
        "health": pb.HEALTH_STATUS_PASSING,
        "checks": [pb.CheckStatus(name="http", status=pb.HEALTH_STATUS_PASSING, output="ok")],
    }
    values.update(fields)
    return pb.Instance(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def seeds(plane: Plane) -> Iterator[Seeds]:
    """Valid requests of each RPC, naming what the module's control plane holds."""
    registry = plane.registry
    plane.register("fz-web", "fz-1", 8080)
    plane.register("fz-web", "fz-2", 8081, tags=["v2"], zone="z1")
    plane.register("fz-api", "fz-1", 9090, namespace="fz-ns")
    held = registry.RegisterInstance(
        pb.RegisterInstanceRequest(
            instance=instance(id="fz-eph", liveness=pb.LIVENESS_EPHEMERAL),
            lease_ttl_seconds=3600,
        ),
        timeout=10,
    )
    lease = held.lease_id
    services_page = registry.ListServices(pb.ListServicesRequest(page_size=1), timeout=10)
    instances_page = registry.ListInstances(pb.ListInstancesRequest(page_size=1), timeout=10)
    service_page = registry.GetService(pb.GetServiceRequest(name="fz-web", page_size=1), timeout=10)
    selector = pb.InstanceSelector(service="fz-web", tags=["v1"], health=[pb.HEALTH_STATUS_PASSING])
    yield {
        "RegisterInstance": [
            pb.RegisterInstanceRequest(instance=instance()),
            pb.RegisterInstanceRequest(
                instance=instance(id="fz-3", liveness=pb.LIVENESS_EPHEMERAL), lease_ttl_seconds=30
            ),
            pb.RegisterInstanceRequest(
                instance=instance(id="fz-4", liveness=pb.LIVENESS_EPHEMERAL), lease_id=lease
            ),
            pb.RegisterInstanceRequest(instance=instance(id="fz-5"), expected_revision=0),
        ],
        "DeregisterInstance": [
            pb.DeregisterInstanceRequest(service="fz-web", id="fz-2"),
            pb.DeregisterInstanceRequest(service="fz-api", namespace="fz-ns", id="fz-1"),
        ],
        "KeepAlive": [pb.KeepAliveRequest(lease_id=lease)],
        "RevokeLease": [pb.RevokeLeaseRequest(lease_id=lease)],
        "GetService": [
            pb.GetServiceRequest(name="fz-web"),
            pb.GetServiceRequest(
                name="fz-web", page_size=1, page_token=service_page.next_page_token
            ),
        ],
        "ListServices": [
            pb.ListServicesRequest(namespace="fz-ns"),
            pb.ListServicesRequest(page_size=1, page_token=services_page.next_page_token),
        ],
        "ListInstances": [
            pb.ListInstancesRequest(selector=selector),
            pb.ListInstancesRequest(page_size=1, page_token=instances_page.next_page_token),
        ],
        "Watch": [
            pb.WatchRequest(selector=selector, progress_interval_ms=100),
            pb.WatchRequest(since_revision=held.revision, progress_interval_ms=100),
        ],
    }


def _watch_settled(response: Message) -> bool:
    assert isinstance(response, pb.WatchResponse)
    settled = {pb.WATCH_EVENT_TYPE_SNAPSHOT_END, pb.WATCH_EVENT_TYPE_PROGRESS}
    return any(event.type in settled for event in response.events)


def _clean_up(plane: Plane, seeds: Seeds, outcome: Outcome) -> None:
    """Removes what a generated registration created: its lease (so that no lease
    expires in the middle of a later example and moves the revision there) or
    the instance itself, so that the registry, and the memory bound, do not
    grow with the number of examples. The seeded instances stay."""
    held = {m.lease_id for m in seeds["KeepAlive"] if isinstance(m, pb.KeepAliveRequest)}
    for response in outcome.responses:
        if not isinstance(response, pb.RegisterInstanceResponse):
            continue
        registered = response.instance
        if response.lease_id and response.lease_id not in held:
            plane.registry.RevokeLease(
                pb.RevokeLeaseRequest(lease_id=response.lease_id), timeout=10
            )
        elif (registered.namespace, registered.service, registered.id) not in SEEDED:
            plane.registry.DeregisterInstance(
                pb.DeregisterInstanceRequest(
                    service=registered.service,
                    namespace=registered.namespace,
                    id=registered.id,
                ),
                timeout=10,
            )


@pytest.mark.timeout(time_limit(120))
@pytest.mark.parametrize("rpc", RPCS, ids=str)
def test_registry_rpc(plane: Plane, seeds: Seeds, rpc: Rpc, request: pytest.FixtureRequest) -> None:
    with plane.served.bounded(plane.still_works):

        @fuzz_settings(EXAMPLES.get(rpc.name, DEFAULT_EXAMPLES))
        @given(st.data())
        def one(data: st.DataObject) -> None:
            request = data.draw(requests(rpc.request, seeds[rpc.name]), label="request")
            step_over(rpc, request)
            before = plane.revision() if rpc.name in WRITES else None
            # A watch that has nothing to say is cut after a second.
            timeout = 1.0 if rpc.server_streaming else 5.0
            outcome = call(plane.served.channel, rpc, request, timeout=timeout, stop=_watch_settled)
            check_outcome(outcome, exhausted_ok=rpc.name == "Watch", server=plane.served)
            if before is not None and not outcome.ok:
                assert plane.revision() == before, f"{outcome.code.name} yet the store changed"
            _clean_up(plane, seeds, outcome)
            plane.served.assert_serving()

        run(one, request)
