"""``dataplane: envoy`` with the control plane's CA, with real processes.

A control plane with its CA (workload certificates lasting a few seconds, so
that renewals happen during the test), and sidecars whose proxy listeners
Envoy serves. The sidecar hands Envoy its workload certificates and the trust
bundle over its Secret Discovery Service, on a Unix socket in
``<data_dir>/envoy/``: these tests read that service as Envoy does.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from tests.e2e.test_envoy import envoy_binary, envoy_pids
from tests.e2e.test_mtls import ca_dir, ca_plane, health, run_eco  # noqa: F401 - ca_dir: the fixture
from tests.harness.controlplane import ControlPlaneProcess
from tests.harness.ports import free_port
from tests.harness.sidecar import SidecarProcess
from tests.integration.proxy.conftest import Backend
from tests.util import assert_eventually

pytestmark = pytest.mark.e2e

#: Seconds a workload certificate lasts; renewed at two thirds of it.
TTL = 6
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


@pytest.fixture
def plane(tmp_path: Path, ca_dir: Path) -> Iterator[ControlPlaneProcess]:  # noqa: F811
    with ca_plane(tmp_path, ca_dir, "--workload-cert-ttl", str(TTL)) as process:
        yield process


def envoy_config() -> str:
    return (
        "dataplane: envoy\n"
        f"envoy: {{binary: {json.dumps(str(envoy_binary()))}, restart_backoff: 200ms}}\n"
    )


@pytest.fixture
async def server(
    tmp_path: Path,
    plane: ControlPlaneProcess,
    ca_dir: Path,  # noqa: F811
) -> AsyncIterator[SidecarProcess]:
    backend = Backend("http_backend.py", "--name", "h1").start()
    try:
        body = envoy_config() + (
            f"services:\n  - {{name: orders, address: 127.0.0.1, port: {backend.port}}}\n"
            f'inbound:\n  - {{listen: "127.0.0.1:{free_port()}", to: "127.0.0.1:{backend.port}",'
            " protocol: http, service: orders}\n"
        )
        sidecar = SidecarProcess(tmp_path, "srv", body, plane.address, ca_file=ca_dir / "ca.pem")
        await sidecar.start()
        try:
            yield sidecar
        finally:
            await sidecar.stop()
    finally:
        backend.stop()


def uri_of(cert_pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    [uri] = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uri


async def test_sds_serves_the_workload_certificate_and_pushes_renewals(
    server: SidecarProcess,
    ca_dir: Path,  # noqa: F811
) -> None:
    socket = server.data_dir / "envoy" / "sds.sock"
    assert socket.exists()
    assert socket.stat().st_mode & 0o777 == 0o600
    assert (socket.parent.stat().st_mode & 0o777) == 0o700
    names = ["eco/svc/default/orders", "eco/node", "eco/trust-bundle"]
    queue: asyncio.Queue[discovery_pb2.DiscoveryRequest] = asyncio.Queue()
    await queue.put(discovery_pb2.DiscoveryRequest(type_url=SECRET_TYPE, resource_names=names))

    async def requests() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while True:
            yield await queue.get()

    async with grpc.aio.insecure_channel(f"unix:{socket}") as channel:
        stream = sds_pb2_grpc.SecretDiscoveryServiceStub(channel).StreamSecrets(requests())
        seen: dict[str, bytes] = {}
        versions: list[str] = []
        deadline = time.monotonic() + TTL * 2.5
        # Until the service's certificate has been renewed twice.
        certs: list[bytes] = []
        while len(certs) < 3:
            assert time.monotonic() < deadline, f"renewals not pushed: {versions}"
            response = await asyncio.wait_for(stream.read(), TTL * 2)
            versions.append(response.version_info)
            await queue.put(
                discovery_pb2.DiscoveryRequest(
                    type_url=SECRET_TYPE,
                    resource_names=names,
                    version_info=response.version_info,
                    response_nonce=response.nonce,
                )
            )
            for packed in response.resources:
                secret = secret_pb2.Secret()
                packed.Unpack(secret)
                if secret.HasField("tls_certificate"):
                    seen[secret.name] = secret.tls_certificate.certificate_chain.inline_bytes
                    key = serialization.load_pem_private_key(
                        secret.tls_certificate.private_key.inline_bytes, None
                    )
                    cert = x509.load_pem_x509_certificate(seen[secret.name])
                    assert key.public_key() == cert.public_key()  # the key fits the certificate
                else:
                    bundle = secret.validation_context
                    assert bundle.trusted_ca.inline_bytes == (ca_dir / "ca.pem").read_bytes()
                    seen[secret.name] = bundle.trusted_ca.inline_bytes
            orders = seen.get("eco/svc/default/orders")
            if orders is not None and (not certs or certs[-1] != orders):
                certs.append(orders)
        stream.cancel()
    assert set(seen) == set(names)
    assert uri_of(certs[-1]).endswith("/ns/default/svc/orders")
    assert uri_of(seen["eco/node"]).endswith("/node/srv")
    assert len(set(versions)) == len(versions), versions  # each push a new version


class Mesh:
    def __init__(self, client: SidecarProcess, server: SidecarProcess, ports: dict[str, int]):
        self.client, self.server, self.ports = client, server, ports


@pytest.fixture(
    params=[("envoy", "envoy"), ("python", "envoy"), ("envoy", "python")],
    ids=["envoy-to-envoy", "python-to-envoy", "envoy-to-python"],
)
async def mesh(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    plane: ControlPlaneProcess,
    ca_dir: Path,  # noqa: F811
) -> AsyncIterator[Mesh]:
    backends = {
        "http": Backend("http_backend.py", "--name", "h1").start(),
        "tcp": Backend("tcp_backend.py", "--mode", "echo").start(),
        "grpc": Backend("grpc_backend.py", "--name", "g1").start(),
    }
    ports = {name: free_port() for name in ("http", "tcp", "grpc", "in-http", "in-tcp", "in-grpc")}
    # The data planes of the client and of the server: the two mix on one path.
    client_plane, server_plane = request.param
    server_body = (envoy_config() if server_plane == "envoy" else "") + "services:\n"
    server_body += "".join(
        f"  - {{name: orders-{proto}, address: 127.0.0.1, port: {b.port}}}\n"
        for proto, b in backends.items()
    )
    server_body += "inbound:\n" + "".join(
        f'  - {{listen: "127.0.0.1:{ports["in-" + proto]}", to: "127.0.0.1:{b.port}", '
        f"protocol: {proto}, service: orders-{proto}}}\n"
        for proto, b in backends.items()
    )
    client_body = (envoy_config() if client_plane == "envoy" else "") + (
        "services:\n  - {name: web, address: 127.0.0.1, port: 9}\nupstreams:\n"
        + "".join(
            f'  - {{service: orders-{proto}, protocol: {proto}, listen: "127.0.0.1:{ports[proto]}",'
            " retries: 0, outlier: {consecutive_failures: 0}}\n"
            for proto in backends
        )
    )
    ca = ca_dir / "ca.pem"
    server = SidecarProcess(tmp_path, "srv", server_body, plane.address, ca_file=ca)
    client = SidecarProcess(tmp_path, "cli", client_body, plane.address, ca_file=ca)
    try:
        await server.start()
        await client.start()
        yield Mesh(client, server, ports)
    finally:
        await client.stop()
        await server.stop()
        for backend in backends.values():
            backend.stop()


async def presented_serial(port: int, ca: Path) -> int:
    """The serial of the certificate the inbound listener on ``port`` presents
    (the listener then refuses this client, which has none of its own)."""
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number
    finally:
        writer.close()


def intention(plane: ControlPlaneProcess, ca: Path, *args: str) -> None:
    done = run_eco("--ca-file", str(ca), "--server", plane.address, "intention", *args)
    assert done.returncode == 0, done.stderr


async def http_status(port: int) -> tuple[int, str]:
    timeout = aiohttp.ClientTimeout(total=5)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.get(f"http://127.0.0.1:{port}/") as response,
    ):
        return response.status, response.headers.get("x-backend", "")


async def tcp_echo(port: int, data: bytes = b"ping") -> bytes:
    """What comes back through both hops (b"": the connection was closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(data)), 5)
    except (ConnectionError, asyncio.IncompleteReadError):
        return b""
    finally:
        writer.close()


async def test_two_hops_are_mutual_tls_and_follow_the_intentions(
    mesh: Mesh,
    plane: ControlPlaneProcess,
    ca_dir: Path,  # noqa: F811
) -> None:
    ca = ca_dir / "ca.pem"

    async def http_ok() -> None:
        try:
            assert await http_status(mesh.ports["http"]) == (200, "h1")
        except aiohttp.ClientError as exc:
            raise AssertionError(f"not serving yet: {exc!r}") from None

    async def tcp_ok() -> None:
        assert await tcp_echo(mesh.ports["tcp"], b"ping" * 1000) == b"ping" * 1000

    async def grpc_is(code: grpc.StatusCode) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.ports['grpc']}") as channel:
            assert await health(channel) == code

    await assert_eventually(http_ok, timeout=30, interval=0.2)
    await assert_eventually(tcp_ok, timeout=10, interval=0.2)
    await assert_eventually(lambda: grpc_is(grpc.StatusCode.OK), timeout=10, interval=0.2)

    # The inbound listeners speak TLS only: plaintext gets nothing, and a TLS
    # client trusting the CA without a certificate of its own is refused.
    for name in ("in-http", "in-tcp", "in-grpc"):
        reader, writer = await asyncio.open_connection("127.0.0.1", mesh.ports[name])
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 5)
        writer.close()
        context = ssl.create_default_context(cafile=str(ca))
        context.check_hostname = False
        with pytest.raises((ConnectionError, ssl.SSLError, asyncio.IncompleteReadError)):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", mesh.ports[name], ssl=context
            )
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await asyncio.wait_for(reader.readexactly(1), 5)

    # A deny: 403 for HTTP, the connection closed for TCP, within seconds.
    intention(plane, ca, "create", "web", "orders-http", "--deny")
    intention(plane, ca, "create", "web", "orders-tcp", "--deny")
    intention(plane, ca, "create", "web", "orders-grpc", "--deny")

    async def http_denied() -> None:
        assert (await http_status(mesh.ports["http"]))[0] == 403

    async def tcp_denied() -> None:
        assert await tcp_echo(mesh.ports["tcp"]) == b""

    await assert_eventually(http_denied, timeout=10, interval=0.2)
    await assert_eventually(tcp_denied, timeout=10, interval=0.2)
    await assert_eventually(
        lambda: grpc_is(grpc.StatusCode.PERMISSION_DENIED), timeout=10, interval=0.2
    )

    # Removed: allowed again (the default of --acl allow).
    intention(plane, ca, "delete", "web", "orders-http")
    intention(plane, ca, "delete", "web", "orders-tcp")
    intention(plane, ca, "delete", "web", "orders-grpc")
    await assert_eventually(http_ok, timeout=10, interval=0.2)
    await assert_eventually(tcp_ok, timeout=10, interval=0.2)
    await assert_eventually(lambda: grpc_is(grpc.StatusCode.OK), timeout=10, interval=0.2)

    # A renewal reaches the server's Envoy without a restart (the same process):
    # its inbound listener presents a new certificate, and calls go on.
    pids = envoy_pids(mesh.server)
    first = await presented_serial(mesh.ports["in-http"], ca)

    async def renewed() -> None:
        assert await presented_serial(mesh.ports["in-http"], ca) != first

    await assert_eventually(renewed, timeout=TTL * 2, interval=0.5)
    assert envoy_pids(mesh.server) == pids
    await http_ok()
