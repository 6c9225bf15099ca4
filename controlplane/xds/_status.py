"""What each xDS client (a node) was sent, has applied and has rejected.

A node is identified by the ``node.id`` of its bootstrap. Per resource type
the book keeps the names it subscribed to, the version last sent, the
version it last ACKed, and its last NACK (the version, the resources in that
response, and the client's error message). The admin listener serves it as
JSON (``GET /xds``) and over CSDS (``controlplane.xds._csds``); a NACK is
also one warning line in the log.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["NodeBook", "NodeStatus", "Rejection", "TypeStatus"]

#: Disconnected nodes remembered (the oldest are forgotten first).
_RETAINED = 1_000


@dataclass(slots=True)
class Rejection:
    """One NACK: the version refused, what that response held, and why."""

    version: str
    resources: list[str]
    error: str
    at: float

    def as_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "resources": self.resources,
            "error": self.error,
            "at": round(self.at, 3),
        }


@dataclass(slots=True)
class TypeStatus:
    """One resource type of one node."""

    names: list[str] = field(default_factory=list)  # ["*"]: everything
    sent_version: str = ""
    #: What the node holds by the last response, by name (shared objects).
    resources: Mapping[str, Any] = field(default_factory=dict)
    acked_version: str = ""
    nack: Rejection | None = None

    @property
    def state(self) -> str:
        """``ACKED`` (what was last sent is applied), ``NACKED`` (the last
        response was refused: the one before it is what the client runs) or
        ``SENT`` (waiting for the answer)."""
        if self.nack is not None and self.nack.version == self.sent_version:
            return "NACKED"
        if self.sent_version and self.acked_version == self.sent_version:
            return "ACKED"
        return "SENT" if self.sent_version else "REQUESTED"

    def as_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "subscribed": self.names,
            "resources": sorted(self.resources),
            "sent_version": self.sent_version,
            "acked_version": self.acked_version,
            "last_nack": self.nack.as_json() if self.nack is not None else None,
        }


@dataclass(slots=True)
class NodeStatus:
    node_id: str
    kind: str  # "proxyless" or "envoy"
    user_agent: str
    cluster: str = ""
    locality: str = ""
    streams: int = 0
    connected_at: float = 0.0
    disconnected_at: float = 0.0
    types: dict[str, TypeStatus] = field(default_factory=dict)

    def of(self, type_url: str) -> TypeStatus:
        short = type_url.rsplit(".", 1)[-1]
        status = self.types.get(short)
        if status is None:
            status = self.types[short] = TypeStatus()
        return status

    def as_json(self) -> dict[str, Any]:
        return {
            "node": self.node_id,
            "kind": self.kind,
            "user_agent": self.user_agent,
            "cluster": self.cluster,
            "locality": self.locality,
            "connected": self.streams > 0,
            "streams": self.streams,
            "connected_at": round(self.connected_at, 3),
            "disconnected_at": round(self.disconnected_at, 3) if self.disconnected_at else None,
            "types": {name: status.as_json() for name, status in sorted(self.types.items())},
        }


class NodeBook:
    """Every xDS node seen by this control plane process."""

    def __init__(self) -> None:
        self._nodes: OrderedDict[str, NodeStatus] = OrderedDict()
        self._idle = 0  # about how many nodes have no stream
        self.nacks = 0

    def open(
        self, node_id: str, kind: str, user_agent: str, cluster: str, locality: str
    ) -> NodeStatus:
        """A stream of ``node_id`` began (a node may hold several)."""
        status = self._nodes.get(node_id)
        if status is None or status.kind != kind:
            status = NodeStatus(node_id, kind, user_agent)
            self._nodes[node_id] = status
        elif status.streams == 0:
            self._idle = max(0, self._idle - 1)
        self._nodes.move_to_end(node_id)
        status.user_agent, status.cluster, status.locality = user_agent, cluster, locality
        status.streams += 1
        status.connected_at = time.time()
        status.disconnected_at = 0.0
        return status

    def close(self, status: NodeStatus) -> None:
        status.streams = max(0, status.streams - 1)
        if status.streams == 0:
            status.disconnected_at = time.time()
            self._idle += 1
            if self._idle > 2 * _RETAINED:
                self._forget_old()

    def _forget_old(self) -> None:
        # Now and then rather than at every close: a scan of every node.
        idle = [node for node, status in self._nodes.items() if status.streams == 0]
        for node in idle[: max(0, len(idle) - _RETAINED)]:
            del self._nodes[node]
        self._idle = min(len(idle), _RETAINED)

    def get(self, node_id: str) -> NodeStatus | None:
        return self._nodes.get(node_id)

    def nodes(self) -> list[NodeStatus]:
        """Every node remembered, by id."""
        return sorted(self._nodes.values(), key=lambda s: s.node_id)

    @property
    def connected(self) -> int:
        return sum(1 for status in self._nodes.values() if status.streams)

    def as_json(self) -> dict[str, Any]:
        return {"nodes": [status.as_json() for status in self.nodes()]}
