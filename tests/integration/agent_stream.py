"""A scripted sidecar for the agent-stream tests: one raw Connect stream driven
by the test, as a well-behaved, careless or hostile sidecar would drive it."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from ecosystem.v1 import agent_pb2 as apb
from ecosystem.v1 import agent_pb2_grpc
from ecosystem.v1 import registry_pb2 as pb
from ecosystem.v1 import registry_pb2_grpc as pb_grpc

__all__ = ["Stream", "instances", "session_status"]


class Stream:
    """One raw Connect stream driven by the test, as a careless or hostile sidecar."""

    def __init__(
        self, channel: grpc.aio.Channel, node: str = "web-1", *, platform: str = "", **hello: Any
    ) -> None:
        self.stub = agent_pb2_grpc.AgentServiceStub(channel)
        self.node = apb.Node(id=node, platform=platform, zone="eu-1a")
        if platform:
            self.node.region = "eu"
        self.hello = apb.Hello(node=self.node, **hello)
        self.call: Any = None

    async def open(self, first: apb.ConnectRequest | None = None) -> None:
        self.call = self.stub.Connect()
        await self.call.write(first or apb.ConnectRequest(hello=self.hello))

    async def connect(self) -> apb.Welcome:
        await self.open()
        first = await self.read()
        assert first.WhichOneof("message") == "welcome", first
        self.hello.session_id = first.welcome.session_id
        return first.welcome

    async def refused(self) -> grpc.aio.AioRpcError:
        """Sends the Hello and returns the error that ends the stream."""
        await self.open()
        return await self.ended()

    async def send(self, **message: Any) -> None:
        await self.call.write(apb.ConnectRequest(**message))

    async def read(self, timeout: float = 5.0) -> apb.ConnectResponse:
        response = await asyncio.wait_for(self.call.read(), timeout)
        assert response is not grpc.aio.EOF, "stream ended"  # type: ignore[attr-defined]
        return response  # type: ignore[no-any-return]

    async def read_kind(self, kind: str) -> apb.ConnectResponse:
        while (response := await self.read()).WhichOneof("message") != kind:
            pass
        return response

    async def sync(self, *instances: pb.Instance) -> apb.SyncResult:
        await self.send(sync=apb.SyncInstances(instances=instances))
        return (await self.read_kind("sync_result")).sync_result

    async def ended(self, timeout: float = 10.0) -> grpc.aio.AioRpcError:
        """Reads until the control plane ends the stream; returns how it did."""
        async with asyncio.timeout(timeout):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                while True:
                    message = await self.call.read()
                    assert message is not grpc.aio.EOF, "ended without a status"  # type: ignore[attr-defined]
        return caught.value

    def drop(self) -> None:
        if self.call is not None:
            self.call.cancel()


async def instances(channel: grpc.aio.Channel, service: str = "web") -> dict[str, pb.Instance]:
    """The registered instances of ``service`` by id, read over the registry API."""
    stub = pb_grpc.RegistryServiceStub(channel)
    got = await stub.ListInstances(
        pb.ListInstancesRequest(selector=pb.InstanceSelector(service=service))
    )
    return {i.id: i for i in got.instances}


def session_status(inst: pb.Instance) -> int:
    """The status of the check the control plane keeps for a sidecar's session."""
    return next(c.status for c in inst.checks if c.name == "sidecar-session")
