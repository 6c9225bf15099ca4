"""Bytes that are not a protobuf message get INVALID_ARGUMENT on every method
(hardening finding 9: they got UNKNOWN with Python exception text)."""

from __future__ import annotations

import grpc
import pytest
from ecosystem.v1 import agent_pb2, registry_pb2, sidecar_pb2
from ecosystem.v1 import messaging_pb2 as bus_pb

from controlplane import ControlPlane

# A field 1 of wire type 2 whose length runs past the end: never a valid message.
GARBAGE = b"\x0a\xff\xff\xff\x0f\x01"


def methods(module: object, service: str) -> list[tuple[str, bool, bool]]:
    descriptor = module.DESCRIPTOR.services_by_name[service]  # type: ignore[attr-defined]
    return [
        (f"/{descriptor.full_name}/{m.name}", m.client_streaming, m.server_streaming)
        for m in descriptor.methods
    ]


async def call_raw(
    channel: grpc.aio.Channel, method: str, client_streaming: bool, server_streaming: bool
) -> grpc.aio.AioRpcError:
    kinds = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }
    multicallable = kinds[(client_streaming, server_streaming)](method)
    request = iter([GARBAGE]) if client_streaming else GARBAGE
    call = multicallable(request, timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        if server_streaming:
            async for _ in call:
                pass
        else:
            await call
    return err.value


CONTROL_PLANE_METHODS = (
    methods(registry_pb2, "RegistryService")
    + methods(agent_pb2, "AgentService")
    + methods(bus_pb, "MessagingService")
)


@pytest.mark.parametrize(
    ("method", "client_streaming", "server_streaming"),
    CONTROL_PLANE_METHODS,
    ids=[m[0].rsplit("/", 1)[1] for m in CONTROL_PLANE_METHODS],
)
async def test_control_plane_refuses_garbage_with_invalid_argument(
    plane: ControlPlane, method: str, client_streaming: bool, server_streaming: bool
) -> None:
    async with grpc.aio.insecure_channel(plane.address) as channel:
        err = await call_raw(channel, method, client_streaming, server_streaming)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    assert "not a valid" in (err.details() or "")
    assert "Traceback" not in (err.details() or "") and "Unexpected" not in (err.details() or "")


SIDECAR_METHODS = methods(sidecar_pb2, "SidecarService")


@pytest.mark.parametrize(
    ("method", "client_streaming", "server_streaming"),
    SIDECAR_METHODS,
    ids=[m[0].rsplit("/", 1)[1] for m in SIDECAR_METHODS],
)
async def test_sidecar_local_api_refuses_garbage_with_invalid_argument(
    plane: ControlPlane,
    tmp_path: object,
    method: str,
    client_streaming: bool,
    server_streaming: bool,
) -> None:
    from sidecar.cache import EndpointCache
    from sidecar.config import NodeConfig
    from sidecar.local_api import LocalApiServer, SidecarServicer
    from sidecar.routing import Router

    async def no_ttl(*_args: object) -> None:
        return None

    servicer = SidecarServicer(
        EndpointCache([]),
        Router([], NodeConfig(id="n1")),
        is_stale=lambda: False,
        update_ttl=no_ttl,  # type: ignore[arg-type]
    )
    server = LocalApiServer(servicer)
    address = await server.start("127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            err = await call_raw(channel, method, client_streaming, server_streaming)
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    finally:
        await server.stop(0)
