"""The apply documents' loader: every problem of every file, each with its
file, line and field, and the CLI refusing to send anything when there is
one (exit 2). No control plane is needed: nothing is sent."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from eco._documents import KINDS, DocumentError, load_documents
from eco.cli import cli

GOOD = """\
apiVersion: ecosystem/v1
kind: SyncJob
metadata: {name: nightly}
spec: {source: file:///a, destination: file:///b, on_node: n1, every: 15m}
"""

ROUTE = """\
apiVersion: ecosystem/v1
kind: Route
metadata: {name: orders}
spec:
  match: {path_prefix: /orders}
  upstream: orders
  timeout: 5s
"""


def errors(tmp_path: Path, text: str, name: str = "doc.yaml") -> list[DocumentError]:
    path = tmp_path / name
    path.write_text(text)
    return [e for d in load_documents([path]) for e in d.errors]


def test_a_good_document_loads(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(GOOD.replace("on_node: n1", "on_platform: plant-7"))
    for loaded in load_documents([tmp_path]):
        assert (loaded.kind, loaded.line, loaded.errors) == ("SyncJob", 1, ())
        assert loaded.document is not None


@pytest.mark.parametrize(
    ("text", "line", "field", "message"),
    [
        ("apiVersion: ecosystem/v1\nkind: Gizmo\nmetadata: {name: a}\n", 2, "kind", "unknown kind"),
        ("apiVersion: ecosystem/v1\nmetadata: {name: a}\n", 1, "kind", "missing"),
        (GOOD.replace("on_node: n1, ", ""), 4, "spec", "exactly one of on_node and on_platform"),
        (GOOD.replace("on_node: n1", "on_node: n1, on_platform: p"), 4, "spec", "exactly one of"),
        (GOOD.replace("every: 15m", "every: 15m, transfers: lots"), 4, "spec.transfers", "integer"),
        (GOOD + "colour: blue\n", 5, "colour", "unknown field"),
        (GOOD.replace("ecosystem/v1", "ecosystem/v2"), 1, "apiVersion", "ecosystem/v1"),
        (GOOD.replace("every: 15m", "every: soon"), 4, "spec.every", "not a duration"),
        (GOOD.replace("every: 15m", "every: 1h, cron: '0 * * * *'"), 4, "spec", "exactly one of"),
        ("- just\n- a list\n", 1, "", "a document is a mapping"),
        (ROUTE.replace("5s", "forever"), 7, "spec.timeout", "is not a duration"),
        (ROUTE + "  bogus: 1\n", 8, "spec.bogus", "unknown field"),
        ("kind: Service\nmetadata: {name: [\n", 3, "", "not valid YAML"),
    ],
)
def test_each_problem_has_its_line_and_field(
    tmp_path: Path, text: str, line: int, field: str, message: str
) -> None:
    (problem,) = errors(tmp_path, text)
    assert (problem.file, problem.line, problem.field) == (str(tmp_path / "doc.yaml"), line, field)
    assert message in problem.message, problem


def test_every_problem_of_every_document_is_reported(tmp_path: Path) -> None:
    text = """\
apiVersion: ecosystem/v1
kind: Service
metadata: {name: web}
spec:
  instances:
    - id: web-1
      address: 10.0.0.1
      port: 99999
      metadata: {eco.apply/set: mine}
    - id: web-1
      address: 10.0.0.2
      port: 80
      extra: 1
---
apiVersion: ecosystem/v1
kind: Platform
metadata: {name: p, labels: {eco.apply/managed: "true"}}
spec: {kind: moon}
"""
    found = [(e.line, e.field) for e in errors(tmp_path, text)]
    assert found == [
        (8, "spec.instances[0].port"),
        (9, "spec.instances[0].metadata"),
        (13, "spec.instances[1].extra"),
        (17, "metadata.labels"),
        (18, "spec.kind"),
    ]


def test_every_kind_has_a_model() -> None:
    assert list(KINDS) == ["Platform", "Service", "Intention", "Route", "Dataset", "SyncJob"]


def test_cli_reports_all_problems_and_sends_nothing(tmp_path: Path) -> None:
    bad = GOOD.replace("15m", "soon").replace("nightly", "hourly")
    (tmp_path / "a.yaml").write_text(GOOD + "---\n" + GOOD + "---\n" + bad)
    (tmp_path / "b.yml").write_text("kind: Gizmo\n")
    for command in ("apply", "diff"):
        # An unreachable server: the documents are refused before it is asked anything.
        result = CliRunner().invoke(
            cli, ["--server", "127.0.0.1:1", command, "-f", str(tmp_path)], catch_exceptions=False
        )
        assert result.exit_code == 2, result.output
        assert "3 problem(s) in the documents; nothing was sent" in result.output
        assert f"{tmp_path / 'a.yaml'}:14: spec.every: not a duration" in result.output
        assert f"{tmp_path / 'b.yml'}:1: kind: unknown kind 'Gizmo'" in result.output
        assert f"a.yaml:6: SyncJob nightly is also at {tmp_path / 'a.yaml'}:1" in result.output
