"""The sidecar's certificate keeper (sidecar.identity.SidecarIdentity) against a
scripted session: what it asks for, when it renews, how it takes a refusal, and
what a new signing root does."""

from __future__ import annotations

import time
from typing import Any

import pytest
from cryptography import x509

from controlplane.ca import CertificateAuthority, node_spiffe_id, service_spiffe_id
from controlplane.identity import IdentityAuthority
from sdk import PermissionDeniedError, TrustBundle, WorkloadCertificate
from sidecar.identity import RENEW_AT, SidecarIdentity

TD = "ecosystem.local"


class ScriptedSession:
    """Signs what it is asked for with ``ca``, except the services in ``refuse``."""

    def __init__(self, ca: CertificateAuthority, ttl: float = 30.0) -> None:
        from datetime import timedelta

        self.authority = IdentityAuthority.from_ca(ca, timedelta(seconds=ttl))
        self.connected = True
        self.refuse: set[str] = set()
        self.asked: list[str] = []

    def bundle(self) -> TrustBundle:
        return TrustBundle.from_proto(self.authority.trust_bundle())

    async def request_certificate(
        self, csr_pem: bytes, *, service: str = "", namespace: str = "", node: bool = False
    ) -> WorkloadCertificate:
        name = "node" if node else f"{namespace}/{service}"
        self.asked.append(name)
        if service in self.refuse:
            raise PermissionDeniedError(f"no instance of {service}", code="PERMISSION_DENIED")
        spiffe_id = (
            node_spiffe_id(TD, "node-a") if node else service_spiffe_id(TD, namespace, service)
        )
        cert_pem, expires = self.authority.sign(csr_pem, spiffe_id)
        return WorkloadCertificate(cert_pem, spiffe_id, expires / 1000)


def keeper(session: ScriptedSession, *services: str) -> SidecarIdentity:
    identity = SidecarIdentity("node-a", [("", s) for s in services])
    identity.attach(session)  # type: ignore[arg-type]
    identity.on_trust_bundle(session.bundle())
    return identity


async def test_it_asks_for_the_node_and_each_service_and_renews_at_two_thirds() -> None:
    session = ScriptedSession(CertificateAuthority.create(TD), ttl=30)
    identity = keeper(session, "web", "api")
    delay = await identity._round()
    assert session.asked == ["node", "default/api", "default/web"]
    web = identity.certificate("web")
    assert web is not None and web.spiffe_id == f"spiffe://{TD}/ns/default/svc/web"
    # Its key is its own: the certificate's public key is the key's.
    cert = x509.load_pem_x509_certificate(web.cert_pem)
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(web.key_pem, None)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]
    # Next round: when the first one is due, two thirds of 30 s from now.
    assert 19 < delay <= 20
    assert web.renew_at - web.issued_at == pytest.approx(
        RENEW_AT * (web.expires_at - web.issued_at)
    )
    session.asked.clear()
    assert await identity._round() > 19 and session.asked == []


async def test_a_refusal_is_shown_and_retried_later_not_at_once() -> None:
    session = ScriptedSession(CertificateAuthority.create(TD))
    session.refuse.add("web")
    identity = keeper(session, "web")
    delay = await identity._round()
    assert identity.certificate("web") is None and identity.node_certificate is not None
    status = {c["identity"]: c for c in identity.status()["certificates"]}
    assert status["default/web"] == {
        "identity": "default/web",
        "spiffe_id": None,
        "expires_at": None,
        "renew_at": None,
        "error": "no instance of web",
    }
    assert 0 < delay <= 0.4
    session.asked.clear()
    await identity._round()  # too soon: not asked again
    assert session.asked == []
    session.refuse.clear()
    identity._retry_at = {k: time.time() for k in identity._retry_at}
    await identity._round()
    assert session.asked == ["default/web"] and identity.certificate("web") is not None
    assert identity.status()["certificates"][1]["error"] == ""


async def test_a_new_signing_root_renews_everything_at_once() -> None:
    session = ScriptedSession(CertificateAuthority.create(TD))
    identity = keeper(session, "web")
    await identity._round()
    before = identity.certificate("web")
    # The control plane's CA changes (as after a rotation's switch).
    session.authority = ScriptedSession(CertificateAuthority.create(TD)).authority
    changes: list[Any] = []
    identity.add_listener(lambda: changes.append(1))
    identity.on_trust_bundle(session.bundle())
    session.asked.clear()
    await identity._round()
    assert sorted(session.asked) == ["default/web", "node"]
    after = identity.certificate("web")
    assert before is not None and after is not None and after.cert_pem != before.cert_pem
    assert after.signed_by == session.bundle().roots_pem[0]
    assert identity.renewals == 2 and len(changes) == 3  # the bundle, then each certificate


async def test_nothing_is_asked_before_a_bundle_or_while_disconnected() -> None:
    session = ScriptedSession(CertificateAuthority.create(TD))
    identity = SidecarIdentity("node-a", [("", "web")])
    identity.attach(session)  # type: ignore[arg-type]
    await identity._round()
    assert session.asked == []  # no CA on the control plane: no bundle, no request
    identity.on_trust_bundle(session.bundle())
    session.connected = False
    await identity._round()
    assert session.asked == []
    assert identity.status()["trust_domain"] == TD
