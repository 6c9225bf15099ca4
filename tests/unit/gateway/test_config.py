"""The gateway's configuration file: the keys of issue 14, and every problem named."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sidecar.config import UpstreamConfig
from sidecar.gateway.config import (
    MAX_REGEX_LENGTH,
    ConfigError,
    GatewayConfig,
    load_config,
    parse_config,
)
from tests.harness.certs import TestCA


def parse(text: str) -> GatewayConfig:
    return parse_config(textwrap.dedent(text), "gateway.yaml")


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    return caught.value.lines()


def test_the_issue_example_reads(tmp_path: Path) -> None:
    (tmp_path / "gw.pem").write_text("cert")
    (tmp_path / "gw-key.pem").write_text("key")
    config = parse(
        f"""\
        listen: "127.0.0.1:8080"
        tls: {{cert: {tmp_path}/gw.pem, key: {tmp_path}/gw-key.pem}}
        controlplane: {{addresses: ["127.0.0.1:7400"]}}
        admin: "127.0.0.1:8081"
        rate_limit_store: {{url: "redis://127.0.0.1:6379"}}
        routes:
          - name: orders
            match: {{hosts: ["api.example.com"], path_prefix: /api/orders,
                    methods: [GET, POST], headers: {{x-env: prod}}}}
            upstream: orders
            rewrite: {{strip_prefix: /api}}
            timeout: 5s
            plugins:
              rate_limit: {{rate: 100, per: 1s, burst: 20, key: consumer, scope: local}}
              request_transform: {{set_headers: {{x-from: gateway}}, remove_headers: [cookie]}}
              response_transform: {{set_headers: {{x-served-by: eco}}}}
              cache: {{ttl: 30s}}
              cors: {{origins: ["https://app.example.com"]}}
          - name: orders-split
            split: [{{service: orders-v1, weight: 90}}, {{service: orders-v2, weight: 10}}]
            rewrite: {{path_regex: "^/v2/(.*)", replacement: "/\\\\1"}}
        """
    )
    orders, split = config.routes
    assert config.admin == "127.0.0.1:8081"
    assert orders.policy.timeout == 5.0
    assert orders.plugins.names == (
        "rate_limit",
        "request_transform",
        "cache",
        "response_transform",
        "cors",
    )
    assert [(b.service, b.weight) for b in split.backends] == [("orders-v1", 90), ("orders-v2", 10)]
    assert split.rewrite is not None and split.rewrite.replacement == "/\\1"


def test_every_problem_is_listed_with_its_line_and_field() -> None:
    lines = problems(
        """\
        listen: "nowhere"
        routes:
          - name: a
            upstream: svc
            endpoints: ["127.0.0.1:1"]
            plugins: {key_oauth: {}}
          - name: a
            upstream: Bad_Name
          - name: b
            match: {path_regex: "(unclosed"}
            upstream: svc
        """
    )
    assert lines[0] == "gateway.yaml:1: listen: 'nowhere' is not HOST:PORT"
    assert lines[1].startswith(
        "gateway.yaml:6: routes[0].plugins.key_oauth: unknown key 'key_oauth'"
    )
    assert "cors" in lines[1] and "rate_limit" in lines[1]  # the known plugins are named
    assert lines[2].startswith("gateway.yaml:8: routes[1].upstream: 'Bad_Name'")
    assert lines[3].startswith("gateway.yaml:10: routes[2].match.path_regex: '(unclosed'")
    assert len(lines) == 4


def test_cross_checks_are_listed_together() -> None:
    lines = problems(
        """\
        listen: 127.0.0.1:8080
        admin: 127.0.0.1:8080
        routes:
          - name: a
            upstream: svc
            plugins:
              rate_limit: {rate: 5, scope: global, on_store_error: deny}
          - name: a
            match: {path_prefix: /v1}
            rewrite: {strip_prefix: /v2}
            upstream: svc
            endpoints: ["127.0.0.1:9"]
        """
    )
    assert lines == [
        "gateway.yaml:1: controlplane: routes[0] forwards to a registry service: give "
        "controlplane (or fixed endpoints on every route)",
        "gateway.yaml:2: admin: 127.0.0.1:8080 is also the listen address",
        "gateway.yaml:7: routes[0].plugins.rate_limit[0].scope: scope: global needs the "
        "top-level rate_limit_store (a Redis url)",
        "gateway.yaml:8: routes[1].name: 'a' is also the name of routes[0]",
        "gateway.yaml:10: routes[1].rewrite.strip_prefix: '/v2' is not a prefix of every "
        "path the route takes ('/v1')",
    ]


def test_fixed_endpoints_need_no_control_plane() -> None:
    config = parse(
        """\
        routes:
          - {name: a, upstream: svc, endpoints: ["127.0.0.1:9001", "[::1]:9002"]}
          - name: b
            split: [{service: x, endpoints: ["127.0.0.1:9003"]}]
          - {name: c, redirect: {scheme: https}}
        """
    )
    assert config.controlplane is None
    assert config.routes[0].backends[0].endpoints == ("127.0.0.1:9001", "[::1]:9002")


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ("{name: a}", "give one of upstream, split and redirect"),
        (
            "{name: a, upstream: s, redirect: {scheme: https}}",
            "give one of upstream, split and redirect, not upstream and redirect",
        ),
        ("{name: a, split: [{service: s, weight: 0}]}", "the split's weights are all 0"),
        ("{name: a, split: [{service: s}, {service: s}]}", "the split names 's' twice"),
        (
            "{name: a, split: [{service: s}], endpoints: ['127.0.0.1:1']}",
            "endpoints go with upstream",
        ),
        ("{name: a, redirect: {scheme: https}, timeout: 1s}", "a redirect forwards nothing"),
        ("{name: a, upstream: s, timeout: 1s, policy: {timeout: 2s}}", "not both"),
        ("{name: a, redirect: {}}", "give location, or at least one of"),
        (
            "{name: a, redirect: {location: /x, host: h.example}}",
            "give location, or host, not both",
        ),
        ("{name: a, redirect: {location: 'javascript:x'}}", "an absolute http(s) URL or a path"),
        ("{name: a, redirect: {scheme: https, status: 303}}", "301, 302, 307 or 308"),
        ("{name: 'a b', upstream: s}", "is not a route name"),
    ],
)
def test_route_shape(route: str, message: str) -> None:
    lines = problems(f"controlplane: {{}}\nroutes:\n  - {route}\n")
    assert len(lines) == 1
    assert message in lines[0], lines[0]


@pytest.mark.parametrize(
    ("match", "message"),
    [
        ("{path: /a, path_prefix: /b}", "give one of path, path_prefix and path_regex"),
        ("{hosts: ['*']}", "leave hosts out instead"),
        ("{hosts: ['api.example.com:8080']}", "without a port"),
        ("{hosts: ['a..b']}", "is not a host name"),
        ("{path: 'no-slash'}", "a path starts with '/'"),
        ("{path: '/a?b=1'}", "match the query with query"),
        ("{methods: ['GE T']}", "is not an HTTP method"),
        ("{headers: {'bad name': x}}", "is not a header field name"),
        ('{headers: {x-a: "v\\r\\nx-b: 1"}}', "without CR, LF or NUL"),
        (f"{{path_regex: '{'a' * (MAX_REGEX_LENGTH + 1)}'}}", "at most 1024 characters"),
    ],
)
def test_match_conditions(match: str, message: str) -> None:
    lines = problems(f"controlplane: {{}}\nroutes:\n  - {{name: a, upstream: s, match: {match}}}\n")
    assert len(lines) == 1
    assert message in lines[0], lines[0]


def test_match_is_normalised() -> None:
    (route,) = parse(
        """\
        controlplane: {}
        routes:
          - name: a
            upstream: s
            match: {hosts: [API.Example.COM, "*.Tenants.Example.com."], path_prefix: /api/,
                    methods: [get, Get, post], headers: {X-Env: prod}}
        """
    ).routes
    assert route.match.hosts == ("api.example.com", "*.tenants.example.com")
    assert route.match.path_prefix == "/api"
    assert route.match.methods == ("GET", "POST")
    assert route.match.headers == {"x-env": "prod"}


def test_route_policy_is_the_top_level_one_with_the_routes_keys() -> None:
    config = parse(
        """\
        controlplane: {}
        policy: {retries: 0, timeout: 20s, balancer: least_connections, max_connections: 50}
        routes:
          - {name: a, upstream: s}
          - name: b
            upstream: s
            timeout: 3s
            policy: {retries: 4, circuit_breaker: {max_requests: 9}}
          - {name: c, split: [{service: x, namespace: prod}], namespace: dev}
        """
    )
    a, b, c = config.routes
    assert (a.policy.retries, a.policy.timeout, a.policy.balancer) == (0, 20.0, "least_connections")
    assert (b.policy.retries, b.policy.timeout, b.policy.circuit_breaker.max_requests) == (
        4,
        3.0,
        9,
    )
    assert config.policy.max_connections == 50
    upstream = b.upstream_config(b.backends[0])
    assert isinstance(upstream, UpstreamConfig)
    assert (upstream.key, upstream.protocol, upstream.retries) == (("default", "s"), "http", 4)
    assert c.upstream_config(c.backends[0]).key == ("prod", "x")


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (
            "{head_timeout: 5s}",
            "head_timeout: the listener's limits, set in the top-level policy only",
        ),
        ("{listen: '127.0.0.1:1'}", "'listen' is not a policy key"),
        ("{service: x}", "'service' is not a policy key"),
        ("{protocol: grpc}", "'protocol' is not a policy key"),
        ("{balancer: fastest}", "unknown balancer 'fastest'"),
    ],
)
def test_route_policy_problems(policy: str, message: str) -> None:
    lines = problems(
        f"controlplane: {{}}\nroutes:\n  - {{name: a, upstream: s, policy: {policy}}}\n"
    )
    assert len(lines) == 1
    assert message in lines[0], lines[0]


def test_route_policy_merged_with_the_top_level_one_is_checked() -> None:
    lines = problems(
        """\
        controlplane: {}
        policy: {balancer: ring_hash, vnodes_per_weight: 10}
        routes:
          - {name: a, upstream: s, policy: {balancer: round_robin}}
        """
    )
    assert lines == [
        "gateway.yaml:4: routes[0].policy: with the top-level policy: vnodes_per_weight: "
        "the round_robin balancer does not take this option"
    ]


@pytest.mark.parametrize(
    ("rewrite", "message"),
    [
        ("{strip_prefix: /a, replacement: x}", "not both"),
        ("{path_regex: '^/a'}", "give strip_prefix, or path_regex and replacement"),
        ("{path_regex: '^/(a)', replacement: '/\\2'}", "refers to group 2"),
        ("{path_regex: '^/(?P<x>a)', replacement: '/\\g<y>'}", "refers to group 'y'"),
        ("{strip_prefix: /}", "stripping '/' changes nothing"),
    ],
)
def test_rewrite_problems(rewrite: str, message: str) -> None:
    lines = problems(
        f"controlplane: {{}}\nroutes:\n  - {{name: a, upstream: s, rewrite: {rewrite}}}\n"
    )
    assert len(lines) == 1
    assert message in lines[0], lines[0]


@pytest.mark.parametrize(
    ("plugins", "message"),
    [
        ("{request_transform: {set_headers: {content-length: '0'}}}", "frames the message"),
        ("{request_transform: {add_headers: {transfer-encoding: chunked}}}", "frames the message"),
        ("{request_transform: {remove_headers: [host]}}", "cannot be removed"),
        ('{response_transform: {set_headers: {x-a: "1\\r\\nset-cookie: a"}}}', "without CR, LF"),
        ("{request_transform: {json_body: {rename: {'a..b': c}}}}", "a dotted path"),
        ("{request_transform: {max_body: 0}}", "greater than or equal to 1"),
        ("{cors: {origins: ['*'], credentials: true}}", "browsers refuse '*'"),
        ("{cors: {origins: ['*', 'https://a.example']}}", "give it alone"),
        ("{cors: {origins: ['null']}}", "sandboxed pages"),
        ("{cors: {origins: ['app.example.com']}}", "is not an origin"),
        (
            "{cache: {ttl: 1s, max_entry_bytes: 2MiB}}",
            "larger than the top-level cache.max_entry_bytes",
        ),
    ],
)
def test_plugin_problems(plugins: str, message: str) -> None:
    lines = problems(
        f"controlplane: {{}}\nroutes:\n  - {{name: a, upstream: s, plugins: {plugins}}}\n"
    )
    assert len(lines) == 1
    assert message in lines[0], lines[0]


def test_transform_and_cors_read() -> None:
    (route,) = parse(
        """\
        controlplane: {}
        routes:
          - name: a
            upstream: s
            plugins:
              request_transform:
                set_headers: {X-From: gateway}
                add_headers: {x-tag: a}
                remove_headers: [Cookie]
                set_query: {v: "2"}
                remove_query: [debug]
                json_body: {set: {meta.source: gw, n: 1}, rename: {old: new}, remove: [secret]}
                max_body: 65536
              cors: {origins: ["HTTPS://App.Example.com:443/"], credentials: true, max_age: 10m}
        """
    ).routes
    transform = route.plugins.request_transform
    assert transform is not None and transform.json_body is not None
    assert transform.set_headers == {"x-from": "gateway"}
    assert transform.remove_headers == ("cookie",)
    assert transform.json_body.set == {"meta.source": "gw", "n": 1}
    cors = route.plugins.cors
    assert cors is not None
    assert (cors.origins, cors.max_age) == (("https://app.example.com",), 600.0)


def test_tls_files_must_exist(tmp_path: Path) -> None:
    lines = problems(f"tls: {{cert: {tmp_path}/none.pem, key: {tmp_path}/none-key.pem}}\n")
    assert lines == [
        f"gateway.yaml:1: tls.cert: {tmp_path}/none.pem: no such file",
        f"gateway.yaml:1: tls.key: {tmp_path}/none-key.pem: no such file",
    ]


def test_load_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("routes:\n  - {name: a, upstream: s, endpoints: [nowhere]}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (f"{path}:2: routes[0].endpoints[0]: 'nowhere' is not HOST:PORT")
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read"):
        load_config(path.with_name("missing.yaml"))


def test_authentication_plugins_and_consumers_read(tmp_path: Path) -> None:
    ca = TestCA.create(tmp_path)
    (tmp_path / "gw.pem").write_text("cert")
    (tmp_path / "gw-key.pem").write_text("key")
    config = parse(
        f"""\
        tls: {{cert: {tmp_path}/gw.pem, key: {tmp_path}/gw-key.pem}}
        consumers:
          - {{name: alice, groups: [ops], api_keys: ["k-alice-0001"]}}
          - {{name: bob, hmac_secrets: {{bob-key: "a secret of sixteen bytes"}}}}
        routes:
          - name: a
            upstream: s
            endpoints: ["127.0.0.1:9"]
            plugins:
              key_auth: {{header: x-api-key}}
              mtls: {{ca_file: {ca.cert_file}}}
              hmac: {{}}
              allow: {{groups: [ops]}}
          - name: b
            upstream: s
            endpoints: ["127.0.0.1:9"]
            plugins: {{mtls: {{ca_file: {ca.cert_file}}}}}
        """
    )
    assert [c.name for c in config.consumers] == ["alice", "bob"]
    assert config.routes[0].plugins.names == ("key_auth", "mtls", "hmac", "allow")
    assert config.client_ca_files == (ca.cert_file,)


def test_unknown_plugin_names_the_known_ones() -> None:
    (line,) = problems(
        "controlplane: {}\nroutes:\n  - {name: a, upstream: s, plugins: {oauth2: {}}}\n"
    )
    assert line == (
        "gateway.yaml:3: routes[0].plugins.oauth2: unknown key 'oauth2' (expected one of: "
        "allow, cache, cors, hmac, jwt, key_auth, mtls, rate_limit, request_transform, "
        "response_transform)"
    )


def test_consumers_and_their_credentials_are_unique(tmp_path: Path) -> None:
    ca = TestCA.create(tmp_path)
    lines = problems(
        f"""\
        controlplane: {{}}
        consumers:
          - {{name: alice, api_keys: ["k-shared-0001"]}}
          - {{name: alice, api_keys: ["k-alice-0002"]}}
          - {{name: bob, api_keys: ["k-shared-0001"]}}
        routes:
          - {{name: a, upstream: s, plugins: {{mtls: {{ca_file: {ca.cert_file}}}}}}}
        """
    )
    assert lines == [
        "gateway.yaml:4: consumers[1].name: 'alice' is already the name of consumers[0]",
        "gateway.yaml:5: consumers[2].api_keys: one of its keys is also a key of consumers[0]",
        "gateway.yaml:7: routes[0].plugins.mtls: client certificates come over TLS: give the "
        "top-level tls",
    ]
    assert "k-shared" not in "".join(lines)  # keys are never echoed


def test_a_redirect_route_under_a_top_level_policy_takes_no_policy_and_checks_again() -> None:
    config = parse(
        """\
        policy: {timeout: 3s, retries: 2}
        routes:
          - {name: a, upstream: svc, endpoints: ["127.0.0.1:9001"]}
          - {name: home, redirect: {scheme: https}}
        """
    )
    forward, redirect = config.routes
    assert "timeout" in forward.policy.model_fields_set
    assert redirect.policy.model_fields_set == set()
    # What the gateway does when routes stored in the control plane join the file's.
    again = config.with_routes([*config.routes])
    assert [route.name for route in again.routes] == ["a", "home"]
