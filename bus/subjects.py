"""Subjects and patterns: validation (with the offending field named), matching,
and `SubjectIndex`, the token trie that routes a publish in O(tokens).

A subject is dot-separated tokens of ASCII letters, digits, ``-``, ``_`` and
``$`` (``orders.eu.created``, ``_INBOX.4f2a``). A pattern may also use ``*``
for exactly one token and, as its last token, ``>`` for one or more. Both
backends validate through this module, so they reject the same inputs with the
same messages.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Generic, TypeVar

from sdk import DeliverPolicy, StreamConfig

from ._errors import InvalidSubjectError
from ._protocol import SubscriptionSpec

__all__ = [
    "MAX_NAME_LENGTH",
    "MAX_SUBJECT_LENGTH",
    "SubjectIndex",
    "patterns_overlap",
    "subject_matches",
    "validate_headers",
    "validate_name",
    "validate_pattern",
    "validate_spec",
    "validate_stream_config",
    "validate_subject",
]

MAX_SUBJECT_LENGTH = 256
MAX_NAME_LENGTH = 64

_TOKEN = re.compile(r"[A-Za-z0-9_$-]+")
_NAME = re.compile(r"[A-Za-z0-9_-]+")

T = TypeVar("T")


def _problem(text: str, *, wildcards: bool) -> str:
    """What is wrong with ``text`` as a subject (or pattern); empty when nothing is."""
    if not text:
        return "is empty"
    if len(text) > MAX_SUBJECT_LENGTH:
        return f"is longer than {MAX_SUBJECT_LENGTH} characters"
    tokens = text.split(".")
    last = len(tokens) - 1
    for i, token in enumerate(tokens):
        if not token:
            return f"has an empty token at position {i + 1} (leading, trailing or double dot)"
        if _TOKEN.fullmatch(token):
            continue
        if token in ("*", ">"):
            if not wildcards:
                return f"has the wildcard {token!r}; publish to a literal subject"
            if token == ">" and i != last:
                return "has '>' before its last token ('>' matches the rest, so it comes last)"
            continue
        bad = next(c for c in token if not _TOKEN.fullmatch(c))
        return f"has {bad!r} in token {token!r}: tokens are letters, digits, '-', '_' and '$'" + (
            ", or a whole '*' / '>'" if wildcards else ""
        )
    return ""


@functools.lru_cache(maxsize=8192)
def _literal_problem(subject: str) -> str:
    return _problem(subject, wildcards=False)


@functools.lru_cache(maxsize=4096)
def _pattern_problem(pattern: str) -> str:
    return _problem(pattern, wildcards=True)


def validate_subject(subject: str, *, field: str = "subject") -> None:
    """Raises InvalidSubjectError (naming ``field``) unless ``subject`` is a literal subject."""
    problem = _literal_problem(subject) if isinstance(subject, str) else "is not a string"
    if problem:
        raise InvalidSubjectError(f"{field}: {subject!r} {problem}", field=field)


def validate_pattern(pattern: str, *, field: str = "subject") -> None:
    """Raises InvalidSubjectError (naming ``field``) unless ``pattern`` is a subject or a
    pattern with ``*`` tokens and a trailing ``>``."""
    problem = _pattern_problem(pattern) if isinstance(pattern, str) else "is not a string"
    if problem:
        raise InvalidSubjectError(f"{field}: {pattern!r} {problem}", field=field)


def validate_name(name: str, *, field: str) -> None:
    """Stream, durable consumer and queue group names: 1 to 64 letters, digits, ``-``, ``_``."""
    if not isinstance(name, str) or not name:
        raise InvalidSubjectError(f"{field}: a name is required", field=field)
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidSubjectError(
            f"{field}: {name!r} is longer than {MAX_NAME_LENGTH} characters", field=field
        )
    if not _NAME.fullmatch(name):
        raise InvalidSubjectError(
            f"{field}: {name!r} may only hold letters, digits, '-' and '_'", field=field
        )


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether the literal ``subject`` matches ``pattern`` (both assumed valid)."""
    p = pattern.split(".")
    s = subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def patterns_overlap(a: str, b: str) -> bool:
    """Whether some literal subject matches both patterns (both assumed valid)."""
    ta = a.split(".")
    tb = b.split(".")
    for i in range(max(len(ta), len(tb))):
        x = ta[i] if i < len(ta) else None
        y = tb[i] if i < len(tb) else None
        if x == ">":
            return y is not None
        if y == ">":
            return x is not None
        if x is None or y is None:
            return False
        if x != y and x != "*" and y != "*":
            return False
    return True


class _Node(Generic[T]):
    __slots__ = ("children", "full_wildcard", "items", "one_wildcard")

    def __init__(self) -> None:
        self.children: dict[str, _Node[T]] = {}
        self.one_wildcard: _Node[T] | None = None  # the '*' child
        self.full_wildcard: dict[T, None] = {}  # items of '<prefix>.>'
        self.items: dict[T, None] = {}  # items whose pattern ends here

    def empty(self) -> bool:
        return not (self.children or self.one_wildcard or self.full_wildcard or self.items)


class SubjectIndex(Generic[T]):
    """Items (subscriptions, streams…) keyed by pattern; ``match`` finds those whose
    pattern matches a subject by walking the subject's tokens through a trie, so its
    cost depends on the subject and the wildcards on its path, not on how many items
    there are. Results are cached per subject until the index changes.

    Items are compared by identity/hash; the same item may be added under several
    patterns. Patterns must be valid (see `validate_pattern`).
    """

    _CACHE_LIMIT = 4096

    def __init__(self) -> None:
        self._root: _Node[T] = _Node()
        self._count = 0
        self._cache: dict[str, tuple[T, ...]] = {}

    def __len__(self) -> int:
        return self._count

    def add(self, pattern: str, item: T) -> None:
        node = self._root
        tokens = pattern.split(".")
        for token in tokens[:-1]:
            node = self._child(node, token)
        last = tokens[-1]
        bucket = node.full_wildcard if last == ">" else self._child(node, last).items
        if item not in bucket:
            bucket[item] = None
            self._count += 1
            self._cache.clear()

    def remove(self, pattern: str, item: T) -> bool:
        """Removes ``item`` from ``pattern``; False if it was not there."""
        path: list[tuple[_Node[T], str]] = []
        node: _Node[T] | None = self._root
        tokens = pattern.split(".")
        for token in tokens[:-1]:
            assert node is not None
            path.append((node, token))
            node = node.one_wildcard if token == "*" else node.children.get(token)
            if node is None:
                return False
        assert node is not None
        last = tokens[-1]
        if last == ">":
            bucket = node.full_wildcard
        else:
            path.append((node, last))
            leaf = node.one_wildcard if last == "*" else node.children.get(last)
            if leaf is None:
                return False
            node = leaf
            bucket = node.items
        if item not in bucket:
            return False
        del bucket[item]
        self._count -= 1
        self._cache.clear()
        # Prune the now-empty branch, from the leaf up.
        for parent, token in reversed(path):
            child = parent.one_wildcard if token == "*" else parent.children.get(token)
            if child is None or not child.empty():
                break
            if token == "*":
                parent.one_wildcard = None
            else:
                del parent.children[token]
        return True

    def match(self, subject: str) -> tuple[T, ...]:
        """Items whose pattern matches the literal ``subject``, each once."""
        cached = self._cache.get(subject)
        if cached is not None:
            return cached
        found: dict[T, None] = {}
        self._collect(self._root, subject.split("."), 0, found)
        result = tuple(found)
        if len(self._cache) >= self._CACHE_LIMIT:
            self._cache.clear()
        self._cache[subject] = result
        return result

    @staticmethod
    def _child(node: _Node[T], token: str) -> _Node[T]:
        if token == "*":
            if node.one_wildcard is None:
                node.one_wildcard = _Node()
            return node.one_wildcard
        child = node.children.get(token)
        if child is None:
            child = node.children[token] = _Node()
        return child

    def _collect(self, node: _Node[T], tokens: list[str], i: int, found: dict[T, None]) -> None:
        # Iterative down the literal path; recursion only where a '*' branches off.
        while True:
            if i == len(tokens):
                found.update(node.items)
                return
            if node.full_wildcard:  # '>' needs at least one more token: there is one
                found.update(node.full_wildcard)
            if node.one_wildcard is not None:
                self._collect(node.one_wildcard, tokens, i + 1, found)
            nxt = node.children.get(tokens[i])
            if nxt is None:
                return
            node, i = nxt, i + 1


# -- the rest of what a publish, a subscription or a stream carries ----------------------

_HEADER_NAME = re.compile(r"[!-9;-~]+")  # printable ASCII but ':'


def validate_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``headers``; raises ValueError (naming ``headers``) for a name that is
    empty, not printable ASCII or holds ':', or a value with a line break."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise ValueError(
                f"headers: {name!r} is not a header name (printable ASCII, no ':' or spaces)"
            )
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            raise ValueError(f"headers: the value of {name!r} must be a string without line breaks")
        out[name] = value
    return out


def validate_spec(spec: SubscriptionSpec) -> None:
    """Checks a subscription's subject, names and numbers (InvalidSubjectError or
    ValueError, naming the field)."""
    validate_pattern(spec.subject, field="subject")
    if spec.queue_group:
        validate_name(spec.queue_group, field="queue_group")
    if not spec.durable:
        return
    validate_name(spec.durable, field="durable")
    if spec.stream:
        validate_name(spec.stream, field="stream")
    if not spec.ack_wait > 0:
        raise ValueError(f"ack_wait: must be positive (got {spec.ack_wait})")
    if spec.max_deliver < 1:
        raise ValueError(f"max_deliver: must be at least 1 (got {spec.max_deliver})")
    if spec.max_ack_pending < 1:
        raise ValueError(f"max_ack_pending: must be at least 1 (got {spec.max_ack_pending})")
    if any(not b > 0 for b in spec.backoff):
        raise ValueError(f"backoff: every delay must be positive (got {list(spec.backoff)})")
    if spec.deliver is DeliverPolicy.BY_SEQUENCE and spec.start_sequence < 1:
        raise ValueError("start_sequence: deliver BY_SEQUENCE needs a sequence of 1 or more")
    if spec.deliver is DeliverPolicy.BY_TIME and not spec.start_time > 0:
        raise ValueError("start_time: deliver BY_TIME needs a positive Unix time")


def validate_stream_config(config: StreamConfig) -> None:
    """Checks a stream's name, subjects and limits (InvalidSubjectError or ValueError,
    naming the field)."""
    validate_name(config.name, field="name")
    if not config.subjects:
        raise InvalidSubjectError("subjects: name at least one subject", field="subjects")
    for pattern in config.subjects:
        validate_pattern(pattern, field="subjects")
    for name in ("max_age", "max_msgs", "max_bytes", "duplicate_window"):
        value = getattr(config, name)
        if value < 0:
            raise ValueError(f"{name}: must not be negative (got {value})")
    if config.dead_letter_subject:
        validate_subject(config.dead_letter_subject, field="dead_letter_subject")
