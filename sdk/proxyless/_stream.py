"""A streaming call made through a proxyless channel before it could be routed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Generator
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from sdk.proxyless._policy import CallOptions, code_of

if TYPE_CHECKING:
    from sdk.proxyless._calls import MultiCallable

__all__ = ["DeferredStreamCall"]


class DeferredStreamCall:
    """A streaming call made before it could be routed; it picks on first use.

    Returned instead of the endpoint channel's own call before the first
    endpoint list, or while nothing can be picked. Iterating it,
    ``read()``, ``write()``, ``done_writing()``, awaiting it (stream-unary)
    or asking for its status first waits for endpoints (bounded by the
    call's timeout, or ``resolve_timeout``; with ``wait_for_ready`` until
    one can be picked), then starts the real call and delegates to it.
    """

    def __init__(self, owner: MultiCallable, request: Any, options: CallOptions) -> None:
        self._owner = owner
        self._request = request
        self._options = options
        timeout = options.timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._real: Any = None
        self._error: BaseException | None = None
        self._cancelled = False
        self._lock = asyncio.Lock()
        self._callbacks: list[Callable[[Any], None]] = []

    async def _call(self) -> Any:
        if self._real is not None:
            return self._real
        async with self._lock:
            if self._real is None:
                if self._error is not None:
                    raise self._error
                try:
                    self._real = await self._start()
                except BaseException as exc:
                    self._error = exc
                    callbacks, self._callbacks = self._callbacks, []
                    for callback in callbacks:
                        callback(self)
                    raise
                for callback in self._callbacks:
                    self._real.add_done_callback(lambda _call, cb=callback: cb(self))
                self._callbacks = []
        return self._real

    async def _start(self) -> Any:
        if self._cancelled:
            raise asyncio.CancelledError()
        owner = self._owner
        endpoint, connection = await owner.pick_for(
            self._options.metadata, self._options, self._deadline
        )
        if self._cancelled:
            owner.pool.release(endpoint, connection)
            raise asyncio.CancelledError()
        remaining = None
        if self._deadline is not None:
            remaining = max(0.0, self._deadline - time.monotonic())
        return owner.start(endpoint, connection, self._request, self._options, remaining)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        real = await self._call()
        async for item in real:
            yield item

    def __await__(self) -> Generator[Any, None, Any]:
        return self._response().__await__()

    async def _response(self) -> Any:
        real = await self._call()
        return await real

    async def read(self) -> Any:
        return await (await self._call()).read()

    async def write(self, request: Any) -> None:
        await (await self._call()).write(request)

    async def done_writing(self) -> None:
        await (await self._call()).done_writing()

    async def wait_for_connection(self) -> None:
        await (await self._call()).wait_for_connection()

    def cancel(self) -> bool:
        if self._real is not None:
            return bool(self._real.cancel())
        if self._error is not None or self._cancelled:
            return False
        self._cancelled = True
        return True

    def cancelled(self) -> bool:
        if self._real is not None:
            return bool(self._real.cancelled())
        return self._cancelled or isinstance(self._error, asyncio.CancelledError)

    def done(self) -> bool:
        if self._real is not None:
            return bool(self._real.done())
        return self._error is not None

    def time_remaining(self) -> float | None:
        if self._real is not None:
            return self._real.time_remaining()  # type: ignore[no-any-return]
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._real is not None:
            self._real.add_done_callback(lambda _call: callback(self))
        elif self._error is not None:
            callback(self)
        else:
            self._callbacks.append(callback)

    async def _settled_real(self) -> Any:
        try:
            return await self._call()
        except asyncio.CancelledError:
            if not self._cancelled:
                raise
            return None
        except Exception:
            return None

    async def code(self) -> grpc.StatusCode:
        real = await self._settled_real()
        if real is None:
            return code_of(self._error or asyncio.CancelledError())
        return await real.code()  # type: ignore[no-any-return]

    async def details(self) -> str:
        real = await self._settled_real()
        if real is None:
            return "" if self._error is None else str(self._error)
        return await real.details()  # type: ignore[no-any-return]

    async def initial_metadata(self) -> grpc.aio.Metadata:
        real = await self._settled_real()
        if real is None:
            return grpc.aio.Metadata()
        return await real.initial_metadata()  # type: ignore[no-any-return]

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        real = await self._settled_real()
        if real is None:
            return grpc.aio.Metadata()
        return await real.trailing_metadata()  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"<DeferredStreamCall {self._owner.method} started={self._real is not None}>"
