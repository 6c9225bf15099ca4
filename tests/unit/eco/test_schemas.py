"""The JSON Schemas of schemas/: the same as the models give (else "run make schemas"),
valid draft 2020-12, accepting known-good files and refusing typos, and every
``before`` validator's input described; ``eco schema``."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from eco._schemas import (
    DOCUMENTS_KIND,
    SCHEMA_DIALECT,
    file_kinds,
    find_kind,
    render_schema,
    schema_for,
    unlisted_validators,
)
from eco.cli import cli
from sidecar._config_file import read_config

ROOT = Path(__file__).parents[3]
SCHEMAS = ROOT / "schemas"


def test_the_committed_schemas_are_what_the_models_give() -> None:
    stale = []
    for kind in file_kinds():
        path = SCHEMAS / kind.file_name
        if not path.is_file() or path.read_text(encoding="utf-8") != render_schema(kind):
            stale.append(path.name)
    extra = sorted(
        p.name for p in SCHEMAS.glob("*.schema.json") if find_kind(p.name.split(".")[0]) is None
    )
    assert not stale and not extra, (
        f"schemas/ differs from the models (stale or missing: {stale}; of no kind: {extra}): "
        "run make schemas and commit schemas/ (the schemas are pydantic's output: another "
        "pydantic version than the one that wrote them may also differ)"
    )


def test_every_before_validator_says_what_it_takes() -> None:
    assert unlisted_validators() == set(), (
        "a mode='before' validator's input is not described: add it to eco/_schemas.py "
        "_INPUTS (or give the validator json_schema_input_type), then run make schemas"
    )


@pytest.mark.parametrize("kind", [k.name for k in file_kinds()])
def test_each_schema_is_valid_2020_12_with_id_and_title(kind: str) -> None:
    schema = json.loads((SCHEMAS / f"{kind}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == SCHEMA_DIALECT
    assert schema["$id"] == f"urn:ecosystem:schema:{kind}"
    assert schema["title"].startswith("Ecosystem ")


def test_field_comments_become_descriptions() -> None:
    sidecar = schema_for(find_kind("sidecar"))  # type: ignore[arg-type]
    assert "sync jobs" in sidecar["properties"]["sync_jobs"]["description"]
    assert sidecar["$defs"]["UpstreamConfig"]["properties"]["listen"]["description"].startswith(
        "where the applications dial this upstream"
    )
    gateway = schema_for(find_kind("gateway"))  # type: ignore[arg-type]
    assert "Redis" in gateway["properties"]["rate_limit_store"]["description"]


def validator(kind: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(
        json.loads((SCHEMAS / f"{kind}.schema.json").read_text())
    )


def errors(kind: str, data: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator(kind).iter_errors(data)
    ]


GOOD_SIDECAR = """\
node: {id: edge-1, platform: onprem, region: eu, zone: eu-1a}
controlplane: {addresses: ["127.0.0.1:7400"]}
admin: off
services:
  - name: web
    address: 127.0.0.1
    port: 8080
    tags: [v2]
    metadata: {team: a}
    checks:
      - http: http://127.0.0.1:8080/health
        interval: 1s
        timeout: 500ms
        jitter: 10%
        expected_status: "200-299,304"
        initial_status: passing
      - {tcp: "127.0.0.1:8080", interval: 2.5}
      - {ttl: 30s, name: heartbeat}
upstreams:
  - service: db
    listen: "127.0.0.1:15432"
    timeout: 5s
    balancer: round_robin
inbound: {listen: "127.0.0.1:9443", to: "127.0.0.1:8080"}
bridges:
  - {listen: "127.0.0.1:7420", head_timeout: 2s}
drain_grace: 1m30s
sync_jobs: false
"""

GOOD_GATEWAY = """\
listen: "127.0.0.1:8080"
admin: false
controlplane: {addresses: ["127.0.0.1:7400"]}
policy: {timeout: 10s}
routes:
  - name: orders
    match: {hosts: [api.example.com], path_prefix: /api/orders, methods: [GET, POST]}
    upstream: orders
    rewrite: {strip_prefix: /api}
    timeout: 5s
    plugins:
      rate_limit: {rate: 10, per: 1s}
      cache: {ttl: 30s, methods: [get]}
  - name: static
    match: {path_prefix: /s}
    upstream: static
    endpoints: ["127.0.0.1:9000"]
"""

GOOD_DOCUMENTS = """\
apiVersion: ecosystem/v1
kind: Platform
metadata: {name: eu-cloud, labels: {tier: prod}}
spec: {kind: cloud, provider: aws, regions: [eu-west-1]}
---
apiVersion: ecosystem/v1
kind: Dataset
metadata: {name: orders}
spec:
  location: s3://orders/eu
  platform: eu-cloud
  owner: team-a
  schema: {type: object, properties: {id: {type: string}}}
  tags: [pii]
---
apiVersion: ecosystem/v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  instances:
    - {id: web-1, address: 10.0.0.1, port: 8080, zone: eu-1a, tags: [v2]}
---
apiVersion: ecosystem/v1
kind: Intention
metadata: {name: web-to-db, labels: {owner: team-a}}
spec: {source: shop/web, destination: default/db, action: allow}
---
apiVersion: ecosystem/v1
kind: Route
metadata: {name: orders}
spec: {match: {path_prefix: /orders}, upstream: orders, timeout: 5s}
---
apiVersion: ecosystem/v1
kind: SyncJob
metadata: {name: nightly}
spec: {source: "file:///srv/a", destination: "s3://bucket/a", on_node: n1, every: 1d}
"""


@pytest.mark.parametrize(("kind", "text"), [("sidecar", GOOD_SIDECAR), ("gateway", GOOD_GATEWAY)])
def test_known_good_configs_pass_the_model_and_the_schema(kind: str, text: str) -> None:
    model = find_kind(kind).model  # type: ignore[union-attr]
    assert model is not None
    read_config(text, f"{kind}.yaml", model)  # the program takes it ...
    assert errors(kind, yaml.safe_load(text)) == []  # ... and so does an editor


def test_known_good_documents_pass_their_schemas_and_the_combined_one() -> None:
    from eco._documents import KINDS

    for document in yaml.safe_load_all(GOOD_DOCUMENTS):
        KINDS[document["kind"]].model_validate(document)
        assert errors(document["kind"].lower(), document) == []
        assert errors(DOCUMENTS_KIND, document) == []


def test_the_combined_schema_names_the_kinds_problem_and_refuses_unknown_kinds() -> None:
    document = next(d for d in yaml.safe_load_all(GOOD_DOCUMENTS) if d["kind"] == "Service")
    document["spec"]["instances"][0]["port"] = 0
    assert any(
        e.startswith("spec/instances/0/port: 0 is less than the minimum")
        for e in errors(DOCUMENTS_KIND, document)
    )
    assert any("'Gizmo' is not one of" in e for e in errors(DOCUMENTS_KIND, {"kind": "Gizmo"}))
    # without kind: that one problem, not every kind's
    assert errors(DOCUMENTS_KIND, {"metadata": {"name": "x"}}) == [
        ": 'kind' is a required property"
    ]


def test_the_doc_examples_the_models_take_pass_the_schemas() -> None:
    """Every ```yaml block of the docs that a model takes as a whole file."""
    checked = 0
    for doc in sorted((ROOT / "docs").glob("*.md")):
        for block in re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.S):
            for kind in ("sidecar", "gateway"):
                model = find_kind(kind).model  # type: ignore[union-attr]
                assert model is not None
                try:
                    read_config(block, doc.name, model)
                except ValueError:
                    continue
                data = yaml.safe_load(block)
                if data:
                    assert errors(kind, data) == [], (doc.name, block)
                    checked += 1
    assert checked >= 4


@pytest.mark.parametrize(
    ("kind", "text", "expected"),
    [
        ("sidecar", "servics: []", "Additional properties are not allowed ('servics'"),
        ("sidecar", "grace: soon", "grace: 'soon' is not valid under any of the given schemas"),
        ("sidecar", "services: [{name: web, port: 80}]", "'address' is a required property"),
        ("gateway", "routes: [{name: a, match: {}, upstream: b, timout: 1s}]", "'timout'"),
        (
            "route",
            "{apiVersion: ecosystem/v1, kind: Route, metadata: {name: a}, spec: {colour: 1}}",
            "spec: Additional properties are not allowed ('colour'",
        ),
        ("documents", "{kind: Platform, spec: {kind: moon}}", "'metadata' is a required property"),
    ],
)
def test_the_schemas_refuse_what_the_models_refuse(kind: str, text: str, expected: str) -> None:
    found = errors(kind, yaml.safe_load(textwrap.dedent(text)))
    assert any(expected in e for e in found), found


def test_eco_schema_prints_the_committed_schema_and_lists_the_kinds() -> None:
    result = CliRunner().invoke(cli, ["schema", "sidecar"])
    assert result.exit_code == 0, result.output
    assert result.stdout == (SCHEMAS / "sidecar.schema.json").read_text()
    assert (
        CliRunner().invoke(cli, ["schema", "Service"]).stdout
        == (SCHEMAS / "service.schema.json").read_text()
    )
    listed = json.loads(CliRunner().invoke(cli, ["schema", "--list", "-o", "json"]).stdout)
    assert {k["kind"] for k in listed} == {k.name for k in file_kinds()}
    assert {"sidecar", "gateway", "service", DOCUMENTS_KIND} <= {k["kind"] for k in listed}
    result = CliRunner().invoke(cli, ["schema", "toaster"])
    assert result.exit_code == 2
    assert "unknown kind 'toaster'; expected one of: sidecar, gateway" in result.output
