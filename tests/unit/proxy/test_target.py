"""Target: outlier ejection, circuit breaking, the retry budget, picking and dialing.

No sockets: a target over made-up addresses, a round-robin balancer and a
fake clock that moves only when a test says so.
"""

from __future__ import annotations

from typing import Any

import pytest

from sdk._types import HealthStatus
from sdk.balancer import Endpoint, NoEndpointsError
from sidecar.config import INBOUND_PORT_KEY, ProxyPolicy
from sidecar.proxy import CircuitOpenError, Outcome, Target, fixed_endpoint
from tests.unit.balancer.fakes import FakeClock

ADDRESSES = [("10.0.0.1", 8000), ("10.0.0.2", 8000), ("10.0.0.3", 8000), ("10.0.0.4", 8000)]
IDS = [f"{host}:{port}" for host, port in ADDRESSES]


def make(n: int = 4, clock: FakeClock | None = None, **policy: Any) -> Target:
    return Target.fixed(
        "orders",
        ProxyPolicy.model_validate({"protocol": "tcp", **policy}),
        ADDRESSES[:n],
        clock=clock or FakeClock(),
    )


def fail(target: Target, endpoint_id: str, times: int, outcome: Outcome = Outcome.RESET) -> None:
    """``times`` attempts on ``endpoint_id`` that end in ``outcome``."""
    for _ in range(times):
        target.release(endpoint(target, endpoint_id), latency=0.01, outcome=outcome)


def endpoint(target: Target, endpoint_id: str) -> Endpoint:
    return next(e for e in target.balancer.endpoints if e.id == endpoint_id)


def picks(target: Target, n: int = 20) -> set[str]:
    """The ids ``n`` picks land on (each released as a success)."""
    seen = set()
    for _ in range(n):
        e = target.pick()
        target.release(e, latency=0.001, outcome=Outcome.SUCCESS)
        seen.add(e.id)
    return seen


OUTLIER = {"consecutive_failures": 3, "base_ejection": 10.0, "max_ejection": 25.0}


# -- outlier ejection -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "outcome", [Outcome.CONNECT_FAILURE, Outcome.RESET, Outcome.TIMEOUT, Outcome.SERVER_ERROR]
)
def test_consecutive_failures_eject_an_endpoint(outcome: Outcome) -> None:
    clock = FakeClock()
    target = make(clock=clock, outlier=OUTLIER)
    fail(target, IDS[0], 2, outcome)
    assert target.balancer.ejected == frozenset()
    fail(target, IDS[0], 1, outcome)
    assert target.balancer.ejected == {IDS[0]}
    assert target.stats.ejections == 1
    assert target.stats.errors[outcome.value] == 3
    assert IDS[0] not in picks(target)

    clock.advance(10.0)
    assert target.balancer.ejected == frozenset()
    assert IDS[0] in picks(target)


def test_ejection_grows_with_times_ejected_up_to_max_ejection() -> None:
    clock = FakeClock()
    target = make(clock=clock, outlier=OUTLIER)
    for expected in (10.0, 20.0, 25.0, 25.0):  # base times n, capped at max_ejection
        fail(target, IDS[0], 3)
        assert target.balancer.ejected == {IDS[0]}
        clock.advance(expected - 0.01)
        assert target.balancer.ejected == {IDS[0]}
        clock.advance(0.01)
        assert target.balancer.ejected == frozenset()
    assert target.status()["times_ejected"] == {IDS[0]: 4}


def test_success_resets_the_failure_count() -> None:
    target = make(outlier=OUTLIER)
    fail(target, IDS[0], 2)
    target.release(endpoint(target, IDS[0]), latency=0.01, outcome=Outcome.SUCCESS)
    fail(target, IDS[0], 2)
    assert target.balancer.ejected == frozenset()
    fail(target, IDS[0], 1)
    assert target.balancer.ejected == {IDS[0]}


def test_cancelled_attempts_say_nothing_about_the_endpoint() -> None:
    target = make(outlier=OUTLIER)
    fail(target, IDS[0], 2)
    fail(target, IDS[0], 5, Outcome.CANCELLED)  # neither a failure nor a success
    assert target.balancer.ejected == frozenset()
    assert target.stats.latency.count == 2
    fail(target, IDS[0], 1)
    assert target.balancer.ejected == {IDS[0]}


def test_failures_are_counted_per_endpoint() -> None:
    target = make(outlier=OUTLIER)
    for endpoint_id in IDS[:2] * 2:
        fail(target, endpoint_id, 1)
    assert target.balancer.ejected == frozenset()


def test_at_most_max_ejected_percent_of_endpoints_are_ejected() -> None:
    target = make(n=4, outlier={**OUTLIER, "max_ejected_percent": 50})
    for endpoint_id in IDS:
        fail(target, endpoint_id, 3)
    assert target.balancer.ejected == {IDS[0], IDS[1]}
    assert target.stats.ejections == 2
    assert picks(target) == {IDS[2], IDS[3]}


def test_one_endpoint_may_always_be_ejected_unless_percent_is_zero() -> None:
    single = make(n=1, outlier={**OUTLIER, "max_ejected_percent": 10})
    fail(single, IDS[0], 3)
    assert single.balancer.ejected == {IDS[0]}
    # The only endpoint is ejected: panic routing still sends to it.
    assert single.balancer.panicking
    assert picks(single) == {IDS[0]}

    never = make(n=4, outlier={**OUTLIER, "max_ejected_percent": 0})
    fail(never, IDS[0], 10)
    assert never.balancer.ejected == frozenset()


def test_zero_consecutive_failures_turns_ejection_off() -> None:
    target = make(outlier={**OUTLIER, "consecutive_failures": 0})
    fail(target, IDS[0], 50)
    assert target.balancer.ejected == frozenset()
    assert target.stats.errors["reset"] == 50


def test_removed_endpoint_forgets_its_failures() -> None:
    target = make(n=2, outlier=OUTLIER)
    removed: list[frozenset[str]] = []
    target.on_removed(removed.append)
    fail(target, IDS[0], 2)
    target.update([fixed_endpoint(*ADDRESSES[1])])
    assert removed == [{IDS[0]}]
    target.update([fixed_endpoint(*a) for a in ADDRESSES[:2]])
    fail(target, IDS[0], 2)
    assert target.balancer.ejected == frozenset()


def test_release_after_removal_is_harmless() -> None:
    target = make(n=2, outlier=OUTLIER)
    e = target.pick()
    target.update([fixed_endpoint(*a) for a in ADDRESSES[:2] if f"{a[0]}:{a[1]}" != e.id])
    for _ in range(3):
        target.release(e, latency=0.01, outcome=Outcome.RESET)
    assert target.balancer.ejected == frozenset()  # not an endpoint any more


# -- circuit breaking ---------------------------------------------------------------------------


def test_max_requests_fails_fast_and_counts() -> None:
    target = make(circuit_breaker={"max_requests": 2})
    target.begin_request()
    target.begin_request()
    assert target.circuit_open
    with pytest.raises(CircuitOpenError) as info:
        target.begin_request()
    assert (info.value.limit, info.value.value, info.value.target) == ("max_requests", 2, "orders")
    assert "circuit open" in str(info.value)
    assert target.stats.errors["circuit_open"] == 1
    assert target.stats.active == 2

    target.end_request()
    assert not target.circuit_open
    target.begin_request()
    assert target.stats.requests == 1
    assert target.stats.errors["circuit_open"] == 1


def test_max_pending_fails_fast_and_counts() -> None:
    target = make(circuit_breaker={"max_pending": 1})
    target.begin_pending()
    with pytest.raises(CircuitOpenError) as info:
        target.begin_pending()
    assert info.value.limit == "max_pending"
    assert target.stats.errors["circuit_open"] == 1
    target.end_pending()
    target.begin_pending()
    assert target.pending == 1


def test_max_connections_fails_fast_and_counts() -> None:
    target = make(circuit_breaker={"max_connections": 2})
    target.open_connection()
    assert target.can_open_connection()
    target.open_connection()
    assert not target.can_open_connection()
    with pytest.raises(CircuitOpenError) as info:
        target.open_connection()
    assert info.value.limit == "max_connections"
    assert target.stats.errors["circuit_open"] == 1
    target.close_connection()
    target.open_connection()
    assert target.status()["circuit"]["connections"] == 2


# -- retry budget ---------------------------------------------------------------------------------


def test_min_retries_are_always_allowed() -> None:
    target = make(retry_budget={"percent": 0, "min_retries": 2})
    assert target.allow_retry()
    assert target.allow_retry()
    assert not target.allow_retry()
    assert (target.stats.retries, target.stats.retries_refused) == (2, 1)
    target.end_retry()
    assert target.allow_retry()


def test_retry_budget_is_a_percent_of_requests_in_flight() -> None:
    target = make(retry_budget={"percent": 20, "min_retries": 1})
    for _ in range(20):
        target.begin_request()
    allowed = 0
    while target.allow_retry():
        allowed += 1
    assert allowed == 4  # 20 % of 20
    for _ in range(10):
        target.end_request()
    target.end_retry()
    target.end_retry()
    assert not target.allow_retry()  # 2 active, and 20 % of 10 is 2
    target.end_retry()
    assert target.allow_retry()


# -- picking and dialing --------------------------------------------------------------------------


def test_pick_with_exclude_avoids_a_tried_endpoint() -> None:
    target = make(n=2)
    for _ in range(10):
        first = target.pick()
        second = target.pick(exclude=[first.id])
        assert second.id != first.id
        target.release(first, latency=0.01, outcome=Outcome.SUCCESS)
        target.release(second, latency=0.01, outcome=Outcome.SUCCESS)
    # Every pick was released exactly once, the skipped ones included.
    assert [target.balancer.in_flight(i) for i in IDS[:2]] == [0, 0]


def test_pick_retries_the_only_endpoint_when_all_are_excluded() -> None:
    target = make(n=1)
    first = target.pick()
    again = target.pick(exclude=[first.id])
    assert again.id == first.id


def test_pick_without_endpoints_counts_no_endpoints() -> None:
    target = Target.fixed("orders", ProxyPolicy(), [])
    with pytest.raises(NoEndpointsError):
        target.pick()
    assert target.stats.errors["no_endpoints"] == 1


def test_dial_uses_the_inbound_port_from_metadata() -> None:
    def ep(**metadata: str) -> Endpoint:
        return Endpoint(
            id="a",
            address="10.0.0.7",
            port=8080,
            health=HealthStatus.PASSING,
            metadata=metadata,
        )

    assert Target.dial(ep(**{INBOUND_PORT_KEY: "15001"})) == ("10.0.0.7", 15001)
    assert Target.dial(ep()) == ("10.0.0.7", 8080)
    for bad in ("", "abc", "0", "70000", "-1"):
        assert Target.dial(ep(**{INBOUND_PORT_KEY: bad})) == ("10.0.0.7", 8080)
