"""One client interface over both systems, on raw gRPC stubs.

Both sides are driven the same way: one asyncio gRPC channel per client, the
generated stubs and nothing else (no SDK retries or deadlines of its own on
one side that the other would not have). The stored payload is the same
serialized ``ecosystem.v1.Instance`` on both sides: the control plane stores
it as the instance, etcd as the value of ``/bench/<namespace>/<service>/<id>``.

- register: ``RegisterInstance`` (ephemeral instances share one lease per
  client, granted by the client's first registration) versus etcd ``Put``
  (with one lease per client, granted by ``LeaseGrant``, for the leased case);
- watch: a ``Watch`` stream of one namespace, ready at SNAPSHOT_END, versus an
  etcd ``Watch`` stream with one prefix watch, ready when it is created;
- snapshot: ``Watch`` from the call to SNAPSHOT_END versus an etcd ``Range``
  of the prefix with every value decoded into an ``Instance``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Protocol

import grpc
from ecosystem.v1 import registry_pb2 as pb
from ecosystem.v1 import registry_pb2_grpc as pb_grpc

__all__ = ["CALL_TIMEOUT", "Client", "make_client", "make_instance"]

CALL_TIMEOUT = 60.0
_MAX_MESSAGE = 64 * 1024 * 1024

Ready = Callable[[], None]
Sink = Callable[[int, pb.Instance], None]  # (receive time in ns, instance put)


def channel_options(index: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", _MAX_MESSAGE),
        ("grpc.max_send_message_length", _MAX_MESSAGE),
        # One TCP connection per channel: channels in one process would
        # otherwise share a connection from the global subchannel pool.
        ("grpc.use_local_subchannel_pool", 1),
        ("bench.channel", index),
    ]


def make_instance(namespace: str, service: str, instance_id: str, n: int) -> pb.Instance:
    """A realistic instance: location, address, tags and a little metadata."""
    return pb.Instance(
        id=instance_id,
        service=service,
        namespace=namespace,
        node=f"node-{n % 64}",
        platform="bench",
        region="local",
        zone=f"zone-{n % 3}",
        address=f"127.0.{(n >> 8) & 255}.{n & 255}",
        port=8000 + n % 1000,
        tags=["bench", "v1"],
        metadata={"version": "1.0.0", "owner": "bench"},
        weight=100,
    )


def _warmup_id(client: object) -> str:
    return f"w-{os.getpid()}-{id(client) & 0xFFFFFF:x}"


class Client(Protocol):
    """What every benchmark needs from a system."""

    system: str

    async def ready(self) -> None: ...

    async def warm_up(self, namespace: str, *, leased: bool, lease_ttl: int) -> None:
        """One untimed write (and for ``leased``, the client's lease)."""

    async def register(self, inst: pb.Instance, *, leased: bool) -> None: ...

    async def watch(self, namespace: str, ready: Ready, sink: Sink) -> None:
        """Follows ``namespace`` until cancelled: ``ready()`` once the stream
        is established, then ``sink`` for every instance put."""

    async def snapshot(self, namespace: str) -> int:
        """Reads every instance of ``namespace``; returns how many."""

    async def close(self) -> None: ...


class EcosystemClient:
    system = "ecosystem"

    def __init__(self, target: str, channel_index: int = 0, token: str = "") -> None:
        self._channel = grpc.aio.insecure_channel(target, options=channel_options(channel_index))
        self._stub = pb_grpc.RegistryServiceStub(self._channel)  # type: ignore[no-untyped-call]
        # An ACL token goes with every call, as the SDK sends it.
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._lease_id = 0
        self._lease_ttl = 0

    async def ready(self) -> None:
        await self._channel.channel_ready()

    async def warm_up(self, namespace: str, *, leased: bool, lease_ttl: int) -> None:
        self._lease_ttl = lease_ttl
        inst = make_instance(f"{namespace}-warmup", "warmup", _warmup_id(self), 0)
        await self.register(inst, leased=leased)

    async def register(self, inst: pb.Instance, *, leased: bool) -> None:
        if leased:
            inst.liveness = pb.LIVENESS_EPHEMERAL
            request = pb.RegisterInstanceRequest(
                instance=inst, lease_id=self._lease_id, lease_ttl_seconds=self._lease_ttl
            )
        else:
            inst.liveness = pb.LIVENESS_PERSISTENT
            request = pb.RegisterInstanceRequest(instance=inst)
        response = await self._stub.RegisterInstance(
            request, timeout=CALL_TIMEOUT, metadata=self._metadata
        )
        if leased and not self._lease_id:
            self._lease_id = response.lease_id

    async def watch(self, namespace: str, ready: Ready, sink: Sink) -> None:
        request = pb.WatchRequest(selector=pb.InstanceSelector(namespace=namespace))
        call = self._stub.Watch(request)
        live = False
        try:
            async for response in call:
                now = time.time_ns()
                for event in response.events:
                    kind = event.type
                    if kind == pb.WATCH_EVENT_TYPE_PUT:
                        if live:
                            sink(now, event.instance)
                    elif kind == pb.WATCH_EVENT_TYPE_SNAPSHOT_END:
                        if not live:
                            live = True
                            ready()
                    elif kind == pb.WATCH_EVENT_TYPE_RESYNC:
                        live = False
        finally:
            call.cancel()
        raise ConnectionError("watch stream ended")

    async def snapshot(self, namespace: str) -> int:
        request = pb.WatchRequest(selector=pb.InstanceSelector(namespace=namespace))
        call = self._stub.Watch(request, timeout=CALL_TIMEOUT)
        count = 0
        try:
            async for response in call:
                for event in response.events:
                    if event.type == pb.WATCH_EVENT_TYPE_PUT:
                        count += 1
                    elif event.type == pb.WATCH_EVENT_TYPE_SNAPSHOT_END:
                        return count
        finally:
            call.cancel()
        raise ConnectionError("watch stream ended before SNAPSHOT_END")

    async def close(self) -> None:
        await self._channel.close(None)


def _prefix_end(prefix: bytes) -> bytes:
    """etcd's range end for "every key starting with prefix"."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


def _etcd_prefix(namespace: str) -> bytes:
    return f"/bench/{namespace}/".encode()


class EtcdClient:
    system = "etcd"

    def __init__(self, target: str, channel_index: int = 0) -> None:
        from aetcd.rpc import kv_pb2, rpc_pb2, rpc_pb2_grpc  # type: ignore[import-untyped]

        self._rpc = rpc_pb2
        self._event_put = kv_pb2.Event.PUT
        self._channel = grpc.aio.insecure_channel(target, options=channel_options(channel_index))
        self._kv = rpc_pb2_grpc.KVStub(self._channel)
        self._lease = rpc_pb2_grpc.LeaseStub(self._channel)
        self._watch = rpc_pb2_grpc.WatchStub(self._channel)
        self._lease_id = 0

    async def ready(self) -> None:
        await self._channel.channel_ready()

    async def warm_up(self, namespace: str, *, leased: bool, lease_ttl: int) -> None:
        if leased:
            granted = await self._lease.LeaseGrant(
                self._rpc.LeaseGrantRequest(TTL=lease_ttl), timeout=CALL_TIMEOUT
            )
            self._lease_id = granted.ID
        inst = make_instance(f"{namespace}-warmup", "warmup", _warmup_id(self), 0)
        await self.register(inst, leased=leased)

    async def register(self, inst: pb.Instance, *, leased: bool) -> None:
        inst.liveness = pb.LIVENESS_EPHEMERAL if leased else pb.LIVENESS_PERSISTENT
        key = f"/bench/{inst.namespace}/{inst.service}/{inst.id}".encode()
        request = self._rpc.PutRequest(
            key=key, value=inst.SerializeToString(), lease=self._lease_id if leased else 0
        )
        await self._kv.Put(request, timeout=CALL_TIMEOUT)

    async def watch(self, namespace: str, ready: Ready, sink: Sink) -> None:
        prefix = _etcd_prefix(namespace)
        call = self._watch.Watch()
        try:
            await call.write(
                self._rpc.WatchRequest(
                    create_request=self._rpc.WatchCreateRequest(
                        key=prefix, range_end=_prefix_end(prefix)
                    )
                )
            )
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:  # type: ignore[attr-defined]
                    break
                now = time.time_ns()
                if response.created:
                    ready()
                if response.canceled:
                    raise ConnectionError(f"etcd cancelled the watch: {response.cancel_reason}")
                for event in response.events:
                    if event.type == self._event_put:
                        sink(now, pb.Instance.FromString(event.kv.value))
        finally:
            call.cancel()
        raise ConnectionError("watch stream ended")

    async def snapshot(self, namespace: str) -> int:
        prefix = _etcd_prefix(namespace)
        response = await self._kv.Range(
            self._rpc.RangeRequest(key=prefix, range_end=_prefix_end(prefix)),
            timeout=CALL_TIMEOUT,
        )
        instances = [pb.Instance.FromString(kv.value) for kv in response.kvs]
        return len(instances)

    async def close(self) -> None:
        await self._channel.close(None)


def make_client(system: str, target: str, channel_index: int = 0, token: str = "") -> Client:
    """A client of ``system``; ``token`` (the control plane's only) is an ACL secret."""
    if system == "ecosystem":
        return EcosystemClient(target, channel_index, token)
    if system == "etcd":
        return EtcdClient(target, channel_index)
    raise ValueError(f"unknown system {system!r}")
