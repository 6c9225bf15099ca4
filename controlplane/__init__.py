"""The Ecosystem control plane: registry, watch fan-out and their gRPC API."""

from typing import TYPE_CHECKING, Any

__all__ = ["ControlPlane", "ControlPlaneConfig", "StartupError", "run"]

if TYPE_CHECKING:
    from controlplane.app import ControlPlane, StartupError, run
    from controlplane.config import ControlPlaneConfig


def __getattr__(name: str) -> Any:
    # Imported on first use: the sidecar imports controlplane.bus (its relay)
    # and must not pay for the whole control plane (aiohttp, the store, …).
    if name in ("ControlPlane", "StartupError", "run"):
        from controlplane import app

        return getattr(app, name)
    if name == "ControlPlaneConfig":
        from controlplane.config import ControlPlaneConfig

        return ControlPlaneConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
