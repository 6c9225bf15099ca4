"""One sidecar's session on this control plane: one ``Connect`` stream.

A session is five owned tasks around one stream — a reader (sync, health,
subscribe, ack), an updater (waits for changes of subscribed services and
queues one ``EndpointUpdate`` carrying the complete current endpoints of
each changed service, in parts of at most 1 MiB), a keeper (holds the
session lease and notices when another stream took the session over), an
idle watch (ends a stream the sidecar has said nothing on for the idle
timeout) and an ender (ends the stream when this replica sheds it or another
stream resumed its session) — plus the writer, which is the stream handler
itself draining a small bounded queue. While a write is blocked by a slow
sidecar, changes keep accumulating as a set of dirty services, so the next
update carries the latest state and not a backlog.

Every message is validated before it changes anything (`_validation` says
what a bad one does) and charged to the stream's work budget (`_limits`):
a stream over budget is read more slowly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from ecosystem.v1 import agent_pb2

from controlplane.agent._chunks import update_parts
from controlplane.agent._instances import SessionInstances
from controlplane.agent._limits import AgentLimits, TokenBucket, message_cost
from controlplane.agent._nodes import (
    TAKEN_OVER,
    SessionTakenOverError,
    node_key,
    now_ms,
    record_node,
    session_key,
)
from controlplane.agent._validation import (
    AGENT_LIMITS,
    ack_violations,
    health_violations,
    raise_if_any,
    size_violation,
    subscribe_violations,
)
from controlplane.registry import Registry
from controlplane.store import (
    Compare,
    LeaseNotFound,
    Store,
    StoreUnavailable,
)
from controlplane.validation import DEFAULT_NAMESPACE
from controlplane.view import InstanceView, Selector, Watcher
from serving.errors import (
    FieldViolation,
    InvalidArgumentError,
    ServiceError,
    UnavailableError,
)

__all__ = ["AgentSettings", "NodeSession", "SessionRunner"]

log = logging.getLogger(__name__)

# Messages queued for the writer: with update parts of up to 1 MiB, this
# bounds what a slow sidecar keeps in memory here.
_OUTGOING = 4
# Room left in a part for the message's own framing.
_PART_BYTES = AGENT_LIMITS.message_bytes - 1024
# The largest CSR signed (a P-256 one is under 1 KiB).
_MAX_CSR = 16 * 1024


@dataclass(frozen=True, slots=True)
class AgentSettings:
    replica: str
    grace: int = 15
    deregister_critical_after: int = 60
    sync_interval: int = 30
    token: str = ""
    limits: AgentLimits = field(default_factory=AgentLimits)
    #: The broker sidecars relay messages to, told in each Welcome ("": this
    #: control plane).
    bus_url: str = ""
    #: Signs workload certificates and holds the trust bundle
    #: (`controlplane.identity.IdentityAuthority`); None: no CA.
    identity: Any = None
    #: The intentions sent to sidecars (`controlplane.intentions.IntentionBook`);
    #: None: none sent.
    intentions: Any = None


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
    #: The sidecar asked for intentions in its Hello.
    wants_intentions: bool = False
    last_error: str = ""
    connected: bool = True
    subscriptions: dict[tuple[str, str], Watcher] = field(default_factory=dict)
    dirty: set[tuple[str, str]] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # The mod revision of the node record this session wrote on connect: the
    # disconnect is recorded only if no other replica has written it since.
    record_revision: int = 0
    # Set (with the error to end it with) to end the stream from this side,
    # e.g. to shed load, or because another stream took the session over.
    ending: asyncio.Event = field(default_factory=asyncio.Event)
    end_error: ServiceError | None = None
    _nonces: int = 0

    @property
    def active(self) -> bool:
        """Whether a stream carries this session and is not being ended."""
        return self.connected and not self.ending.is_set()

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

    def end(self, error: ServiceError) -> None:
        """Ends the stream with ``error``: UnavailableError when the sidecar
        should reconnect (elsewhere) and resume this session."""
        if self.active:
            self.end_error = error
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
        limits = settings.limits
        self._budget = TokenBucket(limits.rate, limits.burst)
        self._idle_timeout = limits.idle_timeout
        self._last_read = asyncio.get_running_loop().time()
        self._bundle_changed = asyncio.Event()
        self._intentions_changed = asyncio.Event()
        self.instances = SessionInstances(
            session.node, session.connected_at_ms, Registry(store), view
        )

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
                    bus=agent_pb2.BusAccess(url=self._settings.bus_url),
                )
            )
        )
        identity = self._settings.identity
        if identity is not None:
            await self._outgoing.put(
                agent_pb2.ConnectResponse(trust_bundle=identity.trust_bundle())
            )
            identity.on_bundle.append(self._bundle_changed.set)
        book = self._settings.intentions if s.wants_intentions else None
        if book is not None:
            await self._outgoing.put(agent_pb2.ConnectResponse(intentions=book.snapshot()))
            book.on_change.append(self._intentions_changed.set)
        try:
            async with asyncio.TaskGroup() as group:
                reader = group.create_task(self._read(), name=f"agent-read-{s.node.id}")
                if identity is not None:
                    group.create_task(self._send_bundles(), name=f"agent-bundle-{s.node.id}")
                if book is not None:
                    group.create_task(self._send_intentions(), name=f"agent-intentions-{s.node.id}")
                group.create_task(self._update(), name=f"agent-update-{s.node.id}")
                group.create_task(self._keep(), name=f"agent-lease-{s.node.id}")
                group.create_task(self._until_ended(), name=f"agent-end-{s.node.id}")
                group.create_task(self._watch_idle(), name=f"agent-idle-{s.node.id}")
                writer = group.create_task(self._write(), name=f"agent-write-{s.node.id}")
                # The stream ends when the sidecar stops sending; the rest follow.
                await reader
                writer.cancel()
                raise _StreamEnded
        except* _StreamEnded:
            pass
        finally:
            if identity is not None:
                with contextlib.suppress(ValueError):
                    identity.on_bundle.remove(self._bundle_changed.set)
            if book is not None:
                with contextlib.suppress(ValueError):
                    book.on_change.remove(self._intentions_changed.set)
            for sub in s.subscriptions.values():
                self._view.unsubscribe(sub)
            s.subscriptions.clear()

    # -- tasks ------------------------------------------------------------------

    async def _write(self) -> None:
        while True:
            message = await self._outgoing.get()
            await self._context.write(message)

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            request = await self._context.read()
            if request is grpc.aio.EOF:  # type: ignore[attr-defined]
                return
            self._last_read = loop.time()
            self.session.last_seen_ms = now_ms()
            kind = request.WhichOneof("message")
            size = request.ByteSize()
            raise_if_any(size_violation(kind or "", size))
            raise_if_any(_violations(request))
            delay = self._budget.take(message_cost(request, size))
            if delay > 0:
                # Over its budget: this stream is read more slowly, not ended.
                await asyncio.sleep(delay)
                self._last_read = loop.time()
            if kind == "sync":
                result = await self.instances.sync_part(request.sync, size)
                if result is None:
                    continue  # more parts follow
                await self._outgoing.put(agent_pb2.ConnectResponse(sync_result=result))
            elif kind == "health":
                await self.instances.health(request.health)
            elif kind == "subscribe":
                self._subscribe(request.subscribe)
            elif kind == "ack":
                self._ack(request.ack)
            elif kind == "ping":
                pong = agent_pb2.Pong(nonce=request.ping.nonce)
                await self._outgoing.put(agent_pb2.ConnectResponse(pong=pong))
                continue
            elif kind == "certificate_request":
                answer = self._certificate(request.certificate_request)
                await self._outgoing.put(agent_pb2.ConnectResponse(certificate=answer))
                continue
            elif kind == "hello":
                raise InvalidArgumentError([FieldViolation("hello", "sent twice in one session")])
            else:
                continue
            self._on_change()

    async def _send_bundles(self) -> None:
        """Sends the trust bundle again whenever it changes (root rotation)."""
        while True:
            await self._bundle_changed.wait()
            self._bundle_changed.clear()
            bundle = self._settings.identity.trust_bundle()
            await self._outgoing.put(agent_pb2.ConnectResponse(trust_bundle=bundle))

    async def _send_intentions(self) -> None:
        """Sends every intention again whenever one changes: the latest set,
        never a backlog (changes made while a write waits are sent once)."""
        while True:
            await self._intentions_changed.wait()
            self._intentions_changed.clear()
            snapshot = self._settings.intentions.snapshot()
            await self._outgoing.put(agent_pb2.ConnectResponse(intentions=snapshot))

    def _certificate(self, request: agent_pb2.CertificateRequest) -> agent_pb2.CertificateIssued:
        """Signs a workload CSR for an identity this session may have: its node,
        or a service it has an instance of on its node; an answer with ``error``
        otherwise."""
        answer = agent_pb2.CertificateIssued(request_id=request.request_id[:64])
        identity = self._settings.identity
        node = self.session.node.id
        if identity is None:
            answer.error = (
                "this control plane has no CA to sign workload certificates "
                "(start it with --tls-ca auto or --tls-ca/--tls-ca-key)"
            )
            return answer
        if len(request.csr_pem) > _MAX_CSR:
            answer.error = f"csr_pem: at most {_MAX_CSR} bytes"
            return answer
        from controlplane.ca import CAError, node_spiffe_id, service_spiffe_id

        namespace = request.namespace or DEFAULT_NAMESPACE
        try:
            if request.node:
                spiffe_id = node_spiffe_id(identity.trust_domain, node)
            else:
                mine = {
                    (i.namespace or DEFAULT_NAMESPACE, i.service)
                    for i in self.instances.desired.values()
                }
                if (namespace, request.service) not in mine:
                    answer.error = (
                        f"node {node} has no instance of service {request.service!r} in "
                        f"namespace {namespace!r}: a sidecar gets certificates only for "
                        "services it registers on its own node"
                    )
                    log.warning("node %s: refused a certificate: %s", node, answer.error)
                    return answer
                spiffe_id = service_spiffe_id(identity.trust_domain, namespace, request.service)
            cert_pem, expires = identity.sign(request.csr_pem, spiffe_id)
        except (CAError, ServiceError) as exc:
            answer.error = str(exc)
            return answer
        answer.cert_pem, answer.spiffe_id, answer.expires_at_ms = cert_pem, spiffe_id, expires
        log.debug("node %s: signed %s until %d", node, spiffe_id, expires)
        return answer

    async def _watch_idle(self) -> None:
        """Ends the stream once the sidecar has said nothing for the idle
        timeout: a hung sidecar must not hold its node (the SDK pings at
        least every 5 s, whatever else happens)."""
        loop = asyncio.get_running_loop()
        while True:
            silent = loop.time() - self._last_read
            if silent >= self._idle_timeout:
                log.warning(
                    "ending the stream of node %s: nothing from it for %.0fs",
                    self.session.node.id,
                    silent,
                )
                raise UnavailableError(
                    f"nothing from the sidecar for {self._idle_timeout:g}s; its stream is ended"
                )
            await asyncio.sleep(self._idle_timeout - silent + 0.01)

    async def _update(self) -> None:
        s = self.session
        while True:
            await s.wake.wait()
            s.wake.clear()
            for ref, sub in s.subscriptions.items():
                if sub.pending or sub.resync:
                    sub.discard_pending()
                    sub.resync = False
                    s.dirty.add(ref)
            if not s.dirty:
                continue
            full = s.sent_nonce == ""
            dirty, s.dirty = s.dirty, set()
            version = self._view.revision
            # The instances as of ``version``, taken now; serialized part by part.
            services = []
            for namespace, name in sorted(dirty):
                found = self._view.service(namespace, name)
                services.append(((namespace, name), found[1] if found else []))
            nonce = s.next_nonce()
            s.sent_version, s.sent_nonce = version, nonce
            self._on_change()
            for part in update_parts(version, nonce, full, services, _PART_BYTES):
                await self._outgoing.put(agent_pb2.ConnectResponse(update=part))

    async def _keep(self) -> None:
        """Holds the session lease while the stream is up; recreates the
        session key if the lease was lost anyway (e.g. a long pause). When the
        store cannot be reached for half the grace period, ends the stream so
        that the sidecar moves to a replica that can reach it. Each round also
        checks that no other stream has taken the session over."""
        s = self.session
        loop = asyncio.get_running_loop()
        renewed = loop.time()
        while True:
            # At most every 5 s, so a takeover on another replica ends this
            # stream within that, whatever the grace.
            await asyncio.sleep(max(min(s.grace / 3, 5.0), 0.2))
            try:
                await self._check_held()
                await self._store.keepalive(s.lease_id)
            except LeaseNotFound:
                log.warning("session lease of node %s was lost; renewing the session", s.node.id)
                s.lease_id = await self._store.grant(s.grace)
                await self._store.put(
                    session_key(s.node.id), s.session_id.encode(), lease=s.lease_id
                )
                if self.instances.desired:
                    await self.instances.sync(list(self.instances.desired.values()))
            except StoreUnavailable as exc:
                if loop.time() - renewed < s.grace / 2:
                    log.info("session lease of node %s not renewed: %s", s.node.id, exc)
                    continue
                raise UnavailableError(
                    "this replica cannot reach the store; reconnect to another"
                ) from exc
            renewed = loop.time()

    async def _check_held(self) -> None:
        """Ends this stream when the store says another holds its session: the
        session key names another session, or the node record was rewritten by
        a stream on another replica that resumed it."""
        s = self.session
        key, record = session_key(s.node.id), node_key(s.node.id)
        mine = await self._store.txn(
            [
                Compare(key, "value", "==", s.session_id.encode()),
                Compare(record, "mod_revision", "==", s.record_revision),
            ],
            [],
        )
        if mine.succeeded:
            return
        current = await self._store.get(key)
        if current is not None and current.value.decode() != s.session_id:
            s.end(SessionTakenOverError(f"{TAKEN_OVER}: another sidecar started a new session"))
            return
        kv = await self._store.get(record)
        status = agent_pb2.NodeStatus.FromString(kv.value) if kv is not None else None
        if (
            status is not None
            and status.connected
            and status.session_id == s.session_id
            and (status.replica, status.connected_at_ms) != (s.replica, s.connected_at_ms)
        ):
            s.end(
                SessionTakenOverError(
                    f"{TAKEN_OVER}: another stream resumed it on replica {status.replica}"
                )
            )
            return
        # Rewritten by someone else (the reaper, during a lapse of the lease):
        # this stream still holds the session, so the record says so again.
        s.record_revision = await record_node(
            self._store, s.status(len(self._view.node_instances(s.node.id)))
        )

    async def _until_ended(self) -> None:
        s = self.session
        await s.ending.wait()
        assert s.end_error is not None
        log.info("ending the stream of node %s: %s", s.node.id, s.end_error)
        raise s.end_error

    # -- messages -----------------------------------------------------------------

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


def _violations(request: agent_pb2.ConnectRequest) -> list[FieldViolation]:
    """The problems of a message that end the stream, found before it is
    charged or applied (a sync's instances are checked, and reported, one by
    one as it is applied)."""
    kind = request.WhichOneof("message")
    if kind == "health":
        return health_violations(request.health)
    if kind == "subscribe":
        return subscribe_violations(request.subscribe)
    if kind == "ack":
        return ack_violations(request.ack)
    return []


class _StreamEnded(Exception):
    pass
