"""Route plans built from a configuration: what each route runs, and what a
change of routes carries over (forwardings, JWKS caches)."""

from __future__ import annotations

from sidecar.gateway.auth import ConsumerIndex
from sidecar.gateway.cache import ResponseCache
from sidecar.gateway.config import GatewayConfig, parse_config
from sidecar.gateway.plugins import RoutePlans
from sidecar.gateway.ratelimit import LocalBuckets
from sidecar.proxy._target import Target

CONFIG = """
routes:
  - name: a
    match: {path_prefix: /a}
    upstream: app
    endpoints: ["127.0.0.1:9001"]
    plugins: {jwt: {jwks_url: "http://127.0.0.1:1/jwks.json"}}
  - name: b
    match: {path_prefix: /b}
    upstream: app
    endpoints: ["127.0.0.1:9001"]
    plugins: {jwt: {jwks_url: "http://127.0.0.1:1/jwks.json"}}
  - name: c
    match: {path_prefix: /c}
    upstream: other
    endpoints: ["127.0.0.1:9002"]
"""


def plans(config: GatewayConfig, previous: RoutePlans | None = None) -> RoutePlans:
    def target(route, backend):  # type: ignore[no-untyped-def]
        host, _, port = backend.endpoints[0].rpartition(":")
        return Target.fixed(backend.service, route.upstream_config(backend), [(host, int(port))])

    return RoutePlans(
        config,
        targets=target,
        consumers=ConsumerIndex(config.consumers),
        cache=ResponseCache(config.cache),
        buckets=LocalBuckets(),
        previous=previous,
    )


def test_routes_with_one_jwks_url_share_one_cache() -> None:
    first = plans(parse_config(CONFIG))
    assert len(first._jwks) == 1


def test_a_change_of_routes_keeps_what_did_not_change() -> None:
    config = parse_config(CONFIG)
    first = plans(config)
    cache = next(iter(first._jwks.values()))
    fw_c = first.forwarding("c", ("default", "other"))
    # Route a goes; b and c stay as they were.
    second = plans(config.with_routes(config.routes[1:]), previous=first)
    assert next(iter(second._jwks.values())) is cache  # handed on: not fetched again
    assert first._jwks == {}  # the old plans no longer own it (their close leaves it)
    assert second.forwarding("c", ("default", "other")) is fw_c  # its pool and target carry on
    # A changed policy makes a new forwarding.
    changed = config.routes[2].model_copy(
        update={"policy": config.routes[2].policy.model_copy(update={"retries": 3})}
    )
    third = plans(config.with_routes([config.routes[1], changed]), previous=second)
    assert third.forwarding("c", ("default", "other")) is not fw_c
