"""ACLs end to end: a real `eco controlplane --acl deny`, the `eco acl` commands as
an operator runs them (bootstrap → policy → token → use), and real sidecars
presenting node tokens from a token_file."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import sdk
from tests.harness.controlplane import ECO, ControlPlaneProcess
from tests.harness.sidecar import SidecarProcess
from tests.util import assert_eventually

pytestmark = pytest.mark.e2e


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    process = ControlPlaneProcess(
        "memory://",
        tmp_path / "controlplane.log",
        ("--acl", "deny", "--audit-log", str(tmp_path / "audit.log")),
    )
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


def test_bootstrap_policy_token_and_use(plane: ControlPlaneProcess, tmp_path: Path) -> None:
    outputs: list[str] = []

    def run(*args: str, token: str = "", code: int = 0) -> str:
        result = eco(plane, *args, token=token)
        assert result.returncode == code, (args, result.stdout, result.stderr)
        if args[:3] not in (("acl", "bootstrap", "-o"), ("acl", "token", "create")):
            outputs.append(result.stdout + result.stderr)  # prints no secret
        return result.stdout + result.stderr

    refused = run("service", "list", code=1)
    assert "eco: unauthenticated: this control plane requires a token (--acl deny)" in refused
    management = json.loads(run("acl", "bootstrap", "-o", "json"))["secret"]
    again = run("acl", "bootstrap", code=1)
    assert "eco: failed precondition: ACLs are already bootstrapped" in again

    run("acl", "policy", "create", "web", "--rule", "service:web:write", token=management)
    bad = run("acl", "policy", "create", "bad", "--rule", "svc:web:write", token=management, code=2)
    assert "resource must be one of service, namespace, node, bus, acl, operator" in bad
    assert "service:web:write" in run("acl", "policy", "get", "web", token=management)
    listed = json.loads(run("acl", "policy", "list", "-o", "json", token=management))
    assert [p["name"] for p in listed["policies"]] == ["global-management", "web"]

    created = json.loads(
        run(
            "acl",
            "token",
            "create",
            "--policy",
            "web",
            "--description",
            "web app",
            "-o",
            "json",
            token=management,
        )
    )
    web = created["secret"]
    assert created["policies"] == ["web"]

    assert "revision" in run(
        "service", "register", "web", "--address", "10.0.0.1", "--port", "80", token=web
    )
    denied = run(
        "service", "register", "db", "--address", "10.0.0.1", "--port", "5432", token=web, code=1
    )
    assert "eco: permission denied: the token lacks service:db:write" in denied
    wrong = run("service", "list", token="not-a-token", code=1)
    assert "eco: unauthenticated: the token is not valid" in wrong

    tokens = json.loads(run("acl", "token", "list", "-o", "json", token=management))["tokens"]
    assert {t["description"] for t in tokens} == {"bootstrap token", "web app"}
    run("acl", "token", "delete", created["accessor_id"], token=management)
    assert_eventually_sync(lambda: eco(plane, "service", "list", token=web).returncode == 1)
    run("acl", "policy", "delete", "web", token=management)
    assert "not found: no policy 'web'" in run(
        "acl", "policy", "get", "web", token=management, code=1
    )

    audit = (tmp_path / "audit.log").read_text()
    lines = [json.loads(line) for line in audit.splitlines()]
    assert {"time", "identity", "rpc", "resource", "allowed"} <= set(lines[0])
    assert any(
        line["rpc"].endswith("RegisterInstance")
        and line["resource"] == "service:db:write"
        and not line["allowed"]
        for line in lines
    )
    # The secrets are printed by bootstrap and token create only.
    for text in (plane.log(), audit, *outputs):
        assert management not in text
        assert web not in text


def assert_eventually_sync(check: object) -> None:
    import time

    deadline = time.monotonic() + 5
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not within 5 s"
        time.sleep(0.1)


async def test_a_sidecar_with_a_node_token(plane: ControlPlaneProcess, tmp_path: Path) -> None:
    management = json.loads(eco(plane, "acl", "bootstrap", "-o", "json").stdout)["secret"]
    eco(
        plane,
        "acl",
        "policy",
        "create",
        "node-a",
        "--rule",
        "node:node-a:write",
        "--rule",
        "service:web:write",
        token=management,
    )
    created = eco(
        plane, "acl", "token", "create", "--policy", "node-a", "-o", "json", token=management
    )
    token_file = tmp_path / "node-a.token"
    token_file.write_text(json.loads(created.stdout)["secret"] + "\n")
    token_file.chmod(0o600)
    services = (
        "services:\n  - {name: web, address: 127.0.0.1, port: 8080}\n"
        "  - {name: db, address: 127.0.0.1, port: 5432}\n"
    )
    own = SidecarProcess(
        tmp_path,
        "node-a",
        "services:\n  - {name: web, address: 127.0.0.1, port: 8080}\n",
        plane.address,
        token_file=token_file,
    )
    # The same token on another node: refused.
    other = SidecarProcess(tmp_path, "node-b", services, plane.address, token_file=token_file)
    await own.start()
    await other.start()
    try:
        async with sdk.AsyncClient(plane.address, token=management) as client:

            async def registered() -> None:
                instances = (await client.list_instances()).instances
                assert [(i.service, i.node) for i in instances] == [("web", "node-a")]

            await assert_eventually(registered, timeout=10)
            await assert_eventually(lambda: _in(other.log(), "node:node-b:write"), timeout=10)
            assert [n.id for n in await client.list_nodes()] == ["node-a"]
        secret = token_file.read_text().strip()
        for text in (own.log(), other.log(), plane.log(), json.dumps(await own.status())):
            assert secret not in text
    finally:
        await own.stop()
        await other.stop()


def _in(text: str, part: str) -> None:
    assert part in text, text[-2000:]
