"""The mtls plugin: a client certificate checked against the route's own CA."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import ValidationError

from sidecar.gateway.auth import ConsumerConfig, ConsumerIndex, MtlsAuth, MtlsConfig
from sidecar.gateway.request import Consumer, GatewayRequest, LocalResponse

NOW = datetime.datetime.now(datetime.UTC)


class CA:
    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(hours=1))
            .not_valid_after(NOW + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )

    def write(self, path: Path) -> Path:
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path

    def client(
        self,
        cn: str = "alice",
        sans: list[x509.GeneralName] | None = None,
        eku: x509.ObjectIdentifier | None = ExtendedKeyUsageOID.CLIENT_AUTH,
        expired: bool = False,
    ) -> bytes:
        key = ec.generate_private_key(ec.SECP256R1())
        end = NOW - datetime.timedelta(minutes=1) if expired else NOW + datetime.timedelta(hours=1)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(hours=1))
            .not_valid_after(end)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        if eku is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        return builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


CLIENTS = CA("clients-ca")
OTHER = CA("other-ca")


def request(der: bytes | None) -> GatewayRequest:
    return GatewayRequest(method="GET", host="h", path="/", scheme="https", peer_certificate=der)


def plugin(tmp_path: Path, **config: object) -> MtlsAuth:
    ca_file = CLIENTS.write(tmp_path / "clients-ca.pem")
    consumers = ConsumerIndex([ConsumerConfig(name="alice", groups=("ops",))])
    return MtlsAuth(MtlsConfig.model_validate({"ca_file": ca_file, **config}), consumers)


def refusal(answer: LocalResponse | None) -> tuple[int, str, str]:
    assert answer is not None
    challenge = dict(answer.headers).get("www-authenticate", "")
    return answer.status, challenge, json.loads(answer.body)["message"]


async def test_a_certificate_from_the_ca_names_the_consumer(tmp_path: Path) -> None:
    auth = plugin(tmp_path)
    req = request(CLIENTS.client("alice"))
    assert auth.present(req)
    assert await auth.authenticate(req) is None
    assert req.consumer == Consumer("alice", "mtls", ("ops",))
    # No SAN and no extended key usage: still a client certificate of a private CA.
    req = request(CLIENTS.client("bob", eku=None))
    assert await auth.authenticate(req) is None
    assert req.consumer == Consumer("bob", "mtls")


async def test_the_name_can_come_from_a_san(tmp_path: Path) -> None:
    der = CLIENTS.client(
        "ignored",
        [x509.DNSName("billing.internal"), x509.UniformResourceIdentifier("spiffe://eg/billing")],
    )
    for source, name in (("san_uri", "spiffe://eg/billing"), ("san_dns", "billing.internal")):
        req = request(der)
        assert await plugin(tmp_path, consumer_from=source).authenticate(req) is None
        assert req.consumer is not None and req.consumer.name == name
    status, _, message = refusal(
        await plugin(tmp_path, consumer_from="san_uri").authenticate(request(CLIENTS.client()))
    )
    assert (status, message) == (401, "the client certificate has no san_uri name")


async def test_untrusted_or_unfit_certificates_are_refused(tmp_path: Path) -> None:
    auth = plugin(tmp_path)
    for der, reason in [
        (OTHER.client("alice"), "not trusted here"),
        (CLIENTS.client("alice", expired=True), "not trusted here"),
        (CLIENTS.client("alice", eku=ExtendedKeyUsageOID.SERVER_AUTH), "not trusted here"),
        (b"\x30\x03junk", "cannot be read"),
    ]:
        status, challenge, message = refusal(await auth.authenticate(request(der)))
        assert status == 401 and reason in message
        assert challenge.startswith(
            'ClientCertificate realm="gateway", error="invalid_certificate"'
        )
    status, challenge, _ = refusal(await auth.authenticate(request(None)))
    assert (status, challenge) == (401, 'ClientCertificate realm="gateway"')


async def test_allowed_names_and_known_consumers_answer_403(tmp_path: Path) -> None:
    allowed = plugin(tmp_path, allowed_names=["alice"])
    assert await allowed.authenticate(request(CLIENTS.client("alice"))) is None
    status, _, message = refusal(await allowed.authenticate(request(CLIENTS.client("carol"))))
    assert (status, message) == (403, "certificate name 'carol' is not allowed on this route")
    known = plugin(tmp_path, known_consumers_only=True)
    status, _, message = refusal(await known.authenticate(request(CLIENTS.client("carol"))))
    assert (status, message) == (403, "'carol' is not a consumer of this gateway")


async def test_a_verified_certificate_is_remembered(tmp_path: Path) -> None:
    auth = plugin(tmp_path)
    der = CLIENTS.client("alice")
    assert await auth.authenticate(request(der)) is None
    calls = []
    auth._verify = lambda *args: calls.append(args)  # type: ignore[assignment,method-assign,func-returns-value,return-value]
    assert await auth.authenticate(request(der)) is None
    assert calls == []


def test_config_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="No such file or directory"):
        MtlsConfig(ca_file=tmp_path / "missing.pem")
    (tmp_path / "empty.pem").write_text("nothing here")
    with pytest.raises(ValidationError, match="no PEM certificate in the file"):
        MtlsConfig(ca_file=tmp_path / "empty.pem")
    with pytest.raises(ValidationError, match="'cn', 'san_uri' or 'san_dns'"):
        MtlsConfig.model_validate(
            {"ca_file": CLIENTS.write(tmp_path / "ca.pem"), "consumer_from": "email"}
        )
