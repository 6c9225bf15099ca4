"""SPIFFE IDs: the names workload certificates carry.

The forms this project issues (nothing else is signed)::

    spiffe://<trust-domain>/ns/<namespace>/svc/<service>    a service's instances
    spiffe://<trust-domain>/node/<node>                     a sidecar's node

Parsing is the ``spiffe`` package's (the SPIFFE ID rules: scheme, trust
domain characters, no empty, ``.`` or ``..`` segments). On top of it this
module insists on the canonical spelling (a lower-case trust domain, as the
standard says, rather than silently lower-casing it), rejects what the
package's ``$``-anchored patterns let through (a trailing newline), keeps the
standard's length limits (trust domain 255 bytes, ID 2048), and checks the
trust domain itself: gRPC's TLS library does not enforce URI name
constraints, so a certificate from another trust domain is refused here.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

from controlplane.ca._errors import InvalidIdentityError

with warnings.catch_warnings():
    # Importing the package touches a deprecated DSA type in ``cryptography``
    # (for JWT bundles, which this project does not use); the warning says
    # nothing about anything this project does.
    warnings.simplefilter("ignore", DeprecationWarning)
    from cryptography.utils import CryptographyDeprecationWarning

    warnings.simplefilter("ignore", CryptographyDeprecationWarning)
    from spiffe import SpiffeId, TrustDomain
    from spiffe.errors import PySpiffeError

__all__ = [
    "MAX_SPIFFE_ID_BYTES",
    "MAX_TRUST_DOMAIN_BYTES",
    "WorkloadIdentity",
    "check_trust_domain",
    "node_spiffe_id",
    "parse_spiffe_id",
    "service_spiffe_id",
]

MAX_TRUST_DOMAIN_BYTES = 255
MAX_SPIFFE_ID_BYTES = 2048

_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True, slots=True)
class WorkloadIdentity:
    """A parsed SPIFFE ID of one of the project's two forms.

    A service identity has ``namespace`` and ``service`` set and ``node``
    None; a node identity the other way round.
    """

    trust_domain: str
    namespace: str | None = None
    service: str | None = None
    node: str | None = None

    @property
    def spiffe_id(self) -> str:
        """The ID as a URI, as it appears in a certificate's URI SAN."""
        if self.node is not None:
            return f"spiffe://{self.trust_domain}/node/{self.node}"
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/svc/{self.service}"


def check_trust_domain(name: str) -> str:
    """Returns ``name`` if it is a trust domain in canonical form, else raises.

    A trust domain is a lower-case name of letters, digits, ``.``, ``-`` and
    ``_`` (for example ``ecosystem.local``), at most 255 bytes.
    """
    if not isinstance(name, str) or not _TRUST_DOMAIN.fullmatch(name):
        raise InvalidIdentityError(
            f"invalid trust domain {name!r}: use lower-case letters, digits, '.', '-' and '_' "
            "(for example ecosystem.local)"
        )
    if len(name.encode()) > MAX_TRUST_DOMAIN_BYTES:
        raise InvalidIdentityError(
            f"invalid trust domain: longer than {MAX_TRUST_DOMAIN_BYTES} bytes"
        )
    try:
        canonical = TrustDomain(name).name
    except PySpiffeError as err:  # pragma: no cover - the pattern above is stricter
        raise InvalidIdentityError(f"invalid trust domain {name!r}: {err}") from err
    if canonical != name:  # pragma: no cover - the pattern above is stricter
        raise InvalidIdentityError(f"invalid trust domain {name!r}: not in canonical form")
    return name


def _check_segment(kind: str, value: str) -> None:
    if not isinstance(value, str) or not _SEGMENT.fullmatch(value) or value in (".", ".."):
        raise InvalidIdentityError(
            f"invalid {kind} {value!r} for a SPIFFE ID: use letters, digits, '.', '-' and '_'"
        )


def service_spiffe_id(trust_domain: str, namespace: str, service: str) -> str:
    """``spiffe://<trust_domain>/ns/<namespace>/svc/<service>``, checked."""
    check_trust_domain(trust_domain)
    _check_segment("namespace", namespace)
    _check_segment("service", service)
    return parse_spiffe_id(f"spiffe://{trust_domain}/ns/{namespace}/svc/{service}").spiffe_id


def node_spiffe_id(trust_domain: str, node: str) -> str:
    """``spiffe://<trust_domain>/node/<node>``, checked."""
    check_trust_domain(trust_domain)
    _check_segment("node", node)
    return parse_spiffe_id(f"spiffe://{trust_domain}/node/{node}").spiffe_id


def parse_spiffe_id(uri: str, trust_domain: str | None = None) -> WorkloadIdentity:
    """Parses a SPIFFE ID of the project's forms; raises :class:`InvalidIdentityError`.

    With ``trust_domain``, an ID from any other trust domain is refused too:
    this is the check a TLS peer's certificate goes through.
    """
    if not isinstance(uri, str):
        raise InvalidIdentityError(f"invalid SPIFFE ID {uri!r}: not a string")
    if len(uri.encode()) > MAX_SPIFFE_ID_BYTES:
        raise InvalidIdentityError(f"invalid SPIFFE ID: longer than {MAX_SPIFFE_ID_BYTES} bytes")
    try:
        parsed = SpiffeId(uri)
    except PySpiffeError as err:
        raise InvalidIdentityError(f"invalid SPIFFE ID {uri!r}: {err}") from err
    domain = parsed.trust_domain.name
    if str(parsed) != uri or not _TRUST_DOMAIN.fullmatch(domain):
        raise InvalidIdentityError(
            f"invalid SPIFFE ID {uri!r}: not in canonical form (scheme and trust domain "
            "are lower case)"
        )
    check_trust_domain(domain)
    segments = parsed.path.split("/")[1:]
    if not all(_SEGMENT.fullmatch(segment) for segment in segments):
        raise InvalidIdentityError(f"invalid SPIFFE ID {uri!r}: invalid character in path")
    if len(segments) == 4 and segments[0] == "ns" and segments[2] == "svc":
        identity = WorkloadIdentity(domain, namespace=segments[1], service=segments[3])
    elif len(segments) == 2 and segments[0] == "node":
        identity = WorkloadIdentity(domain, node=segments[1])
    else:
        raise InvalidIdentityError(
            f"invalid SPIFFE ID {uri!r}: expected spiffe://<trust-domain>/ns/<namespace>/svc/"
            "<service> or spiffe://<trust-domain>/node/<node>"
        )
    if trust_domain is not None and domain != trust_domain:
        raise InvalidIdentityError(
            f"SPIFFE ID {uri!r} is in trust domain {domain!r}, not {trust_domain!r}"
        )
    return identity
