"""The TCP proxy listener: each accepted connection is spliced to one upstream endpoint.

Per downstream connection (the application, or a remote sidecar on an
inbound listener) the listener admits it through its connection gate
(``max_connections``, ``max_connections_per_ip``: its address is looked up
and counted) and the target's circuit breaker (``max_requests`` counts
connections, ``max_pending`` connections still connecting), picks an
endpoint and connects within ``connect_timeout``. A refused or timed-out connect is released as a
failure (outlier detection counts it) and retried on another endpoint, up
to ``retries`` times as the retry budget allows. Once connected, bytes are
forwarded both ways by two :class:`asyncio.Protocol` objects that write
each chunk straight into the other side's transport.

Failing to forward (over a connection cap, circuit open, no endpoint, every
connect failed) resets the downstream connection (``SO_LINGER 0``, an RST) so the client sees an
error at once rather than an empty but clean stream; a reset from the
upstream is passed on the same way. A clean end (FIN) is passed on as a
half-close: ``write_eof`` on the other side, which keeps sending until it
closes too.

Memory is bounded: bytes the client sends while the upstream is still
connecting are buffered up to ``HIGH_WATER`` and reading then pauses; after
that, when one side's write buffer passes ``HIGH_WATER`` (its protocol's
``pause_writing``), reading pauses on the other side until it drains.

Idle connections are closed by one sweep per listener, every tenth of
``idle_timeout`` (at most 5 s): each protocol counts the bytes it forwards
and the sweep compares the count with the last one it saw, so a connection
closes between ``idle_timeout`` and ``idle_timeout`` plus two sweeps after
its last byte, and the hot path costs one addition, no clock reads or timers.

Each connection is released to the balancer once, when it ends, with the
connect time as its latency (the connection's lifetime says nothing about
the endpoint): ``SUCCESS``, or ``RESET`` if the upstream reset it. Counted
per target: ``bytes_received`` / ``bytes_sent`` (added to the target's counters
by the sweep and when a connection ends), and per finished
connection ``responses["closed"]`` (forwarded, ended normally),
``responses["reset"]`` (the upstream reset it), ``responses["idle_timeout"]``,
``responses["unavailable"]`` (could not be forwarded),
``responses["intention_denied"]`` (an inbound listener's caller is not
allowed, at the handshake or after an intention changed) or
``responses["cancelled"]`` (the client left while connecting).

With mutual TLS (``sidecar.proxy._mtls``), an inbound listener's
connections are TLS and its caller is checked against the intentions when
the connection is made and again whenever they change: a denied caller's
connection is reset. An upstream dialling another sidecar's inbound
listener connects over TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import struct
from typing import Any, cast

from sdk.balancer import Endpoint, NoEndpointsError
from sidecar.config import ProxyPolicy
from sidecar.proxy._listener import Listener
from sidecar.proxy._mtls import HANDSHAKE_TIMEOUT
from sidecar.proxy._target import CircuitOpenError, Outcome, Target

__all__ = ["HIGH_WATER", "TcpListener"]

logger = logging.getLogger(__name__)

#: The write-buffer high-water mark of every proxied transport (and the cap on
#: bytes buffered from a client while connecting); the low-water mark is a quarter.
HIGH_WATER = 64 * 1024

_LINGER_RESET = struct.pack("ii", 1, 0)
_SWEEP_MAX = 5.0


def _tune(transport: asyncio.BaseTransport) -> None:
    """TCP_NODELAY and our write-buffer limits on a fresh transport."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    cast(asyncio.Transport, transport).set_write_buffer_limits(high=HIGH_WATER)


def _reset(transport: asyncio.BaseTransport) -> None:
    """Closes with an RST (SO_LINGER 0), dropping whatever is buffered."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    cast(asyncio.Transport, transport).abort()


class TcpListener(Listener):
    """Forwards TCP connections to the target's endpoints; see the module docstring.

    ``start()`` binds (``StartupError`` when it cannot); ``drain(grace)``
    stops accepting at once, lets open connections finish for up to
    ``grace`` seconds and then aborts the rest. Removing an endpoint from
    the target leaves connections to it open until they end; only new
    connections avoid it (the balancer no longer picks it).
    """

    protocol = "tcp"

    def __init__(self, name: str, listen: str, target: Target, policy: ProxyPolicy) -> None:
        super().__init__(name, listen, target, policy)
        self._server: asyncio.Server | None = None
        self._state = "new"  # new → serving → draining → closed
        self._conns: set[_Downstream] = set()
        #: connect tasks, one per connection still connecting
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._all_closed: asyncio.Event | None = None
        self._drained: asyncio.Event | None = None

    async def start(self) -> None:
        if self._state != "new":
            raise RuntimeError(f"{self.name}: a TCP listener starts once (it is {self._state})")
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                self.protocol_factory(functools.partial(_Downstream, self)),
                self.host or None,
                self.port,
                reuse_address=True,
                backlog=1024,
            )
        except OSError as exc:
            raise self._cannot_listen(exc) from exc
        self._server = server
        self._state = "serving"
        self._bound(server.sockets[0].getsockname()[1])
        self._sweeper = loop.create_task(self._sweep(), name=f"tcp-idle-sweep:{self.name}")
        logger.info("tcp listener %s on %s", self.name, self.address)

    async def drain(self, grace: float) -> None:
        if self._state == "new":
            self._state = "closed"
            return
        if self._state != "serving":
            if self._drained is not None:
                await self._drained.wait()
            return
        self._state = "draining"
        self._drained = asyncio.Event()
        try:
            assert self._server is not None
            self._server.close()
            if self._conns and grace > 0:
                await self._wait_closed(grace)
            if self._conns:
                logger.info(
                    "tcp listener %s: closing %d connection(s) left after the grace period",
                    self.name,
                    len(self._conns),
                )
                for conn in list(self._conns):
                    conn.abort()
            tasks = [*self._tasks, *([self._sweeper] if self._sweeper else [])]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # The aborted transports report connection_lost on the next loop turns.
            if self._conns:
                await self._wait_closed(1.0)
            await self._server.wait_closed()
        except BaseException:
            # Cancelled mid-drain: close everything now rather than leave it open.
            for conn in list(self._conns):
                conn.abort()
            for task in [*self._tasks, *([self._sweeper] if self._sweeper else [])]:
                task.cancel()
            raise
        finally:
            self._state = "closed"
            self._drained.set()

    async def _wait_closed(self, timeout: float) -> None:
        self._all_closed = asyncio.Event()
        try:
            async with asyncio.timeout(timeout):
                await self._all_closed.wait()
        except TimeoutError:
            pass
        finally:
            self._all_closed = None

    def _forget(self, conn: _Downstream) -> None:
        self._conns.discard(conn)
        if not self._conns and self._all_closed is not None:
            self._all_closed.set()

    async def _sweep(self) -> None:
        """Closes connections that carried nothing for ``idle_timeout``."""
        idle_timeout = self.policy.idle_timeout
        interval = min(max(idle_timeout / 10, 0.01), _SWEEP_MAX)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            idle: list[_Downstream] = []
            for conn in self._conns:
                up = conn.up
                if up is None:
                    continue  # still connecting: connect_timeout applies
                if conn.nbytes != conn.counted_in or up.nbytes != conn.counted_out:
                    conn.count_bytes()
                    conn.idle_since = now
                elif now - conn.idle_since >= idle_timeout:
                    idle.append(conn)
            for conn in idle:
                logger.debug(
                    "tcp listener %s: closing a connection idle for %.1fs",
                    self.name,
                    now - conn.idle_since,
                )
                conn.result = "idle_timeout"
                conn.abort()

    def status(self) -> dict[str, Any]:
        """The listener's status, with its open connections and the bytes its
        transports hold in write buffers."""
        status = super().status()
        buffered = 0
        for conn in self._conns:
            buffered += conn.buffered()
        status["open_connections"] = len(self._conns)
        status["buffered_bytes"] = buffered
        return status


class _Abandoned(Exception):
    """A failed connect after which no other endpoint may be tried."""


class _Upstream(asyncio.Protocol):
    """The connection to the endpoint: writes what it receives to the downstream."""

    __slots__ = ("conn", "down", "nbytes", "paused", "transport")

    def __init__(self, conn: _Downstream) -> None:
        self.conn = conn
        self.down = conn.transport
        self.transport: asyncio.Transport | None = None
        #: bytes forwarded to the downstream
        self.nbytes = 0
        #: our write buffer is over the high-water mark (downstream reading paused)
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport: cast, not isinstance.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        # Hold the endpoint's bytes until the downstream attaches. uvloop starts
        # reading after connection_made anyway; bytes that arrive early go to the
        # client all the same, and _attempt does not retry once any did.
        transport.pause_reading()
        _tune(transport)

    def data_received(self, data: bytes) -> None:
        self.nbytes += len(data)
        self.down.write(data)

    def eof_received(self) -> bool:
        self.conn.upstream_eof()
        return True

    def pause_writing(self) -> None:
        self.paused = True
        self.conn.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        self.conn.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn.up is self:
            self.conn.upstream_lost(exc)


class _Downstream(asyncio.Protocol):
    """One accepted connection: admission, the connect, and the client→upstream half."""

    __slots__ = (
        "counted_in",
        "counted_out",
        "down_eof",
        "down_lost",
        "early",
        "early_size",
        "endpoint",
        "finished",
        "idle_since",
        "key",
        "latency",
        "listener",
        "nbytes",
        "outcome",
        "result",
        "stats",
        "target",
        "task",
        "transport",
        "up",
        "up_eof",
        "up_lost",
        "up_transport",
        "write_paused",
    )

    def __init__(self, listener: TcpListener) -> None:
        self.listener = listener
        self.target = listener.target
        self.stats = listener.target.stats
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # connection_made
        self.up: _Upstream | None = None
        self.up_transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.early: list[bytes] | None = []
        self.early_size = 0
        #: bytes received from the downstream, and what of both directions the
        #: target's counters have
        self.nbytes = 0
        self.counted_in = self.counted_out = 0
        self.idle_since = 0.0
        self.down_eof = self.up_eof = False
        self.down_lost = self.up_lost = False
        #: our write buffer is over the high-water mark (upstream reading paused)
        self.write_paused = False
        self.endpoint: Endpoint | None = None
        self.latency = 0.0
        self.outcome = Outcome.SUCCESS
        #: None: not admitted (over a cap, circuit open); else how the connection ended
        self.result: str | None = "closed"
        self.finished = False
        #: the listener's connection gate's, while admitted
        self.key = ""

    # -- asyncio.Protocol: the downstream transport ---------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        listener = self.listener
        target = self.target
        key = listener.gate.admit(transport.get_extra_info("peername"))
        if key is None:
            self.result = None
            self.finished = True
            self.stats.errors["connection_limit"] += 1
            _reset(transport)
            return
        try:
            target.begin_request()
        except CircuitOpenError:
            listener.gate.release(key)
            self.result = None
            self.finished = True
            _reset(transport)
            return
        self.key = key
        listener._conns.add(self)
        if listener._state != "serving":
            # Accepted in the same loop turn as drain() closed the server.
            self._unavailable()
            return
        mesh = listener.mesh
        if mesh is not None:
            decision = mesh.authorize(transport)
            if not decision.allowed:
                logger.info("%s: refused a caller: %s", listener.name, decision.reason)
                self._deny()
                return
            mesh.track(self, transport, self._intention_changed)
        _tune(transport)
        try:
            target.begin_pending()
        except CircuitOpenError:
            self._unavailable()
            return
        task = asyncio.get_running_loop().create_task(self._connect())
        self.task = task
        listener._tasks.add(task)
        task.add_done_callback(listener._tasks.discard)

    def data_received(self, data: bytes) -> None:
        self.nbytes += len(data)
        up = self.up_transport
        if up is not None:
            up.write(data)
            return
        if self.early is None:
            return  # not forwarded: the connection is being reset
        self.early.append(data)
        self.early_size += len(data)
        if self.early_size >= HIGH_WATER:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.down_eof = True
        up = self.up_transport
        if up is not None and not self.up_lost:
            if not up.is_closing():
                up.write_eof()
            if self.up_eof:
                self._close_both()
        return True

    def pause_writing(self) -> None:
        self.write_paused = True
        up = self.up_transport
        if up is not None and not self.up_lost:
            up.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        up = self.up_transport
        if up is not None and not self.up_lost and not self.up_eof and not up.is_closing():
            up.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.result is None:
            return
        self.down_lost = True
        self.early = None
        if self.task is not None:
            self.task.cancel()
        up = self.up_transport
        if up is not None and not self.up_lost:
            if exc is not None:
                _reset(up)  # the client reset: pass it on
            elif not up.is_closing():
                up.close()
        self._maybe_finish()

    # -- called by the upstream protocol --------------------------------------------------

    def pause_reading(self) -> None:
        if not self.down_lost:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self.down_lost and not self.down_eof and not self.transport.is_closing():
            self.transport.resume_reading()

    def upstream_eof(self) -> None:
        self.up_eof = True
        if not self.down_lost:
            if not self.transport.is_closing():
                self.transport.write_eof()
            if self.down_eof:
                self._close_both()

    def upstream_lost(self, exc: Exception | None) -> None:
        self.up_lost = True
        if exc is not None:
            self.outcome = Outcome.RESET
            self.result = "reset"
            if not self.down_lost:
                _reset(self.transport)
        elif not self.down_lost and not self.transport.is_closing():
            self.transport.close()
        self._maybe_finish()

    # -- lifecycle --------------------------------------------------------------------------

    async def _connect(self) -> None:
        """Picks and connects, retrying connect failures; attaches or resets the client."""
        target = self.target
        policy = self.listener.policy
        loop = asyncio.get_running_loop()
        tried: list[str] = []
        try:
            for attempt in range(1 + policy.retries):
                retry = attempt > 0
                if retry and not target.allow_retry():
                    break
                try:
                    if await self._attempt(loop, target, policy, tried):
                        return
                finally:
                    if retry:
                        target.end_retry()
            self._unavailable()
        except (NoEndpointsError, CircuitOpenError, _Abandoned):
            self._unavailable()
        except asyncio.CancelledError:
            if not self.down_lost:
                self._reset_downstream()
            raise
        finally:
            target.end_pending()
            self.task = None
            self._maybe_finish()

    async def _attempt(
        self, loop: asyncio.AbstractEventLoop, target: Target, policy: ProxyPolicy, tried: list[str]
    ) -> bool:
        """One connect; True once attached, False to try another endpoint.
        Raises NoEndpointsError, CircuitOpenError, _Abandoned: give up."""
        endpoint = target.pick(exclude=tried)
        tried.append(endpoint.id)
        try:
            target.open_connection()
        except CircuitOpenError:
            target.release(endpoint, latency=0.0, outcome=Outcome.CANCELLED)
            raise
        host, port = target.dial(endpoint)
        started = loop.time()
        upstream = _Upstream(self)
        try:
            async with asyncio.timeout(policy.connect_timeout):
                tls = target.dial_tls(endpoint)
                transport, _ = await loop.create_connection(
                    lambda: upstream,
                    host,
                    port,
                    ssl=tls,
                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT if tls else None,
                )
                if tls is not None:
                    try:
                        target.check_tls(transport)
                    except OSError:
                        transport.abort()
                        raise
        except TimeoutError:
            outcome = Outcome.TIMEOUT
            logger.debug("%s: connect to %s:%s timed out", self.listener.name, host, port)
        except OSError as exc:
            outcome = Outcome.CONNECT_FAILURE
            logger.debug("%s: connect to %s:%s failed: %s", self.listener.name, host, port, exc)
        except BaseException:
            target.close_connection()
            target.release(endpoint, latency=loop.time() - started, outcome=Outcome.CANCELLED)
            raise
        else:
            # From here the connection's end releases the endpoint.
            self._attach(upstream, transport, endpoint, loop.time() - started)
            return True
        target.close_connection()
        target.release(endpoint, latency=loop.time() - started, outcome=outcome)
        if upstream.nbytes:
            # Timed out just after connecting, with the endpoint's first bytes
            # already forwarded: another endpoint cannot continue that stream.
            raise _Abandoned
        return False

    def _attach(
        self, upstream: _Upstream, transport: asyncio.Transport, endpoint: Endpoint, latency: float
    ) -> None:
        self.up = upstream
        self.up_transport = transport
        self.endpoint = endpoint
        self.latency = latency
        self.idle_since = asyncio.get_running_loop().time()
        if self.down_lost:
            transport.abort()  # the client left as the connect finished
            return
        if self.early:
            transport.writelines(self.early)
        self.early = None
        if self.down_eof:
            transport.write_eof()
        elif not upstream.paused:
            self.transport.resume_reading()
        if not self.write_paused:
            transport.resume_reading()

    def _deny(self) -> None:
        self.stats.errors["intention_denied"] += 1
        self.result = "intention_denied"
        self._reset_downstream()

    def _intention_changed(self, decision: Any) -> None:
        """The intentions changed: a connection whose caller is now denied is reset."""
        if decision.allowed or self.finished or self.down_lost:
            return
        logger.info("%s: closing a connection: %s", self.listener.name, decision.reason)
        self.stats.errors["intention_denied"] += 1
        self.result = "intention_denied"
        if self.task is not None:
            self.task.cancel()
        self._reset_downstream()
        up = self.up_transport
        if up is not None and not self.up_lost:
            up.abort()

    def _unavailable(self) -> None:
        self.result = "unavailable"
        self._reset_downstream()

    def _reset_downstream(self) -> None:
        self.early = None
        if not self.transport.is_closing():
            _reset(self.transport)

    def _close_both(self) -> None:
        """Both sides sent EOF: close once the write buffers are flushed."""
        if not self.transport.is_closing():
            self.transport.close()
        up = self.up_transport
        if up is not None and not up.is_closing():
            up.close()

    def abort(self) -> None:
        """Closes both sides now, dropping buffered bytes (idle, or drain past its grace)."""
        if self.task is not None:
            self.task.cancel()
        if not self.down_lost:
            self.transport.abort()
        up = self.up_transport
        if up is not None and not self.up_lost:
            up.abort()

    def buffered(self) -> int:
        """Bytes held in this connection's write buffers and early buffer."""
        size = self.early_size if self.early else 0
        if not self.down_lost:
            size += self.transport.get_write_buffer_size()
        up = self.up_transport
        if up is not None and not self.up_lost:
            size += up.get_write_buffer_size()
        return size

    def count_bytes(self) -> None:
        """Adds the bytes forwarded since the last count to the target's counters."""
        stats = self.stats
        stats.bytes_received += self.nbytes - self.counted_in
        self.counted_in = self.nbytes
        if self.up is not None:
            stats.bytes_sent += self.up.nbytes - self.counted_out
            self.counted_out = self.up.nbytes

    def _maybe_finish(self) -> None:
        if self.finished or not self.down_lost or self.task is not None:
            return
        if self.up_transport is not None and not self.up_lost:
            return
        self.finished = True
        listener = self.listener
        if listener.mesh is not None:
            listener.mesh.forget(self)
        listener.gate.release(self.key)
        listener._forget(self)
        target = self.target
        if self.endpoint is not None:
            target.close_connection()
            target.release(self.endpoint, latency=self.latency, outcome=self.outcome)
        elif self.result == "closed":
            self.result = "cancelled"  # the client left while we were connecting
        assert self.result is not None
        stats = self.stats
        stats.responses[self.result] += 1
        self.count_bytes()
        target.end_request()
