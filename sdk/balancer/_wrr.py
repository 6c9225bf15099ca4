"""Smooth weighted round robin in O(distinct weights) per pick, or O(log n) past a bound.

The reference algorithm, per pick: every endpoint's ``current += weight``;
pick the one with the largest ``current`` (the first in list order on a
tie); subtract the total weight from its ``current``. Over one cycle of
``total weight`` picks each endpoint is picked exactly ``weight`` times, and
the picks of a heavy endpoint are spread through the cycle rather than
bunched. Done literally it costs O(n) per pick.

Endpoints of equal weight are interchangeable in that algorithm: among them
the one picked least often leads, earliest in list order first, so they take
turns in list order. One *group* per distinct weight therefore stands for all
its members, with a turn pointer and a count of completed turns, and a pick
compares only the groups: the exact same sequence as the reference, at
O(distinct weights) per pick.

With more than ``MAX_GROUPS`` distinct weights that is no longer cheap, so
the scheduler switches to earliest-deadline-first on a heap (O(log n)): the
k-th pick of an endpoint of weight w is due at ``(k + 0.5) / w`` cycles. It
keeps the two properties that matter (exact shares over every cycle, picks
spread through it) though its interleaving differs from the reference.
"""

from __future__ import annotations

import heapq

from sdk.balancer._base import Slot

__all__ = ["MAX_GROUPS", "SmoothWeighted"]

MAX_GROUPS = 8


class _Group:
    __slots__ = ("members", "turn", "turns", "weight")

    def __init__(self, weight: int) -> None:
        self.weight = weight
        self.members: list[tuple[int, Slot]] = []  # (position in candidate order, slot)
        self.turn = 0  # index of the member whose turn is next
        self.turns = 0  # completed rounds: picks of the member whose turn it is


class SmoothWeighted:
    """The schedule over one candidate list; rebuilt (and restarted) when that list changes."""

    __slots__ = ("_deadline_picks", "_groups", "_heap", "_key", "_step", "_total")

    def __init__(self) -> None:
        self._key: list[tuple[str, int]] = []
        self._groups: list[_Group] = []
        self._heap: list[tuple[float, int, Slot]] = []
        self._deadline_picks: dict[int, int] = {}
        self._total = 0
        self._step = 0

    def rebuild(self, candidates: list[Slot]) -> None:
        """Adopts a candidate list; keeps the running cycle if ids and weights are unchanged."""
        key = [(s.id, s.endpoint.weight) for s in candidates]
        if key == self._key:
            return
        self._key = key
        self._total = sum(w for _, w in key)
        self._step = 0
        by_weight: dict[int, _Group] = {}
        for position, slot in enumerate(candidates):
            weight = slot.endpoint.weight
            group = by_weight.get(weight)
            if group is None:
                group = by_weight[weight] = _Group(weight)
            group.members.append((position, slot))
        if len(by_weight) <= MAX_GROUPS:
            self._groups = list(by_weight.values())
            self._heap = []
        else:
            self._groups = []
            self._heap = [(0.5 / s.endpoint.weight, i, s) for i, s in enumerate(candidates)]
            heapq.heapify(self._heap)
            self._deadline_picks = dict.fromkeys(range(len(candidates)), 0)

    def next(self) -> Slot:
        if self._groups:
            return self._next_grouped()
        return self._next_deadline()

    def _next_grouped(self) -> Slot:
        total = self._total
        step = self._step + 1
        best: _Group | None = None
        best_current = 0
        best_position = 0
        for group in self._groups:
            # The current weight of the group's next member after this step's increment.
            current = step * group.weight - total * group.turns
            if best is None or current > best_current:
                best, best_current = group, current
                best_position = group.members[group.turn][0]
            elif current == best_current:
                position = group.members[group.turn][0]
                if position < best_position:
                    best, best_position = group, position
        assert best is not None
        slot = best.members[best.turn][1]
        best.turn += 1
        if best.turn == len(best.members):
            best.turn = 0
            best.turns += 1
        if step == total:  # a cycle is complete: every current weight is back to zero
            step = 0
            for group in self._groups:
                group.turns = 0
        self._step = step
        return slot

    def _next_deadline(self) -> Slot:
        heap = self._heap
        _, position, slot = heap[0]
        picks = self._deadline_picks[position] + 1
        self._deadline_picks[position] = picks
        heapq.heapreplace(heap, ((picks + 0.5) / slot.endpoint.weight, position, slot))
        self._step += 1
        if self._step == self._total:
            # Restart the cycle so deadlines stay small and exact.
            self._step = 0
            self._heap = [(0.5 / s.endpoint.weight, i, s) for _, i, s in heap]
            heapq.heapify(self._heap)
            self._deadline_picks = dict.fromkeys(self._deadline_picks, 0)
        return slot
