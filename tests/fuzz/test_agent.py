"""Fuzzing ``ecosystem.v1.AgentService`` on a real control plane.

``Connect`` gets a short sequence of generated client messages, starting with
a Hello (a valid one, or one with a few fields overwritten) or with anything
else; the test half-closes its side after the last one, which ends the
session, and reads what came back. ``ListNodes`` and ``WaitForRevision`` get
one generated request each. The properties are those of every fuzz test (see
:mod:`tests.fuzz.rpc`); besides, a session opened by a Hello the server took
begins with Welcome.

The module has a control plane of its own: sessions it opens and drops keep
writing to the store for a while (grace, then removal of their instances).
"""

from __future__ import annotations

import pytest
from ecosystem.v1 import agent_pb2, registry_pb2
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.findings import step_over
from tests.fuzz.profiles import fuzz_settings, run, time_limit
from tests.fuzz.protos import requests
from tests.fuzz.rpc import Rpc, call, check_outcome, rpcs
from tests.fuzz.stack import Plane

pytestmark = pytest.mark.fuzz

pb = agent_pb2
RPCS = {rpc.name: rpc for rpc in rpcs(pb.DESCRIPTOR.services_by_name["AgentService"])}

NODES = ["fz-agent-1", "fz-agent-2", "fz.agent_3"]


def hello(node: str, **fields: object) -> agent_pb2.ConnectRequest:
    values: dict[str, object] = {
        "node": pb.Node(id=node, zone="z1", region="r1", metadata={"version": "fz"}),
        "grace_seconds": 2,
        "deregister_critical_after_seconds": 2,
    }
    values.update(fields)
    return pb.ConnectRequest(hello=pb.Hello(**values))  # type: ignore[arg-type]


HELLOS: list[Message] = [
    hello(NODES[0]),
    hello(NODES[1], applied_version=5, session_id="not-a-session"),
    hello(NODES[2], grace_seconds=0, deregister_critical_after_seconds=0),
]

FOLLOWERS: list[Message] = [
    pb.ConnectRequest(
        sync=pb.SyncInstances(
            instances=[
                registry_pb2.Instance(
                    id="fz-a-1",
                    service="fz-web",
                    address="10.0.0.9",
                    port=8080,
                    health=registry_pb2.HEALTH_STATUS_PASSING,
                    checks=[registry_pb2.CheckStatus(name="sidecar-session")],
                )
            ]
        )
    ),
    pb.ConnectRequest(
        health=pb.HealthReport(
            service="fz-web",
            instance_id="fz-a-1",
            health=registry_pb2.HEALTH_STATUS_CRITICAL,
            checks=[
                registry_pb2.CheckStatus(
                    name="http", status=registry_pb2.HEALTH_STATUS_CRITICAL, output="down"
                )
            ],
        )
    ),
    pb.ConnectRequest(subscribe=pb.Subscribe(services=[pb.ServiceRef(name="fz-web")])),
    pb.ConnectRequest(ack=pb.Ack(version=1, nonce="n-1")),
    pb.ConnectRequest(ack=pb.Ack(version=2, nonce="n-2", rejected=True, error="bad")),
    pb.ConnectRequest(ping=pb.Ping(nonce=7)),
]


@st.composite
def sessions(draw: st.DrawFn) -> list[Message | bytes]:
    """A short client stream, opening with a Hello more often than not."""
    first = draw(
        st.one_of(
            st.sampled_from(HELLOS),
            requests(pb.ConnectRequest, HELLOS),
            requests(pb.ConnectRequest, FOLLOWERS),
        )
    )
    rest = draw(st.lists(requests(pb.ConnectRequest, FOLLOWERS), max_size=5))
    return [first, *rest]


def _opened(first: Message | bytes) -> bool:
    return isinstance(first, pb.ConnectRequest) and first in HELLOS


@pytest.mark.timeout(time_limit(120))
def test_connect(plane: Plane, request: pytest.FixtureRequest) -> None:
    rpc = RPCS["Connect"]
    with plane.served.bounded(plane.still_works):

        @fuzz_settings(40)
        @given(sessions())
        def one(messages: list[Message | bytes]) -> None:
            step_over(rpc, messages)
            outcome = call(plane.served.channel, rpc, messages, timeout=3, max_responses=100)
            check_outcome(outcome, server=plane.served)
            if _opened(messages[0]) and outcome.responses:
                assert outcome.responses[0].WhichOneof("message") == "welcome", outcome
            plane.served.assert_serving()

        run(one, request)


WAIT_SEEDS: dict[str, list[Message]] = {
    "ListNodes": [pb.ListNodesRequest()],
    "WaitForRevision": [
        pb.WaitForRevisionRequest(revision=1, timeout_ms=100),
        pb.WaitForRevisionRequest(revision=2),
    ],
}


@pytest.mark.timeout(time_limit(60))
@pytest.mark.parametrize("rpc", [RPCS["ListNodes"], RPCS["WaitForRevision"]], ids=str)
def test_unary(plane: Plane, rpc: Rpc, request: pytest.FixtureRequest) -> None:
    with plane.served.bounded(plane.still_works):

        @fuzz_settings(20)
        @given(requests(rpc.request, WAIT_SEEDS[rpc.name]))
        def one(request: Message | bytes) -> None:
            step_over(rpc, request)
            # A revision not reached yet is waited for up to timeout_ms: the
            # test cuts the wait short.
            waits = rpc.name == "WaitForRevision"
            outcome = call(plane.served.channel, rpc, request, timeout=0.5 if waits else 5.0)
            check_outcome(outcome, may_wait=waits, server=plane.served)
            plane.served.assert_serving()

        run(one, request)
