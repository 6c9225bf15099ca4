"""Registry writes: instances into the store, with leases for ephemeral ones.

Reads are served by the in-memory view (``controlplane.view``); this module
only writes, and decides what a write means: idempotent registration by
instance id, optimistic concurrency on ``expected_revision``, leases granted
for ephemeral instances, nothing written when validation fails.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import NoReturn

from ecosystem.v1 import registry_pb2 as pb

from controlplane.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    RevisionConflictError,
)
from controlplane.store import Compare, DeleteOp, KeyValue, LeaseNotFound, PutOp, Store
from controlplane.validation import DEFAULT_NAMESPACE, validate_deregister, validate_register

__all__ = [
    "INSTANCES_PREFIX",
    "ROOT_PREFIX",
    "STORE_ID_KEY",
    "Registration",
    "Registry",
    "decode_instance",
    "ensure_store_id",
    "instance_key",
]

log = logging.getLogger(__name__)

ROOT_PREFIX = "/ecosystem/v1/"
INSTANCES_PREFIX = ROOT_PREFIX + "instances/"
STORE_ID_KEY = ROOT_PREFIX + "meta/store-id"
DEFAULT_LEASE_TTL = 10


def instance_key(namespace: str, service: str, instance_id: str) -> str:
    return f"{INSTANCES_PREFIX}{namespace or DEFAULT_NAMESPACE}/{service}/{instance_id}"


async def ensure_store_id(store: Store) -> str:
    """The identity of this store's revision history, created on first use.

    Revisions are only comparable within one store: a watcher that resumes
    against a wiped or different store must get a snapshot, not deltas that
    happen to carry the revisions it asked for.
    """
    fresh = uuid.uuid4().hex
    result = await store.txn(
        [Compare(STORE_ID_KEY, "exists", "==", False)], [PutOp(STORE_ID_KEY, fresh.encode())]
    )
    if result.succeeded:
        return fresh
    current = await store.get(STORE_ID_KEY)
    assert current is not None
    return current.value.decode()


def decode_instance(kv: KeyValue, *, value: bytes | None = None) -> pb.Instance:
    """The stored instance with its store revisions filled in."""
    inst = pb.Instance.FromString(kv.value if value is None else value)
    inst.create_revision = kv.create_revision
    inst.mod_revision = kv.mod_revision
    return inst


@dataclass(frozen=True, slots=True)
class Registration:
    instance: pb.Instance
    revision: int
    lease_id: int
    lease_ttl: int


class Registry:
    """Registers, deregisters and keeps alive instances in a ``Store``."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def register(self, req: pb.RegisterInstanceRequest) -> Registration:
        validate_register(req)
        inst = pb.Instance()
        inst.CopyFrom(req.instance)
        inst.namespace = inst.namespace or DEFAULT_NAMESPACE
        inst.ClearField("create_revision")
        inst.ClearField("mod_revision")
        if inst.health == pb.HEALTH_STATUS_UNSPECIFIED:
            inst.health = pb.HEALTH_STATUS_PASSING
        if inst.liveness == pb.LIVENESS_UNSPECIFIED:
            inst.liveness = pb.LIVENESS_PERSISTENT
        lease_id, ttl = 0, 0
        if inst.liveness == pb.LIVENESS_EPHEMERAL:
            lease_id, ttl = await self._lease_for(req)
        inst.lease_id = lease_id
        value = inst.SerializeToString(deterministic=True)
        key = instance_key(inst.namespace, inst.service, inst.id)
        put = PutOp(key, value, lease=lease_id)
        try:
            if req.HasField("expected_revision"):
                # Optimistic concurrency: write only at the expected revision.
                expected = req.expected_revision
                result = await self._store.txn(
                    [Compare(key, "mod_revision", "==", expected)], [put]
                )
                if not result.succeeded:
                    await self._conflict(key, expected)
            else:
                # Idempotent: the same registration again writes nothing, so a
                # fleet re-registering after a reconnect does not flood watchers.
                same = [Compare(key, "value", "==", value), Compare(key, "lease", "==", lease_id)]
                result = await self._store.txn(same, [], [put])
                if result.succeeded:
                    current = await self._store.get(key)
                    if current is not None:
                        return Registration(
                            decode_instance(current), result.revision, lease_id, ttl
                        )
                    # Deleted between the two reads: register it anew.
                    result = await self._store.txn([], [put])
        except LeaseNotFound as exc:
            raise FailedPreconditionError(
                f"lease {lease_id} expired before the instance was stored; register again"
            ) from exc
        prev = result.prev_kvs[0] if result.prev_kvs else None
        inst.create_revision = prev.create_revision if prev else result.revision
        inst.mod_revision = result.revision
        log.debug(
            "registered instance=%s service=%s namespace=%s revision=%d",
            inst.id,
            inst.service,
            inst.namespace,
            result.revision,
        )
        return Registration(inst, result.revision, lease_id, ttl)

    async def _conflict(self, key: str, expected: int) -> NoReturn:
        current = await self._store.get(key)
        if expected == 0:
            actual = current.mod_revision if current else 0
            raise AlreadyExistsError(
                f"{key} already exists (revision {actual}); "
                "expected_revision=0 requires that it does not"
            )
        actual = current.mod_revision if current else 0
        raise RevisionConflictError(f"{key} is at revision {actual}, not the expected {expected}")

    async def _lease_for(self, req: pb.RegisterInstanceRequest) -> tuple[int, int]:
        if req.lease_id:
            try:
                granted, _remaining = await self._store.lease_ttl(req.lease_id)
            except LeaseNotFound as exc:
                raise FailedPreconditionError(
                    f"lease {req.lease_id} has expired or never existed; "
                    "register with lease_id 0 to get a new one"
                ) from exc
            return req.lease_id, round(granted)
        ttl = req.lease_ttl_seconds or DEFAULT_LEASE_TTL
        return await self._store.grant(ttl), ttl

    async def deregister(self, req: pb.DeregisterInstanceRequest) -> int:
        validate_deregister(req)
        key = instance_key(req.namespace, req.service, req.id)
        result = await self._store.txn([], [DeleteOp(key)])
        if not result.prev_kvs or result.prev_kvs[0] is None:
            namespace = req.namespace or DEFAULT_NAMESPACE
            raise NotFoundError(
                f"instance {req.id!r} of service {req.service!r} in namespace "
                f"{namespace!r} is not registered"
            )
        log.debug("deregistered instance=%s service=%s", req.id, req.service)
        return result.revision

    async def revoke(self, lease_id: int) -> int:
        if lease_id <= 0:
            raise InvalidArgumentError([FieldViolation("lease_id", "must be a granted lease id")])
        try:
            await self._store.revoke(lease_id)
        except LeaseNotFound as exc:
            raise NotFoundError(f"lease {lease_id} has expired or never existed") from exc
        log.debug("revoked lease %d", lease_id)
        return self._store.revision

    async def keepalive(self, lease_id: int) -> int:
        if lease_id <= 0:
            raise InvalidArgumentError([FieldViolation("lease_id", "must be a granted lease id")])
        try:
            ttl = await self._store.keepalive(lease_id)
        except LeaseNotFound as exc:
            raise NotFoundError(
                f"lease {lease_id} has expired or never existed; its instances are gone"
            ) from exc
        return round(ttl)
