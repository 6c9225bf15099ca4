"""One sidecar's session on this control plane: one ``Connect`` stream.

A session is four owned tasks around one stream — a reader (sync, health,
subscribe, ack), an updater (waits for changes of subscribed services and
queues one ``EndpointUpdate`` carrying the complete current endpoints of
each changed service), a keeper (holds the session lease) and an ender
(ends the stream with UNAVAILABLE when this replica sheds it) — plus the
writer, which is the stream handler itself draining a small bounded queue.
While a write is blocked by a slow sidecar, changes keep accumulating as a
set of dirty services, so the next update carries the latest state and not
a backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from ecosystem.v1 import agent_pb2, registry_pb2

from controlplane.agent._nodes import (
    SESSION_CHECK,
    node_key,
    now_ms,
    session_check,
    session_key,
    with_session_check,
)
from controlplane.errors import FieldViolation, InvalidArgumentError, UnavailableError
from controlplane.registry import instance_key
from controlplane.store import (
    Compare,
    DeleteOp,
    LeaseNotFound,
    Op,
    PutOp,
    Store,
    StoreUnavailable,
)
from controlplane.validation import DEFAULT_NAMESPACE, instance_violations
from controlplane.view import InstanceView, Selector, Subscription

__all__ = ["AgentSettings", "NodeSession", "SessionRunner", "open_session", "record_node"]

log = logging.getLogger(__name__)

_OUTGOING = 16
_MAX_SYNC = 1_000


@dataclass(frozen=True, slots=True)
class AgentSettings:
    replica: str
    grace: int = 15
    deregister_critical_after: int = 60
    sync_interval: int = 30
    token: str = ""


@dataclass(eq=False)
class NodeSession:
    """The live state of one connected sidecar."""

    node: agent_pb2.Node
    session_id: str
    lease_id: int
    grace: int
    deregister_after: int
    peer: str
    replica: str
    resumed: bool
    connected_at_ms: int = field(default_factory=now_ms)
    last_seen_ms: int = field(default_factory=now_ms)
    sent_version: int = 0
    sent_nonce: str = ""
    applied_version: int = 0
    acked_nonce: str = ""
    last_error: str = ""
    connected: bool = True
    subscriptions: dict[tuple[str, str], Subscription] = field(default_factory=dict)
    desired: dict[str, registry_pb2.Instance] = field(default_factory=dict)
    dirty: set[tuple[str, str]] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # The mod revision of the node record this session wrote on connect: the
    # disconnect is recorded only if no other replica has written it since.
    record_revision: int = 0
    # Set (with a reason) to end the stream from this side, e.g. to shed load.
    ending: asyncio.Event = field(default_factory=asyncio.Event)
    end_reason: str = ""
    _nonces: int = 0

    @property
    def synced(self) -> bool:
        return self.connected and self.acked_nonce == self.sent_nonce and not self.last_error

    def status(self, instance_count: int) -> agent_pb2.NodeStatus:
        if not self.connected:
            state = agent_pb2.NODE_SYNC_STATUS_DISCONNECTED
        elif self.synced:
            state = agent_pb2.NODE_SYNC_STATUS_SYNCED
        else:
            state = agent_pb2.NODE_SYNC_STATUS_STALE
        return agent_pb2.NodeStatus(
            node=self.node,
            status=state,
            connected=self.connected,
            replica=self.replica,
            peer=self.peer,
            connected_at_ms=self.connected_at_ms,
            last_seen_ms=self.last_seen_ms,
            applied_version=self.applied_version,
            sent_version=self.sent_version,
            subscriptions=[
                agent_pb2.ServiceRef(namespace=ns, name=name)
                for ns, name in sorted(self.subscriptions)
            ],
            instance_count=instance_count,
            last_error=self.last_error,
            session_id=self.session_id,
            grace_seconds=self.grace,
            deregister_critical_after_seconds=self.deregister_after,
        )

    def end(self, reason: str) -> None:
        """Ends the stream with UNAVAILABLE and ``reason``: the sidecar reconnects
        (elsewhere) and resumes this session."""
        if self.connected and not self.ending.is_set():
            self.end_reason = reason
            self.ending.set()

    def next_nonce(self) -> str:
        self._nonces += 1
        return f"{self.session_id[:8]}-{self._nonces}"


class SessionRunner:
    """Runs one session over one stream; ``run`` returns when it ends."""

    def __init__(
        self,
        session: NodeSession,
        store: Store,
        view: InstanceView,
        settings: AgentSettings,
        context: Any,
        on_change: Callable[[], None],
    ) -> None:
        self.session = session
        self._store = store
        self._view = view
        self._settings = settings
        self._context = context
        self._on_change = on_change
        self._outgoing: asyncio.Queue[agent_pb2.ConnectResponse] = asyncio.Queue(_OUTGOING)

    async def run(self) -> None:
        s = self.session
        await self._outgoing.put(
            agent_pb2.ConnectResponse(
                welcome=agent_pb2.Welcome(
                    session_id=s.session_id,
                    replica=s.replica,
                    grace_seconds=s.grace,
                    sync_interval_seconds=self._settings.sync_interval,
                    resumed=s.resumed,
                )
            )
        )
        try:
            async with asyncio.TaskGroup() as group:
                reader = group.create_task(self._read(), name=f"agent-read-{s.node.id}")
                group.create_task(self._update(), name=f"agent-update-{s.node.id}")
                group.create_task(self._keep(), name=f"agent-lease-{s.node.id}")
                group.create_task(self._until_ended(), name=f"agent-end-{s.node.id}")
                writer = group.create_task(self._write(), name=f"agent-write-{s.node.id}")
                # The stream ends when the sidecar stops sending; the rest follow.
                await reader
                writer.cancel()
                raise _StreamEnded
        except* _StreamEnded:
            pass
        finally:
            for sub in s.subscriptions.values():
                self._view.unsubscribe(sub)
            s.subscriptions.clear()

    # -- tasks ------------------------------------------------------------------

    async def _write(self) -> None:
        while True:
            message = await self._outgoing.get()
            await self._context.write(message)

    async def _read(self) -> None:
        while True:
            request = await self._context.read()
            if request is grpc.aio.EOF:  # type: ignore[attr-defined]
                return
            self.session.last_seen_ms = now_ms()
            kind = request.WhichOneof("message")
            if kind == "sync":
                result = await self.sync(list(request.sync.instances))
                await self._outgoing.put(agent_pb2.ConnectResponse(sync_result=result))
            elif kind == "health":
                await self._health(request.health)
            elif kind == "subscribe":
                self._subscribe(request.subscribe)
            elif kind == "ack":
                self._ack(request.ack)
            elif kind == "ping":
                pong = agent_pb2.Pong(nonce=request.ping.nonce)
                await self._outgoing.put(agent_pb2.ConnectResponse(pong=pong))
                continue
            elif kind == "hello":
                raise InvalidArgumentError([FieldViolation("hello", "sent twice in one session")])
            self._on_change()

    async def _update(self) -> None:
        s = self.session
        while True:
            await s.wake.wait()
            s.wake.clear()
            for ref, sub in s.subscriptions.items():
                if sub.pending or sub.resync:
                    sub.pending.clear()
                    sub.resync = False
                    s.dirty.add(ref)
            if not s.dirty:
                continue
            full = s.sent_nonce == ""
            dirty, s.dirty = s.dirty, set()
            update = agent_pb2.EndpointUpdate(version=self._view.revision, full=full)
            for namespace, name in sorted(dirty):
                found = self._view.service(namespace, name)
                update.services.append(
                    agent_pb2.ServiceEndpoints(
                        service=agent_pb2.ServiceRef(namespace=namespace, name=name),
                        instances=found[1] if found else [],
                    )
                )
            update.nonce = s.next_nonce()
            s.sent_version, s.sent_nonce = update.version, update.nonce
            self._on_change()
            await self._outgoing.put(agent_pb2.ConnectResponse(update=update))

    async def _keep(self) -> None:
        """Holds the session lease while the stream is up; recreates the
        session key if the lease was lost anyway (e.g. a long pause). When the
        store cannot be reached for half the grace period, ends the stream so
        that the sidecar moves to a replica that can reach it."""
        s = self.session
        loop = asyncio.get_running_loop()
        renewed = loop.time()
        while True:
            await asyncio.sleep(max(s.grace / 3, 0.2))
            try:
                await self._store.keepalive(s.lease_id)
            except LeaseNotFound:
                log.warning("session lease of node %s was lost; renewing the session", s.node.id)
                s.lease_id = await self._store.grant(s.grace)
                await self._store.put(
                    session_key(s.node.id), s.session_id.encode(), lease=s.lease_id
                )
                if s.desired:
                    await self.sync(list(s.desired.values()))
            except StoreUnavailable as exc:
                if loop.time() - renewed < s.grace / 2:
                    log.info("session lease of node %s not renewed: %s", s.node.id, exc)
                    continue
                raise UnavailableError(
                    "this replica cannot reach the store; reconnect to another"
                ) from exc
            renewed = loop.time()

    async def _until_ended(self) -> None:
        s = self.session
        await s.ending.wait()
        log.info("ending the stream of node %s: %s", s.node.id, s.end_reason)
        raise UnavailableError(s.end_reason)

    # -- messages -----------------------------------------------------------------

    async def sync(self, instances: list[registry_pb2.Instance]) -> agent_pb2.SyncResult:
        """Makes the node's instances in the store exactly ``instances``."""
        s = self.session
        result = agent_pb2.SyncResult()
        if len(instances) > _MAX_SYNC:
            result.errors.append(f"instances: at most {_MAX_SYNC} per node, got {len(instances)}")
            return result
        desired: dict[str, registry_pb2.Instance] = {}
        current = self._view.node_instances(s.node.id)
        for i, raw in enumerate(instances):
            key = instance_key(raw.namespace or DEFAULT_NAMESPACE, raw.service, raw.id)
            inst = self._normalize(raw, current.get(key))
            problems = instance_violations(inst, f"instances[{i}]")
            if problems:
                result.errors.extend(f"{p.field}: {p.description}" for p in problems)
                continue
            desired[instance_key(inst.namespace, inst.service, inst.id)] = inst
        s.desired = desired
        ops: list[Op] = []
        compares: list[Compare] = []
        for key, inst in desired.items():
            value = inst.SerializeToString(deterministic=True)
            existing = current.get(key)
            if existing is not None and _stored_value(existing) == value:
                continue
            ops.append(PutOp(key, value))
            if existing is None:
                result.created += 1
            else:
                result.updated += 1
        for key, existing in current.items():
            if key not in desired and existing.node == s.node.id:
                ops.append(DeleteOp(key))
                compares.append(Compare(key, "mod_revision", "==", existing.mod_revision))
                result.removed += 1
        if ops:
            txn = await self._store.txn(compares, ops, [op for op in ops if isinstance(op, PutOp)])
            result.revision = txn.revision
            if not txn.succeeded:
                result.removed = 0  # changed under us: left for the next sync
        else:
            result.revision = self._store.revision
        if ops:
            log.info(
                "node %s synced: %d created, %d updated, %d removed",
                s.node.id,
                result.created,
                result.updated,
                result.removed,
            )
        return result

    def _normalize(
        self, raw: registry_pb2.Instance, stored: registry_pb2.Instance | None
    ) -> registry_pb2.Instance:
        """The instance as stored: the node's identity filled in and the session
        check PASSING. A check that was already PASSING keeps its time, so a
        session that moved to another replica rewrites nothing."""
        s = self.session
        inst = registry_pb2.Instance()
        inst.CopyFrom(raw)
        inst.namespace = inst.namespace or DEFAULT_NAMESPACE
        inst.node = s.node.id
        inst.platform = inst.platform or s.node.platform
        inst.region = inst.region or s.node.region
        inst.zone = inst.zone or s.node.zone
        inst.liveness = registry_pb2.LIVENESS_EPHEMERAL
        inst.lease_id = 0
        inst.ClearField("create_revision")
        inst.ClearField("mod_revision")
        if inst.health == registry_pb2.HEALTH_STATUS_UNSPECIFIED:
            inst.health = registry_pb2.HEALTH_STATUS_UNKNOWN
        since = s.connected_at_ms
        check = session_check(stored) if stored is not None else None
        if check is not None and check.status == registry_pb2.HEALTH_STATUS_PASSING:
            since = check.changed_at_ms
        return with_session_check(inst, registry_pb2.HEALTH_STATUS_PASSING, "session held", since)

    async def _health(self, report: agent_pb2.HealthReport) -> None:
        s = self.session
        key = instance_key(report.namespace, report.service, report.instance_id)
        base = s.desired.get(key)
        if base is None:
            return  # not (yet) synced; the next sync carries the health
        updated = registry_pb2.Instance()
        updated.CopyFrom(base)
        updated.health = report.health
        del updated.checks[:]
        updated.checks.extend(c for c in report.checks if c.name != SESSION_CHECK)
        updated = self._normalize(updated, self._view.get(key))
        s.desired[key] = updated
        await self._store.put(key, updated.SerializeToString(deterministic=True))

    def _subscribe(self, request: agent_pb2.Subscribe) -> None:
        s = self.session
        wanted = {(ref.namespace or DEFAULT_NAMESPACE, ref.name) for ref in request.services}
        for ref in list(s.subscriptions):
            if ref not in wanted:
                self._view.unsubscribe(s.subscriptions.pop(ref))
        for namespace, name in sorted(wanted - set(s.subscriptions)):
            s.subscriptions[(namespace, name)] = self._view.subscribe(
                Selector(service=name, namespace=namespace), wake=s.wake
            )
            s.dirty.add((namespace, name))
        s.wake.set()

    def _ack(self, ack: agent_pb2.Ack) -> None:
        s = self.session
        if ack.nonce != s.sent_nonce:
            return  # an answer to an update that has since been superseded
        s.acked_nonce = ack.nonce
        if ack.rejected:
            s.last_error = ack.error or "update rejected"
            log.warning("node %s rejected update %d: %s", s.node.id, ack.version, s.last_error)
        else:
            s.last_error = ""
            s.applied_version = max(s.applied_version, ack.version)


def _stored_value(inst: registry_pb2.Instance) -> bytes:
    plain = registry_pb2.Instance()
    plain.CopyFrom(inst)
    plain.ClearField("create_revision")
    plain.ClearField("mod_revision")
    return plain.SerializeToString(deterministic=True)


class _StreamEnded(Exception):
    pass


async def open_session(
    store: Store,
    settings: AgentSettings,
    hello: agent_pb2.Hello,
    peer: str,
) -> NodeSession:
    """Starts (or resumes, within its grace) the session a Hello asks for."""
    node_id = hello.node.id
    grace = hello.grace_seconds or settings.grace
    deregister_after = hello.deregister_critical_after_seconds or settings.deregister_critical_after
    key = session_key(node_id)
    current = await store.get(key)
    if hello.session_id and current is not None and current.value.decode() == hello.session_id:
        with contextlib.suppress(LeaseNotFound):
            await store.keepalive(current.lease)
            log.info("node %s resumed session %s", node_id, hello.session_id)
            return NodeSession(
                hello.node,
                hello.session_id,
                current.lease,
                grace,
                deregister_after,
                peer,
                settings.replica,
                resumed=True,
                applied_version=hello.applied_version,
            )
    session_id = uuid.uuid4().hex
    lease_id = await store.grant(grace)
    await store.put(key, session_id.encode(), lease=lease_id)
    log.info("node %s opened session %s (peer %s)", node_id, session_id, peer)
    return NodeSession(
        hello.node,
        session_id,
        lease_id,
        grace,
        deregister_after,
        peer,
        settings.replica,
        resumed=False,
        applied_version=hello.applied_version,
    )


async def record_node(store: Store, status: agent_pb2.NodeStatus, *, if_revision: int = 0) -> int:
    """Writes a node record; returns its mod revision (0 if not written). With
    ``if_revision``, only if the record is still the one written then: another
    replica the node has moved to may have written it since."""
    key, value = node_key(status.node.id), status.SerializeToString(deterministic=True)
    compares = [Compare(key, "mod_revision", "==", if_revision)] if if_revision else []
    result = await store.txn(compares, [PutOp(key, value)])
    return result.revision if result.succeeded else 0
