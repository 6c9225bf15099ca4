"""The sidecar: one object that owns every part of a running sidecar agent.

::

    Sidecar
    ├── HealthEngine        checks of the local instances → edge-triggered reports
    ├── AgentSession (sdk)  the stream to the control plane: Sync, Subscribe, reports, Acks
    ├── RelayBroker         the bus for local apps: to NATS when the session names it,
    │                       else through the control plane
    ├── EndpointCache       last good endpoints of every upstream, persisted to data_dir
    ├── Router              one balancer per upstream, pick handles for feedback
    ├── LocalApiServer      SidecarService + grpc.health.v1 on local_api
    ├── SyncExecutor        the node's scheduled sync runs, run here (sidecar.sync.executor)
    └── AdminServer         /healthz, /metrics, /status on admin

Start order: data dir (locked, so two sidecars cannot share it), disk
cache, checks, local API and admin listeners (a port in use fails the start
before anything connects), cache persister, health engine, agent session, sync runs.
Stop runs the other way: sync runs (those in progress reported as stopped),
leave (optional), session, listeners, engine,
cache (its last write is awaited). Every task belongs to one of these
parts, and each part cancels and awaits its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import importlib.metadata
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Protocol

from sdk import (
    AgentNode,
    AgentSession,
    ChannelFactory,
    EndpointUpdate,
    HealthStatus,
    Instance,
    Liveness,
    ServiceRef,
    tls_channel_factory,
)
from sidecar.acl import Guard, TokenChecker
from sidecar.admin import AdminServer
from sidecar.cache import CACHE_FILE, CacheSource, EndpointCache, UpstreamKey
from sidecar.config import (
    INBOUND_PORT_KEY,
    AmqpBridgeConfig,
    LocalServiceConfig,
    SidecarConfig,
    UpstreamConfig,
    metadata_fits,
)
from sidecar.envoy import EnvoyProcess
from sidecar.errors import BadRequestError, StartupError, UnknownInstanceError, UnknownServiceError
from sidecar.health import CheckKind, HealthChecker, HealthEngine, HealthTransition
from sidecar.identity import SidecarIdentity
from sidecar.intentions import IntentionTable
from sidecar.listener_tls import ListenerTls
from sidecar.local_api import LocalApiServer, SidecarServicer
from sidecar.metrics import MetricsSnapshot, SidecarMetrics
from sidecar.proxy._dataplane import DataPlane
from sidecar.proxy._mtls import MeshTls
from sidecar.relay import RelayBroker
from sidecar.routing import Router, endpoints_of
from sidecar.status import status_document
from sidecar.sync.executor import SyncExecutor

__all__ = ["Sidecar"]

logger = logging.getLogger(__name__)

LOCK_FILE = "sidecar.lock"


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Bridge(Protocol):
    """A bus bridge the sidecar runs (HTTP/WebSocket, AMQP)."""

    async def stop(self) -> None: ...

    def status(self) -> dict[str, Any]: ...


class Sidecar:
    """A running sidecar agent; ``async with Sidecar(config) as sidecar: ...``.

    ``checker`` replaces the network health checker (tests pass a fake);
    ``channel_factory`` builds the channel to each control-plane address
    (by default: TLS trusting ``controlplane.ca_file`` when the config gives
    one, else plaintext).
    The constructor does no I/O; :meth:`start` binds the listeners and
    raises :class:`~sidecar.errors.StartupError` when it cannot. A stopped
    sidecar cannot be restarted.
    """

    def __init__(
        self,
        config: SidecarConfig,
        *,
        checker: HealthChecker | None = None,
        channel_factory: ChannelFactory | None = None,
    ) -> None:
        self.config = config
        self.metrics = SidecarMetrics()
        self._channel_factory = channel_factory
        self._services: dict[str, LocalServiceConfig] = {s.id: s for s in config.services}
        self.cache = EndpointCache([u.key for u in config.upstreams], config.data_dir / CACHE_FILE)
        self.router = Router(config.upstreams, config.node)
        self.engine = HealthEngine(checker, on_transition=self._on_transition)
        #: The workload certificates and trust bundle (see sidecar.identity).
        self.identity = SidecarIdentity(
            config.node.id, [(s.namespace, s.name) for s in config.services]
        )
        #: The intentions inbound listeners decide with (see sidecar.intentions).
        self.intentions = IntentionTable()
        caller = (
            (config.services[0].namespace, config.services[0].name) if config.services else None
        )
        #: ``dataplane: envoy``: the Envoy serving the proxy listeners (docs/xds.md);
        #: the Python data plane then has none of them.
        self.envoy = EnvoyProcess(config, self.identity) if config.dataplane == "envoy" else None
        self.dataplane = DataPlane(
            _without_listeners(config) if self.envoy is not None else config,
            self.router,
            MeshTls(self.identity, self.intentions, caller),
        )
        self._servicer = SidecarServicer(
            self.cache,
            self.router,
            is_stale=lambda: self.stale,
            update_ttl=self.update_ttl,
            metrics=self.metrics,
        )
        ca_file = config.controlplane.ca_file
        controlplane_channels = channel_factory or (
            tls_channel_factory(ca_file) if ca_file is not None else None
        )
        #: Runs the sync jobs the control plane schedules on this node (None: sync_jobs off).
        self.sync_runs = (
            SyncExecutor(
                config.controlplane.addresses,
                config.node.id,
                config.data_dir,
                token=config.controlplane.secret,
                channel_factory=controlplane_channels,
                registry=self.metrics.registry,
                profiles=config.sync.load_profiles,
            )
            if config.sync_jobs
            else None
        )
        self.relay = RelayBroker(
            config.controlplane.addresses,
            config.data_dir,
            channel_factory=controlplane_channels,
            token=config.controlplane.secret,
        )
        #: The listeners off loopback (local_api, admin, bridges[i]): TLS and tokens.
        self._exposed = dict(config.exposed_listeners())
        #: Resolves the tokens their clients present (None: every listener on loopback).
        self.tokens = (
            TokenChecker(config.controlplane.addresses, channel_factory=controlplane_channels)
            if self._exposed
            else None
        )
        self._guard: Guard | None = None
        #: Called with an upstream's key after its balancer was updated (a gateway's
        #: targets share the balancers: they learn which endpoints went away).
        self.on_endpoints_changed: list[Callable[[UpstreamKey], None]] = []
        namespaces = {s.name: s.namespace for s in config.services}
        self._local_api = LocalApiServer(
            self._servicer, relay=self.relay, namespace_of=lambda name: namespaces.get(name, "")
        )
        self._bridges: list[Bridge] = []  # BridgeServer, AmqpBridge: imported only when configured
        self._admin = (
            AdminServer(
                status=self.status,
                metrics=self.metrics,
                serving=lambda: self._state is _State.RUNNING,
            )
            if config.admin is not None
            else None
        )
        self._session: AgentSession | None = None
        self._lock_fd: int | None = None
        self._state = _State.NEW
        self._stopped = asyncio.Event()
        self.metrics.watch(self._metrics_snapshot)
        self.metrics.watch_proxy(lambda: self.dataplane.listeners)
        self.metrics.watch_identity(self.identity.expiries)

    # -- what others read ----------------------------------------------------------

    @property
    def session(self) -> AgentSession | None:
        """The agent session (None before start)."""
        return self._session

    @property
    def local_api_address(self) -> str:
        return self._local_api.address

    @property
    def admin_address(self) -> str:
        return self._admin.address if self._admin is not None else ""

    @property
    def bridges(self) -> tuple[Bridge, ...]:
        """The bus bridges, started (each has ``status()``)."""
        return tuple(self._bridges)

    @property
    def connected(self) -> bool:
        return self._session is not None and self._session.connected

    @property
    def stale(self) -> bool:
        """True unless connected and the endpoints come from the control plane
        (e.g. still the disk cache, or disconnected)."""
        if not self.connected:
            return True
        return bool(self.cache.keys) and self.cache.source is not CacheSource.CONTROL_PLANE

    def local_instances(self) -> list[Instance]:
        """The local instances with their current health: what a Sync sends."""
        node = self.config.node
        return [
            Instance(
                id=s.id,
                service=s.name,
                namespace=s.namespace,
                address=s.address,
                port=s.port,
                node=node.id,
                platform=node.platform,
                region=node.region,
                zone=node.zone,
                tags=s.tags,
                metadata=self._metadata(s),
                weight=s.weight,
                health=self.engine.status(s.id),
                checks=tuple(d.to_check_status() for d in self.engine.checks(s.id)),
                liveness=Liveness.EPHEMERAL,
            )
            for s in self.config.services
        ]

    def _metadata(self, service: LocalServiceConfig) -> dict[str, str]:
        port = (
            self.envoy.inbound_port(service.name)
            if self.envoy is not None
            else self.dataplane.inbound_port(service.name)
        )
        if port is None:
            return service.metadata
        return {**service.metadata, INBOUND_PORT_KEY: str(port)}

    def status(self) -> dict[str, Any]:
        """The ``/status`` document."""
        return status_document(self)

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self._state is not _State.NEW:
            raise RuntimeError("a sidecar can be started once")
        self._state = _State.RUNNING
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        config = self.config
        self._lock_data_dir()
        self.cache.load()
        for key in self.cache.keys:
            state = self.cache.get(key)
            if state is not None and state.instances:
                try:
                    self.router.update(key, state.instances)
                except ValueError as exc:
                    logger.warning("cached endpoints of %s ignored: %s", key[1], exc)
        for service in config.services:
            for check in service.checks:
                self.engine.add(service.id, check)
        if self.tokens is not None:
            tls = ListenerTls.load(config.tls) if config.tls is not None else None
            self._guard = Guard(tls, self.tokens)
        await self.relay.start()
        await self._local_api.start(config.local_api, guard=self._guard_of("local_api"))
        for i, bridge in enumerate(config.bridges):
            if isinstance(bridge, AmqpBridgeConfig):
                from sidecar.bridges.amqp.bridge import AmqpBridge  # aio-pika only when configured

                amqp = AmqpBridge(self.relay, bridge)
                self._bridges.append(amqp)
                await amqp.start()  # connects in the background, retrying
                continue
            from sidecar.bridges.web import BridgeServer  # aiohttp only when a bridge is configured

            server = BridgeServer.from_config(
                self.relay, bridge, guard=self._guard_of(f"bridges[{i}]")
            )
            self._bridges.append(server)
            try:
                await server.start()
            except OSError as exc:
                raise StartupError(
                    f"bridge: cannot listen on {bridge.listen}: {exc.strerror or exc}"
                ) from None
        if self._admin is not None and config.admin is not None:
            await self._admin.start(config.admin, guard=self._guard_of("admin"))
        await self.dataplane.start()
        if self.envoy is not None:
            await self.envoy.start()
        await self.cache.start()
        await self.engine.start()
        node = config.node
        self._session = AgentSession(
            config.controlplane.addresses,
            AgentNode(
                id=node.id,
                platform=node.platform,
                region=node.region,
                zone=node.zone,
                address=self._local_api.address,
                metadata=_node_metadata(node.metadata),
            ),
            instances=self.local_instances,
            on_update=self._apply_update,
            subscriptions=self._subscriptions(),
            token=config.controlplane.secret,
            grace=config.grace,
            deregister_critical_after=config.deregister_critical_after,
            sync_interval=config.sync_interval,
            applied_version=self.cache.version,
            on_state=self._on_session_state,
            on_trust_bundle=self.identity.on_trust_bundle,
            on_intentions=self.intentions.on_intentions,
            ca_file=config.controlplane.ca_file if self._channel_factory is None else None,
            channel_factory=self._channel_factory,
        )
        self.identity.attach(self._session)
        self.identity.start()
        await self._session.start()
        if self.sync_runs is not None:
            self.sync_runs.start()
        logger.info(
            "sidecar %s running: %d local instance(s), %d upstream(s), local API %s, admin %s",
            node.id,
            len(config.services),
            len(config.upstreams),
            self._local_api.address,
            self.admin_address or "off",
        )

    def _subscriptions(self) -> list[ServiceRef]:
        return [ServiceRef(service, namespace) for namespace, service in self.router.keys]

    def add_upstreams(self, upstreams: Sequence[UpstreamConfig]) -> list[UpstreamKey]:
        """Follows more services than the configuration named (a gateway whose
        routes changed): their balancers, a place in the endpoint cache, and a
        subscription on the session. Returns the keys that were new."""
        added = [u.key for u in upstreams if self.router.add(u)]
        for key in added:
            self.cache.add(key)
        if added and self._session is not None:
            self._session.set_subscriptions(self._subscriptions())
        return added

    def _guard_of(self, listener: str) -> Guard | None:
        """The guard of ``listener`` (a key of the configuration) when it is off loopback."""
        return self._guard if listener in self._exposed else None

    async def stop(self) -> None:
        """Leaves (if configured), then stops every part; idempotent."""
        if self._state in (_State.STOPPING, _State.STOPPED):
            await self._stopped.wait()
            return
        self._state = _State.STOPPING
        try:
            if self.sync_runs is not None:
                await self.sync_runs.close()
            session = self._session
            if session is not None:
                leave = self.config.leave_on_shutdown and session.connected
                if leave and await session.leave(timeout=1.0):
                    logger.info("deregistered %d local instance(s)", len(self._services))
                await session.close()
            await self.identity.close()
            await self.dataplane.drain(self.config.drain_grace)
            if self.envoy is not None:
                await self.envoy.stop()
            for bridge in self._bridges:
                await bridge.stop()
            await self._local_api.stop(grace=1.0)
            await self.relay.close()
            if self._admin is not None:
                await self._admin.stop()
            if self.tokens is not None:
                await self.tokens.close()
            await self.engine.close()
            await self.cache.close()
        finally:
            self._unlock_data_dir()
            self._state = _State.STOPPED
            self._stopped.set()
            logger.info("sidecar %s stopped", self.config.node.id)

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def __aenter__(self) -> Sidecar:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- the local API's TTL call ---------------------------------------------------------

    def update_ttl(
        self, service: str, instance_id: str, check: str, status: HealthStatus, note: str
    ) -> None:
        """Sets a TTL check of a local instance.

        ``instance_id`` may be empty when the service has one local
        instance, ``check`` when that instance has one TTL check.
        """
        candidates = [s for s in self.config.services if s.name == service]
        if not candidates:
            names = sorted({s.name for s in self.config.services})
            raise UnknownServiceError(service, "", names, "a local service")
        if instance_id:
            matching = [s for s in candidates if s.id == instance_id]
            if not matching:
                raise UnknownInstanceError(service, instance_id, [s.id for s in candidates])
            local = matching[0]
        elif len(candidates) == 1:
            local = candidates[0]
        else:
            ids = ", ".join(s.id for s in candidates)
            raise BadRequestError.one(
                "instance_id", f"service {service!r} has {len(candidates)} local instances: {ids}"
            )
        if not check:
            ttls = [c.name for c in local.checks if c.kind is CheckKind.TTL]
            if len(ttls) != 1:
                raise BadRequestError.one(
                    "check",
                    f"required: instance {local.id!r} has {len(ttls)} TTL checks "
                    f"({', '.join(ttls) or 'none'})",
                )
            check = ttls[0]
        self.engine.update_ttl(f"{local.id}:{check}", status, note)

    # -- callbacks -------------------------------------------------------------------------

    def _apply_update(self, update: EndpointUpdate) -> None:
        """Checks an update whole, then commits it (raising leaves everything as it was)."""
        changes = self.cache.prepare(update)
        endpoints = {key: endpoints_of(instances) for key, instances in changes.items()}
        self.cache.commit(changes, update.version)
        for key, instances in changes.items():
            self.router.update(key, instances, endpoints[key])
            self.dataplane.endpoints_changed(key)
            for changed in self.on_endpoints_changed:
                changed(key)

    def _on_session_state(self, session: AgentSession) -> None:
        self.cache.notify_all()
        self.identity.on_session_state(session)
        bus = session.bus
        if session.connected and bus is not None:
            # The control plane says where messages go: NATS itself, or through it.
            self.relay.use_broker(bus.url)

    def _on_transition(self, transition: HealthTransition) -> None:
        self.metrics.health_transitions.labels(transition.new.value).inc()
        service = self._services.get(transition.instance_id)
        if service is None or self._session is None:
            return
        self._session.report_health(
            service=service.name,
            namespace=service.namespace,
            instance_id=service.id,
            health=transition.instance_status,
            checks=[d.to_check_status() for d in self.engine.checks(service.id)],
        )

    def _metrics_snapshot(self) -> MetricsSnapshot:
        status = self._session.status() if self._session is not None else None
        endpoints = {}
        for key in self.cache.keys:
            state = self.cache.get(key)
            endpoints[key] = len(state.instances) if state is not None else 0
        health = Counter(self.engine.status(s.id).value for s in self.config.services)
        return MetricsSnapshot(
            connected=self.connected,
            stale=self.stale,
            applied_version=self.cache.version,
            connects=status.connects if status else 0,
            updates_applied=status.updates_applied if status else 0,
            updates_rejected=status.updates_rejected if status else 0,
            reports_dropped=status.reports_dropped if status else 0,
            endpoints=endpoints,
            local_health=dict(health),
            watch_streams=self._servicer.watch_streams,
            outstanding_picks=self.router.outstanding,
        )

    # -- the data directory ------------------------------------------------------------------

    def _lock_data_dir(self) -> None:
        data_dir = self.config.data_dir
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StartupError(f"data_dir: cannot use {data_dir}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StartupError(
                f"data_dir: {data_dir} is in use by another sidecar (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _unlock_data_dir(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _without_listeners(config: SidecarConfig) -> SidecarConfig:
    """``config`` without the proxy listeners Envoy serves (the upstreams stay:
    the local API resolves them)."""
    upstreams = tuple(u.model_copy(update={"listen": None}) for u in config.upstreams)
    return config.model_copy(update={"upstreams": upstreams, "inbound": ()})


def _node_metadata(configured: dict[str, str]) -> dict[str, str]:
    """The node metadata a Hello carries: the configured entries, and the
    sidecar's version when they leave room for it (a Hello over the control
    plane's limits would be refused, and the sidecar never connect)."""
    merged = {"version": _version(), **configured}
    return merged if metadata_fits(merged) else dict(configured)


def _version() -> str:
    try:
        return importlib.metadata.version("ecosystem")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
