"""One agent stream after its Welcome: a reader, a writer and the sync timer.

:class:`AgentStream` runs the three loops of one ``Connect`` call until the
first of them ends (the stream broke, the control plane ended it, or the
session is closing), cancels and awaits the others, and raises why. The
session owns the call, the outbox and what the messages mean; this module
knows how they move. The stream's gRPC errors become SDK errors through
:func:`sdk._errors.translated`, as every call's do.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
import grpc.aio
from ecosystem.v1 import agent_pb2

from sdk._errors import translated
from sdk._transport import _CHANNEL_OPTIONS, CaFile, ChannelFactory, Sleep, tls_channel_factory
from sdk.agent._chunks import MESSAGE_BYTES, sync_parts
from sdk.agent._outbox import AgentOutbox

__all__ = ["EOF", "AgentStream", "StreamEnded", "agent_channel", "agent_tls_channels", "describe"]

# The agent stream lives for hours: ask the transport to notice a peer that
# vanished without closing the connection (the control plane allows a ping
# every 5 s without data). Messages are at most MESSAGE_BYTES both ways;
# reading up to four times that leaves room for a control plane that cuts
# its parts a little larger.
_AGENT_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    *_CHANNEL_OPTIONS,
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 4 * MESSAGE_BYTES),
    ("grpc.max_send_message_length", MESSAGE_BYTES),
]

#: The marker a stream's read() returns at its end (missing from the type stubs).
EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]


def agent_channel(address: str) -> grpc.aio.Channel:
    """A plaintext channel to ``address`` with keepalive, for the agent stream."""
    return grpc.aio.insecure_channel(address, options=_AGENT_CHANNEL_OPTIONS)


def agent_tls_channels(ca_file: CaFile) -> ChannelFactory:
    """Channels over TLS trusting the CAs in ``ca_file``, with keepalive, for the agent stream."""
    return tls_channel_factory(ca_file, options=_AGENT_CHANNEL_OPTIONS)


class StreamEnded(Exception):
    """The stream ended or misbehaved; the message says how."""


def describe(message: Any) -> str:
    """What a first message was, for "expected Welcome" errors."""
    if message is EOF:
        return "the end of the stream"
    return str(message.WhichOneof("message") or "an empty message")


class AgentStream:
    """The loops of one welcomed stream; :meth:`run` returns only by raising.

    ``on_update`` and ``on_sync_result`` receive what the control plane
    sends; the writer drains ``outbox``, building Syncs and Subscribes when
    they are written; the timer asks for a full Sync every
    ``sync_interval()`` seconds, ±20%; a Sync larger than one message is
    written in parts. The liveness loop pings when nothing was read, or
    nothing written, for ``liveness`` seconds, and ends the stream
    (StreamEnded) when nothing at all was read for three times that: a
    replica that hangs without closing the connection is left like one that
    died, and the control plane, which ends a stream it hears nothing on for
    its idle timeout (20 s), hears from a live sidecar at least every
    ``liveness`` seconds.
    """

    def __init__(
        self,
        call: Any,
        address: str,
        outbox: AgentOutbox,
        *,
        on_update: Callable[[agent_pb2.EndpointUpdate], None],
        on_sync_result: Callable[[agent_pb2.SyncResult], None],
        on_sync_written: Callable[[], None],
        build_sync: Callable[[], agent_pb2.SyncInstances],
        build_subscribe: Callable[[], agent_pb2.Subscribe],
        sync_interval: Callable[[], float],
        rng: random.Random,
        sleep: Sleep,
        liveness: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        on_identity: Callable[[agent_pb2.ConnectResponse], None] | None = None,
    ) -> None:
        self._call = call
        # Certificates and trust bundles (see sdk.agent._identity).
        self._on_identity = on_identity
        self._address = address
        self._outbox = outbox
        self._on_update = on_update
        self._on_sync_result = on_sync_result
        self._on_sync_written = on_sync_written
        self._build_sync = build_sync
        self._build_subscribe = build_subscribe
        self._sync_interval = sync_interval
        self._rng = rng
        self._sleep = sleep
        self._liveness = liveness
        self._clock = clock
        self._last_read = self._last_write = clock()

    async def run(self) -> None:
        loops = [self._read(), self._write(), self._timer()]
        if self._liveness > 0:
            loops.append(self._alive())
        await _first_of(*loops)

    async def _read(self) -> None:
        while True:
            with translated(self._address):
                message = await self._call.read()
            self._last_read = self._clock()
            if message is EOF:
                raise StreamEnded("the control plane ended the stream")
            kind = message.WhichOneof("message")
            if kind == "pong":
                continue
            if kind == "update":
                self._on_update(message.update)
            elif kind == "sync_result":
                self._on_sync_result(message.sync_result)
            elif kind in ("certificate", "trust_bundle", "intentions"):
                if self._on_identity is not None:
                    self._on_identity(message)
            else:
                raise StreamEnded(f"unexpected {kind or 'empty message'} on the agent stream")

    async def _write(self) -> None:
        outbox = self._outbox
        while True:
            await outbox.wait()
            while (message := outbox.next(self._build_sync, self._build_subscribe)) is not None:
                if message.WhichOneof("message") == "sync":
                    for part in sync_parts(message.sync):
                        await self._send(agent_pb2.ConnectRequest(sync=part))
                    self._on_sync_written()
                else:
                    await self._send(message)

    async def _send(self, message: agent_pb2.ConnectRequest) -> None:
        try:
            with translated(self._address):
                await self._call.write(message)
        except asyncio.InvalidStateError:
            # The call finished under us; the reader reports how.
            raise StreamEnded("the stream closed while sending") from None
        self._last_write = self._clock()

    async def _alive(self) -> None:
        interval = self._liveness
        nonce = 0
        while True:
            # Half the interval: a gap between two writes is at most 1.5 x it.
            await self._sleep(interval / 2)
            silent = self._clock() - self._last_read
            if silent >= 3 * interval:
                raise StreamEnded(
                    f"no word from the control plane at {self._address} for {silent:.0f}s"
                )
            if silent >= interval or self._clock() - self._last_write >= interval:
                nonce += 1
                self._outbox.ping(nonce)

    async def _timer(self) -> None:
        while True:
            await self._sleep(self._sync_interval() * self._rng.uniform(0.8, 1.2))
            self._outbox.sync()


async def _first_of(*coros: Coroutine[Any, Any, None]) -> None:
    """Runs the coroutines as tasks until the first ends; cancels and awaits the
    rest, then re-raises what the first raised."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
    for task in done:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error
