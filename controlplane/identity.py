"""Workload identities: the roots the control plane signs sidecars' certificates
with, its trust bundle, and root rotation.

A :class:`RootSet` is an ordered set of roots, each with the time it starts
signing and (once superseded) the time it leaves the trust bundle. At any
moment the signer is the newest root whose start has passed, and the bundle
is every root not yet removed. Rotation adds a new root that starts signing
only after ``propagation`` (so every sidecar has it in its bundle first), and
gives the old root a removal time one workload lifetime (plus a minute of
clock skew) after the switch: every certificate the old root signed has
expired by then.

The new root is also cross-signed by the old one (same subject and key,
issued by the old root): a certificate the new root signs is served with
that certificate after it (:meth:`RootSet.chain`), so a client that trusts
only the old root (a CA file given out before the rotation) still verifies
it, until the old root leaves the bundle and the cross-signed certificate is
no longer served. The control plane's own server certificate is served that
way; workload certificates are not (peers verify them with the bundle, which
has both roots).

Where the roots come from:

- ``--tls-ca auto``: from the store, key ``/ecosystem/v1/ca/roots`` (JSON,
  the private keys included: whoever can read the store can mint
  identities). The first replica to start creates the CA with a
  create-if-absent transaction, so replicas starting together agree on one.
  Each replica reads the key again every second (rotation by any replica
  reaches all of them).
- ``--tls-ca FILE --tls-ca-key FILE``: one root from the files, held in
  memory; it cannot be rotated online (replace the files and restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ecosystem.v1 import agent_pb2, ca_pb2, ca_pb2_grpc

from controlplane.registry import ROOT_PREFIX
from controlplane.store import Compare, PutOp, Store, StoreError
from serving.errors import (
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    ServiceError,
    end_call,
    to_status,
)

if TYPE_CHECKING:
    from controlplane.ca import CertificateAuthority

__all__ = [
    "CA_ROOTS_KEY",
    "DEFAULT_PROPAGATION",
    "CAServicer",
    "IdentityAuthority",
    "RootSet",
    "StoredRoot",
    "load_or_create_roots",
]

log = logging.getLogger(__name__)

#: Where ``--tls-ca auto`` keeps its roots (and their keys).
CA_ROOTS_KEY = ROOT_PREFIX + "ca/roots"
#: Seconds between adding a new root to the bundle and signing with it.
DEFAULT_PROPAGATION = 10
#: Added to a workload lifetime before an old root leaves the bundle.
_SKEW_MS = 60_000
_POLL = 1.0
_MAX_PROPAGATION = 86_400
#: The start of a root that will never sign.
_NEVER = 2**62


@dataclass(frozen=True)
class StoredRoot:
    cert_pem: bytes
    key_pem: bytes
    signs_from_ms: int = 0
    #: When it leaves the bundle (0: not superseded).
    removed_at_ms: int = 0
    #: This root signed by the root that signed when it was added (PEM; empty
    #: for the first root).
    cross_pem: bytes = b""


@dataclass(frozen=True)
class RootSet:
    """The roots, oldest first."""

    trust_domain: str
    roots: tuple[StoredRoot, ...]

    def signer(self, now_ms: int) -> StoredRoot:
        started = [r for r in self.roots if r.signs_from_ms <= now_ms]
        return max(started, key=lambda r: r.signs_from_ms) if started else self.roots[0]

    def bundle(self, now_ms: int) -> list[StoredRoot]:
        """The roots to trust now, the signer first, then newest first."""
        signer = self.signer(now_ms)
        kept = [r for r in self.roots if not r.removed_at_ms or r.removed_at_ms > now_ms]
        rest = sorted((r for r in kept if r is not signer), key=lambda r: -r.signs_from_ms)
        return [signer, *rest]

    def chain(self, root: StoredRoot, now_ms: int) -> list[bytes]:
        """The cross-signed certificates to serve after one ``root`` signed (PEM,
        nearest first): ``root`` cross-signed by the root before it, that one by
        the root before it, and so on while the cross-signing root is still in
        the bundle. Empty when ``root`` was not cross-signed or its
        cross-signer has left the bundle."""
        kept = self.bundle(now_ms)
        chain: list[bytes] = []
        current = root
        while current.cross_pem and len(chain) < len(kept):
            issuer = _key_id(current.cross_pem, authority=True)
            signer = next((r for r in kept if issuer and _key_id(r.cert_pem) == issuer), None)
            if signer is None or signer is current:
                break
            chain.append(current.cross_pem)
            current = signer
        return chain

    def rotated(
        self,
        new_root: StoredRoot,
        *,
        now_ms: int,
        propagation_ms: int,
        workload_ttl_ms: int,
        skew_ms: int = _SKEW_MS,
    ) -> RootSet:
        """With ``new_root`` signing from ``now + propagation``, the current signer
        leaving the bundle one workload lifetime (and skew) after that, and roots
        already removed dropped."""
        starts = now_ms + propagation_ms
        removal = starts + workload_ttl_ms + skew_ms
        old = self.signer(now_ms)
        roots = []
        for root in self.roots:
            if root.removed_at_ms and root.removed_at_ms <= now_ms:
                continue
            if root is old:
                root = replace(root, removed_at_ms=removal)
            elif root.signs_from_ms > now_ms and not root.removed_at_ms:
                # A root of an earlier rotation that has not started signing
                # yet: it never will, and leaves with the signer.
                root = replace(root, signs_from_ms=_NEVER, removed_at_ms=removal)
            roots.append(root)
        roots.append(replace(new_root, signs_from_ms=starts))
        return RootSet(self.trust_domain, tuple(roots))

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "trust_domain": self.trust_domain,
                "roots": [
                    {
                        "cert": r.cert_pem.decode(),
                        "key": r.key_pem.decode(),
                        "signs_from_ms": r.signs_from_ms,
                        "removed_at_ms": r.removed_at_ms,
                        **({"cross": r.cross_pem.decode()} if r.cross_pem else {}),
                    }
                    for r in self.roots
                ],
            }
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> RootSet:
        raw = json.loads(data)
        return cls(
            raw["trust_domain"],
            tuple(
                StoredRoot(
                    r["cert"].encode(),
                    r["key"].encode(),
                    int(r["signs_from_ms"]),
                    int(r["removed_at_ms"]),
                    r.get("cross", "").encode(),
                )
                for r in raw["roots"]
            ),
        )


async def load_or_create_roots(store: Store, trust_domain: str) -> RootSet:
    """The CA kept in the store, created (once, whoever comes first) if absent."""
    from controlplane.ca import CertificateAuthority

    current = await store.get(CA_ROOTS_KEY)
    if current is not None:
        return RootSet.from_json(current.value)
    ca = CertificateAuthority.create(trust_domain)
    roots = RootSet(ca.trust_domain, (StoredRoot(ca.root_pem, ca.key_pem),))
    result = await store.txn(
        [Compare(CA_ROOTS_KEY, "version", "==", 0)], [PutOp(CA_ROOTS_KEY, roots.to_json())]
    )
    if result.succeeded:
        log.info("created a CA for trust domain %s, kept in the store", ca.trust_domain)
        return roots
    # Another replica created it first: use theirs.
    current = await store.get(CA_ROOTS_KEY)
    assert current is not None
    return RootSet.from_json(current.value)


@dataclass(eq=False)
class IdentityAuthority:
    """Signs workload certificates and keeps the trust bundle of one replica.

    ``store`` is set for a CA kept in the store (``--tls-ca auto``): rotation
    is possible and the roots are re-read every second. ``on_bundle`` is
    called whenever the bundle changes (sidecars are sent the new one).
    """

    roots: RootSet
    workload_ttl: timedelta
    store: Store | None = None
    on_bundle: list[Callable[[], None]] = field(default_factory=list)
    _cas: dict[bytes, CertificateAuthority] = field(default_factory=dict)
    _bundle_version: int = 0
    _task: asyncio.Task[None] | None = None
    #: Added to the workload lifetime before a superseded root leaves the bundle.
    skew_ms: int = _SKEW_MS

    def __post_init__(self) -> None:
        self._bundle_version = self._version(_now_ms())

    @classmethod
    def from_ca(cls, ca: CertificateAuthority, workload_ttl: timedelta) -> IdentityAuthority:
        return cls(RootSet(ca.trust_domain, (StoredRoot(ca.root_pem, ca.key_pem),)), workload_ttl)

    @property
    def trust_domain(self) -> str:
        return self.roots.trust_domain

    def signer(self) -> CertificateAuthority:
        return self._ca(self.roots.signer(_now_ms()))

    def bundle_pems(self) -> list[bytes]:
        return [r.cert_pem for r in self.roots.bundle(_now_ms())]

    def chain_pems(self) -> list[bytes]:
        """What to serve after a certificate the signer issued now: the signer
        cross-signed by the roots before it that are still trusted
        (:meth:`RootSet.chain`)."""
        now = _now_ms()
        return self.roots.chain(self.roots.signer(now), now)

    def trust_bundle(self) -> agent_pb2.TrustBundle:
        now = _now_ms()
        return agent_pb2.TrustBundle(
            trust_domain=self.trust_domain,
            roots_pem=[r.cert_pem for r in self.roots.bundle(now)],
            version=self._version(now),
        )

    def sign(self, csr_pem: bytes, spiffe_id: str) -> tuple[bytes, int]:
        """The signed certificate (PEM) and its expiry (ms since the epoch)."""
        from cryptography import x509

        from controlplane.ca import CAError

        try:
            cert_pem = self.signer().sign_workload_csr(
                csr_pem, spiffe_id, lifetime=self.workload_ttl
            )
        except CAError as exc:
            if getattr(exc, "status_code", None) is not None:
                raise
            raise FailedPreconditionError(str(exc)) from exc
        expires = x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc
        return cert_pem, int(expires.timestamp() * 1000)

    async def rotate(self, propagation_seconds: int) -> tuple[RootSet, int, int]:
        """Adds a new root (see the module); returns the roots, when it starts
        signing and when the old root leaves the bundle (ms)."""
        from controlplane.ca import CAError, CertificateAuthority

        if self.store is None:
            raise FailedPreconditionError(
                "this control plane's CA comes from --tls-ca/--tls-ca-key files and cannot be "
                "rotated online: only a CA kept in the store (--tls-ca auto) can"
            )
        store = self.store
        for _ in range(10):
            current = await store.get(CA_ROOTS_KEY)
            if current is None:
                raise FailedPreconditionError("no CA in the store")
            roots = RootSet.from_json(current.value)
            ca = CertificateAuthority.create(roots.trust_domain)
            now = _now_ms()
            try:
                # Clients that trust only the old root go on verifying.
                cross = self._ca(roots.signer(now)).cross_sign(ca.root_pem)
            except CAError as exc:
                log.warning("the new root is not cross-signed by the old one: %s", exc)
                cross = b""
            rotated = roots.rotated(
                StoredRoot(ca.root_pem, ca.key_pem, cross_pem=cross),
                now_ms=now,
                propagation_ms=propagation_seconds * 1000,
                workload_ttl_ms=int(self.workload_ttl.total_seconds() * 1000),
                skew_ms=self.skew_ms,
            )
            result = await store.txn(
                [Compare(CA_ROOTS_KEY, "mod_revision", "==", current.mod_revision)],
                [PutOp(CA_ROOTS_KEY, rotated.to_json())],
            )
            if result.succeeded:
                self._set(rotated)
                new, old = rotated.roots[-1], roots.signer(now)
                removal = next(r.removed_at_ms for r in rotated.roots if r.cert_pem == old.cert_pem)
                log.info(
                    "CA root rotation: the new root signs from %d, the old one leaves at %d",
                    new.signs_from_ms,
                    removal,
                )
                return rotated, new.signs_from_ms, removal
        raise FailedPreconditionError("the CA kept changing in the store; try again")

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="ca-roots")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self) -> None:
        """Re-reads the stored roots (another replica may rotate) and notices when
        the bundle changes with time (a root starts signing or leaves)."""
        while True:
            await asyncio.sleep(_POLL)
            if self.store is not None:
                try:
                    kv = await self.store.get(CA_ROOTS_KEY)
                except StoreError as exc:
                    log.debug("could not read the CA roots: %s", exc)
                    kv = None
                if kv is not None:
                    roots = RootSet.from_json(kv.value)
                    if roots != self.roots:
                        self._set(roots)
                        continue
            self._check_bundle()

    def _set(self, roots: RootSet) -> None:
        self.roots = roots
        self._check_bundle()

    def _check_bundle(self) -> None:
        version = self._version(_now_ms())
        if version == self._bundle_version:
            return
        self._bundle_version = version
        log.info("trust bundle changed (version %d)", version)
        for callback in list(self.on_bundle):
            try:
                callback()
            except Exception:
                log.exception("trust bundle callback failed")

    def _version(self, now_ms: int) -> int:
        digest = hashlib.sha256()
        for root in self.roots.bundle(now_ms):
            digest.update(root.cert_pem)
        return int.from_bytes(digest.digest()[:7], "big")

    def _ca(self, root: StoredRoot) -> CertificateAuthority:
        from controlplane.ca import CertificateAuthority

        ca = self._cas.get(root.cert_pem)
        if ca is None:
            ca = self._cas[root.cert_pem] = CertificateAuthority.from_pem(
                root.cert_pem, root.key_pem
            )
        return ca


def _now_ms() -> int:
    return int(time.time() * 1000)


@functools.lru_cache(maxsize=64)
def _key_id(cert_pem: bytes, *, authority: bool = False) -> bytes:
    """A certificate's subject key id, or (``authority``) its issuer's; b"" if none."""
    from cryptography import x509

    certificate = x509.load_pem_x509_certificate(cert_pem)
    try:
        if authority:
            value = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
            return value.value.key_identifier or b""
        return certificate.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value.digest
    except x509.ExtensionNotFound:
        return b""


class CAServicer(ca_pb2_grpc.CAServiceServicer):
    """GetTrustBundle and RotateRoot; FAILED_PRECONDITION without a CA."""

    def __init__(self, authority: IdentityAuthority | None) -> None:
        self._authority = authority

    def _need(self) -> IdentityAuthority:
        if self._authority is None:
            raise FailedPreconditionError(
                "this control plane has no CA "
                "(start it with --tls-ca auto, or --tls-ca/--tls-ca-key)"
            )
        return self._authority

    async def GetTrustBundle(
        self, request: ca_pb2.GetTrustBundleRequest, context: Any
    ) -> ca_pb2.GetTrustBundleResponse | None:
        try:
            return ca_pb2.GetTrustBundleResponse(bundle=self._need().trust_bundle())
        except ServiceError as exc:
            end_call(context, to_status(exc))
            return None

    async def RotateRoot(
        self, request: ca_pb2.RotateRootRequest, context: Any
    ) -> ca_pb2.RotateRootResponse | None:
        try:
            if not 0 <= request.propagation_seconds <= _MAX_PROPAGATION:
                raise InvalidArgumentError(
                    [
                        FieldViolation(
                            "propagation_seconds",
                            f"must be between 0 and {_MAX_PROPAGATION} (0: {DEFAULT_PROPAGATION})",
                        )
                    ]
                )
            authority = self._need()
            _, signs_from, removed_at = await authority.rotate(
                request.propagation_seconds or DEFAULT_PROPAGATION
            )
            return ca_pb2.RotateRootResponse(
                bundle=authority.trust_bundle(),
                signs_from_ms=signs_from,
                old_root_removed_at_ms=removed_at,
            )
        except ServiceError as exc:
            end_call(context, to_status(exc))
            return None
