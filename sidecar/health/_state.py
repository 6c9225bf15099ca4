"""The state of one check: hysteresis, what it reports, and the records handed out.

Hysteresis, per check:

- a PASSING result adds one to the run of successes and ends the run of
  failures; the reported status turns PASSING once the run reaches
  ``successes_before_passing``;
- any other result (WARNING or CRITICAL) adds one to the run of failures and
  ends the run of successes; once the run reaches ``failures_before_critical``
  the reported status becomes that result's status. So a WARNING counts as a
  failure for the threshold but is reported as WARNING, not CRITICAL; and
  while the threshold is met, the status follows each result between
  WARNING and CRITICAL at once.

The reported output changes only with a result that agrees with the
reported status (a single failing probe inside the threshold does not make a
PASSING check's output talk about a failure).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sdk import CheckStatus, HealthStatus
from sidecar.health._base import CheckConfig, CheckKind, ProbeCheckConfig

__all__ = [
    "CheckDetail",
    "HealthTransition",
    "worst_status",
]

# Worst first wins: a definite WARNING outranks UNKNOWN (no verdict yet).
_RANK = {
    HealthStatus.PASSING: 0,
    HealthStatus.UNKNOWN: 1,
    HealthStatus.WARNING: 2,
    HealthStatus.CRITICAL: 3,
}


def worst_status(statuses: Iterable[HealthStatus]) -> HealthStatus:
    """The aggregate of several checks: CRITICAL > WARNING > UNKNOWN > PASSING.

    No checks at all aggregate to PASSING: an instance without checks is
    taken to be healthy.
    """
    worst = HealthStatus.PASSING
    rank = 0
    for status in statuses:
        r = _RANK[status]
        if r > rank:
            worst, rank = status, r
    return worst


@dataclass(frozen=True, slots=True)
class HealthTransition:
    """A check's reported status changed (never emitted for an unchanged one).

    ``at`` is Unix time in seconds; ``instance_status`` is the instance's
    aggregate right after the change.
    """

    instance_id: str
    check_id: str
    name: str
    old: HealthStatus
    new: HealthStatus
    output: str
    at: float
    instance_status: HealthStatus

    @property
    def at_ms(self) -> int:
        return int(self.at * 1000)


@dataclass(frozen=True, slots=True)
class CheckDetail:
    """A snapshot of one check, as ``HealthEngine.checks()`` reports it.

    ``changed_at`` is the Unix time (seconds) of the last change of the
    reported status, or of the check's creation; ``checked_at`` of its last
    result (None before the first). The two counters are the current runs
    of consecutive failing and passing results.
    """

    check_id: str
    instance_id: str
    name: str
    kind: CheckKind
    status: HealthStatus
    output: str
    changed_at: float
    checked_at: float | None
    consecutive_failures: int
    consecutive_successes: int

    @property
    def changed_at_ms(self) -> int:
        return int(self.changed_at * 1000)

    def to_check_status(self) -> CheckStatus:
        """The SDK's (and the wire's) form: name, status, output, changed_at_ms."""
        return CheckStatus(
            name=self.name,
            status=self.status,
            output=self.output,
            changed_at_ms=self.changed_at_ms,
        )


class CheckState:
    """The mutable state of one check; owned and mutated by the engine only."""

    __slots__ = (
        "changed_at",
        "check_id",
        "checked_at",
        "config",
        "failures",
        "failures_needed",
        "instance_id",
        "output",
        "status",
        "successes",
        "successes_needed",
    )

    def __init__(self, check_id: str, instance_id: str, config: CheckConfig, now: float) -> None:
        self.check_id = check_id
        self.instance_id = instance_id
        self.config = config
        self.status = config.initial_status
        self.output = ""
        self.changed_at = now
        self.checked_at: float | None = None
        self.failures = 0
        self.successes = 0
        if isinstance(config, ProbeCheckConfig):
            self.failures_needed = config.failures_before_critical
            self.successes_needed = config.successes_before_passing
        else:
            self.failures_needed = self.successes_needed = 1

    def record(self, result: HealthStatus, output: str, now: float) -> HealthStatus | None:
        """Applies one probe result; returns the previous status if the reported one changed."""
        self.checked_at = now
        if result == HealthStatus.PASSING:
            self.successes += 1
            self.failures = 0
            if self.status == HealthStatus.PASSING:
                self.output = output
                return None
            if self.successes >= self.successes_needed:
                return self._set(result, output, now)
            return None
        self.failures += 1
        self.successes = 0
        if self.failures < self.failures_needed:
            return None
        if result == self.status:
            self.output = output
            return None
        return self._set(result, output, now)

    def force(self, status: HealthStatus, output: str, now: float) -> HealthStatus | None:
        """Sets the status without hysteresis (TTL reports and expiry)."""
        self.checked_at = now
        if status == HealthStatus.PASSING:
            self.successes += 1
            self.failures = 0
        else:
            self.failures += 1
            self.successes = 0
        if status == self.status:
            self.output = output
            return None
        return self._set(status, output, now)

    def _set(self, status: HealthStatus, output: str, now: float) -> HealthStatus:
        old = self.status
        self.status = status
        self.output = output
        self.changed_at = now
        return old

    def detail(self) -> CheckDetail:
        return CheckDetail(
            check_id=self.check_id,
            instance_id=self.instance_id,
            name=self.config.name,
            kind=self.config.kind,
            status=self.status,
            output=self.output,
            changed_at=self.changed_at,
            checked_at=self.checked_at,
            consecutive_failures=self.failures,
            consecutive_successes=self.successes,
        )
