"""Lost sessions: instances turn CRITICAL after the grace, then go.

A session is lost when its key is gone from the store — its lease ran out
because no control plane kept it alive for the grace period. Every sweep
(once a second) compares the nodes that own instances with the sessions that
exist: a node without a session has its instances marked CRITICAL (the
``sidecar-session`` check says why and since when), and removed once they
have been CRITICAL for the node's ``deregister_critical_after``. A sidecar
that comes back syncs its instances again, which clears both.

Node records go the same way, on a slower round (every ``node_interval``,
a minute by default): a record whose session key is gone is marked
disconnected with the time it was lost (``lost_at_ms``), and deleted once it
has been lost for ``node_retention`` (an hour by default) and the node owns
no instances any more — so records of sidecars that are gone for good, or of
Hellos that never came back, do not pile up. A sidecar that comes back later
is simply a new node.

Because the decision rests only on the store, a restarted control plane (or
another replica) reaches the same conclusion with no state of its own. With
several replicas it runs on the elected leader only (`controlplane.leader`);
its writes are compare-and-swap on each instance's (and record's) revision
anyway, so a brief overlap of two leaders could not mark or remove anything
twice. Instances are written through the registry (`controlplane.registry`),
the one writer of instance keys, in the same transaction as the node record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from ecosystem.v1 import agent_pb2, registry_pb2

from controlplane.agent._nodes import (
    NODES_PREFIX,
    SESSIONS_PREFIX,
    node_key,
    now_ms,
    session_check,
    with_session_check,
)
from controlplane.registry import Registry
from controlplane.store import Compare, DeleteOp, KeyValue, Op, PutOp, Store, StoreError
from controlplane.view import InstanceView

__all__ = ["Reaper"]

log = logging.getLogger(__name__)


#: seconds a node record is kept after its session was lost (and its instances are gone)
NODE_RETENTION = 3600.0


class Reaper:
    """Sweeps lost sessions every ``interval`` seconds, and node records every
    ``node_interval`` (0: every sweep)."""

    def __init__(
        self,
        store: Store,
        view: InstanceView,
        *,
        default_deregister_after: int,
        interval: float = 1.0,
        node_retention: float = NODE_RETENTION,
        node_interval: float = 60.0,
    ) -> None:
        if node_retention < 0 or node_interval < 0:
            raise ValueError("node_retention and node_interval must not be negative")
        self._store = store
        self._registry = Registry(store)
        self._view = view
        self._default_after = default_deregister_after
        self._interval = interval
        self._node_retention = node_retention
        self._node_interval = node_interval
        self._nodes_swept = float("-inf")

    async def run(self) -> None:
        while True:
            try:
                await self.sweep()
            except StoreError as exc:
                log.warning("session sweep failed: %s", exc)
            await asyncio.sleep(self._interval)

    async def sweep(self) -> None:
        live = {
            kv.key[len(SESSIONS_PREFIX) :] for kv in (await self._store.range(SESSIONS_PREFIX)).kvs
        }
        owned: dict[str, dict[str, registry_pb2.Instance]] = {}
        for key, inst in self._view.items():
            if inst.node and session_check(inst) is not None:
                owned.setdefault(inst.node, {})[key] = inst
        lost = {node: insts for node, insts in owned.items() if node not in live}
        tick = time.monotonic()
        sweep_records = tick - self._nodes_swept >= self._node_interval
        if not lost and not sweep_records:
            return
        # One read of the node records serves both rounds. The instances go
        # first: a record they mark changes, so the record round leaves it be.
        kvs = (await self._store.range(NODES_PREFIX)).kvs
        if lost:
            records = {
                kv.key[len(NODES_PREFIX) :]: agent_pb2.NodeStatus.FromString(kv.value) for kv in kvs
            }
            now = now_ms()
            for node, instances in lost.items():
                record = records.get(node)
                after = (
                    record.deregister_critical_after_seconds if record else 0
                ) or self._default_after
                await self._settle(node, instances, record, now, after)
        if sweep_records:
            self._nodes_swept = tick
            await self._sweep_records(kvs, live, owned)

    async def _sweep_records(
        self,
        kvs: Sequence[KeyValue],
        live: set[str],
        owned: dict[str, dict[str, registry_pb2.Instance]],
    ) -> None:
        """Marks the records (``kvs``) of lost sessions, and deletes those lost
        for the retention whose node owns no instances."""
        now = now_ms()
        marked = deleted = 0
        for kv in kvs:
            node = kv.key[len(NODES_PREFIX) :]
            if node in live:
                continue
            record = agent_pb2.NodeStatus.FromString(kv.value)
            if record.lost_at_ms == 0:
                # Lost without instances (the instance sweep marks the others),
                # or by a replica that died while its record said connected.
                record.lost_at_ms = now
                record.connected = False
                record.status = agent_pb2.NODE_SYNC_STATUS_DISCONNECTED
                marked += await self._swap(kv, PutOp(kv.key, record.SerializeToString()))
            elif now - record.lost_at_ms >= self._node_retention * 1000 and node not in owned:
                deleted += await self._swap(kv, DeleteOp(kv.key))
        if marked or deleted:
            log.info("node records: %d marked lost, %d deleted (retention)", marked, deleted)

    async def _swap(self, kv: KeyValue, op: Op) -> int:
        """Applies ``op`` if the record is still ``kv`` and its session still
        gone (a sidecar may have come back meanwhile); 1 if it was."""
        node = kv.key[len(NODES_PREFIX) :]
        result = await self._store.txn(
            [
                Compare(kv.key, "mod_revision", "==", kv.mod_revision),
                Compare(SESSIONS_PREFIX + node, "exists", "==", False),
            ],
            [op],
        )
        return int(result.succeeded)

    async def _settle(
        self,
        node: str,
        instances: dict[str, registry_pb2.Instance],
        record: agent_pb2.NodeStatus | None,
        now: int,
        after: int,
    ) -> None:
        critical: list[registry_pb2.Instance] = []
        gone: list[registry_pb2.Instance] = []
        for inst in instances.values():
            check = session_check(inst)
            assert check is not None
            if check.status != registry_pb2.HEALTH_STATUS_CRITICAL:
                critical.append(
                    with_session_check(
                        inst, registry_pb2.HEALTH_STATUS_CRITICAL, "sidecar session lost", now
                    )
                )
            elif now - check.changed_at_ms >= after * 1000:
                gone.append(inst)
        marked, removed = len(critical), len(gone)
        also: list[PutOp] = []
        if record is not None and record.lost_at_ms == 0 and marked:
            record.lost_at_ms = now
            record.connected = False
            record.status = agent_pb2.NODE_SYNC_STATUS_DISCONNECTED
            also.append(PutOp(node_key(node), record.SerializeToString(deterministic=True)))
        if not (marked or removed):
            return
        # Only if none of the node's instances changed since read: the node
        # may have synced meanwhile (then look again next sweep).
        written = await self._registry.write_if_unchanged(
            instances.values(), put=critical, delete=gone, also=also
        )
        if not written:
            return
        if marked:
            log.warning("node %s lost its session: %d instance(s) now CRITICAL", node, marked)
        if removed:
            log.warning("node %s: %d instance(s) removed after %ds CRITICAL", node, removed, after)
