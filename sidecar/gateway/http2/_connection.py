"""HTTP/2 at the gateway's edge: clients that negotiate ``h2`` by ALPN are served
over HTTP/2; each stream runs through the same HTTP/1.1 data plane as any request.

Why this shape. The data plane (:mod:`sidecar.proxy.http`) and the front
(:mod:`sidecar.gateway.server`) work on HTTP/1.1 connections: a
:class:`~sidecar.proxy.http._downstream.Downstream` parses a request, an
exchange routes, checks and forwards it and writes the response. Rather
than a second data plane, each h2 stream is written as an HTTP/1.1 request
to a *hop*: a ``Downstream`` of the same listener whose transport is an
object in memory (:class:`~sidecar.gateway.http2._stream.Hop`), not a
socket. What the ``Downstream`` writes is parsed back (an HTTP/1.1
response parser) into HEADERS and DATA frames. The hop costs no socket,
no system call and no second listener, and it needs no header fields that
the front would have to trust (and the public listener to strip):
the hop's ``get_extra_info`` answers with the client connection's own
``peername`` and ``ssl_object``, so the access log, the metrics, the
``X-Forwarded-For`` the data plane adds and the ``mtls`` plugin see the
real client and its certificate, exactly as on HTTP/1.1. Routing, plugins,
timeouts, retries and the upstream pools are the listener's.

What a connection does (:class:`Http2Connection`):

- The TLS listener's protocol factory returns an :class:`_AlpnSwitch`; in
  ``connection_made`` (after the handshake) it hands the transport to an
  ``Http2Connection`` when ALPN chose ``h2``, else to a plain
  ``Downstream`` (``transport.set_protocol``): an HTTP/1.1 connection costs
  one object more, and its requests nothing.
- A stream's request head is checked (RFC 9113 §8.1.1, §8.2: lowercase
  names, no CR, LF or NUL, no connection-specific fields, the
  pseudo-header fields) and written as ``METHOD PATH HTTP/1.1`` with
  ``:authority`` as Host, its body as it came (``content-length``) or
  chunked. A malformed request is reset with PROTOCOL_ERROR; the
  connection goes on.
- Flow control both ways. Request DATA is acknowledged (WINDOW_UPDATE)
  once the hop has taken it: when the data plane stops reading (its
  upstream is slow), the bytes wait in the hop and the client's window
  closes. Response DATA goes as the stream's and the connection's windows
  allow; a stream holding more than ``HIGH_WATER`` bytes unsent pauses the
  hop's writer (the data plane stops reading the upstream) until it is
  down to ``LOW_WATER``. No body is held whole.
- RST_STREAM from the client cancels the stream's exchange (its upstream
  connection is closed, a waiting check cancelled) and drops the hop.
- Hops whose exchange ended cleanly are kept (``IDLE_HOPS`` per connection)
  for the next stream. Each hop is a connection to the listener's
  ``ConnectionGate``: a stream in flight counts like an HTTP/1.1
  connection against ``max_connections`` and ``max_connections_per_ip``.
- ``SETTINGS_MAX_CONCURRENT_STREAMS`` is ``MAX_CONCURRENT_STREAMS``;
  ``SETTINGS_MAX_HEADER_LIST_SIZE`` is the listener's head limit.
- Drain: GOAWAY naming the last stream taken; streams in flight finish
  within the grace period; later ones are refused (REFUSED_STREAM, safe
  to retry). A connection with no stream for ``idle_timeout`` is sent
  GOAWAY and closed.

Limits: no server push; extended CONNECT (WebSockets over h2) is not
offered; a client's GOAWAY ends the connection at once (streams in flight
are dropped); a request body longer or shorter than its
``content-length``, an over-long header list and other frame-level errors
end the whole connection (the h2 library treats them as connection
errors).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable
from typing import Any, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

from sidecar.gateway.http2._head import request_head
from sidecar.gateway.http2._stream import Hop, Stream
from sidecar.gateway.server import GatewayListener

__all__ = ["MAX_CONCURRENT_STREAMS", "Http2Connection", "Http2Listener"]

logger = logging.getLogger(__name__)

MAX_CONCURRENT_STREAMS = 100
#: the initial window of each stream (the protocol's default)
STREAM_WINDOW = 65_535
#: the connection's window: every stream's at once, so that a stream whose hop
#: stopped reading never starves the others
CONNECTION_WINDOW = MAX_CONCURRENT_STREAMS * STREAM_WINDOW
#: idle hops kept per connection for its next streams
IDLE_HOPS = 16


class Http2Listener(GatewayListener):
    """A gateway listener whose TLS clients may speak HTTP/2 (offered by ALPN).
    See the module docstring."""

    # A slot, not an instance attribute: the request path reads the listener's
    # attributes, and its instance dictionary stays as a GatewayListener's.
    __slots__ = ("h2_connections",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h2_connections: set[Http2Connection] = set()

    def protocol_factory(
        self, make: Callable[[], asyncio.BaseProtocol]
    ) -> Callable[[], asyncio.BaseProtocol]:
        inner = super().protocol_factory(make)
        return lambda: _AlpnSwitch(self, inner)

    def _sweep(self) -> None:
        super()._sweep()
        idle_due = time.monotonic() - self.policy.idle_timeout
        for conn in list(self.h2_connections):
            conn.sweep(idle_due)

    async def drain(self, grace: float) -> None:
        for conn in list(self.h2_connections):
            conn.goaway()
        # (the streams in flight are the hops' Downstreams: the drain waits for them)
        await super().drain(grace)
        for conn in list(self.h2_connections):
            conn.abort()

    def status(self) -> dict[str, Any]:
        status = super().status()
        status["http2"] = {"connections": len(self.h2_connections)}
        return status


class _AlpnSwitch(asyncio.Protocol):
    """Picks the connection's protocol once the handshake chose one."""

    __slots__ = ("listener", "make")

    def __init__(self, listener: Http2Listener, make: Callable[[], asyncio.BaseProtocol]) -> None:
        self.listener = listener
        self.make = make

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        protocol: asyncio.BaseProtocol
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
            protocol = Http2Connection(self.listener, self.make)
        else:
            protocol = self.make()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


def _goaway_frame(last_stream_id: int, code: int = 0) -> bytes:
    """A GOAWAY frame, written beside the h2 library's state: its own
    ``close_connection`` would stop the streams still in flight too."""
    return b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + struct.pack(
        ">II", last_stream_id & 0x7FFFFFFF, code
    )


class Http2Connection(asyncio.Protocol):
    """One client connection over HTTP/2 (see the module docstring)."""

    transport: asyncio.Transport

    def __init__(self, listener: Http2Listener, make: Callable[[], asyncio.BaseProtocol]) -> None:
        self.listener = listener
        self.make = make
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=False,
                header_encoding=None,
                # Checked in request_head, so that a malformed request is a
                # stream error (RFC 9113 §8.1.1), not the end of the connection.
                validate_inbound_headers=False,
            )
        )
        self.streams: dict[int, Stream] = {}
        self.idle: list[Hop] = []
        #: streams with response frames to send (some held back by the windows)
        self.dirty: set[Stream] = set()
        self.key: str | None = None
        self.closed = False
        self.write_paused = False
        self.flush_due = False
        #: GOAWAY sent: streams past this one are refused
        self.last_stream: int | None = None
        self.idle_since = time.monotonic()

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        listener = self.listener
        conn = self.h2
        conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: listener.head_limit,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            },
        )
        conn.initiate_connection()
        self.key = listener.gate.admit(transport.get_extra_info("peername"))
        if self.key is None:
            listener.target.stats.errors["connection_limit"] += 1
            self.closed = True
            self.transport.write(
                conn.data_to_send() + _goaway_frame(0, ErrorCodes.ENHANCE_YOUR_CALM)
            )
            transport.close()
            return
        conn.increment_flow_control_window(CONNECTION_WINDOW - STREAM_WINDOW)
        listener.h2_connections.add(self)
        if listener.draining:
            self.goaway()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.flush()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            logger.debug("%s: HTTP/2 connection error: %s", self.listener.name, exc)
            self.flush()
            self.transport.close()
            self._end()
            return
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                self._data(event)
            elif isinstance(event, h2.events.RequestReceived):
                self._request(event)
            elif isinstance(event, h2.events.StreamEnded):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.request_end()
            elif isinstance(event, h2.events.TrailersReceived):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.request_trailers(event.headers or [])
            elif isinstance(event, h2.events.StreamReset):
                stream = self.streams.pop(event.stream_id, None)
                if stream is not None:
                    stream.cancel()
            elif isinstance(event, h2.events.ConnectionTerminated):
                # The library takes no frame after a GOAWAY: what is in flight ends here.
                self.flush()
                self.transport.close()
                self._end()
                return
        self.flush()

    # -- the events ------------------------------------------------------------------------

    def _request(self, event: h2.events.RequestReceived) -> None:
        stream_id: int = event.stream_id
        if self.last_stream is not None and stream_id > self.last_stream:
            self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        ended = event.stream_ended is not None
        parsed = request_head(event.headers or [], ended)
        if isinstance(parsed, str):
            logger.debug("%s: HTTP/2 stream %d refused: %s", self.listener.name, stream_id, parsed)
            self.h2.reset_stream(stream_id, ErrorCodes.PROTOCOL_ERROR)
            return
        head, method, chunked = parsed
        stream = Stream(self, stream_id, method, chunked)
        self.streams[stream_id] = stream
        stream.hop = hop = self._hop(stream)
        hop.feed(head, 0)

    def _data(self, event: h2.events.DataReceived) -> None:
        stream_id: int = event.stream_id
        credit: int = event.flow_controlled_length or 0
        stream = self.streams.get(stream_id)
        hop = stream.hop if stream is not None else None
        data: bytes = event.data or b""
        if stream is None or hop is None or stream.request_done:
            if credit:
                self.h2.acknowledge_received_data(credit, stream_id)
            return
        if stream.chunked and data:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        hop.feed(data, credit)

    def acknowledge(self, stream_id: int, credit: int) -> None:
        """The hop took ``credit`` bytes of the stream's DATA: the client may send more."""
        if credit and not self.closed:
            self.h2.acknowledge_received_data(credit, stream_id)
            self.flush_soon()

    # -- hops ----------------------------------------------------------------------------

    def _hop(self, stream: Stream) -> Hop:
        idle = self.idle
        while idle:
            hop = idle.pop()
            down = hop.down
            if not hop.closing and down.current is None and not down.closing:
                hop.attach(stream)
                return hop
            hop.drop()
        hop = Hop(self, stream)
        hop.down = self.make()
        hop.down.connection_made(hop)
        return hop

    def release(self, hop: Hop) -> None:
        """``hop`` carried a stream to its end: kept for the next, or closed."""
        hop.stream = None
        if hop.writer_paused:
            hop.writer_paused = False
            hop.down.resume_writing()
        if (
            hop.closing
            or not hop.complete
            or hop.inbox
            or self.closed
            or len(self.idle) >= IDLE_HOPS
        ):
            hop.drop()
        else:
            self.idle.append(hop)

    def hop_lost(self, hop: Hop) -> None:
        if hop in self.idle:
            self.idle.remove(hop)

    # -- writing -------------------------------------------------------------------------

    def want_send(self, stream: Stream) -> None:
        """``stream`` has frames to send: they go at the next flush."""
        self.dirty.add(stream)
        self.flush_soon()

    def flush(self) -> None:
        self.flush_due = False
        dirty = self.dirty
        if dirty and not self.closed:
            for stream in list(dirty):
                try:
                    sent = stream.send()
                except h2.exceptions.H2Error:
                    stream.abandon()
                    sent = True
                if sent:
                    dirty.discard(stream)
        data = self.h2.data_to_send()
        if data and not self.closed:
            self.transport.write(data)
        if self.last_stream is not None and not self.streams and not self.closed:
            self.transport.close()
            self._end()

    def flush_soon(self) -> None:
        """Writes what the streams queued once this turn of the loop is over (one
        write for the frames of every stream that had something)."""
        if not self.flush_due and not self.closed:
            self.flush_due = True
            self.listener.loop.call_soon(self.flush)

    def stream_done(self, stream: Stream) -> None:
        if self.streams.get(stream.id) is stream:
            del self.streams[stream.id]
        self.dirty.discard(stream)
        if not self.streams:
            self.idle_since = time.monotonic()
        self.flush_soon()

    # -- lifecycle -------------------------------------------------------------------------

    def goaway(self) -> None:
        """No new streams (a drain): GOAWAY naming the last one taken; the
        connection closes when those in flight are done."""
        if self.closed or self.last_stream is not None:
            return
        self.last_stream = self.h2.highest_inbound_stream_id
        data = self.h2.data_to_send()
        self.transport.write(data + _goaway_frame(self.last_stream))
        self.flush()

    def sweep(self, idle_due: float) -> None:
        if not self.streams and self.idle_since <= idle_due:
            self.goaway()

    def abort(self) -> None:
        if not self.closed:
            self.transport.abort()
            self._end()

    def _end(self) -> None:
        if self.closed and self.key is None:
            return
        self.closed = True
        listener = self.listener
        listener.h2_connections.discard(self)
        if self.key is not None:
            listener.gate.release(self.key)
            self.key = None
        streams = list(self.streams.values())
        self.streams.clear()
        self.dirty.clear()
        for stream in streams:
            stream.cancel()
        idle, self.idle = self.idle, []
        for hop in idle:
            hop.drop()
