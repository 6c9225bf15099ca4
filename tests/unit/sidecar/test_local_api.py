"""The local API's servicer without sockets: answers from a seeded cache, and
every error as the status the table says, with field violations for bad input."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc
import pytest
from ecosystem.v1 import registry_pb2, sidecar_pb2
from google.rpc import error_details_pb2, status_pb2

from sdk import EndpointUpdate, HealthStatus, Instance, ServiceEndpoints, ServiceRef
from sidecar.cache import EndpointCache
from sidecar.config import NodeConfig, UpstreamConfig
from sidecar.errors import to_status
from sidecar.health import CheckKind, CheckNotFoundError, NotATtlCheckError
from sidecar.local_api import SidecarServicer
from sidecar.metrics import SidecarMetrics
from sidecar.routing import Router

PASSING, WARNING, CRITICAL = HealthStatus.PASSING, HealthStatus.WARNING, HealthStatus.CRITICAL


class FakeContext:
    """Records the status the servicer ends a call with."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.trailing: Sequence[tuple[str, Any]] = ()

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, trailing_metadata: Sequence[tuple[str, Any]]) -> None:
        self.trailing = trailing_metadata

    def violations(self) -> dict[str, str]:
        for key, value in self.trailing:
            if key == "grpc-status-details-bin":
                status = status_pb2.Status.FromString(value)
                for detail in status.details:
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    return {v.field: v.description for v in bad.field_violations}
        return {}


class TtlRecorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, HealthStatus, str]] = []
        self.error: Exception | None = None

    def __call__(
        self, service: str, instance_id: str, check: str, status: HealthStatus, note: str
    ) -> None:
        if self.error is not None:
            raise self.error
        self.calls.append((service, instance_id, check, status, note))


def inst(id: str, health: HealthStatus, port: int = 8080) -> Instance:
    return Instance(id=id, service="orders", address="10.0.0.1", port=port, health=health)


@pytest.fixture
def parts() -> tuple[SidecarServicer, EndpointCache, TtlRecorder]:
    upstreams = [UpstreamConfig(service="orders"), UpstreamConfig(service="empty")]
    cache = EndpointCache([u.key for u in upstreams])
    router = Router(upstreams, NodeConfig(id="n1"))
    instances = (inst("a", PASSING), inst("b", WARNING, 8081), inst("c", CRITICAL, 8082))
    update = EndpointUpdate(5, "n", (ServiceEndpoints(ServiceRef("orders"), instances),))
    changes = cache.prepare(update)
    cache.commit(changes, 5)
    for key, items in changes.items():
        router.update(key, items)
    ttl = TtlRecorder()
    servicer = SidecarServicer(
        cache, router, is_stale=lambda: False, update_ttl=ttl, metrics=SidecarMetrics()
    )
    return servicer, cache, ttl


async def fails(call: Any, context: FakeContext) -> grpc.StatusCode:
    assert await call is None  # the call ended with the status set on its context
    assert context.code is not None
    return context.code


async def test_resolve_defaults_to_passing_and_warning(parts: Any) -> None:
    servicer, _, _ = parts
    response = await servicer.ResolveEndpoints(
        sidecar_pb2.ResolveEndpointsRequest(service="orders"), FakeContext()
    )
    assert [e.id for e in response.endpoints] == ["a", "b"]
    assert response.version == 5 and not response.stale
    response = await servicer.ResolveEndpoints(
        sidecar_pb2.ResolveEndpointsRequest(
            service="orders", health=[registry_pb2.HEALTH_STATUS_CRITICAL]
        ),
        FakeContext(),
    )
    assert [e.id for e in response.endpoints] == ["c"]


async def test_unknown_service_is_not_found_and_named(parts: Any) -> None:
    servicer, _, _ = parts
    context = FakeContext()
    request = sidecar_pb2.ResolveEndpointsRequest(service="billing")
    assert await fails(servicer.ResolveEndpoints(request, context), context) == (
        grpc.StatusCode.NOT_FOUND
    )
    assert "'billing'" in context.details and "configured: orders, empty" in context.details


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (sidecar_pb2.ResolveEndpointsRequest(), "service"),
        (sidecar_pb2.ResolveEndpointsRequest(service="Orders!"), "service"),
        (sidecar_pb2.ResolveEndpointsRequest(service="orders", namespace="A B"), "namespace"),
        (sidecar_pb2.ResolveEndpointsRequest(service="orders", health=[0]), "health[0]"),
        (sidecar_pb2.ResolveEndpointsRequest(service="orders", health=[1, 42]), "health[1]"),
    ],
)
async def test_bad_arguments_carry_field_violations(
    parts: Any, request_: sidecar_pb2.ResolveEndpointsRequest, field: str
) -> None:
    servicer, _, _ = parts
    context = FakeContext()
    code = await fails(servicer.ResolveEndpoints(request_, context), context)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in context.violations(), context.violations()


async def test_pick_skips_critical_and_reports_feed_the_balancer(parts: Any) -> None:
    servicer, _, _ = parts
    seen = set()
    for _ in range(6):
        response = await servicer.PickEndpoint(
            sidecar_pb2.PickEndpointRequest(service="orders"), FakeContext()
        )
        seen.add(response.endpoint.id)
        await servicer.ReportResult(
            sidecar_pb2.ReportResultRequest(pick_id=response.pick_id, latency_seconds=0.01),
            FakeContext(),
        )
    # One passing endpoint of three is below the panic threshold (half), so
    # health_based widens to the warning one; the critical one is never picked.
    assert seen == {"a", "b"}
    context = FakeContext()
    again = sidecar_pb2.ReportResultRequest(pick_id=response.pick_id)
    assert await fails(servicer.ReportResult(again, context), context) == (
        grpc.StatusCode.NOT_FOUND
    )


async def test_report_validates_its_arguments(parts: Any) -> None:
    servicer, _, _ = parts
    context = FakeContext()
    request = sidecar_pb2.ReportResultRequest(latency_seconds=-1)
    assert await fails(servicer.ReportResult(request, context), context) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert set(context.violations()) == {"pick_id", "latency_seconds"}


async def test_no_endpoints_is_unavailable(parts: Any) -> None:
    servicer, _, _ = parts
    context = FakeContext()
    request = sidecar_pb2.PickEndpointRequest(service="empty")
    assert await fails(servicer.PickEndpoint(request, context), context) == (
        grpc.StatusCode.UNAVAILABLE
    )
    assert "'empty'" in context.details


async def test_update_ttl_passes_through_and_maps_engine_errors(parts: Any) -> None:
    servicer, _, ttl = parts
    request = sidecar_pb2.UpdateTTLRequest(
        service="web", check="ttl", status=registry_pb2.HEALTH_STATUS_WARNING, note="slow"
    )
    await servicer.UpdateTTL(request, FakeContext())
    assert ttl.calls == [("web", "", "ttl", WARNING, "slow")]
    for error, code in [
        (CheckNotFoundError("web-1:ttl"), grpc.StatusCode.NOT_FOUND),
        (NotATtlCheckError("web-1:up", CheckKind.TCP), grpc.StatusCode.FAILED_PRECONDITION),
        (RuntimeError("bug"), grpc.StatusCode.INTERNAL),
    ]:
        ttl.error = error
        context = FakeContext()
        assert await fails(servicer.UpdateTTL(request, context), context) == code
    assert context.details == "internal error", "a bug's text does not leak to the caller"


@pytest.mark.parametrize("status", [0, registry_pb2.HEALTH_STATUS_UNKNOWN, 99])
async def test_update_ttl_needs_a_definite_status(parts: Any, status: int) -> None:
    servicer, _, _ = parts
    context = FakeContext()
    request = sidecar_pb2.UpdateTTLRequest(service="web", status=status)  # type: ignore[arg-type]
    assert await fails(servicer.UpdateTTL(request, context), context) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "status" in context.violations()


async def test_watch_sends_the_current_state_then_each_change(parts: Any) -> None:
    servicer, cache, _ = parts
    context = FakeContext()
    stream = servicer.WatchEndpoints(sidecar_pb2.WatchEndpointsRequest(service="orders"), context)
    first = await anext(stream)
    assert [e.id for e in first.endpoints] == ["a", "b", "c"] and first.version == 5
    assert servicer.watch_streams == 1
    pending = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.01)
    assert not pending.done()
    cache.notify_all()  # nothing changed: nothing is sent
    await asyncio.sleep(0.01)
    assert not pending.done()
    update = EndpointUpdate(
        6, "m", (ServiceEndpoints(ServiceRef("orders"), (inst("d", PASSING),)),)
    )
    cache.commit(cache.prepare(update), 6)
    second = await asyncio.wait_for(pending, 1)
    assert [e.id for e in second.endpoints] == ["d"] and second.version == 6
    servicer.close()
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    assert context.code is grpc.StatusCode.UNAVAILABLE
    assert servicer.watch_streams == 0


async def test_a_closing_servicer_answers_unavailable(parts: Any) -> None:
    servicer, _, _ = parts
    servicer.close()
    context = FakeContext()
    request = sidecar_pb2.PickEndpointRequest(service="orders")
    assert await fails(servicer.PickEndpoint(request, context), context) == (
        grpc.StatusCode.UNAVAILABLE
    )


def test_the_table_maps_unexpected_errors_to_internal_without_detail() -> None:
    status = to_status(KeyError("secret"))
    assert status.code == grpc.StatusCode.INTERNAL.value[0]
    assert status.message == "internal error"
