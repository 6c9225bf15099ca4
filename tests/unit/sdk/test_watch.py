"""The resumable watch: what revision it resumes from, and that it leaves nothing behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import grpc
import pytest
from ecosystem.v1 import registry_pb2 as pb

import sdk
from sdk._retry import Backoff
from sdk._transport import Transport
from sdk._watch import ResumePoint, watch_events
from tests.unit.sdk.fakes import (
    FakeControlPlane,
    RecordingSleep,
    batch,
    event,
    instance_pb,
    rpc_error,
    script,
    unavailable,
)

T = sdk.WatchEventType


def ev(kind: sdk.WatchEventType, revision: int) -> sdk.WatchEvent:
    return sdk.WatchEvent(kind, revision)


class TestResumePoint:
    def test_deltas_progress_and_snapshot_end_are_safe(self) -> None:
        point = ResumePoint(revision=5)
        point.advance(ev(T.PUT, 6))
        assert point.revision == 6
        point.advance(ev(T.DELETE, 8))
        point.advance(ev(T.PROGRESS, 11))
        assert point.revision == 11

    def test_puts_inside_a_snapshot_are_not_safe(self) -> None:
        point = ResumePoint(revision=5)
        point.advance(ev(T.RESYNC, 20))
        point.advance(ev(T.PUT, 17))
        point.advance(ev(T.PUT, 19))
        assert point.revision == 5
        point.advance(ev(T.SNAPSHOT_END, 20))
        assert point.revision == 20 and not point.in_snapshot

    def test_a_snapshot_cut_short_asks_for_a_new_one(self) -> None:
        point = ResumePoint(revision=5)
        point.advance(ev(T.RESYNC, 20))
        point.advance(ev(T.PUT, 17))
        assert point.after_disconnect() == 0
        assert not point.in_snapshot

    def test_outside_a_snapshot_it_resumes_where_it_was(self) -> None:
        point = ResumePoint(revision=5)
        point.advance(ev(T.PUT, 9))
        assert point.after_disconnect() == 9

    def test_a_revision_cut_across_responses_is_not_safe_until_whole(self) -> None:
        point = ResumePoint(revision=5)
        point.advance(ev(T.PUT, 6))
        point.advance(ev(T.DELETE, 7), partial=True)
        point.advance(ev(T.DELETE, 7), partial=True)
        assert point.after_disconnect() == 6  # revision 7 is sent again, whole
        point.advance(ev(T.DELETE, 7))
        assert point.revision == 7

    def test_revisions_never_go_back(self) -> None:
        point = ResumePoint(revision=9)
        point.advance(ev(T.PROGRESS, 4))
        assert point.revision == 9


def start(
    plane: FakeControlPlane,
    *,
    since: int = 0,
    addresses: tuple[str, ...] = ("a:1",),
    sleep: RecordingSleep | None = None,
    progress_interval: float = 5.0,
) -> tuple[Transport, AsyncGenerator[sdk.WatchEvent, None]]:
    transport = Transport(addresses, timeout=1.0, channel_factory=plane.channel_factory)
    events = watch_events(
        transport,
        pb.InstanceSelector(service="web"),
        since_revision=since,
        progress_interval=progress_interval,
        backoff=Backoff(0.1, 1.0),
        sleep=sleep or RecordingSleep(),
    )
    return transport, events


async def take(events: AsyncGenerator[sdk.WatchEvent, None], n: int) -> list[sdk.WatchEvent]:
    return [await anext(events) for _ in range(n)]


def since_revisions(plane: FakeControlPlane) -> list[int]:
    return [r.since_revision for r in plane.requests("Watch")]


async def test_snapshot_then_deltas_then_resume_after_the_last_delta() -> None:
    plane = FakeControlPlane()
    plane.watch_scripts.extend(
        [
            script(
                batch(event("RESYNC", 9), event("PUT", 4, instance_pb("web-1"))),
                batch(event("PUT", 9, instance_pb("web-2")), event("SNAPSHOT_END", 9)),
                batch(event("PUT", 10, instance_pb("web-3"))),
                unavailable(),
            ),
            script(batch(event("DELETE", 11, instance_pb("web-1"))), hang=True),
        ]
    )
    transport, events = start(plane)
    got = await take(events, 6)
    assert [(e.type, e.revision) for e in got] == [
        (T.RESYNC, 9),
        (T.PUT, 4),
        (T.PUT, 9),
        (T.SNAPSHOT_END, 9),
        (T.PUT, 10),
        (T.DELETE, 11),
    ]
    assert got[-1].instance is not None and got[-1].instance.id == "web-1"
    assert since_revisions(plane) == [0, 10]
    request = plane.requests("Watch")[0]
    assert request.selector.service == "web"
    assert request.progress_interval_ms == 5000
    await events.aclose()
    await transport.close()


async def test_disconnect_inside_a_snapshot_restarts_it_from_zero() -> None:
    plane = FakeControlPlane()
    plane.watch_scripts.extend(
        [
            script(batch(event("RESYNC", 30), event("PUT", 12, instance_pb())), unavailable()),
            script(batch(event("RESYNC", 31), event("SNAPSHOT_END", 31)), hang=True),
        ]
    )
    transport, events = start(plane, since=7)
    got = await take(events, 4)
    assert [e.type for e in got] == [T.RESYNC, T.PUT, T.RESYNC, T.SNAPSHOT_END]
    assert since_revisions(plane) == [7, 0]
    await events.aclose()
    await transport.close()


async def test_progress_moves_the_resume_point() -> None:
    plane = FakeControlPlane()
    plane.watch_scripts.extend(
        [script(batch(event("PROGRESS", 40))), script(batch(event("PROGRESS", 41)), hang=True)]
    )
    transport, events = start(plane, since=12)
    assert [e.revision for e in await take(events, 2)] == [40, 41]
    # The first stream ended without an error: that is a disconnect too.
    assert since_revisions(plane) == [12, 40]
    await events.aclose()
    await transport.close()


async def test_reconnects_with_backoff_to_the_next_address() -> None:
    plane = FakeControlPlane(down={"a:1"})
    plane.watch_scripts.append(script(batch(event("PROGRESS", 3)), hang=True))
    sleep = RecordingSleep()
    transport, events = start(plane, addresses=("a:1", "b:2"), sleep=sleep)
    assert (await anext(events)).revision == 3
    assert [c.address for c in plane.calls] == ["a:1", "b:2"]
    assert len(sleep.delays) == 1 and 0 <= sleep.delays[0] <= 0.1
    await events.aclose()
    await transport.close()


async def test_backoff_grows_while_failing_and_resets_after_a_message() -> None:
    plane = FakeControlPlane()
    plane.watch_scripts.extend(
        [script(unavailable()) for _ in range(4)]
        + [script(batch(event("PROGRESS", 1)), unavailable())]
        + [script(batch(event("PROGRESS", 2)), hang=True)]
    )
    sleep = RecordingSleep()
    transport, events = start(plane, sleep=sleep)
    await take(events, 2)
    assert len(sleep.delays) == 5
    # Attempt n may wait up to 0.1 * 2**(n-1); after a message it starts small again.
    assert sleep.delays[4] <= 0.1
    await events.aclose()
    await transport.close()


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED]
)
async def test_errors_that_retrying_cannot_fix_reach_the_caller(code: grpc.StatusCode) -> None:
    plane = FakeControlPlane()
    plane.watch_scripts.append(script(rpc_error(code, "bad selector")))
    transport, events = start(plane)
    with pytest.raises(sdk.EcoError) as caught:
        await anext(events)
    assert caught.value.code == code.name
    await transport.close()


async def test_a_silent_stream_is_abandoned_and_resumed_on_the_next_address() -> None:
    plane = FakeControlPlane()
    plane.watch_scripts.extend(
        [
            script(batch(event("PROGRESS", 5)), hang=True),
            script(batch(event("PROGRESS", 6)), hang=True),
        ]
    )
    transport, events = start(plane, addresses=("a:1", "b:2"), progress_interval=0.1)
    await anext(events)
    assert (await anext(events)).revision == 6  # after ~2.3 s of silence
    assert since_revisions(plane) == [0, 5]
    assert plane.channels[0].stream_calls[0].cancelled
    # A replica that went silent (frozen, cut off) would only hang again.
    assert [c.address for c in plane.calls] == ["a:1", "b:2"]
    await events.aclose()
    await transport.close()


async def test_closing_the_generator_cancels_the_call_and_leaves_no_task() -> None:
    plane = FakeControlPlane()
    plane.watch_scripts.append(script(batch(event("PROGRESS", 5)), hang=True))
    before = asyncio.all_tasks()
    transport, events = start(plane)
    await anext(events)
    reader = asyncio.create_task(anext(events))
    await asyncio.sleep(0.01)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    await events.aclose()
    assert plane.channels[0].stream_calls[0].cancelled
    assert asyncio.all_tasks() - before == set()
    await transport.close()


async def test_the_watch_ends_when_the_transport_closes() -> None:
    plane = FakeControlPlane()
    plane.watch_scripts.append(script(unavailable()))
    transport, events = start(plane)
    await transport.close()
    with pytest.raises(StopAsyncIteration):
        await anext(events)
