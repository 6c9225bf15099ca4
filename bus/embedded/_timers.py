"""The embedded broker's scheduler: every consumer's redelivery deadlines in one heap,
run by one task, plus the broker's housekeeping (``max_age`` expiry).

Entries are never removed when a delivery is acknowledged or its timer replaced
(the consumer bumps the entry's token instead); stale ones are skipped when due,
and the heap is compacted whenever it has doubled since the last compaction.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._consumers import Consumer

__all__ = ["Timers"]

_Entry = tuple[float, int, "Consumer", int, int]


class Timers:
    """Deadlines on the loop's clock; ``housekeeping(now)`` runs whenever the task wakes
    and returns when (Unix time) it next wants to run, or None."""

    #: Stale entries tolerated before the first compaction.
    _SLACK = 10_000

    def __init__(self, housekeeping: Callable[[float], float | None]) -> None:
        self._housekeeping = housekeeping
        self._heap: list[_Entry] = []
        self._order = itertools.count()
        self._compacted = 0
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, deadline: float, consumer: Consumer, seq: int, token: int) -> None:
        """Calls ``consumer.on_timeout(seq, token)`` at ``deadline`` (loop time)."""
        heap = self._heap
        entry = (deadline, next(self._order), consumer, seq, token)
        heapq.heappush(heap, entry)
        if heap[0] is entry:
            self._changed.set()
        if len(heap) > 2 * self._compacted + self._SLACK:
            self._heap = [e for e in heap if e[2].timer_is_live(e[3], e[4])]
            heapq.heapify(self._heap)
            self._compacted = len(self._heap)

    def poke(self) -> None:
        """Runs the housekeeping now (e.g. a stream with ``max_age`` got a message)."""
        self._changed.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._changed.clear()
            now = loop.time()
            heap = self._heap
            while heap and heap[0][0] <= now:
                _, _, consumer, seq, token = heapq.heappop(heap)
                if not consumer.deleted:
                    consumer.on_timeout(seq, token)
            wall = time.time()
            delay: float | None = heap[0][0] - now if heap else None
            wanted = self._housekeeping(wall)
            if wanted is not None:
                until = max(0.0, wanted - wall) + 0.001
                delay = until if delay is None else min(delay, until)
            if delay is None:
                await self._changed.wait()
                continue
            try:
                async with asyncio.timeout(delay):
                    await self._changed.wait()
            except TimeoutError:
                pass
