"""Balancers per upstream and the pick table: bounded, expiring, feeding back."""

from __future__ import annotations

import pytest

from sdk import HealthStatus, Instance
from sdk.balancer import LocalityBalancer, NoEndpointsError
from sidecar.config import NodeConfig, UpstreamConfig
from sidecar.errors import UnknownPickError, UnknownServiceError
from sidecar.routing import Router

ORDERS = ("default", "orders")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def inst(id: str, zone: str = "") -> Instance:
    return Instance(
        id=id, service="orders", address="10.0.0.1", port=80, health=HealthStatus.PASSING, zone=zone
    )


def router(clock: Clock, **kw: object) -> Router:
    r = Router(
        [UpstreamConfig(service="orders", balancer="least_connections")],
        NodeConfig(id="n1"),
        clock=clock,
        **kw,  # type: ignore[arg-type]
    )
    r.update(ORDERS, [inst("a"), inst("b")])
    return r


def test_picks_count_in_flight_until_reported() -> None:
    clock = Clock()
    r = router(clock)
    first, pick_a = r.pick(ORDERS)
    second, _ = r.pick(ORDERS)
    assert {first.id, second.id} == {"a", "b"}, "least_connections spreads in-flight picks"
    assert r.outstanding == 2
    clock.now += 0.25
    r.report(pick_a, latency=None, failed=False)
    assert r.outstanding == 1
    assert r.balancer(ORDERS).in_flight(first.id) == 0
    with pytest.raises(UnknownPickError):
        r.report(pick_a, latency=0.1, failed=False)


def test_the_pick_table_is_bounded_and_old_picks_expire() -> None:
    clock = Clock()
    r = router(clock, max_picks=3, pick_ttl=10.0)
    ids = [r.pick(ORDERS)[1] for _ in range(5)]
    assert r.outstanding == 3 and r.picks_expired == 2
    with pytest.raises(UnknownPickError):
        r.report(ids[0], latency=0.1, failed=False)
    clock.now += 11
    r.pick(ORDERS)
    assert r.outstanding == 1
    assert r.balancer(ORDERS).in_flight("a") + r.balancer(ORDERS).in_flight("b") == 1


def test_unknown_upstream_and_no_endpoints() -> None:
    r = router(Clock())
    with pytest.raises(UnknownServiceError, match="'billing'"):
        r.pick(("default", "billing"))
    r.update(ORDERS, [])
    with pytest.raises(NoEndpointsError, match="service 'orders'"):
        r.pick(ORDERS)


def test_bad_latency_is_refused_and_keeps_the_pick() -> None:
    r = router(Clock())
    _, pick_id = r.pick(ORDERS)
    with pytest.raises(ValueError):
        r.report(pick_id, latency=float("nan"), failed=False)
    r.report(pick_id, latency=0.5, failed=True)


def test_locality_follows_the_node() -> None:
    r = Router([UpstreamConfig(service="orders")], NodeConfig(id="n1", zone="z1", region="r1"))
    assert isinstance(r.balancer(ORDERS), LocalityBalancer)
    r.update(ORDERS, [inst("near", zone="z1"), inst("far", zone="z9")])
    assert {r.pick(ORDERS)[0].id for _ in range(10)} == {"near"}
    plain = Router(
        [UpstreamConfig(service="orders", locality=False)], NodeConfig(id="n1", zone="z1")
    )
    assert not isinstance(plain.balancer(ORDERS), LocalityBalancer)
