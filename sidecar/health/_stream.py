"""A subscription to health transitions: bounded by the number of checks, never by time."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from types import TracebackType

from sidecar.health._state import HealthTransition

__all__ = ["TransitionStream"]


class TransitionStream:
    """An async iterator of :class:`HealthTransition`, from ``HealthEngine.subscribe()``.

    A consumer that keeps up sees every transition. One that falls behind
    is not given a backlog: pending transitions of the same check merge into
    one net change (``old`` of the first, ``new`` and output of the last, in
    the first one's place in line), and a net change from a status back to
    itself is dropped. So the backlog never
    holds more than one entry per check, and the consumer always ends with
    the latest state. Iteration ends after ``close()``, or when the engine
    closes and the pending transitions have been delivered.
    """

    def __init__(self, on_close: Callable[[TransitionStream], None]) -> None:
        self._pending: dict[str, HealthTransition] = {}
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False
        self._on_close = on_close

    @property
    def pending(self) -> int:
        return len(self._pending)

    def put(self, transition: HealthTransition) -> None:
        """Called by the engine for each transition."""
        if self._ended:
            return
        key = transition.check_id
        earlier = self._pending.get(key)
        if earlier is not None:
            transition = dataclasses.replace(transition, old=earlier.old)
            if transition.old == transition.new:
                del self._pending[key]
                return
        self._pending[key] = transition  # a merged entry keeps its place in line
        self._wake()

    def end(self) -> None:
        """Called by the engine when it closes: deliver what is pending, then stop."""
        self._ended = True
        self._wake()

    def close(self) -> None:
        """Stops the subscription at once (idempotent); pending transitions are dropped."""
        if self._on_close is not None:
            self._on_close(self)
        self._pending.clear()
        self.end()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> TransitionStream:
        return self

    async def __anext__(self) -> HealthTransition:
        while not self._pending:
            if self._ended:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        key = next(iter(self._pending))
        return self._pending.pop(key)

    async def __aenter__(self) -> TransitionStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
