"""The intentions this sidecar's inbound listeners decide with.

The control plane sends every intention over the agent session after each
Welcome and again whenever one changes (``sdk.IntentionSet``); this table
keeps the latest set and tells its listeners when it changed, so that
connections already open are checked again (docs/security.md,
"Intentions"). Until the first set arrives nothing is allowed: an inbound
listener that requires mutual TLS refuses callers it cannot yet decide on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sdk import IntentionDecision, IntentionName, IntentionSet

__all__ = ["IntentionTable"]

logger = logging.getLogger(__name__)


class IntentionTable:
    """The latest :class:`~sdk.IntentionSet` (None before the first)."""

    def __init__(self) -> None:
        self._set: IntentionSet | None = None
        self._listeners: list[Callable[[], None]] = []
        self.changes = 0

    @property
    def current(self) -> IntentionSet | None:
        return self._set

    def on_intentions(self, intentions: IntentionSet) -> None:
        """The agent session's callback: a new set replaces the last one."""
        previous = self._set
        self._set = intentions
        if previous is not None and previous.version == intentions.version:
            return
        self.changes += 1
        logger.info(
            "intentions: %d (version %d, default %s)",
            len(intentions.intentions),
            intentions.version,
            "allow" if intentions.default_allow else "deny",
        )
        for callback in list(self._listeners):
            try:
                callback()
            except Exception:
                logger.exception("intention listener failed")

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Called after every change of the set."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def decide(
        self, source: str | IntentionName, destination: str | IntentionName
    ) -> IntentionDecision:
        """May ``source`` call ``destination``: each ``NAMESPACE/SERVICE`` (or a
        plain ``SERVICE`` of namespace ``default``); "" as source is a caller
        that is not a service (a node), which only ``*`` sources match."""
        if self._set is None:
            return IntentionDecision(
                False, None, "no intentions received from the control plane yet"
            )
        return self._set.decide(source, destination)

    def status(self) -> dict[str, Any]:
        current = self._set
        if current is None:
            return {"received": False}
        return {
            "received": True,
            "version": current.version,
            "count": len(current.intentions),
            "default": "allow" if current.default_allow else "deny",
        }
