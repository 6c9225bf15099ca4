"""The value types of the agent stream, and the check every update passes first.

Plain frozen dataclasses over the ``ecosystem.v1`` agent messages, so that
the sidecar (and anyone else holding an :class:`~sdk.agent._session.AgentSession`)
works with the SDK's own types: :class:`ServiceRef`, :class:`AgentNode`,
:class:`EndpointUpdate` of :class:`ServiceEndpoints`, :class:`SyncOutcome`,
:class:`BusAccess`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ecosystem.v1 import agent_pb2

from sdk._types import Instance

__all__ = [
    "DEFAULT_NAMESPACE",
    "AgentNode",
    "AgentState",
    "AgentStatus",
    "BusAccess",
    "EndpointUpdate",
    "ServiceEndpoints",
    "ServiceRef",
    "SyncOutcome",
    "check_update",
]

#: The namespace an empty one means.
DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True, slots=True)
class ServiceRef:
    """A service a sidecar's applications call; an empty namespace is "default"."""

    name: str
    namespace: str = ""

    @property
    def key(self) -> tuple[str, str]:
        """``(namespace, name)`` with the namespace normalised: what identifies it."""
        return (self.namespace or DEFAULT_NAMESPACE, self.name)

    def __str__(self) -> str:
        namespace = self.namespace or DEFAULT_NAMESPACE
        return self.name if namespace == DEFAULT_NAMESPACE else f"{namespace}/{self.name}"

    def to_proto(self) -> agent_pb2.ServiceRef:
        return agent_pb2.ServiceRef(name=self.name, namespace=self.namespace)

    @classmethod
    def from_proto(cls, msg: agent_pb2.ServiceRef) -> ServiceRef:
        return cls(name=str(msg.name), namespace=str(msg.namespace))


@dataclass(frozen=True, slots=True)
class AgentNode:
    """Who a sidecar is: its node id and where it runs."""

    id: str
    platform: str = ""
    region: str = ""
    zone: str = ""
    #: The sidecar's local API address, for operators.
    address: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("a node needs an id")
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    def to_proto(self) -> agent_pb2.Node:
        return agent_pb2.Node(
            id=self.id,
            platform=self.platform,
            region=self.region,
            zone=self.zone,
            address=self.address,
            metadata=dict(self.metadata),
        )


@dataclass(frozen=True, slots=True)
class ServiceEndpoints:
    """The complete current set of instances of one service."""

    service: ServiceRef
    instances: tuple[Instance, ...]

    @classmethod
    def from_proto(cls, msg: agent_pb2.ServiceEndpoints) -> ServiceEndpoints:
        return cls(
            service=ServiceRef.from_proto(msg.service),
            instances=tuple(Instance.from_proto(i) for i in msg.instances),
        )

    def to_proto(self) -> agent_pb2.ServiceEndpoints:
        return agent_pb2.ServiceEndpoints(
            service=self.service.to_proto(), instances=[i.to_proto() for i in self.instances]
        )


@dataclass(frozen=True, slots=True)
class EndpointUpdate:
    """A versioned update from the control plane: services not mentioned are unchanged.

    ``full`` marks the complete state of every subscribed service (the
    first update after a Subscribe).
    """

    version: int
    nonce: str
    services: tuple[ServiceEndpoints, ...]
    full: bool = False

    @classmethod
    def from_proto(cls, msg: agent_pb2.EndpointUpdate) -> EndpointUpdate:
        return cls(
            version=int(msg.version),
            nonce=str(msg.nonce),
            services=tuple(ServiceEndpoints.from_proto(s) for s in msg.services),
            full=bool(msg.full),
        )

    def to_proto(self) -> agent_pb2.EndpointUpdate:
        return agent_pb2.EndpointUpdate(
            version=self.version,
            nonce=self.nonce,
            services=[s.to_proto() for s in self.services],
            full=self.full,
        )


@dataclass(frozen=True, slots=True)
class SyncOutcome:
    """The control plane's answer to one SyncInstances."""

    revision: int
    created: int
    updated: int
    removed: int
    errors: tuple[str, ...] = ()

    @classmethod
    def from_proto(cls, msg: agent_pb2.SyncResult) -> SyncOutcome:
        return cls(
            revision=int(msg.revision),
            created=int(msg.created),
            updated=int(msg.updated),
            removed=int(msg.removed),
            errors=tuple(str(e) for e in msg.errors),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "created": self.created,
            "updated": self.updated,
            "removed": self.removed,
            "errors": list(self.errors),
        }


def check_update(update: EndpointUpdate) -> None:
    """Raises ValueError naming the first malformed part of an update.

    Each service must be named once; each instance needs an id, an address
    and a port from 1 to 65535, and must belong to the service it is listed
    under. A rejected update is NACKed and the previous state kept.
    """
    seen: set[tuple[str, str]] = set()
    for s, entry in enumerate(update.services):
        where = f"services[{s}]"
        if not entry.service.name:
            raise ValueError(f"{where}.service: no service name")
        if entry.service.key in seen:
            raise ValueError(f"{where}.service: {entry.service} appears twice")
        seen.add(entry.service.key)
        ids: set[str] = set()
        for i, instance in enumerate(entry.instances):
            at = f"{where}.instances[{i}]"
            if not instance.id:
                raise ValueError(f"{at}.id: empty")
            if instance.id in ids:
                raise ValueError(f"{at}.id: {instance.id!r} appears twice")
            ids.add(instance.id)
            if not instance.address:
                raise ValueError(f"{at}.address: instance {instance.id!r} has no address")
            if not 1 <= instance.port <= 65535:
                raise ValueError(f"{at}.port: instance {instance.id!r} has port {instance.port}")
            if instance.service and instance.service != entry.service.name:
                raise ValueError(
                    f"{at}.service: instance {instance.id!r} of {instance.service!r} "
                    f"listed under {entry.service.name!r}"
                )


@dataclass(frozen=True, slots=True)
class BusAccess:
    """How a Welcome tells the sidecar to reach the message bus.

    ``url`` is the broker's (``nats://HOST:PORT``, or several comma-separated)
    when the sidecar relays its applications' messages to it directly; empty
    when they go through the control plane (its embedded broker).
    """

    url: str = ""

    @classmethod
    def from_proto(cls, msg: agent_pb2.BusAccess) -> BusAccess:
        return cls(url=str(msg.url))


class AgentState(enum.Enum):
    """Where a session is in its life."""

    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """What :meth:`AgentSession.status` reports.

    ``address`` is the control plane connected to (or being tried),
    ``replica`` the one the last Welcome named; ``last_error`` says why the
    last stream or attempt ended ("" if none has); ``connected_since`` is the
    Unix time of the current connection's Welcome (None while disconnected);
    ``grace`` is the hold after a disconnect the control plane granted.
    """

    state: AgentState
    addresses: tuple[str, ...]
    address: str
    replica: str
    session_id: str
    resumed: bool
    applied_version: int
    last_error: str
    last_sync: SyncOutcome | None
    connected_since: float | None
    grace: int
    sync_interval: float
    subscriptions: tuple[ServiceRef, ...]
    connects: int
    updates_applied: int
    updates_rejected: int
    reports_dropped: int

    @property
    def connected(self) -> bool:
        return self.state is AgentState.CONNECTED
