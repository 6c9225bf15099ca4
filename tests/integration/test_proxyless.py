"""Proxyless channel against real servers: an in-process control plane, three
grpc.aio backends serving grpc.health.v1, and a small fake sidecar.

Every call goes through the generated ``HealthStub``, unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import pytest
from ecosystem.v1 import registry_pb2, registry_pb2_grpc, sidecar_pb2, sidecar_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

import controlplane.testing
from sdk import AsyncClient, ServiceChannel, SidecarSource
from sdk.balancer import NoEndpointsError
from tests.util import assert_eventually

SERVICE = "echo"
HEALTH = ["/grpc.health.v1.Health/*"]
SERVING = health_pb2.HealthCheckResponse.SERVING


class CountingHealth(HealthServicer):
    """grpc.health.v1 that counts calls and can hang or be slow on request.

    ``Check(service="hang")`` waits until the server stops when ``hang`` is
    set; ``Check(service="slow")`` records the deadline it saw and sleeps.
    """

    def __init__(self) -> None:
        super().__init__()
        self.checks = 0
        self.watches = 0
        self.hang = False
        self.deadlines: list[float | None] = []

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> health_pb2.HealthCheckResponse:
        self.checks += 1
        if request.service == "slow":
            self.deadlines.append(context.time_remaining())
            await asyncio.sleep(2.0)
        if request.service == "hang" and self.hang:
            await asyncio.Event().wait()
        return await super().Check(request, context)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> Any:
        self.watches += 1
        return await super().Watch(request, context)


@dataclass
class Backend:
    name: str
    server: grpc.aio.Server
    health: CountingHealth
    port: int

    @property
    def checks(self) -> int:
        return self.health.checks


async def start_backend(name: str) -> Backend:
    server = grpc.aio.server()
    health = CountingHealth()
    await health.set("hang", SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return Backend(name, server, health, port)


@pytest.fixture
async def backends() -> AsyncIterator[list[Backend]]:
    started = [await start_backend(f"b{i}") for i in range(3)]
    try:
        yield started
    finally:
        await asyncio.gather(*(b.server.stop(None) for b in started))


@pytest.fixture
async def plane() -> AsyncIterator[controlplane.testing.TestControlPlane]:
    async with controlplane.testing.control_plane() as cp:
        yield cp


@pytest.fixture
async def client(
    plane: controlplane.testing.TestControlPlane, backends: list[Backend]
) -> AsyncIterator[AsyncClient]:
    async with plane.client() as client:
        for backend in backends:
            await client.register(SERVICE, "127.0.0.1", backend.port, id=backend.name)
        yield client


async def set_health(
    plane: controlplane.testing.TestControlPlane,
    backend: Backend,
    health: registry_pb2.HealthStatus,
) -> None:
    """Re-registers an instance with the given health, as a sidecar's check would."""
    async with grpc.aio.insecure_channel(plane.address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        instance = registry_pb2.Instance(
            id=backend.name, service=SERVICE, address="127.0.0.1", port=backend.port, health=health
        )
        await stub.RegisterInstance(registry_pb2.RegisterInstanceRequest(instance=instance))


def request(service: str = "") -> health_pb2.HealthCheckRequest:
    return health_pb2.HealthCheckRequest(service=service)


def health_of(channel: ServiceChannel, name: str) -> str:
    return {e.id: str(e.health) for e in channel.endpoints}.get(name, "")


# -- control-plane source ---------------------------------------------------------


async def test_calls_spread_across_the_backends(
    client: AsyncClient, backends: list[Backend]
) -> None:
    async with ServiceChannel.open(client, SERVICE, balancer="round_robin") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(30):
            reply = await stub.Check(request(), timeout=2.0)
            assert reply.status == SERVING
    assert [b.checks for b in backends] == [10, 10, 10]


async def test_a_critical_instance_gets_no_calls_once_the_update_is_applied(
    plane: controlplane.testing.TestControlPlane, client: AsyncClient, backends: list[Backend]
) -> None:
    async with ServiceChannel.open(client, SERVICE, balancer="least_connections") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(9):
            await stub.Check(request(), timeout=2.0)
        assert all(b.checks > 0 for b in backends)

        await set_health(plane, backends[1], registry_pb2.HEALTH_STATUS_CRITICAL)
        await assert_eventually(lambda: _assert(health_of(channel, "b1") == "CRITICAL"))
        before = backends[1].checks
        await asyncio.gather(*(stub.Check(request(), timeout=2.0) for _ in range(30)))
        assert backends[1].checks == before

        await set_health(plane, backends[1], registry_pb2.HEALTH_STATUS_PASSING)
        await assert_eventually(lambda: _assert(health_of(channel, "b1") == "PASSING"))
        for _ in range(6):
            await stub.Check(request(), timeout=2.0)
        assert backends[1].checks > before


async def test_a_stopped_backend_is_retried_around(
    client: AsyncClient, backends: list[Backend]
) -> None:
    async with ServiceChannel.open(client, SERVICE, idempotent=HEALTH) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(6):
            await stub.Check(request(), timeout=2.0)
        await backends[0].server.stop(None)
        before = backends[0].checks
        attempts = []
        for _ in range(12):
            call = stub.Check(request(), timeout=2.0)
            assert (await call).status == SERVING
            attempts.append(call.attempts)
        assert backends[0].checks == before
        # The first call picked for b0 went to another backend, and b0 was then
        # skipped: no later call paid a failed connect first.
        assert attempts.count(2) == 1, attempts


async def test_an_idempotent_call_cut_off_mid_flight_is_retried_elsewhere(
    client: AsyncClient, backends: list[Backend]
) -> None:
    backends[0].health.hang = True
    async with ServiceChannel.open(client, SERVICE, idempotent=HEALTH) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        calls = [stub.Check(request("hang"), timeout=5.0) for _ in range(3)]
        running = [asyncio.ensure_future(_await(c)) for c in calls]
        await assert_eventually(lambda: _assert(backends[0].checks == 1))
        await backends[0].server.stop(None)  # cuts the call it holds: UNAVAILABLE
        replies = await asyncio.gather(*running)
        assert all(r.status == SERVING for r in replies)
        assert sorted(c.attempts for c in calls) == [1, 1, 2]


async def test_a_call_cut_off_mid_flight_is_not_retried_unless_idempotent(
    client: AsyncClient, backends: list[Backend]
) -> None:
    backends[0].health.hang = True
    async with ServiceChannel.open(client, SERVICE) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        running = [
            asyncio.ensure_future(_await(stub.Check(request("hang"), timeout=5.0)))
            for _ in range(3)
        ]
        await assert_eventually(lambda: _assert(backends[0].checks == 1))
        await backends[0].server.stop(None)
        results = await asyncio.gather(*running, return_exceptions=True)
    errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(errors) == 1
    assert errors[0].code() is grpc.StatusCode.UNAVAILABLE


async def test_server_streaming_calls_work(client: AsyncClient, backends: list[Backend]) -> None:
    async with ServiceChannel.open(client, SERVICE) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        call = stub.Watch(request(), timeout=5.0)
        first = await call.read()
        assert first.status == SERVING
        watched = next(b for b in backends if b.health.watches)
        await watched.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        second = await call.read()
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert sum(channel.balancer.in_flight(b.name) for b in backends) == 1
        call.cancel()
        await assert_eventually(
            lambda: _assert(sum(channel.balancer.in_flight(b.name) for b in backends) == 0)
        )


async def test_deadlines_propagate(client: AsyncClient, backends: list[Backend]) -> None:
    async with ServiceChannel.open(client, SERVICE, idempotent=HEALTH) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Check(request("slow"), timeout=0.3)
        assert loop.time() - started < 1.5
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    seen = [d for b in backends for d in b.health.deadlines]
    assert len(seen) == 1  # a deadline is not retried
    assert seen[0] is not None and 0.0 < seen[0] <= 0.3


async def test_close_cancels_the_watch_and_closes_every_channel(
    client: AsyncClient, backends: list[Backend]
) -> None:
    channel = ServiceChannel.open(client, SERVICE)
    await channel.start()
    stub = health_pb2_grpc.HealthStub(channel)
    for _ in range(3):
        await stub.Check(request(), timeout=2.0)
    channels = list(channel.channels().values())
    assert len(channels) == 3
    await channel.close()
    await channel.close()
    assert all(c.get_state() is grpc.ChannelConnectivity.SHUTDOWN for c in channels)
    leftover = [t for t in asyncio.all_tasks() if t.get_name().startswith("proxyless-")]
    assert leftover == []


async def test_no_instances_fails_with_no_endpoints(client: AsyncClient) -> None:
    async with ServiceChannel.open(client, "nobody") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(NoEndpointsError, match="service nobody: no endpoints"):
            await stub.Check(request(), timeout=2.0)


# -- sidecar source ------------------------------------------------------------------


class FakeSidecar(sidecar_pb2_grpc.SidecarServiceServicer):
    """WatchEndpoints over lists set by the test; unknown services are NOT_FOUND."""

    def __init__(self) -> None:
        self.lists: dict[str, list[registry_pb2.Instance]] = {}
        self.version = 0
        self._changed = asyncio.Event()

    def set(self, service: str, instances: list[registry_pb2.Instance]) -> None:
        self.lists[service] = instances
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def WatchEndpoints(
        self, request: sidecar_pb2.WatchEndpointsRequest, context: Any
    ) -> AsyncIterator[sidecar_pb2.WatchEndpointsResponse]:
        if request.service not in self.lists:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{request.service} is not an upstream")
        while True:
            changed = self._changed
            yield sidecar_pb2.WatchEndpointsResponse(
                endpoints=self.lists[request.service], version=self.version
            )
            await changed.wait()


async def start_sidecar(fake: FakeSidecar, address: str = "127.0.0.1:0") -> tuple[Any, str]:
    server = grpc.aio.server()
    sidecar_pb2_grpc.add_SidecarServiceServicer_to_server(fake, server)
    port = server.add_insecure_port(address)
    await server.start()
    return server, f"127.0.0.1:{port}"


def instances(
    backends: list[Backend], critical: tuple[str, ...] = ()
) -> list[registry_pb2.Instance]:
    return [
        registry_pb2.Instance(
            id=b.name,
            service=SERVICE,
            address="127.0.0.1",
            port=b.port,
            health=(
                registry_pb2.HEALTH_STATUS_CRITICAL
                if b.name in critical
                else registry_pb2.HEALTH_STATUS_PASSING
            ),
        )
        for b in backends
    ]


async def test_the_sidecar_source_follows_watch_endpoints(backends: list[Backend]) -> None:
    fake = FakeSidecar()
    fake.set(SERVICE, instances(backends))
    server, address = await start_sidecar(fake)
    try:
        async with ServiceChannel.open(address, SERVICE) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for _ in range(9):
                await stub.Check(request(), timeout=2.0)
            assert [b.checks for b in backends] == [3, 3, 3]

            fake.set(SERVICE, instances(backends, critical=("b2",)))
            await assert_eventually(lambda: _assert(health_of(channel, "b2") == "CRITICAL"))
            for _ in range(8):
                await stub.Check(request(), timeout=2.0)
            assert backends[2].checks == 3

            # The sidecar restarts: routing carries on, then follows the new one.
            await server.stop(None)
            await stub.Check(request(), timeout=2.0)
            fake.set(SERVICE, instances(backends[:1]))
            server, _ = await start_sidecar(fake, address)
            await assert_eventually(
                lambda: _assert([e.id for e in channel.endpoints] == ["b0"]), timeout=5.0
            )
            source = channel.source
        assert isinstance(source, SidecarSource)
        assert source.closed  # opened by the channel, so closed with it
    finally:
        await server.stop(None)


async def test_an_unknown_service_at_the_sidecar_is_reported(backends: list[Backend]) -> None:
    fake = FakeSidecar()
    server, address = await start_sidecar(fake)
    try:
        async with SidecarSource(address) as source:
            async with ServiceChannel.open(source, "orders") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                with pytest.raises(NoEndpointsError, match="orders is not an upstream"):
                    await stub.Check(request(), timeout=2.0)
            assert not source.closed  # passed in, so not the channel's to close
    finally:
        await server.stop(None)


async def test_closing_a_shared_sidecar_source_keeps_the_last_endpoints(
    backends: list[Backend],
) -> None:
    fake = FakeSidecar()
    fake.set(SERVICE, instances(backends))
    server, address = await start_sidecar(fake)
    try:
        source = SidecarSource(address)
        async with ServiceChannel.open(source, SERVICE) as channel:
            await channel.wait_for_endpoints()
            await source.close()
            task = channel._watch_task
            assert task is not None
            await assert_eventually(lambda: _assert(task.done()))
            assert not task.cancelled()
            reply = await health_pb2_grpc.HealthStub(channel).Check(request(), timeout=2.0)
            assert reply.status == SERVING
    finally:
        await server.stop(None)


def _assert(condition: bool) -> None:
    assert condition


async def _await(call: Any) -> Any:
    return await call
