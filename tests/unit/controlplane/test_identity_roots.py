"""The CA's roots over time (controlplane.identity.RootSet): which root signs,
which are trusted, and what a rotation — or two — does to them."""

from __future__ import annotations

import itertools

from controlplane.identity import RootSet, StoredRoot

A, B, C = (StoredRoot(f"cert-{n}".encode(), f"key-{n}".encode()) for n in "abc")
TTL = 3_000
SKEW = 60_000


def one_root() -> RootSet:
    return RootSet("ecosystem.local", (A,))


def test_a_new_root_is_trusted_at_once_and_signs_after_the_propagation() -> None:
    rotated = one_root().rotated(B, now_ms=1_000, propagation_ms=500, workload_ttl_ms=TTL)
    assert rotated.signer(1_000).cert_pem == A.cert_pem
    assert [r.cert_pem for r in rotated.bundle(1_000)] == [A.cert_pem, B.cert_pem]
    assert rotated.signer(1_500).cert_pem == B.cert_pem
    # The signer comes first in the bundle.
    assert [r.cert_pem for r in rotated.bundle(1_500)] == [B.cert_pem, A.cert_pem]


def test_the_old_root_leaves_once_what_it_signed_has_expired() -> None:
    rotated = one_root().rotated(B, now_ms=1_000, propagation_ms=500, workload_ttl_ms=TTL)
    removal = 1_500 + TTL + SKEW
    old = next(r for r in rotated.roots if r.cert_pem == A.cert_pem)
    assert old.removed_at_ms == removal
    assert len(rotated.bundle(removal - 1)) == 2
    assert [r.cert_pem for r in rotated.bundle(removal)] == [B.cert_pem]


def test_a_second_rotation_retires_a_root_that_never_signed() -> None:
    first = one_root().rotated(B, now_ms=1_000, propagation_ms=10_000, workload_ttl_ms=TTL)
    second = first.rotated(C, now_ms=2_000, propagation_ms=1_000, workload_ttl_ms=TTL)
    assert second.signer(3_000).cert_pem == C.cert_pem
    removed = {r.cert_pem: r.removed_at_ms for r in second.roots}
    assert removed[C.cert_pem] == 0
    assert removed[A.cert_pem] == removed[B.cert_pem] == 3_000 + TTL + SKEW
    # B never signs, even once its own start has passed.
    assert second.signer(11_000).cert_pem == C.cert_pem


def test_removed_roots_are_dropped_by_the_next_rotation() -> None:
    first = one_root().rotated(B, now_ms=0, propagation_ms=0, workload_ttl_ms=TTL)
    later = TTL + SKEW + 1
    second = first.rotated(C, now_ms=later, propagation_ms=0, workload_ttl_ms=TTL)
    assert [r.cert_pem for r in second.roots] == [B.cert_pem, C.cert_pem]


def test_the_roots_round_trip_through_json() -> None:
    rotated = one_root().rotated(B, now_ms=1_000, propagation_ms=500, workload_ttl_ms=TTL)
    assert RootSet.from_json(rotated.to_json()) == rotated


# -- what is served after a certificate the new root signed -------------------


def real_roots(count: int) -> list[StoredRoot]:
    """Roots with real certificates, each cross-signed by the one before."""
    from controlplane.ca import CertificateAuthority

    cas = [CertificateAuthority.create() for _ in range(count)]
    roots = [StoredRoot(cas[0].root_pem, cas[0].key_pem)]
    for before, ca in itertools.pairwise(cas):
        roots.append(StoredRoot(ca.root_pem, ca.key_pem, cross_pem=before.cross_sign(ca.root_pem)))
    return roots


def test_the_new_root_is_served_cross_signed_until_the_old_one_leaves() -> None:
    a, b = real_roots(2)
    rotated = RootSet("ecosystem.local", (a,)).rotated(
        b, now_ms=1_000, propagation_ms=500, workload_ttl_ms=TTL
    )
    new = rotated.signer(1_500)
    assert new.cert_pem == b.cert_pem
    assert rotated.chain(new, 1_500) == [b.cross_pem]
    assert rotated.chain(rotated.signer(1_000), 1_000) == []  # the old root: nothing
    removal = 1_500 + TTL + SKEW
    assert rotated.chain(new, removal - 1) == [b.cross_pem]
    assert rotated.chain(new, removal) == []
    assert RootSet.from_json(rotated.to_json()) == rotated


def test_two_rotations_serve_a_chain_back_to_every_root_still_trusted() -> None:
    a, b, c = real_roots(3)
    first = RootSet("ecosystem.local", (a,)).rotated(
        b, now_ms=100, propagation_ms=0, workload_ttl_ms=TTL
    )
    # B signs and A is still trusted: C, cross-signed by B, is served with
    # B cross-signed by A after it.
    second = first.rotated(c, now_ms=1_000, propagation_ms=0, workload_ttl_ms=TTL)
    assert second.chain(second.signer(1_000), 1_000) == [c.cross_pem, b.cross_pem]
    a_leaves = 100 + TTL + SKEW
    assert second.chain(second.signer(a_leaves), a_leaves) == [c.cross_pem]
