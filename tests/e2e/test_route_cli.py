"""``eco route`` against a real ``eco controlplane`` process: apply a routes
file (checked with the gateway's route model first), list, get, prune within
a group, delete, the exit codes, and routes kept across a restart."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.e2e.test_cli import Eco
from tests.harness.controlplane import ControlPlaneProcess

pytestmark = pytest.mark.e2e

ROUTES = """\
routes:
  - name: orders
    match: {hosts: ["api.example.com"], path_prefix: /api/orders, methods: [GET, POST]}
    upstream: orders
    rewrite: {strip_prefix: /api}
    timeout: 5s
  - name: checkout
    match: {path_prefix: /checkout}
    split: [{service: checkout-v1, weight: 90}, {service: checkout-v2, weight: 10}]
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_apply_list_get_delete(sqlite_plane: ControlPlaneProcess, tmp_path: Path) -> None:
    eco = Eco(sqlite_plane.address)
    routes = write(tmp_path, "routes.yaml", ROUTES)
    out = eco.ok("route", "apply", "-f", routes)
    assert "created route orders" in out and "created route checkout" in out
    assert "2 created, 0 updated, 0 unchanged, 0 deleted" in out
    # The same file again changes nothing.
    again = eco.json("route", "apply", "-f", routes)
    assert (again["unchanged"], again["created"]) == (["orders", "checkout"], [])

    table = eco.ok("route", "list")
    assert table.splitlines()[0].split() == ["NAME", "MATCH", "TARGET", "GROUP", "REVISION"]
    assert "api.example.com/api/orders GET,POST" in table
    assert "split checkout-v1:90,checkout-v2:10" in table
    listed = eco.json("route", "list")
    assert [r["name"] for r in listed["routes"]] == ["checkout", "orders"]
    orders = listed["routes"][1]
    assert orders["spec"] == {
        "name": "orders",
        "match": {
            "hosts": ["api.example.com"],
            "path_prefix": "/api/orders",
            "methods": ["GET", "POST"],
        },
        "upstream": "orders",
        "rewrite": {"strip_prefix": "/api"},
        "timeout": "5s",
    }
    # get prints the route in the file's syntax: it applies as it is.
    shown = eco.ok("route", "get", "checkout")
    assert shown.startswith("# group: -, revision ")
    spec = yaml.safe_load(shown)
    assert spec["split"] == [
        {"service": "checkout-v1", "weight": 90},
        {"service": "checkout-v2", "weight": 10},
    ]
    copy = write(tmp_path, "copy.yaml", yaml.safe_dump({"routes": [spec]}))
    assert eco.json("route", "apply", "-f", copy)["unchanged"] == ["checkout"]

    assert "deleted route orders" in eco.ok("route", "delete", "orders")
    missing = eco("route", "delete", "orders")
    assert missing.returncode == 1
    assert "not found: no route 'orders'" in missing.stderr
    assert eco("route", "get", "orders").returncode == 1

    # Routes are kept in the store: a restarted control plane has them.
    sqlite_plane.stop()
    sqlite_plane.start()
    assert [r["name"] for r in Eco(sqlite_plane.address).json("route", "list")["routes"]] == [
        "checkout"
    ]


def test_a_bad_file_is_refused_whole_with_every_problem_and_its_line(
    sqlite_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    eco = Eco(sqlite_plane.address)
    bad = write(
        tmp_path,
        "bad.yaml",
        "routes:\n"
        "  - name: fine\n"
        "    upstream: fine\n"
        "  - name: orders\n"
        "    upstrem: orders\n"
        "  - name: both\n"
        "    upstream: a\n"
        "    redirect: {location: 'https://example.com/'}\n",
    )
    result = eco("route", "apply", "-f", bad)
    assert result.returncode == 2, result
    assert "2 problem(s) in the routes; nothing was applied" in result.stderr
    assert "bad.yaml:5: routes[1].upstrem: unknown key 'upstrem'" in result.stderr
    assert "bad.yaml:6: routes[2]: give one of upstream, split and redirect" in result.stderr
    assert eco.ok("route", "list").strip() == "no routes"
    other = write(tmp_path, "other.yaml", "listen: 127.0.0.1:8080\nroutes: []\n")
    result = eco("route", "apply", "-f", other)
    assert result.returncode == 2
    assert "listen: a routes file holds routes only" in result.stderr


def test_prune_deletes_the_groups_routes_the_file_leaves_out(
    sqlite_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    eco = Eco(sqlite_plane.address)
    eco.ok("route", "apply", "-f", write(tmp_path, "all.yaml", ROUTES), "--group", "shop")
    eco.ok(
        "route",
        "apply",
        "-f",
        write(tmp_path, "other.yaml", "routes:\n  - {name: users, upstream: users}\n"),
    )
    only = write(tmp_path, "only.yaml", "routes:\n  - {name: orders, upstream: orders-v2}\n")
    out = eco.json("route", "apply", "-f", only, "--group", "shop", "--prune")
    assert (out["updated"], out["deleted"]) == (["orders"], ["checkout"])
    listed = eco.json("route", "list")["routes"]
    assert [(r["name"], r["group"]) for r in listed] == [("orders", "shop"), ("users", "")]
