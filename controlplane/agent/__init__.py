"""The control plane's side of the sidecar protocol: sessions, node records,
endpoint updates with ACK/NACK, the reaper for lost sessions, the spreading
of sidecar streams over the replicas, and the limits every stream is held to."""

from controlplane.agent._limits import AgentLimits
from controlplane.agent._nodes import NODES_PREFIX, TAKEN_OVER
from controlplane.agent._reaper import NODE_RETENTION, Reaper
from controlplane.agent._servicer import AgentServicer
from controlplane.agent._session import AgentSettings
from controlplane.agent._shedding import REPLICAS_PREFIX, SHED_REASON, LoadSpreader, streams_to_shed
from controlplane.agent._validation import AGENT_LIMITS

__all__ = [
    "AGENT_LIMITS",
    "NODES_PREFIX",
    "NODE_RETENTION",
    "REPLICAS_PREFIX",
    "SHED_REASON",
    "TAKEN_OVER",
    "AgentLimits",
    "AgentServicer",
    "AgentSettings",
    "LoadSpreader",
    "Reaper",
    "streams_to_shed",
]
