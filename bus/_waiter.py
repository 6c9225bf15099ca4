"""The one task iterating a subscription, and how the broker wakes it."""

from __future__ import annotations

import asyncio

__all__ = ["Waiter"]


class Waiter:
    """A wake-up for one waiting task: ``wait()`` returns after the next ``wake()``.

    A subscription is iterated by one task at a time; a second concurrent
    ``wait()`` is a RuntimeError, not a silent race.
    """

    __slots__ = ("_future",)

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None

    def wake(self) -> None:
        future = self._future
        if future is not None and not future.done():
            future.set_result(None)

    async def wait(self) -> None:
        if self._future is not None:
            raise RuntimeError("a subscription is iterated by one task at a time")
        self._future = asyncio.get_running_loop().create_future()
        try:
            await self._future
        finally:
            self._future = None
