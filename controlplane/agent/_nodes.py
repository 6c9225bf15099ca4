"""What the control plane keeps about sidecars: node records, session keys,
and the instances a session owns.

Storage:

- ``/ecosystem/v1/nodes/<node>`` — a ``NodeStatus`` (identity, session
  settings, where it was last connected); written on connect and on
  disconnect, never per message.
- ``/ecosystem/v1/sessions/<node>`` — the session id, attached to the
  session's lease. The control plane that holds the stream keeps the lease
  alive; when the stream drops, the lease runs out after the grace period and
  the key disappears, which is what "the session was lost" means to every
  replica.

Instances registered through a session carry a check named
``sidecar-session``: PASSING while the session is held, CRITICAL once it is
lost. That check is also how the reaper tells session-owned instances from
ones registered directly.

A node record is deleted once its session has been gone for the node
retention and the node owns no instances any more (see `_reaper`).
"""

from __future__ import annotations

import time

from ecosystem.v1 import agent_pb2, registry_pb2

from controlplane.registry import ROOT_PREFIX
from controlplane.store import Compare, PutOp, Store
from serving.errors import RevisionConflictError

__all__ = [
    "NODES_PREFIX",
    "SESSIONS_PREFIX",
    "SESSION_CHECK",
    "TAKEN_OVER",
    "SessionTakenOverError",
    "node_key",
    "now_ms",
    "record_node",
    "session_check",
    "session_key",
    "with_session_check",
]

NODES_PREFIX = ROOT_PREFIX + "nodes/"
SESSIONS_PREFIX = ROOT_PREFIX + "sessions/"
SESSION_CHECK = "sidecar-session"
#: How the status message of a stream ended by a takeover starts (the SDK looks for it).
TAKEN_OVER = "session taken over"


class SessionTakenOverError(RevisionConflictError):
    """ABORTED: another stream took this stream's session over; this one is over."""


_WORST: dict[int, int] = {
    registry_pb2.HEALTH_STATUS_PASSING: 0,
    registry_pb2.HEALTH_STATUS_UNSPECIFIED: 1,
    registry_pb2.HEALTH_STATUS_UNKNOWN: 1,
    registry_pb2.HEALTH_STATUS_WARNING: 2,
    registry_pb2.HEALTH_STATUS_CRITICAL: 3,
}


def now_ms() -> int:
    return int(time.time() * 1000)


def node_key(node_id: str) -> str:
    return NODES_PREFIX + node_id


def session_key(node_id: str) -> str:
    return SESSIONS_PREFIX + node_id


def session_check(inst: registry_pb2.Instance) -> registry_pb2.CheckStatus | None:
    for check in inst.checks:
        if check.name == SESSION_CHECK:
            return check
    return None


def with_session_check(
    inst: registry_pb2.Instance, status: int, output: str, changed_at_ms: int
) -> registry_pb2.Instance:
    """A copy of ``inst`` whose session check has ``status``, and whose health
    is the worst of its own checks and the session's."""
    out = registry_pb2.Instance()
    out.CopyFrom(inst)
    kept = [c for c in out.checks if c.name != SESSION_CHECK]
    del out.checks[:]
    out.checks.extend(kept)
    out.checks.append(
        registry_pb2.CheckStatus(
            name=SESSION_CHECK,
            status=status,  # type: ignore[arg-type]
            output=output,
            changed_at_ms=changed_at_ms,
        )
    )
    if _WORST.get(status, 1) > _WORST.get(out.health, 1):
        out.health = status  # type: ignore[assignment]
    return out


async def record_node(store: Store, status: agent_pb2.NodeStatus, *, if_revision: int = 0) -> int:
    """Writes a node record; returns its mod revision (0 if not written). With
    ``if_revision``, only if the record is still the one written then: another
    replica the node has moved to may have written it since."""
    key, value = node_key(status.node.id), status.SerializeToString(deterministic=True)
    compares = [Compare(key, "mod_revision", "==", if_revision)] if if_revision else []
    result = await store.txn(compares, [PutOp(key, value)])
    return result.revision if result.succeeded else 0
