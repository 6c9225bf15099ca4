"""One control-plane process: store, view, gRPC server, admin HTTP, and shutdown.

Several processes (replicas) may share one store: each serves the same state
from its own view; the work that must run once (the session reaper) runs on the
replica elected leader (`controlplane.leader`); each publishes how many sidecar
streams it holds and sheds some when it holds far more than its share
(`controlplane.agent.LoadSpreader`). Health follows the store: NOT_SERVING while
the view hears nothing from it, SERVING again when it answers.

Shutdown is "stop admitting, drain within a grace period, then cancel":
health turns NOT_SERVING, leadership is handed over, new registry calls get
UNAVAILABLE, watch streams end with UNAVAILABLE so their clients resume
elsewhere, in-flight calls get ``grace`` seconds, then everything is cancelled
and the store closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import ssl
import sys
from datetime import timedelta
from enum import Enum
from pathlib import Path
from types import TracebackType

import grpc
from aiohttp import web
from ecosystem.v1 import (
    acl_pb2,
    acl_pb2_grpc,
    agent_pb2,
    agent_pb2_grpc,
    ca_pb2,
    ca_pb2_grpc,
    catalog_pb2_grpc,
    intention_pb2,
    intention_pb2_grpc,
    platform_pb2_grpc,
    sync_pb2_grpc,
)
from ecosystem.v1 import registry_pb2 as pb
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from bus import Broker, BusError, open_broker
from bus.servicer import MESSAGING_SERVICE, MessagingServicer, add_messaging
from controlplane.acl import AclInterceptor, AclServicer, AclStore, AuditLog, Authorizer, Need
from controlplane.admin import admin_runner
from controlplane.agent import AgentLimits, AgentServicer, AgentSettings, LoadSpreader, Reaper
from controlplane.catalog import (
    CATALOG_SERVICE,
    PLATFORM_SERVICE,
    CatalogServicer,
    PlatformServicer,
)
from controlplane.config import ControlPlaneConfig, is_loopback, parse_hostport
from controlplane.events import EventPublisher
from controlplane.identity import CAServicer, IdentityAuthority, load_or_create_roots
from controlplane.intentions import IntentionBook, IntentionServicer
from controlplane.leader import Election
from controlplane.metrics import Metrics
from controlplane.registry import Registry, ensure_store_id
from controlplane.routes import ROUTE_SERVICE, RouteBook, RouteServicer, route_handler
from controlplane.servicer import RegistryServicer, handler
from controlplane.store import Store, open_store
from controlplane.sync import (
    RUNS_PREFIX,
    SYNC_EVENTS_REVISION_KEY,
    SYNC_SERVICE,
    SchedulerConfig,
    SyncBook,
    SyncCollector,
    SyncScheduler,
    SyncServicer,
    build_run_message,
)
from controlplane.tls import ServerCertificates, ServerTLS, TLSSetupError, load_server_tls
from controlplane.view import InstanceView, ViewConfig
from controlplane.xds import (
    ADS_SERVICE,
    CSDS_SERVICE,
    AdsServicer,
    EnvoyMesh,
    NodeBook,
    XdsCache,
    add_ads,
    add_csds,
)
from serving.process import tune_gc
from serving.rpc_guard import MalformedRequestGuard

__all__ = ["ControlPlane", "StartupError", "run"]

log = logging.getLogger(__name__)

REGISTRY_SERVICE = pb.DESCRIPTOR.services_by_name["RegistryService"].full_name
AGENT_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
CA_SERVICE = ca_pb2.DESCRIPTOR.services_by_name["CAService"].full_name
ACL_SERVICE = acl_pb2.DESCRIPTOR.services_by_name["AclService"].full_name
INTENTION_SERVICE = intention_pb2.DESCRIPTOR.services_by_name["IntentionService"].full_name
_HEALTH_SERVICES = ("", REGISTRY_SERVICE, AGENT_SERVICE, MESSAGING_SERVICE)
# How often health is compared with the store's reachability.
_HEALTH_INTERVAL = 0.25
_SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.so_reuseport", 0),
]


def bus_dir(store_url: str, replica: str) -> Path | None:
    """Where the embedded broker keeps durable streams: next to a SQLite store,
    nowhere (memory) for ``memory://``, and ``.eco/bus/<replica>`` for a replica
    on etcd (each replica's embedded bus is its own: use NATS to share one)."""
    scheme, _, rest = store_url.partition("://")
    if scheme == "memory":
        return None
    if scheme == "sqlite":
        return Path(rest).parent / "bus"
    return Path(".eco") / "bus" / re.sub(r"[^A-Za-z0-9._-]", "_", replica or "default")


class StartupError(Exception):
    """The control plane could not start (address in use, bad store …)."""


class _State(Enum):
    NEW = "new"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"


class ControlPlane:
    """A running control plane; use as ``async with ControlPlane(config) as cp``.

    ``store``, when given, is used instead of opening ``config.store_url``, and is
    left open on stop: several control planes in one process can share it, as
    replicas share an etcd cluster (tests do this).
    """

    def __init__(
        self, config: ControlPlaneConfig | None = None, *, store: Store | None = None
    ) -> None:
        self.config = config or ControlPlaneConfig()
        self._state = _State.NEW
        self._store: Store | None = store
        self._owns_store = store is None
        self._view: InstanceView | None = None
        self._server: grpc.aio.Server | None = None
        self._servicer: RegistryServicer | None = None
        self.agent: AgentServicer | None = None
        #: Signs sidecars' workload certificates (None: no CA).
        self.identity: IdentityAuthority | None = None
        #: The server certificate the listeners present, kept fresh (None: plaintext).
        self.certificates: ServerCertificates | None = None
        #: The intentions this replica follows and sends to its sidecars.
        self.intentions: IntentionBook | None = None
        #: The gateway routes this replica follows and serves (RouteService).
        self.routes: RouteBook | None = None
        #: The sync jobs and runs this replica follows and serves (SyncService).
        self.sync: SyncBook | None = None
        #: Schedules the sync jobs' runs while this replica leads.
        self.sync_scheduler: SyncScheduler | None = None
        #: The registry as xDS resources, and the xDS clients (nodes) served.
        self.xds: XdsCache | None = None
        self.xds_nodes = NodeBook()
        self._ads: AdsServicer | None = None
        self.broker: Broker | None = None
        self.messaging: MessagingServicer | None = None
        self.election: Election | None = None
        self.spreader: LoadSpreader | None = None
        self.replica = ""
        self._health_task: asyncio.Task[None] | None = None
        self._health_serving = False
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._admin: web.AppRunner | None = None
        self.metrics = Metrics()
        #: Decides who may call what (``--acl``); set at start.
        self.authorizer: Authorizer | None = None
        self.address = ""
        self.admin_address = ""
        self.store_id = ""
        self._stopped = asyncio.Event()

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("control plane is not started")
        return self._store

    @property
    def view(self) -> InstanceView:
        if self._view is None:
            raise RuntimeError("control plane is not started")
        return self._view

    @property
    def serving(self) -> bool:
        """Serving, and hearing from the store."""
        return self._state is _State.SERVING and self.view.healthy

    @property
    def is_leader(self) -> bool:
        """True while this replica runs the work that must run once."""
        return self.election is not None and self.election.is_leader

    async def __aenter__(self) -> ControlPlane:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._state is not _State.NEW:
            raise RuntimeError("a control plane can be started once")
        try:
            await self._start()
        except BaseException:
            await self.stop(grace=0)
            raise

    async def _start(self) -> None:
        config = self.config
        if self._store is None:
            store_url = _without_password(config.store_url)
            try:
                self._store = open_store(config.store_url)
            except ValueError as exc:
                raise StartupError(f"--store {store_url}: {exc}") from exc
            try:
                await self._store.start()
            except Exception as exc:
                raise StartupError(f"cannot open store {store_url}: {exc}") from exc
        else:
            store_url = repr(self._store)
        store = self._store
        self.store_id = await ensure_store_id(store)
        self._view = InstanceView(
            store,
            ViewConfig(
                ring_events=config.watch_history,
                max_pending=config.watch_queue,
                store_timeout=config.store_timeout,
            ),
            store_id=self.store_id,
        )
        await self._view.start()

        self.identity = await _identity(config, store)
        identity = self.identity
        try:
            tls = load_server_tls(
                config,
                identity.signer() if identity else None,
                b"".join(identity.bundle_pems()) if identity else None,
                b"".join(identity.chain_pems()) if identity else b"",
            )
        except TLSSetupError as exc:
            raise StartupError(str(exc)) from exc
        # Renewed, and re-issued after a root rotation, while the listeners serve.
        certificates = ServerCertificates(config, tls, identity) if tls is not None else None
        self.certificates = certificates
        self.authorizer = Authorizer(
            AclStore(store),
            default_allow=config.acl_mode == "allow",
            audit=AuditLog(config.audit_log) if config.audit_log else None,
        )
        self.intentions = IntentionBook(store, default_allow=config.acl_mode == "allow")
        await self.intentions.start()
        self.routes = RouteBook(store, store_id=self.store_id)
        await self.routes.start()
        self.sync = SyncBook(store)
        await self.sync.start()
        server = grpc.aio.server(
            options=_SERVER_OPTIONS,
            # The guard first: the ACL check sees only requests that decode.
            interceptors=(MalformedRequestGuard(), AclInterceptor(self.authorizer)),
        )
        self._server = server
        host, _port = parse_hostport(config.listen)
        try:
            if certificates is None:
                bound = server.add_insecure_port(config.listen)
            else:
                bound = server.add_secure_port(config.listen, certificates.server_credentials())
        except RuntimeError as exc:
            raise StartupError(f"cannot listen on {config.listen}: {exc}") from exc
        if bound == 0:
            raise StartupError(f"cannot listen on {config.listen}: address in use or invalid")
        self.address = f"{_bracket(host)}:{bound}"
        # Named after the port actually bound: replicas on port 0 get distinct names.
        self.replica = config.replica or f"{socket.gethostname()}:{bound}"

        self._servicer = servicer = RegistryServicer(
            Registry(store),
            self._view,
            store,
            self.metrics,
            is_draining=lambda: self._state is not _State.SERVING,
            max_watch_streams=config.max_watch_streams,
        )
        server.add_generic_rpc_handlers((handler(servicer),))
        self.agent = AgentServicer(
            store,
            self._view,
            AgentSettings(
                replica=self.replica,
                grace=config.session_grace,
                deregister_critical_after=config.deregister_critical_after,
                sync_interval=config.sync_interval,
                bus_url=config.announced_bus_url,
                identity=self.identity,
                intentions=self.intentions,
                limits=AgentLimits(
                    max_streams=config.max_agent_streams,
                    max_streams_per_peer=config.max_agent_streams_per_peer,
                    idle_timeout=config.agent_idle_timeout,
                ),
            ),
            peers=lambda: self.spreader.peers.values() if self.spreader is not None else (),
            peer_credentials=certificates.channel_credentials() if certificates else None,
        )
        if certificates is not None:
            agent = self.agent

            def trust_now(tls: ServerTLS) -> None:  # replicas, called with today's roots
                agent.peer_credentials = tls.channel_credentials()

            certificates.on_change.append(trust_now)
        agent_pb2_grpc.add_AgentServiceServicer_to_server(self.agent, server)  # type: ignore[no-untyped-call]
        ca_pb2_grpc.add_CAServiceServicer_to_server(CAServicer(self.identity), server)  # type: ignore[no-untyped-call]
        acl_pb2_grpc.add_AclServiceServicer_to_server(AclServicer(self.authorizer), server)  # type: ignore[no-untyped-call]
        intention_pb2_grpc.add_IntentionServiceServicer_to_server(  # type: ignore[no-untyped-call]
            IntentionServicer(self.intentions), server
        )
        server.add_generic_rpc_handlers(
            (route_handler(RouteServicer(self.routes, max_watch_streams=config.max_watch_streams)),)
        )
        sync_pb2_grpc.add_SyncServiceServicer_to_server(  # type: ignore[no-untyped-call]
            SyncServicer(
                self.sync,
                max_watch_streams=config.max_watch_streams,
                is_draining=lambda: self._state is not _State.SERVING,
            ),
            server,
        )
        platform_pb2_grpc.add_PlatformServiceServicer_to_server(  # type: ignore[no-untyped-call]
            PlatformServicer(store, self._view), server
        )
        catalog_pb2_grpc.add_CatalogServiceServicer_to_server(  # type: ignore[no-untyped-call]
            CatalogServicer(store, self.sync), server
        )
        self.xds = XdsCache(self._view)
        if self.identity is not None and self.intentions is not None:
            # Sidecars' Envoys then speak mutual TLS and follow the intentions.
            self.xds.mesh = EnvoyMesh.following(self.identity.trust_domain, self.intentions)
        await self.xds.start()
        self._ads = add_ads(server, self.xds, self.xds_nodes)
        add_csds(server, self.xds_nodes)
        if self.identity is not None:
            self.identity.start()
        try:
            self.broker = open_broker(config.bus_url, bus_dir(config.store_url, self.replica))
        except BusError as exc:
            raise StartupError(f"--bus {config.bus_url}: {exc}") from exc
        try:
            await self.broker.start()
        except Exception as exc:
            raise StartupError(f"cannot start the bus {config.bus_url}: {exc}") from exc
        self.messaging = add_messaging(
            server, self.broker, lambda: self._state is not _State.SERVING
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (
                REGISTRY_SERVICE,
                AGENT_SERVICE,
                CA_SERVICE,
                ACL_SERVICE,
                INTENTION_SERVICE,
                ROUTE_SERVICE,
                SYNC_SERVICE,
                PLATFORM_SERVICE,
                CATALOG_SERVICE,
                MESSAGING_SERVICE,
                ADS_SERVICE,
                CSDS_SERVICE,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        await server.start()
        if config.admin_listen is not None:
            await self._start_admin(
                config.admin_listen, certificates.ssl_context() if certificates else None
            )
        if certificates is not None:
            certificates.start()

        reaper = Reaper(
            store,
            self._view,
            default_deregister_after=config.deregister_critical_after,
            node_retention=config.node_retention,
        )
        self.election = Election(store, self.replica, ttl=config.leader_ttl)
        self.election.while_leader("session-reaper", reaper.run)
        assert self.broker is not None  # opened above
        # Registry changes as bus events (eco.events.<namespace>.<service>), once.
        self.election.while_leader("bus-events", EventPublisher(store, self.broker).run)
        self.sync_scheduler = SyncScheduler(
            self.sync,
            SchedulerConfig(
                claim_timeout=config.sync_claim_timeout, run_timeout=config.sync_run_timeout
            ),
        )
        self.election.while_leader("sync-scheduler", self.sync_scheduler.run)
        # Sync runs' transitions as bus events (eco.sync.<job>.<kind>), once.
        sync_events = EventPublisher(
            store,
            self.broker,
            prefix=RUNS_PREFIX,
            revision_key=SYNC_EVENTS_REVISION_KEY,
            build=build_run_message,
        )
        self.election.while_leader("sync-events", sync_events.run)
        self.metrics.registry.register(SyncCollector(self.sync, self.sync_scheduler))
        await self.election.start()
        self.spreader = LoadSpreader(
            store,
            self.agent,
            self.replica,
            address=config.advertise or _reachable(host, bound),
            interval=config.rebalance_interval,
            batch=config.rebalance_batch,
            active=lambda: self.serving,
            on_shed=self.metrics.agent_streams_shed.inc,
        )
        await self.spreader.start()
        self._install_gauges()
        self._state = _State.SERVING
        await self._set_health(self.serving)
        self._health_task = asyncio.create_task(self._follow_health(), name="health")
        if tls is None and not is_loopback(host):
            log.warning(
                "control plane %s serves plaintext on %s, reachable from other hosts (--insecure)",
                self.replica,
                self.address,
            )
        log.info(
            "control plane %s serving on %s (admin %s, store %s, revision %d, %s)",
            self.replica,
            self.address,
            self.admin_address or "off",
            store_url,
            store.revision,
            "TLS" if tls is not None else "plaintext",
        )
        log.info("control plane %s: ACLs %s", self.replica, config.acl_mode)

    async def _start_admin(self, listen: str, ssl_context: ssl.SSLContext | None) -> None:
        runner = admin_runner(healthz=self._healthz, metrics=self._metrics, console=self)
        # What each xDS client was sent, ACKed and NACKed (docs/xds.md).
        runner.app.router.add_get("/xds", self._xds_status)
        await runner.setup()
        self._admin = runner
        host, port = parse_hostport(listen)
        site = runner.site(host, port, reuse_address=True, ssl_context=ssl_context)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(f"cannot listen on {listen} (admin): {exc.strerror}") from exc
        bound = runner.addresses[0][1] if runner.addresses else port
        self.admin_address = f"{_bracket(host)}:{bound}"

    def _install_gauges(self) -> None:
        view, store = self.view, self.store
        self.metrics.gauge(
            "eco_controlplane_instances", "Registered instances", lambda: view.instance_count
        )
        self.metrics.gauge(
            "eco_controlplane_watchers", "Open watch streams", lambda: view.subscriber_count
        )
        self.metrics.gauge(
            "eco_controlplane_view_revision", "Revision applied by the view", lambda: view.revision
        )
        self.metrics.gauge("eco_store_revision", "Current store revision", lambda: store.revision)
        self.metrics.gauge(
            "eco_controlplane_serving", "1 while serving", lambda: 1 if self.serving else 0
        )
        self.metrics.gauge(
            "eco_controlplane_leader",
            "1 while this replica is the elected leader",
            lambda: 1 if self.is_leader else 0,
        )
        agent = self.agent
        assert agent is not None
        self.metrics.gauge(
            "eco_controlplane_agent_streams",
            "Sidecar streams connected to this replica",
            lambda: agent.stream_count,
        )
        ads, nodes = self._ads, self.xds_nodes
        self.metrics.gauge(
            "eco_controlplane_xds_streams",
            "xDS (ADS) streams connected to this replica",
            lambda: ads.streams if ads is not None else 0,
        )
        self.metrics.gauge(
            "eco_controlplane_xds_nacks", "xDS responses clients rejected", lambda: nodes.nacks
        )

    async def _set_health(self, serving: bool) -> None:
        self._health_serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in _HEALTH_SERVICES:
            await self._health.set(service, status)

    async def _follow_health(self) -> None:
        """Keeps grpc.health.v1 in step with the store's reachability."""
        while self._state is _State.SERVING:
            serving = self.serving
            if serving != self._health_serving:
                if serving:
                    log.warning("control plane %s: the store answers again; SERVING", self.replica)
                else:
                    log.error(
                        "control plane %s: no word from the store for %.1fs; NOT_SERVING",
                        self.replica,
                        self.view.silent_for,
                    )
                await self._set_health(serving)
            await asyncio.sleep(_HEALTH_INTERVAL)

    async def _admin_refusal(self, request: web.Request) -> web.Response | None:
        """Off loopback with ``--acl deny``, /metrics needs a token with
        operator:metrics:read (``Authorization: Bearer <secret>``)."""
        authorizer = self.authorizer
        if authorizer is None or authorizer.default_allow:
            return None
        if self.config.admin_listen and is_loopback(parse_hostport(self.config.admin_listen)[0]):
            return None
        header = request.headers.get("Authorization", "")
        secret = header[7:].strip() if header[:7].lower() == "bearer " else ""
        identity = await authorizer.store.resolve(secret) if secret else None
        if identity is None:
            return web.Response(
                status=401, text="a token is required: Authorization: Bearer <secret>\n"
            )
        need = Need("operator", "metrics", "read")
        if not authorizer.allows(identity, need):
            authorizer.record(identity, "GET /metrics", str(need), allowed=False)
            return web.Response(status=403, text=f"the token lacks {need}\n")
        return None

    async def _healthz(self, _request: web.Request) -> web.Response:
        headers = {"X-Eco-Replica": self.replica, "X-Eco-Leader": "1" if self.is_leader else "0"}
        if self.serving:
            return web.Response(text="SERVING\n", headers=headers)
        return web.Response(status=503, text="NOT_SERVING\n", headers=headers)

    async def _metrics(self, request: web.Request) -> web.Response:
        refusal = await self._admin_refusal(request)
        if refusal is not None:
            return refusal
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    async def _xds_status(self, request: web.Request) -> web.Response:
        refusal = await self._admin_refusal(request)
        if refusal is not None:
            return refusal
        cache = self.xds
        body = {
            "revision": cache.snapshot.revision if cache is not None else 0,
            "clusters": len(cache.snapshot.clusters) if cache is not None else 0,
            **self.xds_nodes.as_json(),
        }
        return web.json_response(body)

    async def stop(self, grace: float | None = None) -> None:
        """Drains and stops; idempotent. ``grace`` overrides the configured one."""
        if self._state in (_State.DRAINING, _State.STOPPED):
            await self._stopped.wait()
            return
        self._state = _State.DRAINING
        grace = self.config.grace if grace is None else grace
        log.info("control plane %s draining (grace %.1fs)", self.replica or "", grace)
        await self._health.enter_graceful_shutdown()
        try:
            await self._stop_background(revoke=True)
            if self.agent is not None:
                self.agent.drain()
            if self.messaging is not None:
                await self.messaging.drain()
            if self._view is not None:
                # Ends every watch stream with UNAVAILABLE: clients resume elsewhere.
                await self._view.close()
            if self._servicer is not None:
                # New calls already get UNAVAILABLE; give the ones in flight
                # the grace period before the server cancels what is left.
                loop = asyncio.get_running_loop()
                deadline = loop.time() + grace
                drain = min(self.config.drain_delay, grace)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(grace):
                        await asyncio.sleep(drain)
                        await self._servicer.wait_idle()
                        if self.messaging is not None:
                            await self.messaging.wait_idle()
                grace = max(0.0, deadline - loop.time())
            if self._server is not None:
                await self._server.stop(min(grace, 0.1))
            if self.broker is not None:
                await self.broker.close()
            if self._admin is not None:
                await self._admin.cleanup()
            if self._store is not None and self._owns_store:
                await self._store.close()
        finally:
            if self.authorizer is not None and self.authorizer.audit is not None:
                self.authorizer.audit.close()
            self._state = _State.STOPPED
            self._stopped.set()
            log.info("control plane %s stopped", self.replica or "")

    async def abort(self) -> None:
        """Stops at once, as a crash would (for failover tests): no draining and
        no hand-over. The leader lease and the session leases are left to run
        out; streams are cut; the store is closed only if this plane opened it."""
        if self._state in (_State.DRAINING, _State.STOPPED):
            await self._stopped.wait()
            return
        self._state = _State.DRAINING
        log.warning("control plane %s aborting", self.replica or "")
        try:
            await self._stop_background(revoke=False)
            if self._server is not None:
                await self._server.stop(0)
            if self.broker is not None:
                await self.broker.close()
            if self._view is not None:
                await self._view.close()
            if self._admin is not None:
                await self._admin.cleanup()
            if self._store is not None and self._owns_store:
                await self._store.close()
        finally:
            if self.authorizer is not None and self.authorizer.audit is not None:
                self.authorizer.audit.close()
            self._state = _State.STOPPED
            self._stopped.set()

    async def _stop_background(self, *, revoke: bool) -> None:
        """Stops the health follower, the load spreader and the election (whose
        leader-only work stops with it); ``revoke`` hands leadership over now."""
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.wait({self._health_task})
        if self.election is not None:
            # The leader-only work (the sync scheduler reads the sync book) ends
            # before what it uses is closed; the lease goes below.
            await self.election.stop()
        if self.identity is not None:
            await self.identity.close()
        if self.certificates is not None:
            await self.certificates.close()
        if self.intentions is not None:
            await self.intentions.close()
        if self.routes is not None:
            # Ends every route watch with UNAVAILABLE: gateways resume elsewhere.
            await self.routes.close()
        if self.sync is not None:
            # Ends every sync run watch with UNAVAILABLE: sidecars resume elsewhere.
            await self.sync.close()
        if self.xds is not None:
            # Ends every xDS stream with UNAVAILABLE: clients keep their last
            # configuration and reconnect.
            await self.xds.close()
        # Concurrently: with the store unreachable, each revoke waits for its timeout.
        async with asyncio.TaskGroup() as group:
            if self.spreader is not None:
                group.create_task(self.spreader.close(revoke=revoke))
            if self.election is not None:
                group.create_task(self.election.close(revoke=revoke))

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


async def _identity(config: ControlPlaneConfig, store: Store) -> IdentityAuthority | None:
    """The CA that signs workload certificates: kept in the store (``--tls-ca
    auto``), from the CA files, or none."""
    ttl = timedelta(seconds=config.workload_cert_ttl)
    if config.ca_auto:
        from controlplane.ca import CAError

        try:
            roots = await load_or_create_roots(store, config.trust_domain)
            authority = IdentityAuthority(roots, ttl, store=store)
            authority.signer()  # the stored key must match its root
        except CAError as exc:
            raise StartupError(f"--tls-ca auto: the CA in the store: {exc}") from exc
        return authority
    if config.tls_ca and config.tls_ca_key:
        from controlplane.ca import CAError, CertificateAuthority

        try:
            ca = CertificateAuthority.load(Path(config.tls_ca), Path(config.tls_ca_key))
        except CAError as exc:
            raise StartupError(f"--tls-ca {config.tls_ca}: {exc}") from exc
        return IdentityAuthority.from_ca(ca, ttl)
    return None


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _reachable(host: str, port: int) -> str:
    """Where other machines can reach a server listening on ``host:port``."""
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = socket.gethostname()
    return f"{_bracket(host)}:{port}"


async def _serve(config: ControlPlaneConfig) -> int:
    loop = asyncio.get_running_loop()
    plane = ControlPlane(config)
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            # Acknowledged writes are already durable; nothing is lost by leaving now.
            os._exit(128 + signum)
        log.info("%s: shutting down (send again to exit at once)", signal.Signals(signum).name)
        stopper.add(loop.create_task(plane.stop(), name="control-plane-stop"))

    stopper: set[asyncio.Task[None]] = set()
    try:
        await plane.start()
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    tune_gc()
    try:
        await plane.wait_stopped()
        for task in stopper:
            await task
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        with contextlib.suppress(Exception):
            await plane.stop(grace=0)
    return 0


def _without_password(url: str) -> str:
    """The store URL fit for logs: ``etcd://user:secret@h/p`` becomes ``etcd://user:***@h/p``."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    if scheme != "etcd" or "@" not in netloc:
        return url
    userinfo, _, hosts = netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}{sep}{user}{':***' if colon else ''}@{hosts}{slash}{tail}"


def run(config: ControlPlaneConfig) -> int:
    """Runs a control plane until SIGTERM/SIGINT; returns the exit code."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(_serve(config))
    return uvloop.run(_serve(config))
