"""The HTTP/1.1 proxy listener: keep-alive both ways, streamed bodies, retries.

Everything runs in protocol callbacks; the one task a request may need is
a connect. How one request goes:

- A :class:`Downstream` (one per client connection) feeds what it reads to
  a request parser. A request whose head is complete becomes an
  :class:`Exchange`. Requests pipelined behind it wait their turn in a queue
  (one at a time per connection, in order; reading pauses while one waits).
- :meth:`Exchange.start`: ``target.begin_request()``, pick an endpoint,
  take an idle pooled connection to it or open one (``begin_pending`` while
  connecting), then write the rewritten head and whatever body has arrived
  in one write. The rest of the body is forwarded as it arrives, re-chunked
  if it is chunked; up to 64 KiB of it is also kept, so that the request
  can be sent again.
- The :class:`~sidecar.proxy._http_pool.UpstreamConnection` parses the
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

``timeout`` bounds an exchange from its start until its response is
complete; ``per_try_timeout`` bounds an attempt until its response head.
Both are armed lazily, by a tick, for the exchanges still in flight (see
:meth:`Exchange.arm_timers`). Errors the proxy answers itself carry
``x-eco-proxy-error``: ``connect_failure``, ``reset`` and ``bad_response``
(502), ``no_endpoints`` and ``circuit_open`` (503), ``timeout`` (504),
``upgrade`` (501), ``bad_request`` (400).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any, cast

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from sidecar.config import ProxyPolicy
from sidecar.proxy._http_exchange import P_QUEUE, P_STOP, Exchange
from sidecar.proxy._http_parse import CRLF, REQUEST_ACTIONS, error_response
from sidecar.proxy._http_pool import UpstreamPool
from sidecar.proxy._listener import Listener
from sidecar.proxy._target import Target

__all__ = ["HttpListener"]

logger = logging.getLogger(__name__)

#: idle pooled connections kept per endpoint
MAX_IDLE_PER_ENDPOINT = 64

_SEP = b": "
_monotonic = time.monotonic


class HttpListener(Listener):
    """An HTTP/1.1 proxy listener (see the module docstring)."""

    protocol = "http"
    #: the event loop it runs on (set by :meth:`start`)
    loop: asyncio.AbstractEventLoop

    def __init__(self, name: str, listen: str, target: Target, policy: ProxyPolicy) -> None:
        super().__init__(name, listen, target, policy)
        self.pool = UpstreamPool(
            target, max_idle=MAX_IDLE_PER_ENDPOINT, idle_timeout=policy.idle_timeout
        )
        self.downstreams: set[Downstream] = set()
        self.draining = False
        # The policy, flattened for the hot path.
        self.timeout = policy.timeout
        self.per_try_timeout = policy.per_try_timeout or 0.0
        self.retry_on = frozenset(policy.retry_on)
        self.max_retries = policy.retries
        self._sweep_every = max(0.05, min(1.0, policy.idle_timeout / 4))
        timeouts = [t for t in (policy.timeout, policy.per_try_timeout) if t]
        #: how often exchanges in flight get their timers (see Exchange.arm_timers)
        self._tick_every = max(0.005, min(0.25, min(timeouts) / 3)) if timeouts else 0.0
        self._state = "new"
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._quiet: asyncio.Event | None = None
        self._drained: asyncio.Event | None = None

    async def start(self) -> None:
        if self._state != "new":
            raise RuntimeError(f"{self.name}: a listener can be started once")
        self._state = "starting"
        loop = self.loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                lambda: Downstream(self), self.host, self.port, reuse_address=True, backlog=1024
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
        self.pool.retire(ids)

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
        """``down`` is closed; the drain waits for the last one."""
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
        """Closes downstream connections idle for ``idle_timeout``, and idle pooled ones."""
        now = _monotonic()
        limit = now - self.policy.idle_timeout
        for down in list(self.downstreams):
            ex = down.current
            if (ex is None or ex.response_done) and down.idle_since <= limit:
                down.close()
        self.pool.sweep(now)
        self._sweeper = self.loop.call_later(self._sweep_every, self._sweep)


class Downstream(asyncio.Protocol):
    """One client connection: its request parser, the current exchange, the queue."""

    __slots__ = (
        "client_ip",
        "close_after",
        "closing",
        "corked",
        "current",
        "gone",
        "idle_since",
        "listener",
        "out",
        "parser",
        "parsing",
        "paused",
        "queue",
        "stats",
        "transport",
        "write_paused",
    )

    transport: asyncio.Transport
    parser: HttpRequestParser
    parsing: Exchange

    def __init__(self, listener: HttpListener) -> None:
        self.listener = listener
        self.stats = listener.target.stats
        self.client_ip = b"unknown"
        self.current: Exchange | None = None
        self.queue: deque[Exchange] = deque()
        #: close once the current exchange is done (no keep-alive, or draining)
        self.close_after = False
        self.closing = False
        self.gone = False
        self.paused = 0
        self.write_paused = False
        self.corked = False
        self.out: list[bytes] = []
        self.idle_since = _monotonic()

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.client_ip = str(peer[0]).encode()
        self.parser = HttpRequestParser(self)
        listener = self.listener
        listener.downstreams.add(self)
        if listener.draining:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._gone()

    def eof_received(self) -> bool | None:
        # A client that shuts its sending side is taken to have gone away (a
        # half-closed HTTP/1.1 client cannot be told from a closed one). The
        # transport closes now; nothing more may be written to it.
        self.closing = True
        return None

    def pause_writing(self) -> None:
        self.write_paused = True
        ex = self.current
        if ex is not None and ex.upstream is not None:
            ex.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self.current
        if ex is not None and ex.upstream is not None:
            ex.upstream.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.closing or self.paused & P_STOP:
            return
        self.stats.bytes_received += len(data)
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade:
            # What follows is not HTTP; the request itself is refused with 501.
            self.pause(P_STOP)
        except HttpParserError as exc:
            self._bad_request(exc)
        ex = self.current
        if ex is not None and not ex.started and not self.closing:
            ex.start()

    # -- request parser callbacks -----------------------------------------------------

    def on_message_begin(self) -> None:
        self.parsing = Exchange(self)

    def on_url(self, url: bytes) -> None:
        self.parsing.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.parsing
        if ex.head_done:
            ex.add_trailer(name, value)
            return
        action = REQUEST_ACTIONS.get(name.lower())
        if action is None:
            ex.out += (name, _SEP, value, CRLF)
        else:
            ex.special_header(action, name, value)

    def on_headers_complete(self) -> None:
        ex = self.parsing
        parser = self.parser
        ex.method = method = parser.get_method()
        ex.keep_alive = parser.should_keep_alive()
        ex.http10 = parser.get_http_version() == "1.0"
        if method == b"CONNECT" or parser.should_upgrade():
            ex.refuse = True
        ex.finish_head(self.client_ip)
        if self.current is None:
            self.current = ex
        else:
            self.queue.append(ex)
            self.pause(P_QUEUE)

    def on_body(self, body: bytes) -> None:
        self.parsing.request_body(body)

    def on_message_complete(self) -> None:
        self.parsing.request_complete()

    # -- for the exchanges ----------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Sends to the client (held back while corked), counting the bytes."""
        if self.closing:
            return
        self.stats.bytes_sent += len(data)
        if self.corked:
            self.out.append(data)
        else:
            self.transport.write(data)

    def cork(self) -> None:
        self.corked = True

    def uncork(self) -> None:
        self.corked = False
        out = self.out
        if out:
            self.out = []
            if not self.closing:
                self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def exchange_done(self, ex: Exchange) -> None:
        """The current exchange is over (request read, response sent): next one, or close."""
        if self.current is not ex:
            return
        self.current = None
        if self.close_after or not ex.keep_alive or self.listener.draining:
            self.close()
            return
        if self.queue:
            nxt = self.current = self.queue.popleft()
            if not self.queue:
                self.resume(P_QUEUE)
            nxt.start()
        else:
            self.idle_since = _monotonic()

    def close(self) -> None:
        """Closes after what was written (the rest of a corked write included)."""
        if self.closing:
            return
        if self.out:
            self.uncork()
        self.closing = True
        self.transport.close()

    def abort(self) -> None:
        """Closes at once; the current exchange is cancelled now, not on connection_lost."""
        self.closing = True
        self.out = []
        self.transport.abort()
        self._gone()

    def _gone(self) -> None:
        if self.gone:
            return
        self.gone = True
        self.listener.forget(self)
        self.queue.clear()
        ex = self.current
        if ex is not None:
            self.current = None
            ex.cancel()

    def pause(self, bit: int) -> None:
        """Stops reading for one more reason (a ``P_*`` bit)."""
        if not self.paused and not self.closing:
            self.transport.pause_reading()
        self.paused |= bit

    def resume(self, bit: int) -> None:
        """Drops one reason not to read; reading resumes when none is left."""
        if self.paused & bit:
            self.paused &= ~bit
            if not self.paused and not self.closing:
                self.transport.resume_reading()

    def _bad_request(self, exc: HttpParserError) -> None:
        self.pause(P_STOP)
        ex = self.current
        if ex is None:
            logger.debug("%s: bad request from %s: %s", self.listener.name, self.client_ip, exc)
            self.stats.responses["4xx"] += 1
            self.write(error_response(400, "bad_request", f"bad request: {exc}", close=True))
            self.close()
        elif ex.complete:
            # The bad bytes follow a complete request: answer that one, then close.
            self.close_after = True
            self.queue.clear()
        else:
            self.abort()
