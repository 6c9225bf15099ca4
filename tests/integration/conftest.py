"""A real control plane on 127.0.0.1:0 and a raw gRPC stub for it; an in-memory broker."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from ecosystem.v1 import registry_pb2_grpc as pb_grpc

from bus.embedded import EmbeddedBroker
from controlplane import ControlPlane, ControlPlaneConfig


@pytest.fixture
async def plane() -> AsyncIterator[ControlPlane]:
    config = ControlPlaneConfig(
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        store_url="memory://",
        grace=1.0,
        drain_delay=0,
    )
    async with ControlPlane(config) as cp:
        yield cp


@pytest.fixture
async def channel(plane: ControlPlane) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(plane.address) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.RegistryServiceStub:
    return pb_grpc.RegistryServiceStub(channel)


@pytest.fixture
async def broker() -> AsyncIterator[EmbeddedBroker]:
    """An embedded broker in memory (the bridge tests serve it)."""
    b = EmbeddedBroker(None)
    await b.start()
    try:
        yield b
    finally:
        await b.close()
