"""Hysteresis and aggregation, on the state machine alone."""

from __future__ import annotations

import pytest

from sdk import HealthStatus
from sidecar.health import CheckKind, parse_check, worst_status
from sidecar.health._state import CheckState

P, W, C, U = (
    HealthStatus.PASSING,
    HealthStatus.WARNING,
    HealthStatus.CRITICAL,
    HealthStatus.UNKNOWN,
)


def state(initial: str = "passing", failures: int = 1, successes: int = 1) -> CheckState:
    config = parse_check(
        {
            "tcp": "h:1",
            "initial_status": initial,
            "failures_before_critical": failures,
            "successes_before_passing": successes,
        }
    )
    return CheckState("i:c", "i", config, now=100.0)


def feed(s: CheckState, *results: HealthStatus) -> list[tuple[HealthStatus, HealthStatus]]:
    changes = []
    for i, result in enumerate(results):
        old = s.record(result, f"r{i}", now=200.0 + i)
        if old is not None:
            changes.append((old, s.status))
    return changes


def test_default_thresholds_follow_every_result() -> None:
    s = state()
    assert feed(s, C, C, P, W, C, P) == [(P, C), (C, P), (P, W), (W, C), (C, P)]


def test_failures_before_critical() -> None:
    s = state(failures=3)
    assert feed(s, C, C) == []
    assert s.status is P and s.failures == 2
    assert s.record(C, "third", now=300.0) is P
    assert (s.status, s.output, s.changed_at) == (C, "third", 300.0)


def test_a_pass_resets_the_failure_run() -> None:
    s = state(failures=3)
    assert feed(s, C, C, P, C, C) == []
    assert s.status is P
    assert feed(s, C) == [(P, C)]


def test_successes_before_passing() -> None:
    s = state(initial="critical", successes=3)
    assert feed(s, P, P) == []
    assert s.status is C and s.successes == 2
    assert feed(s, P) == [(C, P)]


def test_a_failure_resets_the_success_run() -> None:
    s = state(initial="critical", successes=2)
    assert feed(s, P, C, P) == []
    assert feed(s, P) == [(C, P)]


def test_warning_counts_as_a_failure_but_is_reported_as_warning() -> None:
    s = state(failures=2)
    assert feed(s, W) == []
    assert feed(s, W) == [(P, W)]
    # Past the threshold the status follows each failing result at once.
    assert feed(s, C) == [(W, C)]
    assert feed(s, W) == [(C, W)]


def test_mixed_warning_and_critical_reach_the_threshold_together() -> None:
    s = state(failures=2)
    assert feed(s, W, C) == [(P, C)]


def test_output_follows_only_results_that_agree_with_the_status() -> None:
    s = state(failures=2)
    s.record(P, "fine", now=1.0)
    assert s.output == "fine"
    s.record(C, "refused", now=2.0)  # inside the threshold
    assert (s.status, s.output) == (P, "fine")
    s.record(C, "refused again", now=3.0)
    assert (s.status, s.output) == (C, "refused again")
    s.record(C, "still refused", now=4.0)
    assert s.output == "still refused"
    assert s.changed_at == 3.0


def test_initial_state_and_detail() -> None:
    s = state(initial="unknown")
    detail = s.detail()
    assert detail.status is U
    assert detail.kind is CheckKind.TCP
    assert detail.name == "tcp h:1"
    assert detail.changed_at == 100.0 and detail.changed_at_ms == 100_000
    assert detail.checked_at is None
    assert (detail.consecutive_failures, detail.consecutive_successes) == (0, 0)
    wire = detail.to_check_status()
    assert (wire.name, wire.status, wire.output, wire.changed_at_ms) == ("tcp h:1", U, "", 100_000)


def test_force_skips_hysteresis() -> None:
    s = state(failures=5, successes=5)
    assert s.force(C, "expired", now=1.0) is P
    assert s.force(C, "expired", now=2.0) is None
    assert s.force(P, "ok", now=3.0) is C
    assert (s.status, s.output) == (P, "ok")


@pytest.mark.parametrize(
    ("statuses", "worst"),
    [
        ([], P),
        ([P, P], P),
        ([P, U], U),
        ([U, W], W),
        ([W, P, C, U], C),
        ([C], C),
    ],
)
def test_worst_status(statuses: list[HealthStatus], worst: HealthStatus) -> None:
    assert worst_status(statuses) is worst
