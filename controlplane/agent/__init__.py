"""The control plane's side of the sidecar protocol: sessions, node records,
endpoint updates with ACK/NACK, the reaper for lost sessions, and the spreading
of sidecar streams over the replicas."""

from controlplane.agent._balance import REPLICAS_PREFIX, SHED_REASON, LoadSpreader, streams_to_shed
from controlplane.agent._reaper import Reaper
from controlplane.agent._servicer import AgentServicer
from controlplane.agent._session import AgentSettings

__all__ = [
    "REPLICAS_PREFIX",
    "SHED_REASON",
    "AgentServicer",
    "AgentSettings",
    "LoadSpreader",
    "Reaper",
    "streams_to_shed",
]
