"""RouteService: a thin adapter from gRPC to the :class:`RouteBook`.

Who may apply, read or delete which route is the ACL interceptor's business
(``controlplane.acl``); the stream it sends is filtered there too.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from ecosystem.v1 import gateway_pb2 as gpb
from google.protobuf.message import Message

from serving.errors import (
    FieldViolation,
    InvalidArgumentError,
    ResourceExhaustedError,
    end_call,
    to_status,
)

from ._book import RouteBook

__all__ = ["ROUTE_SERVICE", "RouteServicer", "route_handler"]

log = logging.getLogger(__name__)

ROUTE_SERVICE = gpb.DESCRIPTOR.services_by_name["RouteService"].full_name
DEFAULT_PROGRESS_MS = 5_000


class RouteServicer:
    """Serves RouteService from a :class:`RouteBook`."""

    def __init__(self, book: RouteBook, *, max_watch_streams: int = 10_000) -> None:
        self.book = book
        #: WatchRoutes streams open at once, at most (RESOURCE_EXHAUSTED past it)
        self.max_watch_streams = max_watch_streams
        self.watch_streams = 0

    async def _run(self, name: str, context: Any, work: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await work()
        except Exception as exc:
            _fail(name, context, exc)
            return None

    async def ApplyRoutes(self, request: gpb.ApplyRoutesRequest, context: Any) -> Any:
        async def work() -> gpb.ApplyRoutesResponse:
            answer = await self.book.apply(request)
            if answer.created or answer.updated or answer.deleted:
                log.info(
                    "routes applied (group %r) at revision %d: %d created, %d updated, "
                    "%d deleted, %d unchanged",
                    request.group,
                    answer.revision,
                    len(answer.created),
                    len(answer.updated),
                    len(answer.deleted),
                    len(answer.unchanged),
                )
            return answer

        return await self._run("ApplyRoutes", context, work)

    async def ListRoutes(self, request: gpb.ListRoutesRequest, context: Any) -> Any:
        return await self._run("ListRoutes", context, self.book.list)

    async def GetRoute(self, request: gpb.GetRouteRequest, context: Any) -> Any:
        async def work() -> gpb.GetRouteResponse:
            return gpb.GetRouteResponse(route=await self.book.get(request.name))

        return await self._run("GetRoute", context, work)

    async def DeleteRoute(self, request: gpb.DeleteRouteRequest, context: Any) -> Any:
        async def work() -> gpb.DeleteRouteResponse:
            revision = await self.book.delete(request.name)
            log.info("route %s deleted at revision %d", request.name, revision)
            return gpb.DeleteRouteResponse(revision=revision)

        return await self._run("DeleteRoute", context, work)

    async def WatchRoutes(
        self, request: gpb.WatchRoutesRequest, context: Any
    ) -> AsyncIterator[bytes]:
        """Yields serialized WatchRoutesResponse messages (``route_handler``
        passes bytes through: each change is encoded once for every watcher)."""
        interval = request.progress_interval_ms or DEFAULT_PROGRESS_MS

        async def subscribe() -> Any:
            if not 100 <= interval <= 60_000:
                raise InvalidArgumentError(
                    [FieldViolation("progress_interval_ms", "must be 100-60000 (or 0: 5000)")]
                )
            if self.watch_streams >= self.max_watch_streams:
                raise ResourceExhaustedError(
                    f"this control plane serves {self.max_watch_streams} route watches "
                    "already; try again later or another address"
                )
            return self.book.subscribe(request.since_revision, request.store_id)

        watcher = await self._run("WatchRoutes", context, subscribe)
        if watcher is None:
            return
        stream = watcher.responses(interval / 1000)
        self.watch_streams += 1
        try:
            async for response in stream:
                yield response
        except Exception as exc:
            _fail("WatchRoutes", context, exc)
        finally:
            self.watch_streams -= 1
            await stream.aclose()


def _fail(name: str, context: Any, exc: Exception) -> None:
    """Ends the call with the status ``exc`` maps to (logged when unexpected)."""
    status = to_status(exc)
    if status.code == grpc.StatusCode.INTERNAL.value[0]:
        log.exception("RouteService/%s failed", name, exc_info=exc)
    end_call(context, status)


def _serialize(message: bytes | Message) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


def route_handler(servicer: RouteServicer) -> grpc.GenericRpcHandler[Any, Any]:
    """RouteService's handlers, built from the descriptor like the generated
    ``add_…_to_server``, except that responses may be bytes already serialized."""
    service = gpb.DESCRIPTOR.services_by_name["RouteService"]
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        make = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=getattr(gpb, method.input_type.name).FromString,
            response_serializer=_serialize,
        )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
