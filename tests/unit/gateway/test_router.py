"""The gateway's router: which route takes a request, splits, rewrites, redirects."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
import yaml

from sidecar.gateway.config import GatewayConfig, RouteConfig, parse_config
from sidecar.gateway.request import Headers
from sidecar.gateway.router import (
    MAX_KNOWN,
    Router,
    not_found,
    redirect_location,
    redirect_response,
    rewrite_path,
)


def routes(*specs: dict[str, Any]) -> list[RouteConfig]:
    """Routes as a file would give them (fixed endpoints: no control plane needed)."""
    items = []
    for i, spec in enumerate(specs):
        item = {"name": f"r{i}", "upstream": "svc", "endpoints": ["127.0.0.1:9"], **spec}
        if "split" in spec or "redirect" in spec:
            item.pop("upstream")
            item.pop("endpoints")
        items.append(item)
    config: GatewayConfig = parse_config(yaml.safe_dump({"routes": items}))
    return list(config.routes)


def name(
    router: Router, path: str, host: str = "api.example.com", method: str = "GET", **kw: Any
) -> str | None:
    headers = Headers(kw.pop("headers", {}).items())
    found = router.match(host, path, method, headers, kw.pop("query", ""))
    return found.name if found else None


def test_exact_path_beats_prefix_beats_regex_beats_catch_all() -> None:
    router = Router(
        routes(
            {},
            {"match": {"path_regex": "/api/.*"}},
            {"match": {"path_prefix": "/api"}},
            {"match": {"path_prefix": "/api/orders"}},
            {"match": {"path": "/api/orders/1"}},
        )
    )
    assert name(router, "/api/orders/1") == "r4"
    assert name(router, "/api/orders/2") == "r3"
    assert name(router, "/api/users") == "r2"
    assert name(router, "/other") == "r0"


def test_prefix_takes_whole_segments() -> None:
    router = Router(
        routes({"match": {"path_prefix": "/api/"}}, {"match": {"path_prefix": "/admin"}})
    )
    assert name(router, "/api") == "r0"
    assert name(router, "/api/") == "r0"
    assert name(router, "/api/x/y") == "r0"
    assert name(router, "/apix") is None
    assert name(router, "/administrator") is None
    assert name(router, "/admin/users") == "r1"


def test_prefix_lookup_reaches_deep_paths_and_short_ones() -> None:
    router = Router(
        routes({"match": {"path_prefix": "/a/b/c/d"}}, {"match": {"path_prefix": "/a"}})
    )
    assert name(router, "/a/b/c/d/e/f/g/" + "x/" * 5000) == "r0"
    assert name(router, "/a/b/c") == "r1"
    assert name(router, "/a") == "r1"
    assert name(router, "/") is None


def test_regex_is_anchored_to_the_whole_path() -> None:
    router = Router(routes({"match": {"path_regex": "/v[0-9]+/items"}}))
    assert name(router, "/v2/items") == "r0"
    assert name(router, "/v2/items/3") is None
    assert name(router, "/x/v2/items") is None


def test_exact_host_beats_wildcard_beats_any_host() -> None:
    router = Router(
        routes(
            {"match": {"path": "/x"}},
            {"match": {"hosts": ["*.example.com"]}},
            {"match": {"hosts": ["*.eu.example.com"]}},
            {"match": {"hosts": ["api.eu.example.com"]}},
        )
    )
    assert name(router, "/x", host="api.eu.example.com") == "r3"
    assert name(router, "/x", host="web.eu.example.com") == "r2"
    assert name(router, "/x", host="a.b.example.com") == "r1"
    assert name(router, "/x", host="example.com") == "r0"  # the wildcard needs a label before
    assert name(router, "/x", host="other.org") == "r0"
    assert name(router, "/y", host="other.org") is None


def test_a_host_without_a_match_falls_through_to_less_specific_hosts() -> None:
    router = Router(
        routes(
            {"match": {"hosts": ["api.example.com"], "path": "/only"}},
            {"match": {"path_prefix": "/"}},
        )
    )
    assert name(router, "/only") == "r0"
    assert name(router, "/else") == "r1"


def test_trailing_dot_of_a_host_is_ignored() -> None:
    router = Router(routes({"match": {"hosts": ["api.example.com"]}}))
    assert name(router, "/", host="api.example.com.") == "r0"


def test_methods_headers_and_query_narrow_a_route_and_more_conditions_win() -> None:
    router = Router(
        routes(
            {"match": {"path_prefix": "/api"}},
            {"match": {"path_prefix": "/api", "methods": ["post"]}},
            {"match": {"path_prefix": "/api", "headers": {"X-Env": "canary"}, "query": {"v": "2"}}},
        )
    )
    assert name(router, "/api/x") == "r0"
    assert name(router, "/api/x", method="POST") == "r1"
    assert name(router, "/api/x", headers={"x-env": "canary"}) == "r0"
    assert name(router, "/api/x", headers={"x-env": "canary"}, query="a=1&v=2") == "r2"
    assert name(router, "/api/x", headers={"x-env": "canary"}, query="v=%32") == "r2"
    assert name(router, "/api/x", method="POST", headers={"x-env": "canary"}, query="v=2") == "r2"


def test_a_header_condition_matches_any_of_the_fields_values() -> None:
    router = Router(routes({"match": {"headers": {"x-tier": "gold"}}}))
    headers = Headers([("X-Tier", "silver"), ("x-tier", "gold")])
    assert router.match("h", "/", "GET", headers) is not None
    assert router.match("h", "/", "GET", Headers([("x-tier", "Gold")])) is None


def test_ties_go_to_the_first_route_in_the_file() -> None:
    router = Router(routes({"match": {"path_prefix": "/a"}}, {"match": {"path_prefix": "/a/"}}))
    assert name(router, "/a/b") == "r0"


def test_a_route_on_several_hosts_is_found_under_each() -> None:
    router = Router(routes({"match": {"hosts": ["a.example.com", "*.example.org"]}}))
    assert name(router, "/", host="a.example.com") == "r0"
    assert name(router, "/", host="x.example.org") == "r0"
    assert name(router, "/", host="b.example.com") is None


def test_split_follows_the_weights() -> None:
    config = routes(
        {
            "split": [
                {"service": "v1", "weight": 90, "endpoints": ["127.0.0.1:1"]},
                {"service": "v2", "weight": 0, "endpoints": ["127.0.0.1:2"]},
                {"service": "v3", "weight": 10, "endpoints": ["127.0.0.1:3"]},
            ]
        }
    )
    points = iter(i / 1000 for i in range(1000))
    router = Router(config, random=lambda: next(points))
    chosen: Counter[str] = Counter()
    for _ in range(1000):
        found = router.match("h", "/", "GET", Headers())
        assert found is not None and found.backend is not None
        chosen[found.backend.service] += 1
    assert chosen == {"v1": 900, "v3": 100}


def test_a_plain_upstream_is_its_only_backend() -> None:
    found = Router(routes({})).match("h", "/", "GET", Headers())
    assert found is not None and found.backend is not None
    assert (found.backend.service, found.backend.endpoints) == ("svc", ("127.0.0.1:9",))


@pytest.mark.parametrize(
    ("rewrite", "path", "expected"),
    [
        ({"strip_prefix": "/api"}, "/api/orders/1", "/orders/1"),
        ({"strip_prefix": "/api"}, "/api", "/"),
        ({"strip_prefix": "/api/"}, "/api/", "/"),
        ({"strip_prefix": "/api"}, "/apix/1", "/apix/1"),
        ({"path_regex": "^/v1/(\\w+)", "replacement": "/\\1/v1"}, "/v1/users/7", "/users/v1/7"),
        ({"path_regex": "^/old", "replacement": ""}, "/old/x", "/x"),
        ({"path_regex": "^/(?P<rest>.*)", "replacement": "/app/\\g<rest>"}, "/a", "/app/a"),
    ],
)
def test_rewrite_path(rewrite: dict[str, str], path: str, expected: str) -> None:
    (route,) = routes({"rewrite": rewrite})
    assert rewrite_path(route, path) == expected


def test_redirects() -> None:
    to_https, to_path, to_url, moved = routes(
        {"redirect": {"scheme": "https", "status": 308}},
        {"redirect": {"path": "/new"}},
        {"redirect": {"location": "https://docs.example.com/", "status": 301}},
        {
            "redirect": {"host": "new.example.com", "port": 8443, "keep_query": False},
            "rewrite": {"strip_prefix": "/old"},
        },
    )
    assert redirect_location(to_https, "http", "a.example.com", "/x y", "q=1") == (
        "https://a.example.com/x%20y?q=1"
    )
    assert redirect_location(to_path, "http", "a.example.com", "/x", "q=1") == "/new?q=1"
    assert redirect_location(to_url, "http", "a", "/x", "q=1") == "https://docs.example.com/"
    assert redirect_location(moved, "https", "a", "/old/p", "q=1") == (
        "https://new.example.com:8443/p"
    )
    response = redirect_response(to_https, "http", "a", "/", "")
    assert (response.status, dict(response.headers)["location"]) == (308, "https://a/")
    found = Router([to_https]).match("a", "/", "GET", Headers())
    assert found is not None and found.backend is None
    assert redirect_response(to_path, "http", "a", "/", "").status == 302


def test_not_found_is_json() -> None:
    response = not_found()
    assert response.status == 404
    assert json.loads(response.body)["error"] == "no_route"
    assert ("content-type", "application/json") in response.headers


def test_many_routes_each_found() -> None:
    specs = [
        {"match": {"hosts": [f"h{i % 50}.example.com"], "path_prefix": f"/p{i}"}}
        for i in range(2000)
    ]
    router = Router(routes(*specs))
    for i in range(0, 2000, 97):
        assert name(router, f"/p{i}/x", host=f"h{i % 50}.example.com") == f"r{i}"
    assert name(router, "/p1/x", host="h2.example.com") is None


def test_routes_found_by_host_and_path_alone_stay_right_when_remembered() -> None:
    # (no route has a method, header or query condition: the router remembers
    # what it found, for more pairs than it keeps)
    router = Router(
        routes(
            {"match": {"hosts": ["a.example.com"], "path_prefix": "/x"}},
            {"match": {"path_prefix": "/"}},
        )
    )
    for _ in range(2):
        for i in range(MAX_KNOWN + 10):
            host = "a.example.com" if i % 2 else f"h{i}.example.com"
            found = router.match(host, f"/x/{i}", "GET", Headers())
            assert found is not None and found.name == ("r0" if i % 2 else "r1")
        assert router.match("a.example.com", "/y", "GET", Headers()) is not None
        assert router.match("a.example.com", "/x", "GET", Headers()).name == "r0"  # type: ignore[union-attr]
