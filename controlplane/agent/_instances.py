"""The instances one session owns: syncs (in parts) and health reports,
validated and then written.

A sync makes the node's instances in the store exactly the ones it lists,
in one transaction, and only once its last part has arrived: nothing of a
sync is stored before it is whole. The writes go through the registry
(`controlplane.registry`), the one writer of instance keys; this module
decides what the node's instances are. An instance is validated as the sidecar
sent it, with the node's identity filled in; the control plane then adds
its own ``sidecar-session`` check, which does not count against the
instance's limits. A health report replaces the health and checks of one
synced instance; the result must still be a valid instance.
"""

from __future__ import annotations

import logging

from ecosystem.v1 import agent_pb2, registry_pb2

from controlplane.agent._nodes import SESSION_CHECK, session_check, with_session_check
from controlplane.agent._validation import AGENT_LIMITS, raise_if_any
from controlplane.registry import Registry, instance_key
from controlplane.validation import DEFAULT_NAMESPACE, instance_violations
from controlplane.view import InstanceView

__all__ = ["SessionInstances"]

log = logging.getLogger(__name__)


class SessionInstances:
    """Writes what one session says about its node's instances.

    ``desired`` is the node's instances as last synced (with health reports
    since applied), by store key; ``node`` and ``connected_at_ms`` are the
    session's.
    """

    def __init__(
        self, node: agent_pb2.Node, connected_at_ms: int, registry: Registry, view: InstanceView
    ) -> None:
        self._node = node
        self._connected_at_ms = connected_at_ms
        self._registry = registry
        self._view = view
        self.desired: dict[str, registry_pb2.Instance] = {}
        # The parts of a sync still coming: kept only while within the limits.
        self._parts: list[registry_pb2.Instance] = []
        self._count = 0
        self._bytes = 0

    async def sync_part(
        self, message: agent_pb2.SyncInstances, size: int
    ) -> agent_pb2.SyncResult | None:
        """Takes one part of a sync, ``size`` bytes as read (measured once, on
        the way in); returns the result once the last part is in."""
        self._count += len(message.instances)
        self._bytes += size
        if self._count <= AGENT_LIMITS.sync_instances and self._bytes <= AGENT_LIMITS.sync_bytes:
            self._parts.extend(message.instances)
        else:
            self._parts.clear()  # refused whole once the last part is in
        if message.more:
            return None
        parts, count, size = self._parts, self._count, self._bytes
        self._parts, self._count, self._bytes = [], 0, 0
        if count > AGENT_LIMITS.sync_instances:
            return self._refused(
                f"instances: at most {AGENT_LIMITS.sync_instances} per node, got {count}"
            )
        if size > AGENT_LIMITS.sync_bytes:
            return self._refused(
                f"instances: at most {AGENT_LIMITS.sync_bytes} bytes in all, got {size}"
            )
        return await self.sync(parts)

    def _refused(self, error: str) -> agent_pb2.SyncResult:
        log.warning("node %s: sync refused: %s", self._node.id, error)
        return agent_pb2.SyncResult(revision=self._registry.revision, errors=[error])

    async def sync(self, instances: list[registry_pb2.Instance]) -> agent_pb2.SyncResult:
        """Makes the node's instances in the store exactly the valid ones of
        ``instances``; the others are reported and skipped."""
        result = agent_pb2.SyncResult()
        errors = 0
        desired: dict[str, registry_pb2.Instance] = {}
        current = self._view.node_instances(self._node.id)
        for i, raw in enumerate(instances):
            inst = self._prepare(raw)
            problems = instance_violations(inst, f"instances[{i}]")
            if problems:
                for p in problems:
                    errors += 1
                    if errors <= AGENT_LIMITS.sync_errors:
                        result.errors.append(f"{p.field}: {p.description}")
                continue
            key = instance_key(inst.namespace, inst.service, inst.id)
            desired[key] = self._with_session(inst, current.get(key))
        if errors > AGENT_LIMITS.sync_errors:
            result.errors.append(f"and {errors - AGENT_LIMITS.sync_errors} more problems")
        self.desired = desired
        written = await self._registry.sync_node(self._node.id, desired.values(), current)
        result.revision = written.revision
        result.created = written.created
        result.updated = written.updated
        result.removed = written.removed
        if written.created or written.updated or written.removed:
            log.info(
                "node %s synced: %d created, %d updated, %d removed",
                self._node.id,
                result.created,
                result.updated,
                result.removed,
            )
        return result

    async def health(self, report: agent_pb2.HealthReport) -> None:
        """Applies a health report, already validated on its own
        (InvalidArgumentError if the instance it makes is invalid: nothing is
        written then)."""
        key = instance_key(report.namespace, report.service, report.instance_id)
        base = self.desired.get(key)
        if base is None:
            return  # not (yet) synced; the next sync carries the health
        updated = registry_pb2.Instance()
        updated.CopyFrom(base)
        updated.health = report.health
        del updated.checks[:]
        updated.checks.extend(report.checks)
        prepared = self._prepare(updated)
        raise_if_any(instance_violations(prepared, "health"))
        final = self._with_session(prepared, self._view.get(key))
        self.desired[key] = final
        await self._registry.put_node_instance(final)

    def _prepare(self, raw: registry_pb2.Instance) -> registry_pb2.Instance:
        """The instance as the sidecar means it: the node's identity filled in,
        and no session check (the control plane adds its own)."""
        inst = registry_pb2.Instance()
        inst.CopyFrom(raw)
        inst.namespace = inst.namespace or DEFAULT_NAMESPACE
        inst.node = self._node.id
        inst.platform = inst.platform or self._node.platform
        inst.region = inst.region or self._node.region
        inst.zone = inst.zone or self._node.zone
        inst.liveness = registry_pb2.LIVENESS_EPHEMERAL
        inst.lease_id = 0
        inst.ClearField("create_revision")
        inst.ClearField("mod_revision")
        if inst.health == registry_pb2.HEALTH_STATUS_UNSPECIFIED:
            inst.health = registry_pb2.HEALTH_STATUS_UNKNOWN
        if any(c.name == SESSION_CHECK for c in inst.checks):
            kept = [c for c in inst.checks if c.name != SESSION_CHECK]
            del inst.checks[:]
            inst.checks.extend(kept)
        return inst

    def _with_session(
        self, inst: registry_pb2.Instance, stored: registry_pb2.Instance | None
    ) -> registry_pb2.Instance:
        """``inst`` with the session check PASSING. A check that was already
        PASSING keeps its time, so a session that moved to another replica
        rewrites nothing."""
        since = self._connected_at_ms
        check = session_check(stored) if stored is not None else None
        if check is not None and check.status == registry_pb2.HEALTH_STATUS_PASSING:
            since = check.changed_at_ms
        return with_session_check(inst, registry_pb2.HEALTH_STATUS_PASSING, "session held", since)
