"""The seam between the engine and whatever runs the probes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NamedTuple, Protocol

from sdk import HealthStatus
from sidecar.health._base import ProbeCheckConfig

__all__ = ["OUTPUT_LIMIT", "HealthChecker", "Probe", "ProbeResult"]

#: Outputs are cut to this many characters (bytes, for exec) before they are kept.
OUTPUT_LIMIT = 4096


class ProbeResult(NamedTuple):
    """The result of one probe: its status and a line or two of output."""

    status: HealthStatus
    output: str


#: One prepared probe: called once per run, never concurrently with itself.
Probe = Callable[[], Awaitable[ProbeResult]]


class HealthChecker(Protocol):
    """Turns check configurations into probes the engine can run.

    ``prepare`` is called once when a check is added and does no I/O (it may
    run before the event loop does); the probe it returns must end within
    the check's ``timeout``, report failures as a CRITICAL result rather than
    by raising, and release everything it holds when cancelled. ``release``
    is called once for every prepared configuration when its check is
    removed. ``close`` ends whatever the checker holds (idempotent).
    """

    def prepare(self, config: ProbeCheckConfig) -> Probe: ...

    def release(self, config: ProbeCheckConfig) -> None: ...

    async def close(self) -> None: ...
