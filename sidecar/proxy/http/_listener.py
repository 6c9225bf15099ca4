"""The HTTP/1.1 proxy listener: keep-alive both ways, streamed bodies, retries.

Everything runs in protocol callbacks; the one task a request may need is
a connect. How one request goes:

- A :class:`~sidecar.proxy.http._downstream.Downstream` (one per client
  connection) feeds what it reads to a request parser. A request whose head is complete becomes an
  :class:`Exchange`. Requests pipelined behind it wait their turn in a queue
  (one at a time per connection, in order; reading pauses while one waits).
- :meth:`Exchange.start`: ``target.begin_request()``, pick an endpoint,
  take an idle pooled connection to its address or open one (``begin_pending`` while
  connecting), then write the rewritten head and whatever body has arrived
  in one write. The rest of the body is forwarded as it arrives, re-chunked
  if it is chunked; up to 64 KiB of it is also kept, so that the request
  can be sent again.
- The :class:`~sidecar.proxy.http._pool.UpstreamConnection` parses the
  response and calls the exchange back: the head is rewritten and
  forwarded, body chunks are forwarded as they come (re-chunked when the
  upstream's framing cannot be passed on), writes made while one read is
  parsed leave as one. When the response is complete, the upstream
  connection goes back to the pool and the next pipelined request starts.
- Retries go to another endpoint (tried ones are excluded), each within the
  target's retry budget: after a connect failure for any request; after a
  reset, a per-try timeout or a status in ``retry_on`` only for idempotent
  methods whose body was kept whole; never once a response byte went
  downstream. A pooled connection the upstream closed before answering (it
  timed the connection out as the request was sent) is replaced by a new
  connection to the same endpoint once, not counted as a failure.
- Backpressure: when a side's write buffer passes its high-water mark, the
  other side stops being read until it drains.
- A client that shuts its sending side (half-close) still gets the answers
  to the requests it sent whole, then the connection closes (see
  :meth:`Downstream.eof_received`).

``timeout`` bounds an exchange from its start until its response is
complete; ``per_try_timeout`` bounds an attempt until its response head.
Both are armed lazily, by a tick, for the exchanges still in flight (see
:meth:`Exchange.arm_timers`). Errors the proxy answers itself carry
``x-eco-proxy-error``: ``connect_failure``, ``reset`` and ``bad_response``
(502), ``no_endpoints`` and ``circuit_open`` (503), ``timeout`` (504),
``upgrade`` and ``transfer_coding`` (501), ``bad_request`` (400),
``method_not_allowed`` (405, TRACE), ``url_too_long`` (414),
``headers_too_large`` (431), ``http_version`` (505), and at an inbound
listener with mutual TLS ``intention_denied`` (403: the caller's service may
not call the one fronted; checked per request, see ``sidecar.proxy._mtls``).

Hostile input is bounded where it arrives (see
:mod:`sidecar.proxy.http._downstream`): heads and trailers are counted as
they are read, before the parser holds them; what a request may not be
(ambiguous framing, a Host missing or doubled, an HTTP version other than
1.0 and 1.1, a target it cannot forward) is refused before anything is
forwarded. A target in absolute-form is forwarded in origin-form with the
Host it names (:func:`~sidecar.proxy.http._parse.origin_form`); only a
target whose first byte is not ``/`` is looked at. The upstream pool is
keyed by the address dialled, and connections to addresses no endpoint has
any more are retired at the next sweep.

Time and connections are bounded without a cost per request. Each accepted
connection is admitted by the listener's
:class:`~serving.http_limits.ConnectionGate` (``max_connections``,
``max_connections_per_ip``) or answered 503 ``connection_limit`` and
closed: a count per connection, not per request. ``head_timeout`` is kept
by the sweep (at most a quarter of it apart, at most 1 s): it notes the
head or trailer section a connection is in the middle of, and a
connection still in the same one at a sweep ``head_timeout`` later is
answered 408 ``request_timeout`` (:meth:`Downstream.sweep`). The request
path reads no clock and arms no timer for it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Coroutine
from typing import Any

from sidecar.config import ProxyPolicy
from sidecar.proxy._listener import Listener
from sidecar.proxy._target import Target
from sidecar.proxy.http._downstream import Downstream
from sidecar.proxy.http._exchange import Front
from sidecar.proxy.http._parse import IDEMPOTENT
from sidecar.proxy.http._pool import Address, UpstreamPool

__all__ = ["HttpListener"]

logger = logging.getLogger(__name__)

#: idle pooled connections kept per endpoint address
MAX_IDLE_PER_ENDPOINT = 64

_monotonic = time.monotonic


class HttpListener(Listener):
    """An HTTP/1.1 proxy listener (see the module docstring)."""

    protocol = "http"
    #: the event loop it runs on (set by :meth:`start`)
    loop: asyncio.AbstractEventLoop
    #: Set by :meth:`drain` only. Class defaults, not instance attributes: the
    #: request path reads the listener's attributes many times per request, and
    #: the interpreter's fast access to them needs an instance with at most 29
    #: (its class's shared keys); at 30 a request cost about 0.2 % more
    #: instructions. ``test_http_listener_fits_shared_keys`` counts them.
    _quiet: asyncio.Event | None = None
    _drained: asyncio.Event | None = None
    #: A gateway's front (sidecar.proxy.http._exchange.Front): decides about each
    #: request before it is forwarded. None: the listener forwards to its target.
    front: Front | None = None
    #: TLS for the listener's clients (a gateway serving HTTPS); None: plaintext.
    ssl_context: ssl.SSLContext | None = None

    def __init__(self, name: str, listen: str, target: Target, policy: ProxyPolicy) -> None:
        super().__init__(name, listen, target, policy)
        self.pool = UpstreamPool(
            target,
            max_idle=MAX_IDLE_PER_ENDPOINT,
            idle_timeout=policy.idle_timeout,
            head_limit=policy.max_response_headers_kb * 1024,
            max_headers=policy.max_headers,
        )
        self.downstreams: set[Downstream] = set()
        self.draining = False
        # The policy, flattened for the hot path.
        self.timeout = policy.timeout
        self.per_try_timeout = policy.per_try_timeout or 0.0
        self.retry_on = frozenset(policy.retry_on)
        self.max_retries = policy.retries
        self.head_limit = policy.max_request_headers_kb * 1024
        self.url_limit = policy.max_url_kb * 1024
        self.max_headers = policy.max_headers
        self.allow_trace = policy.allow_trace
        #: methods retried after the upstream saw them (TRACE only where it is let through)
        self.idempotent = IDEMPOTENT | {b"TRACE"} if policy.allow_trace else IDEMPOTENT
        self._sweep_every = max(0.05, min(1.0, policy.idle_timeout / 4, policy.head_timeout / 4))
        timeouts = [t for t in (policy.timeout, policy.per_try_timeout) if t]
        #: how often exchanges in flight get their timers (see Exchange.arm_timers)
        self._tick_every = max(0.005, min(0.25, min(timeouts) / 3)) if timeouts else 0.0
        self._state = "new"
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._ticker: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        if self._state != "new":
            raise RuntimeError(f"{self.name}: a listener can be started once")
        self._state = "starting"
        loop = self.loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                self.protocol_factory(lambda: Downstream(self)),
                self.host,
                self.port,
                reuse_address=True,
                backlog=1024,
                ssl=self.ssl_context,
                ssl_handshake_timeout=self.policy.head_timeout if self.ssl_context else None,
            )
        except OSError as exc:
            self._state = "closed"
            raise self._cannot_listen(exc) from exc
        if self._state == "closed":  # drained while binding
            server.close()
            return
        self._server = server
        self._bound(self._server.sockets[0].getsockname()[1])
        self._state = "running"
        self._sweeper = loop.call_later(self._sweep_every, self._sweep)
        if self._tick_every:
            self._ticker = loop.call_later(self._tick_every, self._tick)

    async def drain(self, grace: float) -> None:
        if self._state in ("new", "starting") and self._server is None:
            self._state = "closed"
            return
        if self._state != "running":
            if self._drained is not None:
                await self._drained.wait()
            return
        assert self._server is not None
        self._state = "draining"
        self.draining = True
        self._drained = asyncio.Event()
        self._quiet = asyncio.Event()
        self._server.close()
        self.pool.close_idle()
        for down in list(self.downstreams):
            if down.current is None:
                down.close()
            else:
                down.close_after = True
        if self.downstreams:
            try:
                async with asyncio.timeout(grace):
                    await self._quiet.wait()
            except TimeoutError:
                logger.info(
                    "%s: %d connection(s) still busy after %gs of drain: closing them",
                    self.name,
                    len(self.downstreams),
                    grace,
                )
        for down in list(self.downstreams):
            down.abort()
        self.pool.abort_all()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for handle in (self._sweeper, self._ticker):
            if handle is not None:
                handle.cancel()
        self._sweeper = self._ticker = None
        await self._server.wait_closed()
        await asyncio.sleep(0)  # let the transports report their closing
        self._state = "closed"
        self._drained.set()

    def endpoints_removed(self, ids: frozenset[str]) -> None:
        self.pool.keep_only(self._addresses())

    def _addresses(self) -> set[Address]:
        """Where the target's endpoints are dialled now."""
        dial = self.target.dial
        return {dial(endpoint) for endpoint in self.target.balancer.endpoints}

    def status(self) -> dict[str, Any]:
        status = super().status()
        status["http"] = {
            "downstream_connections": len(self.downstreams),
            "upstream_connections_idle": self.pool.idle_count,
        }
        return status

    # -- for the connections ------------------------------------------------------------

    def spawn(self, name: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task owned by this listener: cancelled and awaited by :meth:`drain`."""
        task = self.loop.create_task(coro, name=f"{self.name}: {name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def forget(self, down: Downstream) -> None:
        """``down`` is closed (called once for each admitted one); the drain waits
        for the last one."""
        self.gate.release(down.key)
        self.downstreams.discard(down)
        if self._quiet is not None and not self.downstreams:
            self._quiet.set()

    def _tick(self) -> None:
        """Gives the exchanges still in flight their timers."""
        now = _monotonic()
        for down in self.downstreams:
            ex = down.current
            if ex is not None and ex.begun:
                ex.arm_timers(now)
        self._ticker = self.loop.call_later(self._tick_every, self._tick)

    def _sweep(self) -> None:
        """Times the downstream connections (``idle_timeout``, ``head_timeout``, the
        linger after a refusal: see :meth:`Downstream.sweep`), closes idle pooled
        connections, and pooled ones to addresses no endpoint has any more (an
        endpoint that moved keeps its id: no removal is reported)."""
        now = _monotonic()
        idle_due = now - self.policy.idle_timeout
        head_due = now - self.policy.head_timeout
        for down in list(self.downstreams):
            down.sweep(now, idle_due, head_due)
        self.pool.sweep(now)
        if self.pool.connections:
            self.pool.keep_only(self._addresses())
        self._sweeper = self.loop.call_later(self._sweep_every, self._sweep)
