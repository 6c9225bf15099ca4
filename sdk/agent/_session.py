"""The sidecar's session with the control plane: one bidirectional Agent stream.

:class:`AgentSession` owns the stream and everything that keeps it alive::

    session (task) ── connect to addresses[i] ── Hello → Welcome
        ├── reader: EndpointUpdate → on_update() → Ack / NACK; SyncResult
        ├── writer: the outbox, in priority order (Sync, Subscribe, Acks, HealthReports)
        └── timer:  a full Sync every sync interval, ±20% jitter (anti-entropy)
    any failure → jittered exponential backoff (full jitter, capped) → next address
    shed by a busy replica (UNAVAILABLE "shedding load…") → a short jitter → another
    address, picked at random among the others
    refused because another sidecar holds the node (ALREADY_EXISTS), or ended
    because another stream took the session over (ABORTED "session taken over…")
    → logged as an error, shown in status().last_error, retried at the maximum
    backoff with a new session

The caller's state is the source of truth and is re-sent after every
(re)connect: the complete set of local instances (read from the
``instances`` callable each time a Sync is written, so it always carries
current health) and the subscriptions. A session id from the last Welcome
is offered on reconnect so the control plane can resume the session within
its grace period; a control plane that no longer knows it starts a new one.

The outbox is bounded and coalescing rather than a FIFO of everything: a
pending Sync or Subscribe is a flag (the message is built when written, from
the latest state), acks keep only the newest ones, and when health reports
pile up past the bound they are dropped in favour of one full Sync, which
carries every instance's current health anyway. No lock is held across an
await; every task is owned by the session and awaited by :meth:`close`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

from ecosystem.v1 import agent_pb2, agent_pb2_grpc

from sdk._errors import (
    AlreadyExistsError,
    ClientClosedError,
    EcoError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RevisionMismatchError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    translated,
)
from sdk._retry import Backoff
from sdk._transport import CaFile, ChannelFactory, Sleep, Transport, resolve_servers
from sdk._types import CheckStatus, HealthStatus, Instance
from sdk.agent._chunks import UpdateAssembler
from sdk.agent._identity import TrustBundle, WorkloadCertificate
from sdk.agent._intentions import IntentionSet
from sdk.agent._outbox import AgentOutbox
from sdk.agent._stream import (
    EOF,
    AgentStream,
    StreamEnded,
    agent_channel,
    agent_tls_channels,
    describe,
)
from sdk.agent._types import (
    AgentNode,
    AgentState,
    AgentStatus,
    BusAccess,
    EndpointUpdate,
    ServiceRef,
    SyncOutcome,
    check_update,
)

__all__ = ["AgentSession"]

logger = logging.getLogger(__name__)

# Errors a retry will not fix until an operator acts: back off at the maximum.
_PERMANENT = (UnauthenticatedError, PermissionDeniedError, InvalidArgumentError, UnimplementedError)
# How the control plane's message starts when it ends a stream to spread load,
# and when it ends one because another stream took its session over.
_SHED = "shedding load"
_TAKEN_OVER = "session taken over"
# The longest NACK reason sent (the control plane refuses longer ones).
_MAX_ACK_ERROR = 1024


#: Called with each update, synchronously; raising rejects (NACKs) it.
UpdateCallback = Callable[[EndpointUpdate], None]
#: Called after every state change of the session.
StateCallback = Callable[["AgentSession"], None]


class AgentSession:
    """A sidecar's Agent stream to the control plane, kept alive until closed.

    ``servers`` are the control-plane addresses (tried in turn after any
    disconnect). ``instances`` returns the complete set of local instances
    with current health; it is called each time a Sync is written.
    ``on_update`` receives each :class:`EndpointUpdate` after
    :func:`check_update` accepted it, and applies it; if it raises, the
    update is NACKed with the exception's message and the caller must have
    kept its previous state. Both callbacks run on the event loop and must
    not block.

    ``grace`` and ``deregister_critical_after`` (seconds, sent as whole
    seconds) tell the control plane how long to hold this node's instances
    after a disconnect. Full syncs repeat every ``sync_interval`` seconds, or
    the control plane's interval when that is shorter, ±20%. Reconnects wait
    a random delay up to ``min(max_backoff, initial_backoff * 2**failures)``.
    ``ca_file`` (PEM CA certificates) makes the stream TLS, trusting only a
    control plane whose certificate that CA signed; ``ECO_CA_FILE`` is not
    read here (the caller's configuration decides).
    ``on_trust_bundle`` receives the CA's roots after each Welcome and when
    they change; ``on_intentions``, when given, asks the control plane for
    every intention and receives the whole :class:`IntentionSet` after each
    Welcome and whenever one changes.

    Use as an async context manager, or :meth:`start` and :meth:`close`; a
    closed session cannot be restarted.
    """

    def __init__(
        self,
        servers: str | Sequence[str] | None,
        node: AgentNode,
        *,
        instances: Callable[[], Sequence[Instance]],
        on_update: UpdateCallback,
        subscriptions: Sequence[ServiceRef] = (),
        token: str = "",
        grace: float = 15.0,
        deregister_critical_after: float = 60.0,
        sync_interval: float = 30.0,
        applied_version: int = 0,
        on_state: StateCallback | None = None,
        on_trust_bundle: Callable[[TrustBundle], None] | None = None,
        on_intentions: Callable[[IntentionSet], None] | None = None,
        ca_file: CaFile | None = None,
        channel_factory: ChannelFactory | None = None,
        initial_backoff: float = 0.1,
        max_backoff: float = 5.0,
        handshake_timeout: float = 10.0,
        max_pending_reports: int = 1024,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if grace <= 0 or deregister_critical_after <= 0 or sync_interval <= 0:
            raise ValueError("grace, deregister_critical_after and sync_interval must be > 0")
        if ca_file and channel_factory is not None:
            raise ValueError("give either ca_file or channel_factory, not both")
        if handshake_timeout <= 0 or max_pending_reports < 1:
            raise ValueError("handshake_timeout must be > 0 and max_pending_reports >= 1")
        self._transport = Transport(
            resolve_servers(servers),
            timeout=handshake_timeout,
            channel_factory=channel_factory
            or (agent_tls_channels(ca_file) if ca_file else agent_channel),
        )
        self._node = node
        self._instances = instances
        self._on_update = on_update
        self._on_state = on_state
        self._on_trust_bundle = on_trust_bundle
        self._trust_bundle: TrustBundle | None = None
        self._on_intentions = on_intentions
        self._certificate_requests: dict[str, asyncio.Future[WorkloadCertificate]] = {}
        self._request_ids = 0
        self._subscriptions = tuple(subscriptions)
        self._token = token
        # The wire carries whole seconds: round up, so the hold is never shorter.
        self._grace = max(1, math.ceil(grace))
        self._deregister_after = max(1, math.ceil(deregister_critical_after))
        self._sync_interval = sync_interval
        self._backoff = Backoff(initial_backoff, max_backoff)
        self._max_backoff = max_backoff
        self._handshake_timeout = handshake_timeout
        self._rng = rng or random.Random()
        self._sleep = sleep

        self._state = AgentState.NEW
        self._task: asyncio.Task[None] | None = None
        self._address = ""
        self._replica = ""
        self._session_id = ""
        self._resumed = False
        self._server_grace = 0
        self._server_sync_interval = 0
        self._bus: BusAccess | None = None
        self._applied_version = applied_version
        self._last_error = ""
        self._last_sync: SyncOutcome | None = None
        self._connected_at = 0.0
        self._connected_event = asyncio.Event()

        self._outbox = AgentOutbox(max_pending_reports)
        self._assembler = UpdateAssembler()
        self._leaving = False
        self._syncs_written = 0
        self._sync_results = 0
        self._sync_answered = asyncio.Event()

        self._connects = 0
        self._updates_applied = 0
        self._updates_rejected = 0

    # -- state --------------------------------------------------------------------

    @property
    def state(self) -> AgentState:
        return self._state

    @property
    def connected(self) -> bool:
        """True between a Welcome and the end of that stream."""
        return self._state is AgentState.CONNECTED

    @property
    def session_id(self) -> str:
        """The session id of the last Welcome, offered again on reconnect."""
        return self._session_id

    @property
    def bus(self) -> BusAccess | None:
        """How the last Welcome said to reach the message bus (None before the
        first Welcome); see :class:`BusAccess`."""
        return self._bus

    @property
    def trust_bundle(self) -> TrustBundle | None:
        """The roots the control plane last sent (None: none yet, or it has no CA)."""
        return self._trust_bundle

    async def request_certificate(
        self,
        csr_pem: bytes,
        *,
        service: str = "",
        namespace: str = "",
        node: bool = False,
        timeout: float = 10.0,
    ) -> WorkloadCertificate:
        """Sends a CSR (PEM) for a service this node registers (or, with
        ``node``, for the node itself) and returns the signed certificate.

        Raises PermissionDeniedError when the control plane refuses (the reason
        in the message), UnavailableError when not connected or the stream
        ends first, TimeoutError after ``timeout`` seconds.
        """
        if not self.connected:
            raise UnavailableError("the agent session is not connected")
        self._request_ids += 1
        request_id = f"cert-{self._request_ids}"
        future: asyncio.Future[WorkloadCertificate] = asyncio.get_running_loop().create_future()
        self._certificate_requests[request_id] = future
        self._outbox.certificate(
            agent_pb2.CertificateRequest(
                request_id=request_id,
                csr_pem=csr_pem,
                namespace=namespace,
                service=service,
                node=node,
            )
        )
        try:
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._certificate_requests.pop(request_id, None)

    def _handle_identity(self, message: agent_pb2.ConnectResponse) -> None:
        kind = message.WhichOneof("message")
        if kind == "intentions":
            if self._on_intentions is not None:
                try:
                    self._on_intentions(IntentionSet.from_proto(message.intentions))
                except Exception:
                    logger.exception("intentions callback failed")
            return
        if kind == "trust_bundle":
            self._trust_bundle = TrustBundle.from_proto(message.trust_bundle)
            if self._on_trust_bundle is not None:
                try:
                    self._on_trust_bundle(self._trust_bundle)
                except Exception:
                    logger.exception("trust bundle callback failed")
            return
        answer = message.certificate
        future = self._certificate_requests.get(answer.request_id)
        if future is None or future.done():
            return
        if answer.error:
            future.set_exception(PermissionDeniedError(answer.error, code="PERMISSION_DENIED"))
        else:
            future.set_result(WorkloadCertificate.from_proto(answer))

    def _fail_certificate_requests(self, reason: str) -> None:
        for future in self._certificate_requests.values():
            if not future.done():
                future.set_exception(UnavailableError(f"the agent stream ended: {reason}"))

    @property
    def applied_version(self) -> int:
        """The version of the last update applied (or the one given at start)."""
        return self._applied_version

    @property
    def sync_interval(self) -> float:
        """Seconds between full syncs (before jitter): ours, or the control
        plane's when that is shorter."""
        if self._server_sync_interval > 0:
            return min(self._sync_interval, float(self._server_sync_interval))
        return self._sync_interval

    def status(self) -> AgentStatus:
        """A snapshot of the session, for status pages and metrics."""
        return AgentStatus(
            state=self._state,
            addresses=self._transport.addresses,
            address=self._address,
            replica=self._replica,
            session_id=self._session_id,
            resumed=self._resumed,
            applied_version=self._applied_version,
            last_error=self._last_error,
            last_sync=self._last_sync,
            connected_since=self._connected_at if self.connected else None,
            grace=self._server_grace or self._grace,
            sync_interval=self.sync_interval,
            subscriptions=self._subscriptions,
            connects=self._connects,
            updates_applied=self._updates_applied,
            updates_rejected=self._updates_rejected,
            reports_dropped=self._outbox.reports_dropped,
        )

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Starts connecting in the background; returns at once."""
        if self._state is AgentState.CLOSED:
            raise ClientClosedError("the agent session is closed; create a new one")
        if self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"eco-agent-session-{self._node.id}"
        )

    async def close(self) -> None:
        """Ends the stream and stops reconnecting; idempotent."""
        if self._state is AgentState.CLOSED:
            return
        self._set_state(AgentState.CLOSED)
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            # wait() does not re-raise the cancellation we caused.
            await asyncio.wait([task])
        await self._transport.close()
        logger.info("agent session of node %s closed", self._node.id)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def wait_connected(self) -> None:
        """Returns once the session is connected (at once if it is)."""
        while not self.connected:
            if self._state is AgentState.CLOSED:
                raise ClientClosedError("the agent session is closed")
            await self._connected_event.wait()

    async def leave(self, timeout: float = 1.0) -> bool:
        """Tells the control plane this node has no instances any more (a Sync
        with none), and waits up to ``timeout`` seconds for its answer.

        For a graceful shutdown; returns whether it was acknowledged. Later
        syncs stay empty: call :meth:`close` next.
        """
        self._leaving = True
        if not self.connected:
            return False
        target = self._syncs_written + 1
        self.request_sync()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._sync_answered.clear()
                    if self._sync_results >= target:
                        break
                    await self._sync_answered.wait()
        except TimeoutError:
            return False
        return True

    # -- what the caller sends -------------------------------------------------------

    def request_sync(self) -> None:
        """Sends the complete set of local instances soon (e.g. after it changed)."""
        self._outbox.sync()

    def set_subscriptions(self, services: Sequence[ServiceRef]) -> None:
        """Replaces the services whose endpoints this node receives."""
        self._subscriptions = tuple(services)
        self._outbox.subscribe()

    def report_health(
        self,
        *,
        service: str,
        namespace: str,
        instance_id: str,
        health: HealthStatus,
        checks: Sequence[CheckStatus] = (),
    ) -> None:
        """Queues an edge-triggered health transition of one local instance.

        Dropped while disconnected (the Sync after reconnecting carries
        current health); when too many are pending, all of them are replaced
        by one full Sync.
        """
        if not self.connected:
            return
        self._outbox.report(
            agent_pb2.HealthReport(
                service=service,
                namespace=namespace,
                instance_id=instance_id,
                health=health.to_proto(),
                checks=[c.to_proto() for c in checks],
            )
        )

    # -- the session ----------------------------------------------------------------

    def _set_state(self, state: AgentState) -> None:
        if self._state is state or self._state is AgentState.CLOSED:
            return
        self._state = state
        if state is AgentState.CONNECTED:
            self._connected_event.set()
        else:
            self._connected_event.clear()
        if state is AgentState.CLOSED:
            self._connected_event.set()  # wake waiters so they see CLOSED
        if self._on_state is not None:
            try:
                self._on_state(self)
            except Exception:
                logger.exception("agent session state callback failed")

    async def _run(self) -> None:
        addresses = self._transport.addresses
        index = 0
        while True:
            self._address = addresses[index]
            self._set_state(AgentState.CONNECTING)
            welcomed = False
            try:
                welcomed = await self._connect(index)
                reason = "the control plane ended the stream"
                error: Exception | None = None
            except (EcoError, StreamEnded, TimeoutError) as exc:
                error = exc
                reason = _reason(exc)
                welcomed = self.connected
            except Exception as exc:  # a bug (ours or a callback's) must not end the session
                logger.exception("agent stream to %s failed", addresses[index])
                error = exc
                reason = f"internal error: {exc!r}"
                welcomed = self.connected
            self._set_state(AgentState.DISCONNECTED)
            self._last_error = reason
            self._fail_certificate_requests(reason)
            # A stream that failed right after its Welcome does not count as a
            # success: the backoff grows, so a failure that repeats on every
            # stream cannot make a reconnect loop.
            if welcomed and time.time() - self._connected_at >= self._max_backoff:
                self._backoff.reset()
            if (
                isinstance(error, NotFoundError | FailedPreconditionError)
                and self._session_id
                and not welcomed
            ):
                logger.info(
                    "control plane %s does not know session %s (%s); starting a new one",
                    addresses[index],
                    self._session_id,
                    reason,
                )
                self._session_id = ""
                continue
            if _was_taken_over(error):
                # Taking it back would end the other stream in turn: wait until
                # the node is free, as a new session.
                self._last_error = f"another sidecar took over this node's session: {reason}"
                delay = self._max_backoff * (0.5 + self._rng.random() / 2)
                logger.error(
                    "node %s: another sidecar took over session %s (%s); trying again as a "
                    "new session in %.1fs",
                    self._node.id,
                    self._session_id,
                    reason,
                    delay,
                )
                self._session_id = ""
            elif isinstance(error, (*_PERMANENT, AlreadyExistsError)):
                delay = self._max_backoff * (0.5 + self._rng.random() / 2)
                logger.error(
                    "control plane %s refused node %s: %s; retrying in %.1fs",
                    addresses[index],
                    self._node.id,
                    reason,
                    delay,
                )
            else:
                delay = self._backoff.next_delay()
                log = logger.warning if welcomed and not _was_shed(error) else logger.info
                log(
                    "agent stream to %s ended (%s); reconnecting in %.2fs",
                    addresses[index],
                    reason,
                    delay,
                )
            if _was_shed(error) and len(addresses) > 1:
                # That replica holds more than its share: any other one will do,
                # and a random pick spreads the shed sidecars over all of them.
                index = self._rng.choice([i for i in range(len(addresses)) if i != index])
            else:
                index = (index + 1) % len(addresses)
            await self._sleep(delay)

    async def _connect(self, index: int) -> bool:
        """One stream to one address; returns (or raises) when it ends."""
        address = self._transport.addresses[index]
        stub = agent_pb2_grpc.AgentServiceStub(self._transport.channel(index))  # type: ignore[no-untyped-call]
        call = stub.Connect()
        try:
            with translated(address):
                async with asyncio.timeout(self._handshake_timeout):
                    await call.write(self._hello())
                    first = await call.read()
            if first is EOF or first.WhichOneof("message") != "welcome":
                raise StreamEnded(f"expected Welcome first, got {describe(first)}")
            self._welcome(first.welcome, address)
            stream = AgentStream(
                call,
                address,
                self._outbox,
                on_update=self._handle_update,
                on_sync_result=self._handle_sync_result,
                on_sync_written=self._count_sync,
                build_sync=self._build_sync,
                build_subscribe=self._build_subscribe,
                on_identity=self._handle_identity,
                sync_interval=lambda: self.sync_interval,
                rng=self._rng,
                sleep=self._sleep,
                # Pinged after a quarter of the grace in silence, left after
                # three quarters: before the session's instances turn critical.
                liveness=min(5.0, max(0.5, (self._server_grace or self._grace) / 4)),
            )
            await stream.run()
            return True
        finally:
            call.cancel()

    def _hello(self) -> agent_pb2.ConnectRequest:
        return agent_pb2.ConnectRequest(
            hello=agent_pb2.Hello(
                node=self._node.to_proto(),
                token=self._token,
                session_id=self._session_id,
                applied_version=self._applied_version,
                grace_seconds=self._grace,
                deregister_critical_after_seconds=self._deregister_after,
                wants_intentions=self._on_intentions is not None,
            )
        )

    def _welcome(self, welcome: agent_pb2.Welcome, address: str) -> None:
        previous = self._session_id
        self._session_id = str(welcome.session_id)
        self._replica = str(welcome.replica)
        self._resumed = bool(welcome.resumed)
        self._server_grace = int(welcome.grace_seconds)
        self._server_sync_interval = int(welcome.sync_interval_seconds)
        self._bus = BusAccess.from_proto(welcome.bus)
        self._connected_at = time.time()
        self._connects += 1
        self._last_error = ""
        # Syncs of the last stream will not be answered; state is re-sent whole.
        self._sync_results = self._syncs_written
        self._outbox.reset()
        self._assembler.reset()
        self._set_state(AgentState.CONNECTED)
        logger.info(
            "agent session %s %s on %s (replica %s%s)",
            self._session_id,
            "resumed" if self._resumed else "started",
            address,
            self._replica or "?",
            f"; previous session {previous} not resumed"
            if previous and not self._resumed and previous != self._session_id
            else "",
        )

    def _handle_update(self, part: agent_pb2.EndpointUpdate) -> None:
        ack = agent_pb2.Ack(version=part.version, nonce=part.nonce)
        try:
            message = self._assembler.add(part)
            if message is None:
                return  # more parts follow; the update is acknowledged whole
            update = EndpointUpdate.from_proto(message)
            check_update(update)
            self._on_update(update)
        except Exception as exc:
            self._updates_rejected += 1
            ack.rejected = True
            ack.error = (str(exc) or type(exc).__name__)[:_MAX_ACK_ERROR]
            logger.warning(
                "rejected endpoint update version %d (nonce %s): %s",
                part.version,
                part.nonce,
                ack.error,
            )
        else:
            self._updates_applied += 1
            self._applied_version = update.version
            logger.debug(
                "applied endpoint update version %d (%d services%s)",
                update.version,
                len(update.services),
                ", full" if update.full else "",
            )
        self._outbox.ack(ack)

    def _handle_sync_result(self, message: agent_pb2.SyncResult) -> None:
        outcome = SyncOutcome.from_proto(message)
        self._last_sync = outcome
        self._sync_results += 1
        self._sync_answered.set()
        for error in outcome.errors:
            logger.warning("control plane rejected a local instance: %s", error)
        if outcome.created or outcome.updated or outcome.removed:
            logger.info(
                "sync at revision %d: %d created, %d updated, %d removed",
                outcome.revision,
                outcome.created,
                outcome.updated,
                outcome.removed,
            )

    def _count_sync(self) -> None:
        self._syncs_written += 1

    def _build_sync(self) -> agent_pb2.SyncInstances:
        instances = [] if self._leaving else list(self._instances())
        return agent_pb2.SyncInstances(instances=[i.to_proto() for i in instances])

    def _build_subscribe(self) -> agent_pb2.Subscribe:
        return agent_pb2.Subscribe(services=[s.to_proto() for s in self._subscriptions])


def _was_taken_over(error: BaseException | None) -> bool:
    """Whether the control plane ended the stream because another stream took
    its session over (the node is then held by another sidecar)."""
    return isinstance(error, RevisionMismatchError) and error.message.startswith(_TAKEN_OVER)


def _was_shed(error: BaseException | None) -> bool:
    """Whether a replica ended the stream to spread load (it asks to go elsewhere)."""
    return isinstance(error, UnavailableError) and error.message.startswith(_SHED)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, EcoError):
        return f"{exc.code}: {exc.message}" if exc.message else exc.code
    if isinstance(exc, TimeoutError):
        return "no Welcome within the handshake timeout"
    return str(exc)
