"""Locality preference: same zone first, then same region, then anywhere.

A wrapper, not a strategy of its own: it splits the endpoints into three
tiers by where they run relative to the caller, gives each tier its own
instance of the wrapped strategy, and sends each pick to the nearest tier
that can serve on its own. All tiers share one ejection set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sdk.balancer._base import Balancer, BalancerBase, Clock, Ejections
from sdk.balancer._endpoint import Endpoint
from sdk.balancer._errors import NoEndpointsError

__all__ = ["Locality", "LocalityBalancer"]


@dataclass(frozen=True, slots=True)
class Locality:
    """Where the caller runs. An empty zone or region never matches."""

    zone: str = ""
    region: str = ""

    def tier(self, endpoint: Endpoint) -> int:
        """0 for the same zone, 1 for the same region, 2 for anywhere else."""
        region_conflicts = bool(self.region and endpoint.region and endpoint.region != self.region)
        if self.zone and endpoint.zone == self.zone and not region_conflicts:
            return 0
        if self.region and endpoint.region == self.region:
            return 1
        return 2


_TIER_NAMES = ("zone", "region", "any")


def _inner(balancer: Balancer) -> BalancerBase:
    # The wrapper reads the inner balancers' availability directly, so it wraps
    # only the package's own strategies.
    if not isinstance(balancer, BalancerBase):
        raise TypeError(
            f"LocalityBalancer wraps balancers made by make_balancer() without locality, "
            f"got {type(balancer).__name__}"
        )
    return balancer


class LocalityBalancer:
    """Routes to the nearest tier able to serve on its own, with the wrapped strategy.

    A tier can serve on its own when it has at least one available endpoint
    (not CRITICAL, not ejected) and is not below the panic threshold, i.e.
    its inner balancer would not panic. The first such tier of zone, region,
    any gets every pick. If no tier qualifies, the nearest tier with any
    available endpoint serves (and panics within itself), failing that the
    nearest non-empty one; with ``panic_threshold=0`` this is simply "the
    nearest tier with an available endpoint".

    ``factory`` makes one inner balancer per tier, e.g.
    ``lambda: make_balancer("least_connections")`` (what
    ``make_balancer(name, locality=...)`` does); ``clock`` is the clock
    ejection times are on, the inner balancers' one. Each endpoint's in-flight
    count and latency live in its tier's balancer, and ``release()`` is
    routed there. Tier choice is recomputed in ``update()`` and when the
    ejection set changes, so a pick costs the inner pick plus O(1).
    Not thread-safe: one asyncio event loop (or one thread).
    """

    def __init__(
        self,
        factory: Callable[[], Balancer],
        locality: Locality,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self._locality = locality
        self._tiers = [_inner(factory()) for _ in _TIER_NAMES]
        self._ejections = Ejections(clock)
        for inner in self._tiers:
            inner.share_ejections(self._ejections)
        self._ejections_seen = -1
        self._tier_of: dict[str, BalancerBase] = {}
        self._active: BalancerBase | None = None
        self._active_index = -1
        self._order: tuple[Endpoint, ...] = ()

    @property
    def name(self) -> str:
        return self._tiers[0].name

    @property
    def locality(self) -> Locality:
        return self._locality

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self._order

    @property
    def panicking(self) -> bool:
        self._refresh()
        return self._active is not None and self._active.panicking

    @property
    def active_tier(self) -> str | None:
        """Which tier picks go to now: ``"zone"``, ``"region"``, ``"any"``, or None if none."""
        self._refresh()
        return _TIER_NAMES[self._active_index] if self._active is not None else None

    @property
    def ejected(self) -> frozenset[str]:
        return self._ejections.current()

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """Splits the endpoints into tiers and updates each tier's balancer."""
        unique: dict[str, Endpoint] = {}
        for endpoint in endpoints:
            if not isinstance(endpoint, Endpoint):
                raise TypeError(f"expected Endpoint, got {type(endpoint).__name__}")
            unique[endpoint.id] = endpoint
        split: list[list[Endpoint]] = [[], [], []]
        for endpoint in unique.values():
            split[self._locality.tier(endpoint)].append(endpoint)
        tier_of: dict[str, BalancerBase] = {}
        for inner, members in zip(self._tiers, split, strict=True):
            inner.update(members)
            tier_of.update(dict.fromkeys((e.id for e in members), inner))
        self._tier_of = tier_of
        self._order = tuple(unique.values())
        self._choose()

    def pick(self, key: str | bytes | None = None) -> Endpoint:
        """One endpoint from the active tier; :class:`NoEndpointsError` if there is none."""
        ejections = self._ejections
        if ejections.records:
            ejections.poll()
        if ejections.version != self._ejections_seen:
            self._choose()
        if self._active is None:
            total = len(self._order)
            raise NoEndpointsError.for_counts(total, total)
        return self._active.pick(key)

    def release(
        self, endpoint: Endpoint | str, *, latency: float | None = None, failed: bool = False
    ) -> None:
        inner = self._tier_of.get(endpoint if isinstance(endpoint, str) else endpoint.id)
        if inner is not None:
            inner.release(endpoint, latency=latency, failed=failed)

    def eject(self, endpoint_id: str, until: float) -> None:
        """As :meth:`BalancerBase.eject`; the tier choice follows the ejection."""
        self._ejections.eject(endpoint_id, until)

    def uneject(self, endpoint_id: str) -> None:
        self._ejections.uneject(endpoint_id)

    def in_flight(self, endpoint_id: str) -> int:
        inner = self._tier_of.get(endpoint_id)
        return inner.in_flight(endpoint_id) if inner is not None else 0

    def __len__(self) -> int:
        return len(self._order)

    def __repr__(self) -> str:
        return (
            f"<LocalityBalancer {self.name} {self._locality} endpoints={len(self._order)} "
            f"active={_TIER_NAMES[self._active_index] if self._active else None}>"
        )

    def _refresh(self) -> None:
        self._ejections.poll()
        if self._ejections.version != self._ejections_seen:
            self._choose()

    def _choose(self) -> None:
        self._ejections_seen = self._ejections.version
        for inner in self._tiers:
            inner._refresh()  # same package: brings its availability count up to date
        self._active, self._active_index = None, -1
        tests: list[Callable[[BalancerBase], bool]] = [
            lambda b: b._available > 0 and not b._panicking,
            lambda b: b._available > 0,
            lambda b: len(b) > 0,
        ]
        for test in tests:
            for index, inner in enumerate(self._tiers):
                if test(inner):
                    self._active, self._active_index = inner, index
                    return
