"""Each strategy's behaviour on small, hand-checked cases."""

from __future__ import annotations

from collections import Counter

import pytest

from sdk._types import HealthStatus
from sdk.balancer import STRATEGIES, Balancer, NoEndpointsError, make_balancer
from tests.unit.balancer.fakes import FakeClock, ep, eps

P, W, U, C = (
    HealthStatus.PASSING,
    HealthStatus.WARNING,
    HealthStatus.UNKNOWN,
    HealthStatus.CRITICAL,
)


def picks(balancer: Balancer, n: int, *, release: bool = True) -> Counter[str]:
    counts: Counter[str] = Counter()
    for i in range(n):
        endpoint = balancer.pick(f"key-{i}")
        counts[endpoint.id] += 1
        if release:
            balancer.release(endpoint)
    return counts


# -- round robin ---------------------------------------------------------------


def test_round_robin_visits_each_endpoint_in_turn_and_ignores_weights() -> None:
    balancer = make_balancer("round_robin", seed=7)
    balancer.update([ep("a", weight=9), ep("b"), ep("c")])
    first = [balancer.pick().id for _ in range(3)]
    assert sorted(first) == ["a", "b", "c"]
    assert [balancer.pick().id for _ in range(6)] == first * 2


def test_round_robin_keeps_its_place_across_updates() -> None:
    balancer = make_balancer("round_robin", seed=0)
    balancer.update(eps(4))
    before = [balancer.pick().id for _ in range(2)]
    balancer.update(eps(4))  # an unchanged watch update
    after = [balancer.pick().id for _ in range(2)]
    assert len(set(before + after)) == 4


def test_round_robin_start_is_random_but_seeded() -> None:
    starts = set()
    for seed in range(20):
        balancer = make_balancer("round_robin", seed=seed)
        balancer.update(eps(10))
        starts.add(balancer.pick().id)
    assert len(starts) > 3
    again = [make_balancer("round_robin", seed=3) for _ in range(2)]
    for b in again:
        b.update(eps(10))
    assert again[0].pick() == again[1].pick()


# -- random ----------------------------------------------------------------------


def test_random_follows_weights() -> None:
    balancer = make_balancer("random", seed=11)
    balancer.update([ep("a", weight=3), ep("b", weight=1)])
    counts = picks(balancer, 20_000)
    assert counts["a"] / 20_000 == pytest.approx(0.75, abs=0.02)


def test_random_with_equal_weights_is_uniform() -> None:
    balancer = make_balancer("random", seed=12)
    balancer.update(eps(4))
    counts = picks(balancer, 20_000)
    for i in range(4):
        assert counts[f"e{i}"] / 20_000 == pytest.approx(0.25, abs=0.02)


# -- weighted --------------------------------------------------------------------


def test_weighted_is_the_smooth_sequence() -> None:
    balancer = make_balancer("weighted")
    balancer.update([ep("a", weight=5), ep("b"), ep("c")])
    assert "".join(balancer.pick().id for _ in range(14)) == "aabacaa" * 2


def test_weighted_restarts_its_cycle_only_when_ids_or_weights_change() -> None:
    balancer = make_balancer("weighted")
    endpoints = [ep("a", weight=2), ep("b")]
    balancer.update(endpoints)
    assert balancer.pick().id == "a"
    balancer.update([ep("a", weight=2), ep("b", health=W)])  # health only: same cycle
    assert "".join(balancer.pick().id for _ in range(2)) == "ba"
    balancer.update([ep("a", weight=2), ep("b", weight=2)])
    assert "".join(balancer.pick().id for _ in range(4)) == "abab"


# -- least connections -------------------------------------------------------


def test_least_connections_goes_to_the_least_loaded() -> None:
    balancer = make_balancer("least_connections", seed=1)
    balancer.update(eps(3))
    held = [balancer.pick() for _ in range(3)]
    assert sorted(e.id for e in held) == ["e0", "e1", "e2"]
    more = [balancer.pick() for _ in range(3)]
    assert sorted(e.id for e in more) == ["e0", "e1", "e2"]
    # Free two requests on e1: the next two picks must both go there.
    balancer.release("e1")
    balancer.release("e1")
    assert [balancer.pick().id for _ in range(2)] == ["e1", "e1"]
    assert [balancer.in_flight(f"e{i}") for i in range(3)] == [2, 2, 2]


def test_least_connections_scales_by_weight() -> None:
    balancer = make_balancer("least_connections", seed=1)
    balancer.update([ep("big", weight=3), ep("small")])
    for _ in range(40):
        balancer.pick()  # all held
    assert balancer.in_flight("big") == 30
    assert balancer.in_flight("small") == 10


def test_least_connections_idle_ties_take_turns() -> None:
    balancer = make_balancer("least_connections", seed=2)
    balancer.update(eps(3))
    counts = picks(balancer, 300)  # released at once: every pick is a tie
    assert set(counts.values()) == {100}


def test_least_connections_heap_stays_bounded() -> None:
    balancer = make_balancer("least_connections", seed=2)
    balancer.update(eps(5))
    for _ in range(10_000):
        balancer.release(balancer.pick())
    assert len(balancer._heap) <= 2 * 5 + 32  # type: ignore[attr-defined]


# -- p2c ewma ------------------------------------------------------------------


def test_p2c_prefers_the_faster_endpoint() -> None:
    clock = FakeClock()
    balancer = make_balancer("p2c_ewma", seed=5, clock=clock)
    balancer.update([ep("fast"), ep("slow"), ep("mid")])
    for _ in range(20):
        balancer.release(balancer.pick(), latency=0.0)  # in-flight bookkeeping only
    for name, latency in (("fast", 0.010), ("slow", 0.200), ("mid", 0.050)):
        for _ in range(5):
            balancer.release(name, latency=latency)
    counts: Counter[str] = Counter()
    for _ in range(3000):
        endpoint = balancer.pick()
        counts[endpoint.id] += 1
        latency = {"fast": 0.010, "slow": 0.200, "mid": 0.050}[endpoint.id]
        balancer.release(endpoint, latency=latency)
        clock.advance(0.001)
    assert counts["fast"] > counts["mid"] > counts["slow"]
    assert counts["slow"] < 0.05 * 3000


def test_p2c_weighs_latency_against_requests_in_flight() -> None:
    clock = FakeClock()
    balancer = make_balancer("p2c_ewma", seed=5, clock=clock)
    balancer.update([ep("fast"), ep("slow")])
    balancer.release("fast", latency=0.010)
    balancer.release("slow", latency=0.025)
    assert balancer.pick().id == "fast"  # 0.010 x 1 < 0.025 x 1
    assert balancer.pick().id == "fast"  # 0.010 x 2 < 0.025 x 1
    assert balancer.pick().id == "slow"  # 0.010 x 3 > 0.025 x 1
    assert balancer.pick().id == "fast"  # 0.010 x 3 < 0.025 x 2


def test_p2c_counts_failures_as_slow() -> None:
    clock = FakeClock()
    balancer = make_balancer("p2c_ewma", seed=5, clock=clock, failure_penalty=1.0)
    balancer.update([ep("a"), ep("b")])
    balancer.release("a", latency=0.001, failed=True)  # fails fast
    balancer.release("b", latency=0.100)
    assert balancer.latency("a") == pytest.approx(1.0)  # type: ignore[attr-defined]
    assert all(balancer.pick().id == "b" for _ in range(5))


def test_p2c_unknown_latency_counts_as_the_mean() -> None:
    clock = FakeClock()
    balancer = make_balancer("p2c_ewma", seed=5, clock=clock)
    balancer.update([ep("a"), ep("b"), ep("new")])
    balancer.release("a", latency=0.010)
    balancer.release("b", latency=0.030)
    # "new" counts at the mean, 0.020: with three endpoints p2c always picks the
    # better of a pair, so a wins 2/3 of picks, new 1/3 (against b), b none.
    counts: Counter[str] = Counter()
    for _ in range(600):
        endpoint = balancer.pick()
        counts[endpoint.id] += 1
        balancer.release(endpoint)
    assert counts["b"] == 0
    assert counts["a"] / 600 == pytest.approx(2 / 3, abs=0.06)
    assert counts["new"] / 600 == pytest.approx(1 / 3, abs=0.06)


def test_p2c_estimate_relaxes_back_toward_neutral_when_idle() -> None:
    clock = FakeClock()
    balancer = make_balancer("p2c_ewma", seed=5, clock=clock, decay=10.0)
    balancer.update([ep("a"), ep("b")])
    balancer.release("a", latency=0.010)
    balancer.release("b", latency=1.000)
    assert balancer.latency("b") == pytest.approx(1.0)  # type: ignore[attr-defined]
    clock.advance(100.0)  # ten time constants
    assert balancer.latency("b") == pytest.approx(0.505, abs=0.01)  # type: ignore[attr-defined]


def test_p2c_smoothing_blends_samples() -> None:
    clock = FakeClock()
    balancer = make_balancer("p2c_ewma", clock=clock, smoothing=0.5)
    balancer.update([ep("a")])
    balancer.release("a", latency=0.100)
    balancer.release("a", latency=0.200)
    assert balancer.latency("a") == pytest.approx(0.150)  # type: ignore[attr-defined]


def test_release_rejects_a_negative_latency() -> None:
    balancer = make_balancer("p2c_ewma")
    balancer.update([ep("a")])
    with pytest.raises(ValueError, match="latency"):
        balancer.release("a", latency=-1.0)


# -- all strategies --------------------------------------------------------------


@pytest.mark.parametrize("name", STRATEGIES)
def test_critical_endpoints_are_never_picked_outside_panic(name: str) -> None:
    balancer = make_balancer(name, seed=3)
    balancer.update([ep("a"), ep("b", health=W), ep("c", health=U), ep("dead", health=C)])
    counts = picks(balancer, 400)
    assert "dead" not in counts
    assert not balancer.panicking


@pytest.mark.parametrize("name", STRATEGIES)
def test_panic_routes_to_every_endpoint(name: str) -> None:
    balancer = make_balancer(name, seed=3)
    balancer.update([ep("a"), ep("b", health=C), ep("c", health=C), ep("d", health=C)])
    assert balancer.panicking  # 1 of 4 available < 50%
    counts = picks(balancer, 2000)
    assert set(counts) == {"a", "b", "c", "d"}
    balancer.update([ep("a"), ep("b"), ep("c", health=C), ep("d", health=C)])
    assert not balancer.panicking  # exactly 50% is not below the threshold
    assert set(picks(balancer, 400)) == {"a", "b"}


@pytest.mark.parametrize("name", STRATEGIES)
def test_all_critical_without_panic_raises(name: str) -> None:
    balancer = make_balancer(name, panic_threshold=0)
    balancer.update([ep("a", health=C), ep("b", health=C)])
    assert not balancer.panicking
    with pytest.raises(NoEndpointsError, match="all 2 endpoints are critical") as info:
        balancer.pick("k")
    assert (info.value.total, info.value.unavailable) == (2, 2)
    balancer.update([])
    with pytest.raises(NoEndpointsError, match="no endpoints"):
        balancer.pick("k")


@pytest.mark.parametrize("name", STRATEGIES)
def test_all_critical_with_panic_still_routes(name: str) -> None:
    balancer = make_balancer(name, seed=1)
    balancer.update([ep("a", health=C)])
    assert balancer.panicking
    assert balancer.pick("k").id == "a"


@pytest.mark.parametrize("name", STRATEGIES)
def test_ejected_endpoints_are_skipped_until_the_ejection_ends(name: str) -> None:
    clock = FakeClock()
    balancer = make_balancer(name, seed=4, clock=clock)
    balancer.update(eps(4))
    balancer.eject("e0", until=clock.now + 30)
    assert balancer.ejected == {"e0"}
    assert "e0" not in picks(balancer, 400)
    clock.advance(29.9)
    assert "e0" not in picks(balancer, 400)
    clock.advance(0.2)
    assert "e0" in picks(balancer, 400)
    assert balancer.ejected == frozenset()


@pytest.mark.parametrize("name", STRATEGIES)
def test_ejected_endpoints_count_toward_panic(name: str) -> None:
    clock = FakeClock()
    balancer = make_balancer(name, seed=4, clock=clock)
    balancer.update(eps(4))
    balancer.eject("e0", until=clock.now + 10)
    balancer.eject("e1", until=clock.now + 20)
    assert not balancer.panicking
    balancer.eject("e2", until=clock.now + 30)
    assert balancer.panicking
    assert set(picks(balancer, 2000)) == {"e0", "e1", "e2", "e3"}
    balancer.uneject("e2")
    assert not balancer.panicking
    assert set(picks(balancer, 400)) == {"e2", "e3"}


def test_an_ejection_applies_to_an_endpoint_that_appears_later() -> None:
    clock = FakeClock()
    balancer = make_balancer("round_robin", clock=clock)
    balancer.update(eps(2))
    balancer.eject("late", until=clock.now + 5)
    balancer.update([*eps(2), ep("late")])
    assert "late" not in picks(balancer, 30)
    assert balancer.ejected == {"late"}


def test_ejecting_into_the_past_lifts_the_ejection() -> None:
    clock = FakeClock()
    balancer = make_balancer("round_robin", clock=clock)
    balancer.update(eps(2))
    balancer.eject("e0", until=clock.now + 5)
    balancer.eject("e0", until=clock.now - 1)
    assert balancer.ejected == frozenset()
    with pytest.raises(ValueError):
        balancer.eject("e0", until=float("nan"))


# -- state across updates ----------------------------------------------------------


@pytest.mark.parametrize("name", STRATEGIES)
def test_in_flight_survives_updates_for_endpoints_that_stay(name: str) -> None:
    balancer = make_balancer(name, seed=9)
    balancer.update(eps(3))
    held = [balancer.pick(f"k{i}") for i in range(30)]
    before = {e.id: balancer.in_flight(e.id) for e in held}
    balancer.update([ep("e0", weight=2), ep("e1", health=W), ep("e9")])  # e2 leaves
    for endpoint_id in ("e0", "e1"):
        assert balancer.in_flight(endpoint_id) == before.get(endpoint_id, 0)
    assert balancer.in_flight("e2") == 0
    assert balancer.in_flight("e9") == 0
    for endpoint in held:
        balancer.release(endpoint)  # releasing one that left is not an error
    assert [balancer.in_flight(i) for i in ("e0", "e1", "e9")] == [0, 0, 0]


def test_latency_estimates_survive_updates() -> None:
    clock = FakeClock()
    balancer = make_balancer("p2c_ewma", clock=clock)
    balancer.update(eps(2))
    balancer.release("e0", latency=0.5)
    balancer.update([ep("e0", health=W), ep("e1")])
    assert balancer.latency("e0") == pytest.approx(0.5)  # type: ignore[attr-defined]
    balancer.update([ep("e1")])
    balancer.update(eps(2))
    # It left: its state went with it.
    assert balancer.latency("e0") is None  # type: ignore[attr-defined]


def test_least_connections_uses_surviving_counts_after_an_update() -> None:
    balancer = make_balancer("least_connections", seed=1)
    balancer.update(eps(2))
    for _ in range(4):
        balancer.pick()
    balancer.release("e0")
    balancer.release("e0")  # e0: 0 in flight, e1: 2
    balancer.update([*eps(2), ep("e2")])
    balancer.pick()
    balancer.pick()
    ids = [balancer.pick().id for _ in range(2)]
    assert balancer.in_flight("e1") == 2
    assert sorted(ids) == ["e0", "e2"]


def test_duplicate_ids_keep_the_last_occurrence() -> None:
    balancer = make_balancer("round_robin")
    balancer.update([ep("a"), ep("b"), ep("a", health=C)])
    assert [e.id for e in balancer.endpoints] == ["a", "b"]
    assert balancer.endpoints[0].health is C
