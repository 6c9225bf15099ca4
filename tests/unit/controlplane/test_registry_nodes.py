"""The registry's writes for sidecar sessions and the reaper, over the memory
store: a node's sync is one transaction, removals are guarded by what was
seen, and nothing that is already stored is written again."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from ecosystem.v1 import registry_pb2 as pb

from controlplane.registry import Registry, decode_instance, instance_key
from controlplane.store import MemoryStore, PutOp


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    async with MemoryStore() as s:
        yield s


def inst(id: str, node: str = "n1", port: int = 80) -> pb.Instance:
    return pb.Instance(
        id=id,
        service="web",
        namespace="default",
        node=node,
        address="10.0.0.1",
        port=port,
        liveness=pb.LIVENESS_EPHEMERAL,
    )


async def stored(store: MemoryStore, node: str) -> dict[str, pb.Instance]:
    kvs = (await store.range(instance_key("default", "web", ""))).kvs
    found = {kv.key: decode_instance(kv) for kv in kvs}
    return {k: i for k, i in found.items() if i.node == node}


async def test_a_sync_is_one_revision_and_a_repeat_writes_nothing(store: MemoryStore) -> None:
    registry = Registry(store)
    before = store.revision
    first = await registry.sync_node("n1", [inst("a"), inst("b"), inst("c")], {})
    assert (first.created, first.updated, first.removed) == (3, 0, 0)
    assert first.revision == before + 1

    current = await stored(store, "n1")
    again = await registry.sync_node("n1", [inst("a"), inst("b"), inst("c")], current)
    assert (again.created, again.updated, again.removed) == (0, 0, 0)
    assert again.revision == store.revision == first.revision

    changed = await registry.sync_node("n1", [inst("a", port=81), inst("b")], current)
    assert (changed.created, changed.updated, changed.removed) == (0, 1, 1)
    assert changed.revision == first.revision + 1
    after = await stored(store, "n1")
    assert sorted(i.id for i in after.values()) == ["a", "b"]
    assert after[instance_key("default", "web", "a")].port == 81


async def test_a_removal_waits_when_the_instance_changed_since_it_was_seen(
    store: MemoryStore,
) -> None:
    registry = Registry(store)
    await registry.sync_node("n1", [inst("a"), inst("b")], {})
    seen = await stored(store, "n1")
    await registry.put_node_instance(inst("b", port=90))  # e.g. a health report meanwhile

    result = await registry.sync_node("n1", [inst("a", port=81)], seen)
    assert result.removed == 0  # left for the next sync
    after = await stored(store, "n1")
    assert {i.id: i.port for i in after.values()} == {"a": 81, "b": 90}


async def test_a_sync_leaves_other_nodes_alone(store: MemoryStore) -> None:
    registry = Registry(store)
    await registry.sync_node("n2", [inst("x", node="n2")], {})
    result = await registry.sync_node("n1", [], await stored(store, "n2"))
    assert result.removed == 0
    assert list(await stored(store, "n2"))
    with pytest.raises(ValueError, match="node"):
        await registry.sync_node("n1", [inst("y", node="n2")], {})


async def test_a_guarded_batch_writes_only_if_nothing_seen_changed(store: MemoryStore) -> None:
    registry = Registry(store)
    await registry.sync_node("n1", [inst("a"), inst("b")], {})
    seen = list((await stored(store, "n1")).values())
    a, b = sorted(seen, key=lambda i: i.id)
    critical = pb.Instance()
    critical.CopyFrom(a)
    critical.health = pb.HEALTH_STATUS_CRITICAL
    record = PutOp("/ecosystem/v1/nodes/n1", b"lost")
    before = store.revision

    assert await registry.write_if_unchanged(seen, put=[critical], delete=[b], also=[record])
    assert store.revision == before + 1
    after = await stored(store, "n1")
    assert [(i.id, i.health, i.mod_revision) for i in after.values()] == [
        ("a", pb.HEALTH_STATUS_CRITICAL, before + 1)
    ]
    assert (await store.get(record.key)) is not None

    # The same batch again: what it saw has changed, so nothing is written.
    assert not await registry.write_if_unchanged(seen, delete=[a])
    assert store.revision == before + 1
    raw = PutOp(instance_key("default", "web", "z"), b"")
    with pytest.raises(ValueError, match="instances"):
        await registry.write_if_unchanged([], also=[raw])
