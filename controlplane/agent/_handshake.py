"""Opening a session for a Hello: new, resumed, or refused because another
sidecar holds the node.

The takeover rule. A node's session is *held* while a stream carries it:
on this replica, the replica's own session table says so; on another, the
node record says ``connected`` for the session whose key is in the store
(the key disappears one grace period after a replica dies, so a record left
``connected`` by a crash stops counting then). A Hello may:

- resume the session whose id it carries while that session's key exists,
  held or not (a sidecar that moved to another replica, or whose old stream
  the control plane has not noticed is gone yet); a stream that still
  carried it is then ended with ABORTED, "session taken over …";
- start a new session when the node's session is not held: none exists, or
  its stream is gone and it is only in its grace period (a restarted
  sidecar comes back at once);
- and nothing else: a Hello without the held session's id is refused with
  ALREADY_EXISTS, naming the node.

A stream that says nothing for the idle timeout is ended (see
`controlplane.agent._limits`), so a hung sidecar holds its node for at most
that long.
"""

from __future__ import annotations

import contextlib
import logging
import uuid

from ecosystem.v1 import agent_pb2

from controlplane.agent._nodes import node_key, session_key
from controlplane.agent._session import AgentSettings, NodeSession
from controlplane.store import Compare, KeyValue, LeaseNotFound, PutOp, Store, StoreError
from serving.errors import AlreadyExistsError, excerpt

__all__ = ["open_session"]

log = logging.getLogger(__name__)


async def open_session(
    store: Store,
    settings: AgentSettings,
    hello: agent_pb2.Hello,
    peer: str,
    *,
    local: NodeSession | None,
) -> NodeSession:
    """Starts or resumes the session a (validated) Hello asks for; ``local`` is
    this replica's session of the node, if it has one. Raises AlreadyExistsError
    when another sidecar holds the node."""
    node_id = hello.node.id
    grace = hello.grace_seconds or settings.grace

    def session(session_id: str, lease_id: int, *, resumed: bool) -> NodeSession:
        return NodeSession(
            hello.node,
            session_id,
            lease_id,
            grace,
            hello.deregister_critical_after_seconds or settings.deregister_critical_after,
            peer,
            settings.replica,
            resumed=resumed,
            applied_version=hello.applied_version,
            wants_intentions=hello.wants_intentions,
        )

    key = session_key(node_id)
    current = await store.get(key)
    if hello.session_id and current is not None and current.value.decode() == hello.session_id:
        with contextlib.suppress(LeaseNotFound):
            await store.keepalive(current.lease)
            log.info("node %s resumed session %s", node_id, hello.session_id)
            return session(hello.session_id, current.lease, resumed=True)
    holder = await _holder(store, settings.replica, node_id, current, local)
    if holder:
        raise AlreadyExistsError(
            f"node {excerpt(node_id)} is held by another sidecar, connected to {holder}; "
            "only a Hello carrying that session's id may take it over"
        )
    session_id = uuid.uuid4().hex
    lease_id = await store.grant(grace)
    # Only if no other Hello for the node got in meanwhile.
    unchanged = Compare(key, "mod_revision", "==", current.mod_revision if current else 0)
    result = await store.txn([unchanged], [PutOp(key, session_id.encode(), lease=lease_id)])
    if not result.succeeded:
        with contextlib.suppress(StoreError):
            await store.revoke(lease_id)
        raise AlreadyExistsError(
            f"node {excerpt(node_id)}: another sidecar opened a session for it at the same time"
        )
    log.info("node %s opened session %s (peer %s)", node_id, session_id, peer)
    return session(session_id, lease_id, resumed=False)


async def _holder(
    store: Store,
    replica: str,
    node_id: str,
    current: KeyValue | None,
    local: NodeSession | None,
) -> str:
    """The replica whose stream holds the node's session now, or ""."""
    if local is not None and local.active:
        return f"this replica ({replica})"
    if current is None:
        return ""  # no session, or its grace ran out
    kv = await store.get(node_key(node_id))
    if kv is None:
        return ""
    record = agent_pb2.NodeStatus.FromString(kv.value)
    if not record.connected or record.replica == replica:
        # This replica knows its own streams: ``local`` said it holds none.
        return ""
    if record.session_id != current.value.decode():
        return ""
    return f"replica {record.replica}"
