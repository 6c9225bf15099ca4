"""In-memory stand-ins for gRPC channels: scripted answers, recorded requests, no sockets."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
from ecosystem.v1 import registry_pb2 as pb
from google.rpc import code_pb2, error_details_pb2, status_pb2

import sdk


def rpc_error(
    code: grpc.StatusCode,
    details: str = "",
    *,
    violations: Iterable[tuple[str, str]] = (),
) -> grpc.aio.AioRpcError:
    """An error as grpc.aio raises it, with BadRequest details when violations are given."""
    trailing = grpc.aio.Metadata()
    violations = list(violations)
    if violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in violations
            ]
        )
        status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=details)
        status.details.add().Pack(bad)
        trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details, None)


def unavailable(details: str = "connection refused") -> grpc.aio.AioRpcError:
    return rpc_error(grpc.StatusCode.UNAVAILABLE, details)


@dataclass
class Call:
    address: str
    method: str
    request: Any
    timeout: float | None


UnaryHandler = Callable[[str, Any], Any]
StreamScript = Callable[[Any], AsyncIterator[Any]]


@dataclass
class FakeControlPlane:
    """Answers RPCs from scripts; every request is recorded in ``calls``.

    ``unary[method]`` returns the response or raises (an exception or a
    grpc error); addresses in ``down`` answer UNAVAILABLE to everything, and
    those in ``hung`` answer nothing (unary calls end at their deadline).
    ``watch_scripts`` are consumed one per Watch call; when none is left the
    stream stays open, silent, until cancelled.
    """

    unary: dict[str, UnaryHandler] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    hung: set[str] = field(default_factory=set)
    watch_scripts: deque[StreamScript] = field(default_factory=deque)
    calls: list[Call] = field(default_factory=list)
    channels: list[FakeChannel] = field(default_factory=list)

    def channel_factory(self, address: str) -> Any:
        channel = FakeChannel(self, address)
        self.channels.append(channel)
        return channel

    def requests(self, method: str) -> list[Any]:
        return [c.request for c in self.calls if c.method == method]

    async def handle_unary(self, address: str, method: str, request: Any, timeout: Any) -> Any:
        self.calls.append(Call(address, method, request, timeout))
        await asyncio.sleep(0)
        if address in self.down:
            raise unavailable(f"{address} is down")
        if address in self.hung:
            await asyncio.sleep(timeout or 0)
            raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        handler = self.unary.get(method)
        if handler is None:
            raise rpc_error(grpc.StatusCode.UNIMPLEMENTED, method)
        return handler(address, request)

    def open_stream(self, address: str, method: str, request: Any) -> AsyncIterator[Any]:
        self.calls.append(Call(address, method, request, None))
        if address in self.down:
            return ScriptedStream([unavailable(f"{address} is down")])
        if address in self.hung:
            return ScriptedStream([], hang=True)
        if self.watch_scripts:
            return self.watch_scripts.popleft()(request)
        return ScriptedStream([], hang=True)


class ScriptedStream:
    """Yields responses and raises errors in order, then ends (or, if ``hang``,
    stays silent until cancelled). A class, not a generator, so an abandoned
    one needs no finalising."""

    def __init__(self, items: Iterable[Any], *, hang: bool = False) -> None:
        self._items = deque(items)
        self._hang = hang

    def __aiter__(self) -> ScriptedStream:
        return self

    async def __anext__(self) -> Any:
        await asyncio.sleep(0)
        if not self._items:
            if self._hang:
                await asyncio.Event().wait()
            raise StopAsyncIteration
        item = self._items.popleft()
        if isinstance(item, BaseException):
            raise item
        return item


class FakeStreamCall:
    """What ``stub.Watch(request)`` returns: an async iterator with ``cancel()``."""

    def __init__(self, source: AsyncIterator[Any]) -> None:
        self._source = source
        self.cancelled = False

    def __aiter__(self) -> FakeStreamCall:
        return self

    async def __anext__(self) -> Any:
        return await anext(self._source)

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class FakeChannel:
    """Enough of grpc.aio.Channel for the generated stub."""

    def __init__(self, plane: FakeControlPlane, address: str) -> None:
        self.plane = plane
        self.address = address
        self.closed = False
        self.stream_calls: list[FakeStreamCall] = []

    def unary_unary(self, path: str, *args: Any, **kwargs: Any) -> Any:
        method = path.rsplit("/", 1)[1]

        async def call(request: Any, timeout: float | None = None, **_: Any) -> Any:
            return await self.plane.handle_unary(self.address, method, request, timeout)

        return call

    def unary_stream(self, path: str, *args: Any, **kwargs: Any) -> Any:
        method = path.rsplit("/", 1)[1]

        def call(request: Any, timeout: float | None = None, **_: Any) -> FakeStreamCall:
            stream = FakeStreamCall(self.plane.open_stream(self.address, method, request))
            self.stream_calls.append(stream)
            return stream

        return call

    async def close(self, grace: float | None = None) -> None:
        self.closed = True


def instance_pb(id: str = "web-1", service: str = "web", **fields: Any) -> pb.Instance:
    fields.setdefault("address", "10.0.0.1")
    fields.setdefault("port", 8080)
    return pb.Instance(id=id, service=service, **fields)


def event(kind: str, revision: int, instance: pb.Instance | None = None) -> pb.WatchEvent:
    msg = pb.WatchEvent(type=sdk.WatchEventType(kind).to_proto(), revision=revision)
    if instance is not None:
        msg.instance.CopyFrom(instance)
    return msg


def batch(*events: pb.WatchEvent) -> pb.WatchResponse:
    return pb.WatchResponse(events=list(events))


def script(*items: pb.WatchResponse | BaseException, hang: bool = False) -> StreamScript:
    """A Watch stream that yields responses and raises errors in order, then
    ends (or hangs until cancelled)."""
    return lambda _request: ScriptedStream(items, hang=hang)


async def no_sleep(_delay: float) -> None:
    await asyncio.sleep(0)


@dataclass
class RecordingSleep:
    """A sleep that returns at once and remembers what it was asked for."""

    delays: list[float] = field(default_factory=list)

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)
