"""The built-in certificate authority: one self-signed root that signs the
control plane's server certificate and the workloads' SPIFFE certificates.

The root's key is EC P-256. The root names its trust domain in a URI SAN
(``spiffe://<trust-domain>``), so a CA loaded from files knows it without a
separate setting. Every certificate is backdated by :data:`CLOCK_SKEW` so
that a host whose clock is a little behind accepts it at once, and none may
outlive the root (issuing one that would is refused: rotate the root).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controlplane.ca._errors import (
    CAError,
    CAExistsError,
    CALoadError,
    CSRError,
    InvalidIdentityError,
)
from controlplane.ca._identity import check_trust_domain, parse_spiffe_id

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CLOCK_SKEW",
    "DEFAULT_CA_LIFETIME",
    "DEFAULT_SERVER_LIFETIME",
    "DEFAULT_TRUST_DOMAIN",
    "DEFAULT_WORKLOAD_LIFETIME",
    "CertificateAuthority",
    "IssuedCertificate",
]

DEFAULT_TRUST_DOMAIN = "ecosystem.local"
DEFAULT_CA_LIFETIME = timedelta(days=3650)
DEFAULT_SERVER_LIFETIME = timedelta(days=365)
DEFAULT_WORKLOAD_LIFETIME = timedelta(hours=24)
CLOCK_SKEW = timedelta(minutes=1)
CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"

_ORGANIZATION = "Ecosystem"
#: Keys a workload's CSR may carry (what gRPC's TLS accepts and is not weak).
_EC_CURVES = (ec.SECP256R1, ec.SECP384R1)
_MIN_RSA_BITS = 2048


class IssuedCertificate(NamedTuple):
    """A certificate and the private key made for it, both PEM."""

    cert_pem: bytes
    key_pem: bytes


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class CertificateAuthority:
    """A root certificate and its key; signs server and workload certificates.

    Make one with :meth:`create` (a new root) or :meth:`load` / :meth:`load_dir`
    / :meth:`from_pem` (an existing one). Holds no files or sockets open.
    """

    def __init__(
        self, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey, trust_domain: str
    ) -> None:
        self._certificate = certificate
        self._key = key
        self._trust_domain = trust_domain

    # -- making and keeping one ------------------------------------------

    @classmethod
    def create(
        cls,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        *,
        lifetime: timedelta = DEFAULT_CA_LIFETIME,
        now: datetime | None = None,
    ) -> CertificateAuthority:
        """A new self-signed root (EC P-256) for ``trust_domain``, valid ``lifetime``."""
        check_trust_domain(trust_domain)
        if lifetime <= timedelta(0):
            raise ValueError("lifetime must be positive")
        start = _now(now)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
                x509.NameAttribute(NameOID.COMMON_NAME, "Ecosystem root CA"),
            ]
        )
        public = key.public_key()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - CLOCK_SKEW)
            .not_valid_after(start + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(certificate, key, trust_domain)

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes) -> CertificateAuthority:
        """A CA from its certificate and key as PEM; :class:`CAError` if they are not one."""
        try:
            certificate = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as err:
            raise CAError(f"the CA certificate is not a PEM certificate: {err}") from err
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as err:
            raise CAError(f"the CA key is not an unencrypted PEM private key: {err}") from err
        try:
            return cls._checked(certificate, key)
        except _PairError as err:
            raise CAError(f"the CA {err.which}: {err.reason}") from None

    @classmethod
    def _checked(cls, certificate: x509.Certificate, key: object) -> CertificateAuthority:
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise _PairError("key", "not an EC private key")
        if key.public_key() != certificate.public_key():
            raise _PairError("key", "the key does not belong to the CA certificate")
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        except x509.ExtensionNotFound:
            raise _PairError("cert", "not a CA certificate (no basicConstraints)") from None
        if not constraints.value.ca:
            raise _PairError("cert", "not a CA certificate (basicConstraints CA:FALSE)")
        return cls(certificate, key, _trust_domain_of(certificate))

    @classmethod
    def load(
        cls, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]
    ) -> CertificateAuthority:
        """Reads a CA written by :meth:`save`; :class:`CALoadError` names the file at fault."""
        cert_file, key_file = Path(cert_path), Path(key_path)
        cert_pem = _read(cert_file)
        key_pem = _read(key_file)
        try:
            certificate = x509.load_pem_x509_certificate(cert_pem)
        except ValueError:
            raise CALoadError(cert_file, "not a PEM certificate") from None
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError):
            raise CALoadError(key_file, "not an unencrypted PEM private key") from None
        try:
            return cls._checked(certificate, key)
        except _PairError as err:
            raise CALoadError(key_file if err.which == "key" else cert_file, err.reason) from None

    @classmethod
    def load_dir(cls, directory: str | os.PathLike[str]) -> CertificateAuthority:
        """:meth:`load` of ``DIRECTORY/ca.pem`` and ``DIRECTORY/ca-key.pem``."""
        return cls.load(Path(directory) / CA_CERT_FILE, Path(directory) / CA_KEY_FILE)

    def save(self, directory: str | os.PathLike[str], *, force: bool = False) -> tuple[Path, Path]:
        """Writes ``ca.pem`` and ``ca-key.pem`` (mode 0600) into ``directory``.

        Creates the directory (mode 0700) if needed. Refuses, with
        :class:`CAExistsError`, when either file is there already, unless
        ``force``. Returns the two paths (certificate, key).
        """
        folder = Path(directory)
        cert_file, key_file = folder / CA_CERT_FILE, folder / CA_KEY_FILE
        if not force:
            for path in (cert_file, key_file):
                if path.exists():
                    raise CAExistsError(path)
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            _write(key_file, self.key_pem, 0o600)
            _write(cert_file, self.root_pem, 0o644)
        except OSError as err:
            raise CAError(f"cannot write the CA to {folder}: {err.strerror or err}") from err
        return cert_file, key_file

    # -- what it is ------------------------------------------------------

    @property
    def trust_domain(self) -> str:
        """The trust domain every workload certificate's SPIFFE ID is in."""
        return self._trust_domain

    @property
    def certificate(self) -> x509.Certificate:
        """The root certificate."""
        return self._certificate

    @property
    def root_pem(self) -> bytes:
        """The root certificate, PEM: what clients trust."""
        return self._certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """The root's private key, unencrypted PKCS#8 PEM: keep it secret."""
        return _key_pem(self._key)

    @property
    def trust_bundle(self) -> list[bytes]:
        """The roots a peer should trust, each PEM (today only this root)."""
        return [self.root_pem]

    @property
    def bundle_pem(self) -> bytes:
        """:attr:`trust_bundle` as one PEM file (gRPC's ``root_certificates``)."""
        return b"".join(self.trust_bundle)

    def cross_sign(self, root_pem: bytes, *, now: datetime | None = None) -> bytes:
        """``root_pem`` (another root of this trust domain) signed by this root; PEM.

        The result has the other root's subject, public key and extensions and
        this root as its issuer, and lasts no longer than either root. Served
        after a certificate the other root signed, it lets a client that
        trusts only this root verify that certificate: leaf, then the
        cross-signed root, then this root. Both roots have the same subject,
        so the cross-signed certificate is self-issued and does not count
        against this root's path length of 0 (RFC 5280, 4.2.1.9), which every
        deployed root has.
        """
        try:
            other = x509.load_pem_x509_certificate(root_pem)
        except ValueError as err:
            raise CAError(f"not a PEM certificate: {err}") from None
        if other.subject != self._certificate.subject:
            raise CAError("only a root with the same subject can be cross-signed")
        if other.public_key() == self._certificate.public_key():
            raise CAError("a root cannot cross-sign itself")
        start = max(other.not_valid_before_utc, self._certificate.not_valid_before_utc)
        end = min(other.not_valid_after_utc, self._certificate.not_valid_after_utc)
        if end <= _now(now):
            raise CAError("one of the two roots has expired")
        builder = (
            x509.CertificateBuilder()
            .subject_name(other.subject)
            .issuer_name(self._certificate.subject)
            .public_key(other.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
        )
        for extension in other.extensions:
            if not isinstance(extension.value, x509.AuthorityKeyIdentifier):
                builder = builder.add_extension(extension.value, extension.critical)
        # The issuer's key id: without it OpenSSL takes the certificate for
        # self-signed (its subject is its issuer) and refuses the chain.
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
            critical=False,
        )
        return builder.sign(self._key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    # -- issuing ---------------------------------------------------------

    def issue_server(
        self,
        dns_names: Iterable[str] = (),
        ip_addresses: Iterable[str] = (),
        *,
        lifetime: timedelta = DEFAULT_SERVER_LIFETIME,
        now: datetime | None = None,
    ) -> IssuedCertificate:
        """A new key and a certificate for a listener reached by these names.

        At least one DNS name or IP address is required; the certificate is
        signed directly by the root (pass :attr:`bundle_pem` to clients) and
        is good for TLS server and client authentication.
        """
        names: list[x509.GeneralName] = []
        for dns in dns_names:
            if not dns or not isinstance(dns, str) or any(c.isspace() for c in dns):
                raise ValueError(f"invalid DNS name {dns!r}")
            names.append(x509.DNSName(dns))
        for ip in ip_addresses:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(ip)))
            except ValueError:
                raise ValueError(f"invalid IP address {ip!r}") from None
        if not names:
            raise ValueError("a server certificate needs at least one DNS name or IP address")
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
                x509.NameAttribute(NameOID.COMMON_NAME, _common_name(names[0])),
            ]
        )
        certificate = self._sign(key.public_key(), subject, names, lifetime, now)
        return IssuedCertificate(certificate, _key_pem(key))

    def sign_workload_csr(
        self,
        csr_pem: bytes,
        spiffe_id: str,
        *,
        lifetime: timedelta = DEFAULT_WORKLOAD_LIFETIME,
        now: datetime | None = None,
    ) -> bytes:
        """Signs a workload's CSR with ``spiffe_id`` as its only name; returns the PEM.

        ``spiffe_id`` must be one of the project's forms in this CA's trust
        domain (:class:`InvalidIdentityError` otherwise). The CSR must be
        correctly signed by an EC P-256/P-384 or RSA ≥ 2048 key, and may ask
        for no name but that SPIFFE ID (:class:`CSRError`). Its subject and
        other requested extensions are ignored: the CA decides them.
        """
        parse_spiffe_id(spiffe_id, self._trust_domain)
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as err:
            raise CSRError(f"not a PEM certificate signing request: {err}") from None
        try:
            valid = csr.is_signature_valid
        except (ValueError, InvalidSignature):  # pragma: no cover - unusual key types
            valid = False
        if not valid:
            raise CSRError("the certificate signing request's signature does not verify")
        public = csr.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            if not isinstance(public.curve, _EC_CURVES):
                raise CSRError(f"unsupported EC curve {public.curve.name}; use P-256 or P-384")
        elif isinstance(public, rsa.RSAPublicKey):
            if public.key_size < _MIN_RSA_BITS:
                raise CSRError(f"RSA key of {public.key_size} bits; use at least {_MIN_RSA_BITS}")
        else:
            raise CSRError("unsupported key type; use EC P-256")
        requested: list[x509.GeneralName] = []
        try:
            requested = list(
                csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            )
        except x509.ExtensionNotFound:
            pass  # asking for nothing is fine: the CA names the certificate
        except ValueError as err:
            raise CSRError(f"unreadable extensions in the request: {err}") from None
        foreign = [
            name
            for name in requested
            if not (isinstance(name, x509.UniformResourceIdentifier) and name.value == spiffe_id)
        ]
        if foreign:
            raise CSRError(
                f"the request asks for names other than {spiffe_id}: "
                + ", ".join(str(getattr(name, "value", name)) for name in foreign)
            )
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION)])
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)]
        return self._sign(public, subject, names, lifetime, now)

    def _sign(
        self,
        public: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
        subject: x509.Name,
        names: list[x509.GeneralName],
        lifetime: timedelta,
        now: datetime | None,
    ) -> bytes:
        if lifetime <= timedelta(0):
            raise ValueError("lifetime must be positive")
        start = _now(now)
        end = start + lifetime
        ca_end = self._certificate.not_valid_after_utc
        if end > ca_end:
            raise CAError(
                f"the CA expires at {ca_end.isoformat()}, before a certificate issued now "
                f"would ({end.isoformat()}); issue a shorter one or create a new CA"
            )
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._certificate.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(max(start - CLOCK_SKEW, self._certificate.not_valid_before_utc))
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=isinstance(public, rsa.RSAPublicKey),
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        return certificate.public_bytes(serialization.Encoding.PEM)


def _common_name(name: x509.GeneralName) -> str:
    value = str(name.value)
    return value if len(value) <= 64 else value[:64]


class _PairError(Exception):
    """What is wrong with a CA's certificate (``which`` = "cert") or key ("key")."""

    def __init__(self, which: str, reason: str) -> None:
        super().__init__(reason)
        self.which = which
        self.reason = reason


def _trust_domain_of(certificate: x509.Certificate) -> str:
    uris: list[str] = []
    with contextlib.suppress(x509.ExtensionNotFound):  # no SAN: no URI names
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    for uri in uris:
        domain = uri.removeprefix("spiffe://")
        if uri.startswith("spiffe://") and "/" not in domain:
            try:
                return check_trust_domain(domain)
            except InvalidIdentityError as err:
                raise _PairError("cert", str(err)) from None
    raise _PairError("cert", "names no trust domain (no spiffe://<trust-domain> URI SAN)")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CALoadError(path, "no such file (create a CA with 'eco ca init')") from None
    except IsADirectoryError:
        raise CALoadError(path, "is a directory, not a file") from None
    except OSError as err:
        raise CALoadError(path, err.strerror or str(err)) from None


def _write(path: Path, data: bytes, mode: int) -> None:
    """Writes ``data`` to a new file created with ``mode`` (never wider, even briefly)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.chmod(temporary, mode)  # exactly mode, whatever the umask
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
