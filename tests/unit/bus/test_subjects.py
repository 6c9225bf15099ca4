"""Subject and pattern validation, matching and the subscription index (`_subjects`)."""

from __future__ import annotations

import itertools
import random

import pytest

from bus import InvalidSubjectError, SubscriptionSpec
from bus.subjects import (
    SubjectIndex,
    patterns_overlap,
    subject_matches,
    validate_headers,
    validate_name,
    validate_pattern,
    validate_spec,
    validate_stream_config,
    validate_subject,
)
from sdk import DeliverPolicy, StreamConfig


@pytest.mark.parametrize(
    "subject", ["a", "orders.eu.created", "_INBOX.4f2a", "$SYS.x", "A-b_c.9", "a" * 256]
)
def test_valid_subjects(subject: str) -> None:
    validate_subject(subject)
    validate_pattern(subject)


@pytest.mark.parametrize(
    ("subject", "says"),
    [
        ("", "is empty"),
        ("a" * 257, "longer than 256"),
        ("a..b", "empty token at position 2"),
        (".a", "empty token at position 1"),
        ("a.", "empty token at position 2"),
        ("a b", "' ' in token 'a b'"),
        ("a.*", "wildcard '*'"),
        ("a.>", "wildcard '>'"),
        ("ä", "'ä' in token"),
    ],
)
def test_invalid_subjects_say_what_is_wrong(subject: str, says: str) -> None:
    with pytest.raises(InvalidSubjectError) as err:
        validate_subject(subject, field="reply_to")
    assert err.value.field == "reply_to"
    assert err.value.message.startswith("reply_to: ")
    assert says in err.value.message


@pytest.mark.parametrize("pattern", ["*", ">", "a.*", "a.>", "*.b.>", "*.*"])
def test_valid_patterns(pattern: str) -> None:
    validate_pattern(pattern)


@pytest.mark.parametrize(
    ("pattern", "says"),
    [
        ("a.>.b", "'>' before its last token"),
        (">.a", "'>' before its last token"),
        ("a*", "'*' in token 'a*'"),
        ("a.>>", "'>' in token '>>'"),
        ("a..*", "empty token"),
    ],
)
def test_invalid_patterns(pattern: str, says: str) -> None:
    with pytest.raises(InvalidSubjectError) as err:
        validate_pattern(pattern)
    assert err.value.field == "subject" and says in err.value.message


@pytest.mark.parametrize("name", ["", "a.b", "a b", "x" * 65, "a*", "ä"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidSubjectError) as err:
        validate_name(name, field="durable")
    assert err.value.field == "durable"


def test_headers() -> None:
    assert validate_headers({"Content-Type": "a/b", "x": ""}) == {"Content-Type": "a/b", "x": ""}
    for bad in ({"": "v"}, {"a b": "v"}, {"a:b": "v"}, {"k": "line\nbreak"}):
        with pytest.raises(ValueError, match="headers"):
            validate_headers(bad)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (SubscriptionSpec("a", queue_group="g.h"), "queue_group"),
        (SubscriptionSpec("a", durable="d.e"), "durable"),
        (SubscriptionSpec("a", durable="d", stream="s s"), "stream"),
        (SubscriptionSpec("a..b"), "subject"),
    ],
)
def test_spec_names(spec: SubscriptionSpec, field: str) -> None:
    with pytest.raises(InvalidSubjectError) as err:
        validate_spec(spec)
    assert err.value.field == field


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (SubscriptionSpec("a", durable="d", ack_wait=0), "ack_wait"),
        (SubscriptionSpec("a", durable="d", max_deliver=0), "max_deliver"),
        (SubscriptionSpec("a", durable="d", max_ack_pending=0), "max_ack_pending"),
        (SubscriptionSpec("a", durable="d", backoff=(1.0, 0.0)), "backoff"),
        (SubscriptionSpec("a", durable="d", deliver=DeliverPolicy.BY_SEQUENCE), "start_sequence"),
        (SubscriptionSpec("a", durable="d", deliver=DeliverPolicy.BY_TIME), "start_time"),
    ],
)
def test_spec_numbers(spec: SubscriptionSpec, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        validate_spec(spec)


def test_stream_config_numbers() -> None:
    validate_stream_config(StreamConfig("S", ("a",), max_age=1, max_msgs=2, max_bytes=3))
    for name in ("max_age", "max_msgs", "max_bytes", "duplicate_window"):
        with pytest.raises(ValueError, match=f"^{name}: "):
            validate_stream_config(StreamConfig("S", ("a",), **{name: -1}))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pattern", "subject", "matches"),
    [
        ("a.b", "a.b", True),
        ("a.b", "a.c", False),
        ("a.*", "a.b", True),
        ("a.*", "a.b.c", False),
        ("a.*", "a", False),
        ("a.>", "a.b.c", True),
        ("a.>", "a", False),
        (">", "a", True),
        ("*.*", "a.b", True),
        ("*.*", "a", False),
        ("a.*.c.>", "a.b.c.d.e", True),
        ("a.*.c.>", "a.b.c", False),
    ],
)
def test_subject_matches(pattern: str, subject: str, matches: bool) -> None:
    assert subject_matches(pattern, subject) is matches


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("a.b", "a.b", True),
        ("a.b", "a.c", False),
        ("a.*", "a.b", True),
        ("a.*", "*.b", True),
        ("a.>", "a", False),
        ("a.>", "a.b.c", True),
        ("a.>", "*.x", True),
        (">", "a.b", True),
        ("a.*", "a.b.c", False),
        ("a.*.c", "a.>", True),
        ("*.b", "a.*.c", False),
        ("orders", "order.>", False),
    ],
)
def test_patterns_overlap(a: str, b: str, overlap: bool) -> None:
    assert patterns_overlap(a, b) is overlap
    assert patterns_overlap(b, a) is overlap


def test_index_matches_like_subject_matches() -> None:
    tokens = ["a", "b", "c"]
    patterns: list[str] = []
    for n in (1, 2, 3):
        for combo in itertools.product([*tokens, "*"], repeat=n):
            patterns.append(".".join(combo))
            if n < 3:
                patterns.append(".".join(combo) + ".>")
    index: SubjectIndex[str] = SubjectIndex()
    for p in patterns:
        index.add(p, p)
    subjects = [".".join(c) for n in (1, 2, 3, 4) for c in itertools.product(tokens, repeat=n)]
    for subject in subjects:
        expected = {p for p in patterns if subject_matches(p, subject)}
        assert set(index.match(subject)) == expected, subject
    assert len(index) == len(patterns)

    # Remove a random half; the rest still match, and nothing of the removed half.
    rng = random.Random(7)
    removed = set(rng.sample(patterns, len(patterns) // 2))
    for p in removed:
        assert index.remove(p, p)
        assert not index.remove(p, p)
    kept = [p for p in patterns if p not in removed]
    for subject in subjects:
        assert set(index.match(subject)) == {p for p in kept if subject_matches(p, subject)}
    for p in kept:
        index.remove(p, p)
    assert len(index) == 0 and index._root.empty()


def test_index_items_under_several_patterns_match_once() -> None:
    index: SubjectIndex[str] = SubjectIndex()
    index.add("a.>", "sub")
    index.add("a.*", "sub")
    index.add("a.b", "other")
    assert sorted(index.match("a.b")) == ["other", "sub"]
    index.remove("a.>", "sub")
    assert sorted(index.match("a.b")) == ["other", "sub"]
    index.remove("a.*", "sub")
    assert index.match("a.b") == ("other",)
    assert not index.remove("x.y", "sub")
