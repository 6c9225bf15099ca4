"""Feeding a plan's actions to the transfers through a bounded queue.

The plan of a 10-million-object run lives in the scratch database; the
workers are handed its actions as they free up (at most ``4 * transfers``
waiting), so memory does not grow with the number of actions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from sidecar.sync._plan import Action
from sidecar.sync._transfer import Executor
from sidecar.sync.connectors._base import SyncStoreError

__all__ = ["FeedingExecutor"]

#: Actions waiting per worker.
AHEAD = 4


class FeedingExecutor(Executor):
    """:class:`Executor` reading its actions lazily (an iterator over the
    scratch table) instead of queueing them all up front."""

    async def run(self, actions: Iterable[Action]) -> None:
        workers = self.options.transfers
        queue: asyncio.Queue[Action | None] = asyncio.Queue(maxsize=workers * AHEAD)
        async with asyncio.TaskGroup() as group:
            for _ in range(workers):
                group.create_task(self._pull(queue))
            for action in actions:
                await queue.put(action)
            for _ in range(workers):
                await queue.put(None)  # one end mark per worker

    async def _pull(self, queue: asyncio.Queue[Action | None]) -> None:
        while (action := await queue.get()) is not None:
            try:
                await self._do(action)
            except SyncStoreError as err:
                self._error(action, err)
            self.meter.emit()
