"""Rules, and how a token's rules decide one question ("may it write service web?").

A rule is ``resource:pattern:access``. The pattern is a name, or a glob where
``*`` matches any run of characters (dots included: ``orders.*`` matches
``orders.eu.created``). For one question, only the rules of its resource
whose pattern matches the name count; of those, the **most specific** decides:

1. an exact pattern (no ``*``) beats any glob;
2. between globs, the longer literal prefix (the characters before the first
   ``*``) wins; then the one with more literal characters in all;
3. rules equally specific (from one or several policies of the token): a
   ``deny`` among them beats everything else; otherwise the question is
   granted when any of them grants it.

No matching rule: for a service, the namespace's rules decide the same way;
still none: the control plane's default (``--acl allow|deny``).

What grants what: ``write`` grants ``read``; on the bus, ``write`` grants
``publish`` and ``subscribe``, and ``read`` or ``subscribe`` grants the other.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "ACCESSES",
    "RESOURCES",
    "Rule",
    "decide",
    "parse_rule",
]

RESOURCES = ("service", "namespace", "node", "bus", "acl", "operator")
ACCESSES = ("read", "write", "deny", "publish", "subscribe")
_BUS_ONLY = ("publish", "subscribe")
_PATTERN = re.compile(r"^[A-Za-z0-9*._>/-]{1,256}$")

#: What a rule's access grants, for each access a question asks about.
_GRANTED_BY: dict[str, frozenset[str]] = {
    "read": frozenset({"read", "write", "subscribe"}),
    "write": frozenset({"write"}),
    "publish": frozenset({"publish", "write"}),
    "subscribe": frozenset({"subscribe", "read", "write"}),
}


@dataclass(frozen=True, slots=True)
class Rule:
    resource: str
    pattern: str
    access: str

    def __str__(self) -> str:
        return f"{self.resource}:{self.pattern}:{self.access}"

    @property
    def specificity(self) -> tuple[int, int, int]:
        literal = self.pattern.replace("*", "")
        prefix = self.pattern.split("*", 1)[0]
        return (0 if "*" in self.pattern else 1, len(prefix), len(literal))

    def matches(self, name: str) -> bool:
        return _compiled(self.pattern).fullmatch(name) is not None


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def parse_rule(text: str) -> Rule:
    """``resource:pattern:access`` as a Rule; ValueError saying what is wrong."""
    parts = text.strip().split(":")
    if len(parts) != 3:
        raise ValueError(f"rule {text!r} is not RESOURCE:PATTERN:ACCESS")
    return check_rule(Rule(*(part.strip() for part in parts)))


def check_rule(rule: Rule) -> Rule:
    """``rule`` if it is valid; ValueError saying what is wrong."""
    if rule.resource not in RESOURCES:
        raise ValueError(f"rule {rule}: resource must be one of {', '.join(RESOURCES)}")
    if not _PATTERN.match(rule.pattern):
        raise ValueError(
            f"rule {rule}: pattern must be 1-256 letters, digits, '.', '-', '_', '/', '>' or '*'"
        )
    if rule.access not in ACCESSES:
        raise ValueError(f"rule {rule}: access must be one of {', '.join(ACCESSES)}")
    if rule.access in _BUS_ONLY and rule.resource != "bus":
        raise ValueError(f"rule {rule}: {rule.access} applies to bus rules only")
    return rule


def decide(rules: Iterable[Rule], resource: str, name: str, access: str) -> bool | None:
    """Whether ``rules`` grant ``access`` to ``resource`` ``name``; None when no
    rule of that resource matches the name (the caller falls back)."""
    best: tuple[int, int, int] | None = None
    winners: list[Rule] = []
    for rule in rules:
        if rule.resource != resource or not rule.matches(name):
            continue
        specificity = rule.specificity
        if best is None or specificity > best:
            best, winners = specificity, [rule]
        elif specificity == best:
            winners.append(rule)
    if not winners:
        return None
    if any(rule.access == "deny" for rule in winners):
        return False
    granted_by = _GRANTED_BY[access]
    return any(rule.access in granted_by for rule in winners)


def grants_somewhere(rules: Sequence[Rule], resource: str, access: str) -> bool:
    """Whether any rule of ``resource`` grants ``access`` to some name (for
    calls that name no single resource, e.g. a lease's keepalive)."""
    granted_by = _GRANTED_BY[access]
    return any(rule.resource == resource and rule.access in granted_by for rule in rules)
