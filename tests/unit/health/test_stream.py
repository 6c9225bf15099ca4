"""Transition streams: every change for a consumer that keeps up, else the net change."""

from __future__ import annotations

import asyncio

from sdk import HealthStatus
from sidecar.health import HealthTransition, TransitionStream

P, W, C = HealthStatus.PASSING, HealthStatus.WARNING, HealthStatus.CRITICAL


def t(check: str, old: HealthStatus, new: HealthStatus, output: str = "") -> HealthTransition:
    return HealthTransition("i", check, check, old, new, output, at=1.0, instance_status=new)


def stream() -> tuple[TransitionStream, list[TransitionStream]]:
    closed: list[TransitionStream] = []
    return TransitionStream(closed.append), closed


async def drain(s: TransitionStream) -> list[HealthTransition]:
    s.end()
    return [x async for x in s]


async def test_delivers_in_order() -> None:
    s, _ = stream()
    s.put(t("a", C, P))
    s.put(t("b", C, P))
    assert [(x.check_id, x.old, x.new) for x in await drain(s)] == [("a", C, P), ("b", C, P)]


async def test_merges_pending_changes_of_one_check() -> None:
    s, _ = stream()
    s.put(t("a", C, P, "first"))
    s.put(t("b", C, P))
    s.put(t("a", P, W, "second"))
    got = await drain(s)
    assert [(x.check_id, x.old, x.new, x.output) for x in got] == [
        ("a", C, W, "second"),
        ("b", C, P, ""),
    ]


async def test_drops_a_net_change_back_to_where_it_was() -> None:
    s, _ = stream()
    s.put(t("a", P, C))
    s.put(t("a", C, P))
    assert s.pending == 0
    assert await drain(s) == []


async def test_waiting_consumer_is_woken() -> None:
    s, _ = stream()
    got: list[HealthTransition] = []

    async def consume() -> None:
        async for x in s:
            got.append(x)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0)
    s.put(t("a", C, P))
    await asyncio.sleep(0)
    assert len(got) == 1
    s.end()
    await task


async def test_close_stops_at_once_and_is_idempotent() -> None:
    s, closed = stream()
    async with s:
        s.put(t("a", C, P))
    assert closed == [s]
    s.close()
    s.put(t("b", C, P))
    assert [x async for x in s] == []
