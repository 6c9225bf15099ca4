"""The engine, on a fake clock with scripted probes: scheduling, hysteresis, TTL, transitions."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import statistics
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sdk import HealthStatus
from sidecar.health import (
    CheckNotFoundError,
    DuplicateCheckError,
    EngineClosedError,
    FakeClock,
    FakeHealthChecker,
    HealthEngine,
    HealthTransition,
    NotATtlCheckError,
    ProbeCheckConfig,
    ProbeResult,
    parse_check,
)
from sidecar.health._probe import Probe
from tests.util import assert_eventually

P, W, C, U = (
    HealthStatus.PASSING,
    HealthStatus.WARNING,
    HealthStatus.CRITICAL,
    HealthStatus.UNKNOWN,
)


class Harness:
    def __init__(self, checker: Any = None, **engine: Any) -> None:
        self.clock = FakeClock()
        self.fake = FakeHealthChecker()
        self.transitions: list[HealthTransition] = []
        self.engine = HealthEngine(
            checker if checker is not None else self.fake,
            clock=self.clock,
            on_transition=self.transitions.append,
            rng=random.Random(7),
            **engine,
        )

    async def step(self, seconds: float = 0.0) -> None:
        """Moves the fake clock and lets the scheduler and the probes it starts run."""
        self.clock.advance(seconds)
        for _ in range(10):
            await asyncio.sleep(0)

    def add(self, instance: str = "web-1", **spec: Any) -> str:
        """Adds a check: a TCP one with a 1 s interval and no jitter unless told otherwise."""
        if "ttl" not in spec:
            spec.setdefault("interval", "1s")
            spec.setdefault("jitter", 0)
            if not any(k in spec for k in ("http", "grpc", "exec")):
                spec.setdefault("tcp", "127.0.0.1:1")
        return self.engine.add(instance, parse_check(spec))

    def changes(self) -> list[tuple[str, HealthStatus, HealthStatus]]:
        return [(t.check_id, t.old, t.new) for t in self.transitions]


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    harness = Harness()
    async with harness.engine:
        yield harness


# -- probes, hysteresis and edge triggering ------------------------------------------------


async def test_first_probe_runs_at_once_without_jitter_then_every_interval(h: Harness) -> None:
    h.add(name="c")
    await h.step()
    assert h.fake.calls("c") == 1
    await h.step(0.9)
    assert h.fake.calls("c") == 1
    await h.step(0.1)
    assert h.fake.calls("c") == 2
    await h.step(1.0)
    assert h.fake.calls("c") == 3


async def test_edge_triggered_one_transition_per_change_not_per_probe(h: Harness) -> None:
    check = h.add(name="c")  # starts CRITICAL; the fake passes
    for _ in range(5):
        await h.step(1.0)
    assert h.fake.calls("c") == 6
    assert h.changes() == [(check, C, P)]
    h.fake.set("c", "critical", "down")
    for _ in range(5):
        await h.step(1.0)
    assert h.changes() == [(check, C, P), (check, P, C)]
    last = h.transitions[-1]
    assert last.output == "down" and last.instance_status is C
    assert last.at == h.clock.time() - 4.0


async def test_hysteresis_through_the_engine(h: Harness) -> None:
    check = h.add(
        name="c", initial_status="passing", failures_before_critical=3, successes_before_passing=2
    )
    h.fake.set("c", "critical")
    await h.step()
    await h.step(1.0)
    assert h.engine.status("web-1") is P
    assert h.engine.check(check).consecutive_failures == 2
    await h.step(1.0)
    assert h.engine.status("web-1") is C
    h.fake.set("c", "passing")
    await h.step(1.0)
    assert h.engine.status("web-1") is C
    await h.step(1.0)
    assert h.engine.status("web-1") is P
    assert h.changes() == [(check, P, C), (check, C, P)]


async def test_no_transition_when_the_first_result_matches_the_initial_status(h: Harness) -> None:
    h.add(name="c", initial_status="passing")
    await h.step()
    await h.step(1.0)
    assert h.fake.calls("c") == 2
    assert h.transitions == []


async def test_aggregate_and_detail(h: Harness) -> None:
    a = h.add(name="a", initial_status="passing")
    b = h.add(name="b", initial_status="unknown")
    h.add("web-2", name="a")
    assert h.engine.status("web-1") is U
    assert h.engine.status("web-2") is C
    assert h.engine.status("nobody") is P
    assert h.engine.checks("nobody") == []
    h.fake.set("a", "warning", "slow")
    await h.step()
    assert h.engine.status("web-1") is W
    assert h.engine.status("web-2") is W
    details = h.engine.checks("web-1")
    assert [d.check_id for d in details] == [a, b]
    assert details[0].status is W and details[0].output == "slow"
    assert details[0].changed_at == h.clock.time()
    assert details[0].checked_at == h.clock.time()
    assert details[1].status is P  # the default result of the fake
    assert sorted(h.engine.instances()) == ["web-1", "web-2"]
    assert h.transitions[-1].instance_status is W


async def test_probe_that_raises_reads_critical(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def prepare(self, config: ProbeCheckConfig) -> Probe:
            async def probe() -> ProbeResult:
                raise RuntimeError("bug")

            return probe

        def release(self, config: ProbeCheckConfig) -> None:
            pass

        async def close(self) -> None:
            pass

    h = Harness(Broken())
    async with h.engine:
        check = h.add(initial_status="passing")
        await h.step()
        detail = h.engine.check(check)
        assert detail.status is C
        assert "RuntimeError('bug')" in detail.output
        await h.step(1.0)  # and it keeps its schedule
        assert h.engine.check(check).consecutive_failures == 2


async def test_callback_errors_are_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()

    def boom(t: HealthTransition) -> None:
        raise ValueError("consumer bug")

    h.engine._on_transition = boom
    async with h.engine:
        check = h.add(name="c")
        with caplog.at_level(logging.ERROR):
            await h.step()
        assert "callback failed" in caplog.text
        assert h.engine.check(check).status is P


# -- TTL ------------------------------------------------------------------------------------


async def test_ttl_updates_and_expiry(h: Harness) -> None:
    check = h.add(ttl="10s")
    assert h.engine.check(check).status is C
    h.engine.update_ttl(check, "passing", "all good")
    assert h.changes() == [(check, C, P)]
    assert h.engine.check(check).output == "all good"
    await h.step(9.0)
    h.engine.update_ttl(check, "PASSING", "still good")  # restarts the clock; no transition
    await h.step(9.0)
    assert h.engine.check(check).status is P
    assert len(h.transitions) == 1
    await h.step(1.5)
    detail = h.engine.check(check)
    assert (detail.status, detail.output) == (C, "TTL expired")
    assert h.changes()[-1] == (check, P, C)
    await h.step(30.0)  # expired stays expired, with no further transitions
    assert len(h.transitions) == 2
    h.engine.update_ttl(check, "warning", "degraded")
    assert h.changes()[-1] == (check, C, W)
    assert h.fake.total_calls == 0  # TTL checks are never probed


async def test_ttl_expires_without_any_update(h: Harness) -> None:
    check = h.add(ttl="2s", initial_status="passing")
    await h.step(1.9)
    assert h.engine.check(check).status is P
    await h.step(0.2)
    assert h.engine.check(check).status is C
    assert h.engine.check(check).output == "TTL expired"


async def test_frequent_ttl_reports_keep_one_schedule_entry(h: Harness) -> None:
    check = h.add(ttl="1s")
    for _ in range(1000):
        h.engine.update_ttl(check, "passing")
        await h.step(0.01)
    assert len(h.engine._heap) == 1
    assert h.engine.check(check).status is P
    await h.step(0.98)  # the last report was 10 ms ago; it expires 1 s after it
    assert h.engine.check(check).status is P
    await h.step(0.02)
    assert h.engine.check(check).status is C


async def test_ttl_update_errors(h: Harness) -> None:
    ttl = h.add(ttl="2s")
    tcp = h.add(name="c")
    with pytest.raises(CheckNotFoundError) as missing:
        h.engine.update_ttl("web-1:nope", "passing")
    assert missing.value.check_id == "web-1:nope"
    with pytest.raises(NotATtlCheckError):
        h.engine.update_ttl(tcp, "passing")
    with pytest.raises(ValueError, match="PASSING, WARNING or CRITICAL"):
        h.engine.update_ttl(ttl, "unknown")
    with pytest.raises(ValueError, match="unknown health"):
        h.engine.update_ttl(ttl, "green")


async def test_ttl_added_before_start_counts_from_start() -> None:
    h = Harness()
    check = h.engine.add("web-1", parse_check({"ttl": "2s", "initial_status": "passing"}))
    h.engine.update_ttl(check, "passing", "early")
    h.clock.advance(10.0)  # nothing runs before start()
    async with h.engine:
        await h.step(1.0)
        assert h.engine.check(check).status is P
        await h.step(1.5)
        assert h.engine.check(check).status is C


# -- jitter and batching ---------------------------------------------------------------------


class Recorder(FakeHealthChecker):
    """Records the fake clock's time at every probe, per check name."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.times: dict[str, list[float]] = defaultdict(list)

    def prepare(self, config: ProbeCheckConfig) -> Probe:
        inner = super().prepare(config)

        async def probe() -> ProbeResult:
            self.times[config.name].append(self.clock.monotonic())
            return await inner()

        return probe


async def test_jitter_spreads_a_thousand_checks() -> None:
    h = Harness()
    recorder = Recorder(h.clock)
    h.engine = HealthEngine(recorder, clock=h.clock, rng=random.Random(3))
    async with h.engine:
        start = h.clock.monotonic()
        for i in range(1000):
            h.engine.add(f"i{i}", parse_check({"tcp": "h:1", "interval": "1s", "name": f"c{i}"}))
        for _ in range(500):
            await h.step(0.01)
    firsts = sorted(times[0] - start for times in recorder.times.values())
    # The first probes spread over the first interval rather than firing together.
    buckets = [sum(1 for f in firsts if b / 10 <= f < (b + 1) / 10) for b in range(10)]
    assert len(firsts) == 1000
    assert all(50 <= n <= 150 for n in buckets), buckets
    gaps = [b - a for times in recorder.times.values() for a, b in itertools.pairwise(times)]
    # Every wait is the interval +-10% (and a probe may start up to 50 ms early to batch).
    slack = 0.05 + 0.011  # starting up to 50 ms early, and the 10 ms steps of the clock
    assert min(gaps) >= 0.9 - slack
    assert max(gaps) <= 1.1 + slack
    assert statistics.pstdev(gaps) > 0.03
    assert statistics.mean(gaps) == pytest.approx(1.0, abs=0.02)
    # No lockstep: in any 10 ms of fake time only a small share of the checks start.
    starts: dict[float, int] = defaultdict(int)
    for times in recorder.times.values():
        for t in times:
            starts[round(t, 2)] += 1
    assert max(starts.values()) <= 100


async def test_no_jitter_means_no_randomness() -> None:
    h = Harness()
    recorder = Recorder(h.clock)
    h.engine = HealthEngine(recorder, clock=h.clock)
    async with h.engine:
        for i in range(3):
            spec = {"tcp": "h:1", "interval": "2s", "jitter": 0, "name": f"c{i}"}
            h.engine.add(f"i{i}", parse_check(spec))
        await h.step()
        for _ in range(4):
            await h.step(2.0)
    for times in recorder.times.values():
        assert [b - a for a, b in itertools.pairwise(times)] == [2.0] * 4


async def test_batches_wake_the_scheduler_rarely() -> None:
    h = Harness()
    async with h.engine:
        for i in range(1000):
            h.engine.add(f"i{i}", parse_check({"tcp": "h:1", "interval": "1s", "name": "c"}))
        for _ in range(300):
            await h.step(0.01)
        assert h.fake.total_calls >= 2500
        # Each wake-up of the scheduler starts a batch of the probes due within 50 ms.
        assert h.clock.pending_timers <= 1


# -- concurrency, removal and lifecycle ---------------------------------------------------------


async def test_concurrency_is_bounded() -> None:
    h = Harness(max_concurrent_probes=5)
    async with h.engine:
        for i in range(20):
            h.add(f"i{i}", name="slow")
        h.fake.pause("slow")
        await h.step()
        assert h.engine.in_flight == 5
        assert h.fake.in_flight == 5
        h.fake.resume("slow")
        await h.step()
        await h.step()
        assert h.fake.calls("slow") == 20
        assert h.fake.max_in_flight == 5
        assert h.engine.in_flight == 0


async def test_a_slow_probe_is_never_doubled(h: Harness) -> None:
    h.add(name="c")
    h.fake.pause("c")
    await h.step()
    for _ in range(5):
        await h.step(1.0)
    assert h.fake.calls("c") == 1  # still the first one, waiting
    h.fake.resume("c")
    await h.step()
    await h.step()
    assert h.fake.calls("c") == 2  # overdue: runs at once, then on schedule


async def test_remove_cancels_the_running_probe_and_releases(h: Harness) -> None:
    check = h.add(name="c")
    other = h.add(name="d")
    h.fake.pause("c")
    await h.step()
    assert h.fake.in_flight == 1
    h.engine.remove(check)
    await h.step()
    assert h.fake.in_flight == 0
    assert h.fake.prepared("c") == 0
    assert [d.check_id for d in h.engine.checks("web-1")] == [other]
    await h.step(5.0)
    assert h.fake.calls("c") == 1
    with pytest.raises(CheckNotFoundError):
        h.engine.remove(check)
    with pytest.raises(CheckNotFoundError):
        h.engine.check(check)
    assert h.transitions == [] or all(t.check_id != check for t in h.transitions)


async def test_remove_instance(h: Harness) -> None:
    a = h.add(name="a")
    b = h.add(name="b")
    h.add("web-2", name="a")
    assert h.engine.remove_instance("web-1") == [a, b]
    assert h.engine.instances() == ["web-2"]
    assert h.engine.remove_instance("web-1") == []


async def test_duplicate_names_are_refused(h: Harness) -> None:
    h.add(name="c")
    with pytest.raises(DuplicateCheckError):
        h.add(name="c")
    h.add("web-2", name="c")  # another instance may reuse the name


async def test_checks_added_before_start_wait_for_it() -> None:
    h = Harness()
    h.add(name="c")
    await h.step(5.0)
    assert h.fake.calls("c") == 0
    async with h.engine:
        await h.step()
        assert h.fake.calls("c") == 1


async def test_close_cancels_everything_and_is_final() -> None:
    h = Harness()
    await h.engine.start()
    await h.engine.start()  # idempotent while running
    h.add(name="c")
    h.fake.pause("c")
    stream = h.engine.subscribe()
    await h.step()
    assert h.fake.in_flight == 1
    await h.engine.close()
    await h.engine.close()
    assert h.fake.in_flight == 0
    assert h.fake.prepared("c") == 0
    assert not h.fake.closed  # the engine closes only a checker it created
    assert [t async for t in stream] == []
    with pytest.raises(EngineClosedError):
        h.add(name="d")
    with pytest.raises(EngineClosedError):
        await h.engine.start()
    with pytest.raises(EngineClosedError):
        h.engine.subscribe()


async def test_owned_checker_is_closed() -> None:
    engine = HealthEngine(clock=FakeClock())
    async with engine:
        engine.add("i", parse_check({"ttl": "1s"}))
    assert engine._checker._closed  # type: ignore[attr-defined]


# -- subscriptions --------------------------------------------------------------------------------


async def test_subscribers_get_each_transition(h: Harness) -> None:
    stream = h.engine.subscribe()
    check = h.add(name="c")
    await h.step()
    got = [await anext(stream)]
    h.fake.set("c", "critical")
    await h.step(1.0)
    got.append(await anext(stream))
    assert [(t.old, t.new) for t in got] == [(C, P), (P, C)]
    assert all(t.check_id == check for t in got)
    stream.close()


async def test_a_slow_subscriber_holds_at_most_one_entry_per_check(h: Harness) -> None:
    stream = h.engine.subscribe()
    for i in range(10):
        h.add(name=f"c{i}")
    for round_ in range(20):
        for i in range(10):
            h.fake.set(f"c{i}", "critical" if round_ % 2 == 0 else "passing")
        await h.step(1.0)
    assert len(h.transitions) >= 150
    assert stream.pending <= 10
    got = []
    h.engine.subscribe().close()
    await h.engine.close()
    async for t in stream:
        got.append(t)
    # Nothing was read, so each check's flapping merged into its net change:
    # from the initial CRITICAL to PASSING (the last round, 19, passes).
    assert sorted(t.check_id for t in got) == sorted(f"web-1:c{i}" for i in range(10))
    assert all((t.old, t.new) == (C, P) for t in got)


async def test_stream_delivers_live_transitions_to_a_waiting_consumer(h: Harness) -> None:
    seen: list[HealthTransition] = []

    async def consume() -> None:
        async with h.engine.subscribe() as stream:
            async for t in stream:
                seen.append(t)
                if len(seen) == 2:
                    return

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0)
    h.add(name="c")
    await h.step()
    h.fake.set("c", "warning")
    await h.step(1.0)
    await assert_eventually(lambda: consumer.done() or pytest.fail("waiting"))
    await consumer
    assert [(t.old, t.new) for t in seen] == [(C, P), (P, W)]
