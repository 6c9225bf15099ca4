"""The inbound listener's check of a caller, without sockets: the SPIFFE ID in
the peer's certificate, its trust domain, the intentions, and re-checks of
tracked connections when the intentions change."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sdk import Intention, IntentionDecision, IntentionSet, TrustBundle
from sidecar.intentions import IntentionTable
from sidecar.proxy._mtls import MeshTls

TD = "ecosystem.local"


def cert_der(*uris: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=False,
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


class FakeSsl:
    def __init__(self, der: bytes) -> None:
        self.der = der

    def getpeercert(self, binary_form: bool = False) -> bytes:
        return self.der


class FakeTransport:
    def __init__(self, der: bytes | None) -> None:
        self.ssl = FakeSsl(der) if der is not None else None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.ssl if name == "ssl_object" else default


class FakeIdentity:
    bundle = TrustBundle(TD, (b"root",), 1)

    def add_listener(self, callback: Callable[[], None]) -> None:
        return  # the bundle never changes here


def mesh(*intentions: Intention, default_allow: bool = False) -> tuple[MeshTls, IntentionTable]:
    table = IntentionTable()
    table.on_intentions(IntentionSet(tuple(intentions), default_allow, 1))
    return MeshTls(FakeIdentity(), table, ("default", "web")), table  # type: ignore[arg-type]


def svc(name: str, domain: str = TD, namespace: str = "default") -> FakeTransport:
    return FakeTransport(cert_der(f"spiffe://{domain}/ns/{namespace}/svc/{name}"))


def test_the_callers_service_is_checked_against_the_intentions() -> None:
    m, _ = mesh(Intention("web", "orders", True))
    assert m.authorize(svc("web"), "orders").allowed
    denied = m.authorize(svc("api"), "orders")
    assert not denied.allowed and denied.reason == "no intention matches: default deny"


def test_the_callers_namespace_and_the_destinations_count() -> None:
    m, table = mesh(
        Intention("team-a/web", "orders", True),
        Intention("team-a/*", "team-b/orders", True),
    )
    assert m.authorize(svc("web", namespace="team-a"), "orders").allowed
    assert m.authorize(svc("web", namespace="team-a"), "default/orders").allowed
    # web of another namespace (or of default) is another caller.
    assert not m.authorize(svc("web", namespace="team-b"), "orders").allowed
    assert not m.authorize(svc("web"), "orders").allowed
    # orders of team-b is another destination.
    assert m.authorize(svc("api", namespace="team-a"), "team-b/orders").allowed
    assert not m.authorize(svc("api", namespace="team-a"), "orders").allowed
    heard: list[IntentionDecision] = []
    m.track("conn", svc("web", namespace="team-a"), "orders", heard.append)
    table.on_intentions(IntentionSet((Intention("team-a/*", "*", False),), True, 2))
    assert [(d.allowed, d.reason) for d in heard] == [(False, "intention team-a/* -> * denies")]


def test_identities_that_name_no_service_of_this_trust_domain() -> None:
    m, _ = mesh(Intention("*", "orders", True))
    assert not m.authorize(svc("web", "other.domain"), "orders").allowed
    assert "is not in trust domain" in m.authorize(svc("web", "other.domain"), "orders").reason
    node = FakeTransport(cert_der(f"spiffe://{TD}/node/edge-1"))
    assert m.authorize(node, "orders").allowed  # a node matches `*` sources only
    assert not mesh(Intention("web", "orders", True))[0].authorize(node, "orders").allowed
    two = FakeTransport(cert_der(f"spiffe://{TD}/ns/a/svc/b", f"spiffe://{TD}/ns/a/svc/c"))
    assert "2 URI names" in m.authorize(two, "orders").reason
    none = FakeTransport(cert_der())
    assert "no SPIFFE ID" in m.authorize(none, "orders").reason
    odd = FakeTransport(cert_der(f"spiffe://{TD}/ns/default/svc"))
    assert "neither a service's nor a node's" in m.authorize(odd, "orders").reason


def test_plaintext_is_not_checked() -> None:
    m, _ = mesh()
    assert m.authorize(FakeTransport(None), "orders").allowed


def test_tracked_connections_hear_of_every_change_until_forgotten() -> None:
    m, table = mesh(Intention("web", "orders", True))
    heard: list[IntentionDecision] = []
    transport = svc("web")
    m.track("conn", transport, "orders", heard.append)
    table.on_intentions(IntentionSet((Intention("web", "orders", False),), False, 2))
    table.on_intentions(IntentionSet((Intention("web", "orders", False),), False, 2))  # same
    table.on_intentions(IntentionSet((), True, 3))
    assert [d.allowed for d in heard] == [False, True]
    m.forget("conn")
    table.on_intentions(IntentionSet((), False, 4))
    assert len(heard) == 2


def test_before_the_first_set_nothing_is_allowed() -> None:
    m = MeshTls(FakeIdentity(), IntentionTable(), None)  # type: ignore[arg-type]
    decision = m.authorize(svc("web"), "orders")
    assert not decision.allowed
    assert decision.reason == "no intentions received from the control plane yet"


def test_the_server_dialled_must_be_the_service_in_its_namespace() -> None:
    m, _ = mesh()
    m.check_server(svc("orders"), "orders")
    m.check_server(svc("orders"), "default/orders")
    m.check_server(svc("orders", namespace="team-b"), "team-b/orders")
    for transport, service in (
        (svc("orders", namespace="team-b"), "orders"),
        (svc("orders"), "team-b/orders"),
        (svc("billing"), "orders"),
    ):
        with pytest.raises(ConnectionRefusedError, match="mutual TLS: the server is spiffe://"):
            m.check_server(transport, service)
