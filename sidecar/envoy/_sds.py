"""The Secret Discovery Service the sidecar serves its own Envoy (``dataplane: envoy``).

The sidecar holds its workload certificates and their private keys in memory
(sidecar.identity). Envoy gets them from here, over a Unix domain socket in
``<data_dir>/envoy/`` (a directory only the sidecar's user can enter): the
keys never cross a network, not even loopback, and the control plane never
sees one. Each certificate and the trust bundle is one secret:

- ``eco/node``: the node's certificate and key;
- ``eco/svc/<namespace>/<service>``: a local service's;
- ``eco/trust-bundle``: the CA's roots (the listeners and clusters add which
  SPIFFE IDs they accept: the control plane knows the trust domain).

The control plane's listeners and clusters name these secrets
(controlplane/xds/_envoy.py spells the same names). The service is
``envoy.service.secret.v3.SecretDiscoveryService``, state of the world:
every stream is sent the secrets it asks for as soon as the sidecar has
them, and again after each renewal or new bundle (a new ``version_info``),
so a renewed certificate reaches Envoy without a restart. A secret the
sidecar does not have yet is not sent: Envoy waits for it (a listener that
needs it does not serve until then).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.protobuf import any_pb2

from serving.envoy_names import BUNDLE_SECRET, NODE_SECRET, service_secret

if TYPE_CHECKING:
    from sidecar.identity import SidecarIdentity

__all__ = [
    "SECRET_TYPE",
    "SecretServer",
]

logger = logging.getLogger("sidecar.envoy")

#: The type of every resource served here.
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def _pack(secret: secret_pb2.Secret) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(secret)
    return packed


class SecretServer(sds_pb2_grpc.SecretDiscoveryServiceServicer):  # type: ignore[misc]
    """Serves ``identity``'s certificates (the node's and those of ``services``,
    (namespace, name) pairs) and bundle on the Unix socket ``path``."""

    def __init__(
        self, identity: SidecarIdentity, services: Sequence[tuple[str, str]], path: Path
    ) -> None:
        self.identity = identity
        self.services = sorted({(ns or "default", name) for ns, name in services})
        self.path = path
        #: Bumped on each change of a certificate or of the bundle: the version sent.
        self.version = 0
        self._wakes: set[asyncio.Event] = set()
        self._server: grpc.aio.Server | None = None
        identity.add_listener(self._changed)

    def _changed(self) -> None:
        self.version += 1
        for wake in self._wakes:
            wake.set()

    # -- the secrets -------------------------------------------------------------------

    def secrets(self) -> dict[str, secret_pb2.Secret]:
        """Every secret the sidecar can serve now, by name."""
        found: dict[str, secret_pb2.Secret] = {}
        bundle = self.identity.bundle
        if bundle is None:
            return found
        # The roots only: each listener and cluster says which SPIFFE IDs it accepts.
        validation = common_pb2.CertificateValidationContext()
        validation.trusted_ca.inline_bytes = bundle.pem
        found[BUNDLE_SECRET] = secret_pb2.Secret(name=BUNDLE_SECRET, validation_context=validation)
        certificates = {NODE_SECRET: self.identity.node_certificate}
        for namespace, service in self.services:
            certificates[service_secret(namespace, service)] = self.identity.certificate(
                service, namespace
            )
        for name, cert in certificates.items():
            if cert is None:
                continue
            tls = common_pb2.TlsCertificate()
            tls.certificate_chain.inline_bytes = cert.cert_pem
            tls.private_key.inline_bytes = cert.key_pem
            found[name] = secret_pb2.Secret(name=name, tls_certificate=tls)
        return found

    def _response(self, names: set[str], nonce: int) -> discovery_pb2.DiscoveryResponse:
        available = self.secrets()
        return discovery_pb2.DiscoveryResponse(
            version_info=str(self.version),
            type_url=SECRET_TYPE,
            nonce=str(nonce),
            resources=[_pack(available[n]) for n in sorted(names) if n in available],
        )

    # -- the gRPC service -------------------------------------------------------------

    async def StreamSecrets(
        self, requests: AsyncIterator[discovery_pb2.DiscoveryRequest], context: Any
    ) -> None:
        wake = asyncio.Event()
        names: set[str] = set()
        self._wakes.add(wake)

        async def read() -> None:
            try:
                async for request in requests:
                    if request.error_detail.message:
                        logger.warning(
                            "Envoy rejected secrets version %s: %s",
                            request.version_info,
                            request.error_detail.message,
                        )
                    wanted = set(request.resource_names)
                    if wanted != names:
                        names.clear()
                        names.update(wanted)
                        wake.set()
            finally:
                wake.set()

        reader = asyncio.create_task(read(), name="envoy-sds-reader")
        sent: tuple[int, frozenset[str]] | None = None
        nonce = 0
        try:
            while not reader.done():
                await wake.wait()
                wake.clear()
                available = names & self.secrets().keys()
                state = (self.version, frozenset(available))
                if available and state != sent:
                    nonce += 1
                    await context.write(self._response(names, nonce))
                    sent = state
        finally:
            self._wakes.discard(wake)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def FetchSecrets(
        self, request: discovery_pb2.DiscoveryRequest, context: Any
    ) -> discovery_pb2.DiscoveryResponse:
        return self._response(set(request.resource_names), 0)

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Listens on the socket (a stale one from an earlier run is replaced)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        server = grpc.aio.server()
        sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(self, server)
        server.add_insecure_port(f"unix:{self.path}")
        await server.start()
        os.chmod(self.path, 0o600)
        self._server = server

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(0)
        for wake in self._wakes:
            wake.set()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
