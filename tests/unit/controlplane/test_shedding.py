"""Spreading sidecar streams: the share rule, and the spreader over the memory store."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator

import pytest

from controlplane.agent import REPLICAS_PREFIX, SHED_REASON, LoadSpreader, streams_to_shed
from controlplane.store import MemoryStore
from tests.util import assert_eventually, assert_stays


@pytest.mark.parametrize(
    ("mine", "others", "batch", "expected"),
    [
        (10, [], 5, 0),  # alone: everything is its share
        (10, [0], 3, 3),  # fair 5, limit 8.5: shed, at most a batch
        (10, [0], 10, 5),  # ... and no more than back to its share
        (8, [2], 10, 0),  # within 1.5 x share + 1
        (9, [1], 10, 4),
        (2, [0], 10, 0),  # small numbers: the +1 keeps 2 vs 0 from ping-ponging
        (4, [0], 10, 0),
        (5, [0], 10, 3),
        (100, [50, 50], 10, 0),
        (200, [50, 50], 10, 10),
        (0, [10], 10, 0),
        (6, [2, 1], 0, 0),  # batch 0: never
    ],
)
def test_a_replica_sheds_only_far_above_its_share(
    mine: int, others: list[int], batch: int, expected: int
) -> None:
    assert streams_to_shed(mine, others, batch=batch) == expected


class FakeStreams:
    """Stands in for the agent servicer: a count of streams, and sheds recorded."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.shed_calls: list[str] = []

    @property
    def stream_count(self) -> int:
        return self.count

    def shed(self, count: int, reason: str, *, min_age: float, rng: random.Random) -> list[str]:
        taken = min(count, self.count)
        self.count -= taken
        self.shed_calls.extend([reason] * taken)
        return [f"n{i}" for i in range(taken)]


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    async with MemoryStore() as s:
        yield s


async def entries(store: MemoryStore) -> dict[str, int]:
    result = await store.range(REPLICAS_PREFIX)
    return {kv.key[len(REPLICAS_PREFIX) :]: json.loads(kv.value)["streams"] for kv in result.kvs}


async def test_each_replica_publishes_its_count_and_removes_it_on_close(
    store: MemoryStore,
) -> None:
    a, b = FakeStreams(4), FakeStreams(3)
    spread_a = LoadSpreader(store, a, "a", interval=0.05, batch=0)
    spread_b = LoadSpreader(store, b, "b", interval=0.05, batch=0)
    await spread_a.start()
    await spread_b.start()
    try:

        async def published() -> None:
            assert await entries(store) == {"a": 4, "b": 3}

        await assert_eventually(published)
        a.count = 6

        async def updated() -> None:
            assert await entries(store) == {"a": 6, "b": 3}

        await assert_eventually(updated)
        await spread_b.close()
        assert await entries(store) == {"a": 6}
    finally:
        await spread_a.close()
        await spread_b.close()
    assert await entries(store) == {}


async def test_a_crashed_replicas_entry_runs_out(store: MemoryStore) -> None:
    spreader = LoadSpreader(store, FakeStreams(1), "gone", interval=0.1, batch=0)
    await spreader.start()
    await assert_eventually(lambda: _nonempty(store))
    await spreader.close(revoke=False)

    async def expired() -> None:
        assert await entries(store) == {}

    await assert_eventually(expired, timeout=5)


async def _nonempty(store: MemoryStore) -> None:
    assert await entries(store)


async def test_the_busy_replica_sheds_toward_the_idle_one(store: MemoryStore) -> None:
    busy, idle = FakeStreams(20), FakeStreams(0)
    spreaders = [
        LoadSpreader(store, busy, "busy", interval=0.05, batch=3, rng=random.Random(1)),
        LoadSpreader(store, idle, "idle", interval=0.05, batch=3, rng=random.Random(2)),
    ]
    for spreader in spreaders:
        await spreader.start()
    try:
        # The fake does not move shed streams anywhere, so the total shrinks: the
        # busy one sheds in batches until it holds no more than 0.75 x itself + 1.
        await assert_eventually(lambda: _check(busy.count <= 4), timeout=10)
        await asyncio.sleep(0.2)  # the last batch is spread over half a period (25 ms)
        settled = busy.count
        await assert_stays(lambda: _check(busy.count == settled), duration=0.3)
        assert set(busy.shed_calls) == {SHED_REASON}
        assert idle.shed_calls == []
        assert spreaders[0].shed_total == len(busy.shed_calls)
    finally:
        for spreader in spreaders:
            await spreader.close()


async def test_nothing_is_shed_while_inactive(store: MemoryStore) -> None:
    busy = FakeStreams(20)
    others = LoadSpreader(store, FakeStreams(0), "idle", interval=0.05, batch=0)
    spreader = LoadSpreader(store, busy, "busy", interval=0.05, batch=5, active=lambda: False)
    await others.start()
    await spreader.start()
    try:
        await assert_eventually(lambda: _entries_are(store, {"busy": 20, "idle": 0}))
        await assert_stays(lambda: _check(busy.shed_calls == []), duration=0.3)
    finally:
        await spreader.close()
        await others.close()


async def _entries_are(store: MemoryStore, expected: dict[str, int]) -> None:
    assert await entries(store) == expected


def _check(condition: bool) -> None:
    assert condition
