"""Intentions end to end: the `eco intention` commands against a real
`eco controlplane --acl deny` (so the default is deny), as an operator runs
them, with their exit codes."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.controlplane import ECO, ControlPlaneProcess

pytestmark = pytest.mark.e2e


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    process = ControlPlaneProcess("memory://", tmp_path / "controlplane.log", ("--acl", "deny"))
    process.start()
    try:
        yield process
    finally:
        process.stop()


def eco(
    plane: ControlPlaneProcess, *args: str, token: str = ""
) -> subprocess.CompletedProcess[str]:
    environment = {
        k: v for k, v in os.environ.items() if k not in ("ECO_SERVER", "ECO_CA_FILE", "ECO_TOKEN")
    }
    environment["ECO_SERVER"] = plane.address
    if token:
        environment["ECO_TOKEN"] = token
    return subprocess.run(
        [str(ECO), *args], capture_output=True, text=True, timeout=30, env=environment, check=False
    )


def test_intention_commands_and_exit_codes(plane: ControlPlaneProcess) -> None:
    def run(*args: str, token: str = "", code: int = 0) -> str:
        result = eco(plane, *args, token=token)
        assert result.returncode == code, (args, result.stdout, result.stderr)
        return result.stdout + result.stderr

    refused = run("intention", "list", code=1)
    assert "unauthenticated" in refused
    management = json.loads(run("acl", "bootstrap", "-o", "json"))["secret"]

    # With --acl deny and no intention, nothing may call anything.
    denied = run("intention", "check", "web", "orders", token=management, code=1)
    assert "web -> orders: denied (no intention matches: default deny)" in denied
    assert "default (no intention matches): deny" in run("intention", "list", token=management)

    run("intention", "create", "web", "orders", "--allow", "--description", "checkout",
        token=management)  # fmt: skip
    run("intention", "create", "*", "orders", "--deny", token=management)
    allowed = run("intention", "check", "web", "orders", token=management)
    assert "web -> orders: allowed (intention web -> orders allows)" in allowed
    run("intention", "check", "api", "orders", token=management, code=1)
    checked = json.loads(run("intention", "check", "web", "orders", "-o", "json", token=management))
    assert checked["allowed"] is True
    assert checked["matched"]["description"] == "checkout"

    listed = json.loads(run("intention", "list", "-o", "json", token=management))
    assert listed["default"] == "deny"
    assert [(i["source"], i["destination"], i["action"]) for i in listed["intentions"]] == [
        ("web", "orders", "allow"),
        ("*", "orders", "deny"),
    ]

    # Misuse: neither --allow nor --deny, a bad name.
    assert "say --allow or --deny" in run("intention", "create", "a", "b", token=management, code=2)
    bad = run("intention", "create", "Web!", "orders", "--allow", token=management, code=2)
    assert "intention.source" in bad

    run("intention", "delete", "web", "orders", token=management)
    run("intention", "check", "web", "orders", token=management, code=1)
    gone = run("intention", "delete", "web", "orders", token=management, code=1)
    assert "no intention web -> orders" in gone
