"""The Ecosystem control plane: registry, watch fan-out and their gRPC API."""

from controlplane.app import ControlPlane, StartupError, run
from controlplane.config import ControlPlaneConfig

__all__ = ["ControlPlane", "ControlPlaneConfig", "StartupError", "run"]
