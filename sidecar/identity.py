"""The sidecar's workload identities: a certificate for each local service and
one for the node, signed by the control plane over the agent session.

For each identity the sidecar makes an EC P-256 key here, sends only a CSR,
and keeps the key and the certificate in memory (never on disk: a restart
asks again). Each certificate is renewed, with a new key, at two thirds of
its lifetime; a failed request is retried within seconds, never later than
the certificate's expiry allows. The trust bundle (the CA's roots) comes with
every Welcome and again whenever it changes (root rotation); a change of the
signing root renews every certificate at once.

What the proxy uses for mutual TLS between sidecars (sidecar.proxy._mtls):
:meth:`SidecarIdentity.ssl_context_for` gives a TLS 1.3 context with the
service's current certificate and key that trusts the current bundle.
Connections already open keep the certificate they were made with; ask for
a context for each new connection (it is cheap) so renewals apply to new
connections at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sdk import AgentSession, EcoError, TrustBundle

__all__ = ["Certificate", "SidecarIdentity"]

logger = logging.getLogger(__name__)

#: Fraction of a certificate's lifetime after which it is renewed.
RENEW_AT = 2 / 3
_RETRY_MIN = 0.2
_RETRY_MAX = 10.0
_DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True, slots=True)
class Certificate:
    """One identity's current certificate (leaf, PEM) and private key (PEM)."""

    spiffe_id: str
    cert_pem: bytes
    key_pem: bytes
    #: Seconds since the epoch.
    issued_at: float
    expires_at: float
    #: The root that signed it (PEM), as far as the bundle tells.
    signed_by: bytes

    @property
    def renew_at(self) -> float:
        return self.issued_at + RENEW_AT * (self.expires_at - self.issued_at)


Key = tuple[str, str]  # (namespace, service); ("", "") is the node
_NODE: Key = ("", "")


class SidecarIdentity:
    """Keeps a certificate for each of ``services`` ((namespace, name) pairs)
    and for the node, from ``session`` (set with :meth:`attach`)."""

    def __init__(self, node_id: str, services: Sequence[tuple[str, str]]) -> None:
        self.node_id = node_id
        local = sorted({(ns or _DEFAULT_NAMESPACE, name) for ns, name in services})
        self._wanted: list[Key] = [_NODE, *local]
        self._session: AgentSession | None = None
        self._certificates: dict[Key, Certificate] = {}
        self._bundle: TrustBundle | None = None
        self._errors: dict[Key, str] = {}
        self._failures: dict[Key, int] = {}
        self._retry_at: dict[Key, float] = {}
        # Renewed at once, whatever their age (their root stopped signing).
        self._due: set[Key] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[], None]] = []
        self.renewals = 0

    # -- wiring -------------------------------------------------------------------

    def attach(self, session: AgentSession) -> None:
        self._session = session

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sidecar-identity")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def on_session_state(self, session: AgentSession) -> None:
        if session.connected:
            self._wake.set()

    def on_trust_bundle(self, bundle: TrustBundle) -> None:
        previous = self._bundle
        self._bundle = bundle
        if previous is None or previous.roots_pem[:1] != bundle.roots_pem[:1]:
            # A new signing root (or the first bundle): renew everything now, so
            # that no certificate outlives the root it hangs from.
            if previous is not None:
                logger.info("the CA's signing root changed; renewing every certificate")
            self._retry_at.clear()
            for key, cert in self._certificates.items():
                if cert.signed_by != bundle.roots_pem[0]:
                    self._due.add(key)
        self._notify()
        self._wake.set()

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Called after every change of a certificate or of the bundle."""
        self._listeners.append(callback)

    # -- what the proxy uses ---------------------------------------------------------

    @property
    def bundle(self) -> TrustBundle | None:
        return self._bundle

    def certificate(self, service: str, namespace: str = "") -> Certificate | None:
        """The current certificate of a local service (None: none yet)."""
        return self._certificates.get((namespace or _DEFAULT_NAMESPACE, service))

    @property
    def node_certificate(self) -> Certificate | None:
        return self._certificates.get(_NODE)

    def ssl_context_for(
        self, service: str, namespace: str = "", *, server: bool = True
    ) -> ssl.SSLContext:
        """A TLS 1.3 context presenting the service's certificate and requiring a
        peer certificate signed by a root of the bundle. The peer's SPIFFE ID is
        not checked here (TLS cannot): the caller checks it. Raises LookupError
        when there is no certificate or bundle yet."""
        cert = self.certificate(service, namespace)
        if cert is None or self._bundle is None:
            raise LookupError(f"no workload certificate for {namespace or 'default'}/{service} yet")
        return self._context(cert, server=server)

    def node_ssl_context(self, *, server: bool = False) -> ssl.SSLContext:
        """Like :meth:`ssl_context_for`, presenting the node's certificate (for a
        sidecar that calls out with no local service to call as)."""
        cert = self.node_certificate
        if cert is None or self._bundle is None:
            raise LookupError(f"no workload certificate for node {self.node_id} yet")
        return self._context(cert, server=server)

    def _context(self, cert: Certificate, *, server: bool) -> ssl.SSLContext:
        assert self._bundle is not None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=self._bundle.pem.decode())
        # load_cert_chain reads files only: a private directory, gone at once.
        with tempfile.TemporaryDirectory(prefix="eco-identity-") as directory:
            cert_path, key_path = Path(directory) / "cert.pem", Path(directory) / "key.pem"
            cert_path.write_bytes(cert.cert_pem)
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(cert.key_pem)
            context.load_cert_chain(cert_path, key_path)
        return context

    def status(self) -> dict[str, Any]:
        """For ``/status``: the bundle and each certificate's SPIFFE ID and expiry."""
        certificates = []
        for key in self._wanted:
            cert = self._certificates.get(key)
            certificates.append(
                {
                    "identity": "node" if key == _NODE else f"{key[0]}/{key[1]}",
                    "spiffe_id": cert.spiffe_id if cert else None,
                    "expires_at": _iso(cert.expires_at) if cert else None,
                    "renew_at": _iso(cert.renew_at) if cert else None,
                    "error": self._errors.get(key, ""),
                }
            )
        bundle = self._bundle
        return {
            "trust_domain": bundle.trust_domain if bundle else None,
            "bundle_version": bundle.version if bundle else None,
            "roots": len(bundle.roots_pem) if bundle else 0,
            "renewals": self.renewals,
            "certificates": certificates,
        }

    def expiries(self) -> tuple[list[tuple[str, float]], int]:
        """For metrics: (identity, expiry) of each certificate held, and renewals."""
        held = [
            ("node" if key == _NODE else f"{key[0]}/{key[1]}", cert.expires_at)
            for key, cert in sorted(self._certificates.items())
        ]
        return held, self.renewals

    # -- the loop ---------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            delay = await self._round()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def _round(self) -> float:
        """Requests every certificate that is due; returns the seconds until the
        next one is."""
        session = self._session
        if session is None or not session.connected or self._bundle is None:
            return 60.0  # woken when connected and told the bundle
        now = time.time()
        for key in self._wanted:
            cert = self._certificates.get(key)
            due = cert is None or now >= cert.renew_at or key in self._due
            if due and now >= self._retry_at.get(key, 0.0):
                await self._request(session, key)
        now = time.time()
        times = [self._retry_at.get(k, 0.0) for k in self._wanted if k in self._retry_at]
        times += [c.renew_at for k, c in self._certificates.items() if k not in self._due]
        pending = [t - now for t in times]
        return max(0.05, min(pending, default=60.0))

    async def _request(self, session: AgentSession, key: Key) -> None:
        private = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(private, hashes.SHA256())
        )
        csr_pem = csr.public_bytes(serialization.Encoding.PEM)
        namespace, service = key
        try:
            issued = await session.request_certificate(
                csr_pem, service=service, namespace=namespace, node=key == _NODE
            )
        except (EcoError, TimeoutError) as exc:
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            message = exc.message if isinstance(exc, EcoError) else "no answer in time"
            self._errors[key] = message
            delay = min(_RETRY_MAX, _RETRY_MIN * 2**failures)
            current = self._certificates.get(key)
            if current is not None:
                delay = min(delay, max(_RETRY_MIN, (current.expires_at - time.time()) / 4))
            self._retry_at[key] = time.time() + delay
            log = logger.warning if failures <= 3 else logger.debug
            log("certificate for %s not issued: %s; retrying in %.1fs", _name(key), message, delay)
            return
        key_pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        renewed = key in self._certificates
        self._certificates[key] = Certificate(
            issued.spiffe_id,
            issued.cert_pem,
            key_pem,
            time.time(),
            issued.expires_at,
            _signer(issued.cert_pem, self._bundle),
        )
        self._errors.pop(key, None)
        self._failures.pop(key, None)
        self._retry_at.pop(key, None)
        self._due.discard(key)
        if renewed:
            self.renewals += 1
        logger.info(
            "%s certificate %s, valid until %s",
            "renewed" if renewed else "got",
            issued.spiffe_id,
            _iso(issued.expires_at),
        )
        self._notify()

    def _notify(self) -> None:
        for callback in list(self._listeners):
            try:
                callback()
            except Exception:
                logger.exception("identity listener failed")


def _signer(cert_pem: bytes, bundle: TrustBundle | None) -> bytes:
    if bundle is None:
        return b""
    leaf = x509.load_pem_x509_certificate(cert_pem)
    for root in bundle.roots_pem:
        try:
            leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(root))
        except (ValueError, TypeError, InvalidSignature):
            continue
        return root
    return b""


def _name(key: Key) -> str:
    return "the node" if key == _NODE else f"{key[0]}/{key[1]}"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
