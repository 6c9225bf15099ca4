"""Intentions as the agent session carries them, and how a decision is made.

The control plane (``eco intention check``) and the sidecar's inbound
listeners decide with :meth:`IntentionSet.decide`, so both always agree.
Precedence (docs/security.md, "Intentions"): the intention naming both
services exactly; else the exact destination with any source (``*``); else
the exact source with any destination; else ``* -> *``; else the default
(allow with ``--acl allow``, deny with ``--acl deny``). There is at most one
intention per (source, destination) pair, so nothing ties.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ecosystem.v1 import intention_pb2

__all__ = ["WILDCARD", "Intention", "IntentionDecision", "IntentionSet"]

WILDCARD = "*"
_ALLOW = intention_pb2.INTENTION_ACTION_ALLOW


@dataclass(frozen=True, slots=True)
class Intention:
    """``source`` may (``allow``) or may not call ``destination``; either may be ``*``."""

    source: str
    destination: str
    allow: bool
    description: str = ""

    @classmethod
    def from_proto(cls, message: intention_pb2.Intention) -> Intention:
        return cls(
            str(message.source),
            str(message.destination),
            message.action == _ALLOW,
            str(message.description),
        )

    def rank(self, source: str, destination: str) -> int:
        """How specifically it applies to the pair (higher wins); -1: not at all."""
        if self.destination == destination:
            dst = 2
        elif self.destination == WILDCARD:
            dst = 0
        else:
            return -1
        if self.source == source:
            return dst + 1
        if self.source == WILDCARD:
            return dst
        return -1

    def __str__(self) -> str:
        verb = "allows" if self.allow else "denies"
        return f"intention {self.source} -> {self.destination} {verb}"


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
        return cls(
            tuple(Intention.from_proto(i) for i in message.intentions),
            bool(message.default_allow),
            int(message.version),
        )

    @classmethod
    def of(cls, intentions: Iterable[Intention], *, default_allow: bool) -> IntentionSet:
        return cls(tuple(intentions), default_allow)

    def decide(self, source: str, destination: str) -> IntentionDecision:
        """May ``source`` call ``destination`` (see the module for precedence)."""
        best: Intention | None = None
        best_rank = -1
        for intention in self.intentions:
            rank = intention.rank(source, destination)
            if rank > best_rank:
                best, best_rank = intention, rank
        if best is None:
            default = "allow" if self.default_allow else "deny"
            return IntentionDecision(
                self.default_allow, None, f"no intention matches: default {default}"
            )
        return IntentionDecision(best.allow, best, str(best))
