"""health_based tier order and panic, and the locality wrapper's fallback order."""

from __future__ import annotations

from collections import Counter

import pytest

from sdk._types import HealthStatus
from sdk.balancer import (
    Balancer,
    Endpoint,
    Locality,
    LocalityBalancer,
    NoEndpointsError,
    make_balancer,
)
from tests.unit.balancer.fakes import FakeClock, ep

P, W, U, C = (
    HealthStatus.PASSING,
    HealthStatus.WARNING,
    HealthStatus.UNKNOWN,
    HealthStatus.CRITICAL,
)


def picked(balancer: Balancer, n: int = 300) -> Counter[str]:
    counts: Counter[str] = Counter()
    for i in range(n):
        endpoint = balancer.pick(f"k{i}")
        counts[endpoint.id] += 1
        balancer.release(endpoint)
    return counts


# -- health_based -------------------------------------------------------------------


def test_passing_is_preferred_over_unknown_and_warning() -> None:
    balancer = make_balancer("health_based")
    balancer.update([ep("p1"), ep("p2"), ep("p3"), ep("u", health=U), ep("w", health=W)])
    assert set(picked(balancer)) == {"p1", "p2", "p3"}  # 3 of 5 >= 50%


def test_warning_joins_when_too_few_pass() -> None:
    balancer = make_balancer("health_based")
    balancer.update([ep("p"), ep("u", health=U), ep("w1", health=W), ep("w2", health=W)])
    # PASSING alone is 1/4, with UNKNOWN 2/4: enough, WARNING stays out.
    assert set(picked(balancer)) == {"p", "u"}
    balancer.update([ep("p"), ep("w1", health=W), ep("w2", health=W), ep("c", health=C)])
    assert set(picked(balancer)) == {"p", "w1", "w2"}
    assert not balancer.panicking


def test_health_based_panics_below_the_threshold() -> None:
    balancer = make_balancer("health_based")
    balancer.update([ep("p"), ep("c1", health=C), ep("c2", health=C)])
    assert balancer.panicking
    assert set(picked(balancer)) == {"p", "c1", "c2"}


def test_health_based_panic_threshold_is_configurable() -> None:
    balancer = make_balancer("health_based", panic_threshold=0.2)
    balancer.update([ep("p"), ep("w", health=W), *(ep(f"c{i}", health=C) for i in range(3))])
    assert not balancer.panicking
    assert set(picked(balancer)) == {"p"}  # PASSING alone is 1/5 >= 20%


def test_health_based_without_panic_takes_the_best_tier_alone() -> None:
    balancer = make_balancer("health_based", panic_threshold=0)
    balancer.update([ep("p"), *(ep(f"w{i}", health=W) for i in range(5))])
    assert set(picked(balancer)) == {"p"}
    balancer.update([ep("p", health=C), *(ep(f"w{i}", health=W) for i in range(5))])
    assert set(picked(balancer)) == {f"w{i}" for i in range(5)}
    balancer.update([ep("p", health=C)])
    with pytest.raises(NoEndpointsError):
        balancer.pick()


def test_health_based_honours_weights_within_a_tier() -> None:
    balancer = make_balancer("health_based")
    balancer.update([ep("big", weight=3), ep("small"), ep("w", weight=10, health=W)])
    counts = picked(balancer, 400)
    assert counts == {"big": 300, "small": 100}


def test_health_based_ejection_is_like_critical() -> None:
    clock = FakeClock()
    balancer = make_balancer("health_based", clock=clock)
    balancer.update([ep("p1"), ep("p2"), ep("w", health=W)])
    balancer.eject("p1", until=clock.now + 10)
    # p2 alone is 1/3 < 50%: WARNING joins.
    assert set(picked(balancer)) == {"p2", "w"}


# -- locality --------------------------------------------------------------------------

HERE = Locality(zone="eu-1a", region="eu")


def spread(zone_health: HealthStatus = P, region_health: HealthStatus = P) -> list[Endpoint]:
    return [
        ep("zone-1", zone="eu-1a", region="eu", health=zone_health),
        ep("zone-2", zone="eu-1a", region="eu", health=zone_health),
        ep("region-1", zone="eu-1b", region="eu", health=region_health),
        ep("region-2", zone="eu-1c", region="eu", health=region_health),
        ep("far-1", zone="us-1a", region="us"),
        ep("far-2", zone="", region=""),
    ]


def test_locality_tiers() -> None:
    assert HERE.tier(ep("a", zone="eu-1a", region="eu")) == 0
    assert HERE.tier(ep("a", zone="eu-1a")) == 0  # no region given: the zone decides
    assert HERE.tier(ep("a", zone="eu-1a", region="us")) == 2  # same zone name, other region
    assert HERE.tier(ep("a", zone="eu-1b", region="eu")) == 1
    assert HERE.tier(ep("a", region="eu")) == 1
    assert HERE.tier(ep("a")) == 2
    assert Locality().tier(ep("a")) == 2  # empty names never match


@pytest.mark.parametrize("name", ["round_robin", "least_connections", "p2c_ewma", "ring_hash"])
def test_locality_falls_over_zone_then_region_then_any(name: str) -> None:
    balancer = make_balancer(name, locality=HERE, seed=2)
    assert isinstance(balancer, LocalityBalancer)
    balancer.update(spread())
    assert balancer.active_tier == "zone"
    assert set(picked(balancer)) == {"zone-1", "zone-2"}
    balancer.update(spread(zone_health=C))
    assert balancer.active_tier == "region"
    assert set(picked(balancer)) == {"region-1", "region-2"}
    balancer.update(spread(zone_health=C, region_health=C))
    assert balancer.active_tier == "any"
    assert set(picked(balancer)) == {"far-1", "far-2"}
    assert not balancer.panicking


def test_locality_skips_a_tier_that_would_panic() -> None:
    balancer = make_balancer("round_robin", locality=HERE, seed=2)
    endpoints = spread()
    endpoints[0] = ep("zone-1", zone="eu-1a", region="eu", health=C)
    endpoints.append(ep("zone-3", zone="eu-1a", region="eu", health=C))
    balancer.update(endpoints)  # zone: 1 of 3 available, below 50%
    assert balancer.active_tier == "region"
    no_panic = make_balancer("round_robin", locality=HERE, seed=2, panic_threshold=0)
    no_panic.update(endpoints)  # without a threshold one available endpoint is enough
    assert no_panic.active_tier == "zone"
    assert set(picked(no_panic)) == {"zone-2"}


def test_locality_panics_in_the_nearest_tier_when_every_tier_is_short() -> None:
    balancer = make_balancer("round_robin", locality=HERE, seed=2)
    balancer.update(
        [
            ep("zone-1", zone="eu-1a", region="eu", health=C),
            ep("region-1", zone="eu-1b", region="eu"),
            ep("region-2", zone="eu-1b", region="eu", health=C),
            ep("region-3", zone="eu-1b", region="eu", health=C),
        ]
    )
    assert balancer.active_tier == "region"
    assert balancer.panicking
    assert set(picked(balancer)) == {"region-1", "region-2", "region-3"}


def test_locality_with_nothing_available_and_no_panic_raises() -> None:
    balancer = make_balancer("weighted", locality=HERE, panic_threshold=0)
    with pytest.raises(NoEndpointsError, match="no endpoints"):
        balancer.pick()
    balancer.update(spread(zone_health=C, region_health=C)[:4])
    with pytest.raises(NoEndpointsError, match="critical"):
        balancer.pick()


def test_locality_follows_ejections_and_their_expiry() -> None:
    clock = FakeClock()
    balancer = make_balancer("round_robin", locality=HERE, seed=1, clock=clock)
    balancer.update(spread())
    balancer.eject("zone-1", until=clock.now + 10)
    balancer.eject("zone-2", until=clock.now + 20)
    assert balancer.ejected == {"zone-1", "zone-2"}
    assert set(picked(balancer)) == {"region-1", "region-2"}
    clock.advance(15)
    # zone-1 is back: 1 of 2 available is not below 50%, so the zone serves again.
    assert set(picked(balancer)) == {"zone-1"}
    balancer.uneject("zone-2")
    assert set(picked(balancer)) == {"zone-1", "zone-2"}


def test_locality_routes_feedback_to_the_endpoint_tier() -> None:
    balancer = make_balancer("least_connections", locality=HERE, seed=1)
    balancer.update(spread())
    held = [balancer.pick() for _ in range(4)]
    assert {e.id for e in held} == {"zone-1", "zone-2"}
    assert balancer.in_flight("zone-1") == 2
    balancer.release("zone-1")
    balancer.release(held[0])
    assert balancer.in_flight("zone-1") + balancer.in_flight("zone-2") == 2
    balancer.release("nowhere")  # unknown: ignored
    assert balancer.in_flight("nowhere") == 0
    balancer.update(spread())
    assert balancer.in_flight("zone-1") + balancer.in_flight("zone-2") == 2
    assert len(balancer) == len(balancer.endpoints) == 6


def test_locality_wrapper_can_be_built_by_hand() -> None:
    balancer = LocalityBalancer(lambda: make_balancer("round_robin", seed=1), Locality(region="us"))
    balancer.update(spread())
    assert balancer.active_tier == "region"
    assert balancer.pick().id == "far-1"
    assert balancer.locality == Locality(region="us")


def test_locality_wrapper_wraps_only_plain_strategies() -> None:
    with pytest.raises(TypeError, match="make_balancer"):
        LocalityBalancer(lambda: make_balancer("random", locality=HERE), HERE)
