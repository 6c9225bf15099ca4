"""Result lines: one JSON object per measurement, then a ratio line per pair.

A measurement line: ``{"bench", "system", "value", "unit", ...details}``.
A ratio line: ``{"bench", "ratio_to_etcd", "value", "etcd", "unit", "better",
"budget", "budget_op", "within_budget"}`` where the budget applies to the
control plane's own figure (ARCHITECTURE §11). A failed measurement is
``{"bench", "system", "error"}``. Lines go to stdout and, as they come, to
the results file.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

__all__ = ["BUDGETS", "Budget", "Reporter", "median", "percentile"]


@dataclass(frozen=True)
class Budget:
    limit: float
    op: str  # ">=": at least (throughput); "<=": at most (latency, memory)

    def holds(self, value: float) -> bool:
        return value >= self.limit if self.op == ">=" else value <= self.limit

    @property
    def better(self) -> str:
        return "higher" if self.op == ">=" else "lower"


BUDGETS: dict[str, Budget] = {
    "registrations_ephemeral": Budget(3_000, ">="),
    "registrations_persistent": Budget(3_000, ">="),
    "watch_latency": Budget(100, "<="),
    "snapshot": Budget(300, "<="),
    "rss": Budget(150, "<="),
}

OURS = "ecosystem"
PEER = "etcd"


def percentile(ordered: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty list."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: list[float]) -> float:
    return percentile(sorted(values), 50)


def _round(value: Any) -> Any:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        return round(value, 3)
    if isinstance(value, list):
        return [_round(v) for v in value]
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    return value


class Reporter:
    """Prints and saves result lines; remembers measurements for the ratios."""

    def __init__(self, out: Path | None, stream: TextIO = sys.stdout) -> None:
        self._stream = stream
        self._file: TextIO | None = None
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(out, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._measured: dict[tuple[str, str], dict[str, Any]] = {}
        self.failures = 0
        self.missed: list[str] = []

    def emit(self, line: dict[str, Any]) -> None:
        text = json.dumps(_round(line))
        print(text, file=self._stream, flush=True)
        if self._file is not None:
            self._file.write(text + "\n")
            self._file.flush()

    def measurement(self, bench: str, system: str, value: float, unit: str, **details: Any) -> None:
        line = {"bench": bench, "system": system, "value": value, "unit": unit, **details}
        self._measured[(bench, system)] = line
        self.emit(line)

    def error(self, bench: str, system: str, message: str) -> None:
        self.failures += 1
        self.emit({"bench": bench, "system": system, "error": message})

    def ratio(self, bench: str) -> None:
        """The ratio line for ``bench``, once the control plane's figure is in."""
        ours = self._measured.get((bench, OURS))
        if ours is None:
            return
        budget = BUDGETS[bench]
        within = budget.holds(ours["value"]) and ours.get("complete", True)
        peer = self._measured.get((bench, PEER))
        ratio = ours["value"] / peer["value"] if peer and peer["value"] else None
        if not within:
            self.missed.append(bench)
        self.emit(
            {
                "bench": bench,
                "ratio_to_etcd": ratio,
                "value": ours["value"],
                "etcd": peer["value"] if peer else None,
                "unit": ours["unit"],
                "better": budget.better,
                "budget": budget.limit,
                "budget_op": budget.op,
                "within_budget": within,
            }
        )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
