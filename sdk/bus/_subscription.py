"""The moving part of bus subscriptions: the subscription stream.

:class:`BusSubscription` is one ``Subscribe`` call read by one task into a
bounded queue (a durable one resubscribes after the control plane went
away), owned, started and closed by :class:`~sdk.bus._client.BusClient`.
Acknowledgements and publishes are coalesced by :mod:`sdk.bus._batch`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Self

from ecosystem.v1 import messaging_pb2 as pb

from sdk._errors import ClientClosedError, DeadlineExceededError, UnavailableError
from sdk._transport import Transport
from sdk.bus._types import BusMessage, MessageOwner

__all__ = ["BusSubscription"]

logger = logging.getLogger(__name__)


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class _End:
    """Queued after the last message: the subscription ended (``error`` says why)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class BusSubscription:
    """Messages of one subscription, in order: ``async for message in sub``.

    Open it with ``async with`` (or :meth:`start`); when that returns, the
    subscription is in place on the server. :meth:`close` (idempotent, also
    on leaving the ``async with``, or when the client closes) cancels it.
    Iteration raises the error that ended the subscription, or stops after
    :meth:`close`.
    """

    def __init__(
        self,
        transport: Transport,
        request: pb.SubscribeRequest,
        *,
        owner: MessageOwner,
        buffer: int,
        on_close: Callable[[BusSubscription], None],
    ) -> None:
        self._transport = transport
        self._request = request
        self._owner = owner
        self._on_close = on_close
        self._queue: asyncio.Queue[BusMessage | _End] = asyncio.Queue(maxsize=buffer)
        self._state = _State.NEW
        self._ready: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._finished = False
        self._backoff = transport.policy.backoff()
        #: the stream a durable consumer reads (empty for core)
        self.stream = ""
        #: durable: the consumer's next first-delivery sequence when it (re)connected
        self.next_sequence = 0

    @property
    def subject(self) -> str:
        return self._request.subject

    @property
    def durable(self) -> str:
        return self._request.durable

    @property
    def closed(self) -> bool:
        return self._state is _State.CLOSED

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> Self:
        """Opens the stream and waits until the server confirms the
        subscription (raising what it rejected, e.g. InvalidArgumentError).
        Nothing happens when already started."""
        if self._state is _State.CLOSED:
            raise ClientClosedError("the subscription is closed; subscribe again")
        if self._state is _State.OPEN:
            return self
        if self._transport.closed:
            raise ClientClosedError()
        self._state = _State.OPEN
        self._ready = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._read(), name=f"bus-subscribe:{self.subject}")
        timeout = self._transport.timeout
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._ready)
        except TimeoutError:
            await self.close()
            raise DeadlineExceededError(
                f"Subscribe {self.subject!r}: not confirmed within {timeout:g}s",
                code="DEADLINE_EXCEEDED",
                address=self._transport.current_address,
            ) from None
        except BaseException:
            await self.close()
            raise
        return self

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> BusMessage:
        if self._state is _State.NEW:
            await self.start()
        if self._finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, _End):
            self._finished = True
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        return item

    async def close(self) -> None:
        """Cancels the subscription; iteration then stops. Idempotent."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        self._on_close(self)
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
        if self._ready is not None and not self._ready.done():
            self._ready.cancel()
        # Wake a reader blocked in __anext__: drop what is queued, then end.
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(_End())

    async def _read(self) -> None:
        """Reads the stream into the queue; a durable one reconnects."""
        assert self._ready is not None
        ready = self._ready
        transport = self._transport
        owner = self._owner
        while True:
            address = transport.current_address
            try:
                async with contextlib.aclosing(transport.stream("Subscribe", self._request)) as it:
                    async for response in it:
                        kind = response.WhichOneof("kind")
                        if kind == "batch":
                            for item in response.batch.messages:
                                await self._queue.put(BusMessage.from_proto(item, owner=owner))
                        elif kind == "message":
                            message = BusMessage.from_proto(response.message, owner=owner)
                            await self._queue.put(message)
                        elif kind == "subscribed":
                            self.stream = response.subscribed.stream
                            self.next_sequence = response.subscribed.next_sequence
                            self._backoff.reset()
                            if not ready.done():
                                ready.set_result(None)
                error: BaseException = UnavailableError(
                    "the control plane ended the subscription", code="UNAVAILABLE", address=address
                )
            except Exception as err:  # the caller gets it from the iteration
                error = err
            if not self._retry(error, ready):
                break
            delay = self._backoff.next_delay()
            logger.info(
                "subscription %r (durable %r) to %s interrupted (%s); resubscribing in %.2fs",
                self.subject,
                self.durable,
                address,
                error,
                delay,
            )
            await asyncio.sleep(delay)
        if not ready.done():
            ready.set_exception(error)
        else:
            await self._queue.put(_End(error))

    def _retry(self, error: BaseException, ready: asyncio.Future[None]) -> bool:
        """Durable consumers outlive their streams: resubscribe after the
        control plane went away, once the first subscribe succeeded."""
        return (
            bool(self.durable)
            and ready.done()
            and isinstance(error, UnavailableError)
            and self._state is _State.OPEN
            and not self._transport.closed
        )
