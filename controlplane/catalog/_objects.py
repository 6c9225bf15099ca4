"""Revisioned writes of one stored object (a platform, a dataset).

Each write is one store transaction guarded by what it read (the key's
``version`` for a create, its ``mod_revision`` for a change or a delete), so
a change someone else made meanwhile is reported (ABORTED) when the caller
named the revision it expects, and otherwise read again and retried.
"""

from __future__ import annotations

from dataclasses import dataclass

from controlplane.store import Compare, DeleteOp, KeyValue, PutOp, Store
from serving.errors import AlreadyExistsError, NotFoundError, RevisionConflictError

__all__ = ["Written", "delete_object", "put_object"]

_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Written:
    """The outcome of ``put_object``: the object's revisions as stored now."""

    create_revision: int
    mod_revision: int
    created: bool
    changed: bool


async def put_object(
    store: Store,
    key: str,
    what: str,
    value: bytes,
    *,
    create: bool,
    update: bool,
    expected: int = 0,
) -> Written:
    """Stores ``value`` at ``key``: a create (ALREADY_EXISTS when the key
    holds something and ``update`` is off), an update (NOT_FOUND when it
    holds nothing and ``create`` is off; ABORTED when ``expected`` is set and
    the stored ``mod_revision`` differs). A value already stored as given is
    not written again (``changed`` False)."""
    for _attempt in range(_ATTEMPTS):
        kv = await store.get(key)
        if kv is None:
            if not create:
                raise NotFoundError(f"no {what}")
            result = await store.txn([Compare(key, "version", "==", 0)], [PutOp(key, value)])
            if result.succeeded:
                return Written(result.revision, result.revision, created=True, changed=True)
            continue
        if not update:
            raise AlreadyExistsError(f"{what} exists (update it, or remove it first)")
        if expected and kv.mod_revision != expected:
            raise RevisionConflictError(
                f"{what} is at revision {kv.mod_revision}, not {expected}: it changed "
                "meanwhile; read it again"
            )
        if kv.value == value:
            return Written(kv.create_revision, kv.mod_revision, created=False, changed=False)
        result = await store.txn(
            [Compare(key, "mod_revision", "==", kv.mod_revision)], [PutOp(key, value)]
        )
        if result.succeeded:
            return Written(kv.create_revision, result.revision, created=False, changed=True)
    raise RevisionConflictError(f"{what} kept changing under this call; try again")


async def delete_object(store: Store, kv: KeyValue, what: str, expected: int = 0) -> int:
    """Deletes what ``kv`` was read as, if it is still so; returns the revision."""
    if expected and kv.mod_revision != expected:
        raise RevisionConflictError(
            f"{what} is at revision {kv.mod_revision}, not {expected}: it changed meanwhile"
        )
    result = await store.txn(
        [Compare(kv.key, "mod_revision", "==", kv.mod_revision)], [DeleteOp(kv.key)]
    )
    if not result.succeeded:
        raise RevisionConflictError(f"{what} changed while it was being removed; try again")
    return result.revision
