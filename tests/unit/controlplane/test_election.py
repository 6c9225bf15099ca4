"""Leader election over the memory store, with short leases and no sockets."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from controlplane.leader import LEADER_KEY, Election
from controlplane.store import MemoryStore, StoreUnavailable
from tests.util import assert_eventually, assert_stays


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    async with MemoryStore() as s:
        yield s


class Timeline:
    """Records when each candidate's leader-only work runs, to check that terms
    never overlap."""

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.starts: list[str] = []
        self.stops: list[str] = []
        self.stopped_at: list[float] = []
        self.overlaps = 0

    def work(self, name: str) -> Callable[[], Any]:
        async def run() -> None:
            if self.running:
                self.overlaps += 1
            self.running.add(name)
            self.starts.append(name)
            try:
                await asyncio.Event().wait()
            finally:
                self.running.discard(name)
                self.stops.append(name)
                self.stopped_at.append(time.monotonic())

        return run


@contextlib.asynccontextmanager
async def candidates(
    store: MemoryStore, names: list[str], timeline: Timeline, **options: Any
) -> AsyncIterator[dict[str, Election]]:
    elections = {name: Election(store, name, **options) for name in names}
    for name, election in elections.items():
        election.while_leader(f"work-{name}", timeline.work(name))
    try:
        for election in elections.values():
            await election.start()
        yield elections
    finally:
        for election in elections.values():
            await election.close()


def leaders(elections: dict[str, Election]) -> list[str]:
    return [name for name, e in elections.items() if e.is_leader]


async def one_leader(elections: dict[str, Election], timeline: Timeline) -> str:
    def check() -> str:
        found = leaders(elections)
        assert len(found) == 1, found
        assert timeline.running == set(found)
        return found[0]

    return await assert_eventually(check, timeout=10)


async def test_one_leader_among_three_and_everyone_knows_it(store: MemoryStore) -> None:
    timeline = Timeline()
    async with candidates(store, ["a", "b", "c"], timeline, ttl=5) as elections:
        leader = await one_leader(elections, timeline)

        def all_know() -> None:
            assert {e.leader for e in elections.values()} == {leader}

        await assert_eventually(all_know)
        stored = await store.get(LEADER_KEY)
        assert stored is not None and stored.value.decode() == leader
        assert stored.lease == elections[leader].lease_id
        await assert_stays(  # stays settled
            lambda: _assert(leaders(elections) == [leader] and timeline.starts == [leader]),
            duration=0.3,
        )
    assert timeline.running == set() and timeline.overlaps == 0


async def test_a_leader_that_closes_hands_over_at_once(store: MemoryStore) -> None:
    timeline = Timeline()
    # A TTL far longer than the test: only the revoke on close can explain the takeover.
    async with candidates(store, ["a", "b", "c"], timeline, ttl=30) as elections:
        first = await one_leader(elections, timeline)
        await elections[first].close()
        assert timeline.stops == [first]
        second = await one_leader(elections, timeline)
        assert second != first
        await asyncio.sleep(0.1)
        assert elections[first].leader == first or not elections[first].is_leader
    assert timeline.overlaps == 0


async def test_a_leader_whose_lease_is_lost_stops_its_work(store: MemoryStore) -> None:
    timeline = Timeline()
    async with candidates(store, ["a"], timeline, ttl=30) as elections:
        await one_leader(elections, timeline)
        election = elections["a"]
        lease = election.lease_id
        await store.revoke(lease)  # as if it ran out during a long pause
        await assert_eventually(lambda: _assert(timeline.stops == ["a"]), timeout=2)
        # It campaigns again with a new lease and leads a second term.
        await assert_eventually(lambda: _assert(election.is_leader and election.terms == 2))
        assert election.lease_id not in (0, lease)
        assert timeline.starts == ["a", "a"] and timeline.overlaps == 0


class FlakyStore(MemoryStore):
    """A memory store whose lease renewals fail while ``unreachable`` is set,
    as an etcd the replica cannot reach would."""

    unreachable = False
    renewed_at = 0.0

    async def keepalive(self, lease_id: int) -> float:
        if self.unreachable:
            raise StoreUnavailable("etcd LeaseKeepAlive: connection refused")
        asked = time.monotonic()
        ttl = await super().keepalive(lease_id)
        self.renewed_at = asked
        return ttl


async def test_a_leader_that_cannot_renew_steps_down_before_its_lease_ends() -> None:
    timeline = Timeline()
    async with FlakyStore() as store, candidates(store, ["a"], timeline, ttl=1.0) as elections:
        election = elections["a"]
        await one_leader(elections, timeline)
        await assert_eventually(lambda: _assert(store.renewed_at > 0))  # renewed at least once
        store.unreachable = True
        await assert_eventually(lambda: _assert(timeline.stops == ["a"]), timeout=3)
        # It stepped down while the store still held its lease: no overlap possible.
        assert store.renewed_at > 0
        assert timeline.stopped_at[0] < store.renewed_at + 1.0
        store.unreachable = False
        await assert_eventually(lambda: _assert(election.is_leader), timeout=5)


async def test_a_crashed_leader_is_replaced_after_its_ttl(store: MemoryStore) -> None:
    timeline = Timeline()
    async with candidates(store, ["a", "b"], timeline, ttl=0.6) as elections:
        first = await one_leader(elections, timeline)
        loop = asyncio.get_running_loop()
        crashed = loop.time()
        await elections[first].close(revoke=False)  # no hand-over: the lease runs out
        second = await one_leader(elections, timeline)
        waited = loop.time() - crashed
        assert second != first
        assert 0.3 < waited < 5, waited
    assert timeline.overlaps == 0


async def test_stop_ends_the_work_and_keeps_the_lease_until_close(store: MemoryStore) -> None:
    """A stopping replica ends its leader-only work first (before it closes
    what the work uses), and still holds the office until it gives it up."""
    timeline = Timeline()
    async with candidates(store, ["a"], timeline, ttl=5) as elections:
        election = elections["a"]
        await one_leader(elections, timeline)
        await election.stop()
        assert timeline.stops == ["a"] and not election.is_leader
        stored = await store.get(LEADER_KEY)
        assert stored is not None and stored.lease == election.lease_id
        await election.close()
        assert await store.get(LEADER_KEY) is None
        await election.close()  # idempotent


async def test_failing_work_is_started_again_while_leading(store: MemoryStore) -> None:
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise RuntimeError("boom")
        await asyncio.Event().wait()

    election = Election(store, "a", ttl=5, retry=0.05)
    election.while_leader("flaky", flaky)
    async with election:
        await assert_eventually(lambda: _assert(runs == 3 and election.is_leader))
    assert not election.is_leader


async def test_misuse_is_refused(store: MemoryStore) -> None:
    with pytest.raises(ValueError):
        Election(store, "")
    with pytest.raises(ValueError):
        Election(store, "a", ttl=0)
    election = Election(store, "a", ttl=5)
    await election.start()
    with pytest.raises(RuntimeError):
        election.while_leader("late", asyncio.sleep)  # type: ignore[arg-type]
    await election.close()
    await election.close()  # idempotent
    with pytest.raises(RuntimeError):
        await election.start()


def _assert(condition: bool) -> None:
    assert condition
