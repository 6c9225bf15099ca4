"""Registry writes: instances into the store, with leases for ephemeral ones.

Reads are served by the in-memory view (``controlplane.view``); this module
only writes, and decides what a write means: idempotent registration by
instance id, optimistic concurrency on ``expected_revision``, leases granted
for ephemeral instances, nothing written when validation fails.

It is the one writer of instance keys. Besides the RegistryService calls, it
writes what sidecar sessions say about their nodes' instances (a node's
instances synced in one transaction, a health report replacing one
instance) and what the reaper decides about a lost session's instances (a
compare-and-swap batch); the agent code decides what to write, this module
how it is keyed, stored and guarded.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

from ecosystem.v1 import registry_pb2 as pb

from controlplane.store import Compare, DeleteOp, KeyValue, LeaseNotFound, Op, PutOp, Store
from controlplane.validation import DEFAULT_NAMESPACE, validate_deregister, validate_register
from serving.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    RevisionConflictError,
)

__all__ = [
    "INSTANCES_PREFIX",
    "LEASE_HOLDERS_PREFIX",
    "ROOT_PREFIX",
    "STORE_ID_KEY",
    "Deregistration",
    "NodeSync",
    "Registration",
    "Registry",
    "decode_instance",
    "ensure_store_id",
    "instance_key",
    "lease_services",
]

log = logging.getLogger(__name__)

ROOT_PREFIX = "/ecosystem/v1/"
INSTANCES_PREFIX = ROOT_PREFIX + "instances/"
STORE_ID_KEY = ROOT_PREFIX + "meta/store-id"
#: ``<lease id>/<namespace>/<service>``, attached to the lease: which services
#: a lease holds instances of (a lease id alone says nothing about whose it
#: is; the ACL check of KeepAlive and RevokeLease asks).
LEASE_HOLDERS_PREFIX = ROOT_PREFIX + "lease-holders/"
DEFAULT_LEASE_TTL = 10
#: The longest service name an id is made from (an id is at most 128 characters).
_ID_PREFIX_MAX = 128 - 13


def instance_key(namespace: str, service: str, instance_id: str) -> str:
    return f"{INSTANCES_PREFIX}{namespace or DEFAULT_NAMESPACE}/{service}/{instance_id}"


def _holder_key(lease_id: int, namespace: str, service: str) -> str:
    return f"{LEASE_HOLDERS_PREFIX}{lease_id}/{namespace or DEFAULT_NAMESPACE}/{service}"


async def lease_services(store: Store, lease_id: int) -> list[tuple[str, str]]:
    """The services, ``(namespace, name)``, that ``lease_id`` has held
    instances of since it was granted (an instance deregistered early still
    counts); empty for a lease that holds none, or none at all."""
    if lease_id <= 0:
        return []
    result = await store.range(f"{LEASE_HOLDERS_PREFIX}{lease_id}/")
    held = []
    for kv in result.kvs:
        _lease, namespace, service = kv.key[len(LEASE_HOLDERS_PREFIX) :].split("/", 2)
        held.append((namespace, service))
    return held


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


@dataclass(frozen=True, slots=True)
class Deregistration:
    """A deregister's answer: the revision, and whether it removed anything."""

    revision: int
    deleted: bool


@dataclass(frozen=True, slots=True)
class NodeSync:
    """What `Registry.sync_node` wrote, at ``revision`` (the store's current
    revision when there was nothing to write)."""

    revision: int
    created: int = 0
    updated: int = 0
    removed: int = 0


class Registry:
    """Registers, deregisters and keeps alive instances in a ``Store``."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @property
    def revision(self) -> int:
        """The store's current revision."""
        return self._store.revision

    async def register(self, req: pb.RegisterInstanceRequest) -> Registration:
        if req.HasField("instance") and not req.instance.id:
            req = await self._with_id(req)
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
        # Written with the instance, gone with the lease.
        ops = [put]
        if lease_id:
            ops.append(
                PutOp(_holder_key(lease_id, inst.namespace, inst.service), b"", lease=lease_id)
            )
        try:
            if req.HasField("expected_revision"):
                # Optimistic concurrency: write only at the expected revision.
                expected = req.expected_revision
                result = await self._store.txn([Compare(key, "mod_revision", "==", expected)], ops)
                if not result.succeeded:
                    await self._conflict(key, expected)
            else:
                # Idempotent: the same registration again writes nothing, so a
                # fleet re-registering after a reconnect does not flood watchers.
                same = [Compare(key, "value", "==", value), Compare(key, "lease", "==", lease_id)]
                result = await self._store.txn(same, [], ops)
                if result.succeeded:
                    current = await self._store.get(key)
                    if current is not None:
                        return Registration(
                            decode_instance(current), result.revision, lease_id, ttl
                        )
                    # Deleted between the two reads: register it anew.
                    result = await self._store.txn([], ops)
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

    async def _with_id(self, req: pb.RegisterInstanceRequest) -> pb.RegisterInstanceRequest:
        """A copy of ``req`` with the instance id filled in: the id of the
        instance of that service already registered at the same address and
        port (so registering it again updates it rather than adding a
        duplicate), else a new ``<service>-<12 hex digits>``.

        This is the one place ids are made: the SDK and ``eco`` send none when
        the caller gave none. Two id-less registrations of the same endpoint
        racing each other may still both add one."""
        named = pb.RegisterInstanceRequest()
        named.CopyFrom(req)
        inst = named.instance
        namespace = inst.namespace or DEFAULT_NAMESPACE
        if inst.service and "/" not in inst.service and "/" not in namespace:
            found = await self._store.range(f"{INSTANCES_PREFIX}{namespace}/{inst.service}/")
            # A service of thousands: only a record holding the address is parsed.
            address = inst.address.encode()
            for kv in found.kvs:
                if address not in kv.value:
                    continue
                current = pb.Instance.FromString(kv.value)
                if current.address == inst.address and current.port == inst.port:
                    inst.id = current.id
                    return named
        # A service name too long for an id is refused by validation anyway;
        # the id made for it then is not another problem to report.
        prefix = f"{inst.service}-" if 0 < len(inst.service) <= _ID_PREFIX_MAX else ""
        inst.id = f"{prefix}{uuid.uuid4().hex[:12]}"
        return named

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

    async def deregister(self, req: pb.DeregisterInstanceRequest) -> Deregistration:
        """Removes one instance. Idempotent, as a delete in etcd or Consul is:
        an instance that is not registered is not an error (``deleted`` is
        False), so a retry whose first attempt was applied succeeds. With
        ``expected_revision`` N, an instance registered at another revision is
        kept (RevisionConflictError); a missing one is still not an error."""
        validate_deregister(req)
        key = instance_key(req.namespace, req.service, req.id)
        compares = []
        if req.HasField("expected_revision"):
            compares.append(Compare(key, "mod_revision", "==", req.expected_revision))
        result = await self._store.txn(compares, [DeleteOp(key)])
        if not result.succeeded:
            current = await self._store.get(key)
            if current is not None:
                raise RevisionConflictError(
                    f"{key} is at revision {current.mod_revision}, "
                    f"not the expected {req.expected_revision}; it was not removed"
                )
            return Deregistration(result.revision, deleted=False)
        deleted = bool(result.prev_kvs) and result.prev_kvs[0] is not None
        log.debug("deregistered instance=%s service=%s deleted=%s", req.id, req.service, deleted)
        return Deregistration(result.revision, deleted=deleted)

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

    # -- writes on behalf of sidecar sessions and the reaper ------------------------

    async def sync_node(
        self, node: str, desired: Iterable[pb.Instance], current: Mapping[str, pb.Instance]
    ) -> NodeSync:
        """Makes the instances of ``node`` in the store exactly ``desired``, in
        one transaction. ``current`` is what the caller saw stored, by key
        (with mod revisions): an instance whose stored value is already the
        desired one is not rewritten, and an instance of ``node`` there that is
        not desired is deleted only if it has not changed since it was seen.
        If one has, the desired instances are still written and the deletions
        are left for the next sync (``removed`` is then 0)."""
        wanted: dict[str, bytes] = {}
        for inst in desired:
            if inst.node != node:
                raise ValueError(f"instance {inst.id!r} is of node {inst.node!r}, not {node!r}")
            wanted[_key(inst)] = _stored_value(inst)
        ops: list[Op] = []
        puts: list[Op] = []
        compares: list[Compare] = []
        created = updated = removed = 0
        for key, value in wanted.items():
            existing = current.get(key)
            if existing is not None and _stored_value(existing) == value:
                continue
            puts.append(PutOp(key, value))
            if existing is None:
                created += 1
            else:
                updated += 1
        ops.extend(puts)
        for key, existing in current.items():
            if key not in wanted and existing.node == node:
                ops.append(DeleteOp(key))
                compares.append(Compare(key, "mod_revision", "==", existing.mod_revision))
                removed += 1
        if not ops:
            return NodeSync(self._store.revision)
        result = await self._store.txn(compares, ops, puts)
        if not result.succeeded:
            removed = 0  # changed under us: left for the next sync
        return NodeSync(result.revision, created, updated, removed)

    async def put_node_instance(self, inst: pb.Instance) -> int:
        """Stores ``inst`` as it is (a session's health report replacing the
        health of one of its node's instances); returns the revision."""
        if not inst.node:
            raise ValueError(f"instance {inst.id!r} belongs to no node")
        return await self._store.put(_key(inst), _stored_value(inst))

    async def write_if_unchanged(
        self,
        seen: Iterable[pb.Instance],
        *,
        put: Iterable[pb.Instance] = (),
        delete: Iterable[pb.Instance] = (),
        also: Sequence[PutOp] = (),
    ) -> bool:
        """Stores ``put`` and deletes ``delete`` in one transaction, only if
        none of the ``seen`` instances (as read, with their mod revisions) has
        changed since; ``also`` are writes of other keys made in the same
        transaction (the reaper marks a node record lost with its instances).
        True if it was written."""
        compares = [Compare(_key(i), "mod_revision", "==", i.mod_revision) for i in seen]
        ops: list[Op] = [PutOp(_key(i), _stored_value(i)) for i in put]
        ops.extend(DeleteOp(_key(i)) for i in delete)
        for op in also:
            if op.key.startswith(INSTANCES_PREFIX):
                raise ValueError(f"{op.key}: instances are written as instances, not as `also`")
            ops.append(op)
        if not ops:
            return True
        result = await self._store.txn(compares, ops)
        return result.succeeded


def _key(inst: pb.Instance) -> str:
    return instance_key(inst.namespace, inst.service, inst.id)


def _stored_value(inst: pb.Instance) -> bytes:
    """``inst`` as stored: its revisions are the store's, never part of the value."""
    if inst.create_revision or inst.mod_revision:
        plain = pb.Instance()
        plain.CopyFrom(inst)
        plain.ClearField("create_revision")
        plain.ClearField("mod_revision")
        inst = plain
    return inst.SerializeToString(deterministic=True)
