"""Token buckets in this process (``scope: local``), and what a decision says.

A bucket is kept as one number, the time at which it will be full again (the
"theoretical arrival time" of GCRA, which is a token bucket written
differently): a request at ``now`` moves it to ``max(tat, now) + interval``
and is allowed when that is at most ``capacity * interval`` ahead of now.
One dict lookup and a few float operations per request, no task per bucket,
and an idle bucket needs no timer: once ``tat`` has passed it is full, which
is the same as absent. The buckets of every route share one LRU-ordered map
of bounded size; the least recently used one goes when it is full, which
loses nothing when that bucket had refilled already (counted otherwise).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_BUCKETS", "Decision", "LocalBuckets"]

#: Buckets kept in one process by default (about 120 bytes each).
DEFAULT_MAX_BUCKETS = 100_000
# Relative slack for float sums: `capacity` requests at one instant fit exactly.
_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one request against a route's rate limit policies.

    ``limit`` is the bucket's capacity, ``remaining`` the whole tokens left
    after this request, ``reset`` the seconds until the bucket is full again
    and ``retry_after`` the seconds until a request would be allowed (0 when
    this one is). ``store_error`` marks a ``scope: global`` decision made
    without the store, by the policy's ``on_store_error``: its numbers are
    unknown.
    """

    allowed: bool
    limit: int
    remaining: int
    reset: float
    retry_after: float = 0.0
    store_error: bool = False


class LocalBuckets:
    """Every ``scope: local`` bucket of this gateway, at most ``max_buckets`` of them.

    ``clock`` is monotonic seconds (injected by tests). ``evicted_early``
    counts buckets dropped while not yet full: their keys got a full bucket
    back sooner than they should have (raise ``max_buckets`` when it grows).
    """

    __slots__ = ("_buckets", "_clock", "_max", "evicted_early")

    def __init__(
        self,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_buckets < 1:
            raise ValueError("max_buckets must be at least 1")
        self._buckets: OrderedDict[str, float] = OrderedDict()
        self._clock = clock
        self._max = max_buckets
        self.evicted_early = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, interval: float, capacity: int) -> Decision:
        """Takes one token from ``key``'s bucket (``capacity`` tokens, one back every
        ``interval`` seconds), or refuses to."""
        now = self._clock()
        buckets = self._buckets
        tolerance = interval * capacity
        tat = buckets.get(key)
        if tat is None:
            tat = now
        else:
            buckets.move_to_end(key)
            if tat < now:
                tat = now
        ahead = tat + interval - now
        if ahead > tolerance * (1.0 + _EPSILON):
            return Decision(False, capacity, 0, tat - now, ahead - tolerance)
        buckets[key] = now + ahead
        if len(buckets) > self._max:
            _, oldest = buckets.popitem(last=False)
            if oldest > now:
                self.evicted_early += 1
        remaining = int((tolerance - ahead) / interval + _EPSILON)
        return Decision(True, capacity, remaining, ahead)
