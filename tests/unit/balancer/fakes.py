"""Builders and a fake clock for the balancer tests."""

from __future__ import annotations

from sdk._types import HealthStatus
from sdk.balancer import Endpoint


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def ep(
    id: str,
    *,
    weight: int = 1,
    health: HealthStatus = HealthStatus.PASSING,
    zone: str = "",
    region: str = "",
) -> Endpoint:
    """An endpoint with a made-up address; PASSING unless told otherwise."""
    return Endpoint(
        id=id, address="10.0.0.1", port=8000, weight=weight, health=health, zone=zone, region=region
    )


def eps(
    n: int, *, prefix: str = "e", health: HealthStatus = HealthStatus.PASSING
) -> list[Endpoint]:
    return [ep(f"{prefix}{i}", health=health) for i in range(n)]
