"""The sidecar's session with the control plane (the Agent stream), as an SDK client.

:class:`AgentSession` holds one bidirectional ``Connect`` stream: it registers
the caller's local instances, subscribes to the services it calls, and hands
their endpoint updates back. The sidecar runs one; anything else that acts
for a node can too. Inside:

- ``_session``: :class:`AgentSession`, its connect loop, backoff and status;
- ``_stream``: the reader, writer, timer and liveness loops of one stream;
- ``_outbox``: :class:`AgentOutbox`, what the session has to send, bounded and
  coalescing;
- ``_chunks``: updates and syncs cut into messages of at most 1 MiB, and put
  together again;
- ``_intentions``: :class:`IntentionSet` and how a decision is made;
- ``_types``: the session's values (:class:`ServiceRef`, :class:`EndpointUpdate`
  …) over the ``ecosystem.v1`` agent messages.

Everything here is also exported by :mod:`sdk`.
"""

from sdk.agent._identity import TrustBundle, WorkloadCertificate
from sdk.agent._intentions import Intention, IntentionDecision, IntentionName, IntentionSet
from sdk.agent._session import AgentSession
from sdk.agent._types import (
    AgentNode,
    AgentState,
    AgentStatus,
    BusAccess,
    EndpointUpdate,
    ServiceEndpoints,
    ServiceRef,
    SyncOutcome,
)

__all__ = [
    "AgentNode",
    "AgentSession",
    "AgentState",
    "AgentStatus",
    "BusAccess",
    "EndpointUpdate",
    "Intention",
    "IntentionDecision",
    "IntentionName",
    "IntentionSet",
    "ServiceEndpoints",
    "ServiceRef",
    "SyncOutcome",
    "TrustBundle",
    "WorkloadCertificate",
]
