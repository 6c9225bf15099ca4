"""A route's rate limit: its policies, whose bucket a request takes from, the answer.

Every response of a limited route carries ``RateLimit-Limit``,
``RateLimit-Remaining`` and ``RateLimit-Reset`` (the names of the IETF
httpapi draft): :meth:`RateLimiter.decide` returns the decision and
:func:`headers` its fields, for the server to add to the upstream's answer;
a refused request gets 429 with ``Retry-After`` as well.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Sequence

from sidecar.gateway.ratelimit._config import RateLimitConfig
from sidecar.gateway.ratelimit._local import Decision, LocalBuckets
from sidecar.gateway.ratelimit._redis import RateLimitStore
from sidecar.gateway.request import GatewayRequest, LocalResponse

__all__ = ["RateLimiter", "headers", "refusal"]

log = logging.getLogger(__name__)

#: Header values longer than this are keyed by their SHA-256, not verbatim.
_MAX_KEY_VALUE = 128


def _client_ip(request: GatewayRequest) -> str:
    return "ip:" + request.client_ip


def _consumer(request: GatewayRequest) -> str:
    # Without a consumer (no authentication on the route, or an anonymous one), by address.
    consumer = request.consumer
    return "c:" + consumer.name if consumer is not None else "ip:" + request.client_ip


def _whole_route(request: GatewayRequest) -> str:
    return "route"


def _by_header(name: str) -> Callable[[GatewayRequest], str]:
    def key(request: GatewayRequest) -> str:
        value = request.headers.get(name)
        if value is None:
            return "ip:" + request.client_ip
        if len(value) > _MAX_KEY_VALUE:
            return "h#" + hashlib.sha256(value.encode()).hexdigest()[:32]
        return "h:" + value

    return key


def key_function(key: str) -> Callable[[GatewayRequest], str]:
    """What identifies a request's bucket under ``key`` (a policy's ``key`` field):
    ``c:<consumer>``, ``ip:<address>``, ``route`` or ``h:<value>``; a request with
    no consumer or no such header falls back to its client address."""
    if key.startswith("header:"):
        return _by_header(key.removeprefix("header:").lower())
    return {"consumer": _consumer, "ip": _client_ip, "route": _whole_route}[key]


def _tighter(new: Decision, old: Decision) -> bool:
    """Whether ``new`` says more for the headers than ``old``: known numbers beat
    unknown ones (store errors), fewer tokens left beat more."""
    if new.store_error or old.store_error:
        return old.store_error and not new.store_error
    return new.remaining < old.remaining


class _Policy:
    __slots__ = (
        "allow_on_error",
        "capacity",
        "config",
        "interval",
        "key",
        "prefix",
        "tol_us",
        "us",
    )

    def __init__(self, config: RateLimitConfig, prefix: str) -> None:
        self.config = config
        self.capacity = config.capacity
        self.interval = config.interval
        self.key = key_function(config.key)
        self.prefix = prefix
        # The global store counts in whole microseconds.
        self.us = max(1, round(config.interval * 1e6))
        self.tol_us = self.us * self.capacity
        self.allow_on_error = config.on_store_error == "allow"


class RateLimiter:
    """The rate limit of one route: ``policies`` (one or several, each with buckets
    of its own, keyed ``<route>:<index>:<key>``), local ones in ``buckets`` and
    global ones in ``store``. A request must be allowed by every policy.

    Counters: ``limited`` (429s), ``store_error_allowed`` and
    ``store_error_denied`` (decisions made by ``on_store_error``).
    """

    def __init__(
        self,
        route: str,
        policies: RateLimitConfig | Sequence[RateLimitConfig],
        *,
        buckets: LocalBuckets,
        store: RateLimitStore | None = None,
    ) -> None:
        if isinstance(policies, RateLimitConfig):
            policies = (policies,)
        if not policies:
            raise ValueError(f"route {route!r}: rate_limit has no policy")
        self.route = route
        self._buckets = buckets
        self._store = store
        self._local: list[_Policy] = []
        self._global: list[_Policy] = []
        for index, config in enumerate(policies):
            if config.scope == "global":
                if store is None:
                    raise ValueError(
                        f"route {route!r}: rate_limit scope: global needs a rate_limit_store"
                    )
                self._global.append(_Policy(config, store.key_prefix(route, index)))
            else:
                self._local.append(_Policy(config, f"{route}:{index}:"))
        self._logged_outage = 0
        self.limited = 0
        self.store_error_allowed = 0
        self.store_error_denied = 0

    @property
    def local_only(self) -> bool:
        """Whether every policy is local: :meth:`decide_now` decides without waiting."""
        return not self._global

    def decide_now(self, request: GatewayRequest) -> Decision:
        """:meth:`decide` for a limiter whose policies are all local (no store to ask)."""
        assert not self._global, "a global policy asks its store: use decide()"
        best = self._decide_local(request)
        assert best is not None
        return best

    def _decide_local(self, request: GatewayRequest) -> Decision | None:
        best: Decision | None = None
        for policy in self._local:
            decision = self._buckets.take(
                policy.prefix + policy.key(request), policy.interval, policy.capacity
            )
            if not decision.allowed:
                self.limited += 1
                return decision
            if best is None or _tighter(decision, best):
                best = decision
        return best

    async def decide(self, request: GatewayRequest) -> Decision:
        """Takes a token from each policy's bucket for ``request``; the first refusal
        ends it (later policies are not charged). Allowed: the decision of the policy
        with the fewest tokens left, for the headers."""
        best = self._decide_local(request)
        if best is not None and not best.allowed:
            return best
        for policy in self._global:
            decision = await self._take_global(policy, request)
            if not decision.allowed:
                if not decision.store_error:
                    self.limited += 1
                return decision
            if best is None or _tighter(decision, best):
                best = decision
        assert best is not None
        return best

    async def check(self, request: GatewayRequest) -> LocalResponse | None:
        """None when ``request`` may go on; else the answer to give it (429, or 503
        while the store is down under ``on_store_error: deny``)."""
        return refusal(await self.decide(request))

    async def _take_global(self, policy: _Policy, request: GatewayRequest) -> Decision:
        assert self._store is not None
        key = policy.prefix + policy.key(request)
        answer = await self._store.take(key, policy.us, policy.tol_us)
        if answer is None:
            return self._on_store_error(policy)
        allowed, ahead_us = answer
        ahead = ahead_us / 1e6
        if not allowed:
            retry = (ahead_us + policy.us - policy.tol_us) / 1e6
            return Decision(False, policy.capacity, 0, ahead, retry)
        remaining = (policy.tol_us - ahead_us) // policy.us
        return Decision(True, policy.capacity, remaining, ahead)

    def _on_store_error(self, policy: _Policy) -> Decision:
        assert self._store is not None
        if self._logged_outage != self._store.outages:
            self._logged_outage = self._store.outages
            log.warning(
                "route %s: the rate limit store is unavailable; requests are %s "
                "(on_store_error: %s) until it is back",
                self.route,
                "allowed" if policy.allow_on_error else "refused with 503",
                policy.config.on_store_error,
            )
        if policy.allow_on_error:
            self.store_error_allowed += 1
        else:
            self.store_error_denied += 1
        retry = self._store.config.probe_interval
        return Decision(policy.allow_on_error, policy.capacity, 0, 0.0, retry, store_error=True)


def headers(decision: Decision) -> list[tuple[str, str]]:
    """The ``RateLimit-*`` fields of ``decision`` (none when the store could not be
    asked: its numbers are unknown), and ``Retry-After`` when it refuses."""
    fields: list[tuple[str, str]] = []
    if not decision.store_error:
        fields += [
            ("ratelimit-limit", str(decision.limit)),
            ("ratelimit-remaining", str(decision.remaining)),
            ("ratelimit-reset", str(math.ceil(decision.reset))),
        ]
    if not decision.allowed:
        fields.append(("retry-after", str(max(1, math.ceil(decision.retry_after)))))
    return fields


def refusal(decision: Decision) -> LocalResponse | None:
    """The answer to a refused request (None when ``decision`` allows it): 429
    ``rate_limited``, or 503 ``rate_limit_store_unavailable`` when a
    ``scope: global`` policy with ``on_store_error: deny`` could not ask its store."""
    if decision.allowed:
        return None
    if decision.store_error:
        return LocalResponse.error(
            503,
            "rate_limit_store_unavailable",
            "the rate limit store is unavailable; try again later",
            headers(decision),
        )
    return LocalResponse.error(
        429,
        "rate_limited",
        f"rate limit exceeded; retry after {max(1, math.ceil(decision.retry_after))}s",
        headers(decision),
    )
