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
``upgrade`` and ``transfer_coding`` (501), ``bad_request`` (400),
``method_not_allowed`` (405, TRACE), ``url_too_long`` (414),
``headers_too_large`` (431), ``http_version`` (505).

Hostile input is bounded where it arrives. A head (and a trailer section)
is counted in ``data_received`` with one subtraction per read, before the
parser, which joins a header's pieces in memory, is given more than the
limit (:func:`~sidecar.proxy._http_parse.feed_within`); fields are counted
one by one, the target as it is parsed. A request refused for its framing,
its size or its version is answered and the connection closed; the
connection lingers, reading and dropping what the client still sends (at
most ``LINGER_BYTES``, for ``LINGER_SECONDS``), so that the client reads the
answer instead of a reset.
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
from sidecar.proxy._http_parse import (
    CRLF,
    IDEMPOTENT,
    REQUEST_ACTIONS,
    Rejected,
    error_response,
    feed_within,
    status_class,
)
from sidecar.proxy._http_pool import Address, UpstreamPool
from sidecar.proxy._listener import Listener
from sidecar.proxy._target import Target

__all__ = ["HttpListener"]

logger = logging.getLogger(__name__)

#: idle pooled connections kept per endpoint address
MAX_IDLE_PER_ENDPOINT = 64
#: after refusing a request, what a client may still send (dropped) before the close
LINGER_BYTES = 1024 * 1024
LINGER_SECONDS = 2.0

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
        """Closes downstream connections idle for ``idle_timeout`` or done lingering,
        idle pooled ones, and pooled ones to addresses no endpoint has any more (an
        endpoint that moved keeps its id: no removal is reported)."""
        now = _monotonic()
        limit = now - self.policy.idle_timeout
        for down in list(self.downstreams):
            ex = down.current
            if down.lingering:
                if down.linger_until <= now:
                    down.close()
            elif (ex is None or ex.response_done) and down.idle_since <= limit:
                down.close()
        self.pool.sweep(now)
        if self.pool.connections:
            self.pool.keep_only(self._addresses())
        self._sweeper = self.loop.call_later(self._sweep_every, self._sweep)


class Downstream(asyncio.Protocol):
    """One client connection: its request parser, the current exchange, the queue."""

    __slots__ = (
        "client_ip",
        "close_after",
        "closing",
        "corked",
        "counting",
        "current",
        "fields",
        "gone",
        "idle_since",
        "linger_until",
        "lingering",
        "listener",
        "out",
        "parser",
        "parsing",
        "paused",
        "queue",
        "room",
        "size",
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
        # head and trailer bytes left (see feed_within); header fields, and bytes
        # of them, left
        self.counting = True
        self.room = listener.head_limit
        self.fields = listener.max_headers
        self.size = listener.head_limit
        #: after a refusal: bytes the client may still send before the close (0: none)
        self.lingering = 0
        self.linger_until = 0.0

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
            if self.lingering:
                self.lingering = max(0, self.lingering - len(data))
                if not self.lingering:
                    self.transport.close()
            return
        self.stats.bytes_received += len(data)
        if self.counting:
            room = self.room - len(data)
            if room >= 0:
                self.room = room
                self.feed(data)
            elif not feed_within(self, data):
                self._refuse(self._too_large())
        else:
            self.feed(data)
        ex = self.current
        if ex is not None and not ex.started and not self.closing:
            ex.start()

    def feed(self, data: bytes | memoryview) -> bool:
        """Parses ``data``; False once nothing more is read."""
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade:
            # What follows is not HTTP; the request itself is refused with 501.
            self.pause(P_STOP)
            return False
        except HttpParserError as exc:
            context = exc.__context__
            if isinstance(context, Rejected):
                self._refuse(context)
            else:
                self._refuse(Rejected(400, "bad_request", f"bad request: {exc}"))
            return False
        return not (self.closing or self.paused & P_STOP)

    def _too_large(self, fields: bool = False) -> Rejected:
        listener = self.listener
        if fields:
            text = f"more than {listener.max_headers} header fields"
        else:
            what = "trailers" if self.parsing.head_done else "head"
            text = f"request {what} over {listener.head_limit // 1024} KiB"
        return Rejected(431, "headers_too_large", text)

    # -- request parser callbacks -----------------------------------------------------

    def on_message_begin(self) -> None:
        self.parsing = Exchange(self)
        self.fields = self.listener.max_headers
        self.size = self.listener.head_limit

    def on_url(self, url: bytes) -> None:
        ex = self.parsing
        ex.url += url
        if len(ex.url) > self.listener.url_limit:
            limit = self.listener.url_limit // 1024
            raise Rejected(414, "url_too_long", f"request target over {limit} KiB")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Counted again field by field: a head or trailers that began in the
        # middle of a read were not counted whole there.
        fields = self.fields - 1
        size = self.size - len(name) - len(value) - 4
        if fields < 0 or size < 0:
            raise self._too_large(fields < 0)
        self.fields = fields
        self.size = size
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
        version = parser.get_http_version()
        ex.http10 = version == "1.0"
        if version != "1.1" and not ex.http10:
            raise Rejected(505, "http_version", f"HTTP/{version} is not supported")
        if method == b"CONNECT" or parser.should_upgrade():
            ex.refuse = _REFUSE_UPGRADE
        elif method == b"TRACE" and not self.listener.allow_trace:
            ex.refuse = _REFUSE_TRACE
        if self.size < len(ex.url) + len(method) + 12:  # the request line, and the blank one
            raise self._too_large()
        self.size = self.listener.head_limit  # trailers get as much again
        ex.finish_head(self.client_ip)
        self.counting = False
        if self.current is None:
            self.current = ex
        else:
            self.queue.append(ex)
            self.pause(P_QUEUE)

    def on_body(self, body: bytes) -> None:
        self.counting = False
        self.parsing.request_body(body)

    def on_chunk_header(self) -> None:
        # Perhaps the last chunk, and trailers next: counted like a head.
        self.counting = True
        self.room = self.listener.head_limit

    def on_message_complete(self) -> None:
        self.counting = True
        self.room = self.listener.head_limit
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
            if self.lingering:
                self.lingering = 0
                self.transport.close()
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

    def _refuse(self, rejected: Rejected) -> None:
        """A request the proxy will not forward: answered (when it can be), then
        the connection closes. Nothing more of it is parsed."""
        self.pause(P_STOP)
        listener = self.listener
        logger.debug(
            "%s: %d %s from %s: %s",
            listener.name,
            rejected.status,
            rejected.kind,
            self.client_ip,
            rejected.message,
        )
        ex = self.current
        if ex is None:
            self.stats.responses[status_class(rejected.status)] += 1
            self.write(error_response(rejected.status, rejected.kind, rejected.message, close=True))
            self._linger()
        elif ex.complete:
            # The bad bytes follow a complete request: answer that one, then close.
            self.close_after = True
            self.queue.clear()
        elif ex.reject(rejected):
            self._linger()
        else:
            self.abort()

    def _linger(self) -> None:
        """Closes after the answer to a refused request, but first reads (and drops)
        what the client still sends, for a while: closing with unread bytes would
        reset the connection, and the client could lose the answer."""
        if self.closing:
            return
        self.closing = True
        transport = self.transport
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self.lingering = LINGER_BYTES
        self.linger_until = _monotonic() + LINGER_SECONDS
        self.paused = 0
        transport.resume_reading()


_REFUSE_UPGRADE = Rejected(501, "upgrade", "Upgrade and CONNECT are not supported")
_REFUSE_TRACE = Rejected(405, "method_not_allowed", "TRACE is not allowed")
