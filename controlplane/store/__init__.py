"""The control plane's revisioned key-value store (see `_protocol` for the contract).

Backends: `MemoryStore` (``memory://``) and `SqliteStore` (``sqlite://PATH``);
`open_store` builds one from a URL. Errors::

    StoreError
    ├── Compacted        the requested revision is older than the retained history
    ├── LeaseNotFound    the lease was never granted, or expired, or was revoked
    └── StoreClosed      the store was closed, or failed for good
"""

from __future__ import annotations

from ._protocol import (
    Compacted,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteOp,
    Event,
    EventType,
    KeyValue,
    LeaseNotFound,
    Op,
    PutOp,
    RangeResult,
    Store,
    StoreClosed,
    StoreError,
    TxnResult,
    WatchBatch,
)
from .memory import MemoryStore
from .sqlite import SqliteStore

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
    "MemoryStore",
    "Op",
    "PutOp",
    "RangeResult",
    "SqliteStore",
    "Store",
    "StoreClosed",
    "StoreError",
    "TxnResult",
    "WatchBatch",
    "open_store",
]


def open_store(url: str) -> Store:
    """Builds (but does not start) the store a URL names: ``memory://`` or
    ``sqlite://PATH`` (``sqlite://data/eco.db`` is relative to the working
    directory, ``sqlite:///var/lib/eco.db`` absolute; missing parent directories
    are created when the store starts). Raises ValueError for anything else."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"invalid store URL {url!r}: expected memory:// or sqlite://PATH")
    if scheme == "memory":
        if rest:
            raise ValueError(f"invalid store URL {url!r}: memory:// takes no path")
        return MemoryStore()
    if scheme == "sqlite":
        if not rest:
            raise ValueError(f"invalid store URL {url!r}: sqlite:// needs a file path")
        return SqliteStore(rest)
    if scheme == "etcd":
        raise ValueError(
            f"unsupported store URL {url!r}: the etcd:// backend comes with the HA work; "
            "use memory:// or sqlite://PATH"
        )
    raise ValueError(f"unsupported store URL {url!r}: expected memory:// or sqlite://PATH")
