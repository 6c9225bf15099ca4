"""Sidecar to sidecar mutual TLS and intentions, with real processes: an `eco
controlplane` with a CA made by `eco ca init`, a client sidecar running `web`
with HTTP, TCP and gRPC upstreams, a server sidecar with inbound listeners in
front of real backends. Calls are mutual TLS between the sidecars without
any set-up; a plaintext (or certificate-less) caller at the inbound
listener fails; intentions allow, deny and allow again, applying to
connections already open within a second."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness.controlplane import ECO, ControlPlaneProcess
from tests.harness.sidecar import SidecarProcess
from tests.integration.proxy.conftest import Backend
from tests.util import assert_eventually

pytestmark = pytest.mark.e2e


def run_eco(*args: str) -> subprocess.CompletedProcess[str]:
    environment = {
        k: v for k, v in os.environ.items() if k not in ("ECO_SERVER", "ECO_CA_FILE", "ECO_TOKEN")
    }
    return subprocess.run(
        [str(ECO), *args], capture_output=True, text=True, timeout=30, env=environment, check=False
    )


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "ca"
    made = run_eco("ca", "init", "--dir", str(directory))
    assert made.returncode == 0, made.stderr
    return directory


@contextlib.contextmanager
def ca_plane(tmp_path: Path, ca_dir: Path, *extra: str) -> Iterator[ControlPlaneProcess]:
    """A control plane (memory store) whose CA is the one in ``ca_dir``;
    ``extra``: more of its options."""
    process = ControlPlaneProcess(
        "memory://",
        tmp_path / "controlplane.log",
        ("--tls-ca", str(ca_dir / "ca.pem"), "--tls-ca-key", str(ca_dir / "ca-key.pem"), *extra),
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def plane(tmp_path: Path, ca_dir: Path) -> Iterator[ControlPlaneProcess]:
    with ca_plane(tmp_path, ca_dir) as process:
        yield process


@pytest.fixture
def backends() -> Iterator[dict[str, Backend]]:
    started = {
        "http": Backend("http_backend.py", "--name", "h1").start(),
        "tcp": Backend("tcp_backend.py", "--mode", "echo").start(),
        "grpc": Backend("grpc_backend.py", "--name", "g1").start(),
    }
    yield started
    for backend in started.values():
        backend.stop()


class Mesh:
    def __init__(
        self, client: SidecarProcess, server: SidecarProcess, ports: dict[str, int], plane: str
    ) -> None:
        self.client, self.server, self.ports, self.plane = client, server, ports, plane

    def intention(self, ca: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return run_eco("--ca-file", str(ca), "--server", self.plane, "intention", *args)


@pytest.fixture
async def mesh(
    tmp_path: Path, plane: ControlPlaneProcess, ca_dir: Path, backends: dict[str, Backend]
) -> AsyncIterator[Mesh]:
    server_body = "services:\n" + "".join(
        f"  - {{name: orders-{proto}, address: 127.0.0.1, port: {b.port}}}\n"
        for proto, b in backends.items()
    )
    server_body += "inbound:\n" + "".join(
        f'  - {{listen: "127.0.0.1:0", to: "127.0.0.1:{b.port}", '
        f"protocol: {proto}, service: orders-{proto}}}\n"
        for proto, b in backends.items()
    )
    client_body = "services:\n  - {name: web, address: 127.0.0.1, port: 9}\nupstreams:\n" + "".join(
        f'  - {{service: orders-{proto}, protocol: {proto}, listen: "127.0.0.1:0"}}\n'
        for proto in backends
    )
    ca = ca_dir / "ca.pem"
    server = SidecarProcess(tmp_path, "srv", server_body, plane.address, ca_file=ca)
    client = SidecarProcess(tmp_path, "cli", client_body, plane.address, ca_file=ca)
    await server.start()
    await client.start()
    listening = {**await server.proxy_addresses(), **await client.proxy_addresses()}
    port = {name: int(address.rsplit(":", 1)[1]) for name, address in listening.items()}

    async def ready() -> None:
        status = await client.status()
        assert {p["name"]: p["endpoints"] for p in status["proxy"]} == {
            f"orders-{proto}": 1 for proto in backends
        }, status["proxy"]
        for sidecar in (client, server):
            status = await sidecar.status()
            assert all(c["spiffe_id"] for c in status["identity"]["certificates"]), status
            assert status["intentions"]["received"], status

    await assert_eventually(ready, timeout=20)
    yield Mesh(client, server, port, plane.address)
    await client.stop()
    await server.stop()


async def get(http: aiohttp.ClientSession, mesh: Mesh) -> tuple[int, str]:
    async with http.get(f"http://127.0.0.1:{mesh.ports['orders-http']}/") as response:
        await response.read()
        return response.status, response.headers.get("x-eco-proxy-error", "")


async def health(channel: grpc.aio.Channel) -> grpc.StatusCode:
    try:
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="g1"), timeout=5
        )
    except grpc.aio.AioRpcError as error:
        return error.code()
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    return grpc.StatusCode.OK


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), 5)


async def test_calls_between_sidecars_are_mutual_tls(mesh: Mesh, ca_dir: Path) -> None:
    async with aiohttp.ClientSession() as http:
        assert await get(http, mesh) == (200, "")
    reader, writer = await asyncio.open_connection("127.0.0.1", mesh.ports["orders-tcp"])
    assert await echo(reader, writer, b"ping" * 1000) == b"ping" * 1000
    writer.close()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.ports['orders-grpc']}") as channel:
        assert await health(channel) is grpc.StatusCode.OK

    # The inbound listeners speak TLS only: plaintext gets nothing, and a TLS
    # client that trusts the CA but has no certificate of its own is refused.
    for name in ("inbound:orders-http", "inbound:orders-tcp", "inbound:orders-grpc"):
        reader, writer = await asyncio.open_connection("127.0.0.1", mesh.ports[name])
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            answer = await asyncio.wait_for(reader.readexactly(1), 5)
        assert answer == b""
        writer.close()
        context = ssl.create_default_context(cafile=str(ca_dir / "ca.pem"))
        context.check_hostname = False
        reader, writer = await asyncio.open_connection("127.0.0.1", mesh.ports[name], ssl=context)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises((ConnectionError, ssl.SSLError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 5)
        writer.close()


async def test_allow_deny_allow_with_connections_held_open(mesh: Mesh, ca_dir: Path) -> None:
    ca = ca_dir / "ca.pem"
    async with aiohttp.ClientSession() as http:
        assert await get(http, mesh) == (200, "")
        # A TCP connection through both hops, held open across the changes.
        reader, writer = await asyncio.open_connection("127.0.0.1", mesh.ports["orders-tcp"])
        assert await echo(reader, writer, b"before") == b"before"

        channel = grpc.aio.insecure_channel(f"127.0.0.1:{mesh.ports['orders-grpc']}")
        assert await health(channel) is grpc.StatusCode.OK

        for dst in ("orders-http", "orders-tcp", "orders-grpc"):
            created = mesh.intention(ca, "create", "web", dst, "--deny")
            assert created.returncode == 0, created.stderr
        assert mesh.intention(ca, "check", "web", "orders-tcp").returncode == 1

        # Within a second: HTTP (the sidecars' keep-alive connection) is refused
        # on its next request, the open TCP connection is closed.
        async def http_denied() -> None:
            assert await get(http, mesh) == (403, "intention_denied")

        await assert_eventually(http_denied, timeout=1.5)

        async def grpc_denied() -> None:  # on the channel (and connections) already open
            assert await health(channel) is grpc.StatusCode.PERMISSION_DENIED

        await assert_eventually(grpc_denied, timeout=1.5)
        with pytest.raises(ConnectionResetError):  # reset, as a refusal is
            assert await asyncio.wait_for(reader.read(100), 1.5) != b""
        writer.close()
        # A new TCP connection is closed at once.
        reader, writer = await asyncio.open_connection("127.0.0.1", mesh.ports["orders-tcp"])
        writer.write(b"x")
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 5)
        writer.close()
        server = await mesh.server.status()
        (inbound,) = [p for p in server["proxy"] if p["name"] == "inbound:orders-tcp"]
        assert inbound["stats"]["errors"]["intention_denied"] >= 2, inbound

        # Allowed again: the same HTTP session gets 200, new TCP connections work.
        for dst in ("orders-http", "orders-tcp", "orders-grpc"):
            assert mesh.intention(ca, "create", "web", dst, "--allow").returncode == 0

        async def http_allowed() -> None:
            assert await get(http, mesh) == (200, "")

        await assert_eventually(http_allowed, timeout=1.5)

        async def tcp_allowed() -> None:
            r, w = await asyncio.open_connection("127.0.0.1", mesh.ports["orders-tcp"])
            try:
                assert await echo(r, w, b"after") == b"after"
            finally:
                w.close()

        await assert_eventually(tcp_allowed, timeout=1.5)

        async def grpc_allowed() -> None:
            assert await health(channel) is grpc.StatusCode.OK

        await assert_eventually(grpc_allowed, timeout=1.5)
        await channel.close()
