"""Ephemeral registrations: kept alive by the client, gone with its lease."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

import controlplane.testing
import sdk
from tests.util import assert_eventually, assert_stays


@pytest.fixture
async def cp() -> AsyncIterator[controlplane.testing.TestControlPlane]:
    async with controlplane.testing.control_plane() as running:
        yield running


async def ids(client: sdk.AsyncClient, service: str = "web") -> list[str]:
    return sorted(i.id for i in await client.list_instances(service=service))


async def test_ephemeral_instance_lives_while_kept_alive_and_goes_after_close(
    cp: controlplane.testing.TestControlPlane,
) -> None:
    observer = cp.client()
    owner = cp.client()
    first = await owner.register("web", "127.0.0.1", 8080, id="web-1", ephemeral=True, lease_ttl=1)
    second = await owner.register("api", "127.0.0.1", 9090, id="api-1", ephemeral=True, lease_ttl=1)
    assert first.liveness is sdk.Liveness.EPHEMERAL
    assert first.lease_id != 0 and first.lease_id == second.lease_id

    events = observer.watch("web", progress_interval=0.2)
    assert (await anext(events)).type is sdk.WatchEventType.RESYNC

    # Well past the TTL: the keepalive holds it.
    async def still_there() -> None:
        assert await ids(observer) == ["web-1"]

    await assert_stays(still_there, duration=2.5)

    # Closing revokes the lease: watchers see DELETE.
    await owner.close()

    async def next_delete() -> sdk.WatchEvent:
        async for event in events:
            if event.type is sdk.WatchEventType.DELETE:
                return event
        raise AssertionError("watch ended")

    deleted = await asyncio.wait_for(next_delete(), timeout=10)
    assert deleted.instance is not None and deleted.instance.id == "web-1"
    assert await ids(observer, "api") == []
    await events.aclose()


async def test_deregistering_the_last_ephemeral_instance_stops_the_keepalive(
    cp: controlplane.testing.TestControlPlane,
) -> None:
    async with cp.client() as client:
        await client.register("web", "127.0.0.1", 8080, id="web-1", ephemeral=True, lease_ttl=2)
        assert len(keepalives()) == 1
        await client.deregister("web", "web-1")
        await assert_eventually(lambda: _assert(keepalives() == []))
        assert await ids(client) == []


def keepalives() -> list[asyncio.Task[object]]:
    return [
        t
        for t in asyncio.all_tasks()
        if t.get_name().startswith("eco-lease-keepalive") and not t.done()
    ]


async def test_a_lost_lease_is_regranted_with_every_instance() -> None:
    # A control plane restarted on an empty store no longer knows the lease.
    async with controlplane.testing.control_plane("memory://") as first:
        address = first.address
        client = sdk.AsyncClient(address, timeout=2.0)
        await client.register("web", "127.0.0.1", 8080, id="web-1", ephemeral=True, lease_ttl=2)
        await client.register("web", "127.0.0.1", 8081, id="web-2", ephemeral=True, lease_ttl=2)
    try:
        async with controlplane.testing.control_plane("memory://", listen=address) as second:
            observer = second.client()

            async def both_back() -> None:
                assert await ids(observer) == ["web-1", "web-2"]

            await assert_eventually(both_back, timeout=15)
            detail = await observer.get_service("web")
            assert {i.liveness for i in detail.instances} == {sdk.Liveness.EPHEMERAL}
            assert len({i.lease_id for i in detail.instances}) == 1
    finally:
        await client.close()


def _assert(condition: bool) -> None:
    assert condition


async def test_closing_the_client_removes_its_instances_at_once(
    cp: controlplane.testing.TestControlPlane,
) -> None:
    observer = cp.client()
    owner = cp.client()
    await owner.register("web", "127.0.0.1", 8080, id="web-1", ephemeral=True, lease_ttl=60)
    await owner.register("web", "127.0.0.1", 8081, id="web-2", ephemeral=True, lease_ttl=60)
    assert await ids(observer) == ["web-1", "web-2"]
    await owner.close()
    # Long before the 60 s TTL: the lease was revoked, not left to lapse.
    assert await ids(observer) == []
