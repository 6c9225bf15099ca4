"""The control plane's own server certificate, replaced while it serves: issued
again at two thirds of its lifetime, from the new root after a root rotation,
and read again when the operator's files change. A client keeps a Watch
stream open on a connection made before each change (it goes on), while new
connections see the new certificate, on the gRPC port and the admin port.
After a rotation, clients that trust only the old root keep connecting (the
new root is served cross-signed by the old one) until the old root leaves
the bundle."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator, Awaitable
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from ecosystem.v1 import ca_pb2, ca_pb2_grpc
from ecosystem.v1 import registry_pb2 as pb
from ecosystem.v1 import registry_pb2_grpc as pb_grpc

from controlplane import ControlPlane
from controlplane.testing import test_config
from controlplane.tls import TLSSetupError
from sdk import AsyncClient
from tests.harness.certs import TestCA
from tests.util import assert_eventually

#: Seconds the issued server certificate lasts: issued again every 2 s.
TTL = 3


config = test_config


@pytest.fixture
async def auto_plane() -> AsyncIterator[ControlPlane]:
    """A CA kept in the store; server and workload certificates lasting 3 s."""
    async with ControlPlane(
        config(tls_ca="auto", tls_cert_ttl=TTL, workload_cert_ttl=TTL)
    ) as plane:
        yield plane


def address(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host, int(port)


async def presented(hostport: str, roots: bytes, *, alpn: str = "h2") -> x509.Certificate:
    """The certificate a new TLS connection to ``hostport`` is given, checked
    against ``roots`` for the name localhost."""
    context = ssl.create_default_context(cadata=roots.decode())
    context.set_alpn_protocols([alpn])
    host, port = address(hostport)
    _, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname="localhost")
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der)
    finally:
        writer.close()


def signed_by(certificate: x509.Certificate, root_pem: bytes) -> bool:
    try:
        certificate.verify_directly_issued_by(x509.load_pem_x509_certificate(root_pem))
    except Exception:
        return False
    return True


class OpenWatch:
    """A Watch stream on a channel of its own, read in the background."""

    def __init__(self, hostport: str, roots: bytes) -> None:
        self.channel = grpc.aio.secure_channel(
            hostport,
            grpc.ssl_channel_credentials(roots),
            options=[("grpc.ssl_target_name_override", "localhost")],
        )
        self.call = pb_grpc.RegistryServiceStub(self.channel).Watch(
            pb.WatchRequest(selector=pb.InstanceSelector(service="web"))
        )
        self.ids: set[str] = set()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for response in self.call:
            for event in response.events:
                if event.type == pb.WATCH_EVENT_TYPE_PUT:
                    self.ids.add(event.instance.id)

    async def close(self) -> None:
        self.call.cancel()
        await asyncio.wait({self.task})
        await self.channel.close()

    def alive(self) -> None:
        assert not self.task.done(), "the watch stream ended"


async def register(plane: ControlPlane, ca_file: Path, instance_id: str) -> None:
    """Over a new connection (a new handshake)."""
    async with AsyncClient(plane.address, ca_file=ca_file) as client:
        await client.register("web", "10.0.0.1", 80, id=instance_id)


async def test_the_issued_certificate_is_renewed_under_an_open_stream(
    auto_plane: ControlPlane, tmp_path: Path
) -> None:
    plane = auto_plane
    assert plane.identity is not None and plane.certificates is not None
    root = plane.identity.bundle_pems()[0]
    ca_file = tmp_path / "root.pem"
    ca_file.write_bytes(root)
    first = await presented(plane.address, root)
    # --tls-cert-ttl (the start is a minute in the past, for clock skew).
    assert first.not_valid_after_utc - first.not_valid_before_utc == timedelta(seconds=TTL + 60)
    watch = OpenWatch(plane.address, root)
    try:
        await register(plane, ca_file, "before")
        await assert_eventually(lambda: "before" in watch.ids)
        seen = [first]
        for round_ in range(2):  # renewed twice: 2 s apart

            async def renewed() -> x509.Certificate:
                current = await presented(plane.address, root)
                assert current.serial_number != seen[-1].serial_number
                return current

            current = await assert_eventually(renewed, timeout=TTL + 2)
            assert current.not_valid_after_utc > seen[-1].not_valid_after_utc
            assert signed_by(current, root)
            seen.append(current)
            await assert_eventually(lambda: admin_presents_the_current(plane, root))
            # A new connection works; the stream opened before goes on.
            await register(plane, ca_file, f"after-{round_}")
            await assert_eventually(lambda: f"after-{round_}" in watch.ids)  # noqa: B023
            watch.alive()
        assert plane.certificates.renewals >= 2
    finally:
        await watch.close()


def plane_serial(plane: ControlPlane) -> int:
    assert plane.certificates is not None
    return x509.load_pem_x509_certificate(plane.certificates.current.cert_pem).serial_number


async def admin_presents_the_current(plane: ControlPlane, roots: bytes) -> None:
    admin = await presented(plane.admin_address, roots, alpn="http/1.1")
    assert admin.serial_number == plane_serial(plane)


async def grpc_call(plane: ControlPlane, roots: bytes) -> None:
    """One call over a new gRPC connection (BoringSSL) trusting ``roots``."""
    async with grpc.aio.secure_channel(
        plane.address, grpc.ssl_channel_credentials(roots)
    ) as channel:
        await ca_pb2_grpc.CAServiceStub(channel).GetTrustBundle(
            ca_pb2.GetTrustBundleRequest(), timeout=5
        )


async def admin_get(plane: ControlPlane, roots: bytes) -> int:
    """GET /healthz over a new HTTPS connection (OpenSSL) trusting ``roots``: the status."""
    context = ssl.create_default_context(cadata=roots.decode())
    host, port = address(plane.admin_address)
    reader, writer = await asyncio.open_connection(
        host, port, ssl=context, server_hostname="localhost"
    )
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        return int((await reader.readline()).split()[1])
    finally:
        writer.close()


async def refused(connection: Awaitable[object]) -> None:
    """Asserts that a new connection's TLS handshake fails its client's check."""
    try:
        await connection
    except ssl.SSLCertVerificationError:
        return
    raise AssertionError("the client's check let the certificate through")


async def test_after_a_root_rotation_the_certificate_comes_from_the_new_root(
    tmp_path: Path,
) -> None:
    # A server certificate that would outlive the test: only the rotation replaces it.
    async with ControlPlane(config(tls_ca="auto", workload_cert_ttl=TTL)) as plane:
        assert plane.identity is not None
        plane.identity.skew_ms = 2_000  # the old root leaves 5 s after the switch
        old_root = plane.identity.bundle_pems()[0]
        old_file = tmp_path / "old.pem"
        old_file.write_bytes(old_root)
        before = await presented(plane.address, old_root)
        watch = OpenWatch(plane.address, old_root)
        try:
            await register(plane, old_file, "before")
            await assert_eventually(lambda: "before" in watch.ids)
            async with grpc.aio.secure_channel(
                plane.address, grpc.ssl_channel_credentials(old_root)
            ) as channel:
                rotated = await ca_pb2_grpc.CAServiceStub(channel).RotateRoot(
                    ca_pb2.RotateRootRequest(propagation_seconds=1)
                )
            new_root = rotated.bundle.roots_pem[1]
            bundle_file = tmp_path / "bundle.pem"
            bundle_file.write_bytes(old_root + new_root)

            async def from_the_new_root() -> x509.Certificate:
                current = await presented(plane.address, old_root + new_root)
                assert signed_by(current, new_root)
                return current

            current = await assert_eventually(from_the_new_root, timeout=5)
            assert current.serial_number != before.serial_number
            admin = await presented(plane.admin_address, new_root, alpn="http/1.1")
            assert signed_by(admin, new_root)
            new_file = tmp_path / "new.pem"
            new_file.write_bytes(new_root)
            # The new root comes cross-signed by the old one: a client whose CA
            # file holds only the old root (given out before the rotation)
            # still opens new connections, on both ports, with either TLS
            # library; one that trusts only the new root too.
            assert plane.identity.bundle_pems() == [new_root, old_root]
            for roots in (old_root, new_root):
                await grpc_call(plane, roots)
                assert await admin_get(plane, roots) == 200
                assert signed_by(await presented(plane.address, roots), new_root)
            await register(plane, old_file, "old-root-only")
            await register(plane, new_file, "new-root-only")

            def old_root_removed() -> None:
                assert plane.identity is not None
                assert plane.identity.bundle_pems() == [new_root]

            await assert_eventually(old_root_removed, timeout=10)

            # The old root is gone, and with it the cross-signed certificate:
            # a client that trusts only the old root is refused now.
            await assert_eventually(lambda: refused(presented(plane.address, old_root)), timeout=3)
            await assert_eventually(lambda: refused(admin_get(plane, old_root)), timeout=3)
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await grpc_call(plane, old_root)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
            # A client that trusts only the new root connects; the stream
            # opened under the old root's certificate goes on.
            await grpc_call(plane, new_root)
            assert await admin_get(plane, new_root) == 200
            await register(plane, new_file, "after")
            await assert_eventually(lambda: "after" in watch.ids)
            watch.alive()
        finally:
            await watch.close()


async def test_the_operators_files_are_read_again_when_they_change(tmp_path: Path) -> None:
    test_ca = TestCA.create(tmp_path / "pki")
    root = test_ca.cert_file.read_bytes()
    cert, key = test_ca.issue_server("cp")
    async with ControlPlane(config(tls_cert=str(cert), tls_key=str(key))) as plane:
        first = await presented(plane.address, root)
        watch = OpenWatch(plane.address, root)
        try:
            await register(plane, test_ca.cert_file, "before")
            await assert_eventually(lambda: "before" in watch.ids)

            # A certificate whose key has not been written yet: the one in use stays.
            assert plane.certificates is not None
            new_cert, new_key = test_ca.issue_server("cp-2")
            os.replace(new_cert, cert)
            with pytest.raises(TLSSetupError, match="does not match"):
                plane.certificates.check()
            assert (await presented(plane.address, root)).serial_number == first.serial_number

            os.replace(new_key, key)

            async def replaced() -> None:
                current = await presented(plane.address, root)
                assert current.serial_number != first.serial_number
                assert current.serial_number == plane_serial(plane)

            await assert_eventually(replaced, timeout=5)
            await admin_presents_the_current(plane, root)
            await register(plane, test_ca.cert_file, "after")
            await assert_eventually(lambda: "after" in watch.ids)
            watch.alive()
        finally:
            await watch.close()


async def test_replicas_still_ask_each_other_after_a_root_rotation(tmp_path: Path) -> None:
    from controlplane.store import MemoryStore
    from tests.integration.test_replicas_tls import sidecar

    fields = {"tls_ca": "auto", "workload_cert_ttl": TTL, "rebalance_interval": 0.3}
    async with MemoryStore() as store:
        planes = [ControlPlane(config(**fields), store=store) for _ in range(2)]
        await asyncio.gather(*(p.start() for p in planes))
        a, b = planes
        try:
            assert a.identity is not None and b.identity is not None
            for plane in planes:
                assert plane.identity is not None
                plane.identity.skew_ms = 2_000  # the old root leaves 5 s after the switch
            old_root = a.identity.bundle_pems()[0]
            old_file = tmp_path / "old.pem"
            old_file.write_bytes(old_root)
            async with (
                sidecar("on-a", a.address, old_file) as on_a,
                sidecar("on-b", b.address, old_file) as on_b,
            ):
                await assert_eventually(lambda: on_a.connected and on_b.connected)
                async with grpc.aio.secure_channel(
                    a.address, grpc.ssl_channel_credentials(old_root)
                ) as channel:
                    rotated = await ca_pb2_grpc.CAServiceStub(channel).RotateRoot(
                        ca_pb2.RotateRootRequest(propagation_seconds=1)
                    )
                new_root = rotated.bundle.roots_pem[1]

                def both_serve_the_new_root_cross_signed() -> bytes:
                    chains = set()
                    for plane in planes:
                        assert plane.certificates is not None
                        assert plane.certificates.current.issuer_pem == new_root
                        chains.add(plane.certificates.current.chain_pem)
                    (chain,) = chains
                    assert chain
                    return chain

                # Every replica serves the same cross-signed root, kept in the
                # store; one started now too, from its first handshake.
                chain = await assert_eventually(both_serve_the_new_root_cross_signed, timeout=5)
                async with ControlPlane(config(**fields), store=store) as late:
                    assert late.certificates is not None
                    assert late.certificates.current.chain_pem == chain
                    await grpc_call(late, old_root)

                def old_root_gone() -> None:
                    for plane in planes:
                        assert plane.identity is not None
                        assert plane.identity.bundle_pems() == [new_root]
                        assert plane.certificates is not None
                        assert plane.certificates.current.issuer_pem == new_root

                await assert_eventually(old_root_gone, timeout=10)
                new_file = tmp_path / "new.pem"
                new_file.write_bytes(new_root)
                # Only the other replica knows whether its sidecar applied a change:
                # each asks the other, over TLS, under the new root.
                for index, plane in enumerate(planes):
                    async with AsyncClient(plane.address, ca_file=new_file) as client:
                        registered = await client.register("orders", "10.0.0.1", 80, id=f"o{index}")
                        wait = await client.wait_for_revision(registered.mod_revision, timeout=5)
                        assert (wait.affected, wait.applied) == (2, True)
        finally:
            await asyncio.gather(*(p.stop(grace=0) for p in planes))
