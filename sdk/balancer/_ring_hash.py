"""Consistent hashing on a request key: a ring of virtual nodes, searched by bisection.

Each endpoint owns ``round(weight * vnodes_per_weight)`` points on a 64-bit
ring, derived from its id alone (the SHAKE-128 stream of the id, 8 bytes per
point), so every client holding the same endpoints builds the same ring and
maps a key to the same endpoint. A key hashes (BLAKE2s, first 8 bytes) to a point;
its endpoint owns the first ring point at or after it, wrapping around.

The ring holds *every* endpoint, healthy or not; a pick walks clockwise past
the points of endpoints it may not use. A key therefore moves only when its
own endpoint leaves or becomes unusable, and comes back when it returns;
health flapping costs no rebuild. When fewer than 1/16 of the endpoints are
usable the walk could grow long, so a second ring of just the usable ones
takes over (same points, so the same answers).

Ring entries pack the endpoint's slot number into their low 24 bits; the top
40 bits are the hash. Keys are compared on those 40 bits only, so the
answer never depends on slot numbering. When membership changes by less
than 1/8 of the ring, the ring is spliced (binary search plus slice copies)
rather than re-sorted.

Size: ``vnodes_per_weight`` points per unit of weight (default 160), halved
until the ring fits ``max_ring_size`` (default 262,144 points, 2 MiB): at
10,000 endpoints of weight 1 that is 20 points each.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from array import array
from bisect import bisect_left
from typing import Unpack

from sdk.balancer._base import BalancerBase, CommonOptions, Slot

__all__ = ["RingHashBalancer", "key_point"]

_NUM_BITS = 24
_NUM_MASK = (1 << _NUM_BITS) - 1
_HASH_MASK = 0xFFFF_FFFF_FFFF_FFFF & ~_NUM_MASK
_BIG_ENDIAN = sys.byteorder == "big"
_SMALL_RING_FRACTION = 16  # below 1/16 usable, search a ring of the usable ones
_SPLICE_FRACTION = 8  # above 1/8 of the ring changing, re-sort instead of splicing


_blake2s = hashlib.blake2s
_first_u64 = struct.Struct("<Q").unpack_from


def key_point(key: str | bytes) -> int:
    """The ring point of a request key: the first 8 bytes of its BLAKE2s digest, hash bits only."""
    if isinstance(key, str):
        key = key.encode()
    point: int = _first_u64(_blake2s(key).digest())[0]
    return point & _HASH_MASK


def _points(endpoint_id: str, num: int, count: int) -> bytes:
    """``count`` ring entries of an endpoint, little-endian, slot number in the low bits."""
    buf = bytearray(hashlib.shake_128(endpoint_id.encode()).digest(8 * count))
    buf[0::8] = bytes((num & 0xFF,)) * count
    buf[1::8] = bytes(((num >> 8) & 0xFF,)) * count
    buf[2::8] = bytes(((num >> 16) & 0xFF,)) * count
    return bytes(buf)


def _entries(chunks: list[bytes]) -> array[int]:
    values = array("Q")
    values.frombytes(b"".join(chunks))
    if _BIG_ENDIAN:
        values.byteswap()
    return values


def _remove(ring: array[int], values: list[int]) -> array[int]:
    out = array("Q")
    start = 0
    last_value, last_pos = -1, -1
    for value in sorted(values):
        pos = last_pos + 1 if value == last_value else bisect_left(ring, value)
        out += ring[start:pos]
        start = pos + 1
        last_value, last_pos = value, pos
    out += ring[start:]
    return out


def _insert(ring: array[int], values: list[int]) -> array[int]:
    out = array("Q")
    start = 0
    for value in sorted(values):
        pos = bisect_left(ring, value, start)
        out += ring[start:pos]
        out.append(value)
        start = pos
    out += ring[start:]
    return out


class RingHashBalancer(BalancerBase):
    """Sticky routing: the same key goes to the same endpoint while it is usable.

    ``pick(key)`` is O(log n) (a binary search, then usually one step);
    ``pick()`` without a key picks a usable endpoint at random. Adding or
    removing one of N endpoints moves about 1/N of the keys. Weights scale an
    endpoint's share of the ring; health and ejection make the walk skip it.
    """

    name = "ring_hash"
    options = ("vnodes_per_weight", "max_ring_size")

    def __init__(
        self,
        *,
        vnodes_per_weight: int = 160,
        max_ring_size: int = 1 << 18,
        **common: Unpack[CommonOptions],
    ) -> None:
        super().__init__(**common)
        if isinstance(vnodes_per_weight, bool) or not 1 <= vnodes_per_weight <= 10_000:
            raise ValueError(f"vnodes_per_weight must be 1-10000, got {vnodes_per_weight!r}")
        if isinstance(max_ring_size, bool) or not 1 <= max_ring_size <= 1 << 26:
            raise ValueError(f"max_ring_size must be 1-{1 << 26}, got {max_ring_size!r}")
        self._vnodes = int(vnodes_per_weight)
        self._max_ring = int(max_ring_size)
        self._ring: array[int] = array("Q")
        self._small: array[int] | None = None
        self._members: dict[str, tuple[int, int]] = {}  # id -> (slot number, point count)
        self._by_num: list[Slot | None] = []
        self._free: list[int] = []
        self._list: list[Slot] = []

    @property
    def ring_size(self) -> int:
        """How many points the ring holds (all endpoints, usable or not)."""
        return len(self._ring)

    def _counts(self) -> dict[str, int]:
        total = sum(s.endpoint.weight for s in self._order)
        per_weight = float(self._vnodes)
        # Halving (not an exact fit) keeps the scale a function of the total weight
        # that changes rarely, so most membership changes can splice the ring.
        while per_weight * total > self._max_ring and per_weight > 1e-9:
            per_weight /= 2
        return {s.id: max(1, round(s.endpoint.weight * per_weight)) for s in self._order}

    def _rebuild(self, candidates: list[Slot]) -> None:
        self._list = list(candidates)
        counts = self._counts()
        members = self._members
        if counts.keys() != members.keys() or any(members[i][1] != c for i, c in counts.items()):
            self._resize(counts)
        if candidates and len(candidates) * _SMALL_RING_FRACTION < len(self._order):
            chunks = [_points(s.id, s.ring_num, counts[s.id]) for s in candidates]
            self._small = array("Q", sorted(_entries(chunks)))
        else:
            self._small = None

    def _resize(self, counts: dict[str, int]) -> None:
        members = self._members
        gone = [i for i in members if counts.get(i) != members[i][1]]
        new = [s for s in self._order if members.get(s.id, (0, 0))[1] != counts[s.id]]
        changed = sum(members[i][1] for i in gone) + sum(counts[s.id] for s in new)
        if changed * _SPLICE_FRACTION > len(self._ring):
            self._resort(counts)
            return
        stale: list[int] = []
        kept: dict[str, int] = {}  # ids whose point count changed keep their number
        for endpoint_id in gone:
            num, count = members.pop(endpoint_id)
            stale.extend(_entries([_points(endpoint_id, num, count)]))
            if endpoint_id in counts:
                kept[endpoint_id] = num
            else:
                self._by_num[num] = None
                self._free.append(num)
        fresh: list[int] = []
        for slot in new:
            num = kept[slot.id] if slot.id in kept else self._allocate(slot)
            members[slot.id] = (num, counts[slot.id])
            fresh.extend(_entries([_points(slot.id, num, counts[slot.id])]))
        self._ring = _insert(_remove(self._ring, stale), fresh)

    def _allocate(self, slot: Slot) -> int:
        if self._free:
            num = self._free.pop()
            self._by_num[num] = slot
        else:
            num = len(self._by_num)
            if num > _NUM_MASK:
                raise ValueError(f"ring_hash holds at most {_NUM_MASK + 1} endpoints")
            self._by_num.append(slot)
        slot.ring_num = num
        return num

    def _resort(self, counts: dict[str, int]) -> None:
        if len(self._order) > _NUM_MASK + 1:
            raise ValueError(f"ring_hash holds at most {_NUM_MASK + 1} endpoints")
        self._by_num = list(self._order)
        self._free = []
        self._members = {}
        chunks = []
        for num, slot in enumerate(self._order):
            slot.ring_num = num
            self._members[slot.id] = (num, counts[slot.id])
            chunks.append(_points(slot.id, num, counts[slot.id]))
        self._ring = array("Q", sorted(_entries(chunks)))

    def _pick(self, key: str | bytes | None) -> Slot:
        if key is None:
            return self._list[int(self._rng.random() * len(self._list))]
        ring = self._small if self._small is not None else self._ring
        n = len(ring)
        i = bisect_left(ring, key_point(key))
        by_num = self._by_num
        for _ in range(n):
            if i == n:
                i = 0
            slot = by_num[ring[i] & _NUM_MASK]
            if slot is not None and slot.routable:
                return slot
            i += 1
        raise AssertionError("ring_hash: no usable endpoint on the ring")  # pragma: no cover
