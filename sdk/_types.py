"""The SDK's own value types, and their conversions to and from the wire.

Applications work with these frozen dataclasses and string enums; the
generated protobuf classes stay behind ``to_proto`` / ``from_proto``. Every
type also has ``to_dict()``, a JSON- and YAML-ready form with stable
lowercase keys and enum values as their names (``"PASSING"``).
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ecosystem.v1 import registry_pb2 as pb

__all__ = [
    "CheckStatus",
    "Deregistration",
    "HealthStatus",
    "Instance",
    "InstanceList",
    "Liveness",
    "Service",
    "ServiceDetail",
    "ServiceList",
    "WatchEvent",
    "WatchEventType",
]


class HealthStatus(enum.StrEnum):
    """Aggregate health of an instance, or the result of one check."""

    PASSING = "PASSING"
    WARNING = "WARNING"
    CRITICAL = "CRITICAL"
    UNKNOWN = "UNKNOWN"

    def to_proto(self) -> pb.HealthStatus:
        return _HEALTH_TO_PB[self]

    @classmethod
    def from_proto(cls, value: int) -> HealthStatus:
        """Unset or unrecognised values read as UNKNOWN."""
        return _HEALTH_FROM_PB.get(value, cls.UNKNOWN)

    @classmethod
    def parse(cls, value: HealthStatus | str) -> HealthStatus:
        """Accepts a member or its name in any case (``"passing"``)."""
        if isinstance(value, HealthStatus):
            return value
        try:
            return cls(value.strip().upper())
        except ValueError:
            names = ", ".join(m.value for m in cls)
            raise ValueError(f"unknown health {value!r}; expected one of {names}") from None


class Liveness(enum.StrEnum):
    """How long an instance lives: until deregistered, or while its lease lives."""

    PERSISTENT = "PERSISTENT"
    EPHEMERAL = "EPHEMERAL"

    def to_proto(self) -> pb.Liveness:
        return _LIVENESS_TO_PB[self]

    @classmethod
    def from_proto(cls, value: int) -> Liveness:
        """Unset values read as PERSISTENT, the server's default."""
        return _LIVENESS_FROM_PB.get(value, cls.PERSISTENT)


class WatchEventType(enum.StrEnum):
    """What a :class:`WatchEvent` says.

    PUT and DELETE change one instance. RESYNC means "forget what you hold, a
    full snapshot follows"; SNAPSHOT_END closes that snapshot. PROGRESS says
    nothing matched up to its revision.
    """

    PUT = "PUT"
    DELETE = "DELETE"
    RESYNC = "RESYNC"
    SNAPSHOT_END = "SNAPSHOT_END"
    PROGRESS = "PROGRESS"

    def to_proto(self) -> pb.WatchEventType:
        return _EVENT_TO_PB[self]

    @classmethod
    def from_proto(cls, value: int) -> WatchEventType:
        try:
            return _EVENT_FROM_PB[value]
        except KeyError:
            raise ValueError(f"unknown watch event type {value}") from None


_HEALTH_TO_PB: dict[HealthStatus, pb.HealthStatus] = {
    HealthStatus.PASSING: pb.HEALTH_STATUS_PASSING,
    HealthStatus.WARNING: pb.HEALTH_STATUS_WARNING,
    HealthStatus.CRITICAL: pb.HEALTH_STATUS_CRITICAL,
    HealthStatus.UNKNOWN: pb.HEALTH_STATUS_UNKNOWN,
}
_HEALTH_FROM_PB: dict[int, HealthStatus] = {v: k for k, v in _HEALTH_TO_PB.items()}
_LIVENESS_TO_PB: dict[Liveness, pb.Liveness] = {
    Liveness.PERSISTENT: pb.LIVENESS_PERSISTENT,
    Liveness.EPHEMERAL: pb.LIVENESS_EPHEMERAL,
}
_LIVENESS_FROM_PB: dict[int, Liveness] = {v: k for k, v in _LIVENESS_TO_PB.items()}
_EVENT_TO_PB: dict[WatchEventType, pb.WatchEventType] = {
    WatchEventType.PUT: pb.WATCH_EVENT_TYPE_PUT,
    WatchEventType.DELETE: pb.WATCH_EVENT_TYPE_DELETE,
    WatchEventType.RESYNC: pb.WATCH_EVENT_TYPE_RESYNC,
    WatchEventType.SNAPSHOT_END: pb.WATCH_EVENT_TYPE_SNAPSHOT_END,
    WatchEventType.PROGRESS: pb.WATCH_EVENT_TYPE_PROGRESS,
}
_EVENT_FROM_PB: dict[int, WatchEventType] = {v: k for k, v in _EVENT_TO_PB.items()}


@dataclass(frozen=True, slots=True)
class CheckStatus:
    """The latest result of one health check of an instance."""

    name: str
    status: HealthStatus = HealthStatus.UNKNOWN
    output: str = ""
    #: Unix time in milliseconds of the last status change (0 if unknown).
    changed_at_ms: int = 0

    def to_proto(self) -> pb.CheckStatus:
        return pb.CheckStatus(
            name=self.name,
            status=self.status.to_proto(),
            output=self.output,
            changed_at_ms=self.changed_at_ms,
        )

    @classmethod
    def from_proto(cls, msg: pb.CheckStatus) -> CheckStatus:
        return cls(
            name=str(msg.name),
            status=HealthStatus.from_proto(msg.status),
            output=str(msg.output),
            changed_at_ms=int(msg.changed_at_ms),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status.value,
            "output": self.output,
            "changed_at_ms": self.changed_at_ms,
        }


_EMPTY: Mapping[str, str] = MappingProxyType({})


def frozen_mapping(value: Mapping[str, str]) -> Mapping[str, str]:
    """A read-only copy of ``value``; an already read-only one is kept, and every
    empty one is the same object (most instances have no metadata)."""
    if not value:
        return _EMPTY
    if isinstance(value, MappingProxyType):
        return value
    return MappingProxyType(dict(value))


@dataclass(frozen=True, slots=True)
class Instance:
    """One running copy of a service, as the registry holds it.

    ``tags`` and ``metadata`` are stored as a tuple and a read-only mapping,
    whatever iterable or mapping was passed in. Revisions and the lease id
    are set by the control plane.
    """

    id: str
    service: str
    address: str
    port: int
    namespace: str = ""
    node: str = ""
    platform: str = ""
    region: str = ""
    zone: str = ""
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)
    weight: int = 0
    health: HealthStatus = HealthStatus.UNKNOWN
    checks: tuple[CheckStatus, ...] = ()
    liveness: Liveness = Liveness.PERSISTENT
    lease_id: int = 0
    create_revision: int = 0
    mod_revision: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", tuple(self.tags))
        object.__setattr__(self, "metadata", frozen_mapping(self.metadata))
        object.__setattr__(self, "checks", tuple(self.checks))

    def to_proto(self) -> pb.Instance:
        """The ``ecosystem.v1.Instance`` message for this instance."""
        _check_uint32("port", self.port)
        _check_uint32("weight", self.weight)
        return pb.Instance(
            id=self.id,
            service=self.service,
            namespace=self.namespace,
            node=self.node,
            platform=self.platform,
            region=self.region,
            zone=self.zone,
            address=self.address,
            port=self.port,
            tags=list(self.tags),
            metadata=dict(self.metadata),
            weight=self.weight,
            health=self.health.to_proto(),
            checks=[c.to_proto() for c in self.checks],
            liveness=self.liveness.to_proto(),
            lease_id=self.lease_id,
            create_revision=self.create_revision,
            mod_revision=self.mod_revision,
        )

    @classmethod
    def from_proto(cls, msg: pb.Instance) -> Instance:
        """Reads an ``ecosystem.v1.Instance`` message."""
        # Names shared by many instances are interned: a sidecar holding
        # 10,000 endpoints keeps one copy of each service, node and zone name.
        return cls(
            id=str(msg.id),
            service=sys.intern(msg.service),
            address=str(msg.address),
            port=int(msg.port),
            namespace=sys.intern(msg.namespace),
            node=sys.intern(msg.node),
            platform=sys.intern(msg.platform),
            region=sys.intern(msg.region),
            zone=sys.intern(msg.zone),
            tags=tuple(str(t) for t in msg.tags),
            metadata={str(k): str(v) for k, v in msg.metadata.items()},
            weight=int(msg.weight),
            health=HealthStatus.from_proto(msg.health),
            checks=tuple(CheckStatus.from_proto(c) for c in msg.checks),
            liveness=Liveness.from_proto(msg.liveness),
            lease_id=int(msg.lease_id),
            create_revision=int(msg.create_revision),
            mod_revision=int(msg.mod_revision),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "service": self.service,
            "namespace": self.namespace,
            "node": self.node,
            "platform": self.platform,
            "region": self.region,
            "zone": self.zone,
            "address": self.address,
            "port": self.port,
            "tags": list(self.tags),
            "metadata": dict(sorted(self.metadata.items())),
            "weight": self.weight,
            "health": self.health.value,
            "checks": [c.to_dict() for c in self.checks],
            "liveness": self.liveness.value,
            "lease_id": self.lease_id,
            "create_revision": self.create_revision,
            "mod_revision": self.mod_revision,
        }


@dataclass(frozen=True, slots=True)
class Service:
    """A service name in a namespace, with its instance counts by health."""

    name: str
    namespace: str = ""
    instance_count: int = 0
    passing_count: int = 0
    warning_count: int = 0
    critical_count: int = 0
    unknown_count: int = 0

    def to_proto(self) -> pb.Service:
        return pb.Service(
            name=self.name,
            namespace=self.namespace,
            instance_count=self.instance_count,
            passing_count=self.passing_count,
            warning_count=self.warning_count,
            critical_count=self.critical_count,
            unknown_count=self.unknown_count,
        )

    @classmethod
    def from_proto(cls, msg: pb.Service) -> Service:
        return cls(
            name=str(msg.name),
            namespace=str(msg.namespace),
            instance_count=int(msg.instance_count),
            passing_count=int(msg.passing_count),
            warning_count=int(msg.warning_count),
            critical_count=int(msg.critical_count),
            unknown_count=int(msg.unknown_count),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "namespace": self.namespace,
            "instance_count": self.instance_count,
            "passing_count": self.passing_count,
            "warning_count": self.warning_count,
            "critical_count": self.critical_count,
            "unknown_count": self.unknown_count,
        }


@dataclass(frozen=True, slots=True)
class Deregistration:
    """What a deregister did: the store revision of the removal (the current
    one when nothing was removed), and whether this request removed the
    instance. ``deleted`` is False when it was not registered — also when an
    earlier attempt of the same call removed it and its answer was lost."""

    revision: int
    deleted: bool

    @classmethod
    def from_proto(cls, msg: pb.DeregisterInstanceResponse) -> Deregistration:
        return cls(revision=int(msg.revision), deleted=bool(msg.deleted))

    def to_dict(self) -> dict[str, Any]:
        return {"revision": self.revision, "deleted": self.deleted}


@dataclass(frozen=True, slots=True)
class ServiceDetail:
    """One service, all its instances, and the store revision they were read at."""

    service: Service
    instances: tuple[Instance, ...]
    revision: int

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.service.to_dict(),
            "revision": self.revision,
            "instances": [i.to_dict() for i in self.instances],
        }


@dataclass(frozen=True, slots=True)
class ServiceList:
    """Services read at one store revision; iterate it like a list."""

    services: tuple[Service, ...]
    revision: int

    def __iter__(self) -> Iterator[Service]:
        return iter(self.services)

    def __len__(self) -> int:
        return len(self.services)

    def to_dict(self) -> dict[str, Any]:
        return {"revision": self.revision, "services": [s.to_dict() for s in self.services]}


@dataclass(frozen=True, slots=True)
class InstanceList:
    """Instances read at one store revision; iterate it like a list.

    ``revision`` is where a watch can start to see every later change.
    """

    instances: tuple[Instance, ...]
    revision: int

    def __iter__(self) -> Iterator[Instance]:
        return iter(self.instances)

    def __len__(self) -> int:
        return len(self.instances)

    def to_dict(self) -> dict[str, Any]:
        return {"revision": self.revision, "instances": [i.to_dict() for i in self.instances]}


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change in a watch stream; ``instance`` is set for PUT and DELETE.

    For DELETE, ``instance`` holds the last state of the removed instance.
    """

    type: WatchEventType
    revision: int
    instance: Instance | None = None

    def to_proto(self) -> pb.WatchEvent:
        msg = pb.WatchEvent(type=self.type.to_proto(), revision=self.revision)
        if self.instance is not None:
            msg.instance.CopyFrom(self.instance.to_proto())
        return msg

    @classmethod
    def from_proto(cls, msg: pb.WatchEvent) -> WatchEvent:
        kind = WatchEventType.from_proto(msg.type)
        carries = kind in (WatchEventType.PUT, WatchEventType.DELETE) and msg.HasField("instance")
        return cls(
            type=kind,
            revision=int(msg.revision),
            instance=Instance.from_proto(msg.instance) if carries else None,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type.value, "revision": self.revision}
        if self.instance is not None:
            out["instance"] = self.instance.to_dict()
        return out


def health_filter(values: Iterable[HealthStatus | str]) -> list[pb.HealthStatus]:
    """The wire form of a health filter given as members or names."""
    return [HealthStatus.parse(v).to_proto() for v in values]


def _check_uint32(name: str, value: int) -> None:
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{name} must be between 0 and {0xFFFFFFFF}, got {value}")
