"""The control plane's own TLS: the server certificate its listeners present.

Either the operator gives a certificate and key (``tls_cert``/``tls_key``), or
the control plane issues itself one from a CA it is given (``tls_ca``/
``tls_ca_key``, or ``tls_ca = "auto"``, through `controlplane.ca`), valid for
the host it listens on, ``localhost``, 127.0.0.1, ::1 and the extra
``tls_names``, for ``tls_cert_ttl``. The same certificate serves the gRPC
listener (registry, agent stream, bus) and the admin HTTP. gRPC negotiates TLS
1.3 whenever the client can; the admin port accepts TLS 1.2 and up.

:class:`ServerCertificates` keeps that certificate fresh while the listeners
serve: an issued one is issued again at two thirds of its lifetime, and at
once when another root starts signing (a root rotation); files given by the
operator are read again when they change on disk. New handshakes get the new
certificate; connections already open keep the one they were made with.

After a root rotation an issued certificate is served with the new root
cross-signed by the old one after it (`controlplane.identity`), so clients
whose CA file holds only the old root keep connecting until the old root
leaves the bundle; then the chain is served without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import os
import socket
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from controlplane.config import ControlPlaneConfig, parse_hostport

if TYPE_CHECKING:
    from controlplane.ca import CertificateAuthority
    from controlplane.identity import IdentityAuthority

__all__ = [
    "RENEW_AT",
    "ServerCertificates",
    "ServerTLS",
    "TLSSetupError",
    "load_server_tls",
    "server_names",
]

log = logging.getLogger(__name__)

_PEM_CERT = b"-----BEGIN CERTIFICATE-----"
#: Fraction of an issued server certificate's lifetime after which it is
#: issued again (the sidecars renew their workload certificates at the same point).
RENEW_AT = 2 / 3
#: Seconds between looks at the signing root and at the operator's files.
_POLL = 1.0
#: Seconds before trying again after a renewal failed (the old certificate stays).
_RETRY = 10.0


class TLSSetupError(Exception):
    """The TLS files could not be read or do not fit together (one line, for the operator)."""


@dataclass(frozen=True)
class ServerTLS:
    """A server certificate chain and its key (PEM), and the roots replicas trust
    when they call each other (None: the system's)."""

    cert_pem: bytes
    key_pem: bytes
    roots_pem: bytes | None
    #: The root that signed an issued certificate (None: the operator's files).
    issuer_pem: bytes | None = None
    #: When an issued certificate is issued again (seconds since the epoch).
    renew_at: float = math.inf
    #: The end of ``cert_pem`` after the leaf: the signing root cross-signed by
    #: older roots still trusted (an issued certificate after a rotation).
    chain_pem: bytes = b""

    @property
    def leaf_pem(self) -> bytes:
        """``cert_pem`` without :attr:`chain_pem`."""
        return self.cert_pem[: len(self.cert_pem) - len(self.chain_pem)]

    def with_chain(self, chain_pem: bytes) -> ServerTLS:
        """The same certificate served with another chain after it."""
        return replace(self, cert_pem=self.leaf_pem + chain_pem, chain_pem=chain_pem)

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials fixed to this certificate (:class:`ServerCertificates` gives
        ones that follow renewals)."""
        return grpc.ssl_server_credentials([(self.key_pem, self.cert_pem)])

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """For calls to the other replicas."""
        return grpc.ssl_channel_credentials(root_certificates=self.roots_pem)

    def ssl_context(self) -> ssl.SSLContext:
        """A server context for the admin HTTP (TLS 1.2 or later); raises
        TLSSetupError when the key does not match the certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.load_into(context)
        return context

    def load_into(self, context: ssl.SSLContext) -> None:
        """Makes ``context`` present this certificate: to connections it accepts
        from now on (OpenSSL copies the certificate into each connection when it
        is made, so open ones keep theirs). Raises TLSSetupError, leaving the
        context as it was, when the key does not match the certificate."""
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


def load_server_tls(
    config: ControlPlaneConfig,
    ca: CertificateAuthority | None = None,
    bundle_pem: bytes | None = None,
    chain_pem: bytes = b"",
) -> ServerTLS | None:
    """The TLS material ``config`` asks for (None: plaintext); reads the files and,
    with a CA, issues the server certificate. ``ca`` is the root signing now
    (required with ``--tls-ca auto``, where it is kept in the store; with
    ``--tls-ca``/``--tls-ca-key`` the files are read when it is None),
    ``bundle_pem`` every root it trusts (during a root rotation, more than
    ``ca``'s) and ``chain_pem`` what to serve after the issued certificate
    (during a rotation, ``ca`` cross-signed by the old root). Raises
    TLSSetupError."""
    if config.ca_auto or config.tls_ca_key:
        if ca is None:
            assert not config.ca_auto, "--tls-ca auto: the caller reads the CA from the store"
            tls = _issue(config)
        else:
            tls = _issue_from(ca, config, bundle_pem, chain_pem)
    elif config.tls_cert:
        tls = _read_files(config)
    else:
        return None
    tls.ssl_context()  # the key must match the certificate: say so now, not at the first handshake
    return tls


def _read_files(config: ControlPlaneConfig) -> ServerTLS:
    cert = _read(config.tls_cert, "--tls-cert")
    if _PEM_CERT not in cert:
        raise TLSSetupError(f"--tls-cert {config.tls_cert}: no PEM certificate in it")
    key = _read(config.tls_key, "--tls-key")
    roots = _read(config.tls_ca, "--tls-ca") if config.tls_ca else None
    return ServerTLS(cert, key, roots)


def _issue(config: ControlPlaneConfig) -> ServerTLS:
    from controlplane.ca import CAError, CertificateAuthority

    try:
        ca = CertificateAuthority.load(Path(config.tls_ca), Path(config.tls_ca_key))
    except CAError as exc:
        raise TLSSetupError(f"--tls-ca {config.tls_ca}: {exc}") from exc
    return _issue_from(ca, config)


def _issue_from(
    ca: CertificateAuthority,
    config: ControlPlaneConfig,
    bundle_pem: bytes | None = None,
    chain_pem: bytes = b"",
) -> ServerTLS:
    from controlplane.ca import CAError

    dns, ips = server_names(config)
    now = datetime.now(UTC)
    lifetime = timedelta(seconds=config.tls_cert_ttl)
    try:
        issued = ca.issue_server(dns_names=dns, ip_addresses=ips, lifetime=lifetime, now=now)
    except CAError as exc:
        raise TLSSetupError(f"cannot issue the server certificate: {exc}") from exc
    # Two thirds of the lifetime from now (not from the backdated start).
    renew_at = now.timestamp() + RENEW_AT * lifetime.total_seconds()
    return ServerTLS(
        issued.cert_pem + chain_pem,
        issued.key_pem,
        bundle_pem or ca.bundle_pem,
        issuer_pem=ca.root_pem,
        renew_at=renew_at,
        chain_pem=chain_pem,
    )


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


class ServerCertificates:
    """The server certificate the listeners present, replaced while they serve.

    Made from the certificate of the start (:func:`load_server_tls`). With
    ``identity`` (the control plane issues its own), :meth:`start` runs a task
    that issues a new one at two thirds of the lifetime of the one in use, and
    within a second of another root starting to sign (a root rotation), so
    that the certificate is always signed by the root the bundle starts with,
    and serves it with the chain the identity gives for that root (the new
    root cross-signed by the old one, until the old one leaves the bundle).
    Without it (the operator's ``--tls-cert``/``--tls-key``), the task reads
    the files again whenever they change on disk, and keeps the certificate
    in use while what is there does not load (a key that does not match yet).

    :meth:`server_credentials` (gRPC) and :meth:`ssl_context` (the admin HTTP)
    follow every change: gRPC asks for the certificate at each new handshake
    (the answer is one attribute read, no lock and no I/O), the SSL context is
    loaded again. Open connections and streams keep theirs. ``on_change``
    callbacks are called, in the event loop, with each new :class:`ServerTLS`,
    also when only the trusted roots changed.
    """

    def __init__(
        self,
        config: ControlPlaneConfig,
        tls: ServerTLS,
        identity: IdentityAuthority | None = None,
        *,
        poll: float = _POLL,
    ) -> None:
        self._config = config
        self._tls = tls
        self._identity = identity
        self._poll = poll
        self._files = _stat(config) if identity is None else None
        # (generation, configuration): replaced as a whole, read by gRPC's threads.
        self._served = (0, _grpc_configuration(tls))
        self._contexts: list[ssl.SSLContext] = []
        self._retry_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self.on_change: list[Callable[[ServerTLS], None]] = []
        #: How many times the certificate was replaced.
        self.renewals = 0

    @property
    def current(self) -> ServerTLS:
        """The certificate new handshakes get."""
        return self._tls

    def server_credentials(self) -> grpc.ServerCredentials:
        """For one gRPC port: the current certificate at every new handshake."""
        seen = self._served[0]

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            # Called by gRPC on its own threads before each handshake: None keeps
            # the certificate it has, so a new one is handed over once.
            nonlocal seen
            generation, configuration = self._served
            if generation == seen:
                return None
            seen = generation
            return configuration

        # The stubs leave out the None that grpc documents ("no change").
        return grpc.dynamic_ssl_server_credentials(self._served[1], fetch)  # type: ignore[arg-type]

    def ssl_context(self) -> ssl.SSLContext:
        """A server context for the admin HTTP, loaded again at each change."""
        context = self._tls.ssl_context()
        self._contexts.append(context)
        return context

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """For calls to the other replicas: the roots trusted now."""
        return self._tls.channel_credentials()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._follow(), name="server-certificate")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def check(self) -> bool:
        """Replaces the certificate if it is due (see the class); True if it did.
        Raises TLSSetupError when a new one is due but cannot be had."""
        fresh = self._fresh()
        if fresh is None:
            return False
        self._replace(fresh)
        return True

    async def _follow(self) -> None:
        while True:
            delay = min(self._poll, max(0.0, self._tls.renew_at - time.time()))
            await asyncio.sleep(max(delay, self._retry_at - time.time()))
            try:
                self.check()
            except Exception as exc:
                # An issued one is due until it is replaced: not every second.
                # Files are tried again when they change again.
                if self._identity is not None:
                    self._retry_at = time.time() + _RETRY
                if isinstance(exc, TLSSetupError):
                    log.warning("the server certificate in use stays: %s", exc)
                else:
                    log.exception("renewing the server certificate failed")

    def _fresh(self) -> ServerTLS | None:
        current = self._tls
        if self._identity is None:
            files = _stat(self._config)
            if files == self._files:
                return None
            self._files = files
            fresh = _read_files(self._config)
            log.info("the server certificate files changed: reading them again")
            return fresh
        signer = self._identity.signer()
        roots = b"".join(self._identity.bundle_pems())
        chain = b"".join(self._identity.chain_pems())
        if signer.root_pem != current.issuer_pem:
            log.info("another root signs now: issuing the server certificate from it")
        elif time.time() >= current.renew_at:
            log.info("the server certificate is at two thirds of its lifetime: renewing it")
        elif chain != current.chain_pem:
            log.info(
                "the server certificate is served with %d cross-signed root(s) after it now",
                chain.count(_PEM_CERT),
            )
            return replace(current.with_chain(chain), roots_pem=roots)
        elif roots != current.roots_pem:
            return replace(current, roots_pem=roots)
        else:
            return None
        return _issue_from(signer, self._config, roots, chain)

    def _replace(self, tls: ServerTLS) -> None:
        if (tls.cert_pem, tls.key_pem) != (self._tls.cert_pem, self._tls.key_pem):
            tls.ssl_context()  # the key must match: checked before anything changes
            for context in self._contexts:
                tls.load_into(context)
            self._served = (self._served[0] + 1, _grpc_configuration(tls))
            self.renewals += 1
            log.info("server certificate replaced: %s", _describe(tls.cert_pem))
        self._tls = tls
        for callback in list(self.on_change):
            try:
                callback(tls)
            except Exception:
                log.exception("server certificate callback failed")


def _grpc_configuration(tls: ServerTLS) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration([(tls.key_pem, tls.cert_pem)])


def _stat(config: ControlPlaneConfig) -> tuple[tuple[int, int, int] | None, ...]:
    """What changes when the operator's files are replaced or rewritten."""
    signature: list[tuple[int, int, int] | None] = []
    for path in (config.tls_cert, config.tls_key, config.tls_ca):
        try:
            stat = os.stat(path) if path else None
        except OSError:
            stat = None
        signature.append((stat.st_ino, stat.st_size, stat.st_mtime_ns) if stat else None)
    return tuple(signature)


def _describe(cert_pem: bytes) -> str:
    from cryptography import x509

    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return "unreadable"
    return (
        f"serial {certificate.serial_number:x}, "
        f"valid until {certificate.not_valid_after_utc.isoformat()}"
    )
