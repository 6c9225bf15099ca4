"""Check outputs stay within what the control plane accepts: 4,096 characters per check and
32 KiB for all the checks of one instance, whatever a probe or an application hands over."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from sdk import HealthStatus
from sidecar.health import FakeClock, FakeHealthChecker, HealthEngine, HealthTransition, parse_check
from sidecar.health._probe import INSTANCE_OUTPUT_LIMIT, OUTPUT_LIMIT

C = HealthStatus.CRITICAL


class Harness:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.fake = FakeHealthChecker()
        self.transitions: list[HealthTransition] = []
        self.engine = HealthEngine(
            self.fake, clock=self.clock, on_transition=self.transitions.append, rng=random.Random(1)
        )

    async def step(self, seconds: float = 0.0) -> None:
        self.clock.advance(seconds)
        for _ in range(10):
            await asyncio.sleep(0)


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    harness = Harness()
    async with harness.engine:
        yield harness


def test_the_limits_are_the_control_planes() -> None:
    # controlplane/validation.py LIMITS.check_output_length and .check_output_total
    assert (OUTPUT_LIMIT, INSTANCE_OUTPUT_LIMIT) == (4096, 32 * 1024)


async def test_a_long_probe_output_is_cut_to_the_limit(h: Harness) -> None:
    check_id = h.engine.add("web-1", parse_check({"tcp": "h:1", "interval": "1s", "jitter": 0}))
    h.fake.set("tcp h:1", C, "x" * 10_000)
    await h.step(1.0)
    detail = h.engine.check(check_id)
    assert detail.checked_at is not None
    assert len(detail.output) == OUTPUT_LIMIT and detail.output.endswith("…")


async def test_a_long_output_that_changes_status_is_cut_in_the_transition(h: Harness) -> None:
    check_id = h.engine.add(
        "web-1",
        parse_check({"tcp": "h:1", "interval": "1s", "jitter": 0, "initial_status": "passing"}),
    )
    h.fake.set("tcp h:1", C, "y" * 50_000)
    await h.step(1.0)
    (transition,) = h.transitions
    assert transition.check_id == check_id
    assert len(transition.output) == OUTPUT_LIMIT


async def test_all_outputs_of_an_instance_fit_in_32_kib(h: Harness) -> None:
    for i in range(32):
        h.engine.add("web-1", parse_check({"tcp": f"h:{i + 1}", "interval": "1s", "jitter": 0}))
        h.fake.set(f"tcp h:{i + 1}", C, f"{i}:" + "z" * 5000)
    h.fake.set("tcp h:1", C, "short and kept whole")
    await h.step(1.0)
    details = h.engine.checks("web-1")
    assert all(d.checked_at is not None for d in details)
    outputs = [d.to_check_status().output for d in details]
    assert sum(len(o) for o in outputs) <= INSTANCE_OUTPUT_LIMIT
    assert outputs[0] == "short and kept whole"
    # The long ones share what is left evenly, each still saying where it came from.
    assert all(o.startswith(f"{i}:") and o.endswith("…") for i, o in enumerate(outputs[1:], 1))
    assert max(len(o) for o in outputs[1:]) - min(len(o) for o in outputs[1:]) <= 1
    # One check alone keeps its whole (already capped) output.
    assert len(h.engine.check(details[5].check_id).output) == OUTPUT_LIMIT


async def test_a_ttl_note_is_cut_with_a_mark(h: Harness) -> None:
    check_id = h.engine.add("worker", parse_check({"ttl": "30s"}))
    h.engine.update_ttl(check_id, "warning", "n" * 9000)
    output = h.engine.check(check_id).output
    assert len(output) == OUTPUT_LIMIT and output.endswith("…")
