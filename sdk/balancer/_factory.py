"""``make_balancer``: a strategy by name, with validated options."""

from __future__ import annotations

import random
from typing import Any, overload

from sdk.balancer._base import Balancer, BalancerBase
from sdk.balancer._locality import Locality, LocalityBalancer
from sdk.balancer._ring_hash import RingHashBalancer
from sdk.balancer._strategies import (
    HealthBasedBalancer,
    LeastConnectionsBalancer,
    P2CEwmaBalancer,
    RandomBalancer,
    RoundRobinBalancer,
    WeightedBalancer,
)

__all__ = ["STRATEGIES", "make_balancer"]

_CLASSES: dict[str, type[BalancerBase]] = {
    cls.name: cls
    for cls in (
        RoundRobinBalancer,
        RandomBalancer,
        HealthBasedBalancer,
        WeightedBalancer,
        LeastConnectionsBalancer,
        P2CEwmaBalancer,
        RingHashBalancer,
    )
}

#: Every strategy name ``make_balancer`` accepts.
STRATEGIES: tuple[str, ...] = tuple(_CLASSES)

_COMMON = ("panic_threshold", "seed", "clock")


@overload
def make_balancer(name: str, *, locality: None = None, **options: Any) -> Balancer: ...
@overload
def make_balancer(name: str, *, locality: Locality, **options: Any) -> LocalityBalancer: ...
def make_balancer(name: str, *, locality: Locality | None = None, **options: Any) -> Balancer:
    """A new, empty balancer of the named strategy; call ``update()`` before ``pick()``.

    ``name`` is one of :data:`STRATEGIES`. Every strategy takes
    ``panic_threshold`` (0-1, default 0.5; 0 disables panic routing), ``seed``
    (for reproducible randomness) and ``clock`` (a monotonic clock in seconds,
    the one ``eject(until=...)`` is measured on). ``p2c_ewma`` also takes
    ``smoothing``, ``decay`` and ``failure_penalty``; ``ring_hash`` takes
    ``vnodes_per_weight`` and ``max_ring_size``. With ``locality``, the
    result is a :class:`LocalityBalancer` with one such balancer per tier.
    An unknown name raises ValueError, an option the strategy does not take
    TypeError, an out-of-range value ValueError.
    """
    cls = _CLASSES.get(name)
    if cls is None:
        raise ValueError(f"unknown balancer {name!r}; expected one of {', '.join(STRATEGIES)}")
    allowed = sorted((*_COMMON, *cls.options))
    for option in options:
        if option not in allowed:
            raise TypeError(
                f"balancer {name!r} takes no option {option!r}; it takes: {', '.join(allowed)}"
            )
    if locality is None:
        return cls(**options)
    if not isinstance(locality, Locality):
        raise TypeError(f"locality must be a Locality, got {type(locality).__name__}")
    seeds = random.Random(options.pop("seed", None))
    cls(**options)  # validates the options once, before any tier is built
    wrapper_options = {"clock": options["clock"]} if "clock" in options else {}
    return LocalityBalancer(
        lambda: cls(seed=seeds.getrandbits(64), **options), locality, **wrapper_options
    )
