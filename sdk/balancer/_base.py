"""The balancer protocol, and the machinery every strategy shares.

A balancer holds the current endpoints of one service. ``update()`` replaces
them (it is called on every watch update) and is where every structure a
strategy needs is rebuilt; ``pick()`` only reads those structures, so it costs
O(1) or O(log n). Per-endpoint state (in-flight requests, latency estimate)
lives in a ``_Slot`` keyed by endpoint id and survives an update for every id
still present.

Health, ejection and panic are decided here, once, for all strategies: an
endpoint is *available* unless it is CRITICAL or ejected. When fewer than
``panic_threshold`` of all endpoints are available, the balancer *panics* and
routes to all of them, critical and ejected included, rather than pile the
whole load on the few that are left.

Not thread-safe: a balancer belongs to one asyncio event loop (or one thread).
"""

from __future__ import annotations

import abc
import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Protocol, TypedDict, runtime_checkable

from sdk._types import HealthStatus
from sdk.balancer._endpoint import Endpoint
from sdk.balancer._errors import NoEndpointsError

__all__ = ["Balancer", "BalancerBase", "Clock", "CommonOptions", "Ejections", "Slot"]

Clock = Callable[[], float]

DEFAULT_PANIC_THRESHOLD = 0.5


class CommonOptions(TypedDict, total=False):
    """The options every strategy takes (see ``BalancerBase``)."""

    panic_threshold: float
    seed: int | None
    clock: Clock


@runtime_checkable
class Balancer(Protocol):
    """What every strategy offers; see ``docs/load-balancing.md``.

    The feedback design is *pick, then release*: ``pick()`` returns a plain
    :class:`Endpoint` and counts one request in flight on it; the caller
    reports the outcome with ``release(endpoint, latency=..., failed=...)``
    exactly once per pick. Releasing by endpoint (or id) rather than through a
    handle object lets the outcome cross a process boundary (the sidecar's
    local API releases by endpoint id).
    """

    @property
    def name(self) -> str:
        """The strategy's name, as given to ``make_balancer``."""
        ...

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """Every endpoint of the last update, in its order, routable or not."""
        ...

    @property
    def panicking(self) -> bool:
        """True while too few endpoints are available and all of them are routed to."""
        ...

    @property
    def ejected(self) -> frozenset[str]:
        """Ids whose ejection has not yet expired (they may be absent from ``endpoints``)."""
        ...

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """Replaces the endpoints; state is kept for every id still present."""
        ...

    def pick(self, key: str | bytes | None = None) -> Endpoint:
        """One endpoint for one request; raises :class:`NoEndpointsError` if none may be used."""
        ...

    def release(
        self, endpoint: Endpoint | str, *, latency: float | None = None, failed: bool = False
    ) -> None:
        """Ends one request picked earlier; ``latency`` in seconds."""
        ...

    def eject(self, endpoint_id: str, until: float) -> None:
        """Skips an endpoint until the balancer's clock reaches ``until``."""
        ...

    def uneject(self, endpoint_id: str) -> None:
        """Lifts an ejection early; no error if there is none."""
        ...

    def in_flight(self, endpoint_id: str) -> int:
        """Requests picked on an endpoint and not yet released (0 if unknown)."""
        ...


class Slot:
    """A balancer's state for one endpoint id; survives updates while the id does."""

    __slots__ = ("endpoint", "ewma", "id", "in_flight", "ring_num", "routable", "seq", "stamp")

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.id = endpoint.id
        self.in_flight = 0
        #: latency estimate in seconds (p2c_ewma), None until the first sample
        self.ewma: float | None = None
        self.stamp = 0.0
        #: in the candidate set of the last selection
        self.routable = False
        #: least_connections: the sequence number of this slot's live heap entry
        self.seq = -1
        #: ring_hash: the number packed into this slot's ring entries
        self.ring_num = -1

    def __repr__(self) -> str:
        return f"Slot({self.id!r}, in_flight={self.in_flight})"


class Ejections:
    """Ejected endpoint ids and when each ejection ends, on one clock.

    ``version`` changes whenever the set changes, so a balancer can tell in O(1)
    that its selection is out of date. One instance can be shared by several
    balancers (the locality wrapper shares one among its tiers).
    """

    __slots__ = ("clock", "next_expiry", "records", "version")

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.records: dict[str, float] = {}
        self.next_expiry = math.inf
        self.version = 0

    def eject(self, endpoint_id: str, until: float) -> None:
        if math.isnan(until):
            raise ValueError("until must be a time on the balancer's clock, not NaN")
        if until <= self.clock():
            self.uneject(endpoint_id)
            return
        if self.records.get(endpoint_id) == until:
            return
        self.records[endpoint_id] = until
        self.next_expiry = min(self.next_expiry, until)
        self.version += 1

    def uneject(self, endpoint_id: str) -> None:
        if self.records.pop(endpoint_id, None) is not None:
            self.next_expiry = min(self.records.values(), default=math.inf)
            self.version += 1

    def poll(self) -> None:
        """Drops expired ejections; cheap when none is due."""
        if self.records and self.next_expiry <= (now := self.clock()):
            self.records = {k: t for k, t in self.records.items() if t > now}
            self.next_expiry = min(self.records.values(), default=math.inf)
            self.version += 1

    def current(self) -> frozenset[str]:
        self.poll()
        return frozenset(self.records)


class BalancerBase(abc.ABC):
    """Endpoint bookkeeping, health, ejection and panic; subclasses add the picking.

    A subclass implements ``_rebuild(candidates)`` (called from ``update()``
    and whenever the ejection set changes, with the slots it may route to)
    and ``_pick(key)`` (never called while there are no candidates). It may
    override ``_select`` to choose candidates differently and ``_on_release``
    to consume feedback.
    """

    name = ""
    #: the options ``make_balancer`` accepts for this strategy, besides the common ones
    options: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
        seed: int | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        if isinstance(panic_threshold, bool) or not 0.0 <= panic_threshold <= 1.0:
            raise ValueError(f"panic_threshold must be between 0 and 1, got {panic_threshold!r}")
        self._panic_threshold = float(panic_threshold)
        self._rng = random.Random(seed)
        self._clock = clock
        self._ejections = Ejections(clock)
        self._ejections_seen = 0
        self._slots: dict[str, Slot] = {}
        self._order: list[Slot] = []
        self._available = 0
        self._candidates = 0
        self._panicking = False

    # -- the Balancer protocol ------------------------------------------------

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(s.endpoint for s in self._order)

    @property
    def panicking(self) -> bool:
        self._refresh()
        return self._panicking

    @property
    def panic_threshold(self) -> float:
        return self._panic_threshold

    @property
    def ejected(self) -> frozenset[str]:
        return self._ejections.current()

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """Replaces the endpoints and rebuilds the pick structures: O(n), or more for ring_hash.

        A repeated id keeps its last occurrence. State (in-flight count,
        latency estimate) carries over for every id that was already present.
        """
        old = self._slots
        slots: dict[str, Slot] = {}
        for endpoint in endpoints:
            if not isinstance(endpoint, Endpoint):
                raise TypeError(f"expected Endpoint, got {type(endpoint).__name__}")
            slot = slots.get(endpoint.id) or old.get(endpoint.id)
            if slot is None:
                slot = Slot(endpoint)
            else:
                slot.endpoint = endpoint
            slots[endpoint.id] = slot
        self._slots = slots
        self._order = list(slots.values())
        self._reselect()

    def pick(self, key: str | bytes | None = None) -> Endpoint:
        ejections = self._ejections
        if ejections.records:
            ejections.poll()
        if ejections.version != self._ejections_seen:
            self._reselect()
        if not self._candidates:
            raise NoEndpointsError.for_counts(len(self._order), len(self._order) - self._available)
        slot = self._pick(key)
        slot.in_flight += 1
        return slot.endpoint

    def release(
        self, endpoint: Endpoint | str, *, latency: float | None = None, failed: bool = False
    ) -> None:
        if latency is not None and not latency >= 0.0:
            raise ValueError(f"latency must be a number of seconds >= 0, got {latency!r}")
        slot = self._slots.get(endpoint if isinstance(endpoint, str) else endpoint.id)
        if slot is None:
            return  # removed by an update while the request was in flight
        if slot.in_flight > 0:
            slot.in_flight -= 1
        self._on_release(slot, latency, failed)

    def eject(self, endpoint_id: str, until: float) -> None:
        """Skips an endpoint until ``until`` on the balancer's clock (default ``time.monotonic``).

        Ejected endpoints are treated like CRITICAL ones: skipped, and counted
        as unavailable for the panic threshold. The id need not be present
        yet; the ejection applies if it appears before ``until``. Ejecting
        again replaces the end time; ``math.inf`` lasts until ``uneject``.
        """
        self._ejections.eject(endpoint_id, until)

    def uneject(self, endpoint_id: str) -> None:
        self._ejections.uneject(endpoint_id)

    def in_flight(self, endpoint_id: str) -> int:
        slot = self._slots.get(endpoint_id)
        return slot.in_flight if slot is not None else 0

    def __len__(self) -> int:
        return len(self._order)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.name} endpoints={len(self._order)} "
            f"available={self._available} panicking={self._panicking}>"
        )

    # -- shared machinery -----------------------------------------------------

    def share_ejections(self, ejections: Ejections) -> None:
        """Uses an ejection set owned by someone else (the locality wrapper)."""
        self._ejections = ejections
        self._ejections_seen = -1

    def _refresh(self) -> None:
        """Brings the selection up to date with the ejection set; O(1) when it is."""
        self._ejections.poll()
        if self._ejections.version != self._ejections_seen:
            self._reselect()

    def _reselect(self) -> None:
        ejections = self._ejections
        self._ejections_seen = ejections.version
        ejected = ejections.records
        critical = HealthStatus.CRITICAL
        order = self._order
        available = [s for s in order if s.endpoint.health != critical and s.id not in ejected]
        self._available = len(available)
        total = len(order)
        self._panicking = (
            total > 0
            and self._panic_threshold > 0.0
            and len(available) < self._panic_threshold * total
        )
        candidates = order if self._panicking else self._select(available)
        for slot in order:
            slot.routable = False
        for slot in candidates:
            slot.routable = True
        self._candidates = len(candidates)
        self._rebuild(candidates)

    def _select(self, available: list[Slot]) -> list[Slot]:
        """The slots to route to when not panicking; all available ones by default."""
        return available

    @abc.abstractmethod
    def _rebuild(self, candidates: list[Slot]) -> None: ...

    @abc.abstractmethod
    def _pick(self, key: str | bytes | None) -> Slot: ...

    def _on_release(self, slot: Slot, latency: float | None, failed: bool) -> None:  # noqa: B027
        """Feedback hook; most strategies need only the in-flight count, so
        the default does nothing."""
