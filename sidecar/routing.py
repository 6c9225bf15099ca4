"""One balancer per upstream, and the pick handles that carry feedback back to it.

``PickEndpoint`` answers with a ``pick_id``; ``ReportResult(pick_id, …)``
releases that pick on its balancer with the call's latency and outcome
(what ``least_connections`` and ``p2c_ewma`` learn from). Handles are
bounded: at most ``max_picks`` are outstanding, and one older than
``pick_ttl`` seconds is released without feedback when it is next seen, so
applications that never report cannot make the table (or the in-flight
counts) grow without bound.
"""

from __future__ import annotations

import itertools
import logging
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sdk import Instance
from sdk.balancer import Balancer, Endpoint, Locality, NoEndpointsError, make_balancer
from sidecar.cache import UpstreamKey
from sidecar.config import NodeConfig, UpstreamConfig
from sidecar.errors import NoRouteError, UnknownPickError, UnknownServiceError

__all__ = ["Pick", "Router"]

logger = logging.getLogger(__name__)

#: Picks not yet reported, at most.
MAX_PICKS = 10_000
#: Seconds after which an unreported pick is released without feedback.
PICK_TTL = 300.0


@dataclass(slots=True)
class Pick:
    """One outstanding pick: which upstream, which endpoint, when."""

    key: UpstreamKey
    endpoint_id: str
    at: float


class _Upstream:
    __slots__ = ("balancer", "config", "instances")

    def __init__(self, config: UpstreamConfig, balancer: Balancer) -> None:
        self.config = config
        self.balancer = balancer
        self.instances: dict[str, Instance] = {}


class Router:
    """The balancers of a sidecar's upstreams, fed by the endpoint cache."""

    def __init__(
        self,
        upstreams: Sequence[UpstreamConfig],
        node: NodeConfig,
        *,
        max_picks: int = MAX_PICKS,
        pick_ttl: float = PICK_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._locality = Locality(zone=node.zone, region=node.region)
        self._upstreams: dict[UpstreamKey, _Upstream] = {}
        for config in upstreams:
            self.add(config)
        self._picks: OrderedDict[str, Pick] = OrderedDict()
        self._max_picks = max_picks
        self._pick_ttl = pick_ttl
        self._clock = clock
        self._prefix = secrets.token_hex(4)
        self._counter = itertools.count(1)
        #: Picks released without a report (evicted or expired), for metrics.
        self.picks_expired = 0

    def add(self, config: UpstreamConfig) -> bool:
        """A balancer for one more upstream (empty until endpoints come); False
        when the upstream has one already (its balancer is kept)."""
        if config.key in self._upstreams:
            return False
        options = dict(config.options)
        locality = self._locality
        if config.locality and (locality.zone or locality.region):
            balancer: Balancer = make_balancer(config.balancer, locality=locality, **options)
        else:
            balancer = make_balancer(config.balancer, **options)
        self._upstreams[config.key] = _Upstream(config, balancer)
        return True

    @property
    def keys(self) -> tuple[UpstreamKey, ...]:
        return tuple(self._upstreams)

    @property
    def outstanding(self) -> int:
        return len(self._picks)

    def config(self, key: UpstreamKey) -> UpstreamConfig:
        return self._get(key).config

    def balancer(self, key: UpstreamKey) -> Balancer:
        return self._get(key).balancer

    def names(self) -> list[str]:
        """The upstreams, for error messages (``orders``, ``team-a/billing``)."""
        return [name if ns == "default" else f"{ns}/{name}" for ns, name in self._upstreams]

    def update(
        self,
        key: UpstreamKey,
        instances: Sequence[Instance],
        endpoints: Sequence[Endpoint] | None = None,
    ) -> None:
        """Feeds an upstream's new endpoints to its balancer (state of kept ids survives).

        ``endpoints`` are ``endpoints_of(instances)`` when the caller already
        built them (to check an update before committing it).
        """
        upstream = self._upstreams.get(key)
        if upstream is None:
            return
        upstream.balancer.update(endpoints_of(instances) if endpoints is None else endpoints)
        upstream.instances = {i.id: i for i in instances}

    def pick(self, key: UpstreamKey, request_key: str = "") -> tuple[Instance, str]:
        """An endpoint of the upstream and a pick id to report its outcome with.

        Raises UnknownServiceError, or NoRouteError (a NoEndpointsError) when nothing may be
        picked.
        """
        upstream = self._get(key)
        try:
            endpoint = upstream.balancer.pick(request_key or None)
        except NoEndpointsError as exc:
            raise NoRouteError(
                f"service {key[1]!r}: {exc.message}", total=exc.total, unavailable=exc.unavailable
            ) from None
        now = self._clock()
        self._expire(now)
        if len(self._picks) >= self._max_picks:
            self._release_oldest()
        pick_id = f"{self._prefix}-{next(self._counter)}"
        self._picks[pick_id] = Pick(key, endpoint.id, now)
        return upstream.instances[endpoint.id], pick_id

    def report(self, pick_id: str, *, latency: float | None, failed: bool) -> None:
        """Releases a pick with the call's outcome; ``latency`` None measures since the pick."""
        if latency is not None and not (math.isfinite(latency) and latency >= 0):
            raise ValueError("latency must be a finite number of seconds >= 0")
        pick = self._picks.pop(pick_id, None)
        if pick is None:
            raise UnknownPickError(pick_id)
        if latency is None:
            latency = max(0.0, self._clock() - pick.at)
        upstream = self._upstreams.get(pick.key)
        if upstream is not None:
            upstream.balancer.release(pick.endpoint_id, latency=latency, failed=failed)

    def _get(self, key: UpstreamKey) -> _Upstream:
        upstream = self._upstreams.get(key)
        if upstream is None:
            raise UnknownServiceError(key[1], key[0], self.names(), "an upstream")
        return upstream

    def _expire(self, now: float) -> None:
        limit = now - self._pick_ttl
        while self._picks:
            oldest = next(iter(self._picks.values()))
            if oldest.at > limit:
                return
            self._release_oldest()

    def _release_oldest(self) -> None:
        _, pick = self._picks.popitem(last=False)
        self.picks_expired += 1
        upstream = self._upstreams.get(pick.key)
        if upstream is not None:
            upstream.balancer.release(pick.endpoint_id)


def endpoints_of(instances: Sequence[Instance]) -> list[Endpoint]:
    """The balancer's view of some instances (raises ValueError for a malformed one)."""
    return [Endpoint.from_instance(i) for i in instances]
