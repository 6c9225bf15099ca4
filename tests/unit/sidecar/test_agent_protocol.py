"""The SDK side of the agent stream without sockets: update checks and the outbox."""

from __future__ import annotations

import pytest
from ecosystem.v1 import agent_pb2

from sdk import EndpointUpdate, Instance, ServiceEndpoints, ServiceRef
from sdk.agent._outbox import MAX_ACKS, AgentOutbox
from sdk.agent._types import check_update


def update(*instances: Instance, service: str = "orders") -> EndpointUpdate:
    return EndpointUpdate(1, "n1", (ServiceEndpoints(ServiceRef(service), tuple(instances)),))


def inst(id: str = "a", address: str = "10.0.0.1", port: int = 80) -> Instance:
    return Instance(id=id, service="orders", address=address, port=port)


def test_a_well_formed_update_passes() -> None:
    check_update(update(inst("a"), inst("b")))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (update(inst(address="")), r"services\[0\].instances\[0\].address: .* no address"),
        (update(inst(port=0)), r"services\[0\].instances\[0\].port"),
        (update(inst(id="")), r"services\[0\].instances\[0\].id: empty"),
        (update(inst("a"), inst("a")), r"instances\[1\].id: 'a' appears twice"),
        (update(inst(), service="users"), r"instances\[0\].service"),
        (
            EndpointUpdate(1, "n", (ServiceEndpoints(ServiceRef(""), ()),)),
            r"services\[0\].service: no service name",
        ),
        (
            EndpointUpdate(
                1,
                "n",
                (
                    ServiceEndpoints(ServiceRef("orders"), ()),
                    ServiceEndpoints(ServiceRef("orders", "default"), ()),
                ),
            ),
            r"services\[1\].service: orders appears twice",
        ),
    ],
)
def test_a_malformed_update_names_what_is_wrong(bad: EndpointUpdate, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_update(bad)


def test_update_round_trips_through_the_wire_form() -> None:
    original = update(inst("a"), inst("b", port=81))
    assert EndpointUpdate.from_proto(original.to_proto()) == original


def drain(outbox: AgentOutbox) -> list[str]:
    kinds = []
    while (m := outbox.next(agent_pb2.SyncInstances, agent_pb2.Subscribe)) is not None:
        kinds.append(m.WhichOneof("message"))
    return kinds


def test_outbox_order_and_coalescing() -> None:
    outbox = AgentOutbox(max_reports=10)
    outbox.report(agent_pb2.HealthReport(instance_id="x"))
    outbox.ack(agent_pb2.Ack(version=1))
    outbox.subscribe()
    outbox.sync()
    outbox.sync()
    # One sync (which carries current health, so the report is moot), then the rest.
    assert drain(outbox) == ["sync", "subscribe", "ack"]


def test_outbox_is_bounded() -> None:
    outbox = AgentOutbox(max_reports=3)
    for i in range(MAX_ACKS + 5):
        outbox.ack(agent_pb2.Ack(version=i))
    for _ in range(3):
        outbox.report(agent_pb2.HealthReport())
    assert drain(outbox) == ["ack"] * MAX_ACKS + ["health"] * 3
    for _ in range(4):
        outbox.report(agent_pb2.HealthReport())
    # The fourth report overflowed: it and every pending one became one full sync.
    assert drain(outbox) == ["sync"]
    assert outbox.reports_dropped == 4


def test_reset_clears_what_the_last_stream_queued() -> None:
    outbox = AgentOutbox(max_reports=3)
    outbox.ack(agent_pb2.Ack())
    outbox.report(agent_pb2.HealthReport())
    outbox.reset()
    assert drain(outbox) == ["sync", "subscribe"]
