"""The strategies that need no request key: round robin, random, health-ordered,
weighted, least connections and power of two choices over latency.

Each rebuilds its structure in ``_rebuild`` (from ``update()``) and picks in
O(1) or O(log n); see ``sdk.balancer._base`` for health, ejection and panic.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_right
from itertools import accumulate
from math import exp
from typing import Unpack

from sdk._types import HealthStatus
from sdk.balancer._base import BalancerBase, CommonOptions, Slot
from sdk.balancer._wrr import SmoothWeighted

__all__ = [
    "HealthBasedBalancer",
    "LeastConnectionsBalancer",
    "P2CEwmaBalancer",
    "RandomBalancer",
    "RoundRobinBalancer",
    "WeightedBalancer",
]


class RoundRobinBalancer(BalancerBase):
    """Each available endpoint in turn; weights are ignored (use ``weighted`` for them).

    The turn survives updates (it continues at the same index), and starts
    at a random index so that many clients do not all begin with the same
    endpoint. O(1) per pick.
    """

    name = "round_robin"

    def __init__(self, **common: Unpack[CommonOptions]) -> None:
        super().__init__(**common)
        self._list: list[Slot] = []
        self._next = -1

    def _rebuild(self, candidates: list[Slot]) -> None:
        self._list = list(candidates)
        if self._next < 0 and candidates:
            self._next = self._rng.randrange(len(candidates))

    def _pick(self, key: str | bytes | None) -> Slot:
        items = self._list
        i = self._next
        if i >= len(items):
            i = 0
        self._next = i + 1
        return items[i]


class RandomBalancer(BalancerBase):
    """An available endpoint at random, in proportion to its weight.

    O(1) when all weights are equal, otherwise a binary search over the
    cumulative weights: O(log n).
    """

    name = "random"

    def __init__(self, **common: Unpack[CommonOptions]) -> None:
        super().__init__(**common)
        self._list: list[Slot] = []
        self._cumulative: list[int] = []
        self._total = 0

    def _rebuild(self, candidates: list[Slot]) -> None:
        self._list = list(candidates)
        weights = [s.endpoint.weight for s in candidates]
        if weights and min(weights) == max(weights):
            self._cumulative = []
        else:
            self._cumulative = list(accumulate(weights))
        self._total = sum(weights)

    def _pick(self, key: str | bytes | None) -> Slot:
        if not self._cumulative:
            return self._list[int(self._rng.random() * len(self._list))]
        return self._list[bisect_right(self._cumulative, self._rng.random() * self._total)]


class WeightedBalancer(BalancerBase):
    """Smooth weighted round robin over the available endpoints (see ``_wrr``).

    Exact shares over every cycle of ``sum(weights)`` picks, with the picks
    of heavy endpoints interleaved rather than bunched. A change of the
    candidate ids or weights restarts the cycle; other updates do not.
    """

    name = "weighted"

    def __init__(self, **common: Unpack[CommonOptions]) -> None:
        super().__init__(**common)
        self._schedule = SmoothWeighted()

    def _rebuild(self, candidates: list[Slot]) -> None:
        self._schedule.rebuild(candidates)

    def _pick(self, key: str | bytes | None) -> Slot:
        return self._schedule.next()


_MIN_LATENCY = 1e-6  # seconds

# Health tiers in order of preference. UNKNOWN (not checked yet) ranks after
# PASSING but before WARNING (known to be degraded).
_TIERS = (HealthStatus.PASSING, HealthStatus.UNKNOWN, HealthStatus.WARNING)


class HealthBasedBalancer(WeightedBalancer):
    """Smooth weighted round robin over the healthiest endpoints.

    Health tiers are PASSING, then UNKNOWN, then WARNING; CRITICAL and ejected
    endpoints are used only in panic. The balancer routes to the best tier
    alone when it holds at least ``panic_threshold`` of all endpoints, and
    otherwise widens to the next tier, and the next: the same rule that
    triggers panic, applied tier by tier, so a lone PASSING endpoint is not
    flooded while WARNING ones idle. With ``panic_threshold=0`` the best
    non-empty tier always serves alone.
    """

    name = "health_based"

    def _select(self, available: list[Slot]) -> list[Slot]:
        need = self._panic_threshold * len(self._order)
        chosen: list[Slot] = []
        for tier in _TIERS:
            chosen.extend(s for s in available if s.endpoint.health == tier)
            if chosen and len(chosen) >= need:
                break
        return chosen


class LeastConnectionsBalancer(BalancerBase):
    """The available endpoint with the fewest requests in flight, relative to its weight.

    Picks the smallest ``(in_flight + 1) / weight``; among equals, the one
    that has waited longest, so idle endpoints take turns. A heap with lazy
    deletion: O(log n) per pick and per release. Needs ``release()`` after
    every pick.
    """

    name = "least_connections"

    def __init__(self, **common: Unpack[CommonOptions]) -> None:
        super().__init__(**common)
        self._heap: list[tuple[float, int, Slot]] = []
        self._seq = 0
        self._live = 0

    def _entry(self, slot: Slot, in_flight: int) -> tuple[float, int, Slot]:
        self._seq += 1
        slot.seq = self._seq
        return ((in_flight + 1) / slot.endpoint.weight, self._seq, slot)

    def _rebuild(self, candidates: list[Slot]) -> None:
        order = list(candidates)
        self._rng.shuffle(order)  # ties start in a random order, not list order
        self._heap = [self._entry(s, s.in_flight) for s in order]
        heapq.heapify(self._heap)
        self._live = len(order)

    def _pick(self, key: str | bytes | None) -> Slot:
        heap = self._heap
        while True:
            _, seq, slot = heap[0]
            if slot.seq == seq:
                break
            heapq.heappop(heap)  # superseded by a newer entry for the same slot
        # Re-file the slot under the count it is about to have (the caller adds one).
        heapq.heapreplace(heap, self._entry(slot, slot.in_flight + 1))
        return slot

    def _on_release(self, slot: Slot, latency: float | None, failed: bool) -> None:
        if not slot.routable:
            return
        heapq.heappush(self._heap, self._entry(slot, slot.in_flight))
        if len(self._heap) > 2 * self._live + 32:
            live = [e for e in self._heap if e[2].seq == e[1]]
            heapq.heapify(live)
            self._heap = live


class P2CEwmaBalancer(BalancerBase):
    """Power of two choices: of two random available endpoints, the one with the lower cost.

    ``cost = latency * (in_flight + 1) / weight``, where latency is an
    exponentially weighted moving average of the latencies given to
    ``release()`` (``smoothing`` is the weight of a new sample). A failed
    request counts as at least ``failure_penalty`` seconds. While an endpoint
    gets no samples its estimate relaxes toward the neutral value with time
    constant ``decay`` seconds, so an endpoint that was once slow is tried
    again. An endpoint with no samples yet counts at the neutral value: the
    mean estimate of the endpoints that have one. O(1) per pick.
    """

    name = "p2c_ewma"
    options = ("smoothing", "decay", "failure_penalty")

    def __init__(
        self,
        *,
        smoothing: float = 0.3,
        decay: float = 10.0,
        failure_penalty: float = 1.0,
        **common: Unpack[CommonOptions],
    ) -> None:
        super().__init__(**common)
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing!r}")
        if not decay > 0.0:
            raise ValueError(f"decay must be a number of seconds > 0, got {decay!r}")
        if not failure_penalty >= 0.0:
            raise ValueError(f"failure_penalty must be >= 0 seconds, got {failure_penalty!r}")
        self._smoothing = float(smoothing)
        self._decay = float(decay)
        self._failure_penalty = float(failure_penalty)
        self._list: list[Slot] = []
        self._sum = 0.0
        self._known = 0

    def _rebuild(self, candidates: list[Slot]) -> None:
        self._list = list(candidates)
        known = [s.ewma for s in self._order if s.ewma is not None]
        self._sum = math.fsum(known)
        self._known = len(known)

    def _neutral(self) -> float:
        return self._sum / self._known if self._known else 1.0

    def _estimate(self, slot: Slot, now: float, neutral: float) -> float:
        ewma = slot.ewma
        if ewma is None:
            return neutral
        return neutral + (ewma - neutral) * math.exp((slot.stamp - now) / self._decay)

    def _pick(self, key: str | bytes | None) -> Slot:
        items = self._list
        n = len(items)
        if n == 1:
            return items[0]
        rand = self._rng.random
        i = int(rand() * n)
        j = int(rand() * (n - 1))
        if j >= i:
            j += 1
        a, b = items[i], items[j]
        # Inlined _estimate: this is the hot path.
        now = self._clock()
        neutral = self._sum / self._known if self._known else 1.0
        scale = -1.0 / self._decay
        ewma = a.ewma
        cost_a = (
            neutral if ewma is None else neutral + (ewma - neutral) * exp((now - a.stamp) * scale)
        )
        ewma = b.ewma
        cost_b = (
            neutral if ewma is None else neutral + (ewma - neutral) * exp((now - b.stamp) * scale)
        )
        # The floor keeps a zero estimate from hiding the in-flight factor.
        if cost_a < _MIN_LATENCY:
            cost_a = _MIN_LATENCY
        if cost_b < _MIN_LATENCY:
            cost_b = _MIN_LATENCY
        cost_a = cost_a * (a.in_flight + 1) / a.endpoint.weight
        cost_b = cost_b * (b.in_flight + 1) / b.endpoint.weight
        return b if cost_b < cost_a else a

    def _on_release(self, slot: Slot, latency: float | None, failed: bool) -> None:
        if latency is None and not failed:
            return
        sample = latency or 0.0
        if failed:
            sample = max(sample, self._failure_penalty)
        now = self._clock()
        old = slot.ewma
        if old is None:
            new = sample
            self._known += 1
            self._sum += new
        else:
            current = self._estimate(slot, now, self._neutral())
            new = current + self._smoothing * (sample - current)
            self._sum += new - old
        slot.ewma = new
        slot.stamp = now

    def latency(self, endpoint_id: str) -> float | None:
        """The current latency estimate of an endpoint in seconds, None if it has none."""
        slot = self._slots.get(endpoint_id)
        if slot is None or slot.ewma is None:
            return None
        return self._estimate(slot, self._clock(), self._neutral())
