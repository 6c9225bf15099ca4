"""One h2 stream (:class:`Stream`) and the hop that carries it through the data
plane (:class:`Hop`): an in-memory transport under a ``Downstream`` of the
listener, which parses what the ``Downstream`` writes back into the stream's
HEADERS, DATA and trailers."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import TYPE_CHECKING, Any

from h2.errors import ErrorCodes
from h2.exceptions import H2Error
from httptools import HttpParserError, HttpResponseParser

from sidecar.gateway.http2._head import CONNECTION_SPECIFIC, trailer_block

if TYPE_CHECKING:
    from sidecar.gateway.http2._connection import Http2Connection

__all__ = ["HIGH_WATER", "LOW_WATER", "Hop", "Stream"]

#: unsent response bytes of a stream past which its exchange stops reading the upstream
HIGH_WATER = 64 * 1024
LOW_WATER = 16 * 1024
#: what the hop's ``get_extra_info`` answers with the client connection's own
_FROM_CLIENT = frozenset({"peername", "sockname", "ssl_object", "peercert", "cipher", "socket"})
_NO_BODY = frozenset({204, 304})


class Stream:
    """One request and its response; the response's frames wait here for the windows."""

    __slots__ = (
        "chunked",
        "closed",
        "conn",
        "end",
        "head",
        "hop",
        "id",
        "method",
        "pending",
        "pending_size",
        "request_done",
        "trailers",
        "trailers_in",
    )

    def __init__(self, conn: Http2Connection, stream_id: int, method: bytes, chunked: bool) -> None:
        self.conn = conn
        self.id = stream_id
        self.method = method
        #: the request body goes to the hop chunked (it has no content-length)
        self.chunked = chunked
        self.hop: Hop | None = None
        #: the client ended its side (END_STREAM)
        self.request_done = False
        #: the request's trailers as the end of its chunked body
        self.trailers_in: bytes | None = None
        #: the response: its head to send, its body not sent yet, its end
        self.head: list[tuple[bytes, bytes]] | None = None
        self.pending: deque[bytes] = deque()
        self.pending_size = 0
        self.end = False
        self.trailers: list[tuple[bytes, bytes]] = []
        #: END_STREAM (or RST_STREAM) sent
        self.closed = False

    # -- the request, from the client ------------------------------------------------------

    def request_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        if not self.chunked:
            return  # (a body of declared length ends without them)
        block = trailer_block(headers)
        if block is None:
            self.reset(ErrorCodes.PROTOCOL_ERROR)
            return
        self.trailers_in = block

    def request_end(self) -> None:
        self.request_done = True
        hop = self.hop
        if hop is not None and self.chunked:
            hop.feed(self.trailers_in or b"0\r\n\r\n", 0)

    def cancel(self) -> None:
        """The client reset the stream (or the connection ended): its exchange is
        cancelled (the hop's Downstream is told its connection is gone)."""
        self.closed = True
        hop = self.hop
        if hop is not None:
            self.hop = None
            hop.drop()

    # -- the response, from the hop --------------------------------------------------------

    def interim(self, status: int, fields: list[tuple[bytes, bytes]]) -> None:
        if not self.closed:
            try:
                self.conn.h2.send_headers(self.id, [(b":status", b"%d" % status), *fields])
            except H2Error:
                self.abandon()
                return
            self.conn.flush_soon()

    def response_head(self, status: int, fields: list[tuple[bytes, bytes]]) -> None:
        self.head = [(b":status", b"%d" % status), *fields]
        if self.method == b"HEAD" or status in _NO_BODY:
            self.end = True
        self.conn.want_send(self)

    def response_body(self, data: bytes) -> None:
        if self.closed or not data:
            return
        self.pending.append(data)
        self.pending_size += len(data)
        hop = self.hop
        if hop is not None and self.pending_size > HIGH_WATER and not hop.writer_paused:
            hop.writer_paused = True
            hop.down.pause_writing()
        self.conn.want_send(self)

    def response_end(self, trailers: list[tuple[bytes, bytes]]) -> None:
        self.end = True
        self.trailers = trailers
        self.conn.want_send(self)

    def hop_failed(self) -> None:
        """The hop closed before the response ended: the stream is reset (REFUSED_STREAM,
        safe to send again, when nothing was answered: a drain)."""
        self.hop = None
        if not self.closed:
            answered = self.head is None and not self.pending and not self.end
            self.reset(ErrorCodes.REFUSED_STREAM if answered else ErrorCodes.INTERNAL_ERROR)

    def abandon(self) -> None:
        """The h2 library will not send this stream's frames (it closed, or the
        upstream's head is not valid in HTTP/2): it is reset, when it can be."""
        conn = self.conn
        if not self.closed and not conn.closed:
            with contextlib.suppress(H2Error):
                conn.h2.reset_stream(self.id, ErrorCodes.INTERNAL_ERROR)
        self.pending.clear()
        self.pending_size = 0
        self.cancel()
        conn.stream_done(self)

    def reset(self, code: ErrorCodes) -> None:
        if self.closed:
            return
        self.closed = True
        conn = self.conn
        if not conn.closed:
            conn.h2.reset_stream(self.id, code)
        self.pending.clear()
        self.pending_size = 0
        hop = self.hop
        if hop is not None:
            self.hop = None
            hop.drop()
        conn.stream_done(self)

    # -- sending -------------------------------------------------------------------------

    def send(self) -> bool:
        """Sends what the windows allow; True when nothing is left waiting."""
        if self.closed:
            return True
        conn = self.conn
        h2conn = conn.h2
        pending = self.pending
        head = self.head
        if head is not None:
            self.head = None
            last = self.end and not pending and not self.trailers
            h2conn.send_headers(self.id, head, end_stream=last)
            if last:
                self._ended()
                return True
        if pending:
            if conn.write_paused:
                return False
            window = h2conn.local_flow_control_window(self.id)
            frame = h2conn.max_outbound_frame_size
            while pending and window > 0:
                chunk = pending[0]
                size = len(chunk)
                if size <= window and size <= frame:
                    pending.popleft()
                    last = self.end and not pending and not self.trailers
                    h2conn.send_data(self.id, chunk, end_stream=last)
                    window -= size
                    self.pending_size -= size
                    if last:
                        self._ended()
                        return True
                else:
                    n = min(window, frame)
                    h2conn.send_data(self.id, chunk[:n])
                    pending[0] = chunk[n:]
                    window -= n
                    self.pending_size -= n
            hop = self.hop
            if hop is not None and hop.writer_paused and self.pending_size <= LOW_WATER:
                hop.writer_paused = False
                hop.down.resume_writing()
            if pending:
                return False
        if self.end:
            if self.trailers:
                h2conn.send_headers(self.id, self.trailers, end_stream=True)
            else:
                h2conn.end_stream(self.id)
            self._ended()
        return True

    def _ended(self) -> None:
        self.closed = True
        self._settle()

    def _settle(self) -> None:
        """The response is sent whole: the stream is done once the client's side is
        too (the hop kept for the next stream); when the client still sends, it is
        told to stop (RST_STREAM NO_ERROR, RFC 9113 §8.1) and the hop is dropped."""
        conn = self.conn
        hop = self.hop
        self.hop = None
        if self.request_done:
            if hop is not None:
                conn.release(hop)
        else:
            if not conn.closed:
                conn.h2.reset_stream(self.id, ErrorCodes.NO_ERROR)
            if hop is not None:
                hop.drop()
        conn.stream_done(self)


class Hop(asyncio.Transport):
    """The in-memory connection between a stream and a ``Downstream`` of the listener.

    The ``Downstream`` sees a transport: it reads the request the stream writes
    (``feed``), writes its response (``write``, parsed back into the stream),
    pauses and resumes reading and writing, closes. ``get_extra_info`` answers
    with the client connection's: its address and its TLS session.
    """

    down: Any  # the listener's Downstream

    def __init__(self, conn: Http2Connection, stream: Stream) -> None:
        super().__init__()
        self.conn = conn
        self.stream: Stream | None = stream
        self.parser = HttpResponseParser(self)
        self.reading = True
        #: request bytes the Downstream is not reading yet, with their flow-control credit
        self.inbox: deque[tuple[bytes, int, int]] = deque()
        self.delivery_due = False
        self.closing = False
        #: the Downstream was told to stop writing (its stream holds too much)
        self.writer_paused = False
        self.fields: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.status = 0
        #: the current response was parsed whole
        self.complete = False

    def attach(self, stream: Stream) -> None:
        """The next stream: a new response parser (a HEAD's left the last one waiting)."""
        self.stream = stream
        self.parser = HttpResponseParser(self)
        self.complete = False

    # -- the stream's side --------------------------------------------------------------

    def feed(self, data: bytes, credit: int) -> None:
        """Request bytes for the Downstream; ``credit`` is acknowledged once it took them."""
        if self.closing:
            if credit and self.stream is not None:
                self.conn.acknowledge(self.stream.id, credit)
            return
        stream_id = self.stream.id if self.stream is not None else 0
        if self.reading and not self.inbox:
            self.down.data_received(data)
            if credit:
                self.conn.acknowledge(stream_id, credit)
        else:
            self.inbox.append((data, credit, stream_id))

    def _deliver(self) -> None:
        self.delivery_due = False
        inbox = self.inbox
        while inbox and self.reading and not self.closing:
            data, credit, stream_id = inbox.popleft()
            self.down.data_received(data)
            if credit:
                self.conn.acknowledge(stream_id, credit)

    def drop(self) -> None:
        """Ends the hop from the stream's side: its Downstream learns that its
        connection is gone (its exchange, if any, is cancelled) on the next turn
        of the loop, not inside one of its own calls."""
        self.stream = None
        if not self.closing:
            self.closing = True
            self.conn.hop_lost(self)
            self.conn.listener.loop.call_soon(self._lost)
        for _data, credit, stream_id in self.inbox:
            if credit and stream_id:
                self.conn.acknowledge(stream_id, credit)
        self.inbox.clear()

    def _lost(self) -> None:
        self.down.connection_lost(None)
        stream = self.stream
        if stream is not None:
            self.stream = None
            if self.complete:
                stream.hop = None  # (its response is whole: it goes on as the windows allow)
            else:
                stream.hop_failed()

    # -- asyncio.Transport, for the Downstream ----------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except HttpParserError:
            stream = self.stream
            self.stream = None
            self.close()
            if stream is not None:
                stream.hop_failed()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        self.conn.hop_lost(self)
        self.conn.listener.loop.call_soon(self._lost)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True
        if self.inbox and not self.delivery_due:
            self.delivery_due = True
            self.conn.listener.loop.call_soon(self._deliver)

    def is_reading(self) -> bool:
        return self.reading

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        return  # never asked (can_write_eof is False): a stream ends with END_STREAM

    def get_write_buffer_size(self) -> int:
        stream = self.stream
        return stream.pending_size if stream is not None else 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        return  # the stream's HTTP/2 flow control is its write buffer's limit

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in _FROM_CLIENT:
            return self.conn.transport.get_extra_info(name, default)
        return default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.down = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.down  # type: ignore[no-any-return]

    # -- the response parser's callbacks ------------------------------------------------------

    def on_message_begin(self) -> None:
        self.fields = []
        self.head_done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if self.head_done:
            self.fields.append((name, value))  # trailers
        elif name not in CONNECTION_SPECIFIC:
            self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        self.head_done = True
        self.status = status = self.parser.get_status_code()
        fields, self.fields = self.fields, []
        stream = self.stream
        if stream is None:
            return
        if status < 200:
            if status != 101:
                stream.interim(status, fields)
            return
        stream.response_head(status, fields)
        if stream.method == b"HEAD":
            # (the parser cannot be told a HEAD's response has no body)
            self.complete = True
            stream.response_end([])

    def on_body(self, body: bytes) -> None:
        stream = self.stream
        if stream is not None:
            stream.response_body(body)

    def on_message_complete(self) -> None:
        if self.status < 200 or self.complete:
            return
        self.complete = True
        trailers, self.fields = self.fields, []
        stream = self.stream
        if stream is not None:
            stream.response_end([(n, v) for n, v in trailers if n not in CONNECTION_SPECIFIC])
