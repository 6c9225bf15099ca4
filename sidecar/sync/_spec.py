"""What a run is asked to do (:class:`SyncOptions`) and what it did
(:class:`RunReport`): the engine's input and output, shared by ``eco sync run``
and by sidecars executing scheduled jobs."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ConflictPolicy", "Decision", "Mode", "Progress", "RunReport", "SyncOptions"]


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
    # Concurrent calls per store across every run in the process (a budget
    # per store, see sidecar.sync._limits); None: the connector's default.
    max_connections: int | None = None
    bandwidth: int | None = None  # bytes per second across the job, None: unlimited
    retries: int = 5
    # The first retry's delay in seconds; each next one doubles (with jitter).
    retry_delay: float = 0.2
    # Where the job's state lives (SQLite); the engine creates it.
    state_path: str = ""
    job: str = ""  # the job's name ("" for an ad-hoc run)
    # Connector settings (a job's named profiles) by role: "source" and
    # "destination"; a side without one reads its store's standard settings.
    profiles: dict[str, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("source", "destination"):
            if not getattr(self, name):
                raise ValueError(f"{name}: a store URL is required")
        object.__setattr__(self, "mode", Mode(self.mode))
        object.__setattr__(self, "conflict", ConflictPolicy(self.conflict))
        if not 0 <= self.max_delete <= 100:
            raise ValueError("max_delete: a percentage from 0 to 100")
        if self.transfers < 1:
            raise ValueError("transfers: at least 1")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError("max_connections: at least 1, or None for the store's default")
        if self.bandwidth is not None and self.bandwidth <= 0:
            raise ValueError("bandwidth: bytes per second above 0, or None for unlimited")
        if self.retries < 0:
            raise ValueError("retries: 0 or more")
        if self.retry_delay < 0:
            raise ValueError("retry_delay: 0 or more seconds")


@dataclass(frozen=True, slots=True)
class Decision:
    """One thing the run decided about one path, for the report."""

    path: str
    action: str  # copy-to-destination, copy-to-source, delete-destination, …, conflict, skip
    reason: str
    bytes: int = 0


@dataclass(frozen=True, slots=True)
class Progress:
    """Counters of a run in flight, handed to the ``progress`` callback.

    ``phase`` is "listing", "planning", "transferring" or "done"; the totals
    are known from "transferring" on.
    """

    phase: str
    files_total: int = 0
    files_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    deletes_total: int = 0
    deletes_done: int = 0
    errors: int = 0
    listed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
    # The first 10,000 decisions, in path order; the rest are counted here.
    decisions: list[Decision] = field(default_factory=list)
    decisions_truncated: int = 0
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The report's fields and ``duration`` (seconds)."""
        data = dataclasses.asdict(self)
        data["duration"] = round(max(0.0, self.finished_at - self.started_at), 3)
        return data
