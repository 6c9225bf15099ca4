"""``eco platform`` and ``eco catalog`` against a real ``eco controlplane``
process: every command in tables and JSON, the filters, revisions, the exit
codes of a refused field (2), a conflict or a platform in use (1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_cli import Eco
from tests.harness.controlplane import ControlPlaneProcess

pytestmark = pytest.mark.e2e


def test_platform_commands(sqlite_plane: ControlPlaneProcess) -> None:
    eco = Eco(sqlite_plane.address)
    out = eco.ok(
        "platform",
        "register",
        "aws-eu",
        "--kind",
        "cloud",
        "--provider",
        "aws",
        "--region",
        "eu-west-1",
        "--region",
        "eu-central-1",
        "-l",
        "env=prod",
        "--label",
        "team=infra",
        "--description",
        "EU account",
    )
    assert out.startswith("registered platform aws-eu (revision ")
    eco.ok("platform", "register", "core", "--kind", "core")
    onprem = eco.json("platform", "register", "plant-7", "--kind", "onprem", "-l", "env=prod")
    assert onprem["kind"] == "onprem" and onprem["labels"] == {"env": "prod"}
    assert onprem["create_revision"] == onprem["mod_revision"] > 0

    table = eco.ok("platform", "list")
    assert table.splitlines()[0].split() == [
        "NAME",
        "KIND",
        "PROVIDER",
        "REGIONS",
        "LABELS",
        "DESCRIPTION",
    ]
    assert "eu-west-1,eu-central-1" in table and "env=prod,team=infra" in table
    names = [p["name"] for p in eco.json("platform", "list")["platforms"]]
    assert names == ["aws-eu", "core", "plant-7"]
    by = lambda *a: [p["name"] for p in eco.json("platform", "list", *a)["platforms"]]  # noqa: E731
    assert by("--kind", "cloud") == ["aws-eu"]
    assert by("--provider", "aws") == ["aws-eu"]
    assert by("-l", "env=prod") == ["aws-eu", "plant-7"]
    assert by("-l", "env=prod", "--kind", "onprem") == ["plant-7"]
    assert (
        yaml.safe_load(eco.ok("-o", "yaml", "platform", "list"))["platforms"][1]["kind"] == "core"
    )

    # Already there: exit 1; the same with its revision: unchanged; a stale revision: exit 1.
    again = eco("platform", "register", "core", "--kind", "core")
    assert again.returncode == 1 and "exists" in again.stderr
    rev = eco.json("platform", "get", "core")["mod_revision"]
    same = eco.ok("platform", "register", "core", "--kind", "core", "--if-revision", str(rev))
    assert same.startswith("unchanged: platform core")
    eco.ok(
        "platform",
        "register",
        "core",
        "--kind",
        "core",
        "--description",
        "x",
        "--if-revision",
        str(rev),
    )
    stale = eco("platform", "register", "core", "--kind", "core", "--if-revision", str(rev))
    assert stale.returncode == 1 and f"not {rev}" in stale.stderr, stale.stderr
    replaced = eco.json("platform", "register", "core", "--kind", "core", "--replace")
    assert replaced["description"] == ""

    # Refused fields: exit 2, each named.
    bad = eco("platform", "register", "Bad_Name", "--kind", "cloud", "--region", "EU")
    assert bad.returncode == 2
    for field in ("platform.name", "platform.provider", "platform.regions[0]"):
        assert field in bad.stderr, bad.stderr
    usage = eco("platform", "register", "x", "--kind", "core", "-l", "novalue")
    assert usage.returncode == 2 and "KEY=VALUE" in usage.stderr

    got = eco.ok("platform", "get", "plant-7")
    assert "name: plant-7" in got and "NODES\nnone" in got and "SERVICES\nnone" in got
    data = eco.json("platform", "get", "plant-7")
    assert (data["nodes"], data["services"], data["instance_count"]) == ([], [], 0)

    eco.ok(
        "service",
        "register",
        "web",
        "--id",
        "web-1",
        "--address",
        "10.0.0.1",
        "--port",
        "80",
        "--platform",
        "plant-7",
    )
    data = eco.json("platform", "get", "plant-7")
    assert data["instance_count"] == 1
    assert [(s["name"], s["instances"]) for s in data["services"]] == [("web", 1)]
    assert "SERVICES" in eco.ok("platform", "get", "plant-7")
    in_use = eco("platform", "deregister", "plant-7")
    assert in_use.returncode == 1 and "1 instance(s) (default/web/web-1)" in in_use.stderr
    assert "deregistered platform plant-7" in eco.ok("platform", "deregister", "plant-7", "--force")
    missing = eco("platform", "get", "plant-7")
    assert missing.returncode == 1 and "no platform 'plant-7'" in missing.stderr


def test_catalog_commands(sqlite_plane: ControlPlaneProcess, tmp_path: Path) -> None:
    eco = Eco(sqlite_plane.address)
    eco.ok("platform", "register", "aws-eu", "--kind", "cloud", "--provider", "aws")
    schema = tmp_path / "orders.schema.json"
    schema.write_text(
        json.dumps(
            {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "properties": {"id": {"type": "string"}, "total": {"type": "number"}},
                "required": ["id"],
            }
        )
    )
    out = eco.ok(
        "catalog",
        "add",
        "orders-eu",
        "--location",
        "s3://orders-eu/data",
        "--platform",
        "aws-eu",
        "--owner",
        "team-orders",
        "--schema",
        str(schema),
        "--tag",
        "pii",
        "--tag",
        "orders",
        "--description",
        "EU orders",
    )
    assert out.startswith("added dataset orders-eu (revision ")
    eco.ok(
        "catalog",
        "add",
        "orders-us",
        "--location",
        "file:///data/orders-us",
        "--owner",
        "team-orders",
        "--tag",
        "orders",
    )
    eco.ok("catalog", "add", "clicks", "--location", "gs://clicks", "--owner", "web")

    table = eco.ok("catalog", "list")
    assert table.splitlines()[0].split() == [
        "NAME",
        "LOCATION",
        "PLATFORM",
        "OWNER",
        "TAGS",
        "SCHEMA",
    ]
    names = lambda *a: [d["name"] for d in eco.json("catalog", "list", *a)["datasets"]]  # noqa: E731
    assert names() == ["clicks", "orders-eu", "orders-us"]
    assert names("--platform", "aws-eu") == ["orders-eu"]
    assert names("--owner", "team-orders") == ["orders-eu", "orders-us"]
    assert names("--tag", "orders") == ["orders-eu", "orders-us"]
    assert names("--tag", "orders", "--tag", "pii") == ["orders-eu"]
    assert names("--owner", "web", "--tag", "orders") == []

    got = eco.json("catalog", "get", "orders-eu")
    assert got["schema"]["required"] == ["id"] and got["copies"] == []
    assert got["tags"] == ["pii", "orders"] and got["platform"] == "aws-eu"
    text = eco.ok("catalog", "get", "orders-eu")
    assert "location: s3://orders-eu/data" in text and "COPIES\nnone" in text

    # An invalid JSON Schema, a bad location, an unknown platform: exit 2, by field.
    bad_schema = tmp_path / "bad.json"
    bad_schema.write_text('{"type": "no-such-type"}')
    bad = eco(
        "catalog",
        "add",
        "x",
        "--location",
        "ftp://h/x",
        "--platform",
        "nowhere",
        "--schema",
        str(bad_schema),
    )
    assert bad.returncode == 2
    assert "dataset.location" in bad.stderr and "dataset.schema" in bad.stderr, bad.stderr
    unknown = eco("catalog", "add", "x", "--location", "file:///x", "--platform", "nowhere")
    assert unknown.returncode == 2 and "dataset.platform" in unknown.stderr
    not_json = tmp_path / "not.json"
    not_json.write_text("{")
    refused = eco("catalog", "add", "x", "--location", "file:///x", "--schema", str(not_json))
    assert refused.returncode == 2 and "not JSON" in refused.stderr
    assert names() == ["clicks", "orders-eu", "orders-us"]

    # Replace, with and without a revision.
    rev = got["mod_revision"]
    updated = eco.json(
        "catalog",
        "add",
        "orders-eu",
        "--location",
        "s3://orders-eu/v2",
        "--replace",
        "--if-revision",
        str(rev),
    )
    assert updated["location"] == "s3://orders-eu/v2" and updated["mod_revision"] > rev
    stale = eco(
        "catalog",
        "add",
        "orders-eu",
        "--location",
        "s3://orders-eu/v3",
        "--replace",
        "--if-revision",
        str(rev),
    )
    assert stale.returncode == 1 and "revision" in stale.stderr
    exists = eco("catalog", "add", "clicks", "--location", "gs://clicks")
    assert exists.returncode == 1 and "exists" in exists.stderr

    assert "removed dataset clicks" in eco.ok("catalog", "remove", "clicks")
    gone = eco("catalog", "get", "clicks")
    assert gone.returncode == 1 and "no dataset 'clicks'" in gone.stderr
