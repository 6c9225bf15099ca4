"""The built-in certificate authority: the root it makes, the files it keeps,
the certificates it signs, and what it refuses. No sockets, no processes."""

from __future__ import annotations

import contextlib
import os
import ssl
import stat
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

import controlplane.ca
from controlplane.ca import (
    CAError,
    CAExistsError,
    CALoadError,
    CertificateAuthority,
    CSRError,
    InvalidIdentityError,
    WorkloadIdentity,
    node_spiffe_id,
    parse_spiffe_id,
    service_spiffe_id,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
WEB = "spiffe://ecosystem.local/ns/default/svc/web"


@pytest.fixture(scope="module")
def authority() -> CertificateAuthority:
    return CertificateAuthority.create(now=NOW - timedelta(days=1))


def csr_for(*names: x509.GeneralName, key: object = None) -> bytes:
    signer = key if key is not None else ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "anything")])
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    return builder.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


def verify_client(cert_pem: bytes, *roots: x509.Certificate, at: datetime = NOW) -> list[str]:
    """The chain checked as a TLS server checks a client; returns the URI SANs."""
    verifier = PolicyBuilder().store(Store(list(roots))).time(at).build_client_verifier()
    verified = verifier.verify(x509.load_pem_x509_certificate(cert_pem), [])
    return [str(name.value) for name in verified.subjects or []]


def sans(cert_pem: bytes) -> list[x509.GeneralName]:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


# -- the root ---------------------------------------------------------------


def test_the_root_is_an_ec_p256_ca_for_its_trust_domain() -> None:
    ca = CertificateAuthority.create("prod.example.com", lifetime=timedelta(days=365), now=NOW)
    cert = ca.certificate
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(cert.public_key().curve, ec.SECP256R1)  # type: ignore[union-attr]
    assert cert.issuer == cert.subject
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert cert.not_valid_after_utc == NOW + timedelta(days=365)
    assert ca.trust_domain == "prod.example.com"
    assert [str(n.value) for n in sans(ca.root_pem)] == ["spiffe://prod.example.com"]
    assert ca.trust_bundle == [ca.root_pem]
    assert ca.bundle_pem == ca.root_pem


@pytest.mark.parametrize(
    "domain",
    [
        "",
        "Ecosystem.local",
        "eco system",
        "ex.org/x",
        "spiffe://ex.org",
        "ex.org:80",
        "a\n",
        "a" * 256,
    ],
)
def test_a_bad_trust_domain_is_refused(domain: str) -> None:
    with pytest.raises(InvalidIdentityError, match="trust domain"):
        CertificateAuthority.create(domain)


# -- files ------------------------------------------------------------------


def test_saved_and_loaded_back_with_the_key_private(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    cert_path, key_path = authority.save(tmp_path / "ca")
    assert (cert_path.name, key_path.name) == ("ca.pem", "ca-key.pem")
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert b"PRIVATE KEY" in key_path.read_bytes()
    assert cert_path.read_bytes() == authority.root_pem
    loaded = CertificateAuthority.load(cert_path, key_path)
    assert loaded.root_pem == authority.root_pem
    assert loaded.trust_domain == authority.trust_domain
    # what the loaded CA signs, the original root verifies
    issued = loaded.sign_workload_csr(csr_for(), WEB, now=NOW)
    assert verify_client(issued, authority.certificate) == [WEB]


def test_the_key_is_0600_whatever_the_umask(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    previous = os.umask(0)
    try:
        _, key_path = authority.save(tmp_path)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600


def test_an_existing_ca_is_not_overwritten_unless_forced(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    authority.save(tmp_path)
    other = CertificateAuthority.create()
    with pytest.raises(CAExistsError, match="already exists") as caught:
        other.save(tmp_path)
    assert caught.value.path == tmp_path / "ca.pem"
    assert CertificateAuthority.load_dir(tmp_path).root_pem == authority.root_pem
    other.save(tmp_path, force=True)
    assert CertificateAuthority.load_dir(tmp_path).root_pem == other.root_pem


def test_loading_names_the_file_at_fault(authority: CertificateAuthority, tmp_path: Path) -> None:
    cert_path, key_path = authority.save(tmp_path / "a")
    _, other_key = CertificateAuthority.create().save(tmp_path / "b")

    with pytest.raises(CALoadError, match="no such file") as caught:
        CertificateAuthority.load(tmp_path / "missing.pem", key_path)
    assert caught.value.path == tmp_path / "missing.pem"

    with pytest.raises(CALoadError, match="does not belong") as caught:
        CertificateAuthority.load(cert_path, other_key)
    assert caught.value.path == other_key

    (tmp_path / "junk.pem").write_text("not a certificate\n")
    with pytest.raises(CALoadError, match="not a PEM certificate") as caught:
        CertificateAuthority.load(tmp_path / "junk.pem", key_path)
    assert caught.value.path == tmp_path / "junk.pem"

    with pytest.raises(CALoadError, match="private key") as caught:
        CertificateAuthority.load(cert_path, cert_path)
    assert caught.value.path == cert_path

    leaf, leaf_key = authority.issue_server(["localhost"], now=NOW)
    (tmp_path / "leaf.pem").write_bytes(leaf)
    (tmp_path / "leaf-key.pem").write_bytes(leaf_key)
    with pytest.raises(CALoadError, match="not a CA certificate"):
        CertificateAuthority.load(tmp_path / "leaf.pem", tmp_path / "leaf-key.pem")

    with pytest.raises(CALoadError, match="is a directory") as caught:
        CertificateAuthority.load(tmp_path, key_path)
    assert str(caught.value) == f"cannot load the CA from {tmp_path}: is a directory, not a file"


def test_from_pem_round_trips_and_refuses_a_mismatched_pair(
    authority: CertificateAuthority,
) -> None:
    again = CertificateAuthority.from_pem(authority.root_pem, authority.key_pem)
    assert again.root_pem == authority.root_pem
    with pytest.raises(CAError, match="does not belong"):
        CertificateAuthority.from_pem(authority.root_pem, CertificateAuthority.create().key_pem)


# -- the control plane's server certificate --------------------------------


def test_a_server_certificate_verifies_for_its_names(authority: CertificateAuthority) -> None:
    cert_pem, key_pem = authority.issue_server(
        ["localhost", "cp.example.com"], ["127.0.0.1", "::1"], now=NOW
    )
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert key.public_key() == cert.public_key()
    assert cert.not_valid_after_utc == NOW + controlplane.ca.DEFAULT_SERVER_LIFETIME
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage
    store = Store([authority.certificate])
    for name in (x509.DNSName("localhost"), x509.DNSName("cp.example.com")):
        PolicyBuilder().store(store).time(NOW).build_server_verifier(name).verify(cert, [])
    verifier = (
        PolicyBuilder()
        .store(store)
        .time(NOW)
        .build_server_verifier(x509.IPAddress(ip_address("127.0.0.1")))
    )
    verifier.verify(cert, [])
    with pytest.raises(VerificationError):
        PolicyBuilder().store(store).time(NOW).build_server_verifier(
            x509.DNSName("other.example.com")
        ).verify(cert, [])


def test_a_server_certificate_needs_valid_names(authority: CertificateAuthority) -> None:
    with pytest.raises(ValueError, match="at least one"):
        authority.issue_server()
    with pytest.raises(ValueError, match="invalid IP address"):
        authority.issue_server(ip_addresses=["300.1.1.1"])


# -- workload certificates ---------------------------------------------------


def test_a_workload_certificate_carries_exactly_its_spiffe_id_for_24_hours(
    authority: CertificateAuthority,
) -> None:
    cert_pem = authority.sign_workload_csr(
        csr_for(x509.UniformResourceIdentifier(WEB)), WEB, now=NOW
    )
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert sans(cert_pem) == [x509.UniformResourceIdentifier(WEB)]
    assert cert.not_valid_after_utc == NOW + timedelta(hours=24)
    assert cert.not_valid_before_utc == NOW - controlplane.ca.CLOCK_SKEW
    assert cert.issuer == authority.certificate.subject
    # the CSR's subject is not copied
    assert not cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usage)
    assert verify_client(cert_pem, authority.certificate) == [WEB]


def test_a_node_certificate(authority: CertificateAuthority) -> None:
    node = node_spiffe_id("ecosystem.local", "node-1")
    assert node == "spiffe://ecosystem.local/node/node-1"
    cert_pem = authority.sign_workload_csr(csr_for(), node, lifetime=timedelta(hours=1), now=NOW)
    assert verify_client(cert_pem, authority.certificate) == [node]


def test_a_workload_certificate_expires(authority: CertificateAuthority) -> None:
    cert_pem = authority.sign_workload_csr(csr_for(), WEB, lifetime=timedelta(hours=2), now=NOW)
    assert verify_client(cert_pem, authority.certificate, at=NOW + timedelta(hours=1))
    with pytest.raises(VerificationError):
        verify_client(cert_pem, authority.certificate, at=NOW + timedelta(hours=3))
    with pytest.raises(VerificationError):
        verify_client(cert_pem, authority.certificate, at=NOW - timedelta(hours=1))


def test_a_rogue_ca_does_not_verify_what_this_one_signed(authority: CertificateAuthority) -> None:
    rogue = CertificateAuthority.create(now=NOW - timedelta(days=1))  # same trust domain, too
    ours = authority.sign_workload_csr(csr_for(), WEB, now=NOW)
    theirs = rogue.sign_workload_csr(csr_for(), WEB, now=NOW)
    assert verify_client(ours, authority.certificate) == [WEB]
    with pytest.raises(VerificationError):
        verify_client(ours, rogue.certificate)
    with pytest.raises(VerificationError):
        verify_client(theirs, authority.certificate)


def test_a_csr_asking_for_another_name_is_refused(authority: CertificateAuthority) -> None:
    for extra in (
        x509.DNSName("evil.example.com"),
        x509.IPAddress(ip_address("10.0.0.1")),
        x509.UniformResourceIdentifier("spiffe://ecosystem.local/ns/default/svc/db"),
        x509.RFC822Name("a@example.com"),
    ):
        with pytest.raises(CSRError, match="names other than"):
            authority.sign_workload_csr(
                csr_for(x509.UniformResourceIdentifier(WEB), extra), WEB, now=NOW
            )


def test_a_csr_with_a_bad_signature_or_key_is_refused(authority: CertificateAuthority) -> None:
    good = x509.load_pem_x509_csr(csr_for())
    # the same request body with another key's signature
    tampered = bytearray(good.public_bytes(serialization.Encoding.DER))
    tampered[-3] ^= 0xFF
    tampered_pem = x509.load_der_x509_csr(bytes(tampered)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CSRError, match="signature does not verify"):
        authority.sign_workload_csr(tampered_pem, WEB, now=NOW)
    with pytest.raises(CSRError, match="not a PEM certificate signing request"):
        authority.sign_workload_csr(b"hello", WEB, now=NOW)
    with pytest.raises(CSRError, match="curve"):
        authority.sign_workload_csr(csr_for(key=ec.generate_private_key(ec.SECP256K1())), WEB)
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(CSRError, match="RSA key of 1024 bits"):
        authority.sign_workload_csr(csr_for(key=weak), WEB)


@pytest.mark.parametrize(
    "spiffe_id",
    [
        "spiffe://other.org/ns/default/svc/web",  # another trust domain
        "spiffe://ecosystem.local/ns/default/svc/web/extra",
        "spiffe://ecosystem.local/svc/web",
        "spiffe://ecosystem.local",
        "https://ecosystem.local/ns/default/svc/web",
    ],
)
def test_only_this_trust_domain_and_the_two_forms_are_signed(
    authority: CertificateAuthority, spiffe_id: str
) -> None:
    with pytest.raises(InvalidIdentityError):
        authority.sign_workload_csr(csr_for(x509.UniformResourceIdentifier(spiffe_id)), spiffe_id)


def test_nothing_outlives_the_root() -> None:
    short = CertificateAuthority.create(lifetime=timedelta(hours=1), now=NOW)
    with pytest.raises(CAError, match="the CA expires at"):
        short.sign_workload_csr(csr_for(), WEB, now=NOW)
    with pytest.raises(CAError, match="the CA expires at"):
        short.issue_server(["localhost"], now=NOW)


# -- SPIFFE IDs ---------------------------------------------------------------


def test_spiffe_ids_of_both_forms_parse() -> None:
    assert service_spiffe_id("ecosystem.local", "default", "web") == WEB
    assert parse_spiffe_id(WEB) == WorkloadIdentity("ecosystem.local", "default", "web")
    assert parse_spiffe_id(WEB, "ecosystem.local").service == "web"
    node = parse_spiffe_id("spiffe://td.example/node/n-1.a_b")
    assert (node.node, node.service, node.namespace) == ("n-1.a_b", None, None)
    assert node.spiffe_id == "spiffe://td.example/node/n-1.a_b"


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "spiffe://",
        "spiffe:///ns/a/svc/b",
        "http://ecosystem.local/ns/a/svc/b",
        "SPIFFE://ecosystem.local/ns/a/svc/b",  # not canonical
        "spiffe://Ecosystem.local/ns/a/svc/b",  # not canonical
        "spiffe://ecosystem.local/ns/a/svc/b\n",  # the package lets a trailing newline by
        "spiffe://ecosystem.local/ns/a/svc/b/",
        "spiffe://ecosystem.local/ns//svc/b",
        "spiffe://ecosystem.local/ns/../svc/b",
        "spiffe://ecosystem.local/ns/a/svc/b?x=1",
        "spiffe://ecosystem.local/ns/a/svc/b#f",
        "spiffe://ecosystem.local/ns/a%20b/svc/b",
        "spiffe://user@ecosystem.local/ns/a/svc/b",
        "spiffe://ecosystem.local:8443/ns/a/svc/b",
        "spiffe://ecosystem.local/ns/a/service/b",
        "spiffe://ecosystem.local/node",
        "spiffe://ecosystem.local/node/a/b",
        "spiffe://ecosystem.local/" + "a" * 2048,
    ],
)
def test_bad_spiffe_ids_are_refused(uri: str) -> None:
    with pytest.raises(InvalidIdentityError, match="SPIFFE ID"):
        parse_spiffe_id(uri)


def test_a_foreign_trust_domain_is_refused_when_one_is_expected() -> None:
    with pytest.raises(InvalidIdentityError, match=r"not 'ecosystem\.local'"):
        parse_spiffe_id("spiffe://evil.org/ns/default/svc/web", "ecosystem.local")


@pytest.mark.parametrize(
    ("namespace", "service"), [("", "web"), ("default", "we b"), ("..", "web"), ("a/b", "web")]
)
def test_ids_are_not_built_from_bad_names(namespace: str, service: str) -> None:
    with pytest.raises(InvalidIdentityError):
        service_spiffe_id("ecosystem.local", namespace, service)


def test_the_public_surface() -> None:
    assert sorted(controlplane.ca.__all__) == sorted(
        [
            "CA_CERT_FILE",
            "CA_KEY_FILE",
            "CLOCK_SKEW",
            "DEFAULT_CA_LIFETIME",
            "DEFAULT_SERVER_LIFETIME",
            "DEFAULT_TRUST_DOMAIN",
            "DEFAULT_WORKLOAD_LIFETIME",
            "CAError",
            "CAExistsError",
            "CALoadError",
            "CSRError",
            "CertificateAuthority",
            "InvalidIdentityError",
            "IssuedCertificate",
            "WorkloadIdentity",
            "check_trust_domain",
            "node_spiffe_id",
            "parse_spiffe_id",
            "service_spiffe_id",
        ]
    )


# -- cross-signing (root rotation) ---------------------------------------------


def test_a_new_root_cross_signed_by_the_old_one() -> None:
    old = CertificateAuthority.create(lifetime=timedelta(days=30), now=NOW)
    new = CertificateAuthority.create(now=NOW + timedelta(days=1))
    cross = x509.load_pem_x509_certificate(old.cross_sign(new.root_pem, now=NOW))
    # The new root's subject, key and extensions; issued and signed by the old root.
    assert cross.subject == cross.issuer == new.certificate.subject
    assert cross.public_key() == new.certificate.public_key()
    cross.verify_directly_issued_by(old.certificate)
    for kind in (x509.BasicConstraints, x509.KeyUsage, x509.SubjectAlternativeName):
        assert cross.extensions.get_extension_for_class(kind) == (
            new.certificate.extensions.get_extension_for_class(kind)
        )
    # It names the old root's key as its issuer's (not taken for self-signed).
    authority = cross.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert authority.key_identifier == (
        old.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    )
    # No longer than either root.
    assert cross.not_valid_before_utc == new.certificate.not_valid_before_utc
    assert cross.not_valid_after_utc == old.certificate.not_valid_after_utc


def test_a_root_does_not_cross_sign_itself_or_a_stranger(authority: CertificateAuthority) -> None:
    with pytest.raises(CAError, match="itself"):
        authority.cross_sign(authority.root_pem)
    with pytest.raises(CAError, match="not a PEM certificate"):
        authority.cross_sign(b"nothing")
    stranger = foreign_root()
    with pytest.raises(CAError, match="same subject"):
        authority.cross_sign(stranger)


def foreign_root() -> bytes:
    """A root of another name."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "another CA")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


# -- a TLS handshake in memory (OpenSSL's checks, no socket) --------------------


def _handshake(
    tmp_path: Path, server: CertificateAuthority, client: CertificateAuthority, host: str
) -> tuple[str | None, object]:
    """Mutual TLS between a server certificate from ``server`` and a workload
    certificate from ``client``, each side trusting its own CA; over memory."""

    def write(name: str, data: bytes) -> str:
        (tmp_path / name).write_bytes(data)
        return str(tmp_path / name)

    issued = server.issue_server(["localhost"], ["127.0.0.1"])
    key = ec.generate_private_key(ec.SECP256R1())
    workload = client.sign_workload_csr(csr_for(key=key), WEB)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(write("s.pem", issued.cert_pem), write("s-key.pem", issued.key_pem))
    server_side.load_verify_locations(write("s-ca.pem", server.bundle_pem))
    server_side.verify_mode = ssl.CERT_REQUIRED
    client_side = ssl.create_default_context(cafile=write("c-ca.pem", client.bundle_pem))
    client_side.load_cert_chain(write("w.pem", workload), write("w-key.pem", key_pem))
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    from_client, from_server = ssl.MemoryBIO(), ssl.MemoryBIO()
    dialer = client_side.wrap_bio(to_client, from_client, server_hostname=host)
    listener = server_side.wrap_bio(to_server, from_server, server_side=True)
    for _ in range(10):
        for end in (dialer, listener):
            with contextlib.suppress(ssl.SSLWantReadError):
                end.do_handshake()
        to_server.write(from_client.read())
        to_client.write(from_server.read())
    peer = listener.getpeercert()
    return dialer.version(), peer["subjectAltName"] if peer else None


def test_mutual_tls_with_openssl_over_memory(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    for host in ("localhost", "127.0.0.1"):
        version, peer_names = _handshake(tmp_path, authority, authority, host)
        assert version == "TLSv1.3"
        assert peer_names == (("URI", WEB),)


def test_openssl_refuses_a_rogue_ca(authority: CertificateAuthority, tmp_path: Path) -> None:
    rogue = CertificateAuthority.create()
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(tmp_path, authority, rogue, "localhost")  # the client trusts the rogue
