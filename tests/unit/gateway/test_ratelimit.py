"""Rate limit policies: configuration, token bucket arithmetic on a fake clock, keys,
headers and refusals (the Redis store is tested in
tests/integration/test_gateway_ratelimit.py)."""

from __future__ import annotations

import json

import pytest
from pydantic import TypeAdapter, ValidationError

from sidecar.gateway.ratelimit import (
    Decision,
    LocalBuckets,
    RateLimitConfig,
    RateLimiter,
    RateLimitPolicies,
    RateLimitStoreConfig,
    headers,
    refusal,
)
from sidecar.gateway.request import Consumer, GatewayRequest, Headers


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def request(
    *, consumer: str | None = None, ip: str = "10.0.0.1", headers: dict[str, str] | None = None
) -> GatewayRequest:
    return GatewayRequest(
        method="GET",
        host="api.example.com",
        path="/",
        headers=Headers((headers or {}).items()),
        client_ip=ip,
        route="orders",
        consumer=Consumer(consumer, via="key_auth") if consumer else None,
    )


def limiter(
    clock: Clock, *policies: RateLimitConfig, route: str = "orders", max_buckets: int = 1000
) -> RateLimiter:
    return RateLimiter(route, policies, buckets=LocalBuckets(max_buckets, clock=clock))


# --- configuration -------------------------------------------------------------------


def test_config_defaults_and_the_bucket_it_means() -> None:
    config = RateLimitConfig.model_validate({"rate": 100, "per": "1s", "burst": 20})
    assert (config.capacity, config.interval, config.key, config.scope) == (
        20,
        0.01,
        "consumer",
        "local",
    )
    assert RateLimitConfig(rate=50, per="1m").capacity == 50  # burst defaults to rate


def test_global_scope_requires_on_store_error_naming_it() -> None:
    with pytest.raises(ValidationError, match="on_store_error is required with scope: global"):
        RateLimitConfig.model_validate({"rate": 10, "scope": "global"})
    config = RateLimitConfig.model_validate(
        {"rate": 10, "scope": "global", "on_store_error": "deny"}
    )
    assert config.on_store_error == "deny"
    with pytest.raises(ValidationError, match="on_store_error applies to scope: global only"):
        RateLimitConfig.model_validate({"rate": 10, "on_store_error": "allow"})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("key", "cookie", "key 'cookie' must be consumer, ip, route or header:<name>"),
        ("key", "header:", "write header:<name>"),
        ("key", "query:x", "write header:<name>"),
        ("rate", 0, "greater than or equal to 1"),
        ("burst", 0, "greater than or equal to 1"),
        ("per", "0s", "per must be from 1ms"),
        ("per", "100", "has no unit"),
        ("scope", "cluster", "'local' or 'global'"),
        ("limit", 3, "Extra inputs are not permitted"),
    ],
)
def test_config_errors_name_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        RateLimitConfig.model_validate({"rate": 10, field: value})
    locations = {err["loc"][0] for err in caught.value.errors() if err["loc"]}
    assert not locations or field in locations


def test_config_is_frozen() -> None:
    config = RateLimitConfig(rate=1)
    with pytest.raises(ValidationError):
        config.rate = 2  # type: ignore[misc]


def test_policies_one_mapping_or_a_list() -> None:
    adapter = TypeAdapter(RateLimitPolicies)
    assert len(adapter.validate_python({"rate": 1})) == 1
    assert len(adapter.validate_python([{"rate": 1}, {"rate": 100, "per": "1h"}])) == 2
    with pytest.raises(ValidationError, match="at most 8"):
        adapter.validate_python([{"rate": 1}] * 9)
    with pytest.raises(ValidationError):
        adapter.validate_python([])


def test_store_config() -> None:
    config = RateLimitStoreConfig.model_validate(
        {"url": "redis://127.0.0.1:6379", "timeout": "50ms"}
    )
    assert (config.timeout, config.probe_interval, config.key_prefix) == (0.05, 1.0, "eco:rl")
    with pytest.raises(ValidationError, match="url must start with redis://"):
        RateLimitStoreConfig(url="http://127.0.0.1:6379")
    with pytest.raises(ValidationError, match="url has no host"):
        RateLimitStoreConfig(url="redis://")
    with pytest.raises(ValidationError, match="timeout must be from 1ms to 10s"):
        RateLimitStoreConfig(url="redis://h", timeout="1m")


def test_a_global_policy_without_a_store_is_refused() -> None:
    policy = RateLimitConfig(rate=1, scope="global", on_store_error="allow")
    with pytest.raises(ValueError, match="route 'orders': rate_limit scope: global needs"):
        RateLimiter("orders", policy, buckets=LocalBuckets())


# --- the bucket ----------------------------------------------------------------------


def test_rate_100_per_second_burst_20() -> None:
    """20 at once after an idle moment, then one every 10 ms: 120 in the first second."""
    clock = Clock()
    buckets = LocalBuckets(clock=clock)
    first = [buckets.take("k", 0.01, 20) for _ in range(21)]
    assert [d.allowed for d in first] == [True] * 20 + [False]
    assert [d.remaining for d in first[:20]] == list(range(19, -1, -1))
    assert first[-1].retry_after == pytest.approx(0.01)
    assert first[19].reset == pytest.approx(0.2)  # empty: 20 tokens * 10 ms to be full
    clock.now += 0.005
    assert not buckets.take("k", 0.01, 20).allowed
    clock.now += 0.005
    assert buckets.take("k", 0.01, 20).allowed
    allowed = 21
    for _ in range(990):  # the rest of the second, a request every millisecond
        clock.now += 0.001
        allowed += buckets.take("k", 0.01, 20).allowed
    assert allowed == 120


def test_an_idle_bucket_fills_up_to_its_capacity_only() -> None:
    clock = Clock()
    buckets = LocalBuckets(clock=clock)
    for _ in range(5):
        buckets.take("k", 1.0, 5)
    clock.now += 3600
    results = [buckets.take("k", 1.0, 5).allowed for _ in range(6)]
    assert results == [True] * 5 + [False]


def test_refused_requests_do_not_use_tokens() -> None:
    clock = Clock()
    buckets = LocalBuckets(clock=clock)
    assert buckets.take("k", 1.0, 1).allowed
    for _ in range(100):
        assert not buckets.take("k", 1.0, 1).allowed
    clock.now += 1.0
    assert buckets.take("k", 1.0, 1).allowed


def test_buckets_are_bounded_least_recently_used_first() -> None:
    clock = Clock()
    buckets = LocalBuckets(3, clock=clock)
    for key in "abc":
        buckets.take(key, 1.0, 1)
    buckets.take("a", 1.0, 1)  # a is used again: b is now the oldest
    buckets.take("d", 1.0, 1)
    assert len(buckets) == 3
    assert buckets.evicted_early == 1  # b was still refilling
    assert not buckets.take("a", 1.0, 1).allowed  # kept
    assert buckets.take("b", 1.0, 1).allowed  # forgotten: full again
    clock.now += 10
    buckets.take("e", 1.0, 1)  # evicts a full bucket: nothing lost
    assert buckets.evicted_early == 2


# --- keys ----------------------------------------------------------------------------


async def test_consumer_key_with_address_fallback() -> None:
    limit = limiter(Clock(), RateLimitConfig(rate=1, per="1h"))
    assert await limit.check(request(consumer="alice")) is None
    assert await limit.check(request(consumer="alice", ip="10.9.9.9")) is not None
    assert await limit.check(request(consumer="bob")) is None
    assert await limit.check(request()) is None  # no consumer: by address
    assert await limit.check(request(ip="10.0.0.2")) is None
    assert await limit.check(request(ip="10.0.0.2")) is not None


async def test_ip_route_and_header_keys() -> None:
    clock = Clock()
    by_ip = limiter(clock, RateLimitConfig(rate=1, per="1h", key="ip"), route="a")
    assert await by_ip.check(request(consumer="alice")) is None
    assert await by_ip.check(request(consumer="bob")) is not None  # same address

    whole = limiter(clock, RateLimitConfig(rate=2, per="1h", key="route"), route="b")
    assert await whole.check(request(ip="1.1.1.1")) is None
    assert await whole.check(request(ip="2.2.2.2")) is None
    assert await whole.check(request(ip="3.3.3.3")) is not None

    tenant = limiter(clock, RateLimitConfig(rate=1, per="1h", key="header:X-Tenant"), route="c")
    assert await tenant.check(request(headers={"x-tenant": "t1"})) is None
    assert await tenant.check(request(headers={"x-tenant": "t1"}, ip="9.9.9.9")) is not None
    assert await tenant.check(request(headers={"x-tenant": "t2"})) is None
    long = "v" * 1000
    assert await tenant.check(request(headers={"x-tenant": long})) is None
    assert await tenant.check(request(headers={"x-tenant": long})) is not None
    assert await tenant.check(request()) is None  # no header: by address
    assert await tenant.check(request()) is not None


async def test_two_policies_and_two_routes_never_share_a_bucket() -> None:
    clock = Clock()
    buckets = LocalBuckets(clock=clock)
    same = RateLimitConfig(rate=1, per="1h")
    both = RateLimiter("orders", [same, same], buckets=buckets)
    other = RateLimiter("users", same, buckets=buckets)
    assert await both.check(request(consumer="alice")) is None  # one token from each policy
    assert await other.check(request(consumer="alice")) is None
    assert len(buckets) == 3


async def test_every_policy_must_allow_and_headers_follow_the_tightest() -> None:
    clock = Clock()
    limit = limiter(
        clock,
        RateLimitConfig(rate=10, per="1s"),
        RateLimitConfig(rate=3, per="1m"),
    )
    decisions = [await limit.decide(request(consumer="alice")) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [(d.limit, d.remaining) for d in decisions[:3]] == [(3, 2), (3, 1), (3, 0)]
    assert decisions[3].retry_after == pytest.approx(20.0)
    assert limit.limited == 1


# --- headers and answers -------------------------------------------------------------


def test_headers_of_an_allowed_request() -> None:
    assert headers(Decision(True, 20, 19, 0.01)) == [
        ("ratelimit-limit", "20"),
        ("ratelimit-remaining", "19"),
        ("ratelimit-reset", "1"),
    ]


def test_a_refusal_is_429_with_retry_after_rounded_up() -> None:
    answer = refusal(Decision(False, 20, 0, 0.2, 0.0101))
    assert answer is not None
    assert answer.status == 429
    assert dict(answer.headers) == {
        "content-type": "application/json",
        "ratelimit-limit": "20",
        "ratelimit-remaining": "0",
        "ratelimit-reset": "1",
        "retry-after": "1",
    }
    assert json.loads(answer.body)["error"] == "rate_limited"
    assert dict(headers(Decision(False, 5, 0, 300.0, 60.2)))["retry-after"] == "61"
    assert refusal(Decision(True, 20, 3, 1.0)) is None


def test_store_errors_carry_no_numbers() -> None:
    assert headers(Decision(True, 20, 0, 0.0, 1.0, store_error=True)) == []
    answer = refusal(Decision(False, 20, 0, 0.0, 0.5, store_error=True))
    assert answer is not None
    assert answer.status == 503
    assert json.loads(answer.body)["error"] == "rate_limit_store_unavailable"
    assert dict(answer.headers)["retry-after"] == "1"
    assert "ratelimit-limit" not in dict(answer.headers)
