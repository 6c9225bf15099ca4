"""The gateway process: one object that owns every part of a running ``eco gateway``.

::

    Gateway
    ├── Sidecar (no local services)   when routes name registry services: the agent
    │                                 session, the endpoint cache on disk, one balancer
    │                                 per service (it keeps serving from its cache
    │                                 while the control plane is away)
    ├── RoutePlans                    router, plugins, one target and pool per backend
    ├── GatewayListener               the sidecar's HTTP data plane with the front (with
    │                                 TLS: an Http2Listener, HTTP/2 to clients choosing it)
    ├── RateLimitStore                the shared Redis, when a route's limit is global
    ├── ResponseCache                 what routes with ``cache`` stored
    ├── Observations                  metrics, the access log
    └── admin (aiohttp)               /healthz, /metrics, /status, POST /cache/purge

Start order: the sidecar (session, cache), the store, the plugins' own tasks
(JWKS refresh), the admin port, then the listener; stop runs the other way,
after draining the listener.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from pydantic import ValidationError

from sdk import tls_channel_factory
from serving.acl import Need, bearer
from serving.addresses import is_loopback
from serving.errors import ServiceError
from serving.http_limits import HttpLimits
from serving.web_server import LimitedRunner
from sidecar.acl import TokenChecker
from sidecar.app import Sidecar
from sidecar.cache import UpstreamKey
from sidecar.config import SidecarConfig, split_hostport
from sidecar.errors import StartupError
from sidecar.gateway.auth import ConsumerIndex
from sidecar.gateway.cache import ResponseCache
from sidecar.gateway.config import Backend, GatewayConfig, RouteConfig
from sidecar.gateway.http2 import Http2Listener
from sidecar.gateway.observe import AccessLog, Observations
from sidecar.gateway.plugins import STRIPPED, RoutePlans
from sidecar.gateway.ratelimit import LocalBuckets, RateLimitStore
from sidecar.gateway.routes import RouteWatcher, load_routes
from sidecar.gateway.server import GatewayFront, GatewayListener, RouteForwarding
from sidecar.proxy._target import Target

__all__ = ["Gateway"]

logger = logging.getLogger(__name__)

_ADMIN_LIMITS = HttpLimits(max_connections=256, max_connections_per_ip=64)


class Gateway:
    """A running gateway (see the module docstring). ``async with Gateway(config)``."""

    def __init__(self, config: GatewayConfig) -> None:
        #: the configuration file's
        self.file_config = config
        #: the stored routes served, by name, and those refused (name → why)
        self.stored: dict[str, dict[str, Any]] = {}
        self.refused: dict[str, str] = {}
        self._watcher: RouteWatcher | None = None
        if config.controlplane_routes is not None:
            specs, revision, store_id = load_routes(config.data_dir)
            config = self._merged(specs)
            link = config.controlplane
            assert link is not None, "checked by the configuration"
            self._watcher = RouteWatcher(
                tuple(link.addresses),
                self._routes_changed,
                group=config.controlplane_routes.group,  # type: ignore[union-attr]
                token=link.secret,
                channel_factory=tls_channel_factory(link.ca_file) if link.ca_file else None,
                data_dir=config.data_dir,
                routes=specs,
                revision=revision,
                store_id=store_id,
            )
        #: the configuration served: the file's, with the stored routes
        self.config = config
        registry = {b.key: (route, b) for route, b in config.iter_backends() if not b.endpoints}
        follows = registry or config.controlplane_routes is not None
        self.sidecar = Sidecar(self._sidecar_config(registry)) if follows else None
        #: forwardings of earlier route sets still carrying requests (their pools swept)
        self._retired: list[RouteForwarding] = []
        self._targets: dict[UpstreamKey, list[Target]] = {}
        self.cache = ResponseCache(config.cache)
        self.buckets = LocalBuckets()
        self.store = (
            RateLimitStore(config.rate_limit_store) if config.rate_limit_store is not None else None
        )
        self._consumers = ConsumerIndex(config.consumers)
        self.plans = RoutePlans(
            config,
            targets=self._target,
            consumers=self._consumers,
            cache=self.cache,
            buckets=self.buckets,
            store=self.store,
        )
        self.observations = Observations(
            AccessLog(config.access_log) if config.access_log is not None else None
        )
        self.front = GatewayFront(self.plans.lookup, strip=STRIPPED, observer=self.observations)
        http2 = config.tls is not None and config.tls.http2
        self.listener = (Http2Listener if http2 else GatewayListener)(
            "gateway",
            config.listen,
            self.front,
            config.policy,  # (its listener keys: head limits, connection caps)
            routes=self._forwardings,
            ssl_context=self._ssl_context(),
        )
        if self.sidecar is not None:
            self.sidecar.on_endpoints_changed.append(self._endpoints_changed)
        self._admin: LimitedRunner | None = None
        self._tokens: TokenChecker | None = None
        self.admin_address = ""
        self._started = False

    # -- the parts -------------------------------------------------------------------------

    def _sidecar_config(
        self, registry: dict[UpstreamKey, tuple[RouteConfig, Backend]]
    ) -> SidecarConfig:
        config = self.config
        assert config.controlplane is not None, "checked by the configuration"
        upstreams = []
        for (namespace, service), (route, backend) in registry.items():
            # One balancer per service, with the policy of the first route naming it.
            upstream = route.upstream_config(backend).model_dump(
                exclude_unset=True, exclude={"protocol", "listen"}
            )
            upstreams.append({**upstream, "service": service, "namespace": namespace})
        return SidecarConfig.model_validate(
            {
                "node": {
                    **(config.node.model_dump() if config.node is not None else {}),
                    "id": config.node_id,
                },
                "controlplane": config.controlplane.model_dump(),
                "data_dir": str(config.data_dir),
                "local_api": "127.0.0.1:0",
                "admin": None,
                "upstreams": upstreams,
            }
        )

    def _forwardings(self) -> list[RouteForwarding]:
        retired = self._retired
        if retired:
            # Those that carry nothing any more are closed and forgotten.
            self._retired = [fw for fw in retired if fw.pool.connections]
        return [*self.plans.forwardings(), *self._retired]

    # -- routes stored in the control plane ------------------------------------------------

    def _merged(self, specs: Mapping[str, dict[str, Any]]) -> GatewayConfig:
        """The file's configuration serving the stored routes too: each stored route
        checked on its own and with the rest; one that fails is left out (and said
        in ``refused``), a name the file has is the file's."""
        base = self.file_config
        own = {route.name for route in base.routes}
        refused: dict[str, str] = {}
        candidates: dict[str, RouteConfig] = {}
        for name, spec in sorted(specs.items()):
            if name in own:
                refused[name] = "the configuration file has a route of this name"
                continue
            try:
                candidates[name] = RouteConfig.model_validate(spec)
            except ValidationError as err:
                refused[name] = _first_problem(err)
        try:
            merged = base.with_routes([*base.routes, *candidates.values()])
        except ValidationError:
            # Some route does not fit the rest of the file (a global limit without
            # the store…): each is checked against the file alone to find which.
            for name, route in list(candidates.items()):
                try:
                    base.with_routes([*base.routes, route])
                except ValidationError as err:
                    refused[name] = _first_problem(err)
                    del candidates[name]
            merged = base.with_routes([*base.routes, *candidates.values()])
        stored = {name: dict(specs[name]) for name in candidates}
        for name, why in refused.items():
            if self.refused.get(name) != why:
                logger.warning("stored route %s is not served: %s", name, why)
        self.stored, self.refused = stored, refused
        return merged

    async def _routes_changed(self, specs: Mapping[str, dict[str, Any]]) -> None:
        """A new set of stored routes: new plans (their plugins started first),
        swapped in for the next requests; those in flight finish on the routes
        they had."""
        config = self._merged(specs)
        if self.sidecar is not None:
            upstreams = [
                route.upstream_config(b) for route, b in config.iter_backends() if not b.endpoints
            ]
            self.sidecar.add_upstreams(upstreams)
        old = self.plans
        plans = RoutePlans(
            config,
            targets=self._target,
            consumers=self._consumers,
            cache=self.cache,
            buckets=self.buckets,
            store=self.store,
            previous=old,
        )
        await plans.start()
        self._load_client_cas(config)
        self.config = config
        self.plans = plans
        self.front.lookup = plans.lookup
        kept = set(map(id, plans.forwardings()))
        for fw in old.forwardings():
            if id(fw) not in kept:
                fw.pool.close_idle()
                self._retired.append(fw)
        await old.close()
        logger.info(
            "routes: %d (%d stored in the control plane, %d refused)",
            len(config.routes),
            len(self.stored),
            len(self.refused),
        )

    def _load_client_cas(self, config: GatewayConfig) -> None:
        """Client certificates of new ``mtls`` routes are trusted from now on (a
        CA once trusted stays so until a restart; each route checks its own)."""
        context = self.listener.ssl_context
        if context is None:
            return
        for ca in config.client_ca_files:
            if ca not in self._client_cas:
                context.load_verify_locations(cafile=str(ca))
                context.verify_mode = ssl.CERT_OPTIONAL
                self._client_cas.add(ca)

    def _target(self, route: RouteConfig, backend: Backend) -> Target:
        name = backend.service if backend.key[0] == "default" else "/".join(backend.key)
        policy = route.upstream_config(backend)
        if backend.endpoints:
            addresses = [split_hostport(e) for e in backend.endpoints]
            return Target.fixed(name, policy, addresses, balancer=policy.balancer)
        assert self.sidecar is not None
        target = Target(name, policy, self.sidecar.router.balancer(backend.key))
        self._targets.setdefault(backend.key, []).append(target)
        return target

    def _endpoints_changed(self, key: UpstreamKey) -> None:
        for target in self._targets.get(key, ()):
            target.sync()

    def _ssl_context(self, *, admin: bool = False) -> ssl.SSLContext | None:
        """The listener's TLS context (HTTP/2 offered by ALPN when ``http2``), or
        the admin port's (HTTP/1.1, no client certificates)."""
        if not admin:
            self._client_cas: set[Path] = set()
        tls = self.config.tls
        if tls is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        h2 = tls.http2 and not admin
        context.set_alpn_protocols(["h2", "http/1.1"] if h2 else ["http/1.1"])
        try:
            context.load_cert_chain(tls.cert, tls.key)
            cas = () if admin else self.config.client_ca_files
            for ca in cas:
                context.load_verify_locations(cafile=str(ca))
            if not admin:
                self._client_cas = set(cas)
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(f"tls: {exc}") from None
        if cas:
            context.verify_mode = ssl.CERT_OPTIONAL  # each mtls route checks its own
        return context

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("a gateway can be started once")
        self._started = True
        try:
            if self.sidecar is not None:
                await self.sidecar.start()
            if self.store is not None:
                await self.store.start()
            await self.plans.start()
            if self._watcher is not None:
                self._watcher.start()
            if self.config.admin is not None:
                await self._start_admin(self.config.admin)
            await self.listener.start()
        except BaseException:
            await self.stop()
            raise
        logger.info(
            "gateway on %s://%s: %d route(s)%s",
            "https" if self.config.tls else "http",
            self.listener.address,
            len(self.config.routes),
            f", admin http://{self.admin_address}" if self.admin_address else "",
        )

    async def stop(self, grace: float = 5.0) -> None:
        if self._watcher is not None:
            await self._watcher.close()
        await self.listener.drain(grace)
        if self._admin is not None:
            await self._admin.cleanup()
            self._admin = None
        if self._tokens is not None:
            await self._tokens.close()
        await self.plans.close()
        if self.store is not None:
            await self.store.close()
        if self.sidecar is not None:
            await self.sidecar.stop()
        if self.observations.access_log is not None:
            self.observations.access_log.close()

    @property
    def address(self) -> str:
        return self.listener.address

    # -- admin -------------------------------------------------------------------------------

    async def _start_admin(self, listen: str) -> None:
        host, port = split_hostport(listen, allow_zero=True)
        middlewares = []
        ssl_context = None
        if not is_loopback(host):
            # Off loopback: TLS with the listener's certificate, and every call's
            # token checked with the control plane's rules (as a sidecar's admin).
            link = self.config.controlplane
            assert link is not None and self.listener.ssl_context is not None, "config"
            self._tokens = TokenChecker(
                tuple(link.addresses),
                channel_factory=tls_channel_factory(link.ca_file) if link.ca_file else None,
            )
            middlewares.append(_token_check(self._tokens))
            # (its own context: the listener's may offer h2, which the admin port does not speak)
            ssl_context = self._ssl_context(admin=True)
        app = web.Application(client_max_size=64 * 1024, middlewares=middlewares)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/status", self._status)
        app.router.add_post("/cache/purge", self._purge)
        runner = LimitedRunner(app, _ADMIN_LIMITS, name="gateway admin", logger=logger)
        await runner.setup()
        self._admin = runner
        try:
            await runner.site(host, port, reuse_address=True, ssl_context=ssl_context).start()
        except OSError as exc:
            raise StartupError(f"admin: cannot listen on {listen}: {exc.strerror}") from None
        bound_host, bound_port = runner.addresses[0][:2]
        self.admin_address = f"{bound_host}:{bound_port}"

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="SERVING\n")

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=self.observations.render(), content_type="text/plain", charset="utf-8"
        )

    async def _status(self, _request: web.Request) -> web.Response:
        return web.json_response(self.status(), dumps=lambda v: json.dumps(v, indent=2))

    async def _purge(self, request: web.Request) -> web.Response:
        route = request.query.get("route", "")
        if route not in {r.name for r in self.config.routes}:
            return web.json_response(
                {"error": "unknown_route", "message": f"no route {route!r}"}, status=404
            )
        path = request.query.get("path") or None
        return web.json_response(
            {"route": route, "path": path, "purged": self.cache.purge(route, path)}
        )

    def status(self) -> dict[str, Any]:
        """The ``/status`` document: the listener, each route with its upstreams, the cache."""
        sidecar = self.sidecar
        routes = []
        for route in self.config.routes:
            backends = []
            for backend in route.backends:
                fw = self.plans.forwarding(route.name, backend.key)
                backends.append(
                    {
                        "service": backend.service,
                        "namespace": backend.namespace or "default",
                        "weight": backend.weight,
                        "endpoints": [f"{host}:{port}" for host, port in sorted(fw.addresses())],
                        # requests, responses by class, ejections, the circuit
                        "target": fw.target.status(),
                    }
                )
            routes.append(
                {
                    "name": route.name,
                    "match": route.match.model_dump(mode="json", exclude_defaults=True),
                    "plugins": list(route.plugins.names),
                    "backends": backends,
                    "redirect": route.redirect is not None,
                }
            )
        stats = self.cache.stats()
        return {
            "listener": self.listener.status(),
            "controlplane": None
            if sidecar is None
            else {"connected": sidecar.connected, "stale": sidecar.stale},
            "routes": routes,
            "cache": {
                "entries": stats.entries,
                "bytes": stats.bytes,
                "hits": stats.hits,
                "misses": stats.misses,
            },
            "controlplane_routes": None
            if self._watcher is None
            else {
                "connected": self._watcher.connected,
                "revision": self._watcher.revision,
                "served": sorted(self.stored),
                "refused": self.refused,
                "error": self._watcher.error or None,
            },
            "rate_limit_store": None
            if self.store is None
            else {"url": _redacted(str(self.config.rate_limit_store.url))},  # type: ignore[union-attr]
        }


def _first_problem(err: ValidationError) -> str:
    """The first problem of a refused route, as ``where: what``."""
    first = err.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {str(first['msg']).removeprefix('Value error, ')}"


def _token_check(tokens: TokenChecker) -> Any:
    """The admin port's check off loopback: ``/healthz`` is open; ``/metrics`` and
    ``/status`` need ``operator:metrics:read``; a purge ``route:<route>:write``."""

    @web.middleware
    async def check(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path == "/healthz":
            return await handler(request)
        if request.path == "/cache/purge":
            needs = [Need("route", request.query.get("route", ""), "write")]
        else:
            needs = [Need("operator", "metrics", "read")]
        try:
            await tokens.check(bearer(request.headers.get("authorization", "")), needs)
        except ServiceError as exc:
            status = {
                grpc.StatusCode.UNAUTHENTICATED: 401,
                grpc.StatusCode.PERMISSION_DENIED: 403,
            }.get(exc.status_code, 503)
            headers = {"www-authenticate": "Bearer"} if status == 401 else {}
            body = {"error": exc.status_code.name.lower(), "message": str(exc)}
            return web.json_response(body, status=status, headers=headers)
        return await handler(request)

    return check


def _redacted(url: str) -> str:
    """A URL without its password."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    userinfo, _, host = rest.rpartition("@")
    user = userinfo.partition(":")[0]
    return f"{scheme}{sep}{user + ':***@' if user else '***@'}{host}"
