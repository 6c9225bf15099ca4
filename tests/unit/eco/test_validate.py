"""``eco validate FILE…``: every problem of every file kind with its file, line and
field; how a file's kind is told; directories; the exit statuses and -o json."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from eco._validate import detect_kind
from eco.cli import cli


def eco(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, ["validate", *map(str, args)])


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def problems(result: Result) -> list[str]:
    return [line for line in result.stdout.splitlines() if not line.endswith(")")]


# --- sidecar ---------------------------------------------------------------------


def test_a_sidecar_config_with_three_errors_reports_all_three_with_their_lines(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        "edge.yaml",
        """\
        node:
          id: edge-1
        services:
          - name: web
            address: 127.0.0.1
            port: 99999
            checks:
              - http: http://127.0.0.1:8080/health
                interval: fast
        upstreams:
          - service: db
            timeout: 5x
        """,
    )
    result = eco(path)
    assert result.exit_code == 2, result.output
    assert result.stdout.splitlines() == [
        f"{path}:6: services[0].port: Input should be less than or equal to 65535",
        f"{path}:9: services[0].checks[0].interval: 'fast' is not a duration: "
        "use e.g. '500ms', '1s', '2m' or '1m30s'",
        f"{path}:12: upstreams[0].timeout: '5x' is not a duration: "
        "use e.g. '500ms', '1s', '2m' or '1m30s'",
    ]
    assert "3 problems in 1 of 1 file" in result.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("services:\n  - name: web\n    port: 80\n", ":2: services[0].address: required"),
        (
            "services: []\nservics: []\n",
            ":2: servics: unknown key 'servics' (expected one of: admin, bridges,",
        ),
        ("services: []\nservices: []\n", ":2: services: duplicate key"),
        ("services:\n  - name: web\n   port: 80\n", ":3: not valid YAML:"),
        ("local_api: [1, 2\n", ":2: not valid YAML:"),
        ("- a\n- b\n", ":1: the file must be a mapping of settings (key: value)"),
        ("grace: 0s\nservices: []\n", ":1: grace: must be greater than 0"),
        (
            "services: []\nadmin: 10.0.0.1:7411\n",
            ":1: tls: admin listens on 10.0.0.1:7411, off loopback: give tls.cert_file",
        ),
        (
            "services: []\ninbound:\n  - {listen: '127.0.0.1:9000', to: '127.0.0.1:80', "
            "service: nope}\n",
            ":3: inbound[0].service: 'nope' is not one of the local services (none)",
        ),
    ],
    ids=[
        "required",
        "unknown-key",
        "duplicate-key",
        "bad-indent",
        "unclosed",
        "not-a-mapping",
        "value",
        "cross-field",
        "cross-reference",
    ],
)
def test_each_sidecar_error_path_names_its_line_and_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, "sidecar.yaml", text)
    result = eco(path)
    assert result.exit_code == 2, result.output
    assert any(line.startswith(f"{path}{expected}") for line in result.stdout.splitlines()), (
        result.stdout
    )


def test_a_valid_sidecar_config_is_ok(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "sidecar.yaml",
        """\
        node: {id: edge-1, platform: onprem, zone: a}
        services:
          - name: web
            address: 127.0.0.1
            port: 8080
            checks: [{http: "http://127.0.0.1:8080/health", interval: 5s}]
        upstreams: [{service: db, listen: "127.0.0.1:15432", timeout: 2s}]
        """,
    )
    result = eco(path)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{path}: ok (sidecar)\n"


# --- gateway ---------------------------------------------------------------------


def test_a_gateway_config_reports_every_problem_with_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "gw.yaml",
        """\
        listen: "127.0.0.1:8080"
        routes:
          - name: orders
            match: {path_prefix: /orders}
            upstream: orders
            timeout: soon
          - name: orders
            match: {path_prefix: /other}
            redirect: {status: 302}
        consumers: 7
        """,
    )
    result = eco(path)
    assert result.exit_code == 2, result.output
    lines = result.stdout.splitlines()
    assert (
        f"{path}:6: routes[0].timeout: 'soon' is not a duration: use e.g. '500ms', "
        in (lines[0][: len(str(path)) + 68])
    ), lines
    assert any(line.startswith(f"{path}:10: consumers: ") for line in lines), lines
    assert len(lines) >= 2


def test_a_gateway_cross_field_problem_names_its_route(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "gateway.yaml",
        """\
        listen: "127.0.0.1:8080"
        routes:
          - name: a
            match: {path_prefix: /a}
            upstream: web
          - name: a
            match: {path_prefix: /b}
            upstream: web
        """,
    )
    result = eco(path)
    assert result.exit_code == 2, result.output
    assert f"{path}:6: routes[1].name: 'a' is also the name of routes[0]" in result.stdout
    assert f"{path}:1: controlplane: routes[0] forwards to a registry service" in result.stdout


# --- apply documents ---------------------------------------------------------------


def test_apply_documents_report_every_problem_of_every_document(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "all.yaml",
        """\
        apiVersion: ecosystem/v1
        kind: Service
        metadata: {name: web}
        spec:
          instances:
            - {id: web-1, address: 10.0.0.9, port: 0}
            - {id: web-2, address: 10.0.0.9, port: 80, colour: blue}
        ---
        apiVersion: ecosystem/v1
        kind: Intention
        metadata: {name: web-to-db}
        spec: {source: web, destination: db, action: maybe}
        ---
        apiVersion: ecosystem/v1
        kind: SyncJob
        metadata: {name: nightly}
        spec:
          source: file:///a
          destination: file:///b
          on_node: n1
        ---
        apiVersion: ecosystem/v1
        kind: Gizmo
        metadata: {name: g}
        """,
    )
    result = eco(path)
    assert result.exit_code == 2, result.output
    lines = result.stdout.splitlines()
    assert f"{path}:6: spec.instances[0].port: Input should be greater than or equal to 1" in lines
    assert f"{path}:7: spec.instances[1].colour: unknown field" in lines
    assert f"{path}:12: spec.action: Input should be 'allow' or 'deny'" in lines
    assert f"{path}:17: spec: give exactly one of every and cron" in lines
    assert any(line.startswith(f"{path}:23: kind: unknown kind 'Gizmo'") for line in lines)
    data = json.loads(CliRunner().invoke(cli, ["validate", str(path), "-o", "json"]).stdout)
    kinds = {(p["line"], p["kind"]) for p in data["problems"]}
    assert {(6, "Service"), (12, "Intention"), (17, "SyncJob")} <= kinds


def test_a_document_without_kind_and_broken_yaml(tmp_path: Path) -> None:
    no_kind = write(tmp_path, "a.yaml", "apiVersion: ecosystem/v1\nmetadata: {name: x}\n")
    broken = write(tmp_path, "b.yaml", "apiVersion: ecosystem/v1\nkind: Service\nspec: [\n")
    result = eco(no_kind, broken)
    assert result.exit_code == 2, result.output
    assert f"{no_kind}:1: kind: missing (one of Platform, Service," in result.stdout
    assert f"{broken}:4: not valid YAML:" in result.stdout


# --- kinds -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name", "kind"),
    [
        ("services: []\n", "x.yaml", "sidecar"),
        ("routes: []\n", "x.yaml", "gateway"),
        ("node: {id: a}\nupstreams: []\nlisten: '127.0.0.1:1'\nsync_jobs: false\n", "x", "sidecar"),
        ("kind: Service\n", "x.yaml", "documents"),
        ("apiVersion: ecosystem/v1\n", "x.yaml", "documents"),
        ("# eco: gateway\nnode: {id: a}\n", "x.yaml", "gateway"),
        ("# header\n#eco:sidecar\n", "x.yaml", "sidecar"),
        ("# eco: Service\nmetadata: {}\n", "x.yaml", "documents"),
        (
            "# yaml-language-server: $schema=../schemas/gateway.schema.json\nnode: {}\n",
            "x.yaml",
            "gateway",
        ),
        ("node: {id: a}\n", "edge-sidecar.yaml", "sidecar"),
        ("node: {id: a}\n", "gateway.yml", "gateway"),
        ("", "gateway.yml", "gateway"),
    ],
)
def test_the_kind_is_told_by_hint_kind_keys_or_name(text: str, name: str, kind: str) -> None:
    assert detect_kind(text, name) == (kind, "")


def test_a_hint_after_the_first_setting_does_not_count() -> None:
    kind, why = detect_kind("node: {id: a}\n# eco: gateway\n", "x.yaml")
    assert kind == ""
    assert "cannot tell what kind of file this is" in why


def test_an_unknown_hint_and_an_undecidable_file_are_problems(tmp_path: Path) -> None:
    hinted = write(tmp_path, "a.yaml", "# eco: toaster\nnode: {}\n")
    bare = write(tmp_path, "b.yaml", "node: {id: a}\n")
    result = eco(hinted, bare)
    assert result.exit_code == 2, result.output
    assert result.stdout.splitlines() == [
        f"{hinted}: the comment names kind 'toaster'; expected one of sidecar, gateway, documents",
        f"{bare}: cannot tell what kind of file this is: name it with '# eco: sidecar' "
        "(or gateway, documents) on its first line, or give --kind",
    ]


def test_kind_option_overrides_what_the_file_says(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", "services: []\n")
    result = eco("--kind", "gateway", path)
    assert result.exit_code == 2
    assert f"{path}:1: services: unknown key 'services'" in result.stdout


# --- directories, exit statuses, json ---------------------------------------------


def test_a_directory_checks_the_files_eco_reads_and_skips_the_others(tmp_path: Path) -> None:
    write(tmp_path, "deploy/sidecar.yaml", "services: []\n")
    write(tmp_path, "deploy/apply/web.yml", "apiVersion: ecosystem/v1\nkind: Service\n")
    write(tmp_path, "deploy/compose.yaml", "services:\n  web: {image: nginx}\nvolumes: {}\n")
    write(
        tmp_path,
        "deploy/k8s/daemonset.yaml",
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: eco}\n",
    )
    write(tmp_path, "deploy/notes.txt", "not yaml: [")
    write(tmp_path, "deploy/ci.yml", "on: push\njobs: {}\n")
    result = eco(tmp_path / "deploy")
    root = tmp_path / "deploy"
    lines = result.stdout.splitlines()
    assert f"{root / 'apply/web.yml'}:1: metadata: required" in lines, lines
    assert f"{root / 'k8s/daemonset.yaml'}: skipped (documents of another tool)" in lines
    assert f"{root / 'sidecar.yaml'}: ok (sidecar)" in lines
    assert f"{root / 'compose.yaml'}: skipped (a compose file)" in lines
    assert f"{root / 'ci.yml'}: skipped (not a file eco reads)" in lines
    assert not any("notes.txt" in line for line in lines)
    assert result.exit_code == 2


def test_a_missing_file_exits_1_even_beside_problems(tmp_path: Path) -> None:
    bad = write(tmp_path, "sidecar.yaml", "grace: x\n")
    result = eco(bad, tmp_path / "missing.yaml")
    assert result.exit_code == 1, result.output
    assert f"{tmp_path / 'missing.yaml'}: cannot read: No such file or directory" in result.stdout


def test_json_lists_files_and_problems_as_objects(tmp_path: Path) -> None:
    good = write(tmp_path, "gateway.yaml", "listen: '127.0.0.1:8080'\n")
    bad = write(tmp_path, "sidecar.yaml", "services: []\ngrace: x\n")
    result = CliRunner().invoke(cli, ["validate", "-o", "json", str(good), str(bad)])
    assert result.exit_code == 2
    assert json.loads(result.stdout) == {
        "files": [
            {"file": str(good), "kind": "gateway", "status": "ok", "problems": 0},
            {"file": str(bad), "kind": "sidecar", "status": "invalid", "problems": 1},
        ],
        "problems": [
            {
                "file": str(bad),
                "line": 2,
                "field": "grace",
                "message": "'x' is not a duration: use e.g. '500ms', '1s', '2m' or '1m30s'",
                "kind": "sidecar",
            }
        ],
    }


def test_usage_errors() -> None:
    assert eco().exit_code == 2
    result = CliRunner().invoke(cli, ["validate", "--registry", "x.yaml"])
    assert result.exit_code == 2
    assert "--registry checks the control plane" in result.output


def test_a_route_documents_spec_is_checked_as_a_gateway_route(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "routes.yaml",
        """\
        apiVersion: ecosystem/v1
        kind: Route
        metadata: {name: orders}
        spec:
          match: {path_prefix: /orders}
          upstream: orders
          timeout: soon
          colour: red
        ---
        apiVersion: ecosystem/v1
        kind: Route
        metadata: {name: both}
        spec: {match: {path_prefix: /b}, upstream: b, redirect: {status: 302, path: /c}}
        ---
        apiVersion: ecosystem/v1
        kind: Route
        metadata: {name: fine}
        spec: {match: {path_prefix: /ok}, upstream: ok}
        """,
    )
    result = eco(path)
    assert result.exit_code == 2, result.output
    assert result.stdout.splitlines() == [
        f"{path}:7: spec.timeout: 'soon' is not a duration: "
        "use e.g. '500ms', '1s', '2m' or '1m30s'",
        f"{path}:8: spec.colour: unknown field",
        f"{path}:13: spec: give one of upstream, split and redirect, not upstream and redirect",
    ]


def test_a_key_given_twice_in_a_document_is_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "dup.yaml",
        """\
        apiVersion: ecosystem/v1
        kind: Service
        metadata: {name: web}
        spec:
          instances:
            - id: web-1
              address: 10.0.0.1
              port: 80
              port: 8080
        """,
    )
    result = eco(path)
    assert result.exit_code == 2, result.output
    assert result.stdout.splitlines() == [f"{path}:9: spec.instances[0].port: duplicate key"]


@pytest.mark.parametrize("args", [["validate", "x.yaml"], ["schema", "sidecar"]])
def test_without_the_server_extra_it_says_what_to_install(
    args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from eco import _extras

    monkeypatch.setitem(_extras.SERVER_MODULES, "no_such_module_here", "no-such-dist")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert f"'eco {args[0]}' " in result.output
    assert "pip install 'ecosystem[server]'" in result.output
