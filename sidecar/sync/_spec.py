"""What a run is asked to do (:class:`SyncOptions`) and what it did
(:class:`RunReport`): the engine's input and output, shared by ``eco sync run``
and by sidecars executing scheduled jobs."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ConflictPolicy", "Decision", "Mode", "RunReport", "SyncOptions"]


class Mode(enum.StrEnum):
    COPY = "copy"  # source to destination, nothing deleted
    MIRROR = "mirror"  # destination made equal to the source, deletes included
    BISYNC = "bisync"  # both ways, three-way against the last run's state


class ConflictPolicy(enum.StrEnum):
    NEWER = "newer"
    KEEP_BOTH = "keep-both"
    SOURCE = "source"
    DESTINATION = "destination"
    MANUAL = "manual"


@dataclass(frozen=True, slots=True)
class SyncOptions:
    """One run's settings (validated on construction; ValueError names the field)."""

    source: str
    destination: str
    mode: Mode = Mode.COPY
    checksum: bool = False
    conflict: ConflictPolicy = ConflictPolicy.NEWER
    max_delete: float = 50.0  # percent of the destination; 100 disables the guard
    dry_run: bool = False
    transfers: int = 8  # concurrent transfers per job
    bandwidth: int | None = None  # bytes per second across the job, None: unlimited
    retries: int = 5
    # Where the job's state lives (SQLite); the engine creates it.
    state_path: str = ""
    job: str = ""  # the job's name ("" for an ad-hoc run)
    profiles: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    """One thing the run decided about one path, for the report."""

    path: str
    action: str  # copy-to-destination, copy-to-source, delete-destination, …, conflict, skip
    reason: str
    bytes: int = 0


@dataclass(slots=True)
class RunReport:
    """What a run did. ``to_dict()`` is the JSON form (``-o json``, run history)."""

    job: str
    mode: str
    source: str
    destination: str
    dry_run: bool = False
    started_at: float = 0.0
    finished_at: float = 0.0
    status: str = "running"  # running, completed, failed, guarded
    files_copied: int = 0
    bytes_copied: int = 0
    files_deleted: int = 0
    files_skipped: int = 0
    conflicts: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
