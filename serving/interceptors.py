"""Server interceptors that wrap each method's handler, once.

gRPC asks an interceptor for the handler of every call. The servers here
wrap the handler (to check a token, to guard the request decoder), and a
wrapped handler is built once per method and reused for as long as gRPC
hands the same handler back.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

__all__ = ["WrappingInterceptor"]

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]


class WrappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps each method's handler with :meth:`wrap`, once per method and handler."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self.wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    @abc.abstractmethod
    def wrap(self, method: str, handler: Handler) -> Handler:
        """``handler`` of ``method``, wrapped."""
