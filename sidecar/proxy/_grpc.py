"""The gRPC proxy listener: any service and method, every call kind, no generated code.

How: a ``grpc.aio`` server with one generic handler that answers every
method as a bidirectional stream of raw bytes (unary and streaming calls
look the same on the wire), forwarded as such on a ``grpc.aio`` channel to
the picked endpoint:

- a *pump* task copies the request messages to the upstream call, then
  half-closes it; the handler copies back the upstream's initial metadata,
  messages, trailing metadata, status code and details as they arrive.
  Backpressure is gRPC's flow control: a message is read only once the
  previous one was written. The upstream may end the call before the pump
  has written (an unknown method, a handler that fails before reading): the
  write that finds it ended stops the pump and leaves the status alone, so
  the client gets the upstream's own (see :func:`_send`);
- metadata is forwarded (``-bin`` keys too) without the headers gRPC manages
  itself; the deadline is the client's, capped by the policy's ``timeout``
  and by each attempt's ``per_try_timeout``;
- a call is retried on another endpoint (``retries``, the retry budget) on
  UNAVAILABLE (``503`` in ``retry_on``; a connect failure always) or on a
  per-try DEADLINE_EXCEEDED (``504`` in ``retry_on``), only while nothing
  has gone back to the client and every request message sent so far is
  still buffered (up to 64 KiB: unary and server-streaming requests are);
- the client cancelling, or the deadline passing, cancels the upstream call.

The proxy's own statuses are UNAVAILABLE ``no endpoints of upstream X`` and
UNAVAILABLE ``upstream X: circuit open (max_requests N)`` (or
``max_pending``, ``max_connections``): UNAVAILABLE, not RESOURCE_EXHAUSTED,
because clients read it as "try again later or elsewhere".

Outcomes for outlier detection: OK and application statuses (NOT_FOUND …)
are successes; UNAVAILABLE, INTERNAL, UNKNOWN and DATA_LOSS are server
errors, except a failed connect or a broken connection, which the runtime
reports as UNAVAILABLE too, told apart only by the details text;
DEADLINE_EXCEEDED is a timeout when a deadline the proxy set passed (the
client's own deadline says nothing about the endpoint).

Each endpoint has one channel with its own connection: one upstream
connection for ``max_connections``, closed when the endpoint is removed
(after the calls on it) and on drain. A call started while its channel is
not connected is *pending* (``max_pending``) until it connects or fails,
within ``connect_timeout``.

Client connections are accepted by the gRPC runtime, not by the event loop,
so their limits are its options: ``max_connections`` (the policy's own, not
the circuit breaker's) is ``grpc.max_allowed_incoming_connections``, past
which the runtime closes a new connection as it accepts it, and a client
must send its HTTP/2 preface and settings within ``head_timeout``
(``grpc.server_handshake_timeout_ms``; the runtime's default is 120 s). The
runtime has no cap per client address and does not say how many it
refused: ``max_connections_per_ip`` does not apply, and ``/status`` shows
the cap only.

With mutual TLS between sidecars (``sidecar.proxy._mtls``), once the first
trust bundle arrives an inbound listener is fronted by
:class:`~sidecar.proxy._grpc_mesh.GrpcFront` (TLS on the event loop, the
gRPC server on a loopback port) and checks every call
against the intentions: a caller they deny gets PERMISSION_DENIED
``intention denied: …``, on new and open connections alike; an upstream
channel to another sidecar's inbound listener goes through a
:class:`~sidecar.proxy._grpc_mesh.TlsConnector`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, cast

import grpc
import grpc.aio
from grpc._cython import cygrpc  # type: ignore[attr-defined]
from grpc.aio import EOF  # type: ignore[attr-defined]

from sdk.balancer import Endpoint, NoEndpointsError
from sidecar.config import INBOUND_PORT_KEY, ProxyPolicy, split_hostport
from sidecar.proxy._grpc_mesh import GrpcFront, TlsConnector
from sidecar.proxy._listener import Listener
from sidecar.proxy._stats import TargetStats
from sidecar.proxy._target import CircuitOpenError, Outcome, Target

__all__ = ["GrpcListener"]

logger = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[bytes, bytes]
Metadata = tuple[tuple[str, str | bytes], ...]

#: A proxy should never be the smaller message-size limit.
MAX_MESSAGE = 64 * 1024 * 1024
#: Request messages kept for a retry, per call.
REPLAY_LIMIT = 64 * 1024
#: Per-method handlers are cached up to this many method names.
_HANDLER_CACHE = 1024

#: Headers the gRPC runtime writes itself (or that describe one hop).
_HOP_HEADERS = frozenset(
    {"connection", "content-type", "grpc-accept-encoding", "grpc-encoding", "grpc-message"}
    | {"grpc-status", "grpc-timeout", "host", "keep-alive", "proxy-connection", "te"}
    | {"transfer-encoding", "upgrade"}
)
#: The runtime replaces a user-agent given as metadata with its own.
_REQUEST_HOP_HEADERS = _HOP_HEADERS | {"user-agent"}

_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
_DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED
_SERVER_ERRORS = frozenset(
    {_UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
)
#: How the runtime words a connection that broke under a call.
_RESET_DETAILS = ("Stream removed", "Socket closed", "Connection reset", "Received RST_STREAM")


def _filtered(metadata: Any, drop: frozenset[str]) -> Metadata:
    """``(key, value)`` pairs without pseudo-headers and ``drop``."""
    if not metadata:
        return ()
    return tuple((k, v) for k, v in metadata if k[:1] != ":" and k not in drop)


@dataclass(slots=True)
class _Result:
    """How one attempt ended, and whether another endpoint may be tried."""

    code: grpc.StatusCode
    details: str
    trailing: Metadata = ()
    retryable: bool = False


class _Upstream:
    """The channel to one endpoint and the calls in flight on it."""

    __slots__ = ("calls", "channel", "connector", "endpoint_id", "removed")

    def __init__(
        self, endpoint_id: str, channel: grpc.aio.Channel, connector: TlsConnector | None = None
    ) -> None:
        self.endpoint_id = endpoint_id
        self.channel = channel
        #: mutual TLS to another sidecar: the loopback port the channel dials
        self.connector = connector
        self.calls = 0
        self.removed = False

    async def close(self) -> None:
        await self.channel.close(None)
        if self.connector is not None:
            await self.connector.close()


class _Requests:
    """The client's request stream of one call: read once, replayable while small.

    While a retry is still possible every message read is kept, and each read
    from the client runs in its own task: cancelling a ``context.read()``
    would lose the message it was receiving, so an attempt that ends keeps
    the read going for the next one. Once a response has been forwarded (or
    the messages outgrow :data:`REPLAY_LIMIT`) reads are plain awaits.
    """

    __slots__ = (
        "_buffer",
        "_context",
        "_eof",
        "_position",
        "_reading",
        "_size",
        "_stats",
        "replayable",
    )

    def __init__(self, context: Context, stats: TargetStats) -> None:
        self._context = context
        #: every message sent so far can be sent again (no response forwarded yet)
        self.replayable = True
        self._stats = stats
        self._buffer: list[bytes] = []
        self._position = 0
        self._size = 0
        self._eof = False
        self._reading: asyncio.Future[Any] | None = None

    async def next(self) -> bytes | None:
        """The next message for the current attempt; None after the client half-closed."""
        if self._position < len(self._buffer):
            self._position += 1
            return self._buffer[self._position - 1]
        if self._eof:
            return None
        message: object
        if self.replayable:
            if self._reading is None:
                self._reading = asyncio.ensure_future(self._context.read())
            message = await asyncio.shield(self._reading)
            self._reading = None
        elif self._reading is not None:
            reading, self._reading = self._reading, None
            message = await reading
        else:
            message = await self._context.read()
        if message is EOF:
            self._eof = True
            return None
        data = cast(bytes, message)
        self._stats.bytes_received += len(data)
        if self.replayable:
            self._size += len(data)
            if self._size <= REPLAY_LIMIT:
                self._buffer.append(data)
                self._position += 1
            else:
                self.commit()
        return data

    def commit(self) -> None:
        """No more retries: keep only the messages the current attempt has yet to send."""
        self.replayable = False
        del self._buffer[: self._position]
        self._position = 0

    def rewind(self) -> None:
        """A new attempt starts: send every kept message again."""
        self._position = 0

    async def close(self) -> None:
        """Stops a read in progress (the call is over)."""
        if self._reading is not None:
            await _stop(self._reading)
            self._reading = None


async def _stop(task: asyncio.Future[Any]) -> None:
    """Cancels ``task`` and waits for it to end, whatever it ends with."""
    if not task.done():
        task.cancel()
        await asyncio.wait((task,))
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.debug("proxied call helper failed: %r", exc)


class _Connecting:
    """An attempt waiting for its channel to connect: one *pending* request of the target."""

    __slots__ = ("_target",)

    def __init__(self, target: Target) -> None:
        target.begin_pending()  # CircuitOpenError past max_pending
        self._target: Target | None = target

    def done(self) -> None:
        """Connected, failed or given up (idempotent)."""
        if self._target is not None:
            self._target.end_pending()
            self._target = None


async def _send(call: grpc.aio.StreamStreamCall[bytes, bytes], message: bytes) -> bool:
    """Writes one request message to the upstream call; False when the call has ended.

    Not ``call.write()``: when the upstream ends the call while a write is on
    its way (an unknown method is answered as soon as the headers arrive; a
    handler may fail before it reads), the runtime fails the write, and
    ``write()`` then replaces the status the upstream sent with its own
    INTERNAL "Internal error from Core" whenever the failed write is seen
    before that status (grpc/grpc#36066): 2 to 16 % of such calls through one
    proxy or two in tests/integration/proxy/test_grpc_status.py, each counted
    as a server error for ejection. A failed write here leaves the status
    alone, and the response side reads the upstream's.
    """
    try:
        # The call's headers go first (as with write()): once they are sent, or it ended.
        await call.wait_for_connection()
    except grpc.aio.AioRpcError:
        return False
    if call.done():
        return False
    # grpc.aio's own call underneath (private: a grpcio without it gets the
    # public write, with the misreport above, rather than no proxy at all).
    runtime_call = getattr(call, "_cython_call", None)
    if runtime_call is None or not hasattr(runtime_call, "send_serialized_message"):
        try:
            await call.write(message)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            return False
        return True
    try:
        await runtime_call.send_serialized_message(message)
    except cygrpc.ExecuteBatchError:
        # The runtime failed the write: the call is over for writing, and the
        # status that ended it reaches the response side untouched.
        return False
    except asyncio.CancelledError:
        call.cancel()  # the message may or may not have gone: no request with a gap
        raise
    return True


async def _pump(
    requests: _Requests,
    call: grpc.aio.StreamStreamCall[bytes, bytes],
    connecting: _Connecting | None,
) -> None:
    """Copies the client's request messages to the upstream call, then half-closes it."""
    try:
        if connecting is not None:
            try:
                await call.wait_for_connection()
            finally:
                connecting.done()
        while (message := await requests.next()) is not None:
            if not await _send(call, message):
                return  # the upstream call ended: the response side reports how
        # The runtime ends the client's request stream the same way whether the
        # client half-closed or cancelled; a cancel also cancels the handler,
        # normally in the same turn of the loop. Yield once so that it wins and
        # the upstream sees a cancel rather than a complete request (best effort).
        await asyncio.sleep(0)
        await call.done_writing()
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError, cygrpc.ExecuteBatchError):
        pass  # the upstream call ended: the response side reports how
    except Exception:
        # The client's side broke: never let the upstream see a half-close it did not send.
        call.cancel()
        raise


class _Handler(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """Answers every method with the listener's forwarding coroutine."""

    def __init__(self, listener: GrpcListener) -> None:
        self._listener = listener
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            handle = self._listener._handle

            async def forward(requests: object, context: Context) -> None:
                del requests  # read through the context, which survives a retry
                await handle(method, context)

            handler = grpc.stream_stream_rpc_method_handler(forward)
            if len(self._handlers) < _HANDLER_CACHE:
                self._handlers[method] = handler
        return handler


class GrpcListener(Listener):
    """A gRPC proxy listener; see the module docstring for what it forwards and how."""

    protocol = "grpc"

    def __init__(self, name: str, listen: str, target: Target, policy: ProxyPolicy) -> None:
        super().__init__(name, listen, target, policy)
        self._server: grpc.aio.Server | None = None
        #: an inbound listener's TLS front (mutual TLS; see sidecar.proxy._grpc_mesh)
        self._front: GrpcFront | None = None
        #: moving an inbound listener behind its front when the first bundle arrives
        self._switching: asyncio.Task[None] | None = None
        self._started = False
        self._drained: asyncio.Event | None = None
        self._upstreams: dict[str, _Upstream] = {}
        #: removed endpoints' channels with calls still in flight
        self._retired: set[_Upstream] = set()
        #: handler tasks of the calls in flight (owned by the gRPC server; awaited on drain)
        self._calls: set[asyncio.Task[Any]] = set()
        #: channel closes in progress
        self._closing: set[asyncio.Task[None]] = set()
        self._channel_options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            # One connection per channel, so closing a channel closes its connection.
            ("grpc.use_local_subchannel_pool", 1),
            # The proxy retries by itself; no second buffer of every request.
            ("grpc.enable_retries", 0),
            # The runtime's name for the connect timeout.
            ("grpc.min_reconnect_backoff_ms", int(policy.connect_timeout * 1000)),
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", 5000),
            ("grpc.client_idle_timeout_ms", int(policy.idle_timeout * 1000)),
        ]

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._started or self._drained is not None:
            raise RuntimeError(f"{self.name}: a listener starts once, and not after drain")
        self._started = True
        mesh = self.mesh
        fronted = mesh is not None and mesh.mesh.active
        # With mutual TLS, the gRPC server listens on loopback behind its front.
        server, port = await self._grpc_server("127.0.0.1:0" if fronted else self.listen)
        self._server = server
        if mesh is not None and fronted:
            front = GrpcFront(self.name, mesh, ("127.0.0.1", port))
            try:
                port = await front.start(self.host, self.port)
            except OSError as exc:
                await front.close()
                self._server = None
                await server.stop(None)
                raise self._cannot_listen(exc) from exc
            self._front = front
        self._bound(port)
        if mesh is not None and not fronted:
            # Plaintext until the first bundle; then behind a front (see _switch).
            mesh.mesh.on_active(self._activated)

    async def _grpc_server(self, listen: str) -> tuple[grpc.aio.Server, int]:
        policy = self.policy
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_allowed_incoming_connections", policy.max_connections),
                ("grpc.server_handshake_timeout_ms", int(policy.head_timeout * 1000)),
            ]
        )
        server.add_generic_rpc_handlers((_Handler(self),))
        try:
            port = server.add_insecure_port(listen)
        except RuntimeError as exc:
            port, reason = 0, str(exc)
        else:
            reason = "address in use or not valid"
        if port == 0:
            await server.stop(None)
            raise self._cannot_listen(OSError(reason))
        await server.start()
        return server, port

    def _activated(self) -> None:
        if self._drained is None and self._front is None and self._switching is None:
            self._switching = asyncio.get_running_loop().create_task(
                self._switch_logged(), name=f"grpc-mtls:{self.name}"
            )

    async def _switch_logged(self) -> None:
        try:
            await self._switch()
        except Exception:
            logger.exception("%s: could not switch to mutual TLS", self.name)

    async def _switch(self) -> None:
        """The first trust bundle arrived: the gRPC server moves to loopback and a
        TLS front takes its address (connections made meanwhile are refused and
        retried by their clients; the bundle comes right after the session starts,
        before this sidecar's endpoints are known to anyone)."""
        mesh = self.mesh
        assert mesh is not None
        public = split_hostport(self.address, allow_zero=True)[1]
        server, port = await self._grpc_server("127.0.0.1:0")
        old, self._server = self._server, server
        if old is not None:
            await old.stop(1.0)
        front = GrpcFront(self.name, mesh, ("127.0.0.1", port))
        for _ in range(40):
            try:
                await front.start(self.host, public)
            except OSError as exc:
                error = exc
                await asyncio.sleep(0.05)
            else:
                self._front = front
                logger.info("%s: mutual TLS on %s", self.name, self.address)
                return
        logger.error("%s: cannot listen on %s with mutual TLS: %s", self.name, self.address, error)
        await front.close()

    async def drain(self, grace: float) -> None:
        """Stops accepting, lets calls in flight finish within ``grace``, cancels the
        rest, then closes the upstream channels. Idempotent."""
        if self._drained is not None:
            await self._drained.wait()
            return
        self._drained = asyncio.Event()
        if self._switching is not None:
            self._switching.cancel()
            await asyncio.gather(self._switching, return_exceptions=True)
        front = self._front
        try:
            if front is not None:
                front.stop_accepting()
            server, self._server = self._server, None
            if server is not None:
                await server.stop(grace)
            if self._calls:
                # Cancelled handlers still unwind (upstream calls, request reads);
                # one that would not is cut short by closing its channel below.
                await asyncio.wait(self._calls, timeout=1.0)
        finally:
            upstreams = [*self._upstreams.values(), *self._retired]
            self._upstreams.clear()
            self._retired.clear()
            for upstream in upstreams:
                self._close(upstream)
            while self._closing:
                await asyncio.wait(self._closing)
            if front is not None:
                await front.close()
            self._drained.set()

    def status(self) -> dict[str, Any]:
        status = super().status()
        # Enforced by the runtime, which counts nothing it reports (see the module docstring).
        status["connections"] = {
            "open": None,
            "max": self.policy.max_connections,
            "max_per_ip": None,
            "refused": None,
        }
        return status

    def endpoints_removed(self, ids: frozenset[str]) -> None:
        for endpoint_id in ids:
            upstream = self._upstreams.pop(endpoint_id, None)
            if upstream is None:
                continue
            upstream.removed = True
            if upstream.calls:
                self._retired.add(upstream)
            else:
                self._close(upstream)

    def _close(self, upstream: _Upstream) -> None:
        """Closes a channel in the background (calls still on it are cancelled)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # endpoints removed outside the loop: drain closes it
            self._retired.add(upstream)
            return
        self.target.close_connection()
        logger.debug("%s: closing channel to %s", self.name, upstream.endpoint_id)
        task = loop.create_task(upstream.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _upstream(self, endpoint: Endpoint) -> _Upstream:
        upstream = self._upstreams.get(endpoint.id)
        target = self.target
        mesh = target.mesh
        tls = mesh is not None and mesh.active and INBOUND_PORT_KEY in endpoint.metadata
        if upstream is not None and (upstream.connector is not None) != tls:
            # Mutual TLS started (the first bundle): a new channel, through a connector.
            del self._upstreams[endpoint.id]
            upstream.removed = True
            if upstream.calls:
                self._retired.add(upstream)
            else:
                self._close(upstream)
            upstream = None
        if upstream is None:
            target.open_connection()
            host, port = target.dial(endpoint)
            connector = None
            if tls:
                connector = TlsConnector(
                    self.name,
                    (host, port),
                    lambda: target.dial_tls(endpoint),
                    target.check_tls,
                    self.policy.connect_timeout,
                )
                host, port = "127.0.0.1", connector.port
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            channel = grpc.aio.insecure_channel(address, options=self._channel_options)
            upstream = self._upstreams[endpoint.id] = _Upstream(endpoint.id, channel, connector)
        upstream.calls += 1
        return upstream

    def _done_with(self, upstream: _Upstream) -> None:
        upstream.calls -= 1
        if upstream.removed and not upstream.calls and upstream in self._retired:
            self._retired.discard(upstream)
            self._close(upstream)

    # -- one call -----------------------------------------------------------------------

    async def _handle(self, method: str, context: Context) -> None:
        """Forwards one call; the status the client sees is set on ``context``."""
        task = asyncio.current_task()
        assert task is not None
        target = self.target
        front = self._front
        if front is not None:
            decision = front.decide(context.peer())
            if not decision.allowed:
                target.stats.errors["intention_denied"] += 1
                self._finish(
                    context,
                    _Result(
                        grpc.StatusCode.PERMISSION_DENIED, f"intention denied: {decision.reason}"
                    ),
                )
                return
        try:
            target.begin_request()
        except CircuitOpenError as exc:
            self._finish(context, _circuit_open(exc))
            return
        self._calls.add(task)
        try:
            self._finish(context, await self._forward(method, context))
        finally:
            self._calls.discard(task)
            target.end_request()

    def _finish(self, context: Context, result: _Result) -> None:
        self.target.stats.responses[result.code.name] += 1
        if result.trailing:
            context.set_trailing_metadata(result.trailing)
        if result.code is not grpc.StatusCode.OK:
            context.set_code(result.code)
            context.set_details(result.details)

    async def _forward(self, method: str, context: Context) -> _Result:
        target = self.target
        policy = self.policy
        loop = asyncio.get_running_loop()
        metadata = _filtered(context.invocation_metadata(), _REQUEST_HOP_HEADERS)
        # The call's deadline: the client's, capped by the policy's timeout.
        remaining = context.time_remaining()
        client_binding = remaining is not None
        if policy.timeout > 0 and (remaining is None or policy.timeout < remaining):
            remaining, client_binding = policy.timeout, False
        deadline = None if remaining is None else loop.time() + remaining
        requests = _Requests(context, target.stats)
        tried: list[str] = []
        retrying = False
        try:
            while True:
                try:
                    endpoint = target.pick(exclude=tried)
                except NoEndpointsError:
                    return _Result(_UNAVAILABLE, f"no endpoints of upstream {target.name}")
                tried.append(endpoint.id)
                result = await self._attempt(
                    method, endpoint, metadata, deadline, client_binding, requests, context
                )
                if retrying:
                    retrying = False
                    target.end_retry()
                if not (
                    result.retryable
                    and requests.replayable
                    and len(tried) <= policy.retries
                    and (deadline is None or loop.time() < deadline)
                    and target.allow_retry()
                ):
                    return result
                retrying = True
                requests.rewind()
        finally:
            if retrying:
                target.end_retry()
            await requests.close()

    async def _attempt(
        self,
        method: str,
        endpoint: Endpoint,
        metadata: Metadata,
        deadline: float | None,
        client_binding: bool,
        requests: _Requests,
        context: Context,
    ) -> _Result:
        target = self.target
        try:
            upstream = self._upstream(endpoint)
        except CircuitOpenError as exc:
            target.release(endpoint, latency=0.0, outcome=Outcome.CANCELLED)
            return _circuit_open(exc)
        loop = asyncio.get_running_loop()
        started = loop.time()
        first: float | None = None
        outcome = Outcome.CANCELLED
        connecting: _Connecting | None = None
        call: grpc.aio.StreamStreamCall[bytes, bytes] | None = None
        pump: asyncio.Task[None] | None = None
        try:
            if upstream.channel.get_state() is not grpc.ChannelConnectivity.READY:
                try:
                    connecting = _Connecting(target)
                except CircuitOpenError as exc:
                    return _circuit_open(exc)
            timeout = self.policy.per_try_timeout
            per_try = timeout is not None
            if deadline is not None and (timeout is None or deadline - started <= timeout):
                timeout, per_try = max(deadline - started, 0.0), False
            call = upstream.channel.stream_stream(method, None, None)(
                None, timeout=timeout, metadata=metadata, wait_for_ready=False
            )
            pump = loop.create_task(
                _pump(requests, call, connecting), name=f"grpc-proxy-pump:{self.name}"
            )
            stats = target.stats
            try:
                initial = await call.initial_metadata()
                if initial:
                    first = loop.time()
                    requests.commit()
                    await context.send_initial_metadata(_filtered(initial, _HOP_HEADERS))
                while (message := await call.read()) is not EOF:
                    if first is None:
                        first = loop.time()
                        requests.commit()
                    data = cast(bytes, message)
                    stats.bytes_sent += len(data)
                    await context.write(data)
            except grpc.aio.AioRpcError as error:
                code = error.code()
                details = error.details() or ""
                trailing: Any = error.trailing_metadata()
            else:
                code = grpc.StatusCode.OK
                details = await call.details()
                trailing = await call.trailing_metadata()
            expired = timeout is not None and loop.time() - started >= timeout - 0.005
            if code is not _DEADLINE:
                outcome = _outcome(code, details)
            elif not expired:  # the application's own status
                outcome = Outcome.SUCCESS
            else:  # the client's own deadline says nothing about the endpoint
                outcome = Outcome.TIMEOUT if per_try or not client_binding else Outcome.CANCELLED
            retry_on = self.policy.retry_on
            retryable = first is None and (
                outcome is Outcome.CONNECT_FAILURE
                or (code is _UNAVAILABLE and 503 in retry_on)
                or (code is _DEADLINE and expired and per_try and 504 in retry_on)
            )
            return _Result(code, details, _filtered(trailing, _HOP_HEADERS), retryable)
        finally:
            if call is not None and not call.done():
                call.cancel()
            if connecting is not None:
                connecting.done()
            self._done_with(upstream)
            target.release(endpoint, latency=(first or loop.time()) - started, outcome=outcome)
            if pump is not None:
                await _stop(pump)


def _circuit_open(exc: CircuitOpenError) -> _Result:
    return _Result(_UNAVAILABLE, f"upstream {exc.target}: circuit open ({exc.limit} {exc.value})")


def _outcome(code: grpc.StatusCode, details: str) -> Outcome:
    """What a call's status (other than DEADLINE_EXCEEDED) says about the endpoint."""
    if code in _SERVER_ERRORS:
        if code is _UNAVAILABLE:
            if details.startswith("failed to connect"):
                return Outcome.CONNECT_FAILURE
            if details.startswith(_RESET_DETAILS):
                return Outcome.RESET
        return Outcome.SERVER_ERROR
    if code is grpc.StatusCode.CANCELLED:
        return Outcome.CANCELLED
    return Outcome.SUCCESS
