"""The control plane's revisioned key-value store (see `_protocol` for the contract).

Backends: `MemoryStore` (``memory://``), `SqliteStore` (``sqlite://PATH``) and
`EtcdStore` (``etcd://HOST:PORT[,HOST:PORT...][/PREFIX]``, in `controlplane.store.etcd`,
imported only when used); `open_store` builds one from a URL. Errors::

    StoreError
    ├── Compacted        the requested revision is older than the retained history
    ├── LeaseNotFound    the lease was never granted, or expired, or was revoked
    ├── StoreClosed      the store was closed, or failed for good
    └── StoreUnavailable the store's server cannot be reached now (etcd); may succeed later
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
    StoreUnavailable,
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
    "StoreUnavailable",
    "TxnResult",
    "WatchBatch",
    "open_store",
]


def open_store(url: str) -> Store:
    """Builds (but does not start) the store a URL names: ``memory://``,
    ``sqlite://PATH`` (``sqlite://data/eco.db`` is relative to the working
    directory, ``sqlite:///var/lib/eco.db`` absolute; missing directories are
    created when the store starts, and logged) or
    ``etcd://[USER:PASSWORD@]HOST[:PORT][,HOST[:PORT]...][/PREFIX][?ca=&cert=&key=]``
    (see `controlplane.store.etcd`). Raises ValueError, naming the problem, for
    anything else."""
    expected = "expected memory://, sqlite://PATH or etcd://HOST:PORT[,HOST:PORT...][/PREFIX]"
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"invalid store URL {url!r}: {expected}")
    if scheme == "memory":
        if rest:
            raise ValueError(f"invalid store URL {url!r}: memory:// takes no path")
        return MemoryStore()
    if scheme == "sqlite":
        if not rest:
            raise ValueError(f"invalid store URL {url!r}: sqlite:// needs a file path")
        return SqliteStore(rest)
    if scheme == "etcd":
        # Imported here: the etcd client's modules are only needed by those who use it.
        from .etcd import EtcdStore, parse_etcd_url

        try:
            config = parse_etcd_url(url)
        except ValueError as exc:
            # The message names the problem; the URL is left out, it may hold a password.
            raise ValueError(f"invalid etcd store URL: {exc}") from None
        return EtcdStore(config)
    raise ValueError(f"unsupported store URL {url!r}: {expected}")
