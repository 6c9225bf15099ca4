"""The audit log: one JSON line per write and per refusal.

``{"time": "2026-12-07T02:30:00.123Z", "identity": "<accessor id> (<description>)",
"rpc": "/ecosystem.v1.RegistryService/RegisterInstance", "resource": "service:web:write",
"allowed": true}``, plus ``"reason"`` on a refusal. Never a secret: an identity
is a token's accessor id and description. The file is opened for appending and
reopened when it is moved away (rotate by renaming it; no copy-and-truncate
needed), so any log rotator works without a signal.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
from datetime import UTC, datetime

__all__ = ["AuditLog"]

log = logging.getLogger(__name__)


class AuditLog:
    """Appends audit lines to ``path``; ``close`` is idempotent."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._handler: logging.handlers.WatchedFileHandler | None = None

    def _open(self) -> logging.handlers.WatchedFileHandler:
        if self._handler is None:
            self._handler = logging.handlers.WatchedFileHandler(
                self.path, encoding="utf-8", delay=False
            )
            self._handler.setFormatter(logging.Formatter("%(message)s"))
        return self._handler

    def record(
        self, identity: str, rpc: str, resource: str, *, allowed: bool, reason: str = ""
    ) -> None:
        line: dict[str, object] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "identity": identity,
            "rpc": rpc,
            "resource": resource,
            "allowed": allowed,
        }
        if reason:
            line["reason"] = reason
        try:
            handler = self._open()
            handler.emit(logging.makeLogRecord({"msg": json.dumps(line), "levelno": logging.INFO}))
        except OSError as exc:  # a full disk must not stop the control plane
            log.error("cannot write the audit log %s: %s", self.path, exc)

    def close(self) -> None:
        if self._handler is not None:
            self._handler.close()
            self._handler = None
