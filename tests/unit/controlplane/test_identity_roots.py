"""The CA's roots over time (controlplane.identity.RootSet): which root signs,
which are trusted, and what a rotation — or two — does to them."""

from __future__ import annotations

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
