"""The agent stream's validators, budgets, update parts and pages, without sockets."""

from __future__ import annotations

import pytest
from ecosystem.v1 import agent_pb2 as apb
from ecosystem.v1 import registry_pb2 as pb

from controlplane.agent._chunks import update_parts
from controlplane.agent._limits import (
    AgentLimits,
    StreamGate,
    TokenBucket,
    message_cost,
    peer_host,
)
from controlplane.agent._listing import PAGE_BYTES, Source, bounded, merge_page, page_request
from controlplane.agent._validation import (
    AGENT_LIMITS,
    ack_violations,
    health_violations,
    hello_violations,
    size_violation,
    subscribe_violations,
)
from sdk.agent._chunks import UpdateAssembler
from serving.errors import InvalidArgumentError
from serving.paging import page_token


def fields(problems: list) -> set[str]:  # type: ignore[type-arg]
    return {p.field for p in problems}


def test_a_good_hello_passes() -> None:
    hello = apb.Hello(
        node=apb.Node(id="web-1", zone="eu-1a", address="127.0.0.1:7410", metadata={"v": "1"}),
        session_id="0123abcd",
        grace_seconds=3600,
        deregister_critical_after_seconds=7 * 24 * 3600,
    )
    assert hello_violations(hello) == []


def test_hello_fields_are_named() -> None:
    hello = apb.Hello(
        node=apb.Node(
            id="bad id",
            zone="EU",
            address="a\nb",
            metadata={"-x": "v", "ok": "v" * 2000},
        ),
        session_id="../etc",  # not a session id
        grace_seconds=3601,
        deregister_critical_after_seconds=-1,
        applied_version=-1,
        token="t" * 5000,
    )
    assert fields(hello_violations(hello)) == {
        "hello.node.id",
        "hello.node.zone",
        "hello.node.address",
        'hello.node.metadata["-x"]',
        'hello.node.metadata["ok"]',
        "hello.session_id",
        "hello.grace_seconds",
        "hello.deregister_critical_after_seconds",
        "hello.applied_version",
        "hello.token",
    }


def test_subscribe_limits() -> None:
    many = apb.Subscribe(services=[apb.ServiceRef(name=f"s{i}") for i in range(1001)])
    assert fields(subscribe_violations(many)) == {"subscribe.services"}
    most = apb.Subscribe(services=[apb.ServiceRef(name=f"s{i}") for i in range(1000)])
    assert subscribe_violations(most) == []
    twice = apb.Subscribe(
        services=[apb.ServiceRef(name="a"), apb.ServiceRef(name="a", namespace="default")]
    )
    assert fields(subscribe_violations(twice)) == {"subscribe.services[1]"}


def test_ack_and_health_limits() -> None:
    assert ack_violations(apb.Ack(version=3, nonce="n" * 64, error="e" * 1024)) == []
    assert fields(ack_violations(apb.Ack(nonce="n" * 65, error="e" * 1025))) == {
        "ack.nonce",
        "ack.error",
    }
    report = apb.HealthReport(
        service="Web", instance_id="", health=7, checks=[pb.CheckStatus(name="")]
    )
    assert fields(health_violations(report)) == {
        "health.service",
        "health.instance_id",
        "health.health",
        "health.checks[0].name",
    }


def test_size_violation_names_the_message() -> None:
    assert size_violation("sync", AGENT_LIMITS.message_bytes) == []
    (problem,) = size_violation("sync", AGENT_LIMITS.message_bytes + 1)
    assert problem.field == "sync" and "parts" in problem.description


def test_message_cost_does_not_charge_past_the_limits() -> None:
    huge = apb.ConnectRequest(sync=apb.SyncInstances(instances=[pb.Instance()] * 100_000))
    assert message_cost(huge, 0) == 1 + AGENT_LIMITS.sync_instances
    assert message_cost(apb.ConnectRequest(ping=apb.Ping()), 4096) == 5


def test_token_bucket_holds_to_the_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(10.0, 5, clock=lambda: now[0])
    assert [bucket.take(1) for _ in range(5)] == [0.0] * 5
    assert bucket.take(1) == pytest.approx(0.1)  # a debt paid by waiting
    now[0] = 0.1
    assert not bucket.try_take(1)
    now[0] = 10.0
    assert bucket.try_take(5) and not bucket.try_take(1)


def test_stream_gate_caps_in_total_and_per_peer() -> None:
    limits = AgentLimits(max_streams=3, max_streams_per_peer=2)
    gate = StreamGate()
    assert gate.admit("a", limits) == gate.admit("a", limits) == ""
    assert "from a" in gate.admit("a", limits)
    assert gate.admit("b", limits) == ""
    assert "this replica" in gate.admit("c", limits)
    gate.release("a")
    assert gate.admit("c", limits) == "" and gate.total == 3
    with pytest.raises(ValueError):
        AgentLimits(rate=0)


@pytest.mark.parametrize(
    ("peer", "host"),
    [("ipv4:10.0.0.7:51234", "10.0.0.7"), ("ipv6:[::1]:5", "::1"), ("unix:/tmp/s", "unix:/tmp/s")],
)
def test_peer_host(peer: str, host: str) -> None:
    assert peer_host(peer) == host


def inst(i: int, service: str = "big", output: int = 30_000) -> pb.Instance:
    return pb.Instance(
        id=f"i{i}",
        service=service,
        address="10.0.0.1",
        port=80,
        checks=[pb.CheckStatus(name="c", output="x" * output)],
    )


def test_update_parts_stay_within_the_limit_and_add_up() -> None:
    services = [
        (("default", "big"), [inst(i) for i in range(10)]),
        (("default", "empty"), []),
        (("default", "small"), [inst(1, "small", 10)]),
    ]
    parts = list(update_parts(7, "n-1", True, services, 100_000))
    assert len(parts) > 2
    assert all(p.ByteSize() <= 100_000 for p in parts)
    assert [p.more for p in parts] == [True] * (len(parts) - 1) + [False]
    assert {(p.version, p.nonce, p.full) for p in parts} == {(7, "n-1", True)}
    assembler = UpdateAssembler()
    whole = [assembler.add(p) for p in parts]
    assert whole[:-1] == [None] * (len(parts) - 1)
    update = whole[-1]
    assert update is not None and not update.more
    assert [(s.service.name, [i.id for i in s.instances]) for s in update.services] == [
        ("big", [f"i{i}" for i in range(10)]),
        ("empty", []),
        ("small", ["i1"]),
    ]


def test_an_instance_larger_than_the_limit_takes_a_part_of_its_own() -> None:
    parts = list(update_parts(1, "n", False, [(("default", "s"), [inst(0), inst(1)])], 1_000))
    assert [len(p.services[0].instances) for p in parts] == [1, 1]


def test_an_update_fits_in_one_part_when_it_can() -> None:
    (part,) = update_parts(1, "n", False, [(("default", "s"), [inst(0, output=10)])], 1_000_000)
    assert not part.more and len(part.services[0].instances) == 1


def test_page_requests_are_checked() -> None:
    assert page_request(apb.ListNodesRequest()).size == 100
    assert page_request(apb.ListNodesRequest(page_token=page_token("n-7"))).after == "n-7"
    for bad in (
        apb.ListNodesRequest(page_size=1001),
        apb.ListNodesRequest(page_token="%%%"),
        apb.ListNodesRequest(page_token=page_token("not a node!")),
    ):
        with pytest.raises(InvalidArgumentError):
            page_request(bad)


def node(id: str, size: int = 0) -> apb.NodeStatus:
    return apb.NodeStatus(node=apb.Node(id=id, metadata={"m": "x" * size} if size else {}))


def test_a_page_merges_sources_and_stops_where_a_partial_source_does() -> None:
    store = Source([node("a"), node("b"), node("d"), node("f")])
    peer = Source([node("b"), node("c")], complete=False)
    page, token = merge_page([store, peer], 10)
    assert [n.node.id for n in page] == ["a", "b", "c"]  # d and f wait for the peer's next page
    assert token == page_token("c")
    page, token = merge_page([store], 2)
    assert [n.node.id for n in page] == ["a", "b"] and token == page_token("b")
    page, token = merge_page([store], 10)
    assert len(page) == 4 and token == ""


def test_a_page_stops_before_its_byte_bound() -> None:
    nodes = [node(f"n{i}", 100_000) for i in range(30)]
    page, more = bounded(nodes, 1000)
    assert more and sum(n.ByteSize() for n in page) <= PAGE_BYTES
    assert bounded([node("huge", 2 * PAGE_BYTES)], 10)[0], "at least one node per page"
