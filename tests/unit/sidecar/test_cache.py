"""The endpoint cache: two-step apply, change notification, and the disk round trip."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from sdk import EndpointUpdate, HealthStatus, Instance, ServiceEndpoints, ServiceRef
from sidecar.cache import CACHE_FILE, CacheSource, EndpointCache, write_atomic

ORDERS = ("default", "orders")
USERS = ("team-a", "users")


def instance(id: str, service: str = "orders", port: int = 8080, **kw: object) -> Instance:
    return Instance(id=id, service=service, address="10.0.0.1", port=port, **kw)  # type: ignore[arg-type]


def update(
    version: int, *entries: tuple[str, str, list[Instance]], full: bool = False
) -> EndpointUpdate:
    return EndpointUpdate(
        version=version,
        nonce=f"n{version}",
        services=tuple(
            ServiceEndpoints(ServiceRef(name, namespace), tuple(instances))
            for namespace, name, instances in entries
        ),
        full=full,
    )


def apply(cache: EndpointCache, u: EndpointUpdate) -> None:
    cache.commit(cache.prepare(u), u.version)


def test_apply_replaces_the_mentioned_upstreams_only() -> None:
    cache = EndpointCache([ORDERS, USERS])
    apply(
        cache,
        update(3, ("", "orders", [instance("a")]), ("team-a", "users", [instance("u", "users")])),
    )
    apply(cache, update(4, ("default", "orders", [instance("b")])))
    orders, users = cache.get(ORDERS), cache.get(USERS)
    assert orders is not None and users is not None
    assert [i.id for i in orders.instances] == ["b"] and orders.version == 4
    assert [i.id for i in users.instances] == ["u"] and users.version == 3
    assert cache.version == 4 and cache.source is CacheSource.CONTROL_PLANE


def test_a_full_update_empties_what_it_does_not_mention() -> None:
    cache = EndpointCache([ORDERS, USERS])
    apply(
        cache,
        update(1, ("", "orders", [instance("a")]), ("team-a", "users", [instance("u", "users")])),
    )
    apply(cache, update(2, ("", "orders", [instance("a")]), full=True))
    users = cache.get(USERS)
    assert users is not None and users.instances == () and users.version == 2


def test_services_that_are_not_upstreams_are_ignored() -> None:
    cache = EndpointCache([ORDERS])
    apply(cache, update(1, ("", "billing", [instance("x", "billing")])))
    assert cache.get(("default", "billing")) is None
    assert cache.keys == (ORDERS,)


def test_prepare_changes_nothing_and_refuses_a_misfiled_instance() -> None:
    cache = EndpointCache([ORDERS])
    apply(cache, update(1, ("", "orders", [instance("a")])))
    generation = cache.generation(ORDERS)
    with pytest.raises(ValueError, match="not of service 'orders'"):
        cache.prepare(update(2, ("", "orders", [instance("x", "users")])))
    state = cache.get(ORDERS)
    assert state is not None and [i.id for i in state.instances] == ["a"]
    assert cache.version == 1 and cache.generation(ORDERS) == generation


async def test_readers_wake_on_change_and_see_the_latest_state() -> None:
    cache = EndpointCache([ORDERS, USERS])
    generation = cache.generation(ORDERS)
    waiter = asyncio.create_task(cache.wait_changed(ORDERS, generation))
    await asyncio.sleep(0)
    apply(cache, update(1, ("team-a", "users", [instance("u", "users")])))
    await asyncio.sleep(0)
    assert not waiter.done(), "a change of another upstream must not wake this one"
    apply(cache, update(2, ("", "orders", [instance("a")])))
    apply(cache, update(3, ("", "orders", [instance("b")])))
    await asyncio.wait_for(waiter, 1)
    state = cache.get(ORDERS)
    assert state is not None and state.version == 3
    generation = cache.generation(ORDERS)
    waiter = asyncio.create_task(cache.wait_changed(ORDERS, generation))
    await asyncio.sleep(0)
    cache.notify_all()
    await asyncio.wait_for(waiter, 1)


async def test_the_disk_round_trip(tmp_path: Path) -> None:
    path = tmp_path / CACHE_FILE
    async with EndpointCache([ORDERS, USERS], path) as cache:
        apply(
            cache,
            update(
                7,
                (
                    "",
                    "orders",
                    [instance("a", health=HealthStatus.PASSING, zone="z1", tags=("v1",))],
                ),
                ("team-a", "users", [instance("u", "users", port=9000, metadata={"k": "v"})]),
                full=True,
            ),
        )
        await cache.flush()
        assert path.exists()
        apply(cache, update(8, ("", "orders", [instance("a"), instance("b", port=8081)])))
    # close() wrote the last state
    loaded = EndpointCache([ORDERS, USERS], path)
    assert loaded.load()
    assert loaded.source is CacheSource.DISK and loaded.version == 8
    assert loaded.saved_at is not None
    orders, users = loaded.get(ORDERS), loaded.get(USERS)
    assert orders is not None and users is not None
    assert [(i.id, i.port) for i in orders.instances] == [("a", 8080), ("b", 8081)]
    assert users.instances[0].metadata == {"k": "v"} and users.instances[0].port == 9000
    leftovers = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert not leftovers, "no temporary file is left behind"


async def test_a_burst_of_updates_is_written_once_in_its_latest_state(tmp_path: Path) -> None:
    path = tmp_path / CACHE_FILE
    async with EndpointCache([ORDERS], path) as cache:
        for v in range(1, 50):
            apply(cache, update(v, ("", "orders", [instance(f"i{v}")])))
        await cache.flush()
    loaded = EndpointCache([ORDERS], path)
    loaded.load()
    state = loaded.get(ORDERS)
    assert loaded.version == 49 and state is not None and state.instances[0].id == "i49"


def test_upstreams_no_longer_configured_are_dropped_on_load(tmp_path: Path) -> None:
    path = tmp_path / CACHE_FILE
    cache = EndpointCache([ORDERS, USERS], path)
    apply(
        cache,
        update(2, ("", "orders", [instance("a")]), ("team-a", "users", [instance("u", "users")])),
    )
    write_atomic(path, cache.encode())
    loaded = EndpointCache([USERS], path)
    assert loaded.load()
    assert loaded.keys == (USERS,)


def test_a_missing_or_corrupt_file_starts_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / CACHE_FILE
    cache = EndpointCache([ORDERS], path)
    assert not cache.load() and cache.source is CacheSource.EMPTY
    path.write_bytes(b"\xff\xff\xff not protobuf")
    assert not cache.load()
    assert cache.source is CacheSource.EMPTY
    assert "corrupt" in caplog.text


def test_write_atomic_replaces_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    write_atomic(path, b"one")
    write_atomic(path, b"two")
    assert path.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["f"]


async def test_a_failed_write_is_counted_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir" / CACHE_FILE
    async with EndpointCache([ORDERS], path) as cache:
        apply(cache, update(1, ("", "orders", [instance("a")])))
        await cache.flush()
        assert cache.write_errors == 1
