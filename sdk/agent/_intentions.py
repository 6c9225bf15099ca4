"""Intentions as the agent session carries them, and how a decision is made.

The control plane (``eco intention check``) and the sidecar's inbound
listeners decide with :meth:`IntentionSet.decide`, so both always agree.

Each side of an intention is an :class:`IntentionName`, written

- ``SERVICE``: that service in namespace ``default``;
- ``NAMESPACE/SERVICE``: that service in that namespace;
- ``NAMESPACE/*``: every service of the namespace;
- ``*`` (or ``*/*``): every service of every namespace.

``*/SERVICE`` (a service in any namespace) is not a form: a namespace is a
boundary, and an intention that crosses all of them names them all (``*``).
The shortest form is the one stored and sent (``web`` for ``default/web``,
``*`` for ``*/*``), so intentions written before namespaces keep their
meaning: ``web -> orders`` names ``default/web`` and ``default/orders``.

Precedence (docs/security.md, "Intentions"), as service meshes order it:
the most specific destination decides first, then the most specific
source, where an exact service (namespace and name) beats ``NAMESPACE/*``,
which beats ``*``; none matches: the default (allow with ``--acl allow``,
deny with ``--acl deny``). There is one intention per (source, destination)
pair, so two equally specific ones cannot both match; should they (two
stored forms of one pair), ``deny`` wins.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from ecosystem.v1 import intention_pb2

__all__ = ["WILDCARD", "Intention", "IntentionDecision", "IntentionName", "IntentionSet"]

logger = logging.getLogger(__name__)

WILDCARD = "*"
DEFAULT_NAMESPACE = "default"
_ALLOW = intention_pb2.INTENTION_ACTION_ALLOW


@dataclass(frozen=True, slots=True)
class IntentionName:
    """One side of an intention: ``namespace`` and ``service``, either ``*`` for any
    (``*`` namespace only with ``*`` service). ``IntentionName("", "")`` is a
    caller that is no service (a node): only ``*`` names it."""

    namespace: str
    service: str

    @classmethod
    def parse(cls, text: str) -> IntentionName:
        """``SERVICE``, ``NAMESPACE/SERVICE``, ``NAMESPACE/*``, ``*/*`` or ``*``;
        ValueError saying what is wrong (names are not checked beyond that:
        the control plane holds them to its name rules)."""
        if text == WILDCARD:
            return cls(WILDCARD, WILDCARD)
        parts = text.split("/")
        if len(parts) == 1:
            namespace, service = DEFAULT_NAMESPACE, parts[0]
        elif len(parts) == 2:
            namespace, service = parts
        else:
            raise ValueError(f"{text!r}: at most one '/' (NAMESPACE/SERVICE)")
        if not namespace or not service:
            raise ValueError(f"{text!r}: a namespace and a service, neither empty")
        for part in (namespace, service):
            if WILDCARD in part and part != WILDCARD:
                raise ValueError(f"{text!r}: '*' stands alone (a whole name or namespace)")
        if namespace == WILDCARD and service != WILDCARD:
            raise ValueError(
                f"{text!r}: a service in every namespace is not a form; "
                "name its namespace, or use '*' for every service"
            )
        return cls(namespace, service)

    @classmethod
    def of(cls, namespace: str, service: str) -> IntentionName:
        """A workload's name (its SPIFFE ID's namespace and service; "" is ``default``)."""
        return cls(namespace or DEFAULT_NAMESPACE, service)

    @property
    def specificity(self) -> int:
        """2: one service; 1: a namespace's services; 0: every service."""
        if self.namespace == WILDCARD:
            return 0
        return 1 if self.service == WILDCARD else 2

    def covers(self, other: IntentionName) -> bool:
        """Whether an intention side ``self`` names ``other`` (a workload, or a
        wildcard asked about as it is: ``team-a/*`` is covered by ``team-a/*``
        and ``*``, not by ``team-a/web``)."""
        if self.namespace == WILDCARD:
            return True
        if self.namespace != other.namespace:
            return False
        return self.service in (WILDCARD, other.service)

    @property
    def qualified(self) -> str:
        """``NAMESPACE/SERVICE`` (``default/`` included), ``NAMESPACE/*``, or ``*``."""
        if self.namespace == WILDCARD:
            return WILDCARD
        if not self.service:
            return "(no service)"
        return f"{self.namespace}/{self.service}"

    def __str__(self) -> str:
        """The shortest form: what is stored and sent (``web`` for ``default/web``)."""
        if self.namespace == DEFAULT_NAMESPACE and self.service != WILDCARD:
            return self.service
        return self.qualified


@dataclass(frozen=True, slots=True)
class Intention:
    """``source`` may (``allow``) or may not call ``destination``, each written as
    :class:`IntentionName` parses it (stored in its shortest form); ValueError
    for a side that is no such name."""

    source: str
    destination: str
    allow: bool
    description: str = ""
    source_name: IntentionName = field(init=False, repr=False, compare=False)
    destination_name: IntentionName = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        source = IntentionName.parse(self.source)
        destination = IntentionName.parse(self.destination)
        object.__setattr__(self, "source_name", source)
        object.__setattr__(self, "destination_name", destination)
        object.__setattr__(self, "source", str(source))
        object.__setattr__(self, "destination", str(destination))

    @classmethod
    def from_proto(cls, message: intention_pb2.Intention) -> Intention:
        return cls(
            str(message.source),
            str(message.destination),
            message.action == _ALLOW,
            str(message.description),
        )

    def rank(self, source: IntentionName, destination: IntentionName) -> int:
        """How specifically it applies to the pair (higher wins); -1: not at all."""
        if not self.destination_name.covers(destination) or not self.source_name.covers(source):
            return -1
        return self.destination_name.specificity * 3 + self.source_name.specificity

    def __str__(self) -> str:
        verb = "allows" if self.allow else "denies"
        return f"intention {self.source_name.qualified} -> {self.destination_name.qualified} {verb}"


@dataclass(frozen=True, slots=True)
class IntentionDecision:
    """Whether the call is allowed, the intention that decided (None: the
    default did), and why in words."""

    allowed: bool
    matched: Intention | None
    reason: str


@dataclass(frozen=True, slots=True)
class IntentionSet:
    """Every intention and the default for pairs none matches."""

    intentions: tuple[Intention, ...] = ()
    default_allow: bool = True
    version: int = 0

    @classmethod
    def from_proto(cls, message: intention_pb2.IntentionSet) -> IntentionSet:
        intentions = []
        for item in message.intentions:
            try:
                intentions.append(Intention.from_proto(item))
            except ValueError as exc:
                # Only a newer control plane could send a form this one does not
                # know; it names no workload this sidecar can tell apart.
                logger.warning("intention %s -> %s ignored: %s", item.source, item.destination, exc)
        return cls(tuple(intentions), bool(message.default_allow), int(message.version))

    @classmethod
    def of(cls, intentions: Iterable[Intention], *, default_allow: bool) -> IntentionSet:
        return cls(tuple(intentions), default_allow)

    def decide(
        self, source: str | IntentionName, destination: str | IntentionName
    ) -> IntentionDecision:
        """May ``source`` call ``destination`` (names as :class:`IntentionName`
        parses them; ``""`` as source: a caller that is no service)? See the
        module for precedence. ValueError for a name that is none."""
        src = _name(source)
        dst = _name(destination)
        best: Intention | None = None
        best_rank = -1
        for intention in self.intentions:
            rank = intention.rank(src, dst)
            if rank > best_rank or (rank == best_rank and best is not None and best.allow):
                best, best_rank = intention, rank
        if best is None:
            default = "allow" if self.default_allow else "deny"
            return IntentionDecision(
                self.default_allow, None, f"no intention matches: default {default}"
            )
        return IntentionDecision(best.allow, best, str(best))


def _name(value: str | IntentionName) -> IntentionName:
    if isinstance(value, IntentionName):
        return value
    if value == "":
        return IntentionName("", "")
    return IntentionName.parse(value)
