"""Intentions end to end: the `eco intention` commands against a real
`eco controlplane --acl deny` (so the default is deny), as an operator runs
them, with their exit codes; and real sidecars in two namespaces calling a
third through mutual TLS, where the caller's namespace decides."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.harness.controlplane import ECO, ControlPlaneProcess
from tests.harness.sidecar import SidecarProcess
from tests.integration.proxy.conftest import Backend
from tests.util import assert_eventually

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
    assert "default/web -> default/orders: denied (no intention matches: default deny)" in denied
    assert "default (no intention matches): deny" in run("intention", "list", token=management)

    run("intention", "create", "web", "orders", "--allow", "--description", "checkout",
        token=management)  # fmt: skip
    run("intention", "create", "*", "orders", "--deny", token=management)
    allowed = run("intention", "check", "web", "orders", token=management)
    assert (
        "default/web -> default/orders: allowed (intention default/web -> default/orders allows)"
        in allowed
    )
    run("intention", "check", "api", "orders", token=management, code=1)
    checked = json.loads(run("intention", "check", "web", "orders", "-o", "json", token=management))
    assert checked["allowed"] is True
    assert checked["matched"]["description"] == "checkout"

    listed = json.loads(run("intention", "list", "-o", "json", token=management))
    assert listed["default"] == "deny"
    assert [(i["source"], i["destination"], i["action"]) for i in listed["intentions"]] == [
        ("default/web", "default/orders", "allow"),
        ("*", "default/orders", "deny"),
    ]

    # Namespaces: team-a's web, not team-b's; a namespace's services; names shown qualified.
    created = run("intention", "create", "team-a/web", "default/orders", "--allow",
                  token=management)  # fmt: skip
    assert "created intention team-a/web -> default/orders: allow" in created
    run("intention", "create", "team-b/*", "team-b/*", "--allow", token=management)
    run("intention", "check", "team-a/web", "orders", token=management)
    refused = run("intention", "check", "team-b/web", "orders", token=management, code=1)
    assert "team-b/web -> default/orders: denied (intention * -> default/orders denies)" in refused
    run("intention", "check", "team-b/api", "team-b/db", token=management)
    run("intention", "check", "team-a/web", "team-b/db", token=management, code=1)
    rows = [line.split()[:3] for line in run("intention", "list", token=management).splitlines()]
    assert rows[:5] == [
        ["SOURCE", "DESTINATION", "ACTION"],
        ["default/web", "default/orders", "allow"],
        ["team-a/web", "default/orders", "allow"],
        ["*", "default/orders", "deny"],
        ["team-b/*", "team-b/*", "allow"],
    ]
    bad = run("intention", "create", "*/web", "orders", "--allow", token=management, code=2)
    assert "a service in every namespace is not a form" in bad
    run("intention", "delete", "team-b/*", "team-b/*", token=management)
    run("intention", "delete", "team-a/web", "orders", token=management)

    # Misuse: neither --allow nor --deny, a bad name.
    assert "say --allow or --deny" in run("intention", "create", "a", "b", token=management, code=2)
    bad = run("intention", "create", "Web!", "orders", "--allow", token=management, code=2)
    assert "intention.source" in bad

    run("intention", "delete", "web", "orders", token=management)
    run("intention", "check", "web", "orders", token=management, code=1)
    gone = run("intention", "delete", "web", "orders", token=management, code=1)
    assert "no intention default/web -> default/orders" in gone


# -- real sidecars in two namespaces ---------------------------------------------------


@pytest.fixture
def ca_plane(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    """A control plane with a CA (`eco ca init`), so sidecars speak mutual TLS."""
    ca = tmp_path / "ca"
    made = eco_plain("ca", "init", "--dir", str(ca))
    assert made.returncode == 0, made.stderr
    process = ControlPlaneProcess(
        "memory://",
        tmp_path / "controlplane.log",
        ("--tls-ca", str(ca / "ca.pem"), "--tls-ca-key", str(ca / "ca-key.pem")),
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


def eco_plain(*args: str) -> subprocess.CompletedProcess[str]:
    environment = {
        k: v for k, v in os.environ.items() if k not in ("ECO_SERVER", "ECO_CA_FILE", "ECO_TOKEN")
    }
    return subprocess.run(
        [str(ECO), *args], capture_output=True, text=True, timeout=30, env=environment, check=False
    )


class Namespaces:
    """`orders` (TCP) of namespace default and `orders-http` of namespace shop
    behind one sidecar's inbound listeners; `web` of team-a and `web` of
    team-b, each on its own sidecar with upstream listeners to both."""

    def __init__(self, plane: ControlPlaneProcess, ca: Path) -> None:
        self.plane, self.ca = plane, ca
        self.ports: dict[str, dict[str, int]] = {}

    def intention(self, *args: str, code: int = 0) -> str:
        result = eco_plain(
            "--ca-file", str(self.ca), "--server", self.plane.address, "intention", *args
        )
        assert result.returncode == code, (args, result.stdout, result.stderr)
        return result.stdout

    async def get(self, http: aiohttp.ClientSession, team: str) -> tuple[int, str]:
        port = self.ports[team]["shop/orders-http"]
        async with http.get(f"http://127.0.0.1:{port}/") as response:
            await response.read()
            return response.status, response.headers.get("x-eco-proxy-error", "")

    async def tcp(self, team: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.ports[team]["orders"])


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), 5)


@pytest.fixture
async def namespaces(tmp_path: Path, ca_plane: ControlPlaneProcess) -> AsyncIterator[Namespaces]:
    tcp = Backend("tcp_backend.py", "--mode", "echo").start()
    http = Backend("http_backend.py", "--name", "h1").start()
    ca = tmp_path / "ca" / "ca.pem"
    server = SidecarProcess(
        tmp_path,
        "srv",
        f"""services:
  - {{name: orders, address: 127.0.0.1, port: {tcp.port}}}
  - {{name: orders-http, namespace: shop, address: 127.0.0.1, port: {http.port}}}
inbound:
  - {{listen: "127.0.0.1:0", to: "127.0.0.1:{tcp.port}", protocol: tcp, service: orders}}
  - {{listen: "127.0.0.1:0", to: "127.0.0.1:{http.port}", protocol: http, service: orders-http}}
""",
        ca_plane.address,
        ca_file=ca,
    )
    clients = {
        team: SidecarProcess(
            tmp_path,
            team,
            f"""services:
  - {{name: web, namespace: {team}, address: 127.0.0.1, port: 9}}
upstreams:
  - {{service: orders, protocol: tcp, listen: "127.0.0.1:0"}}
  - {{service: orders-http, namespace: shop, protocol: http, listen: "127.0.0.1:0"}}
""",
            ca_plane.address,
            ca_file=ca,
        )
        for team in ("team-a", "team-b")
    }
    started = [server, *clients.values()]
    try:
        for sidecar in started:
            await sidecar.start()
        mesh = Namespaces(ca_plane, ca)
        for team, client in clients.items():
            listening = await client.proxy_addresses()
            mesh.ports[team] = {n: int(a.rsplit(":", 1)[1]) for n, a in listening.items()}

        async def ready() -> None:
            for team, client in clients.items():
                status = await client.status()
                assert {p["name"]: p["endpoints"] for p in status["proxy"]} == {
                    "orders": 1,
                    "shop/orders-http": 1,
                }, status["proxy"]
                ids = [c["spiffe_id"] for c in status["identity"]["certificates"]]
                assert any(i.endswith(f"/ns/{team}/svc/web") for i in ids), ids
            for sidecar in started:
                status = await sidecar.status()
                assert all(c["spiffe_id"] for c in status["identity"]["certificates"]), status
                assert status["intentions"]["received"], status

        await assert_eventually(ready, timeout=20)
        yield mesh
    finally:
        for sidecar in started:
            await sidecar.stop()
        tcp.stop()
        http.stop()


async def test_the_callers_namespace_decides(namespaces: Namespaces) -> None:
    mesh = namespaces
    # Every service of every namespace is denied, except team-a's services
    # (calling any: default/orders over TCP, shop/orders-http over HTTP).
    mesh.intention("create", "*", "*", "--deny")
    mesh.intention("create", "team-a/*", "*", "--allow")
    mesh.intention("check", "team-a/web", "default/orders")
    mesh.intention("check", "team-b/web", "default/orders", code=1)

    async with aiohttp.ClientSession() as http:

        async def settled() -> None:
            assert await mesh.get(http, "team-a") == (200, "")
            assert await mesh.get(http, "team-b") == (403, "intention_denied")

        await assert_eventually(settled, timeout=1.5)
        # team-a's TCP connection goes through, held open; team-b's is reset.
        reader, writer = await mesh.tcp("team-a")
        assert await echo(reader, writer, b"before") == b"before"
        denied_reader, denied_writer = await mesh.tcp("team-b")
        denied_writer.write(b"x")
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(denied_reader.readexactly(1), 5)
        denied_writer.close()

        # Allow -> deny for the namespace reaches the connections already open
        # within 1.5 s: the TCP one is reset, the HTTP keep-alive one (between
        # the sidecars) refuses its next request.
        mesh.intention("create", "team-a/*", "*", "--deny")
        with pytest.raises(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(100), 1.5) != b""
        writer.close()

        async def http_denied() -> None:
            assert await mesh.get(http, "team-a") == (403, "intention_denied")

        await assert_eventually(http_denied, timeout=0.5)

        # The exact source beats its namespace: team-a's web is allowed again,
        # team-b's web (another service of that name) is not.
        mesh.intention("create", "team-a/web", "*", "--allow")

        async def exact_allowed() -> None:
            assert await mesh.get(http, "team-a") == (200, "")
            r, w = await mesh.tcp("team-a")
            try:
                assert await echo(r, w, b"after") == b"after"
            finally:
                w.close()

        await assert_eventually(exact_allowed, timeout=1.5)
        assert await mesh.get(http, "team-b") == (403, "intention_denied")
