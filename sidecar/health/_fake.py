"""A scripted :class:`HealthChecker` for tests of the engine and of what sits on top of it."""

from __future__ import annotations

import asyncio
from collections import Counter, deque

from sdk import HealthStatus
from sidecar.health._base import CheckConfig, ProbeCheckConfig
from sidecar.health._probe import Probe, ProbeResult

__all__ = ["FakeHealthChecker"]


class FakeHealthChecker:
    """Probes that return what the test says, keyed by check name, with no I/O.

    ``set(name, status, output)`` fixes the result of every later probe of
    the checks with that name; ``queue(name, *statuses)`` lines up results
    used first, one per probe; other checks get ``default``. ``pause(name)``
    makes that name's probes wait until ``resume(name)``. ``calls(name)``
    counts probes started. It asserts the protocol's invariants: no probe
    for a TTL check, no probe running concurrently with itself, no release
    of what was not prepared, nothing prepared after close.
    """

    def __init__(self, default: ProbeResult | None = None) -> None:
        self._default = default or ProbeResult(HealthStatus.PASSING, "ok")
        self._results: dict[str, ProbeResult] = {}
        self._queued: dict[str, deque[ProbeResult]] = {}
        self._calls: Counter[str] = Counter()
        self._prepared: Counter[str] = Counter()
        self._gates: dict[str, asyncio.Event] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.closed = False

    def set(self, name: str, status: HealthStatus | str, output: str = "") -> None:
        self._results[name] = ProbeResult(HealthStatus.parse(status), output)

    def queue(self, name: str, *statuses: HealthStatus | str) -> None:
        line = self._queued.setdefault(name, deque())
        line.extend(ProbeResult(HealthStatus.parse(s), f"queued {s}") for s in statuses)

    def calls(self, name: str) -> int:
        return self._calls[name]

    @property
    def total_calls(self) -> int:
        return self._calls.total()

    def prepared(self, name: str) -> int:
        """How many checks with this name are prepared and not yet released."""
        return self._prepared[name]

    def pause(self, name: str) -> None:
        self._gates.setdefault(name, asyncio.Event())

    def resume(self, name: str) -> None:
        gate = self._gates.pop(name, None)
        if gate is not None:
            gate.set()

    def prepare(self, config: ProbeCheckConfig) -> Probe:
        assert not self.closed, "prepare() after close()"
        assert isinstance(config, ProbeCheckConfig), f"no probe for a {config.kind} check"
        name = config.name
        self._prepared[name] += 1
        running = False

        async def probe() -> ProbeResult:
            nonlocal running
            assert not running, f"probe of {name!r} started while the previous one runs"
            running = True
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                self._calls[name] += 1
                gate = self._gates.get(name)
                if gate is not None:
                    await gate.wait()
                line = self._queued.get(name)
                if line:
                    return line.popleft()
                return self._results.get(name, self._default)
            finally:
                running = False
                self.in_flight -= 1

        return probe

    def release(self, config: CheckConfig) -> None:
        assert isinstance(config, ProbeCheckConfig), f"release of a {config.kind} check"
        assert self._prepared[config.name] > 0, f"release of {config.name!r}, never prepared"
        self._prepared[config.name] -= 1

    async def close(self) -> None:
        self.closed = True
        for gate in self._gates.values():
            gate.set()
        self._gates.clear()
