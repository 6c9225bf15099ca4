"""The sync scheduler's rules with an injected clock, on the memory store:
due times from ``every`` and cron (with jitter), one run of a job at a time,
missed slots run once, paused jobs' slots skipped, a changed schedule
re-planned; a platform's run offered to the nodes of that platform until one
claims it; the run events built from store events; the job checks' lists
kept equal to the engine's."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from ecosystem.v1 import agent_pb2
from ecosystem.v1 import sync_pb2 as spb

from controlplane.agent import NODES_PREFIX
from controlplane.store import Event, EventType, KeyValue, MemoryStore
from controlplane.sync import (
    CONFLICTS,
    MODES,
    SchedulerConfig,
    SyncBook,
    SyncScheduler,
    build_run_message,
    first_slot,
    jitter,
    slots_through,
)
from controlplane.sync._book import job_key, run_key
from sidecar.sync import ConflictPolicy, Mode
from tests.util import assert_eventually

T0 = datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC).timestamp()


def every(seconds: float, name: str = "j") -> spb.SyncJob:
    return spb.SyncJob(
        name=name,
        source="file:///a",
        destination="file:///b",
        every_seconds=seconds,
        on_node="n1",
    )


def cron(expression: str, name: str = "j") -> spb.SyncJob:
    return spb.SyncJob(
        name=name, source="file:///a", destination="file:///b", cron=expression, on_node="n1"
    )


def test_every_slots() -> None:
    job = every(60)
    assert first_slot(job, T0) == T0
    assert slots_through(job, T0, T0) == slots_through(job, T0, T0 + 59.9)
    assert slots_through(job, T0, T0).covered == 1
    assert slots_through(job, T0, T0).next_slot == T0 + 60
    # Away for ten slots and a bit: one run covers eleven, the next is after now.
    late = slots_through(job, T0, T0 + 600.5)
    assert (late.covered, late.next_slot) == (11, T0 + 660)
    assert slots_through(job, T0, T0 - 1).covered == 0


def test_cron_slots() -> None:
    job = cron("0 * * * *")  # hourly, on the hour
    first = first_slot(job, T0)
    assert first == datetime(2026, 3, 1, 13, 0, tzinfo=UTC).timestamp()
    late = slots_through(job, first, first + 5 * 3600 + 10)
    assert late.covered == 6
    assert late.next_slot == first + 6 * 3600


def test_jitter_is_bounded() -> None:
    rng = random.Random(1)
    assert all(0 <= jitter(every(60), T0, rng) <= 6 for _ in range(200))
    assert all(0 <= jitter(every(86400), T0, rng) <= 30 for _ in range(200))
    assert all(0 <= jitter(cron("*/10 * * * *"), T0, rng) <= 30 for _ in range(200))
    assert max(jitter(every(86400), T0, rng) for _ in range(200)) > 1


def test_engine_vocabulary_matches() -> None:
    assert set(MODES) == {m.value for m in Mode}
    assert set(CONFLICTS) == {c.value for c in ConflictPolicy}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def book() -> AsyncIterator[SyncBook]:
    store = MemoryStore()
    await store.start()
    book = SyncBook(store)
    await book.start()
    try:
        yield book
    finally:
        await book.close()
        await store.close()


async def put_job(book: SyncBook, job: spb.SyncJob) -> None:
    await book.store.put(job_key(job.name), job.SerializeToString())
    await book.wait_for(book.store.revision)


async def step(book: SyncBook, scheduler: SyncScheduler) -> list[spb.SyncRun]:
    await scheduler.step()
    await book.wait_for(book.store.revision)
    return await book.list_runs("j", 1000)


async def finish(book: SyncBook, run: spb.SyncRun) -> None:
    run.status = spb.SYNC_RUN_STATUS_COMPLETED
    assert await book.replace_run(run) is not None
    await book.wait_for(book.store.revision)


async def test_one_run_at_a_time_and_missed_slots_once(book: SyncBook) -> None:
    clock = Clock()
    scheduler = SyncScheduler(book, SchedulerConfig(max_jitter=0), clock=clock)
    await put_job(book, every(60))
    assert await step(book, scheduler) == []  # planned: due now
    assert book.plans["j"].due == T0
    runs = await step(book, scheduler)
    assert [(r.number, r.status, r.slots, r.node) for r in runs] == [
        (1, spb.SYNC_RUN_STATUS_PENDING, 1, "n1")
    ]
    assert runs[0].spec.source == "file:///a" and runs[0].scheduled_at_ms == int(T0 * 1000)
    # Due again, but run 1 is still pending: nothing new, however long.
    clock.now = T0 + 250
    assert len(await step(book, scheduler)) == 1
    await finish(book, runs[0])
    # Once it ends, one run covers the slots that passed (60, 120, 180, 240).
    runs = await step(book, scheduler)
    assert [(r.number, r.slots) for r in runs[:1]] == [(2, 4)]
    assert book.plans["j"].slot == T0 + 300
    await finish(book, runs[0])
    clock.now = T0 + 299
    assert len(await step(book, scheduler)) == 2
    # The scheduler away for an hour: one run, not sixty.
    clock.now = T0 + 3600 + 1
    runs = await step(book, scheduler)
    assert [(r.number, r.slots) for r in runs[:1]] == [(3, 56)]
    assert scheduler.scheduled == 3


async def test_paused_slots_pass_unrun(book: SyncBook) -> None:
    clock = Clock()
    scheduler = SyncScheduler(book, SchedulerConfig(max_jitter=0), clock=clock)
    job = every(60)
    job.paused = True
    await put_job(book, job)
    for offset in (0, 0, 60, 120, 185):
        clock.now = T0 + offset
        assert await step(book, scheduler) == []
    assert book.plans["j"].slot == T0 + 240  # moved on with the slots
    job.paused = False
    await put_job(book, job)
    clock.now = T0 + 200
    assert await step(book, scheduler) == []  # resumed: the next slot, not at once
    clock.now = T0 + 240
    assert [r.slots for r in await step(book, scheduler)] == [1]


async def test_changed_schedule_is_planned_again(book: SyncBook) -> None:
    clock = Clock()
    scheduler = SyncScheduler(book, SchedulerConfig(max_jitter=0), clock=clock)
    await put_job(book, every(3600))
    await step(book, scheduler)
    await put_job(book, cron("0 0 * * *"))
    await step(book, scheduler)
    assert book.plans["j"].slot == datetime(2026, 3, 2, tzinfo=UTC).timestamp()
    assert book.plans["j"].schedule == "cron:0 0 * * *"


async def test_history_is_bounded(book: SyncBook) -> None:
    clock = Clock()
    scheduler = SyncScheduler(book, SchedulerConfig(max_jitter=0, history=3), clock=clock)
    await put_job(book, every(1))
    await step(book, scheduler)
    for i in range(5):
        clock.now = T0 + i
        runs = await step(book, scheduler)
        await finish(book, runs[0])
    assert [r.number for r in await book.list_runs("j", 1000)] == [5, 4, 3]


def _kv(run: spb.SyncRun, revision: int) -> KeyValue:
    return KeyValue(run_key(run.job, run.number), run.SerializeToString(), 1, revision, 1)


async def put_node(book: SyncBook, node: str, platform: str) -> None:
    status = agent_pb2.NodeStatus(node=agent_pb2.Node(id=node, platform=platform))
    await book.store.put(NODES_PREFIX + node, status.SerializeToString())


async def test_a_platform_run_is_offered_to_its_nodes_until_claimed(book: SyncBook) -> None:
    clock = Clock()
    config = SchedulerConfig(max_jitter=0, claim_timeout=30)
    scheduler = SyncScheduler(book, config, clock=clock)
    for node, platform in (("edge-1", "plant-7"), ("edge-2", "plant-7"), ("store-1", "depot")):
        await put_node(book, node, platform)
    watchers = {node: book.subscribe(node) for node in ("edge-1", "edge-2", "store-1")}
    job = every(60)
    job.on_node, job.on_platform = "", "plant-7"
    await put_job(book, job)
    await step(book, scheduler)
    for watcher in watchers.values():
        watcher.wake.clear()
    (run,) = await step(book, scheduler)
    assert (run.node, run.platform, run.status) == ("", "plant-7", spb.SYNC_RUN_STATUS_PENDING)
    assert (
        [r.number for r in book.runs_of("edge-1")]
        == [1]
        == [r.number for r in book.runs_of("edge-2")]
    )
    assert book.runs_of("store-1") == [] and book.runs_of("ghost") == []
    assert watchers["edge-1"].wake.is_set() and watchers["edge-2"].wake.is_set()
    assert not watchers["store-1"].wake.is_set()

    # A node that moves to the platform is offered it (and woken).
    await put_node(book, "store-1", "plant-7")

    async def offered() -> None:
        assert [r.number for r in book.runs_of("store-1")] == [1]

    await assert_eventually(offered, timeout=5)
    assert watchers["store-1"].wake.is_set()

    # Claimed by edge-1: edge-1's run only; the others are woken to drop it.
    for watcher in watchers.values():
        watcher.wake.clear()
    run.node, run.status = "edge-1", spb.SYNC_RUN_STATUS_RUNNING
    assert await book.replace_run(run) is not None
    await book.wait_for(book.store.revision)
    assert [r.node for r in book.runs_of("edge-1")] == ["edge-1"]
    assert book.runs_of("edge-2") == [] == book.runs_of("store-1")
    assert all(w.wake.is_set() for w in watchers.values())
    for watcher in watchers.values():
        book.unsubscribe(watcher)


async def test_an_unclaimed_platform_run_fails_naming_the_platform(book: SyncBook) -> None:
    clock = Clock()
    scheduler = SyncScheduler(book, SchedulerConfig(max_jitter=0, claim_timeout=30), clock=clock)
    job = every(3600)
    job.on_node, job.on_platform = "", "depot"
    await put_job(book, job)
    await step(book, scheduler)
    await step(book, scheduler)
    clock.now = T0 + 31
    (run,) = await step(book, scheduler)
    assert run.status == spb.SYNC_RUN_STATUS_FAILED and run.node == ""
    assert run.error.startswith("no sidecar of platform 'depot' claimed the run within 30s")


def test_run_messages_once_per_transition() -> None:
    pending = spb.SyncRun(job="j", number=4, node="n1", status=spb.SYNC_RUN_STATUS_PENDING)
    running = spb.SyncRun(job="j", number=4, node="n1", status=spb.SYNC_RUN_STATUS_RUNNING)
    done = spb.SyncRun(job="j", number=4, node="n1", status=spb.SYNC_RUN_STATUS_GUARDED)
    done.error = "would delete 80% of the destination"
    created = Event(EventType.PUT, _kv(pending, 5))
    assert build_run_message(5, created) is None
    claimed = Event(EventType.PUT, _kv(running, 6), _kv(pending, 5))
    message = build_run_message(6, claimed)
    assert message is not None
    assert (message.subject, message.id) == ("eco.sync.j.started", "sync:j:4:started")
    heartbeat = Event(EventType.PUT, _kv(running, 7), _kv(running, 6))
    assert build_run_message(7, heartbeat) is None
    ended = build_run_message(8, Event(EventType.PUT, _kv(done, 8), _kv(running, 7)))
    assert ended is not None and ended.subject == "eco.sync.j.failed"
    assert b'"status":"guarded"' in ended.data and b"would delete 80%" in ended.data
