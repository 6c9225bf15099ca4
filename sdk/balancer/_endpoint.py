"""What a balancer picks from: one address of one instance, with its health and place."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sdk._types import HealthStatus, Instance, frozen_mapping

__all__ = ["Endpoint"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint a balancer can pick: an instance's address, weight, health and locality.

    ``id`` identifies the endpoint across updates: a balancer keeps its state
    (in-flight requests, latency estimate, ring position) for an id that is
    still present after :meth:`~sdk.balancer.Balancer.update`. A ``weight`` of 0
    (the registry's "unset") reads as 1; ``health`` may be given by name
    (``"passing"``); ``metadata`` is stored read-only.
    """

    id: str
    address: str
    port: int
    weight: int = 1
    health: HealthStatus = HealthStatus.UNKNOWN
    zone: str = ""
    region: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("an endpoint needs a non-empty id")
        if self.weight < 0:
            raise ValueError(f"endpoint {self.id!r}: weight must be >= 0, got {self.weight}")
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"endpoint {self.id!r}: port must be 0-65535, got {self.port}")
        if self.weight == 0:
            object.__setattr__(self, "weight", 1)
        if not isinstance(self.health, HealthStatus):
            object.__setattr__(self, "health", HealthStatus.parse(self.health))
        object.__setattr__(self, "metadata", frozen_mapping(self.metadata))

    @classmethod
    def from_instance(cls, instance: Instance) -> Endpoint:
        """The endpoint for a registry instance, keyed by the instance id."""
        return cls(
            id=instance.id,
            address=instance.address,
            port=instance.port,
            weight=instance.weight,
            health=instance.health,
            zone=instance.zone,
            region=instance.region,
            metadata=instance.metadata,
        )

    @property
    def authority(self) -> str:
        """``host:port``, with an IPv6 address in brackets: what a channel dials."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"
