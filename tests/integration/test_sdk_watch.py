"""The SDK's watch against real control planes: snapshot, resume across restarts, close."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import controlplane.testing
import sdk
from tests.util import assert_eventually

T = sdk.WatchEventType


class Recorder:
    """Reads a watch in an owned task and keeps every event, and the state they build."""

    def __init__(self, events: AsyncIterator[sdk.WatchEvent]) -> None:
        self.events: list[sdk.WatchEvent] = []
        self.state: dict[str, sdk.Instance] = {}
        self._source = events
        self._task = asyncio.get_running_loop().create_task(self._read(), name="test-recorder")

    async def _read(self) -> None:
        async for event in self._source:
            self.events.append(event)
            if event.type is T.RESYNC:
                self.state.clear()
            elif event.instance is not None and event.type is T.PUT:
                self.state[event.instance.id] = event.instance
            elif event.instance is not None and event.type is T.DELETE:
                self.state.pop(event.instance.id, None)

    def changes(self) -> list[tuple[str, str]]:
        return [(e.type.value, e.instance.id) for e in self.events if e.instance is not None]

    async def wait_for(self, kind: sdk.WatchEventType, id: str | None = None) -> None:
        def seen() -> None:
            assert any(
                e.type is kind and (id is None or (e.instance and e.instance.id == id))
                for e in self.events
            ), (kind, id)

        await assert_eventually(seen, timeout=15)

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.wait([self._task])
        aclose = getattr(self._source, "aclose", None)
        if aclose is not None:
            await aclose()


async def registered(client: sdk.AsyncClient) -> dict[str, sdk.Instance]:
    return {i.id: i for i in await client.list_instances(service="web")}


async def test_snapshot_then_live_events() -> None:
    async with controlplane.testing.control_plane() as cp:
        client = cp.client()
        await client.register("web", "127.0.0.1", 8080, id="web-1")
        await client.register("api", "127.0.0.1", 9090, id="api-1")
        events = client.watch("web")
        head = [await anext(events) for _ in range(3)]
        assert [e.type for e in head] == [T.RESYNC, T.PUT, T.SNAPSHOT_END]
        assert head[1].instance is not None and head[1].instance.id == "web-1"
        written = await client.register("web", "127.0.0.1", 8081, id="web-2")
        live = await anext(events)
        assert (live.type, live.revision) == (T.PUT, written.mod_revision)
        await events.aclose()


async def test_resumes_across_a_restart_without_loss_or_duplicates(tmp_path: Path) -> None:
    store = f"sqlite://{tmp_path / 'cp.db'}"
    async with controlplane.testing.control_plane(store) as first:
        address = first.address
        writer = sdk.AsyncClient(address, timeout=10.0)
        watcher = sdk.AsyncClient(address)
        await writer.register("web", "127.0.0.1", 8081, id="web-1")
        await writer.register("web", "127.0.0.1", 8082, id="web-2")
        recorder = Recorder(watcher.watch("web", progress_interval=0.2))
        await recorder.wait_for(T.SNAPSHOT_END)
        await writer.register("web", "127.0.0.1", 8083, id="web-3")
        await recorder.wait_for(T.PUT, "web-3")
    try:
        async with controlplane.testing.control_plane(store, listen=address):
            await writer.register("web", "127.0.0.1", 8084, id="web-4")
            await writer.deregister("web", "web-1")
            await recorder.wait_for(T.DELETE, "web-1")
            assert recorder.state.keys() == (await registered(writer)).keys()
            await recorder.stop()
    finally:
        await writer.close()
        await watcher.close()

    snapshot_end = next(i for i, e in enumerate(recorder.events) if e.type is T.SNAPSHOT_END)
    after = recorder.events[snapshot_end + 1 :]
    assert T.RESYNC not in {e.type for e in after}, "resumed from a retained revision"
    deltas = [e for e in after if e.type in (T.PUT, T.DELETE)]
    assert [(e.type.value, e.instance.id if e.instance else "") for e in deltas] == [
        ("PUT", "web-3"),
        ("PUT", "web-4"),
        ("DELETE", "web-1"),
    ]
    revisions = [e.revision for e in deltas]
    assert revisions == sorted(set(revisions)), "no event twice, none out of order"


async def test_a_restart_on_an_empty_store_resyncs() -> None:
    async with controlplane.testing.control_plane() as first:
        address = first.address
        client = first.client()
        await client.register("web", "127.0.0.1", 8081, id="web-1")
        await client.register("web", "127.0.0.1", 8082, id="web-2")
        watcher = sdk.AsyncClient(address)
        recorder = Recorder(watcher.watch("web", progress_interval=0.2))
        await recorder.wait_for(T.SNAPSHOT_END)
    try:
        async with controlplane.testing.control_plane(listen=address) as second:
            # The new store's revision is behind the watcher's: it cannot
            # resume, so it gets RESYNC and an empty snapshot, passed through.
            def resynced() -> None:
                assert [e.type for e in recorder.events].count(T.SNAPSHOT_END) == 2
                assert recorder.state == {}

            await assert_eventually(resynced, timeout=15)
            writer = second.client()
            await writer.register("web", "127.0.0.1", 8083, id="web-3")
            await recorder.wait_for(T.PUT, "web-3")
            assert set(recorder.state) == {"web-3"}
            await recorder.stop()
    finally:
        await watcher.close()


async def test_closing_the_client_ends_a_watch_being_read() -> None:
    async with controlplane.testing.control_plane() as cp:
        client = sdk.AsyncClient(cp.address)
        events = client.watch("web")
        assert (await anext(events)).type is T.RESYNC
        assert (await anext(events)).type is T.SNAPSHOT_END
        reader = asyncio.create_task(anext(events))
        await asyncio.sleep(0.1)
        await client.close()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(reader, timeout=5)


async def test_a_bad_selector_is_an_error_not_a_retry_loop() -> None:
    async with controlplane.testing.control_plane() as cp:
        client = cp.client()
        events = client.watch("Not_A_Name")
        with pytest.raises(sdk.InvalidArgumentError) as caught:
            await asyncio.wait_for(anext(events), timeout=5)
        assert caught.value.field_violations


async def test_a_replaced_store_with_a_longer_history_resyncs(tmp_path: Path) -> None:
    """The new store's revisions pass the watcher's: only the store id tells
    the histories apart, and the watcher must get a snapshot, not deltas."""
    other_db = f"sqlite://{tmp_path / 'other.db'}"
    async with controlplane.testing.control_plane(other_db) as other:
        writer = other.client()
        for n in range(10):
            await writer.register("web", "127.0.0.1", 9000 + n, id=f"other-{n}")
    async with controlplane.testing.control_plane() as first:
        address = first.address
        await first.client().register("web", "127.0.0.1", 8081, id="web-1")
        watcher = sdk.AsyncClient(address)
        recorder = Recorder(watcher.watch("web", progress_interval=0.2))
        await recorder.wait_for(T.SNAPSHOT_END)
    try:
        async with controlplane.testing.control_plane(other_db, listen=address):

            def resynced() -> None:
                assert [e.type for e in recorder.events].count(T.SNAPSHOT_END) == 2
                assert set(recorder.state) == {f"other-{n}" for n in range(10)}

            await assert_eventually(resynced, timeout=15)
            await recorder.stop()
    finally:
        await watcher.close()
