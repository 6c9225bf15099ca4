"""The server commands without the server extra: one line saying what to
install, and the extra in pyproject.toml kept in step with what they check."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from eco import _extras
from eco.cli import main

PYPROJECT = Path(__file__).parents[3] / "pyproject.toml"


def _names(requirements: list[str]) -> set[str]:
    found = set()
    for requirement in requirements:
        match = re.match(r"[A-Za-z0-9._-]+", requirement)
        assert match, requirement
        found.add(match.group(0).lower())
    return found


def test_the_checked_modules_are_the_server_extra() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    server = _names(project["optional-dependencies"]["server"])
    assert set(_extras.SERVER_MODULES.values()) == server
    # Nothing a server needs is in the base install, and the dev install has it all.
    assert not server & _names(project["dependencies"])
    assert "ecosystem[server]" in project["optional-dependencies"]["dev"]


@pytest.mark.parametrize(
    "args",
    [
        ["controlplane", "--store", "memory://"],
        ["sidecar", "--config", "sidecar.yaml"],
        ["dev", "--store", "memory://"],
    ],
    ids=lambda a: a[0],
)
def test_a_server_command_without_the_extra_says_what_to_install(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(_extras.SERVER_MODULES, "no_such_module_here", "no-such-dist")
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"eco: 'eco {args[0]}' runs a server")
    assert "missing: no-such-dist" in err
    assert "pip install 'ecosystem[server]'" in err
    assert len(err.strip().splitlines()) == 1


def test_with_the_extra_nothing_is_missing() -> None:
    assert _extras.missing_server_modules() == []
