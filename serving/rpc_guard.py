"""A request that is not a valid protobuf message is INVALID_ARGUMENT, on every service.

Left to itself, gRPC answers a request it cannot decode with UNKNOWN and the
Python exception text, logs a traceback, and hands a streaming handler
nothing it can check. :class:`MalformedRequestGuard` is a server interceptor
that wraps each method's request decoder once: a message that does not
decode becomes a marker instead of an exception, and the method's handler is
wrapped so that the marker never reaches the servicer — a unary call ends
with INVALID_ARGUMENT (naming the message type, with no exception text), and
on a client stream the malformed message ends the stream the same way (the
servicer sees the stream end).

Used by every gRPC server of the project (the control plane, the sidecar's
local API). It lives beside the bus servicer, the piece of the control plane
the sidecar serves too, so that the sidecar can use it without importing the
rest of the control plane.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from serving.interceptors import WrappingInterceptor

__all__ = ["MalformedRequestGuard"]

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]


class _Malformed:
    """What the guarded decoder returns for bytes that are not a message."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _message_name(deserializer: Callable[[bytes], Any]) -> str:
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "") or "request")


def _refuse(context: grpc.aio.ServicerContext[Any, Any], name: str, bad: _Malformed) -> None:
    message = f"the request is not a valid {name} message"
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field="", description=f"{message} ({bad.reason})"
                )
            ]
        )
    )
    status = rpc_status.to_status(
        status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message, details=[detail])
    )
    context.set_code(status.code)
    context.set_details(status.details)
    context.set_trailing_metadata(status.trailing_metadata)


def _decoder(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:  # DecodeError, or whatever a custom decoder raises
            log.info("refused a request that does not decode: %s", type(exc).__name__)
            return _Malformed(type(exc).__name__)

    return decode


class _GuardedContext:
    """The servicer's context on a client stream: a malformed message read
    from it ends the call with INVALID_ARGUMENT and reads as the end of the
    stream."""

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any], name: str) -> None:
        self._context = context
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._context, attribute)

    async def read(self) -> Any:
        message = await self._context.read()
        if type(message) is _Malformed:
            _refuse(self._context, self._name, message)
            return grpc.aio.EOF  # type: ignore[attr-defined]
        return message


async def _checked(
    requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any], name: str
) -> AsyncIterator[Any]:
    async for message in requests:
        if type(message) is _Malformed:
            _refuse(context, name, message)
            return
        yield message


def _guard(handler: Handler) -> Handler:
    deserializer = handler.request_deserializer
    if deserializer is None:
        return handler
    name = _message_name(deserializer)
    decode = _decoder(deserializer)
    serialize = handler.response_serializer

    def unary(behavior: Any) -> Any:
        """``behavior`` (a coroutine taking one request) behind the check."""

        async def call(request: Any, context: Any) -> Any:
            if type(request) is _Malformed:
                _refuse(context, name, request)
                return None
            return await behavior(request, context)

        return call

    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), decode, serialize)
    if handler.unary_stream is not None:
        behavior_us: Any = handler.unary_stream
        if not inspect.isasyncgenfunction(behavior_us):  # writes through the context
            return grpc.unary_stream_rpc_method_handler(unary(behavior_us), decode, serialize)

        async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            if type(request) is _Malformed:
                _refuse(context, name, request)
                return
            async for response in behavior_us(request, context):
                yield response

        return grpc.unary_stream_rpc_method_handler(unary_stream, decode, serialize)
    if handler.stream_unary is not None:
        behavior_su: Any = handler.stream_unary

        async def stream_unary(requests: Any, context: Any) -> Any:
            guarded = _GuardedContext(context, name)
            return await behavior_su(_checked(requests, context, name), guarded)

        return grpc.stream_unary_rpc_method_handler(stream_unary, decode, serialize)
    behavior_ss: Any = handler.stream_stream
    assert behavior_ss is not None

    async def stream_stream(requests: Any, context: Any) -> Any:
        guarded = _GuardedContext(context, name)
        result = behavior_ss(_checked(requests, context, name), guarded)
        if hasattr(result, "__aiter__"):
            async for response in result:
                await context.write(response)
            return None
        return await result

    return grpc.stream_stream_rpc_method_handler(stream_stream, decode, serialize)


class MalformedRequestGuard(WrappingInterceptor):
    """The interceptor (see the module docstring); method handlers are wrapped
    once each and reused."""

    def wrap(self, method: str, handler: Handler) -> Handler:
        return _guard(handler)
