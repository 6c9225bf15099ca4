"""Rejected input costs nothing after the call (hardening finding 3).

A stock client sends requests carrying a 1 MiB name to a real `eco
controlplane` and a real `eco sidecar`: each is refused with
INVALID_ARGUMENT whose details quote a short excerpt (not the input twice,
which made stock clients see RESOURCE_EXHAUSTED about metadata), and the
process's resident memory does not grow with the number of requests (it
grew by about 1.2 MB per request, kept until a full collection).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from ecosystem.v1 import registry_pb2, registry_pb2_grpc, sidecar_pb2, sidecar_pb2_grpc

from tests.harness.controlplane import ControlPlaneProcess
from tests.harness.sidecar import SidecarProcess

pytestmark = pytest.mark.e2e

BIG = "a" * (1 << 20)
REQUESTS = 100
# Growth allowed over 100 MiB of rejected input: allocator slack, not the input.
MAX_GROWTH_KB = 20_000


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def refuse_many(pid: int, call: Callable[[], object]) -> int:
    """Sends REQUESTS rejected calls; returns the RSS growth in KiB after the
    first ten (which let the process reach its steady state)."""

    def one() -> None:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, err.value
        assert len(err.value.details() or "") < 1024
        trailing = sum(len(v) for _, v in err.value.trailing_metadata() or ())
        assert trailing < 4096

    for _ in range(10):
        one()
    before = rss_kb(pid)
    for _ in range(REQUESTS):
        one()
    return rss_kb(pid) - before


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    plane = ControlPlaneProcess("memory://", tmp_path / "controlplane.log")
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


def test_control_plane_memory_stays_flat_under_rejected_input(plane: ControlPlaneProcess) -> None:
    assert plane.proc is not None
    with grpc.insecure_channel(plane.address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        request = registry_pb2.RegisterInstanceRequest(
            instance=registry_pb2.Instance(id="x", service=BIG, address="10.0.0.1", port=80)
        )
        growth = refuse_many(plane.proc.pid, lambda: stub.RegisterInstance(request, timeout=10))
        assert growth < MAX_GROWTH_KB, f"grew {growth} KiB over {REQUESTS} rejected requests"
        # …and the control plane still works.
        ok = registry_pb2.RegisterInstanceRequest(
            instance=registry_pb2.Instance(id="x", service="web", address="10.0.0.1", port=80)
        )
        assert stub.RegisterInstance(ok, timeout=10).revision > 0


async def test_sidecar_memory_stays_flat_under_rejected_input(
    plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    sidecar = SidecarProcess(tmp_path, "n1", "upstreams: [{service: web}]\n", plane.address)
    await sidecar.start()
    try:
        assert sidecar.proc is not None
        with grpc.insecure_channel(sidecar.local_api) as channel:
            stub = sidecar_pb2_grpc.SidecarServiceStub(channel)
            request = sidecar_pb2.ResolveEndpointsRequest(service=BIG)
            growth = refuse_many(
                sidecar.proc.pid, lambda: stub.ResolveEndpoints(request, timeout=10)
            )
        assert growth < MAX_GROWTH_KB, f"grew {growth} KiB over {REQUESTS} rejected requests"
    finally:
        await sidecar.stop()
