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
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from tests.e2e.test_envoy import envoy_binary
from tests.e2e.test_mtls import ca_dir  # noqa: F401 - the fixture
from tests.harness.controlplane import ControlPlaneProcess
from tests.harness.ports import free_port
from tests.harness.sidecar import SidecarProcess
from tests.integration.proxy.conftest import Backend

pytestmark = pytest.mark.e2e

#: Seconds a workload certificate lasts; renewed at two thirds of it.
TTL = 6
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


@pytest.fixture
def plane(tmp_path: Path, ca_dir: Path) -> Iterator[ControlPlaneProcess]:  # noqa: F811
    process = ControlPlaneProcess(
        "memory://",
        tmp_path / "controlplane.log",
        (
            "--tls-ca", str(ca_dir / "ca.pem"), "--tls-ca-key", str(ca_dir / "ca-key.pem"),
            "--workload-cert-ttl", str(TTL),
        ),
    )  # fmt: skip
    process.start()
    try:
        yield process
    finally:
        process.stop()


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
                    [match] = bundle.match_typed_subject_alt_names
                    assert match.matcher.prefix.startswith("spiffe://")
                    seen[secret.name] = bundle.trusted_ca.inline_bytes
            orders = seen.get("eco/svc/default/orders")
            if orders is not None and (not certs or certs[-1] != orders):
                certs.append(orders)
        stream.cancel()
    assert set(seen) == set(names)
    assert uri_of(certs[-1]).endswith("/ns/default/svc/orders")
    assert uri_of(seen["eco/node"]).endswith("/node/srv")
    assert len(set(versions)) == len(versions), versions  # each push a new version
