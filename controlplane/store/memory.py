"""`MemoryStore`: the embedded engine with no persistence (tests, ``eco dev``)."""

from __future__ import annotations

from ._core import DEFAULT_HISTORY_LIMIT, Engine

__all__ = ["MemoryStore"]


class MemoryStore(Engine):
    """An in-memory `Store`. Every write is visible as soon as ``txn`` returns;
    everything is lost on close."""

    def __init__(self, history_limit: int = DEFAULT_HISTORY_LIMIT) -> None:
        super().__init__(history_limit=history_limit)

    def __repr__(self) -> str:
        return f"MemoryStore(revision={self.revision})"
