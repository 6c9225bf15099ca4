"""The control plane's own TLS: the server certificate its listeners present.

Either the operator gives a certificate and key (``tls_cert``/``tls_key``), or
the control plane issues itself one at start from a CA it is given
(``tls_ca``/``tls_ca_key``, through `controlplane.ca`), valid for the host it
listens on, ``localhost``, 127.0.0.1, ::1 and the extra ``tls_names``. The
same certificate serves the gRPC listener (registry, agent stream, bus) and the
admin HTTP. gRPC negotiates TLS 1.3 whenever the client can; the admin port
accepts TLS 1.2 and up.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from controlplane.config import ControlPlaneConfig, parse_hostport

if TYPE_CHECKING:
    from controlplane.ca import CertificateAuthority

__all__ = ["ServerTLS", "TLSSetupError", "load_server_tls", "server_names"]

_PEM_CERT = b"-----BEGIN CERTIFICATE-----"


class TLSSetupError(Exception):
    """The TLS files could not be read or do not fit together (one line, for the operator)."""


@dataclass(frozen=True)
class ServerTLS:
    """A server certificate chain and its key (PEM), and the roots replicas trust
    when they call each other (None: the system's)."""

    cert_pem: bytes
    key_pem: bytes
    roots_pem: bytes | None

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key_pem, self.cert_pem)])

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """For calls to the other replicas."""
        return grpc.ssl_channel_credentials(root_certificates=self.roots_pem)

    def ssl_context(self) -> ssl.SSLContext:
        """A server context for the admin HTTP (TLS 1.2 or later); raises
        TLSSetupError when the key does not match the certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # load_cert_chain reads files only: a private directory, gone at once.
        with tempfile.TemporaryDirectory(prefix="eco-tls-") as directory:
            cert, key = Path(directory) / "cert.pem", Path(directory) / "key.pem"
            cert.write_bytes(self.cert_pem)
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(self.key_pem)
            try:
                context.load_cert_chain(cert, key)
            except ssl.SSLError as exc:
                raise TLSSetupError(
                    f"the TLS key does not match the certificate, or is not PEM ({exc.reason})"
                ) from exc
        return context


def load_server_tls(
    config: ControlPlaneConfig,
    ca: CertificateAuthority | None = None,
    bundle_pem: bytes | None = None,
) -> ServerTLS | None:
    """The TLS material ``config`` asks for (None: plaintext); reads the files and,
    with a CA, issues the server certificate. ``ca`` is the CA kept in the store
    (``--tls-ca auto``) and ``bundle_pem`` every root it trusts (during a root
    rotation, more than ``ca``'s). Raises TLSSetupError."""
    if config.ca_auto:
        assert ca is not None, "--tls-ca auto: the caller reads the CA from the store"
        tls = _issue_from(ca, config, bundle_pem)
    elif config.tls_cert:
        cert = _read(config.tls_cert, "--tls-cert")
        if _PEM_CERT not in cert:
            raise TLSSetupError(f"--tls-cert {config.tls_cert}: no PEM certificate in it")
        key = _read(config.tls_key, "--tls-key")
        roots = _read(config.tls_ca, "--tls-ca") if config.tls_ca else None
        tls = ServerTLS(cert, key, roots)
    elif config.tls_ca_key:
        tls = _issue(config)
    else:
        return None
    tls.ssl_context()  # the key must match the certificate: say so now, not at the first handshake
    return tls


def _issue(config: ControlPlaneConfig) -> ServerTLS:
    from controlplane.ca import CAError, CertificateAuthority

    try:
        ca = CertificateAuthority.load(Path(config.tls_ca), Path(config.tls_ca_key))
    except CAError as exc:
        raise TLSSetupError(f"--tls-ca {config.tls_ca}: {exc}") from exc
    return _issue_from(ca, config)


def _issue_from(
    ca: CertificateAuthority, config: ControlPlaneConfig, bundle_pem: bytes | None = None
) -> ServerTLS:
    from controlplane.ca import CAError

    dns, ips = server_names(config)
    try:
        issued = ca.issue_server(dns_names=dns, ip_addresses=ips)
    except CAError as exc:
        raise TLSSetupError(f"cannot issue the server certificate: {exc}") from exc
    return ServerTLS(issued.cert_pem, issued.key_pem, bundle_pem or ca.bundle_pem)


def server_names(config: ControlPlaneConfig) -> tuple[list[str], list[str]]:
    """The DNS names and IP addresses the issued server certificate is valid for."""
    names = ["localhost", "127.0.0.1", "::1", *config.tls_names]
    for address in (config.listen, config.advertise):
        if not address:
            continue
        host = parse_hostport(address)[0]
        if host in ("", "0.0.0.0", "::"):
            names.append(socket.gethostname())
        else:
            names.append(host)
    dns: list[str] = []
    ips: list[str] = []
    for name in names:
        try:
            ip = str(ipaddress.ip_address(name.strip("[]")))
        except ValueError:
            if name not in dns:
                dns.append(name)
        else:
            if ip not in ips:
                ips.append(ip)
    return dns, ips


def _read(path: str, option: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TLSSetupError(f"{option} {path}: {exc.strerror}") from exc
