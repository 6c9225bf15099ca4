"""One `Store.watch` of `EtcdStore`: an etcd watch stream turned into `WatchBatch`es.

Each watch is its own session: its own Watch stream (one watcher on it), a reader
task that moves responses into a small bounded inbox (a consumer that does not keep
up stops the reader, and gRPC flow control then holds etcd back, which keeps the
backlog on the server), and the generator, which owns both.

- Batches: etcd sends whole revisions (``fragment`` is never asked for), possibly
  several per response while it catches up; they are regrouped one per revision.
- Resume: the session remembers the next revision it owes the consumer. When the
  stream breaks (member down, connection lost, leader lost), it reconnects with a
  jittered backoff, to the next member, and asks etcd to start there: nothing is
  lost or repeated.
- Compaction: etcd reports a start revision older than its history with
  ``compact_revision``; that becomes `Compacted`.
- Progress: after ``progress_interval`` without a batch the session asks etcd for a
  progress notification (WatchProgressRequest) and reports its revision. Before
  etcd 3.5.8 the server could send that notification ahead of events it had
  already queued (etcd-io/etcd#15220), so a notification is held for a moment and
  events that arrive meanwhile go first.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
from collections.abc import AsyncGenerator, Callable
from typing import NoReturn, Protocol

import grpc
import grpc.aio
from ecosystem.etcd import rpc_pb2 as pb

from controlplane.store._protocol import Compacted, Event, StoreClosed, StoreError, WatchBatch

from ._client import WATCH, EtcdClient, EtcdError, translate

__all__ = ["EtcdWatch", "WatchHost"]

logger = logging.getLogger(__name__)

_INBOX_SIZE = 64
# How long a progress notification waits for events etcd may have queued before it.
_PROGRESS_SETTLE = 0.02
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 2.0
# Errors that no reconnect can cure.
_FATAL = frozenset(
    {
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)


class WatchHost(Protocol):
    """What a watch needs from its store."""

    @property
    def client(self) -> EtcdClient: ...

    @property
    def closed(self) -> bool: ...

    def decode_event(self, event: pb.Event) -> Event: ...

    def observe_revision(self, revision: int) -> None: ...

    def observe_compaction(self, revision: int) -> None: ...


class _Nothing:
    """What the inbox returns when it was woken or timed out without an item."""


_NOTHING = _Nothing()
_EOF = object()
_Item = pb.WatchResponse | BaseException | object


class _Inbox:
    """A bounded FIFO between the reader task and the generator that can also be
    woken with nothing in it (on close)."""

    def __init__(self, limit: int) -> None:
        self._items: collections.deque[_Item] = collections.deque()
        self._limit = limit
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()

    async def put(self, item: _Item) -> None:
        while len(self._items) >= self._limit:
            self._space.clear()
            await self._space.wait()
        self._items.append(item)
        self._ready.set()

    def wake(self) -> None:
        self._ready.set()

    async def get(self, timeout: float | None) -> _Item:
        if not self._items:
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._ready.wait()
            if not self._items:
                return _NOTHING
        item = self._items.popleft()
        self._space.set()
        return item


class _Reconnect(Exception):
    """The stream ended in a way a new stream (maybe on another member) can fix."""


class EtcdWatch:
    """The session behind one `EtcdStore.watch` call (see the module docstring)."""

    def __init__(
        self,
        host: WatchHost,
        key: bytes,
        range_end: bytes,
        start: int,
        progress_interval: float,
        on_end: Callable[[EtcdWatch], None],
    ) -> None:
        self._host = host
        self._key = key
        self._range_end = range_end
        self._cursor = start  # the next revision the consumer is owed
        self._progress_interval = progress_interval
        self._on_end = on_end
        self._inbox = _Inbox(_INBOX_SIZE)
        self._call: grpc.aio.StreamStreamCall[pb.WatchRequest, pb.WatchResponse] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closed = False

    # -- called by the store -----------------------------------------------------------

    async def shutdown(self) -> None:
        """Ends the session: the generator raises StoreClosed when it next runs."""
        self._closed = True
        self._inbox.wake()
        await self._disconnect()

    # -- the generator -----------------------------------------------------------------

    async def run(self) -> AsyncGenerator[WatchBatch, None]:
        loop = asyncio.get_running_loop()
        failures = 0
        try:
            while True:
                self._check_open()
                if failures:
                    delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (failures - 1))
                    await self._inbox.get(delay * random.uniform(0.5, 1.0))
                    self._check_open()
                try:
                    await self._connect()
                    last_sent = loop.time()
                    asked = 0.0  # when progress was last requested
                    held: int | None = None  # a progress revision waiting to settle
                    settle_until = 0.0
                    while True:
                        # Checked right before waiting: a close that came during the
                        # last await has set the flag, and a later one wakes the inbox.
                        self._check_open()
                        now = loop.time()
                        due = max(last_sent, asked) + self._progress_interval
                        wait = due - now
                        if held is not None:
                            wait = min(wait, settle_until - now)
                        item = await self._inbox.get(max(wait, 0.0))
                        self._check_open()
                        if isinstance(item, _Nothing):
                            now = loop.time()
                            if held is not None and now >= settle_until:
                                revision, held = held, None
                                if revision >= self._cursor - 1:
                                    self._cursor = revision + 1
                                    yield WatchBatch(revision)
                                    self._check_open()
                                    last_sent = loop.time()
                            elif now >= max(last_sent, asked) + self._progress_interval:
                                asked = now
                                await self._request_progress()
                            continue
                        if isinstance(item, grpc.aio.AioRpcError):
                            await self._stream_failed(item)
                        response = self._response(item)
                        if response.events:
                            failures = 0
                            for batch in self._batches(response):
                                yield batch
                                self._check_open()
                            last_sent = loop.time()
                            if held is not None and held < self._cursor:
                                held = None
                        elif response.created:
                            failures = 0
                        else:
                            revision = response.header.revision
                            if held is None:
                                settle_until = loop.time() + _PROGRESS_SETTLE
                            held = max(held or 0, revision)
                except _Reconnect as why:
                    failures += 1
                    await self._disconnect()
                    self._host.client.failover(str(why))
                    logger.info("etcd watch reconnecting from revision %d: %s", self._cursor, why)
        finally:
            self._on_end(self)
            await self._disconnect()

    def _check_open(self) -> None:
        if self._closed or self._host.closed:
            raise StoreClosed("store is closed")

    def _response(self, item: _Item) -> pb.WatchResponse:
        """The next response, or the right exception for how the stream ended."""
        if item is _EOF:
            raise _Reconnect("etcd ended the watch stream")
        if isinstance(item, BaseException):
            raise StoreError(f"etcd watch failed: {item!r}") from item
        assert isinstance(item, pb.WatchResponse)
        response = item
        self._host.observe_revision(response.header.revision)
        if response.compact_revision:
            self._host.observe_compaction(response.compact_revision)
            raise Compacted(response.compact_revision)
        if response.canceled:
            reason = response.cancel_reason or "canceled by etcd"
            if "permission denied" in reason or "invalid auth token" in reason:
                raise EtcdError(WATCH.path, grpc.StatusCode.PERMISSION_DENIED, reason)
            raise _Reconnect(reason)
        return response

    def _batches(self, response: pb.WatchResponse) -> list[WatchBatch]:
        batches: list[WatchBatch] = []
        current: list[Event] = []
        revision = 0
        for raw in response.events:
            rev = raw.kv.mod_revision
            if current and rev != revision:
                batches.append(WatchBatch(revision, tuple(current)))
                current = []
            revision = rev
            current.append(self._host.decode_event(raw))
        if current:
            batches.append(WatchBatch(revision, tuple(current)))
        if batches and batches[0].revision < self._cursor:
            logger.warning(
                "etcd watch: revision %d arrived after progress up to %d "
                "(etcd before 3.5.8 can reorder them)",
                batches[0].revision,
                self._cursor - 1,
            )
        self._cursor = max(self._cursor, batches[-1].revision + 1)
        return batches

    # -- the stream --------------------------------------------------------------------

    async def _connect(self) -> None:
        client = self._host.client
        try:
            call = client.open_stream(WATCH)
        except StoreError as exc:
            raise _Reconnect(str(exc)) from exc
        self._call = call
        self._inbox = _Inbox(_INBOX_SIZE)
        request = pb.WatchRequest(
            create_request=pb.WatchCreateRequest(
                key=self._key,
                range_end=self._range_end,
                start_revision=self._cursor,
                prev_kv=True,
            )
        )
        self._reader = asyncio.create_task(self._read(call, self._inbox), name="etcd-watch-reader")
        try:
            await call.write(request)
        except grpc.aio.AioRpcError as exc:
            await self._stream_failed(exc)
        except asyncio.InvalidStateError as exc:
            raise _Reconnect("watch stream closed before the watch was created") from exc

    async def _stream_failed(self, exc: grpc.aio.AioRpcError) -> NoReturn:
        if await self._host.client.refresh_token(exc):
            raise _Reconnect("auth token renewed")
        if exc.code() in _FATAL:
            raise translate(WATCH.path, exc) from exc
        raise _Reconnect(f"{exc.code().name}: {exc.details()}")

    async def _request_progress(self) -> None:
        call = self._call
        if call is None:
            return
        # A failed write means the stream is over: the reader reports how.
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await call.write(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))

    @staticmethod
    async def _read(
        call: grpc.aio.StreamStreamCall[pb.WatchRequest, pb.WatchResponse], inbox: _Inbox
    ) -> None:
        try:
            while True:
                response = await call.read()
                if not isinstance(response, pb.WatchResponse):  # grpc.aio.EOF
                    await inbox.put(_EOF)
                    return
                await inbox.put(response)
        except grpc.aio.AioRpcError as exc:
            await inbox.put(exc)

    async def _disconnect(self) -> None:
        reader, self._reader = self._reader, None
        call, self._call = self._call, None
        if call is not None:
            call.cancel()
        if reader is not None and not reader.done():
            reader.cancel()
            # wait(), not ``await reader``: catching the reader's CancelledError here,
            # inside a generator being closed, leaves the generator marked as running
            # on CPython 3.11, and every later anext() fails.
            await asyncio.wait({reader})
