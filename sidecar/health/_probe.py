"""The seam between the engine and whatever runs the probes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NamedTuple, Protocol

from sdk import HealthStatus
from sidecar.health._base import ProbeCheckConfig

__all__ = [
    "INSTANCE_OUTPUT_LIMIT",
    "OUTPUT_LIMIT",
    "HealthChecker",
    "Probe",
    "ProbeResult",
    "clip_output",
    "fit_outputs",
]

# The control plane refuses a check status past these (LIMITS.check_output_length and
# LIMITS.check_output_total in controlplane/validation.py; the sidecar may not import the
# control plane), so the sidecar never keeps or reports more.
#: The longest output one check keeps, in characters.
OUTPUT_LIMIT = 4096
#: The most output all the checks of one instance report together, in characters.
INSTANCE_OUTPUT_LIMIT = 32 * 1024


def clip_output(text: str, limit: int = OUTPUT_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, the last one '…' when something was cut."""
    if len(text) <= limit:
        return text
    return text[: limit - 1] + "…" if limit > 0 else ""


def fit_outputs(lengths: list[int], budget: int = INSTANCE_OUTPUT_LIMIT) -> int | None:
    """The largest per-output length that makes outputs of these ``lengths`` fit in
    ``budget`` together, or None when they fit already. Short outputs stay whole; the
    long ones share what is left evenly."""
    if sum(lengths) <= budget:
        return None
    remaining = budget
    ordered = sorted(lengths)
    for i, length in enumerate(ordered):
        share = remaining // (len(ordered) - i)
        if length > share:
            return share
        remaining -= length
    return None  # not reached: the sum is over the budget


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
