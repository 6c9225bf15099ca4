"""The control plane's side of the sidecar protocol: sessions, node records,
endpoint updates with ACK/NACK, and the reaper for lost sessions."""

from controlplane.agent._reaper import Reaper
from controlplane.agent._servicer import AgentServicer
from controlplane.agent._session import AgentSettings

__all__ = ["AgentServicer", "AgentSettings", "Reaper"]
