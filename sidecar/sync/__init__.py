"""Data synchronisation (``eco sync``): connectors for filesystems, object
stores and SFTP, and the engine that keeps two of them in step (copy, mirror,
bisync) against state kept per job and per side. See docs/sync.md."""

from sidecar.sync._profiles import (
    ProfileError,
    Profiles,
    SyncHostConfig,
    load_profiles,
    profile_settings,
)
from sidecar.sync._spec import ConflictPolicy, Decision, Mode, Progress, RunReport, SyncOptions
from sidecar.sync._state import JobBusyError, QueuedConflict, StateStore
from sidecar.sync.engine import run_sync

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
