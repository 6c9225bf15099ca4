"""What the control plane knows about sidecars: typed results of ListNodes
and WaitForRevision, and the loop that follows ListNodes' pages."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from ecosystem.v1 import agent_pb2

__all__ = ["NodeInfo", "NodeState", "RevisionWait"]


class NodeState(enum.StrEnum):
    """SYNCED: connected and has applied the latest update sent to it.
    STALE: connected but behind (an update not yet acknowledged, or rejected).
    DISCONNECTED: not connected; its instances are in grace, CRITICAL, or gone."""

    SYNCED = "SYNCED"
    STALE = "STALE"
    DISCONNECTED = "DISCONNECTED"
    UNKNOWN = "UNKNOWN"

    @classmethod
    def from_proto(cls, value: int) -> NodeState:
        states: dict[int, NodeState] = {
            agent_pb2.NODE_SYNC_STATUS_SYNCED: cls.SYNCED,
            agent_pb2.NODE_SYNC_STATUS_STALE: cls.STALE,
            agent_pb2.NODE_SYNC_STATUS_DISCONNECTED: cls.DISCONNECTED,
        }
        return states.get(value, cls.UNKNOWN)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One sidecar as the control plane sees it."""

    id: str
    platform: str
    region: str
    zone: str
    state: NodeState
    connected: bool
    replica: str
    peer: str
    connected_at_ms: int
    last_seen_ms: int
    applied_version: int
    sent_version: int
    subscriptions: tuple[str, ...]
    instance_count: int
    last_error: str
    session_id: str

    @classmethod
    def from_proto(cls, msg: agent_pb2.NodeStatus) -> NodeInfo:
        return cls(
            id=msg.node.id,
            platform=msg.node.platform,
            region=msg.node.region,
            zone=msg.node.zone,
            state=NodeState.from_proto(msg.status),
            connected=msg.connected,
            replica=msg.replica,
            peer=msg.peer,
            connected_at_ms=msg.connected_at_ms,
            last_seen_ms=msg.last_seen_ms,
            applied_version=msg.applied_version,
            sent_version=msg.sent_version,
            subscriptions=tuple(f"{s.namespace or 'default'}/{s.name}" for s in msg.subscriptions),
            instance_count=msg.instance_count,
            last_error=msg.last_error,
            session_id=msg.session_id,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "platform": self.platform,
            "region": self.region,
            "zone": self.zone,
            "state": self.state.value,
            "connected": self.connected,
            "replica": self.replica,
            "peer": self.peer,
            "connected_at_ms": self.connected_at_ms,
            "last_seen_ms": self.last_seen_ms,
            "applied_version": self.applied_version,
            "sent_version": self.sent_version,
            "subscriptions": list(self.subscriptions),
            "instance_count": self.instance_count,
            "last_error": self.last_error,
            "session_id": self.session_id,
        }


@dataclass(frozen=True, slots=True)
class RevisionWait:
    """The answer to "has revision R reached every sidecar that needs it?".

    ``pending_count`` sidecars have not; ``pending`` lists the first of them
    (at most 100, by node id)."""

    revision: int
    applied: bool
    affected: int
    pending: tuple[NodeInfo, ...]
    pending_count: int = 0

    @classmethod
    def from_proto(cls, revision: int, msg: agent_pb2.WaitForRevisionResponse) -> RevisionWait:
        pending = tuple(NodeInfo.from_proto(n) for n in msg.pending)
        return cls(
            revision=revision,
            applied=msg.applied,
            affected=msg.affected,
            pending=pending,
            pending_count=max(msg.pending_count, len(pending)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "applied": self.applied,
            "affected": self.affected,
            "pending_count": self.pending_count,
            "pending": [n.to_dict() for n in self.pending],
        }
