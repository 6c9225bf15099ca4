"""The client's one lease: granted once, kept alive, and restored when lost."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest
from ecosystem.v1 import registry_pb2 as pb

import sdk
from sdk._lease import LeaseKeeper, instance_key
from sdk._transport import Transport
from tests.unit.sdk.fakes import FakeControlPlane, instance_pb, rpc_error
from tests.util import assert_eventually


@dataclass
class LeaseServer:
    """Just enough registry to grant, refresh and lose leases."""

    ttl: int = 9
    leases: set[int] = field(default_factory=set)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(100))
    registered: dict[str, int] = field(default_factory=dict)

    def register(self, _address: str, request: pb.RegisterInstanceRequest) -> object:
        lease = request.lease_id
        if lease == 0:
            lease = next(self.ids)
            self.leases.add(lease)
        elif lease not in self.leases:
            raise rpc_error(grpc.StatusCode.NOT_FOUND, f"lease {lease} not found")
        self.registered[request.instance.id] = lease
        stored = pb.Instance()
        stored.CopyFrom(request.instance)
        stored.lease_id = lease
        return pb.RegisterInstanceResponse(
            instance=stored, revision=1, lease_id=lease, lease_ttl_seconds=self.ttl
        )

    def keep_alive(self, _address: str, request: pb.KeepAliveRequest) -> object:
        if request.lease_id not in self.leases:
            raise rpc_error(grpc.StatusCode.NOT_FOUND, "lease not found")
        return pb.KeepAliveResponse(lease_id=request.lease_id, ttl_seconds=self.ttl)

    def lose_everything(self) -> None:
        self.leases.clear()
        self.registered.clear()


class GatedSleep:
    """A sleep that waits for the test to let it through, and records delays."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self._gate: asyncio.Queue[None] = asyncio.Queue()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await self._gate.get()

    def tick(self) -> None:
        self._gate.put_nowait(None)


@pytest.fixture
async def setup() -> AsyncIterator[tuple[LeaseServer, FakeControlPlane, LeaseKeeper, GatedSleep]]:
    server = LeaseServer()
    plane = FakeControlPlane(
        unary={"RegisterInstance": server.register, "KeepAlive": server.keep_alive}
    )
    transport = Transport(["a:1"], timeout=1.0, channel_factory=plane.channel_factory)
    sleep = GatedSleep()
    keeper = LeaseKeeper(transport, sleep=sleep)
    yield server, plane, keeper, sleep
    await keeper.close()
    await transport.close()


Setup = tuple[LeaseServer, FakeControlPlane, LeaseKeeper, GatedSleep]


async def register(keeper: LeaseKeeper, id: str, ttl: int = 9) -> sdk.Instance:
    return await keeper.register(instance_pb(id), ttl=ttl, expected_revision=None)


async def test_one_lease_is_granted_and_shared(setup: Setup) -> None:
    server, plane, keeper, _ = setup
    first = await register(keeper, "web-1")
    second = await register(keeper, "web-2")
    assert first.lease_id == second.lease_id == keeper.lease_id == 100
    requests = plane.requests("RegisterInstance")
    assert [r.lease_id for r in requests] == [0, 100]
    assert requests[0].lease_ttl_seconds == 9
    assert server.leases == {100}


async def test_keepalive_refreshes_at_a_third_of_the_ttl(setup: Setup) -> None:
    _, plane, keeper, sleep = setup
    await register(keeper, "web-1")
    await assert_eventually(lambda: _check(sleep.delays == [3.0]))
    sleep.tick()
    await assert_eventually(lambda: _check(len(plane.requests("KeepAlive")) == 1))
    assert plane.requests("KeepAlive")[0].lease_id == 100


async def test_a_lost_lease_is_regranted_and_every_instance_registered_again(
    setup: Setup,
) -> None:
    server, _, keeper, sleep = setup
    await register(keeper, "web-1")
    await register(keeper, "web-2")
    server.lose_everything()  # e.g. the control plane restarted on an empty store
    await assert_eventually(lambda: _check(len(sleep.delays) == 1))
    sleep.tick()
    await assert_eventually(lambda: _check(set(server.registered) == {"web-1", "web-2"}))
    assert keeper.lease_id == 101
    assert set(server.registered.values()) == {101}


async def test_a_registration_on_a_lost_lease_restores_the_others_too(setup: Setup) -> None:
    server, _, keeper, _ = setup
    await register(keeper, "web-1")
    server.lose_everything()
    stored = await register(keeper, "web-2")
    assert stored.lease_id == 101
    assert server.registered == {"web-1": 101, "web-2": 101}


async def test_a_failed_refresh_is_retried_sooner(setup: Setup) -> None:
    _, plane, keeper, sleep = setup
    await register(keeper, "web-1")
    plane.down.add("a:1")
    await assert_eventually(lambda: _check(len(sleep.delays) == 1))
    sleep.tick()
    await assert_eventually(lambda: _check(len(sleep.delays) == 2))
    assert sleep.delays[1] <= 3.0
    plane.down.clear()
    sleep.tick()
    await assert_eventually(lambda: _check(len(sleep.delays) == 3))
    assert sleep.delays[2] == 3.0


async def test_releasing_the_last_instance_stops_the_keepalive(setup: Setup) -> None:
    _, _, keeper, _ = setup
    await register(keeper, "web-1")
    await keeper.release(instance_key("default", "web", "web-1"))
    assert keeper.lease_id == 0
    assert keeper.held == ()
    # A new registration starts a new lease.
    assert (await register(keeper, "web-2")).lease_id == 101


async def test_close_cancels_the_keepalive_and_is_idempotent(setup: Setup) -> None:
    _, _, keeper, _ = setup
    before = asyncio.all_tasks()
    await register(keeper, "web-1")
    assert len(asyncio.all_tasks() - before) == 1
    await keeper.close()
    await keeper.close()
    assert asyncio.all_tasks() - before == set()


async def test_ttl_out_of_range_is_refused(setup: Setup) -> None:
    _, _, keeper, _ = setup
    with pytest.raises(ValueError, match="lease_ttl"):
        await register(keeper, "web-1", ttl=0)


def _check(condition: bool) -> None:
    assert condition
