"""``mtls``: clients identified by their TLS certificate.

::

    plugins:
      mtls: {ca_file: clients-ca.pem, consumer_from: san_uri, allowed_names: ["spiffe://example.org/billing"]}

Who does what: the gateway's TLS listener asks every client for a
certificate (``CERT_OPTIONAL``) and verifies it against the union of the
``ca_file`` of every route with ``mtls`` (OpenSSL cannot ask for a
certificate without checking it against something); it passes the leaf, as
DER, in ``request.peer_certificate``. This plugin then verifies that leaf
again against *its own route's* ``ca_file`` with ``cryptography``'s X.509
verifier (a client of CA A must not pass on a route that trusts CA B only):
chain to a CA in the file, validity period, a CA's basic constraints and
key usage, and, when the leaf lists extended key usages, ``clientAuth``. The
outcome is remembered per certificate (bounded, until it expires), so a
client's next requests cost a digest and a dict lookup.

The consumer's name is the certificate's ``cn``, first ``san_uri`` or
first ``san_dns`` (``consumer_from``); ``allowed_names`` narrows which
names the route admits (others: 403); a configured consumer of that name
lends its groups, and ``known_consumers_only`` refuses (403) names that
are not configured consumers.
"""

from __future__ import annotations

import datetime
import hashlib
import time
from collections import OrderedDict
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.x509 import verification
from cryptography.x509.oid import NameOID
from pydantic import BaseModel, ConfigDict, field_validator

from sidecar.gateway.auth._base import DEFAULT_REALM, check_realm, forbidden, quoted, unauthorized
from sidecar.gateway.auth._consumers import ConsumerIndex, is_usable_name
from sidecar.gateway.request import GatewayRequest, LocalResponse

__all__ = ["MtlsAuth", "MtlsConfig", "load_ca_file"]

MAX_CA_CERTIFICATES = 1000
MAX_CERTIFICATE_BYTES = 16384
VERIFIED_CACHE_SIZE = 4096
_AGNOSTIC = verification.Criticality.AGNOSTIC


def load_ca_file(path: Path) -> list[x509.Certificate]:
    """The CA certificates in a PEM file (ValueError saying what is wrong)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror}") from None
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{path}: no PEM certificate in the file") from None
    if len(certificates) > MAX_CA_CERTIFICATES:
        raise ValueError(f"{path}: more than {MAX_CA_CERTIFICATES} certificates")
    return certificates


class MtlsConfig(BaseModel):
    """``ca_file``: the CA certificates (PEM) client certificates must chain to;
    ``consumer_from``: which name of the certificate names the consumer;
    ``allowed_names``: the names admitted (empty: any certificate from the CA);
    ``known_consumers_only``: admit only names of configured consumers;
    ``realm``: named in the challenge."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ca_file: Path
    consumer_from: Literal["cn", "san_uri", "san_dns"] = "cn"
    allowed_names: tuple[str, ...] = ()
    known_consumers_only: bool = False
    realm: str = DEFAULT_REALM

    _realm = field_validator("realm")(check_realm)

    @field_validator("ca_file")
    @classmethod
    def _check_ca_file(cls, value: Path) -> Path:
        load_ca_file(value)
        return value


class _Outcome:
    __slots__ = ("error", "name", "until")

    def __init__(self, name: str, error: str, until: float) -> None:
        self.name = name
        self.error = error
        self.until = until


class MtlsAuth:
    """The ``mtls`` plugin (module docstring)."""

    name = "mtls"
    needs_body = False

    def __init__(self, config: MtlsConfig, consumers: ConsumerIndex) -> None:
        self._config = config
        self._consumers = consumers
        self._store = verification.Store(load_ca_file(config.ca_file))
        self._allowed = frozenset(config.allowed_names)
        self._outcomes: OrderedDict[bytes, _Outcome] = OrderedDict()
        self._challenge = f"ClientCertificate realm={quoted(config.realm)}"
        self._ee_policy = (
            verification.ExtensionPolicy.webpki_defaults_ee()
            # Client certificates of private CAs often name the client in the
            # CN only and carry no authority key identifier.
            .may_be_present(x509.SubjectAlternativeName, _AGNOSTIC, None)
            .may_be_present(x509.AuthorityKeyIdentifier, _AGNOSTIC, None)
        )
        self._ca_policy = verification.ExtensionPolicy.webpki_defaults_ca().may_be_present(
            x509.AuthorityKeyIdentifier, _AGNOSTIC, None
        )

    def challenge(self) -> str:
        return self._challenge

    def present(self, request: GatewayRequest) -> bool:
        return request.peer_certificate is not None

    async def authenticate(self, request: GatewayRequest) -> LocalResponse | None:
        der = request.peer_certificate
        if der is None:
            return unauthorized(
                "unauthenticated",
                "a client certificate is required (connect with TLS and present one)",
                (self._challenge,),
            )
        now = time.time()
        digest = hashlib.sha256(der).digest()
        outcome = self._outcomes.get(digest)
        if outcome is None or outcome.until <= now:
            outcome = self._verify(der, now)
            self._outcomes[digest] = outcome
            if len(self._outcomes) > VERIFIED_CACHE_SIZE:
                self._outcomes.popitem(last=False)
        if outcome.error:
            challenge = (
                f'{self._challenge}, error="invalid_certificate", '
                f"error_description={quoted(outcome.error)}"
            )
            return unauthorized("invalid_certificate", outcome.error, (challenge,))
        name = outcome.name
        if self._allowed and name not in self._allowed:
            return forbidden(f"certificate name {name!r} is not allowed on this route")
        if self._config.known_consumers_only and self._consumers.by_name(name) is None:
            return forbidden(f"{name!r} is not a consumer of this gateway")
        request.consumer = self._consumers.consumer(name, self.name)
        return None

    def _verify(self, der: bytes, now: float) -> _Outcome:
        retry = now + 60.0  # a refusal is looked at again after a minute
        if len(der) > MAX_CERTIFICATE_BYTES:
            return _Outcome("", "the client certificate is too big", retry)
        try:
            leaf = x509.load_der_x509_certificate(der)
        except ValueError:
            return _Outcome("", "the client certificate cannot be read", retry)
        verifier = (
            verification.PolicyBuilder()
            .store(self._store)
            .time(datetime.datetime.fromtimestamp(now, datetime.UTC))
            .max_chain_depth(4)
            .extension_policies(ca_policy=self._ca_policy, ee_policy=self._ee_policy)
            .build_client_verifier()
        )
        try:
            verifier.verify(leaf, [])
        except verification.VerificationError as exc:
            return _Outcome("", f"the client certificate is not trusted here: {exc}"[:200], retry)
        name = self._name(leaf)
        if not name:
            return _Outcome(
                "", f"the client certificate has no {self._config.consumer_from} name", retry
            )
        if not is_usable_name(name):
            return _Outcome("", "the certificate's name cannot name a consumer", retry)
        return _Outcome(name, "", leaf.not_valid_after_utc.timestamp())

    def _name(self, leaf: x509.Certificate) -> str:
        source = self._config.consumer_from
        if source == "cn":
            attributes = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            value = attributes[0].value if attributes else ""
            return value if isinstance(value, str) else ""
        try:
            sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return ""
        kind: type[x509.UniformResourceIdentifier] | type[x509.DNSName] = (
            x509.UniformResourceIdentifier if source == "san_uri" else x509.DNSName
        )
        values = sans.get_values_for_type(kind)
        return values[0] if values else ""
