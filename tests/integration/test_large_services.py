"""A large service does not break its readers (hardening finding 5).

Eighty valid instances at the size limits (about 60 KiB each, 4.8 MB in
all) used to make GetService and ListInstances fail for every stock client
(its 4 MiB receive limit): responses are now pages under 3 MiB, a watch
snapshot comes in responses under about 1 MiB, and a revision too large for
one response is cut with ``revision_continues`` set.
"""

from __future__ import annotations

import asyncio

import grpc
from ecosystem.v1 import registry_pb2 as pb
from ecosystem.v1 import registry_pb2_grpc as pb_grpc

from controlplane import ControlPlane
from controlplane.validation import LIMITS, validate_register
from sdk import AsyncClient

COUNT = 80


def maximal(i: int, *, lease_id: int = 0) -> pb.RegisterInstanceRequest:
    """An instance close to every limit at once, yet valid."""
    inst = pb.Instance(
        id=f"big-{i:03d}",
        service="big",
        address="10.0.0.1",
        port=8000 + i,
        health=pb.HEALTH_STATUS_PASSING,
        tags=[f"t{j:02d}-" + "x" * 120 for j in range(LIMITS.tags)],
        metadata={f"key-{j:02d}": "v" * 1000 for j in range(15)},
        checks=[
            pb.CheckStatus(name=f"check-{j}", status=pb.HEALTH_STATUS_PASSING, output="o" * 4096)
            for j in range(8)
        ],
        liveness=pb.LIVENESS_EPHEMERAL if lease_id else pb.LIVENESS_PERSISTENT,
    )
    request = pb.RegisterInstanceRequest(instance=inst, lease_id=lease_id)
    validate_register(request)
    assert inst.ByteSize() > 50_000
    return request


async def register_all(stub: pb_grpc.RegistryServiceStub, *, ephemeral: bool = False) -> int:
    lease_id = 0
    for i in range(COUNT):
        request = maximal(i, lease_id=lease_id)
        if ephemeral and not lease_id:
            request.instance.liveness = pb.LIVENESS_EPHEMERAL
            request.lease_ttl_seconds = 60
        response = await stub.RegisterInstance(request)
        lease_id = response.lease_id
    return lease_id


async def test_stock_clients_read_a_large_service_page_by_page(
    stub: pb_grpc.RegistryServiceStub, plane: ControlPlane
) -> None:
    await register_all(stub)
    seen: list[str] = []
    request = pb.GetServiceRequest(name="big")
    pages = 0
    while True:
        response = await stub.GetService(request)
        assert response.ByteSize() < 3 * 1024 * 1024 + 64 * 1024
        assert response.service.instance_count == COUNT  # counts the whole service
        seen += [i.id for i in response.instances]
        pages += 1
        if not response.next_page_token:
            break
        request.page_token = response.next_page_token
    assert pages >= 2
    assert seen == [f"big-{i:03d}" for i in range(COUNT)]

    listed: list[str] = []
    list_request = pb.ListInstancesRequest(selector=pb.InstanceSelector(service="big"), page_size=7)
    while True:
        page = await stub.ListInstances(list_request)
        assert len(page.instances) <= 7
        listed += [i.id for i in page.instances]
        if not page.next_page_token:
            break
        list_request.page_token = page.next_page_token
    assert listed == seen

    async with AsyncClient(plane.address) as client:
        detail = await client.get_service("big")
        assert [i.id for i in detail.instances] == seen
        listed_all = await client.list_instances(service="big")
        assert len(listed_all.instances) == COUNT


async def test_bad_page_arguments_are_refused(stub: pb_grpc.RegistryServiceStub) -> None:
    for request in (
        pb.ListInstancesRequest(page_size=-1),
        pb.ListInstancesRequest(page_size=1_000_000),
        pb.ListInstancesRequest(page_token="not a token"),
    ):
        try:
            await stub.ListInstances(request)
        except grpc.aio.AioRpcError as err:
            assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
        else:
            raise AssertionError(f"{request} was accepted")


async def test_a_stock_watcher_gets_a_large_snapshot_and_a_large_revision(
    stub: pb_grpc.RegistryServiceStub,
) -> None:
    lease_id = await register_all(stub, ephemeral=True)
    stream = stub.Watch(pb.WatchRequest(selector=pb.InstanceSelector(service="big")))
    puts = 0
    async for response in stream:
        assert response.ByteSize() < 1024 * 1024 + 64 * 1024
        puts += sum(e.type == pb.WATCH_EVENT_TYPE_PUT for e in response.events)
        if response.events[-1].type == pb.WATCH_EVENT_TYPE_SNAPSHOT_END:
            break
    assert puts == COUNT
    # One revision deletes all eighty (their lease ends): too large for one response.
    await stub.RevokeLease(pb.RevokeLeaseRequest(lease_id=lease_id))
    deletes = 0
    continued = 0
    async with asyncio.timeout(10):
        async for response in stream:
            deletes += sum(e.type == pb.WATCH_EVENT_TYPE_DELETE for e in response.events)
            continued += response.revision_continues
            if deletes == COUNT:
                break
    assert continued >= 1
    stream.cancel()


async def test_the_sidecar_local_api_serves_a_large_upstream_in_parts() -> None:
    """The local API bounds its responses the same way: ResolveEndpoints in
    pages, WatchEndpoints in responses marked ``more`` until the set is whole."""
    from ecosystem.v1 import sidecar_pb2, sidecar_pb2_grpc

    from sdk import EndpointUpdate, Instance, ServiceEndpoints, ServiceRef
    from sidecar.cache import EndpointCache
    from sidecar.config import NodeConfig, UpstreamConfig
    from sidecar.local_api import LocalApiServer, SidecarServicer
    from sidecar.routing import Router

    upstreams = [UpstreamConfig(service="big")]
    cache = EndpointCache([u.key for u in upstreams])
    router = Router(upstreams, NodeConfig(id="n1"))
    instances = tuple(Instance.from_proto(maximal(i).instance) for i in range(COUNT))
    changes = cache.prepare(
        EndpointUpdate(5, "n", (ServiceEndpoints(ServiceRef("big"), instances),))
    )
    cache.commit(changes, 5)
    for key, items in changes.items():
        router.update(key, items)

    async def no_ttl(*_args: object) -> None:
        return None

    server = LocalApiServer(
        SidecarServicer(cache, router, is_stale=lambda: False, update_ttl=no_ttl)  # type: ignore[arg-type]
    )
    address = await server.start("127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = sidecar_pb2_grpc.SidecarServiceStub(channel)
            request = sidecar_pb2.ResolveEndpointsRequest(service="big")
            resolved: list[str] = []
            while True:
                response = await stub.ResolveEndpoints(request)
                resolved += [e.id for e in response.endpoints]
                if not response.next_page_token:
                    break
                request.page_token = response.next_page_token
            assert resolved == [f"big-{i:03d}" for i in range(COUNT)]

            watch = stub.WatchEndpoints(sidecar_pb2.WatchEndpointsRequest(service="big"))
            watched: list[str] = []
            parts = 0
            async for part in watch:
                assert part.ByteSize() < 1024 * 1024 + 64 * 1024
                watched += [e.id for e in part.endpoints]
                parts += 1
                if not part.more:
                    break
            watch.cancel()
            assert parts >= 4 and sorted(watched) == resolved
    finally:
        await server.stop(0)
