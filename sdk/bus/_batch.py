"""Coalescing bus calls: many concurrent publishes or acknowledgements, few RPCs.

A :class:`Coalescer` queues what callers submit and has one task send it in
batches, one call at a time: the first item goes out at once, and whatever
arrives while a call is in flight goes together in the next one. A busy
caller thus gets large batches (one RPC's cost shared by hundreds of
messages) and an idle one no added latency. One call at a time also keeps
submission order on the wire, which is what keeps publishes in order.

- :class:`PublishBatcher` sends ``PublishBatch`` (one result per message,
  each raising on its own) and falls back to one ``Publish`` per message
  against a control plane that does not know ``PublishBatch``.
- :class:`AckBatcher` sends ``Ack``.

Used by :class:`~sdk.BusClient` and by the sidecar's bus relay.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Generic, Protocol, TypeVar

from ecosystem.v1 import messaging_pb2 as pb

from sdk._errors import ClientClosedError, EcoError, UnavailableError, UnimplementedError
from sdk._errors import from_status as _from_status
from sdk._transport import Transport

__all__ = ["MAX_ACK_BATCH", "MAX_PUBLISH_BATCH", "AckBatcher", "PublishBatcher", "publish_request"]

logger = logging.getLogger(__name__)

#: The server's limits on one call.
MAX_ACK_BATCH = 1000
MAX_PUBLISH_BATCH = 1000
#: Bytes of messages in one PublishBatch call (a larger single message goes alone).
MAX_PUBLISH_BATCH_BYTES = 1024 * 1024


def publish_request(
    subject: str, data: bytes, headers: Mapping[str, str] | None, msg_id: str, reply_to: str
) -> pb.PublishRequest:
    """One message for ``PublishBatch`` (or ``Publish``)."""
    request = pb.PublishRequest(subject=subject, data=data, id=msg_id, reply_to=reply_to)
    if headers:  # a map field fills item by item: skip it when empty
        request.headers.update(headers)
    return request


Item = TypeVar("Item")
Result = TypeVar("Result")
Result_contra = TypeVar("Result_contra", contravariant=True)


class Outcome(Protocol[Result_contra]):
    """Where a queued item's result goes: a caller's future, or the sink of
    items queued without waiting (no future each: they are many)."""

    def done(self) -> bool: ...

    def set_result(self, result: Result_contra, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


class _Sink(Generic[Result]):
    """The one :class:`Outcome` of every item queued without waiting: results
    are dropped, errors counted and logged by the owner."""

    __slots__ = ("_on_error",)

    def __init__(self, on_error: Callable[[BaseException], None]) -> None:
        self._on_error = on_error

    def done(self) -> bool:
        return False

    def set_result(self, result: Result, /) -> None:
        pass

    def set_exception(self, exception: BaseException, /) -> None:
        self._on_error(exception)


class Coalescer(abc.ABC, Generic[Item, Result]):
    """Queues submitted items; one task sends them in batches, one call at a time."""

    def __init__(self, transport: Transport, *, name: str, max_queued: int = 10_000) -> None:
        self._transport = transport
        self._name = name
        self._max_queued = max_queued
        self._pending: list[tuple[Item, Outcome[Result]]] = []
        self._sending: list[tuple[Item, Outcome[Result]]] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._room = asyncio.Event()
        self._room.set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        #: items queued with :meth:`enqueue` that failed (their errors are logged)
        self.unwaited_errors = 0
        self._sink: _Sink[Result] = _Sink(self._unwaited_error)

    async def submit(self, item: Item) -> Result:
        """Queues ``item`` and returns its result once its batch was answered."""
        return await self._queue(item)

    def submit_all(self, items: Sequence[Item]) -> list[asyncio.Future[Result]]:
        """Queues ``items`` (in order, whatever is queued) and returns their futures."""
        return [self._queue(item) for item in items]

    async def enqueue(self, item: Item) -> None:
        """Queues ``item`` without waiting for its result; waits only while
        ``max_queued`` items are queued already. A failure is counted in
        ``unwaited_errors`` and logged."""
        while len(self._pending) >= self._max_queued and not self._closed:
            self._room.clear()
            await self._room.wait()
        self._add(item, self._sink)

    def _queue(self, item: Item) -> asyncio.Future[Result]:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._add(item, future)
        return future

    def _add(self, item: Item, outcome: Outcome[Result]) -> None:
        if self._closed:
            raise ClientClosedError()
        self._pending.append((item, outcome))
        self._idle.clear()
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self._name)

    def _unwaited_error(self, error: BaseException) -> None:
        self.unwaited_errors += 1
        log = logger.warning if self.unwaited_errors == 1 else logger.debug
        log("%s: a message queued without waiting failed: %s", self._name, error)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                self._sending = self._take()
                if self._sending:
                    await self._send(self._sending)
                self._sending = []
            self._idle.set()

    def _take(self) -> list[tuple[Item, Outcome[Result]]]:
        """The next batch, in submission order (callers that gave up are left out)."""
        count = min(len(self._pending), self._max_items())
        batch = [entry for entry in self._pending[:count] if not entry[1].done()]
        del self._pending[:count]
        self._room.set()
        return batch

    @abc.abstractmethod
    def _max_items(self) -> int:
        """How many of the queued items the next call may carry."""

    @abc.abstractmethod
    async def _send(self, batch: list[tuple[Item, Outcome[Result]]]) -> None:
        """Makes the call and settles every future of ``batch``."""

    async def close(self, grace: float) -> None:
        """Lets what was already submitted go out (for up to ``grace`` seconds),
        then stops; what is left fails with ClientClosedError. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._room.set()
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._idle.wait()
        self._task.cancel()
        await asyncio.wait({self._task})
        _fail([*self._sending, *self._pending], ClientClosedError())
        self._pending.clear()


def _fail(batch: Sequence[tuple[object, Outcome[Result]]], err: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(err)


class AckBatcher(Coalescer[pb.AckItem, bool]):
    """Acknowledgements in as few ``Ack`` calls as possible; each resolves to
    whether the server still knew the delivery."""

    def __init__(self, transport: Transport) -> None:
        super().__init__(transport, name="bus-acks")

    def _max_items(self) -> int:
        return MAX_ACK_BATCH

    async def _send(self, batch: list[tuple[pb.AckItem, Outcome[bool]]]) -> None:
        request = pb.AckRequest(items=[item for item, _ in batch])
        try:
            response = await self._transport.unary("Ack", request, idempotent=True)
        except Exception as err:  # each waiting caller gets it
            _fail(batch, err)
            return
        unknown = set(response.unknown)
        for item, future in batch:
            if not future.done():
                future.set_result(item.ack_id not in unknown)


_PublishEntry = tuple[pb.PublishRequest, Outcome[pb.PublishResponse]]


class PublishBatcher(Coalescer[pb.PublishRequest, pb.PublishResponse]):
    """Publishes in as few ``PublishBatch`` calls as possible, in submission order.

    Each publish resolves to its own ``PublishResponse`` or raises its own
    error (:class:`~sdk.EcoError`), as a single ``Publish`` would. When the
    control plane cannot be reached, the publishes with an id are retried
    (the stream's duplicate window makes that safe) and the others fail with
    :class:`~sdk.UnavailableError`, since they may have been published.
    """

    def __init__(self, transport: Transport) -> None:
        super().__init__(transport, name="bus-publishes")
        self._batch_rpc = True

    def _max_items(self) -> int:
        count = total = 0
        for request, _ in self._pending:
            if count >= MAX_PUBLISH_BATCH:
                break
            total += request.ByteSize()
            if count and total > MAX_PUBLISH_BATCH_BYTES:
                break
            count += 1
        return count

    async def _send(self, batch: list[_PublishEntry]) -> None:
        if not self._batch_rpc:
            await self._send_one_by_one(batch)
            return
        idempotent = all(request.id for request, _ in batch)
        request = pb.PublishBatchRequest(messages=[request for request, _ in batch])
        try:
            response = await self._transport.unary("PublishBatch", request, idempotent=idempotent)
        except UnimplementedError:
            logger.info("bus: the control plane has no PublishBatch; publishing one by one")
            self._batch_rpc = False
            await self._send_one_by_one(batch)
            return
        except UnavailableError as err:
            retry = [entry for entry in batch if entry[0].id]
            _fail([entry for entry in batch if not entry[0].id], err)
            if retry and not idempotent:
                await self._send(retry)  # all carry an id now: the transport retries
            else:
                _fail(retry, err)
            return
        except Exception as err:
            _fail(batch, err)
            return
        if len(response.results) != len(batch):
            problem = f"PublishBatch: {len(response.results)} results for {len(batch)} messages"
            _fail(batch, EcoError(problem))
            return
        address = self._transport.current_address
        for (_, future), result in zip(batch, response.results, strict=True):
            if future.done():
                continue
            if result.HasField("error"):
                error = result.error
                violations = [(v.field, v.description) for v in error.violations]
                future.set_exception(
                    _from_status(error.code, error.message, error.reason, violations, address)
                )
            else:
                future.set_result(result.ack)

    async def _send_one_by_one(self, batch: list[_PublishEntry]) -> None:
        for request, future in batch:
            try:
                response = await self._transport.unary(
                    "Publish", request, idempotent=bool(request.id)
                )
            except Exception as err:
                if not future.done():
                    future.set_exception(err)
            else:
                if not future.done():
                    future.set_result(response)
