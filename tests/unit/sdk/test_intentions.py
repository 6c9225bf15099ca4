"""How an intention decision is made (shared by `eco intention check` and the
sidecar's inbound listeners): exact beats wildcard, destination first."""

from __future__ import annotations

from ecosystem.v1 import intention_pb2

from sdk import Intention, IntentionSet


def _set(*rules: tuple[str, str, bool], default_allow: bool = True) -> IntentionSet:
    return IntentionSet.of((Intention(s, d, a) for s, d, a in rules), default_allow=default_allow)


def test_no_intention_gives_the_default() -> None:
    allowed = _set().decide("web", "orders")
    assert (allowed.allowed, allowed.matched) == (True, None)
    assert allowed.reason == "no intention matches: default allow"
    denied = _set(default_allow=False).decide("web", "orders")
    assert (denied.allowed, denied.reason) == (False, "no intention matches: default deny")


def test_exact_beats_wildcard_and_the_destination_counts_first() -> None:
    rules = _set(
        ("*", "*", False),
        ("web", "*", True),
        ("*", "orders", False),
        ("web", "orders", True),
    )
    assert rules.decide("web", "orders").allowed
    assert str(rules.decide("web", "orders").matched) == "intention web -> orders allows"
    # The exact destination with any source beats the exact source with any destination.
    assert not rules.decide("api", "orders").allowed
    assert rules.decide("web", "billing").allowed
    assert rules.decide("web", "billing").reason == "intention web -> * allows"
    assert not rules.decide("api", "billing").allowed


def test_order_does_not_matter() -> None:
    forward = [("*", "orders", True), ("web", "orders", False)]
    for rules in (forward, forward[::-1]):
        assert not _set(*rules).decide("web", "orders").allowed
        assert _set(*rules).decide("api", "orders").allowed


def test_a_caller_that_is_no_service_matches_wildcard_sources_only() -> None:
    rules = _set(("web", "orders", True), default_allow=False)
    assert not rules.decide("", "orders").allowed
    assert _set(("*", "orders", True), default_allow=False).decide("", "orders").allowed


def test_from_the_wire() -> None:
    message = intention_pb2.IntentionSet(
        intentions=[
            intention_pb2.Intention(
                source="web",
                destination="orders",
                action=intention_pb2.INTENTION_ACTION_DENY,
                description="no",
            )
        ],
        default_allow=True,
        version=7,
    )
    parsed = IntentionSet.from_proto(message)
    assert parsed.version == 7
    assert parsed.intentions == (Intention("web", "orders", False, "no"),)
    assert not parsed.decide("web", "orders").allowed
