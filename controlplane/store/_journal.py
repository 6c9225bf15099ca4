"""The persistence seam of the embedded engine: what a durable backend writes and loads.

The engine applies every write to its in-memory state first and describes it as a
`Change`; a `Journal` makes batches of changes durable (group commit) and gives
the whole state back as a `Snapshot` on start. The memory backend has no journal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ._protocol import Event, KeyValue

__all__ = ["Change", "Journal", "LeaseRecord", "Snapshot"]


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """A lease as persisted: its deadline is wall-clock unix time, so that expiry
    keeps counting while the process is down."""

    id: int
    ttl: float
    deadline: float


@dataclass(frozen=True, slots=True)
class Change:
    """One write as the journal sees it.

    ``revision`` is the store revision after the change; ``events`` is empty for a
    change that did not bump it (a lease grant or renewal, a revoke of a lease
    without keys, an explicit compaction).
    """

    revision: int
    events: tuple[Event, ...] = ()
    lease_puts: tuple[LeaseRecord, ...] = ()
    lease_deletes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a journal holds, as loaded on start."""

    revision: int
    compact_revision: int
    kvs: Sequence[KeyValue]
    # (revision, events) for every retained revision, oldest first.
    history: Sequence[tuple[int, tuple[Event, ...]]]
    leases: Sequence[LeaseRecord]


class Journal(Protocol):
    """Durable storage behind the engine. Calls never overlap: the engine awaits
    each one before it issues the next."""

    async def load(self) -> Snapshot:
        """Opens the storage and returns its content."""
        ...

    async def flush(self, changes: Sequence[Change], revision: int, compact_revision: int) -> None:
        """Makes ``changes`` durable in one atomic step, together with the store
        ``revision`` and ``compact_revision`` (history older than it is dropped).
        Returns only once the data would survive a crash."""
        ...

    async def close(self) -> None:
        """Releases the storage; idempotent."""
        ...
