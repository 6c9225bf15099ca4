"""The lease table of the embedded engine: TTLs, deadlines and attached keys.

Deadlines are kept on the monotonic clock while running and converted to wall-clock
time only for persistence (`LeaseRecord`), so a wall-clock jump does not expire or
prolong live leases, while a restart still honours the stored deadline.
"""

from __future__ import annotations

import heapq
import secrets
import time
from dataclasses import dataclass, field

from ._journal import LeaseRecord

__all__ = ["Lease", "LeaseTable"]

_MAX_ID = (1 << 63) - 1


@dataclass(slots=True, eq=False)
class Lease:
    id: int
    ttl: float
    deadline: float  # time.monotonic()
    keys: set[str] = field(default_factory=set)


class LeaseTable:
    """Leases by id, plus a heap of (deadline, id) to find expired ones cheaply.

    Heap entries are never removed eagerly: a renewal pushes a new entry, and stale
    ones are skipped when popped.
    """

    def __init__(self) -> None:
        self._leases: dict[int, Lease] = {}
        self._heap: list[tuple[float, int]] = []

    def __len__(self) -> int:
        return len(self._leases)

    def get(self, lease_id: int) -> Lease | None:
        return self._leases.get(lease_id)

    def live(self, lease_id: int, now: float) -> Lease | None:
        """The lease, unless it is missing or past its deadline (expired but not yet
        revoked by the expiry task)."""
        lease = self._leases.get(lease_id)
        if lease is None or lease.deadline <= now:
            return None
        return lease

    def grant(self, ttl: float, now: float) -> Lease:
        # Random ids, as etcd does: an id revoked before a restart is never handed
        # out again to someone else by a counter that restarted.
        while True:
            lease_id = secrets.randbelow(_MAX_ID) + 1
            if lease_id not in self._leases:
                break
        lease = Lease(lease_id, ttl, now + ttl)
        self._add(lease)
        return lease

    def restore(self, record: LeaseRecord) -> Lease:
        remaining = record.deadline - time.time()
        lease = Lease(record.id, record.ttl, time.monotonic() + remaining)
        self._add(lease)
        return lease

    def renew(self, lease: Lease, now: float) -> None:
        lease.deadline = now + lease.ttl
        heapq.heappush(self._heap, (lease.deadline, lease.id))

    def pop(self, lease_id: int) -> Lease | None:
        return self._leases.pop(lease_id, None)

    def attach(self, lease_id: int, key: str) -> None:
        lease = self._leases.get(lease_id)
        if lease is not None:
            lease.keys.add(key)

    def detach(self, lease_id: int, key: str) -> None:
        lease = self._leases.get(lease_id)
        if lease is not None:
            lease.keys.discard(key)

    def expired(self, now: float) -> list[int]:
        """Ids of the leases whose deadline has passed, soonest first."""
        out: list[int] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, lease_id = heapq.heappop(heap)
            lease = self._leases.get(lease_id)
            if lease is not None and lease.deadline == deadline:
                out.append(lease_id)
        return out

    @staticmethod
    def record(lease: Lease) -> LeaseRecord:
        return LeaseRecord(lease.id, lease.ttl, time.time() + (lease.deadline - time.monotonic()))

    def _add(self, lease: Lease) -> None:
        self._leases[lease.id] = lease
        heapq.heappush(self._heap, (lease.deadline, lease.id))
