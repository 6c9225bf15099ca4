"""Multi-dimension queries on a large registry: 20,000 instances over 50
services, 10 platforms and 40 zones. ListInstances by platform, zone, tags,
health and service returns exactly the instances a scan would, and the
registry view answers a platform or zone query from its index: it reads the
few instances of that platform, not all 20,000 (timed against a scan)."""

from __future__ import annotations

import statistics
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from ecosystem.v1 import registry_pb2 as pb
from ecosystem.v1 import registry_pb2_grpc as pb_grpc

from controlplane import ControlPlane
from controlplane.registry import instance_key
from controlplane.store import MemoryStore, PutOp
from controlplane.testing import test_config
from controlplane.view import Selector

COUNT = 20_000
HEALTH = (pb.HEALTH_STATUS_PASSING, pb.HEALTH_STATUS_WARNING, pb.HEALTH_STATUS_CRITICAL)


def instance(i: int) -> pb.Instance:
    # One instance in a thousand is on the small "edge" platform (20 in all).
    platform = "edge" if i % 1000 == 0 else f"p{i % 9}"
    return pb.Instance(
        id=f"i{i:05d}",
        service=f"svc{i % 50:02d}",
        namespace="default",
        address="10.0.0.1",
        port=1024 + i % 60_000,
        platform=platform,
        zone=f"z{i % 40:02d}",
        tags=["even" if i % 2 == 0 else "odd", f"t{i % 7}"],
        health=HEALTH[i % 3],
    )


ALL = [instance(i) for i in range(COUNT)]


@pytest.fixture
async def plane() -> AsyncIterator[ControlPlane]:
    store = MemoryStore()
    await store.start()
    try:
        for start in range(0, COUNT, 2_000):
            await store.txn(
                [],
                [
                    PutOp(instance_key(i.namespace, i.service, i.id), i.SerializeToString())
                    for i in ALL[start : start + 2_000]
                ],
            )
        async with ControlPlane(test_config(), store=store) as cp:
            yield cp
    finally:
        await store.close()


async def listed(stub: pb_grpc.RegistryServiceStub, selector: pb.InstanceSelector) -> list[str]:
    ids: list[str] = []
    request = pb.ListInstancesRequest(selector=selector)
    while True:
        answer = await stub.ListInstances(request)
        ids += [i.id for i in answer.instances]
        if not answer.next_page_token:
            return sorted(ids)
        request.page_token = answer.next_page_token


@pytest.mark.parametrize(
    "selector",
    [
        pb.InstanceSelector(platform="edge"),
        pb.InstanceSelector(platform="p3", zone="z07"),
        pb.InstanceSelector(zone="z11", health=[pb.HEALTH_STATUS_CRITICAL]),
        pb.InstanceSelector(platform="p4", tags=["even", "t2"]),
        pb.InstanceSelector(service="svc07", namespace="default", platform="p7"),
        pb.InstanceSelector(service="svc07", zone="z07", health=[pb.HEALTH_STATUS_PASSING]),
        pb.InstanceSelector(platform="nowhere"),
    ],
)
async def test_filters_return_what_a_scan_would(
    plane: ControlPlane, selector: pb.InstanceSelector
) -> None:
    wanted = Selector.from_proto(selector)
    expected = sorted(i.id for i in ALL if wanted.matches(i))
    async with grpc.aio.insecure_channel(plane.address) as channel:
        assert await listed(pb_grpc.RegistryServiceStub(channel), selector) == expected


def _median_ms(view: object, selector: Selector, rounds: int = 15) -> tuple[float, int]:
    times = []
    found = 0
    for _ in range(rounds):
        started = time.perf_counter()
        found = len(view.select(selector))  # type: ignore[attr-defined]
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), found


async def test_platform_and_zone_queries_read_the_index_not_every_instance(
    plane: ControlPlane,
) -> None:
    view = plane.view  # timed on its own, without the RPC's cost
    assert view.instance_count == COUNT
    by_platform, n_platform = _median_ms(view, Selector(platform="edge"))
    by_zone, n_zone = _median_ms(view, Selector(zone="z05", platform="edge"))
    # Tags alone have no index: every instance is read (the scan to compare with).
    scan, n_scan = _median_ms(view, Selector(tags=frozenset({"t0", "even"})))
    assert (n_platform, n_zone) == (20, 0) and n_scan > 1000
    print(
        f"\n{COUNT} instances: platform query {by_platform:.3f} ms ({n_platform} found), "
        f"platform+zone {by_zone:.3f} ms, tags-only scan {scan:.3f} ms ({n_scan} found)"
    )
    assert by_platform * 20 < scan, (by_platform, scan)
    assert by_zone * 20 < scan, (by_zone, scan)
    assert view.platform_instance_count("edge") == 20
