"""The gRPC face of the registry: a thin adapter over ``Registry`` and the view.

Every method goes through ``_call``, the one place where the control plane's
errors become gRPC statuses (via ``serving.errors.to_status``, set with
``end_call``, which leaves no reference cycle holding the request behind) and
where a draining process turns new calls away with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from ecosystem.v1 import registry_pb2 as pb
from ecosystem.v1 import registry_pb2_grpc as pb_grpc
from google.protobuf.message import Message

from controlplane.metrics import Metrics
from controlplane.registry import Registry
from controlplane.store import Store
from controlplane.validation import (
    DEFAULT_NAMESPACE,
    validate_get_service,
    validate_list_instances,
    validate_list_services,
    validate_watch,
)
from controlplane.view import InstanceView, Selector
from serving.errors import (
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
    code_for,
    end_call,
    to_status,
)
from serving.paging import page_of

__all__ = ["RegistryServicer", "handler"]

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_PROGRESS_MS = 5_000
# Seconds a resuming watch waits for this replica's view to reach a revision
# that another replica served.
_CATCH_UP = 3.0


class RegistryServicer(pb_grpc.RegistryServiceServicer):
    def __init__(
        self,
        registry: Registry,
        view: InstanceView,
        store: Store,
        metrics: Metrics,
        is_draining: Callable[[], bool],
        max_watch_streams: int = 10_000,
    ) -> None:
        if max_watch_streams < 1:
            raise ValueError("max_watch_streams must be positive")
        self._max_watch_streams = max_watch_streams
        self._watch_streams = 0
        self._registry = registry
        self._view = view
        self._store = store
        self._metrics = metrics
        self._is_draining = is_draining
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self) -> None:
        """Returns when no unary call is in flight (used while draining)."""
        await self._idle.wait()

    async def _call(
        self,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        work: Callable[[], Awaitable[T]],
    ) -> T | None:
        """``work()``'s result, or None once the call has been given the status of
        what ``work`` raised."""
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        self._inflight += 1
        self._idle.clear()
        try:
            if self._is_draining():
                raise UnavailableError("control plane is draining; use another address")
            return await work()
        except Exception as exc:
            code = code_for(exc) or grpc.StatusCode.INTERNAL
            self._fail(method, context, exc)
            return None
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()
            self._metrics.observe_rpc(method, code.name, time.perf_counter() - started)

    def _fail(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any], exc: Exception
    ) -> None:
        if code_for(exc) is None:
            log.exception("%s failed", method, exc_info=exc)
        end_call(context, to_status(exc))

    async def _fresh(self) -> None:
        """Read-your-writes: serve reads only once the view has caught up with
        every write acknowledged before this call."""
        await self._view.wait_for(self._store.revision)

    # -- writes ---------------------------------------------------------------

    async def RegisterInstance(
        self, request: pb.RegisterInstanceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RegisterInstanceResponse | None:
        async def register() -> pb.RegisterInstanceResponse:
            reg = await self._registry.register(request)
            return pb.RegisterInstanceResponse(
                instance=reg.instance,
                revision=reg.revision,
                lease_id=reg.lease_id,
                lease_ttl_seconds=reg.lease_ttl,
            )

        return await self._call("RegisterInstance", context, register)

    async def DeregisterInstance(
        self, request: pb.DeregisterInstanceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DeregisterInstanceResponse | None:
        async def deregister() -> pb.DeregisterInstanceResponse:
            done = await self._registry.deregister(request)
            return pb.DeregisterInstanceResponse(revision=done.revision, deleted=done.deleted)

        return await self._call("DeregisterInstance", context, deregister)

    async def KeepAlive(
        self, request: pb.KeepAliveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.KeepAliveResponse | None:
        async def keepalive() -> pb.KeepAliveResponse:
            ttl = await self._registry.keepalive(request.lease_id)
            return pb.KeepAliveResponse(lease_id=request.lease_id, ttl_seconds=ttl)

        return await self._call("KeepAlive", context, keepalive)

    async def RevokeLease(
        self, request: pb.RevokeLeaseRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RevokeLeaseResponse | None:
        async def revoke() -> pb.RevokeLeaseResponse:
            return pb.RevokeLeaseResponse(revision=await self._registry.revoke(request.lease_id))

        return await self._call("RevokeLease", context, revoke)

    # -- reads ------------------------------------------------------------------

    async def GetService(
        self, request: pb.GetServiceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetServiceResponse | None:
        async def get() -> pb.GetServiceResponse:
            validate_get_service(request)
            await self._fresh()
            namespace = request.namespace or DEFAULT_NAMESPACE
            found = self._view.service(namespace, request.name)
            if found is None:
                raise NotFoundError(
                    f"service {request.name!r} has no instances in namespace {namespace!r}"
                )
            service, instances = found
            page = page_of(
                instances,
                _instance_id,
                page_size=request.page_size,
                page_token=request.page_token,
            )
            return pb.GetServiceResponse(
                service=service,
                instances=page.items,
                revision=self._view.revision,
                next_page_token=page.next_token,
            )

        return await self._call("GetService", context, get)

    async def ListServices(
        self, request: pb.ListServicesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListServicesResponse | None:
        async def list_services() -> pb.ListServicesResponse:
            validate_list_services(request)
            await self._fresh()
            page = page_of(
                self._view.services(request.namespace),
                _service_key,
                page_size=request.page_size,
                page_token=request.page_token,
            )
            return pb.ListServicesResponse(
                services=page.items,
                revision=self._view.revision,
                next_page_token=page.next_token,
            )

        return await self._call("ListServices", context, list_services)

    async def ListInstances(
        self, request: pb.ListInstancesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListInstancesResponse | None:
        async def list_instances() -> pb.ListInstancesResponse:
            validate_list_instances(request)
            await self._fresh()
            page = page_of(
                self._view.select(Selector.from_proto(request.selector)),
                _instance_key,
                page_size=request.page_size,
                page_token=request.page_token,
            )
            return pb.ListInstancesResponse(
                instances=page.items,
                revision=self._view.revision,
                next_page_token=page.next_token,
            )

        return await self._call("ListInstances", context, list_instances)

    # -- watch --------------------------------------------------------------------

    async def Watch(
        self, request: pb.WatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        """Yields WatchResponse messages already serialized by the view (see
        ``handler``: this method's serializer passes bytes through)."""

        async def open_stream() -> AsyncIterator[bytes]:
            validate_watch(request)
            await self._fresh()
            since = request.since_revision
            if request.store_id == self._view.store_id and since > self._view.revision:
                # A revision of this store that another replica has already
                # served: wait for this view to reach it, rather than answer
                # a resume with a snapshot.
                with contextlib.suppress(UnavailableError):
                    await self._view.wait_for(since, timeout=_CATCH_UP)
            # Checked after the last await: the stream is counted before any other can open.
            if self._watch_streams >= self._max_watch_streams:
                raise ResourceExhaustedError(
                    f"this control plane serves {self._max_watch_streams} watch streams "
                    "already; try again later or another address"
                )
            sub = self._view.subscribe(
                Selector.from_proto(request.selector),
                request.since_revision,
                store_id=request.store_id,
            )
            self._metrics.watch_streams.inc()
            return sub.responses((request.progress_interval_ms or DEFAULT_PROGRESS_MS) / 1000)

        stream = await self._call("Watch", context, open_stream)
        if stream is None:
            return
        self._watch_streams += 1
        try:
            async for response in stream:
                yield response
        except Exception as exc:
            self._fail("Watch", context, exc)
        finally:
            self._watch_streams -= 1
            await stream.aclose()  # type: ignore[attr-defined]


def _instance_id(inst: pb.Instance) -> str:
    return inst.id


def _instance_key(inst: pb.Instance) -> str:
    # The order of InstanceView.select; "\x00" sorts below every allowed character.
    return f"{inst.namespace}\x00{inst.service}\x00{inst.id}"


def _service_key(service: pb.Service) -> str:
    return f"{service.namespace}\x00{service.name}"


def _serialize(message: bytes | Message) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


def handler(servicer: RegistryServicer) -> grpc.GenericRpcHandler[Any, Any]:
    """The RegistryService handlers, built from the proto descriptor like the
    generated ``add_…_to_server``, except that responses may also be bytes
    already serialized (the watch fan-out encodes each event once)."""
    service = pb.DESCRIPTOR.services_by_name["RegistryService"]
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        request_type = getattr(pb, method.input_type.name)
        make = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=request_type.FromString,
            response_serializer=_serialize,
        )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
