"""What a proxyless channel hands to generated stubs: multicallables and calls.

Every method of a generated stub is a multicallable made once by
``channel.unary_unary(path, ...)`` (or one of the three streaming kinds).
Here each one picks an endpoint *per call* through the :class:`EndpointPool` and
runs the call on that endpoint's own channel:

- **unary-unary**: a call object that runs its attempts when awaited. An
  attempt that ends UNAVAILABLE is retried on another endpoint when the
  method is idempotent, or whatever the method when the request provably
  never left this process (the connection could not be made); at most
  ``max_attempts`` attempts, all within the call's deadline. Every attempt
  is released to the balancer with its latency and whether the endpoint
  failed.
- **streaming**: one pick, no retry. When endpoints are known the stub gets
  the endpoint channel's own call object, untouched; before the first
  endpoint list (or with ``wait_for_ready`` and nothing to pick) it gets a
  deferred call that picks on first use.

The retry decision and the values calls share are in
``sdk.proxyless._policy``; the deferred streaming call in
``sdk.proxyless._stream``.

Errors from backends reach the caller as gRPC raised them (``grpc.RpcError``):
the status codes are the application's, not the SDK's. The channel's own
failures are SDK errors: :class:`~sdk.NoEndpointsError` when there is
nothing to route to, :class:`~sdk.ClientClosedError` after ``close()``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Generator
from typing import Any

import grpc
import grpc.aio

from sdk._errors import EcoError
from sdk.balancer import Endpoint, NoEndpointsError
from sdk.proxyless._policy import (
    ENDPOINT_FAILURES,
    CallOptions,
    CallPolicy,
    code_of,
    never_sent,
    rpc_status,
    should_retry,
)
from sdk.proxyless._pool import Connection, EndpointPool
from sdk.proxyless._stream import DeferredStreamCall

__all__ = [
    "MultiCallable",
    "StreamStreamMultiCallable",
    "StreamUnaryMultiCallable",
    "UnaryStreamMultiCallable",
    "UnaryUnaryCall",
    "UnaryUnaryMultiCallable",
]

logger = logging.getLogger(__name__)

_UNARY_UNARY = "unary_unary"
_UNARY_STREAM = "unary_stream"
_STREAM_UNARY = "stream_unary"
_STREAM_STREAM = "stream_stream"


class MultiCallable:
    """One method of a proxyless channel; the four kinds below add ``__call__``
    with the signature of grpc.aio's own. Made by the channel's
    ``unary_unary()`` … ``stream_stream()`` for a generated stub."""

    #: the grpc.aio channel method that makes this kind ("unary_unary", ...)
    kind = ""

    __slots__ = (
        "_deserializer",
        "_idempotent",
        "_method",
        "_policy",
        "_pool",
        "_registered",
        "_serializer",
    )

    def __init__(
        self,
        pool: EndpointPool,
        policy: CallPolicy,
        method: str,
        request_serializer: Callable[[Any], bytes] | None,
        response_deserializer: Callable[[bytes], Any] | None,
        registered: bool | None,
    ) -> None:
        self._pool = pool
        self._policy = policy
        self._method = method
        self._serializer = request_serializer
        self._deserializer = response_deserializer
        self._registered = registered
        self._idempotent = policy.idempotent(method)

    @property
    def method(self) -> str:
        return self._method

    @property
    def idempotent(self) -> bool:
        return self._idempotent

    @property
    def pool(self) -> EndpointPool:
        return self._pool

    def __repr__(self) -> str:
        return f"<{self.kind} {self._method} via {self._pool.label}>"

    def _stream(self, request: Any, options: CallOptions) -> Any:
        pool = self._pool
        if pool.ready and not pool.closed:
            try:
                endpoint, connection = pool.pick(self._policy.key_of(options.metadata))
            except NoEndpointsError:
                pass  # the deferred call waits (wait_for_ready) or raises on first use
            else:
                return self.start(endpoint, connection, request, options, options.timeout)
        return DeferredStreamCall(self, request, options)

    def inner(self, connection: Connection) -> Any:
        """The endpoint channel's own multicallable for this method (cached)."""
        inner = connection.inner.get(self)
        if inner is None:
            make = getattr(connection.channel, self.kind)
            inner = make(
                self._method,
                request_serializer=self._serializer,
                response_deserializer=self._deserializer,
                _registered_method=self._registered,
            )
            connection.inner[self] = inner
        return inner

    def start(
        self,
        endpoint: Endpoint,
        connection: Connection,
        request: Any,
        options: CallOptions,
        timeout: float | None,
    ) -> Any:
        """Starts a streaming call on a picked endpoint; released when it ends."""
        pool = self._pool
        try:
            call = self.inner(connection)(
                request,
                timeout=timeout,
                metadata=options.metadata,
                credentials=options.credentials,
                wait_for_ready=options.wait_for_ready,
                compression=options.compression,
            )
        except BaseException:
            pool.release(endpoint, connection)
            raise
        # A stream's duration says nothing about the endpoint's speed: only the
        # in-flight count is fed back.
        call.add_done_callback(lambda _call: pool.release(endpoint, connection))
        return call

    async def pick_for(
        self, metadata: Any, options: CallOptions, deadline: float | None
    ) -> tuple[Endpoint, Connection]:
        """Waits for endpoints as the options allow and picks one."""
        pool = self._pool
        if not pool.ready:
            await pool.wait_ready(deadline, self._policy.resolve_timeout)
        key = self._policy.key_of(metadata)
        if options.wait_for_ready:
            return await pool.pick_waiting(key, deadline)
        return pool.pick(key)


class UnaryUnaryMultiCallable(MultiCallable):
    """``stub.Method(request, ...)`` for a unary method: a :class:`UnaryUnaryCall`."""

    __slots__ = ()
    kind = _UNARY_UNARY

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> UnaryUnaryCall:
        options = CallOptions(timeout, metadata, credentials, wait_for_ready, compression)
        return UnaryUnaryCall(self, request, options)


class UnaryStreamMultiCallable(MultiCallable):
    """``stub.Method(request, ...)`` for a server-streaming method."""

    __slots__ = ()
    kind = _UNARY_STREAM

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        options = CallOptions(timeout, metadata, credentials, wait_for_ready, compression)
        return self._stream(request, options)


class StreamUnaryMultiCallable(MultiCallable):
    """``stub.Method(request_iterator, ...)`` for a client-streaming method."""

    __slots__ = ()
    kind = _STREAM_UNARY

    def __call__(
        self,
        request_iterator: Any = None,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        options = CallOptions(timeout, metadata, credentials, wait_for_ready, compression)
        return self._stream(request_iterator, options)


class StreamStreamMultiCallable(MultiCallable):
    """``stub.Method(request_iterator, ...)`` for a bidirectional-streaming method."""

    __slots__ = ()
    kind = _STREAM_STREAM

    def __call__(
        self,
        request_iterator: Any = None,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        options = CallOptions(timeout, metadata, credentials, wait_for_ready, compression)
        return self._stream(request_iterator, options)


class UnaryUnaryCall:
    """A unary call through a proxyless channel: ``await`` it for the response.

    Attempts run when the call is first awaited (or when ``code()``,
    ``details()`` or the metadata are awaited), not when it is made. The
    status and metadata methods report the last attempt, after the call
    ends. ``endpoint`` is the endpoint of the last attempt and ``attempts``
    how many were made.
    """

    __slots__ = (
        "_attempt",
        "_attempts",
        "_callbacks",
        "_cancel_requested",
        "_deadline",
        "_done_event",
        "_endpoint",
        "_error",
        "_options",
        "_owner",
        "_request",
        "_response",
        "_state",
    )

    def __init__(self, owner: MultiCallable, request: Any, options: CallOptions) -> None:
        self._owner = owner
        self._request = request
        self._options = options
        timeout = options.timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._state = 0  # 0 new, 1 running, 2 done
        self._response: Any = None
        self._error: BaseException | None = None
        self._attempt: Any = None
        self._attempts = 0
        self._endpoint: Endpoint | None = None
        self._cancel_requested = False
        self._done_event: asyncio.Event | None = None
        self._callbacks: list[Callable[[Any], None]] = []

    @property
    def endpoint(self) -> Endpoint | None:
        return self._endpoint

    @property
    def attempts(self) -> int:
        return self._attempts

    def __await__(self) -> Generator[Any, None, Any]:
        return self._result().__await__()

    async def _result(self) -> Any:
        if self._state == 0:
            self._state = 1
            try:
                self._response = await self._run()
            except BaseException as exc:
                self._error = exc
                raise
            finally:
                self._finish()
            return self._response
        if self._state == 1:
            if self._done_event is None:
                self._done_event = asyncio.Event()
            await self._done_event.wait()
        if self._error is not None:
            raise self._error
        return self._response

    def _finish(self) -> None:
        self._state = 2
        if self._done_event is not None:
            self._done_event.set()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)

    async def _run(self) -> Any:
        owner = self._owner
        pool = owner._pool
        policy = owner._policy
        options = self._options
        deadline = self._deadline
        if pool.ready and not options.wait_for_ready:
            endpoint, connection = pool.pick(policy.key_of(options.metadata))
        else:
            endpoint, connection = await owner.pick_for(options.metadata, options, deadline)
        tried: list[str] = []
        last_error: grpc.RpcError | None = None
        delay = 0.0
        reuses = 0
        while True:
            self._endpoint = endpoint
            expired = False
            started = 0.0
            try:
                if delay:
                    await asyncio.sleep(delay)
                if self._cancel_requested:
                    raise asyncio.CancelledError()
                remaining = None if deadline is None else deadline - time.monotonic()
                if last_error is not None and remaining is not None and remaining <= 0:
                    expired = True  # no time left for a retry: the last error stands
                else:
                    self._attempts += 1
                    started = time.monotonic()
                    call = owner.inner(connection)(
                        self._request,
                        timeout=None if remaining is None else max(0.0, remaining),
                        metadata=options.metadata,
                        credentials=options.credentials,
                        wait_for_ready=options.wait_for_ready,
                        compression=options.compression,
                    )
                    self._attempt = call
                    response = await call
            except grpc.RpcError as err:
                code, details = rpc_status(err)
                pool.release(
                    endpoint,
                    connection,
                    latency=time.monotonic() - started,
                    failed=code in ENDPOINT_FAILURES,
                )
                if never_sent(code, details):
                    pool.eject_unreachable(endpoint)
                if (
                    self._attempts >= policy.max_attempts
                    or self._cancel_requested
                    or not should_retry(code, details, idempotent=owner._idempotent)
                ):
                    raise
                last_error = err
            except BaseException:
                pool.release(endpoint, connection)
                raise
            else:
                if expired and last_error is not None:
                    pool.release(endpoint, connection)
                    raise last_error
                pool.release(endpoint, connection, latency=time.monotonic() - started)
                return response
            # Retrying: on an endpoint not tried yet if the balancer has one,
            # else on a tried one after a jittered pause.
            tried.append(endpoint.id)
            try:
                endpoint, connection, fresh = pool.pick_other(
                    policy.key_of(options.metadata), tried
                )
            except NoEndpointsError:
                raise last_error from None
            delay = 0.0
            if not fresh:
                delay = policy.reuse_delay(reuses)
                reuses += 1
                if deadline is not None:
                    delay = min(delay, max(0.0, deadline - time.monotonic()))
            logger.debug(
                "%s %s: attempt %d failed (%s); retrying on %s",
                pool.label,
                owner._method,
                self._attempts,
                details,
                endpoint.id,
            )

    # -- the grpc.aio call surface ----------------------------------------------

    def cancel(self) -> bool:
        """Cancels the call: the attempt in flight, and any later one."""
        if self._state == 2:
            return False
        self._cancel_requested = True
        if self._state == 0:
            self._error = asyncio.CancelledError()
            self._finish()
            return True
        if self._attempt is not None:
            self._attempt.cancel()
        return True

    def cancelled(self) -> bool:
        return self._state == 2 and isinstance(self._error, asyncio.CancelledError)

    def done(self) -> bool:
        return self._state == 2

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._state == 2:
            callback(self)
        else:
            self._callbacks.append(callback)

    async def _settle(self) -> None:
        try:
            await self._result()
        except asyncio.CancelledError:
            if not self._cancel_requested:
                raise
        except Exception:
            pass  # reported by code() / details(), as a grpc call does

    async def code(self) -> grpc.StatusCode:
        await self._settle()
        if self._attempt is not None and not isinstance(self._error, EcoError):
            return await self._attempt.code()  # type: ignore[no-any-return]
        return code_of(self._error)

    async def details(self) -> str:
        await self._settle()
        if self._attempt is not None and not isinstance(self._error, EcoError):
            return await self._attempt.details()  # type: ignore[no-any-return]
        return "" if self._error is None else str(self._error)

    async def initial_metadata(self) -> grpc.aio.Metadata:
        await self._settle()
        if self._attempt is None:
            return grpc.aio.Metadata()
        return await self._attempt.initial_metadata()  # type: ignore[no-any-return]

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        await self._settle()
        if self._attempt is None:
            return grpc.aio.Metadata()
        return await self._attempt.trailing_metadata()  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        state = ("new", "running", "done")[self._state]
        return f"<UnaryUnaryCall {self._owner.method} {state} attempts={self._attempts}>"
