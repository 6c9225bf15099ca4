"""Data synchronisation (``eco sync``): connectors for filesystems, object
stores and SFTP, and the engine that keeps two of them in step (copy, mirror,
bisync) against state kept per job and per side. See docs/sync.md."""

from typing import TYPE_CHECKING, Any

from sidecar.sync._profiles import (
    ProfileError,
    Profiles,
    load_profiles,
    profile_settings,
)
from sidecar.sync._spec import ConflictPolicy, Decision, Mode, Progress, RunReport, SyncOptions
from sidecar.sync._state import JobBusyError, QueuedConflict, StateStore
from sidecar.sync.engine import run_sync

if TYPE_CHECKING:
    from sidecar.sync._profile_models import SyncHostConfig

__all__ = [
    "ConflictPolicy",
    "Decision",
    "JobBusyError",
    "Mode",
    "ProfileError",
    "Profiles",
    "Progress",
    "QueuedConflict",
    "RunReport",
    "StateStore",
    "SyncHostConfig",
    "SyncOptions",
    "load_profiles",
    "profile_settings",
    "run_sync",
]


def __getattr__(name: str) -> Any:
    # SyncHostConfig is a pydantic model: imported when a sidecar's config asks
    # for it, not by every `eco sync run` (docs/benchmarks.md, "Sync").
    if name == "SyncHostConfig":
        from sidecar.sync._profile_models import SyncHostConfig

        return SyncHostConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
