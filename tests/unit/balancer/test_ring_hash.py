"""ring_hash: stickiness, agreement between clients, health, weights and ring size."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from sdk._types import HealthStatus
from sdk.balancer import Balancer, Endpoint, NoEndpointsError, make_balancer
from tests.unit.balancer.fakes import FakeClock, ep, eps

C = HealthStatus.CRITICAL
KEYS = [f"user-{i}" for i in range(2000)]


def mapping(balancer: Balancer, keys: list[str] = KEYS) -> dict[str, str]:
    out = {}
    for key in keys:
        endpoint = balancer.pick(key)
        out[key] = endpoint.id
        balancer.release(endpoint)
    return out


def ring(endpoints: list[Endpoint], **options: Any) -> Balancer:
    balancer: Balancer = make_balancer("ring_hash", **options)
    balancer.update(endpoints)
    return balancer


def test_the_same_key_maps_to_the_same_endpoint() -> None:
    balancer = ring(eps(10))
    first = mapping(balancer)
    assert mapping(balancer) == first
    assert len(set(first.values())) == 10


def test_clients_agree_whatever_their_order_seed_or_history() -> None:
    a = ring(eps(20), seed=1)
    b = make_balancer("ring_hash", seed=2)
    b.update(eps(5))
    b.update(list(reversed(eps(25))))
    b.update(list(reversed(eps(20))))
    assert mapping(a) == mapping(b)


def test_bytes_and_str_keys_agree() -> None:
    balancer = ring(eps(10))
    assert all(balancer.pick(k) == balancer.pick(k.encode()) for k in KEYS[:100])


def test_a_key_of_a_critical_endpoint_moves_and_comes_back() -> None:
    balancer = ring(eps(10))
    before = mapping(balancer)
    balancer.update([ep(f"e{i}", health=C if i == 3 else HealthStatus.PASSING) for i in range(10)])
    during = mapping(balancer)
    assert "e3" not in during.values()
    assert {k for k in KEYS if before[k] != during[k]} == {k for k in KEYS if before[k] == "e3"}
    balancer.update(eps(10))
    assert mapping(balancer) == before


def test_an_ejected_endpoint_is_walked_past() -> None:
    clock = FakeClock()
    balancer = ring(eps(10), seed=0)
    without = ring([e for e in eps(10) if e.id != "e5"])
    balancer.eject("e5", until=clock.now + 1e9)
    assert mapping(balancer) == mapping(without)


def test_a_mostly_unusable_ring_answers_like_a_ring_of_the_usable_ones() -> None:
    endpoints = [ep(f"e{i}", health=HealthStatus.PASSING if i < 3 else C) for i in range(100)]
    balancer = ring(endpoints, panic_threshold=0)
    assert balancer._small is not None  # type: ignore[attr-defined]  # 3 of 100: the small ring
    assert mapping(balancer) == mapping(ring(eps(3)))


def test_weight_scales_the_share_of_keys() -> None:
    balancer = ring([ep("heavy", weight=3), ep("a"), ep("b")])
    keys = [f"k{i}" for i in range(20_000)]
    counts = Counter(mapping(balancer, keys).values())
    assert counts["heavy"] / 20_000 == pytest.approx(0.6, abs=0.05)


def test_keys_spread_evenly_with_equal_weights() -> None:
    balancer = ring(eps(10))
    keys = [f"k{i}" for i in range(20_000)]
    counts = Counter(mapping(balancer, keys).values())
    # 160 points each: every share within a quarter of the mean.
    assert all(1500 <= c <= 2500 for c in counts.values()), counts


def test_the_ring_is_capped_and_halves_its_points() -> None:
    balancer = ring(eps(50), max_ring_size=1000)
    assert balancer.ring_size == 50 * 20  # type: ignore[attr-defined]  # 160 halved thrice
    one_each = ring(eps(50), max_ring_size=10)
    assert one_each.ring_size == 50  # type: ignore[attr-defined]
    assert len(set(mapping(one_each).values())) > 1
    default = ring(eps(10))
    assert default.ring_size == 1600  # type: ignore[attr-defined]


def test_no_key_picks_a_usable_endpoint_at_random() -> None:
    balancer = ring([*eps(4), ep("dead", health=C)], seed=3)
    counts = Counter(balancer.pick().id for _ in range(400))
    assert set(counts) == {"e0", "e1", "e2", "e3"}


def test_an_empty_ring_raises() -> None:
    balancer = ring([])
    with pytest.raises(NoEndpointsError):
        balancer.pick("k")
