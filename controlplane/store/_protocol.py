"""The `Store` protocol: a revisioned key-value store with etcd's semantics.

Every control-plane resource lives behind this protocol so that the memory,
SQLite and etcd backends are interchangeable and pass one conformance suite
(tests/unit/store/). The semantics follow etcd v3:

- one store-wide **revision**, starting at 1 for an empty store and bumped
  exactly once per write transaction that changes something (a transaction
  whose operations change nothing, e.g. deleting a missing key, does not bump
  it; a read-only transaction never does);
- every key carries ``create_revision``, ``mod_revision`` and ``version``
  (1 on creation, +1 per put; a delete resets it);
- ``txn(compares, success, failure)`` evaluates all compares atomically and
  applies either branch as one revision;
- **leases** (``grant``/``keepalive``/``revoke``): keys put with a lease are
  deleted, with DELETE events, in one revision when the lease expires or is
  revoked;
- ``watch(prefix, start_revision)`` yields ordered ``WatchBatch`` objects, one
  per revision and never split, starting *at* ``start_revision`` (0: only
  future changes); ``Compacted`` when that history is gone; a progress batch
  (no events, the current revision) while idle;
- history is bounded: ``compact(rev)`` drops what is older, and backends
  compact on their own past a retention limit.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import grpc

__all__ = [
    "Compacted",
    "Compare",
    "CompareOp",
    "CompareTarget",
    "DeleteOp",
    "Event",
    "EventType",
    "KeyValue",
    "LeaseNotFound",
    "Op",
    "PutOp",
    "RangeResult",
    "Store",
    "StoreClosed",
    "StoreError",
    "StoreUnavailable",
    "TxnResult",
    "WatchBatch",
]


class StoreError(Exception):
    """Root of every error a store raises."""


class Compacted(StoreError):
    """The requested revision is older than the retained history."""

    status_code = grpc.StatusCode.OUT_OF_RANGE

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision has been compacted; oldest retained is {compact_revision}")
        self.compact_revision = compact_revision


class LeaseNotFound(StoreError):
    """The lease does not exist (never granted, revoked or expired)."""

    status_code = grpc.StatusCode.NOT_FOUND

    def __init__(self, lease_id: int) -> None:
        super().__init__(f"lease {lease_id} not found")
        self.lease_id = lease_id


class StoreClosed(StoreError):
    """The store has been closed (or is unreachable for good)."""

    status_code = grpc.StatusCode.UNAVAILABLE


class StoreUnavailable(StoreError):
    """The store's server cannot be reached now; the call may succeed later."""

    status_code = grpc.StatusCode.UNAVAILABLE


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


class EventType(enum.Enum):
    PUT = "PUT"
    DELETE = "DELETE"


@dataclass(frozen=True, slots=True)
class Event:
    """One change. For DELETE, ``kv`` holds the key with an empty value,
    ``mod_revision`` set to the deleting revision and ``create_revision``,
    ``version`` and ``lease`` 0; ``prev_kv`` the last state."""

    type: EventType
    kv: KeyValue
    prev_kv: KeyValue | None = None


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """All events of one revision that match a watch, or, when ``events`` is
    empty, a progress notification: nothing matched up to ``revision``."""

    revision: int
    events: tuple[Event, ...] = ()

    @property
    def is_progress(self) -> bool:
        return not self.events


CompareTarget = Literal["version", "create_revision", "mod_revision", "value", "lease", "exists"]
CompareOp = Literal["==", "!=", "<", ">"]


@dataclass(frozen=True, slots=True)
class Compare:
    """A condition on one key. A missing key has version, revisions and lease
    0 and value ``b""``; ``exists`` compares against ``True``/``False``."""

    key: str
    target: CompareTarget
    op: CompareOp
    value: int | bytes | bool


@dataclass(frozen=True, slots=True)
class PutOp:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class DeleteOp:
    """Deletes ``key``; with ``prefix=True`` every key starting with it."""

    key: str
    prefix: bool = False


Op = PutOp | DeleteOp


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    # The store revision after the transaction (its own revision if it wrote).
    revision: int
    # Previous state of each key the applied branch touched, in op order;
    # for a prefix delete, every deleted key.
    prev_kvs: tuple[KeyValue | None, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class RangeResult:
    kvs: tuple[KeyValue, ...]
    # The revision the read was served at.
    revision: int


@runtime_checkable
class Store(Protocol):
    """A revisioned key-value store with leases and watches.

    Lifecycle: ``await store.start()`` (or ``async with store``) before use,
    ``await store.close()`` after; ``close`` is idempotent and ends every
    watch with ``StoreClosed``.
    """

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Store: ...

    async def __aexit__(self, *exc: object) -> None: ...

    @property
    def revision(self) -> int:
        """The current (latest committed) revision."""
        ...

    @property
    def compact_revision(self) -> int:
        """The oldest revision that ``watch`` and ``range`` can still serve."""
        ...

    async def get(self, key: str, *, revision: int = 0) -> KeyValue | None: ...

    async def range(self, prefix: str, *, revision: int = 0, limit: int = 0) -> RangeResult:
        """Keys starting with ``prefix`` in key order, at ``revision`` (0: now).
        Raises ``Compacted`` for a revision older than the history, and
        ``ValueError`` for one newer than the store."""
        ...

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Writes one key; returns the new revision. ``LeaseNotFound`` when the
        lease does not exist."""
        ...

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        """Deletes one key (or a prefix); returns the number deleted."""
        ...

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        """Applies ``success`` if every compare holds, else ``failure``, as one
        revision (none if the branch changes nothing). ``LeaseNotFound`` when a put
        of the applied branch names a missing lease, and then nothing changes;
        ``ValueError`` when a branch puts a key twice or puts a key it also deletes
        (as etcd does)."""
        ...

    async def grant(self, ttl: float) -> int:
        """Grants a lease of ``ttl`` seconds (> 0); returns its id (> 0)."""
        ...

    async def keepalive(self, lease_id: int) -> float:
        """Renews a lease to its full TTL; returns the TTL. ``LeaseNotFound``."""
        ...

    async def revoke(self, lease_id: int) -> None:
        """Deletes a lease and its keys now. ``LeaseNotFound``."""
        ...

    async def lease_ttl(self, lease_id: int) -> tuple[float, float]:
        """(granted TTL, seconds remaining). ``LeaseNotFound``."""
        ...

    def watch(
        self,
        prefix: str,
        *,
        start_revision: int = 0,
        progress_interval: float = 5.0,
    ) -> AsyncGenerator[WatchBatch, None]:
        """Batches for keys under ``prefix`` from ``start_revision`` on (0: after
        the current revision). Raises ``Compacted`` (on first iteration) when
        ``start_revision`` is older than ``compact_revision``. Closing the
        iterator (``aclose``) or cancelling the consumer releases it."""
        ...

    async def compact(self, revision: int) -> None:
        """Drops history older than ``revision`` (≤ current, else ``ValueError``);
        a revision at or below ``compact_revision`` changes nothing."""
        ...
