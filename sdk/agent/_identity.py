"""Workload certificates and the trust bundle, as the agent session carries them.

The control plane signs a CSR sent over the session (the key stays with the
caller) for the session's own node or a service it has registered on it, and
sends the roots to trust after each Welcome and whenever they change.
"""

from __future__ import annotations

from dataclasses import dataclass

from ecosystem.v1 import agent_pb2

__all__ = ["TrustBundle", "WorkloadCertificate"]


@dataclass(frozen=True, slots=True)
class TrustBundle:
    """The roots of the control plane's CA, the one signing now first."""

    trust_domain: str
    roots_pem: tuple[bytes, ...]
    version: int

    @property
    def pem(self) -> bytes:
        """All roots as one PEM file."""
        return b"".join(self.roots_pem)

    @classmethod
    def from_proto(cls, message: agent_pb2.TrustBundle) -> TrustBundle:
        return cls(str(message.trust_domain), tuple(message.roots_pem), int(message.version))


@dataclass(frozen=True, slots=True)
class WorkloadCertificate:
    """A signed workload certificate (PEM, the leaf only) and its SPIFFE ID;
    ``expires_at`` is seconds since the epoch."""

    cert_pem: bytes
    spiffe_id: str
    expires_at: float

    @classmethod
    def from_proto(cls, message: agent_pb2.CertificateIssued) -> WorkloadCertificate:
        return cls(bytes(message.cert_pem), str(message.spiffe_id), message.expires_at_ms / 1000.0)
