"""``eco init``: what it writes, the name put everywhere, and what it refuses
(writing nothing). The written files' validity, apply round trip and
``eco dev --from`` are in tests/e2e/test_templates.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from eco._init import TEMPLATES, check_name, render
from eco.cli import cli

#: What every template has (the issue's list: documents, configs, the ways to run it).
EVERY = {
    "README.md",
    "Containerfile",
    "compose.yaml",
    "apply/platform.yaml",
    "apply/services.yaml",
    "config/sidecar.yaml",
    "kubernetes/controlplane.yaml",
    "kubernetes/sidecar.yaml",
    "scripts/check.sh",
    "scripts/install.sh",
    "scripts/start.sh",
    "systemd/NAME-controlplane.service",
    "systemd/NAME-sidecar.service",
}
OWN = {
    "core": {"apply/datasets.yaml"},
    "cloud": {
        "apply/routes.yaml",
        "config/gateway.yaml",
        "kubernetes/gateway.yaml",
        "systemd/NAME-gateway.service",
    },
    "onprem": {"apply/backup.yaml"},
}


def init(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["init", *args])
    return result.exit_code, result.output


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_each_template_has_its_files_with_the_name_put_everywhere(template: str) -> None:
    files = {str(p): text for p, text in render(TEMPLATES[template], "acme-7").items()}
    assert set(files) == {p.replace("NAME", "acme-7") for p in EVERY | OWN[template]}
    for path, text in files.items():
        assert not re.search(r"__[A-Z]+__", text), (path, re.findall(r"__[A-Z]+__", text))
    assert "name: acme-7" in files["apply/platform.yaml"]
    assert "id: acme-7-1" in files["config/sidecar.yaml"]
    assert "acme-7/eco:" in files["kubernetes/controlplane.yaml"]
    assert 'ports="7400 7401 7410 7411' in files["scripts/check.sh"]


def test_init_writes_the_files_scripts_executable(tmp_path: Path) -> None:
    target = tmp_path / "site"
    code, out = init("--template", "onprem", str(target), "--name", "plant-3")
    assert code == 0, out
    assert "Wrote the onprem template (plant-3)" in out
    assert f"eco dev --from {target}" in out
    assert (target / "systemd/plant-3-sidecar.service").is_file()
    assert "on_node: plant-3-1" in (target / "apply/backup.yaml").read_text()
    for script in ("check.sh", "install.sh", "start.sh"):
        assert (target / "scripts" / script).stat().st_mode & 0o111, script
    assert (target / "apply/platform.yaml").stat().st_mode & 0o777 == 0o644
    assert not list(target.rglob(".*"))  # no temporary file left


def test_the_name_defaults_to_the_directorys_when_it_is_a_dns_label(tmp_path: Path) -> None:
    assert init("-t", "core", str(tmp_path / "shop-eu"))[0] == 0
    assert "name: shop-eu" in (tmp_path / "shop-eu/apply/platform.yaml").read_text()
    assert init("-t", "core", str(tmp_path / "Not_A_Label"))[0] == 0
    assert "name: core" in (tmp_path / "Not_A_Label/apply/platform.yaml").read_text()


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("Shop", "not a DNS label"),
        ("-shop", "not a DNS label"),
        ("shop-", "not a DNS label"),
        ("shop_eu", "not a DNS label"),
        ("a" * 41, "longer than 40 characters"),
    ],
)
def test_a_bad_name_is_refused_naming_the_option_and_nothing_is_written(
    tmp_path: Path, name: str, why: str
) -> None:
    code, out = init("-t", "core", str(tmp_path / "x"), "--name", name)
    assert code == 2
    assert "--name" in out and why in out
    assert not (tmp_path / "x").exists()
    assert check_name(name) is not None


def test_a_non_empty_directory_is_refused_unless_forced(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    (tmp_path / "compose.yaml").write_text("old")
    code, out = init("-t", "cloud", str(tmp_path))
    assert code == 2 and "is not empty: give --force" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compose.yaml", "mine.txt"]
    assert (tmp_path / "compose.yaml").read_text() == "old"

    code, out = init("-t", "cloud", str(tmp_path), "--force", "--name", "c1")
    assert code == 0, out
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    assert "name: c1" in (tmp_path / "compose.yaml").read_text()


def test_a_file_as_dir_and_missing_arguments_are_usage_errors(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    assert init("-t", "core", str(tmp_path / "f"))[0] == 2
    code, out = init(str(tmp_path / "d"))
    assert code == 2 and "give --template" in out
    code, out = init("-t", "core")
    assert code == 2 and "give DIR" in out
    code, out = init("-t", "nosuch", str(tmp_path / "d"))
    assert code == 2 and "'nosuch' is not one of 'core', 'cloud', 'onprem'" in out


def test_list_describes_every_template(tmp_path: Path) -> None:
    code, out = init("--list")
    assert code == 0
    for name in TEMPLATES:
        assert re.search(rf"^{name}\s+\S", out, re.MULTILINE), out
    result = CliRunner().invoke(cli, ["-o", "json", "init", "--list"])
    listed = json.loads(result.output)["templates"]
    assert [t["name"] for t in listed] == list(TEMPLATES)
    assert all(t["summary"] and t["about"] for t in listed)
