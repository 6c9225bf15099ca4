"""ACL rules, and how a token's rules decide one question ("may it write service web?").

Shared by every server that checks tokens: the control plane (every RPC) and
the sidecar (its listeners off loopback, with rules the control plane resolves
for it). The control plane's per-RPC table is ``controlplane.acl``.

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

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import grpc

from serving.errors import ServiceError, cut, excerpt

__all__ = [
    "ACCESSES",
    "EVENTS_PREFIX",
    "MESSAGING_NEEDS",
    "RESOURCES",
    "SYNC_EVENTS_PREFIX",
    "Need",
    "PermissionDeniedError",
    "Rule",
    "allows",
    "bearer",
    "bearer_secret",
    "check_rule",
    "decide",
    "denied",
    "grants_somewhere",
    "parse_rule",
    "service_need",
    "token_envelope",
]

#: Subjects only the control plane publishes on (registry events) …
EVENTS_PREFIX = "eco.events."
#: … and sync runs' events (docs/sync-jobs.md).
SYNC_EVENTS_PREFIX = "eco.sync."
_RESERVED = (EVENTS_PREFIX, SYNC_EVENTS_PREFIX)
DEFAULT_NAMESPACE = "default"

RESOURCES = (
    "service",
    "namespace",
    "node",
    "bus",
    "acl",
    "operator",
    "route",
    "sync",
    "platform",
    "dataset",
)
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


@dataclass(frozen=True, slots=True)
class Need:
    """One right: ``resource`` ``name`` ``access``. ``namespace`` (services
    only) lets the namespace's rules decide when no service rule matches;
    ``anywhere`` asks for the right on some name (calls that name none)."""

    resource: str
    name: str
    access: str
    namespace: str = ""
    anywhere: bool = False

    def __str__(self) -> str:
        return f"{self.resource}:{'*' if self.anywhere else self.name}:{self.access}"


def service_need(name: str, namespace: str, access: str) -> Need:
    """``access`` on service ``name`` (its namespace's rules decide when none of its own match)."""
    return Need("service", name, access, namespace or DEFAULT_NAMESPACE)


def allows(rules: Sequence[Rule], need: Need, *, default_allow: bool) -> bool:
    """Whether a token with ``rules`` has ``need``; ``default_allow`` decides
    where no rule does (the control plane's ``--acl allow|deny``). Nobody but
    the control plane itself publishes on ``eco.events.*`` and ``eco.sync.*``."""
    if need.resource == "bus" and need.access == "publish" and need.name.startswith(_RESERVED):
        return False
    if need.anywhere:
        return (
            grants_somewhere(rules, need.resource, need.access)
            or (need.resource == "service" and grants_somewhere(rules, "namespace", need.access))
            or default_allow
        )
    verdict = decide(rules, need.resource, need.name, need.access)
    if verdict is None and need.namespace:
        verdict = decide(rules, "namespace", need.namespace, need.access)
    return default_allow if verdict is None else verdict


class PermissionDeniedError(ServiceError):
    """The token lacks a right; the message names it (``service:web:write``)."""

    status_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.PERMISSION_DENIED


def denied(need: Need) -> PermissionDeniedError:
    """The refusal of ``need``, saying what would lift it."""
    for prefix in _RESERVED:
        if need.resource == "bus" and need.name.startswith(prefix):
            return PermissionDeniedError(
                f"{excerpt(need.name)}: only the control plane publishes on {prefix}*"
            )
    return PermissionDeniedError(
        f"the token lacks {cut(str(need), 300)}: give it a policy with a rule that grants it"
    )


_BEARER = "bearer "


def bearer(value: str) -> str:
    """The secret of an ``Authorization: Bearer <secret>`` value ("" for another scheme)."""
    if value[: len(_BEARER)].lower() == _BEARER:
        return value[len(_BEARER) :].strip()
    return ""


def bearer_secret(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The token a gRPC call presents in its ``authorization`` metadata ("" for
    none), taken out of its envelope when it comes in one (:func:`token_envelope`)."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            return _unwrapped(bearer(value))
    return ""


#: The ``exp`` of an envelope: 2100-01-01. The token inside decides how long
#: it is good for; the client reads the file again only after this.
_ENVELOPE_EXPIRY = 4_102_444_800


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def token_envelope(secret: str) -> str:
    """``secret`` as the ``token`` claim of an unsigned JWT.

    gRPC's xDS clients send call credentials named in their bootstrap file
    only as a JWT read from a file (``jwt_token_file``), which they parse for
    its ``exp``; ``eco xds bootstrap --token-file`` writes this envelope there.
    It proves nothing by itself: the token inside is checked like any other."""
    return (
        f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({'exp': _ENVELOPE_EXPIRY, 'token': secret})}."
    )


def _unwrapped(secret: str) -> str:
    """The token in an envelope, else ``secret`` as it is (a token's own
    secret is URL-safe base64: it has no dots)."""
    if secret.count(".") != 2:
        return secret
    payload = secret.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error):
        return secret
    token = claims.get("token") if isinstance(claims, dict) else None
    return token if isinstance(token, str) and token else secret


def _publish(subject: str) -> Need:
    return Need("bus", subject, "publish")


def _any(resource: str, access: str) -> Need:
    return Need(resource, "*", access, anywhere=True)


#: What each ``MessagingService`` RPC needs, from its request: served by the
#: control plane and by a sidecar's local API alike. Subjects are names
#: (``orders.*`` matches ``orders.eu.created``).
MESSAGING_NEEDS: dict[str, Callable[[Any], Sequence[Need]]] = {
    "Publish": lambda r: [_publish(r.subject)],
    "PublishBatch": lambda r: [_publish(m.subject) for m in r.messages],
    "Subscribe": lambda r: [Need("bus", r.subject or r.stream, "subscribe")],
    "Ack": lambda r: [_any("bus", "subscribe")],
    "Request": lambda r: [_publish(r.subject)],
    "AddStream": lambda r: (
        [Need("bus", s, "write") for s in r.config.subjects] or [Need("bus", "*", "write")]
    ),
    "ListStreams": lambda r: [_any("bus", "read")],
    "DeleteStream": lambda r: [Need("bus", "*", "write")],
}
