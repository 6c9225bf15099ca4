"""Workload identities over the agent session, with a real control plane and
real sidecars in this process: the CA kept in the store (``--tls-ca auto``),
certificates per local service and for the node, their renewal, the refusal
of another node's service, and root rotation with a sidecar connected."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from ecosystem.v1 import agent_pb2, ca_pb2, ca_pb2_grpc

from controlplane import ControlPlane, ControlPlaneConfig
from sidecar.app import Sidecar
from sidecar.config import SidecarConfig
from tests.integration.agent_stream import Stream
from tests.util import assert_eventually

TD = "ecosystem.local"


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    config = ControlPlaneConfig(
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        store_url="memory://",
        grace=1.0,
        drain_delay=0,
        tls_ca="auto",
        workload_cert_ttl=3,
    )
    async with ControlPlane(config) as cp:
        yield cp


def root_file(plane: ControlPlane, tmp_path: Path) -> Path:
    """The root, copied out of band (here: from the control plane's memory)."""
    assert plane.identity is not None
    path = tmp_path / "root.pem"
    path.write_bytes(b"".join(plane.identity.bundle_pems()))
    return path


def sidecar_config(tmp_path: Path, node: str, plane: ControlPlane, **fields: Any) -> SidecarConfig:
    return SidecarConfig.model_validate(
        {
            "node": {"id": node},
            "controlplane": {
                "addresses": [plane.address],
                "ca_file": str(root_file(plane, tmp_path)),
            },
            "data_dir": str(tmp_path / node),
            "local_api": "127.0.0.1:0",
            "admin": "127.0.0.1:0",
            "services": [{"name": "web", "address": "127.0.0.1", "port": 8080}],
            **fields,
        }
    )


def has_certificate(sidecar: Sidecar, service: str = "web") -> None:
    assert sidecar.identity.certificate(service) is not None


def issuer_of(cert_pem: bytes, roots: list[bytes]) -> int:
    """The index of the root in ``roots`` that signed the certificate."""
    leaf = x509.load_pem_x509_certificate(cert_pem)
    for index, root in enumerate(roots):
        try:
            leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(root))
        except Exception:
            continue
        return index
    raise AssertionError("signed by no root of the bundle")


def uri_sans(cert_pem: bytes) -> list[str]:
    cert = x509.load_pem_x509_certificate(cert_pem)
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return [str(n) for n in ext.value.get_values_for_type(x509.UniformResourceIdentifier)]


async def test_a_sidecar_gets_certificates_for_its_service_and_node(
    plane: ControlPlane, tmp_path: Path
) -> None:
    async with Sidecar(sidecar_config(tmp_path, "node-a", plane)) as sidecar:
        identity = sidecar.identity

        def issued() -> None:
            assert identity.certificate("web") is not None
            assert identity.node_certificate is not None

        await assert_eventually(issued, timeout=10)
        web, node = identity.certificate("web"), identity.node_certificate
        assert web is not None and node is not None
        assert web.spiffe_id == f"spiffe://{TD}/ns/default/svc/web"
        assert uri_sans(web.cert_pem) == [web.spiffe_id]
        assert node.spiffe_id == f"spiffe://{TD}/node/node-a"
        assert plane.identity is not None
        assert issuer_of(web.cert_pem, plane.identity.bundle_pems()) == 0
        # About the TTL asked for (3 s), not a day.
        assert 0 < web.expires_at - web.issued_at <= 4

        # The proxy's contexts: a TLS 1.3 handshake between two of them, each
        # side checking the other against the bundle.
        server = identity.ssl_context_for("web")
        client = identity.ssl_context_for("web", server=False)
        peer = await handshake(server, client)
        assert uri_sans(peer) == [web.spiffe_id]

        status = sidecar.status()["identity"]
        assert status["trust_domain"] == TD and status["roots"] == 1
        listed = {c["identity"]: c for c in status["certificates"]}
        assert listed["default/web"]["spiffe_id"] == web.spiffe_id
        assert listed["default/web"]["expires_at"] and listed["node"]["spiffe_id"]
        prefix = 'eco_sidecar_certificate_expiry_timestamp_seconds{identity="default/web"} '
        lines = sidecar.metrics.render().decode().splitlines()
        (expiry,) = [float(line[len(prefix) :]) for line in lines if line.startswith(prefix)]
        assert expiry == web.expires_at


async def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> bytes:
    """A TLS handshake over memory; returns the certificate the client saw (PEM)."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    s = server.wrap_bio(s_in, s_out, server_side=True)
    c = client.wrap_bio(c_in, c_out, server_side=False)
    for _ in range(10):
        for side in (c, s):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    c.do_handshake()
    assert c.version() == "TLSv1.3"
    der = c.getpeercert(binary_form=True)
    assert der is not None
    return ssl.DER_cert_to_PEM_cert(der).encode()


async def test_certificates_are_renewed_without_dropping_the_session(
    plane: ControlPlane, tmp_path: Path
) -> None:
    async with Sidecar(sidecar_config(tmp_path, "node-a", plane)) as sidecar:
        identity = sidecar.identity
        session = sidecar.session
        assert session is not None
        await assert_eventually(lambda: has_certificate(sidecar), timeout=10)
        first = identity.certificate("web")
        assert first is not None
        connects = session.status().connects

        def renewed_twice() -> None:
            current = identity.certificate("web")
            assert current is not None and current.cert_pem != first.cert_pem
            assert identity.renewals >= 2

        # 3 s certificates, renewed at 2 s.
        await assert_eventually(renewed_twice, timeout=10)
        assert session.connected and session.status().connects == connects


async def test_another_nodes_service_is_refused(plane: ControlPlane, tmp_path: Path) -> None:
    config = sidecar_config(tmp_path, "node-a", plane)
    async with Sidecar(config) as sidecar:
        await assert_eventually(lambda: has_certificate(sidecar), timeout=10)
        async with grpc.aio.secure_channel(
            plane.address,
            grpc.ssl_channel_credentials(root_file(plane, tmp_path).read_bytes()),
        ) as channel:
            other = Stream(channel, node="node-b")
            await other.connect()
            await other.sync()  # node-b registers nothing
            csr = sidecar_csr()
            await other.send(
                certificate_request=agent_pb2.CertificateRequest(
                    request_id="1", csr_pem=csr, service="web"
                )
            )
            answer = (await other.read_kind("certificate")).certificate
            assert answer.request_id == "1" and not answer.cert_pem
            assert "has no instance of service 'web'" in answer.error
            # Its own node is fine.
            await other.send(
                certificate_request=agent_pb2.CertificateRequest(
                    request_id="2", csr_pem=csr, node=True
                )
            )
            answer = (await other.read_kind("certificate")).certificate
            assert answer.spiffe_id == f"spiffe://{TD}/node/node-b" and not answer.error
            other.drop()


def sidecar_csr() -> bytes:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


async def test_root_rotation_reaches_a_connected_sidecar(
    plane: ControlPlane, tmp_path: Path
) -> None:
    assert plane.identity is not None
    plane.identity.skew_ms = 0  # so that the old root leaves within the test
    old_root = plane.identity.bundle_pems()[0]
    async with Sidecar(sidecar_config(tmp_path, "node-a", plane)) as sidecar:
        identity = sidecar.identity
        session = sidecar.session
        assert session is not None
        await assert_eventually(lambda: has_certificate(sidecar), timeout=10)
        connects = session.status().connects
        async with grpc.aio.secure_channel(
            plane.address, grpc.ssl_channel_credentials(old_root)
        ) as channel:
            stub = ca_pb2_grpc.CAServiceStub(channel)
            rotated = await stub.RotateRoot(ca_pb2.RotateRootRequest(propagation_seconds=1))
        assert list(rotated.bundle.roots_pem) == [old_root, rotated.bundle.roots_pem[1]]
        new_root = rotated.bundle.roots_pem[1]

        def sidecar_has_both_roots() -> None:
            bundle = identity.bundle
            assert bundle is not None and set(bundle.roots_pem) == {old_root, new_root}

        await assert_eventually(sidecar_has_both_roots, timeout=5)

        def signed_by_the_new_root() -> None:
            bundle = identity.bundle
            assert bundle is not None and bundle.roots_pem[0] == new_root
            for cert in (identity.certificate("web"), identity.node_certificate):
                assert cert is not None
                assert issuer_of(cert.cert_pem, [new_root, old_root]) == 0

        await assert_eventually(signed_by_the_new_root, timeout=10)

        # The old root leaves once everything it signed has expired: one 3 s
        # lifetime after the switch (the minute of clock skew is off here).
        assert rotated.old_root_removed_at_ms == rotated.signs_from_ms + 3_000

        def old_root_removed() -> None:
            assert plane.identity is not None
            assert plane.identity.bundle_pems() == [new_root]
            bundle = identity.bundle
            assert bundle is not None and bundle.roots_pem == (new_root,)

        await assert_eventually(old_root_removed, timeout=10)
        for cert in (identity.certificate("web"), identity.node_certificate):
            assert cert is not None and issuer_of(cert.cert_pem, [new_root]) == 0
        assert session.connected and session.status().connects == connects


async def test_two_replicas_with_tls_ca_auto_agree_on_one_ca(tmp_path: Path) -> None:
    from controlplane.store.memory import MemoryStore

    async with MemoryStore() as store:
        configs = [
            ControlPlaneConfig(
                listen="127.0.0.1:0",
                admin_listen=None,
                store_url="memory://",
                grace=1.0,
                drain_delay=0,
                tls_ca="auto",
            )
            for _ in range(2)
        ]
        planes = [ControlPlane(config, store=store) for config in configs]
        await asyncio.gather(*(p.start() for p in planes))
        try:
            bundles = [p.identity.bundle_pems() for p in planes if p.identity is not None]
            assert len(bundles) == 2 and bundles[0] == bundles[1] and len(bundles[0]) == 1
        finally:
            await asyncio.gather(*(p.stop() for p in planes))
