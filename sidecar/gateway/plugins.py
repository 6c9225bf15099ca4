"""Each route's plan, built once from the configuration: what its requests go through.

In order, for a request a route takes:

1. ``cors``: a preflight (``OPTIONS`` with ``Origin`` and
   ``Access-Control-Request-Method``) is answered here, before any
   credential is asked for (browsers send none with it).
2. Authentication (``key_auth``, ``jwt``, ``hmac``, ``mtls``: any of them,
   the first whose credential the request carries deciding), then ``allow``.
3. ``rate_limit``: every policy's bucket; 429 (or 503 when the shared store
   is down under ``on_store_error: deny``).
4. ``cache``: a fresh stored response is the answer (``x-cache: HIT``);
   otherwise the response is collected on its way back, to be stored.
5. Forwarded: ``request_transform``, the consumer's identity
   (``x-consumer-*``; the same fields are removed from every incoming
   request), the path after ``rewrite``.
6. On the way back: ``response_transform``, ``RateLimit-*``, CORS,
   ``x-cache``; the gateway's own answers carry the last three too.
"""

from __future__ import annotations

import random as _random
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, urlencode

from sidecar.gateway.auth import (
    IDENTITY_HEADERS,
    AuthChain,
    AuthPlugin,
    ConsumerAllowList,
    ConsumerIndex,
    HmacAuth,
    JwksCache,
    JwtAuth,
    JwtConfig,
    KeyAuth,
    MtlsAuth,
    identity_headers,
)
from sidecar.gateway.cache import CacheConfig, CacheSlot, ResponseCache
from sidecar.gateway.config import (
    DEFAULT_MAX_BODY,
    Backend,
    CorsConfig,
    GatewayConfig,
    RequestTransformConfig,
    ResponseTransformConfig,
    RouteConfig,
)
from sidecar.gateway.ratelimit import LocalBuckets, RateLimiter, RateLimitStore
from sidecar.gateway.ratelimit import headers as rate_limit_headers
from sidecar.gateway.ratelimit import refusal as rate_limit_refusal
from sidecar.gateway.request import GatewayRequest, LocalResponse
from sidecar.gateway.router import Router, redirect_response, rewrite_path
from sidecar.gateway.server import Plan, Routed, RouteForwarding, Step
from sidecar.gateway.transform import is_json, transform_json
from sidecar.proxy._target import Target

__all__ = ["RoutePlans", "TargetFactory"]

#: Makes the target one backend of a route forwards to: (route, backend) → Target.
TargetFactory = Callable[[RouteConfig, Backend], Target]

_RATE = "rate_limit"
_CACHE = "cache"


class RoutePlans:
    """The routes of one configuration: their router, plans and forwardings."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        targets: TargetFactory,
        consumers: ConsumerIndex,
        cache: ResponseCache,
        buckets: LocalBuckets,
        store: RateLimitStore | None = None,
        random: Callable[[], float] = _random.random,
        previous: RoutePlans | None = None,
    ) -> None:
        self.config = config
        self.router = Router(config.routes, random=random)
        self.cache = cache
        self._consumers = consumers
        self._buckets = buckets
        self._store = store
        self._plans: dict[str, Plan] = {}
        self._forwardings: dict[tuple[str, tuple[str, str]], RouteForwarding] = {}
        #: what lookup answers: made once per route and backend, by their positions
        #: in the configuration (a route without backends: one, forwarding nowhere)
        self._routed: list[tuple[Routed, ...]] = []
        #: the JWKS caches of the jwt plugins, one per key set (routes naming the same
        #: ``jwks_url`` share it); started and closed with the gateway, and handed
        #: on to the next plans when the routes change
        self._jwks: dict[tuple[object, ...], JwksCache] = {}
        self._previous_jwks = previous._jwks if previous is not None else {}
        self.limiters: dict[str, RateLimiter] = {}
        for route in config.routes:
            for backend in route.backends:
                key = (route.name, backend.key)
                policy = route.upstream_config(backend)
                old = previous._forwardings.get(key) if previous is not None else None
                if old is not None and old.policy == policy and old.endpoints == backend.endpoints:
                    # The same route to the same backend: its target (balancer
                    # state, ejections) and pooled connections carry on.
                    self._forwardings[key] = old
                    continue
                name = route.name if len(route.backends) == 1 else f"{route.name}/{backend.service}"
                fw = RouteForwarding(name, targets(route, backend), policy)
                fw.endpoints = backend.endpoints
                self._forwardings[key] = fw
            plan = self._plans[route.name] = self._plan(route)
            self._routed.append(
                tuple(Routed(plan, self._forwardings[(route.name, b.key)]) for b in route.backends)
                or (Routed(plan, None),)
            )

    # -- per request -------------------------------------------------------------------

    def lookup(self, request: GatewayRequest) -> Routed | None:
        found = self.router.match_index(
            request.host, request.path, request.method, request.headers, request.query
        )
        if found is None:
            return None
        return self._routed[found[0]][found[1]]

    def forwardings(self) -> list[RouteForwarding]:
        return list(self._forwardings.values())

    def forwarding(self, route: str, key: tuple[str, str]) -> RouteForwarding:
        """Where ``route`` forwards to the backend ``key`` (namespace, service)."""
        return self._forwardings[(route, key)]

    def plan(self, name: str) -> Plan:
        return self._plans[name]

    def _jwks_for(self, config: JwtConfig) -> JwksCache | None:
        if config.jwks_url is None:
            return None
        key = (
            str(config.jwks_url),
            config.jwks_refresh,
            config.jwks_refresh_min,
            config.jwks_refresh_max,
            config.jwks_timeout,
            config.jwks_ca_file,
        )
        cache = self._jwks.get(key)
        if cache is None:
            # The previous plans' cache of the same key set carries on (its keys
            # stay fetched); otherwise a new one.
            cache = self._previous_jwks.pop(key, None) or config.make_jwks()
            assert cache is not None
            self._jwks[key] = cache
        return cache

    async def start(self) -> None:
        """Starts the JWKS caches that are new (those handed on are running)."""
        for cache in self._jwks.values():
            if cache.state == "new":
                await cache.start()

    async def close(self) -> None:
        """Closes the JWKS caches it still owns (not those handed to newer plans)."""
        for cache in self._jwks.values():
            await cache.close()
        self._jwks.clear()

    # -- building a plan ----------------------------------------------------------------

    def _plan(self, route: RouteConfig) -> Plan:
        if route.redirect is not None:
            return Plan(
                name=route.name,
                answer=lambda r, route=route: redirect_response(  # type: ignore[misc]
                    route, r.scheme, r.host, r.path, r.query
                ),
            )
        plugins = route.plugins
        steps: list[Step] = []
        on_forward: list[Callable[[GatewayRequest], None]] = []
        response_headers: list[Callable[[GatewayRequest], Sequence[tuple[str, str]]]] = []
        on_response = []
        if plugins.cors is not None:
            cors = _Cors(plugins.cors)
            steps.append(cors.preflight)
            response_headers.append(cors.headers)
        body_limit = 0
        auth = self._auth(route)
        if auth is not None:
            steps.append(_auth_step(auth))
            on_forward.append(_add_identity)
            if auth.needs_body:  # (a signed request's digest is checked against its body)
                body_limit = DEFAULT_MAX_BODY
        if plugins.allow is not None:
            steps.append(ConsumerAllowList(plugins.allow).authorize)
        if plugins.rate_limit:
            limiter = RateLimiter(
                route.name, plugins.rate_limit, buckets=self._buckets, store=self._store
            )
            self.limiters[route.name] = limiter
            steps.append(_rate_limit_step(limiter))
            response_headers.append(_rate_limit_headers)
        if plugins.cache is not None:
            timeout = route.policy.timeout or 30.0
            steps.append(_cache_step(self.cache, plugins.cache, timeout))
            response_headers.append(_cache_headers)
            on_response.append(_invalidate(self.cache))
        transform = plugins.request_transform
        if transform is not None:
            on_forward.append(_request_transform(transform))
            if transform.json_body is not None:  # (the smallest limit of those that read it)
                body_limit = min(body_limit or transform.max_body, transform.max_body)
        response_body = None
        response_body_limit = 0
        if plugins.response_transform is not None:
            on_response.append(_response_transform(plugins.response_transform))
            json_body = plugins.response_transform.json_body
            if json_body is not None:
                response_body = (_json_response, partial(transform_json, config=json_body))
                response_body_limit = plugins.response_transform.max_body
        rewrite = None
        if route.rewrite is not None:

            def rewrite(r: GatewayRequest, route: RouteConfig = route) -> str:
                path = rewrite_path(route, r.path)
                return f"{path}?{r.query}" if r.query else path

        return Plan(
            name=route.name,
            steps=steps,
            rewrite=rewrite,
            on_forward=on_forward,
            response_headers=response_headers,
            on_response=on_response,
            body_limit=body_limit,
            response_body=response_body,
            response_body_limit=response_body_limit,
        )

    def _auth(self, route: RouteConfig) -> AuthChain | None:
        plugins = route.plugins
        chain: list[AuthPlugin] = []
        if plugins.key_auth is not None:
            chain.append(KeyAuth(plugins.key_auth, self._consumers))
        if plugins.jwt is not None:
            chain.append(JwtAuth(plugins.jwt, self._consumers, jwks=self._jwks_for(plugins.jwt)))
        if plugins.hmac is not None:
            chain.append(HmacAuth(plugins.hmac, self._consumers))
        if plugins.mtls is not None:
            chain.append(MtlsAuth(plugins.mtls, self._consumers))
        return AuthChain(chain) if chain else None


# -- the steps ---------------------------------------------------------------------------


def _add_identity(request: GatewayRequest) -> None:
    for name, value in identity_headers(request):
        request.headers.set(name, value)


def _auth_step(chain: AuthChain) -> Step:
    """The authentication step: it waits only when a JWT must be verified
    (the first time a token is seen, or for keys); key_auth, hmac and mtls
    never wait, and a token seen before is taken from the plugin's cache."""

    def step(request: GatewayRequest) -> LocalResponse | Awaitable[LocalResponse | None] | None:
        plugins = chain.plugins
        plugin: AuthPlugin | None = plugins[0] if len(plugins) == 1 else None
        if plugin is None:
            plugin = next((p for p in plugins if p.present(request)), None)
            if plugin is None:  # no credential: the chain's 401 with every challenge
                return _at_once(chain.authenticate(request))
        if isinstance(plugin, JwtAuth):
            if plugin.accept_cached(request):
                return None
            return plugin.authenticate(request)
        return _at_once(plugin.authenticate(request))

    return step


def _at_once(coro: Coroutine[Any, Any, LocalResponse | None]) -> LocalResponse | None:
    """The result of a coroutine that never waits (key_auth, hmac, mtls, a chain's
    challenge), run to its end here; one that does wait is a programming error."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("a check that never waits has waited")


def _rate_limit_step(limiter: RateLimiter) -> Step:
    if limiter.local_only:

        def local(request: GatewayRequest) -> LocalResponse | None:
            decision = limiter.decide_now(request)
            request.note(_RATE, decision)
            return rate_limit_refusal(decision)

        return local

    async def step(request: GatewayRequest) -> LocalResponse | None:
        decision = await limiter.decide(request)
        request.note(_RATE, decision)
        return rate_limit_refusal(decision)

    return step


def _rate_limit_headers(request: GatewayRequest) -> Sequence[tuple[str, str]]:
    decision = request.noted(_RATE)
    if decision is None:
        return ()
    return rate_limit_headers(decision)  # type: ignore[arg-type]


def _cache_step(cache: ResponseCache, config: CacheConfig, wait: float) -> Step:
    """The cache's step: it waits only while another request fetches the same
    response (coalescing); a hit or a miss to fetch is decided at once."""

    def step(request: GatewayRequest) -> LocalResponse | Awaitable[LocalResponse | None] | None:
        hit = cache.hit(request, config)
        if hit is not None:
            request.note(_CACHE, "HIT")
            return hit.response or LocalResponse(hit.status, hit.headers, hit.body, hit.lines)
        slot = cache.lookup(request, config, wait=wait)
        if slot.enter_now():
            return _cache_verdict(request, slot)
        return _cache_wait(request, slot)

    return step


async def _cache_wait(request: GatewayRequest, slot: CacheSlot) -> LocalResponse | None:
    await slot.__aenter__()
    return _cache_verdict(request, slot)


def _cache_verdict(request: GatewayRequest, slot: CacheSlot) -> LocalResponse | None:
    hit = slot.hit
    if hit is not None:
        request.note(_CACHE, "HIT")  # (its headers say x-cache: HIT already)
        if hit.response is not None:
            return hit.response
        return LocalResponse(hit.status, hit.headers, hit.body, hit.lines)
    if slot.refusal is not None:
        request.note(_CACHE, "MISS")
        return slot.refusal
    request.note(_CACHE, slot.x_cache)
    request.collector = slot
    return None


def _cache_headers(request: GatewayRequest) -> Sequence[tuple[str, str]]:
    verdict = request.noted(_CACHE)
    return () if verdict is None or verdict == "HIT" else (("x-cache", str(verdict)),)


def _json_response(request: GatewayRequest, status: int, fields: list[tuple[str, str]]) -> bool:
    """Whether a response's body is JSON to rewrite (a JSON content type, not HEAD)."""
    if request.method == "HEAD":
        return False
    content_type = next((v for n, v in fields if n == "content-type"), None)
    encoding = next((v for n, v in fields if n == "content-encoding"), "identity")
    return is_json(content_type) and encoding.strip().lower() in ("", "identity")


def _invalidate(
    cache: ResponseCache,
) -> Callable[[GatewayRequest, int, list[tuple[str, str]]], None]:
    """A successful unsafe request (POST, PUT, …) drops what is stored for its
    target (RFC 9111, 4.4)."""

    def change(request: GatewayRequest, status: int, fields: list[tuple[str, str]]) -> None:
        if request.method not in ("GET", "HEAD", "OPTIONS", "TRACE"):
            cache.invalidate(request, status)

    return change


def _request_transform(config: RequestTransformConfig) -> Callable[[GatewayRequest], None]:
    def change(request: GatewayRequest) -> None:
        headers = request.headers
        for name in config.remove_headers:
            headers.remove(name)
        for name, value in config.set_headers.items():
            headers.set(name, value)
        for name, value in config.add_headers.items():
            headers.add(name, value)
        if config.set_query or config.remove_query:
            fields = [
                (k, v)
                for k, v in parse_qsl(request.query, keep_blank_values=True)
                if k not in config.remove_query and k not in config.set_query
            ]
            fields += config.set_query.items()
            request.query = urlencode(fields)
        json_body = config.json_body
        if json_body is not None and request.body and is_json(headers.get("content-type")):
            changed = transform_json(request.body, json_body)
            if changed is not None:
                request.body = changed

    return change


def _response_transform(
    config: ResponseTransformConfig,
) -> Callable[[GatewayRequest, int, list[tuple[str, str]]], None]:
    removed = frozenset(name.lower() for name in config.remove_headers) | frozenset(
        name.lower() for name in config.set_headers
    )

    def change(request: GatewayRequest, status: int, fields: list[tuple[str, str]]) -> None:
        fields[:] = [(n, v) for n, v in fields if n not in removed]
        fields += ((n.lower(), v) for n, v in config.set_headers.items())
        fields += ((n.lower(), v) for n, v in config.add_headers.items())

    return change


class _Cors:
    """CORS for one route: preflights answered, and the response fields for allowed origins."""

    def __init__(self, config: CorsConfig) -> None:
        self.config = config
        self.any = "*" in config.origins
        self.origins = frozenset(config.origins)
        allow = [("access-control-allow-methods", ", ".join(config.methods))]
        if config.headers:
            allow.append(("access-control-allow-headers", ", ".join(config.headers)))
        if config.max_age is not None:
            allow.append(("access-control-max-age", str(int(config.max_age))))
        self.preflight_fields = tuple(allow)

    def _allowed(self, origin: str | None) -> bool:
        return origin is not None and (self.any or origin in self.origins)

    def _origin_fields(self, origin: str) -> list[tuple[str, str]]:
        config = self.config
        wildcard = self.any and not config.credentials
        fields = [("access-control-allow-origin", "*" if wildcard else origin)]
        if not wildcard:
            fields.append(("vary", "origin"))
        if config.credentials:
            fields.append(("access-control-allow-credentials", "true"))
        return fields

    def preflight(self, request: GatewayRequest) -> LocalResponse | None:
        if request.method != "OPTIONS":
            return None
        headers = request.headers
        origin = headers.get("origin")
        if origin is None or "access-control-request-method" not in headers:
            return None
        if not self._allowed(origin):
            return LocalResponse.error(403, "cors_origin", f"origin {origin!r} is not allowed")
        return LocalResponse(204, (*self._origin_fields(origin), *self.preflight_fields))

    def headers(self, request: GatewayRequest) -> Sequence[tuple[str, str]]:
        origin = request.headers.get("origin")
        if not self._allowed(origin) or request.method == "OPTIONS":
            return ()
        assert origin is not None
        fields = self._origin_fields(origin)
        if self.config.expose_headers:
            fields.append(("access-control-expose-headers", ", ".join(self.config.expose_headers)))
        return fields


#: Header fields no client may send: the consumer's identity is the gateway's to say.
STRIPPED = frozenset(name.lower() for name in IDENTITY_HEADERS)
