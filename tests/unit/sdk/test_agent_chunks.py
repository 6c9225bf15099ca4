"""Syncs cut into parts and updates put back together, without sockets."""

from __future__ import annotations

import pytest
from ecosystem.v1 import agent_pb2 as apb
from ecosystem.v1 import registry_pb2 as pb

from sdk.agent._chunks import UpdateAssembler, UpdateTooLargeError, sync_parts


def inst(i: int, size: int = 1000, service: str = "web") -> pb.Instance:
    return pb.Instance(
        id=f"i{i}", service=service, address="10.0.0.1", port=80, metadata={"m": "x" * size}
    )


def test_a_small_sync_is_one_message() -> None:
    sync = apb.SyncInstances(instances=[inst(1)])
    assert sync_parts(sync) == [sync]


def test_a_large_sync_is_cut_into_parts_in_order() -> None:
    sync = apb.SyncInstances(instances=[inst(i, 1000) for i in range(50)])
    parts = sync_parts(sync, limit=10_000)
    assert len(parts) > 5
    assert all(p.ByteSize() <= 10_000 for p in parts)
    assert [p.more for p in parts] == [True] * (len(parts) - 1) + [False]
    assert [i.id for p in parts for i in p.instances] == [f"i{i}" for i in range(50)]


def part(nonce: str, *entries: tuple[str, list[pb.Instance]], more: bool) -> apb.EndpointUpdate:
    return apb.EndpointUpdate(
        version=5,
        nonce=nonce,
        more=more,
        services=[
            apb.ServiceEndpoints(service=apb.ServiceRef(name=name), instances=instances)
            for name, instances in entries
        ],
    )


def test_parts_add_up_and_only_a_whole_update_comes_out() -> None:
    assembler = UpdateAssembler()
    assert assembler.add(part("n1", ("a", [inst(1)]), more=True)) is None
    assert assembler.pending
    assert assembler.add(part("n1", ("a", [inst(2)]), ("b", []), more=True)) is None
    whole = assembler.add(part("n1", ("b", [inst(3, service="b")]), more=False))
    assert whole is not None and not assembler.pending
    assert [(s.service.name, [i.id for i in s.instances]) for s in whole.services] == [
        ("a", ["i1", "i2"]),
        ("b", ["i3"]),
    ]


def test_a_cut_off_update_is_dropped_for_the_next_one() -> None:
    assembler = UpdateAssembler()
    assembler.add(part("n1", ("a", [inst(1)]), more=True))
    whole = assembler.add(part("n2", ("a", [inst(9)]), more=False))
    assert whole is not None and whole.nonce == "n2"
    assert [i.id for i in whole.services[0].instances] == ["i9"]


def test_an_update_too_large_to_keep_is_refused_at_its_end() -> None:
    assembler = UpdateAssembler(max_bytes=5_000)
    for i in range(10):
        assert assembler.add(part("n1", ("a", [inst(i)]), more=True)) is None
    with pytest.raises(UpdateTooLargeError, match="at most 5000"):
        assembler.add(part("n1", ("a", [inst(99)]), more=False))
    assert not assembler.pending
    # The next one is fine.
    assert assembler.add(part("n2", ("a", [inst(1)]), more=False)) is not None
