"""Backoff policies shared by unary retries, watch reconnects and lease keepalives.

All delays use tenacity's full-jitter exponential strategy: a random delay
between 0 and ``min(maximum, initial * 2**attempt)``, so that many clients
cut off by the same control-plane restart do not come back in step.
"""

from __future__ import annotations

from dataclasses import dataclass

import tenacity

__all__ = ["Backoff", "RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard the SDK tries before giving up.

    ``max_attempts`` bounds retries of one safe unary call (which also stay
    within the call's timeout); ``initial`` and ``maximum`` shape the
    jittered delays between attempts, watch reconnects and failed keepalives.
    """

    max_attempts: int = 8
    initial: float = 0.05
    maximum: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 < self.initial <= self.maximum:
            raise ValueError("backoff delays must satisfy 0 < initial <= maximum")

    def wait(self, addresses: int) -> tenacity.wait.wait_base:
        """A tenacity wait strategy for one call over ``addresses`` servers.

        The first pass over the servers does not wait (failing over to the
        next one is free); after that, delays grow with jitter.
        """
        return _FailoverWait(
            addresses, tenacity.wait_random_exponential(self.initial, self.maximum)
        )

    def backoff(self) -> Backoff:
        return Backoff(self.initial, self.maximum)


class _FailoverWait(tenacity.wait.wait_base):
    def __init__(self, addresses: int, then: tenacity.wait.wait_base) -> None:
        self._addresses = addresses
        self._then = then

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        if retry_state.attempt_number < self._addresses:
            return 0.0
        return float(self._then(retry_state))


class Backoff:
    """Jittered exponential delays with an explicit reset.

    For loops that are not a single retried call: a watch that reconnects
    for as long as it is iterated, a keepalive that retries until the lease
    is safe. ``reset()`` after a success starts the delays small again.
    """

    def __init__(self, initial: float = 0.05, maximum: float = 2.0) -> None:
        self._strategy = tenacity.wait_random_exponential(multiplier=initial, max=maximum)
        self._state = tenacity.RetryCallState(tenacity.AsyncRetrying(), None, (), {})

    @property
    def attempts(self) -> int:
        """Failures since the last reset."""
        return self._state.attempt_number - 1

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        delay = float(self._strategy(self._state))
        self._state.attempt_number += 1
        return delay

    def reset(self) -> None:
        self._state.attempt_number = 1
