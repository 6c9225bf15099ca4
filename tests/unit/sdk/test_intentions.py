"""How an intention decision is made (shared by `eco intention check` and the
sidecar's inbound listeners): names with namespaces, the most specific
destination first, then the most specific source, deny on a tie."""

from __future__ import annotations

import pytest
from ecosystem.v1 import intention_pb2

from sdk import Intention, IntentionName, IntentionSet


def _set(*rules: tuple[str, str, bool], default_allow: bool = True) -> IntentionSet:
    return IntentionSet.of((Intention(s, d, a) for s, d, a in rules), default_allow=default_allow)


@pytest.mark.parametrize(
    ("text", "namespace", "service", "short", "qualified"),
    [
        ("web", "default", "web", "web", "default/web"),
        ("default/web", "default", "web", "web", "default/web"),
        ("team-a/web", "team-a", "web", "team-a/web", "team-a/web"),
        ("team-a/*", "team-a", "*", "team-a/*", "team-a/*"),
        ("default/*", "default", "*", "default/*", "default/*"),
        ("*", "*", "*", "*", "*"),
        ("*/*", "*", "*", "*", "*"),
    ],
)
def test_the_forms_of_a_name(
    text: str, namespace: str, service: str, short: str, qualified: str
) -> None:
    name = IntentionName.parse(text)
    assert (name.namespace, name.service) == (namespace, service)
    assert (str(name), name.qualified) == (short, qualified)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("*/web", "a service in every namespace is not a form"),
        ("a/b/c", "at most one '/'"),
        ("/web", "neither empty"),
        ("team-a/", "neither empty"),
        ("", "neither empty"),
        ("we*", "'*' stands alone"),
        ("team-*/web", "'*' stands alone"),
    ],
)
def test_what_is_not_a_name(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        IntentionName.parse(text)


def test_an_intention_keeps_the_shortest_form_and_shows_qualified_names() -> None:
    written = Intention("default/web", "*/*", True)
    assert (written.source, written.destination) == ("web", "*")
    assert written == Intention("web", "*", True)
    assert str(written) == "intention default/web -> * allows"


def test_no_intention_gives_the_default() -> None:
    allowed = _set().decide("web", "orders")
    assert (allowed.allowed, allowed.matched) == (True, None)
    assert allowed.reason == "no intention matches: default allow"
    denied = _set(default_allow=False).decide("web", "orders")
    assert (denied.allowed, denied.reason) == (False, "no intention matches: default deny")


# Every specificity of destination and source, from the most specific to the
# least: each one matches team-a/web -> default/orders, and each decides once
# all those above it are gone. Actions alternate, so each step shows.
PRECEDENCE = [
    ("team-a/web", "default/orders", True),
    ("team-a/*", "default/orders", False),
    ("*", "default/orders", True),
    ("team-a/web", "default/*", False),
    ("team-a/*", "default/*", True),
    ("*", "default/*", False),
    ("team-a/web", "*", True),
    ("team-a/*", "*", False),
    ("*", "*", True),
]


def test_the_most_specific_destination_then_source_decides() -> None:
    for i, (source, destination, allow) in enumerate(PRECEDENCE):
        remaining = PRECEDENCE[i:]
        for rules in (remaining, remaining[::-1]):  # the order they are given in does not count
            decision = _set(*rules, default_allow=not allow).decide("team-a/web", "orders")
            assert decision.matched == Intention(source, destination, allow), (i, rules)
            assert decision.allowed is allow
    assert _set(default_allow=False).decide("team-a/web", "orders").matched is None


@pytest.mark.parametrize(
    ("source", "destination", "decided_by"),
    [
        ("team-a/web", "orders", 0),
        ("team-a/web", "default/orders", 0),
        ("team-a/api", "orders", 1),
        # web of another namespace is not team-a's web: an exact destination
        # with any source beats the exact source with a wider destination.
        ("team-b/web", "orders", 2),
        ("web", "orders", 2),
        ("", "orders", 2),  # a caller that is no service (a node)
        ("team-a/web", "billing", 3),
        ("team-a/api", "billing", 4),
        ("team-b/web", "billing", 5),
        ("team-a/web", "team-c/orders", 6),
        ("team-a/api", "team-c/orders", 7),
        ("team-b/web", "team-c/orders", 8),
        # A wildcard asked about is a name of its own: a service of team-a
        # that no exact intention names.
        ("team-a/*", "orders", 1),
        ("*", "orders", 2),
        ("team-a/web", "default/*", 3),
    ],
)
def test_which_intention_decides_a_pair(source: str, destination: str, decided_by: int) -> None:
    decision = _set(*PRECEDENCE).decide(source, destination)
    assert decision.matched == Intention(*PRECEDENCE[decided_by])


def test_plain_names_are_the_default_namespace() -> None:
    # Written before namespaces: `web -> orders` names default/web and default/orders.
    rules = _set(("web", "orders", True), default_allow=False)
    assert rules.decide("default/web", "default/orders").allowed
    assert not rules.decide("team-b/web", "orders").allowed
    assert not rules.decide("web", "team-b/orders").allowed
    # `*` still names every service of every namespace.
    assert not _set(("*", "orders", False)).decide("team-b/web", "orders").allowed


def test_deny_wins_a_tie() -> None:
    # One pair written twice (stored before and after namespaces): deny wins.
    for rules in (
        [("web", "orders", True), ("default/web", "default/orders", False)],
        [("default/web", "default/orders", False), ("web", "orders", True)],
    ):
        decision = _set(*rules).decide("web", "orders")
        assert not decision.allowed
        assert decision.reason == "intention default/web -> default/orders denies"


def test_a_name_that_is_none_is_refused() -> None:
    with pytest.raises(ValueError):
        _set().decide("*/web", "orders")


def test_from_the_wire() -> None:
    message = intention_pb2.IntentionSet(
        intentions=[
            intention_pb2.Intention(
                source="web",
                destination="orders",
                action=intention_pb2.INTENTION_ACTION_DENY,
                description="no",
            ),
            intention_pb2.Intention(
                source="team-a/*",
                destination="orders",
                action=intention_pb2.INTENTION_ACTION_ALLOW,
            ),
            # A form this side does not know is left out, not fatal.
            intention_pb2.Intention(source="*/web", destination="orders"),
        ],
        default_allow=True,
        version=7,
    )
    parsed = IntentionSet.from_proto(message)
    assert parsed.version == 7
    assert parsed.intentions == (
        Intention("web", "orders", False, "no"),
        Intention("team-a/*", "orders", True),
    )
    assert not parsed.decide("web", "orders").allowed
    assert parsed.decide("team-a/web", "orders").allowed
