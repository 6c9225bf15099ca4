"""``eco apply``, ``eco diff`` and ``eco export`` against real ``eco
controlplane`` processes: create, no changes, update, diff exit codes, prune
of apply's own objects only, a concurrent edit reported as a conflict, and
export → apply into a fresh control plane → export giving the same text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from eco._apply import execute, make_plan
from eco._documents import load_documents
from eco._settings import Settings
from tests.e2e.test_cli import Eco
from tests.harness.controlplane import ControlPlaneProcess

pytestmark = pytest.mark.e2e

SERVICES = """\
apiVersion: ecosystem/v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  instances:
    - {id: web-1, address: 10.0.0.1, port: 8080, zone: eu-1a, tags: [v2], metadata: {team: a}}
    - {id: web-2, address: 10.0.0.2, port: 8080, weight: 5}
---
apiVersion: ecosystem/v1
kind: Service
metadata: {name: db}
spec:
  instances:
    - {id: db-1, address: db.internal, port: 5432}
"""

OTHERS = """\
apiVersion: ecosystem/v1
kind: Platform
metadata: {name: aws-eu, labels: {env: prod}}
spec: {kind: cloud, provider: aws, regions: [eu-west-1], description: Shop in the EU}
---
apiVersion: ecosystem/v1
kind: Dataset
metadata: {name: orders-eu}
spec:
  location: s3://orders/eu
  platform: aws-eu
  owner: team-a
  schema: {type: object, properties: {id: {type: string}}}
  tags: [pii]
---
apiVersion: ecosystem/v1
kind: Intention
metadata: {name: web-to-db, labels: {owner: team-a}}
spec: {source: shop/web, destination: default/db, action: allow, description: reads}
---
apiVersion: ecosystem/v1
kind: Route
metadata: {name: orders}
spec:
  match: {hosts: [api.example.com], path_prefix: /api/orders}
  upstream: orders
  timeout: 5s
---
apiVersion: ecosystem/v1
kind: SyncJob
metadata: {name: nightly, labels: {tier: gold}}
spec:
  source: file:///srv/a
  destination: file:///srv/b
  on_node: node-1
  every: 1d
  transfers: 4
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


@pytest.fixture
def config(tmp_path: Path) -> Path:
    directory = tmp_path / "config"
    directory.mkdir()
    write(directory, "services.yaml", SERVICES)
    write(directory, "others.yml", OTHERS)
    return directory


def test_apply_reapply_update_and_diff(sqlite_plane: ControlPlaneProcess, config: Path) -> None:
    eco = Eco(sqlite_plane.address)
    # diff before anything exists: everything would be created (exit 1).
    before = eco("diff", "-f", str(config))
    assert before.returncode == 1, before.stderr
    assert "+++ desired/Service/shop/web" in before.stdout
    assert "+  name: nightly" in before.stdout

    out = eco.ok("apply", "-f", str(config))
    for line in (
        "created Service shop/web/web-1",
        "created Service shop/web/web-2",
        "created Service default/db/db-1",
        "created Intention shop/web -> db",
        "created Route orders",
        "created SyncJob nightly",
        "created Platform aws-eu",
        "created Dataset orders-eu",
    ):
        assert line in out, out
    assert "8 created" in out
    assert out.index("Platform aws-eu") < out.index("Dataset orders-eu")

    # The same files again: nothing changes, and diff says so (exit 0, no output).
    assert eco.ok("apply", "-f", str(config)).strip() == "no changes (8 unchanged)"
    same = eco("diff", "-f", str(config))
    assert (same.returncode, same.stdout) == (0, ""), same.stderr

    # The registry holds what the files say, with apply's marks.
    detail = eco.json("service", "get", "web", "--namespace", "shop")
    web1 = next(i for i in detail["instances"] if i["id"] == "web-1")
    assert web1["metadata"] == {
        "team": "a",
        "eco.apply/managed": "true",
        "eco.apply/set": "default",
    }
    assert web1["liveness"] == "PERSISTENT"

    # An edit: diff shows it, apply updates only that object.
    services = config / "services.yaml"
    services.write_text(SERVICES.replace("port: 5432", "port: 5433"))
    changed = eco("diff", "-f", str(config))
    assert changed.returncode == 1
    assert "-    port: 5432\n+    port: 5433" in changed.stdout, changed.stdout
    assert "web" not in changed.stdout.replace("Service/default/db", "")
    result = eco.json("apply", "-f", str(config))
    assert result["summary"] == {"unchanged": 7, "updated": 1}
    assert {"kind": "Service", "name": "default/db/db-1", "result": "updated"} in result["results"]


def test_prune_deletes_only_what_apply_owns(
    sqlite_plane: ControlPlaneProcess, config: Path
) -> None:
    eco = Eco(sqlite_plane.address)
    eco.ok("apply", "-f", str(config))
    # Objects created by hand, beside apply's.
    eco.ok("service", "register", "web", "--namespace", "shop", "--id", "web-9",
           "--address", "10.0.0.9", "--port", "80")  # fmt: skip
    eco.ok("intention", "create", "a", "b", "--deny")
    # A second set's object: another --set's prune is not this one's.
    other = write(config.parent, "other.yaml", SERVICES.split("---")[1])
    other_copy = other.read_text().replace("name: db", "name: cache").replace("db-1", "c-1")
    other.write_text(other_copy)
    eco.ok("apply", "-f", str(other), "--set", "other")

    # The files now name only the db service.
    (config / "others.yml").unlink()
    write(config, "services.yaml", SERVICES.split("---")[1])
    without = eco.json("apply", "-f", str(config))  # no --prune: nothing deleted
    assert without["summary"] == {"unchanged": 1}
    diff = eco("diff", "-f", str(config), "--prune")
    assert diff.returncode == 1
    assert "--- live/SyncJob/nightly" in diff.stdout
    assert "-  - id: web-1" in diff.stdout and "web-9" not in diff.stdout

    dry = eco.json("apply", "-f", str(config), "--prune", "--dry-run")
    assert dry["summary"] == {"unchanged": 1, "would delete": 7}
    pruned = eco.ok("apply", "-f", str(config), "--prune")
    for line in (
        "deleted Service shop/web/web-1",
        "deleted Service shop/web/web-2",
        "deleted Intention shop/web -> db",
        "deleted Route orders",
        "deleted SyncJob nightly",
        "deleted Platform aws-eu",
        "deleted Dataset orders-eu",
    ):
        assert line in pruned, pruned
    # Deletions in reverse order: the dataset before the platform it names.
    assert pruned.index("Dataset orders-eu") < pruned.index("Platform aws-eu")
    ids = [i["id"] for i in eco.json("service", "get", "web", "--namespace", "shop")["instances"]]
    assert ids == ["web-9"]  # created by hand: survives
    intentions = eco.json("intention", "list")["intentions"]
    assert [(i["source"], i["destination"]) for i in intentions] == [("default/a", "default/b")]
    assert [i["id"] for i in eco.json("service", "get", "cache")["instances"]] == ["c-1"]
    assert eco.ok("apply", "-f", str(config), "--prune").strip() == "no changes (1 unchanged)"


def test_a_change_made_meanwhile_is_a_conflict(
    sqlite_plane: ControlPlaneProcess, config: Path
) -> None:
    eco = Eco(sqlite_plane.address)
    settings = Settings(server=sqlite_plane.address)
    eco.ok("apply", "-f", str(config))
    edited = config / "services.yaml"
    edited.write_text(SERVICES.replace("10.0.0.1", "10.0.0.11").replace("5432", "5433"))
    edits = {
        "5s": "6s",
        "every: 1d": "every: 2d",
        "team-a}": "team-b}",
        "owner: team-a": "owner: b",
    }
    others = OTHERS
    for old, new in edits.items():
        others = others.replace(old, new)
    write(config, "others.yml", others)
    loaded = load_documents([config])
    plan = make_plan(settings, loaded, owner="default", prune=False)
    assert plan.changes == 6
    # Someone changes three of the objects between apply's read and its write.
    eco.ok("service", "register", "web", "--namespace", "shop", "--id", "web-1",
           "--address", "10.0.0.99", "--port", "8080")  # fmt: skip
    eco.ok("sync", "job", "pause", "nightly")
    route = write(config.parent, "routes.yaml", "routes: [{name: orders, upstream: x}]")
    eco.ok("route", "apply", "-f", str(route))
    eco.ok("catalog", "add", "orders-eu", "--location", "s3://orders/eu", "--replace")
    results = {r.key: r for r in execute(settings, plan, owner="default")}
    assert results["orders-eu"].verb == "conflict"
    assert results["shop/web -> db"].verb == "updated"
    assert results["shop/web/web-1"].verb == "conflict"
    assert results["nightly"].verb == "conflict"
    assert results["orders"].verb == "conflict"
    assert results["default/db/db-1"].verb == "updated"
    # Their changes were kept, not overwritten.
    detail = eco.json("service", "get", "web", "--namespace", "shop")
    assert next(i for i in detail["instances"] if i["id"] == "web-1")["address"] == "10.0.0.99"
    assert eco.json("route", "get", "orders")["spec"]["upstream"] == "x"
    # The CLI reports a conflict with exit 1 (here: a plan made stale the same way).
    again = eco("apply", "-f", str(config))
    assert again.returncode == 0, again.stderr  # a fresh read: nothing stale now


def test_export_apply_export_round_trip(
    sqlite_plane: ControlPlaneProcess, config: Path, tmp_path: Path
) -> None:
    eco = Eco(sqlite_plane.address)
    eco.ok("apply", "-f", str(config))
    # Objects made by hand are exported too (without apply's marks).
    eco.ok("service", "register", "api", "--id", "api-1", "--address", "10.1.0.1",
           "--port", "9000", "--meta", "k=v")  # fmt: skip
    eco.ok("intention", "create", "api", "web", "--deny")
    first = eco.ok("export")
    assert "eco.apply" not in first
    documents = list(yaml.safe_load_all(first))
    assert [d["kind"] for d in documents] == [
        "Platform", "Service", "Service", "Service", "Intention", "Intention", "Route",
        "Dataset", "SyncJob",
    ]  # fmt: skip
    assert eco.ok("export", "--kind", "Route").count("kind: Route") == 1

    home = tmp_path / "fresh"
    home.mkdir()
    fresh = ControlPlaneProcess(f"sqlite://{home / 'cp.db'}", home / "cp.log", cwd=home)
    fresh.start()
    try:
        copy = write(tmp_path, "all.yaml", first)
        out = Eco(fresh.address).ok("apply", "-f", str(copy))
        assert "10 created" in out, out
        assert Eco(fresh.address).ok("export") == first
        no_diff = Eco(fresh.address)("diff", "-f", str(copy))
        assert no_diff.returncode == 0, no_diff.stdout
    finally:
        fresh.stop()


def test_prune_reports_a_platform_still_in_use(
    sqlite_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    eco = Eco(sqlite_plane.address)
    platform = write(
        tmp_path,
        "platform.yaml",
        "apiVersion: ecosystem/v1\nkind: Platform\nmetadata: {name: lab}\nspec: {kind: onprem}\n",
    )
    eco.ok("apply", "-f", str(platform))
    # A dataset created by hand names the platform.
    eco.ok("catalog", "add", "scans", "--location", "file:///srv/scans", "--platform", "lab")
    empty = write(tmp_path, "empty.yaml", SERVICES.split("---")[1])
    result = eco("-o", "json", "apply", "-f", str(empty), "--prune")
    assert result.returncode == 1, result.stderr
    outcome = {r["name"]: r for r in json.loads(result.stdout)["results"]}
    assert outcome["lab"]["result"] == "failed"
    assert "scans" in outcome["lab"]["detail"], outcome
    assert eco.json("platform", "get", "lab")["name"] == "lab"


def test_diff_exits_2_when_the_registry_cannot_be_read(config: Path) -> None:
    result = Eco("127.0.0.1:1")("--timeout", "1", "diff", "-f", str(config))
    assert result.returncode == 2, result.stderr
    assert "eco: cannot read the registry:" in result.stderr
    assert result.stdout == ""
