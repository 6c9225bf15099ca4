"""``eco gateway --check``: the real console script validates a file and prints its routes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ECO = str(Path(sys.executable).with_name("eco"))


def eco(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ECO, *args], capture_output=True, text=True, timeout=30, check=False)


GOOD = """\
listen: "127.0.0.1:8080"
controlplane: {addresses: ["127.0.0.1:7400"]}
routes:
  - name: orders
    match: {hosts: [api.example.com], path_prefix: /api/orders, methods: [GET, POST],
            headers: {x-env: prod}}
    upstream: orders
    rewrite: {strip_prefix: /api}
    timeout: 5s
    plugins:
      rate_limit: {rate: 100, per: 1s}
      cors: {origins: ["https://app.example.com"]}
  - name: canary
    match: {path_regex: "/v[0-9]+/items"}
    split: [{service: items-v1, weight: 90}, {service: items-v2, weight: 10}]
  - name: old-docs
    match: {hosts: ["*.example.org"], path: /docs}
    redirect: {location: "https://docs.example.com/", status: 301}
"""

BAD = """\
listen: "127.0.0.1:8080"
routes:
  - name: a
    upstream: svc
    plugins: {key_oauth: {}}
  - name: a
    split: [{service: x, weight: 0}]
  - name: b
    upstream: svc
    plugins: {rate_limit: {rate: 5, scope: global, on_store_error: deny}}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_check_prints_the_routes(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    done = eco("gateway", "--check", "--config", str(path))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == (
        f"{path}: ok — http on 127.0.0.1:8080, 3 route(s), control plane 127.0.0.1:7400"
    )
    assert lines[1].split() == [
        "NAME", "HOSTS", "PATH", "METHODS", "IF", "TARGET", "REWRITE", "PLUGINS"
    ]  # fmt: skip
    assert lines[2].split() == [
        "orders", "api.example.com", "/api/orders/*", "GET,POST", "x-env=prod", "orders",
        "strip", "/api", "rate_limit,cors",
    ]  # fmt: skip
    assert "items-v1 90, items-v2 10" in lines[3]
    assert "redirect 301 https://docs.example.com/" in lines[4]


def test_check_json_is_for_scripts(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    done = eco("-o", "json", "gateway", "--check", "--config", str(path))
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert (data["ok"], data["listen"], data["controlplane"]) == (
        True,
        "127.0.0.1:8080",
        ["127.0.0.1:7400"],
    )
    orders, canary, docs = data["routes"]
    assert orders == {
        "name": "orders",
        "hosts": ["api.example.com"],
        "path": "/api/orders/*",
        "methods": ["GET", "POST"],
        "headers": {"x-env": "prod"},
        "query": {},
        "target": "orders",
        "rewrite": "strip /api",
        "timeout": 5.0,
        "plugins": ["rate_limit", "cors"],
    }
    assert canary["path"] == "~/v[0-9]+/items"
    assert docs["timeout"] is None


def test_check_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, BAD)
    done = eco("gateway", "--check", "--config", str(path))
    assert done.returncode == 2
    assert done.stdout == ""
    problems = done.stderr.splitlines()
    assert problems[0].startswith(f"eco: {path}:5: routes[0].plugins.key_oauth: unknown key")
    assert "expected one of: allow, cache, cors, hmac, jwt, key_auth, mtls" in problems[0]
    assert (
        problems[1] == f"eco: {path}:6: routes[1]: the split's weights are all 0: give one a weight"
    )
    assert len(problems) == 2  # the cross-checks come once the routes themselves are right

    path.write_text(BAD.replace("weight: 0", "weight: 1").replace("key_oauth", "cors"))
    done = eco("-o", "json", "gateway", "--check", "--config", str(path))
    assert done.returncode == 2
    data = json.loads(done.stdout)
    assert data["ok"] is False
    assert data["problems"] == [
        {"line": 5, "field": "routes[0].plugins.cors.origins", "message": "required"}
    ]
    path.write_text(
        BAD.replace("weight: 0", "weight: 1").replace("key_oauth: {}", "cors: {origins: ['*']}")
    )
    done = eco("gateway", "--check", "--config", str(path))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"eco: {path}:1: controlplane: routes[0] forwards to a registry service: give "
        "controlplane (or fixed endpoints on every route)",
        f"eco: {path}:6: routes[1].name: 'a' is also the name of routes[0]",
        f"eco: {path}:10: routes[2].plugins.rate_limit[0].scope: scope: global needs the "
        "top-level rate_limit_store (a Redis url)",
    ]


def test_check_of_a_missing_file(tmp_path: Path) -> None:
    done = eco("gateway", "--check", "--config", str(tmp_path / "none.yaml"))
    assert done.returncode == 2
    assert done.stderr.startswith(f"eco: {tmp_path / 'none.yaml'}: cannot read:")
