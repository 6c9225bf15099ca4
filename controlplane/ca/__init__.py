"""The built-in certificate authority and the workload identities it signs.

One self-signed root (EC P-256) per trust domain signs the control plane's
own server certificate (:meth:`CertificateAuthority.issue_server`) and the
sidecars' short-lived workload certificates, each naming one SPIFFE ID
(:meth:`CertificateAuthority.sign_workload_csr`)::

    spiffe://<trust-domain>/ns/<namespace>/svc/<service>
    spiffe://<trust-domain>/node/<node>

``eco ca init`` / ``eco ca root`` drive it offline; docs/security.md tells
the whole story. Needs the ``server`` extra (``cryptography`` and ``spiffe``).
"""

from controlplane.ca._authority import (
    CA_CERT_FILE,
    CA_KEY_FILE,
    CLOCK_SKEW,
    DEFAULT_CA_LIFETIME,
    DEFAULT_SERVER_LIFETIME,
    DEFAULT_TRUST_DOMAIN,
    DEFAULT_WORKLOAD_LIFETIME,
    CertificateAuthority,
    IssuedCertificate,
)
from controlplane.ca._errors import (
    CAError,
    CAExistsError,
    CALoadError,
    CSRError,
    InvalidIdentityError,
)
from controlplane.ca._identity import (
    WorkloadIdentity,
    check_trust_domain,
    node_spiffe_id,
    parse_spiffe_id,
    service_spiffe_id,
)

__all__ = [
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
