"""TLS on the control plane's listeners, end to end: a real `eco controlplane` serving
TLS on 127.0.0.1, and the SDK, the CLI, a sidecar and an HTTPS client trusting its
CA, a rogue CA, or nothing at all; and the refusal to serve plaintext off loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

import sdk
from tests.harness.certs import TestCA
from tests.harness.controlplane import ECO, ControlPlaneProcess
from tests.harness.sidecar import SidecarProcess
from tests.util import assert_eventually

pytestmark = pytest.mark.e2e


@dataclass
class Pki:
    ca: Path
    rogue: Path
    cert: Path
    key: Path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = TestCA.create(tmp_path / "pki", "ca")
    rogue = TestCA.create(tmp_path / "pki", "rogue")
    rogue.issue_server("rogue-server")  # a certificate the rogue CA signs, never served
    cert, key = ca.issue_server("controlplane", ("localhost", "127.0.0.1"))
    return Pki(ca.cert_file, rogue.cert_file, cert, key)


@pytest.fixture
def tls_plane(tmp_path: Path, pki: Pki) -> Iterator[ControlPlaneProcess]:
    plane = ControlPlaneProcess(
        "memory://",
        tmp_path / "controlplane.log",
        ("--tls-cert", str(pki.cert), "--tls-key", str(pki.key)),
    )
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


def run_eco(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("ECO_SERVER", "ECO_CA_FILE")}
    environment.update(env or {})
    return subprocess.run(
        [str(ECO), *args], capture_output=True, text=True, timeout=30, env=environment, check=False
    )


async def test_the_sdk_trusting_the_ca_registers_and_watches(
    tls_plane: ControlPlaneProcess, pki: Pki
) -> None:
    async with sdk.AsyncClient(tls_plane.address, ca_file=pki.ca) as client:
        watch = client.watch("web")
        assert (await anext(watch)).type is sdk.WatchEventType.RESYNC
        assert (await anext(watch)).type is sdk.WatchEventType.SNAPSHOT_END
        registered = await client.register("web", "127.0.0.1", 8080, ephemeral=True)
        event = await anext(watch)
        assert (event.type, event.instance) == (sdk.WatchEventType.PUT, registered)
        await watch.aclose()
        assert [s.name for s in (await client.list_services()).services] == ["web"]
        # The bus shares the listener, and so the TLS.
        result = await client.bus.publish("orders.created", b"{}")
        assert result.subject == "orders.created"


async def test_the_environment_names_the_ca_file(
    tls_plane: ControlPlaneProcess, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(sdk.CA_FILE_ENV, str(pki.ca))
    async with sdk.AsyncClient(tls_plane.address) as client:
        assert (await client.list_services()).services == ()


async def test_a_client_trusting_another_ca_fails_the_handshake(
    tls_plane: ControlPlaneProcess, pki: Pki
) -> None:
    async with sdk.AsyncClient(tls_plane.address, ca_file=pki.rogue, timeout=2.0) as client:
        with pytest.raises(sdk.UnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.list_services()


async def test_a_plaintext_client_is_refused(tls_plane: ControlPlaneProcess, pki: Pki) -> None:
    async with sdk.AsyncClient(tls_plane.address, ca_file="", timeout=2.0) as client:
        with pytest.raises(sdk.UnavailableError):
            await client.register("web", "127.0.0.1", 8080)
    async with sdk.AsyncClient(tls_plane.address, ca_file=pki.ca) as client:
        assert (await client.list_services()).services == ()


async def test_the_cli_with_a_ca_file(tls_plane: ControlPlaneProcess, pki: Pki) -> None:
    server = ("--server", tls_plane.address)
    registered = run_eco(
        *server,
        "--ca-file",
        str(pki.ca),
        "service",
        "register",
        "web",
        "--address",
        "127.0.0.1",
        "--port",
        "8080",
    )
    assert registered.returncode == 0, registered.stderr
    listed = run_eco(*server, "service", "list", env={"ECO_CA_FILE": str(pki.ca)})
    assert listed.returncode == 0, listed.stderr
    assert "web" in listed.stdout

    rogue = run_eco(*server, "--ca-file", str(pki.rogue), "service", "list")
    assert rogue.returncode == 1
    first = rogue.stderr.splitlines()[0]
    assert "TLS handshake failed: its certificate is not signed by the CA in --ca-file" in first
    assert "I1" not in rogue.stderr  # gRPC's own handshake logs stay quiet

    plaintext = run_eco(*server, "service", "list")
    assert plaintext.returncode == 1
    assert "give --ca-file or ECO_CA_FILE" in plaintext.stderr.splitlines()[0]


async def test_a_sidecar_registers_its_services_over_tls(
    tmp_path: Path, tls_plane: ControlPlaneProcess, pki: Pki
) -> None:
    sidecar = SidecarProcess(
        tmp_path,
        "node-a",
        "services:\n  - {name: web, address: 127.0.0.1, port: 8080}\n",
        tls_plane.address,
        ca_file=pki.ca,
    )
    await sidecar.start()
    try:
        async with sdk.AsyncClient(tls_plane.address, ca_file=pki.ca) as client:

            async def registered() -> None:
                instances = (await client.list_instances(service="web")).instances
                assert [(i.node, i.port) for i in instances] == [("node-a", 8080)]
                assert [n.id for n in await client.list_nodes()] == ["node-a"]

            await assert_eventually(registered, timeout=10)
    finally:
        await sidecar.stop()


async def test_a_sidecar_trusting_another_ca_does_not_connect(
    tmp_path: Path, tls_plane: ControlPlaneProcess, pki: Pki
) -> None:
    sidecar = SidecarProcess(tmp_path, "node-r", "", tls_plane.address, ca_file=pki.rogue)
    await sidecar.start()
    try:
        await assert_eventually(lambda: _in_log(sidecar.log(), "CERTIFICATE_VERIFY_FAILED"))
        async with sdk.AsyncClient(tls_plane.address, ca_file=pki.ca) as client:
            assert await client.list_nodes() == []
    finally:
        await sidecar.stop()


def _in_log(log: str, text: str) -> None:
    assert text in log, log[-2000:]


async def test_the_admin_port_answers_over_https(tls_plane: ControlPlaneProcess, pki: Pki) -> None:
    trusted = ssl.create_default_context(cafile=str(pki.ca))
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"https://{tls_plane.admin_address}/healthz", ssl=trusted
        ) as response:
            assert response.status == 200
            assert await response.text() == "SERVING\n"
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get(
                f"https://{tls_plane.admin_address}/healthz",
                ssl=ssl.create_default_context(cafile=str(pki.rogue)),
            )
        with pytest.raises(aiohttp.ClientError):
            await session.get(f"http://{tls_plane.admin_address}/healthz")


async def test_the_admin_port_speaks_tls_1_3(tls_plane: ControlPlaneProcess, pki: Pki) -> None:
    host, port = tls_plane.admin_address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(pki.ca))
    _reader, writer = await asyncio.open_connection(host, int(port), ssl=context)
    try:
        assert writer.get_extra_info("ssl_object").version() == "TLSv1.3"
    finally:
        writer.close()
        await writer.wait_closed()


async def test_the_control_plane_issues_its_own_certificate_from_a_ca(tmp_path: Path) -> None:
    made = run_eco("ca", "init", "--dir", str(tmp_path / "ca"))
    assert made.returncode == 0, made.stderr
    ca, ca_key = tmp_path / "ca" / "ca.pem", tmp_path / "ca" / "ca-key.pem"
    plane = ControlPlaneProcess(
        "memory://",
        tmp_path / "controlplane.log",
        ("--tls-ca", str(ca), "--tls-ca-key", str(ca_key), "--tls-name", "cp.example.com"),
    )
    await asyncio.to_thread(plane.start)
    try:
        for address in (plane.address, f"localhost:{plane.port}"):
            async with sdk.AsyncClient(address, ca_file=ca) as client:
                await client.register("web", "127.0.0.1", 8080)
                assert [s.name for s in (await client.list_services()).services] == ["web"]
    finally:
        plane.stop()


def test_plaintext_off_loopback_is_refused_and_taken_with_insecure(tmp_path: Path) -> None:
    refused = run_eco(
        "controlplane", "--listen", "0.0.0.0:0", "--admin-listen", "off", "--store", "memory://"
    )
    assert refused.returncode != 0
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    for way in ("--tls-cert/--tls-key", "--tls-ca/--tls-ca-key", "--insecure"):
        assert way in lines[0]

    plane = ControlPlaneProcess(
        "memory://", tmp_path / "controlplane.log", ("--listen", "0.0.0.0:0", "--insecure")
    )
    plane.start()
    try:
        assert "serves plaintext on 0.0.0.0:" in plane.log()
        # Off loopback the ACLs default to deny: plaintext taken knowingly is still not open.
        assert "ACLs deny" in plane.log()
        with sdk.Client(plane.address, token="") as client, pytest.raises(sdk.UnauthenticatedError):
            client.list_services()
        boot = run_eco("--server", plane.address, "acl", "bootstrap", "-o", "json")
        with sdk.Client(plane.address, token=json.loads(boot.stdout)["secret"]) as client:
            assert client.list_services().services == ()
    finally:
        plane.stop()


async def test_the_issued_certificate_is_renewed_under_a_connected_sidecar(
    tmp_path: Path,
) -> None:
    """--tls-cert-ttl 3: the process issues itself a new server certificate every
    2 s; new connections (the CLI's) get it, the sidecar's session goes on."""
    made = run_eco("ca", "init", "--dir", str(tmp_path / "ca"))
    assert made.returncode == 0, made.stderr
    ca, ca_key = tmp_path / "ca" / "ca.pem", tmp_path / "ca" / "ca-key.pem"
    plane = ControlPlaneProcess(
        "memory://",
        tmp_path / "controlplane.log",
        ("--tls-ca", str(ca), "--tls-ca-key", str(ca_key), "--tls-cert-ttl", "3"),
    )
    await asyncio.to_thread(plane.start)
    sidecar = SidecarProcess(
        tmp_path,
        "node-a",
        "services:\n  - {name: web, address: 127.0.0.1, port: 8080}\n",
        plane.address,
        ca_file=ca,
    )
    try:
        await sidecar.start()
        async with sdk.AsyncClient(plane.address, ca_file=ca) as client:

            async def registered() -> None:
                assert [n.id for n in await client.list_nodes()] == ["node-a"]

            await assert_eventually(registered, timeout=10)
        connects = (await sidecar.status())["controlplane"]["connects"]
        serials = [await _presented_serial(plane.address, ca)]
        for _ in range(2):

            async def renewed() -> None:
                serial = await _presented_serial(plane.address, ca)
                assert serial != serials[-1]
                serials.append(serial)

            await assert_eventually(renewed, timeout=5)
            listed = run_eco("--server", plane.address, "--ca-file", str(ca), "node", "list")
            assert listed.returncode == 0, listed.stderr
            assert "node-a" in listed.stdout
        status = await sidecar.status()
        assert status["controlplane"]["connects"] == connects
        _in_log(plane.log(), "server certificate replaced")
    finally:
        await sidecar.stop()
        plane.stop()


async def _presented_serial(address: str, ca: Path) -> int:
    from cryptography import x509

    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    _reader, writer = await asyncio.open_connection(
        host, int(port), ssl=context, server_hostname="localhost"
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number
    finally:
        writer.close()
