"""Global rate limits against a real redis-server: buckets shared by two gateway
replicas, and what requests get while the store is down, hung, and back."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import redis.asyncio as aioredis

from sidecar.gateway.ratelimit import (
    LocalBuckets,
    RateLimitConfig,
    RateLimiter,
    RateLimitStore,
    RateLimitStoreConfig,
    headers,
    refusal,
)
from sidecar.gateway.request import Consumer, GatewayRequest
from tests.harness.redis import RedisServer
from tests.util import assert_eventually


def request(consumer: str = "alice") -> GatewayRequest:
    return GatewayRequest(
        method="GET",
        host="api.example.com",
        path="/api/orders",
        client_ip="10.0.0.1",
        route="orders",
        consumer=Consumer(consumer, via="key_auth"),
    )


@asynccontextmanager
async def replica(
    redis_server: RedisServer, *policies: RateLimitConfig, timeout: str = "1s"
) -> AsyncIterator[tuple[RateLimiter, RateLimitStore]]:
    """One gateway's limiter for the route ``orders``, with a store of its own."""
    store = RateLimitStore(
        RateLimitStoreConfig(url=redis_server.url, timeout=timeout, probe_interval="50ms")
    )
    await store.start()
    try:
        yield RateLimiter("orders", policies, buckets=LocalBuckets(), store=store), store
    finally:
        await store.close()


def shared(rate: int, per: str = "1s", burst: int | None = None, **extra: str) -> RateLimitConfig:
    return RateLimitConfig(
        rate=rate, per=per, burst=burst, scope="global", on_store_error="allow", **extra
    )


async def test_a_global_bucket_refuses_with_429_and_headers(redis_server: RedisServer) -> None:
    async with replica(redis_server, shared(5, per="1h")) as (limit, store):
        decisions = [await limit.decide(request()) for _ in range(6)]
        assert [d.allowed for d in decisions] == [True] * 5 + [False]
        assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
        answer = refusal(decisions[5])
        assert answer is not None
        assert answer.status == 429
        fields = dict(answer.headers)
        assert fields["ratelimit-limit"] == "5"
        assert fields["ratelimit-remaining"] == "0"
        assert 3599 <= int(fields["ratelimit-reset"]) <= 3600
        assert 719 <= int(fields["retry-after"]) <= 720  # one token every 12 minutes
        assert json.loads(answer.body)["error"] == "rate_limited"
        assert await limit.check(request("bob")) is None  # bob has a bucket of his own
        assert store.errors == 0


async def test_keys_hold_route_policy_and_key_and_expire_when_full(
    redis_server: RedisServer,
) -> None:
    async with replica(redis_server, shared(10, per="1m"), shared(1000, per="1h")) as (limit, _):
        await limit.check(request())
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        keys = sorted(k.decode() for k in await client.keys("*"))
        assert keys == ["eco:rl:orders:0:c:alice", "eco:rl:orders:1:c:alice"]
        ttls = [await client.pttl(k) for k in keys]
        # Full again (the same as absent) one token's time later: 6 s, 3.6 s.
        assert 5_000 < ttls[0] <= 6_001
        assert 2_600 < ttls[1] <= 3_601
    finally:
        await client.aclose()


async def test_two_replicas_share_one_limit(redis_server: RedisServer) -> None:
    """Two gateways, each sending as fast as it can for a second: together they are
    allowed what one bucket allows (burst + rate x time), within 10%."""
    rate, burst = 200, 20
    policy = shared(rate, burst=burst, key="route")
    async with (
        replica(redis_server, policy) as (a, store_a),
        replica(redis_server, policy) as (
            b,
            store_b,
        ),
    ):
        allowed = {"a": 0, "b": 0}
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + 1.0

        async def client(name: str, limit: RateLimiter) -> None:
            while loop.time() < deadline:
                if await limit.check(request()) is None:
                    allowed[name] += 1

        async with asyncio.TaskGroup() as group:
            for _ in range(4):  # four requests in flight per replica
                group.create_task(client("a", a))
                group.create_task(client("b", b))
        elapsed = loop.time() - start
        expected = burst + rate * elapsed
        total = allowed["a"] + allowed["b"]
        assert abs(total - expected) <= 0.1 * expected, (allowed, expected)
        assert allowed["a"] > 0 and allowed["b"] > 0
        assert store_a.errors == store_b.errors == 0
        assert a.limited + b.limited > total  # they asked for much more than the limit


@pytest.mark.parametrize("on_store_error", ["allow", "deny"])
async def test_redis_stopped_mid_test_and_back(
    redis_server: RedisServer, on_store_error: str, caplog: pytest.LogCaptureFixture
) -> None:
    policy = RateLimitConfig.model_validate(
        {"rate": 3, "per": "1h", "scope": "global", "on_store_error": on_store_error}
    )
    async with replica(redis_server, policy, timeout="200ms") as (limit, store):
        assert [await limit.check(request()) is None for _ in range(4)] == [True] * 3 + [False]

        redis_server.halt()
        caplog.set_level(logging.WARNING, logger="sidecar.gateway.ratelimit")
        started = time.monotonic()
        answers = [await limit.check(request()) for _ in range(50)]
        assert time.monotonic() - started < 0.2  # the first fails at once (refused), then skipped
        assert not store.available
        assert store.errors == 1 and store.skipped == 49
        if on_store_error == "allow":
            assert answers == [None] * 50
            assert limit.store_error_allowed == 50
            assert "requests are allowed (on_store_error: allow)" in caplog.text
            decision = await limit.decide(request())
            assert decision.allowed and headers(decision) == []
        else:
            assert all(a is not None and a.status == 503 for a in answers)
            first = answers[0]
            assert first is not None
            assert json.loads(first.body)["error"] == "rate_limit_store_unavailable"
            assert dict(first.headers)["retry-after"] == "1"
            assert limit.store_error_denied == 50
            assert "refused with 503 (on_store_error: deny)" in caplog.text
        assert "rate limit store redis://127.0.0.1" in caplog.text
        assert caplog.text.count("the rate limit store is unavailable") == 1  # once per outage

        redis_server.resume()  # empty: the bucket starts full again

        async def used_again() -> None:
            decision = await limit.decide(request("carol"))
            assert not decision.store_error and decision.allowed

        await assert_eventually(used_again)
        assert store.available
        assert [await limit.check(request()) is None for _ in range(4)] == [True] * 3 + [False]


async def test_a_hung_store_costs_one_timeout_then_nothing(redis_server: RedisServer) -> None:
    async with replica(redis_server, shared(100), timeout="100ms") as (limit, store):
        assert await limit.check(request()) is None
        redis_server.freeze()
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert await limit.check(request()) is None  # allowed: on_store_error: allow
            first = loop.time() - started
            assert 0.09 <= first < 0.5
            started = loop.time()
            for _ in range(100):
                await limit.check(request())
            assert loop.time() - started < 0.05
            assert store.errors == 1 and not store.available
        finally:
            redis_server.thaw()

        async def back() -> None:
            assert not (await limit.decide(request())).store_error

        await assert_eventually(back)


async def test_a_store_down_from_the_start(redis_server: RedisServer) -> None:
    redis_server.halt()
    async with replica(redis_server, shared(1, per="1h"), timeout="100ms") as (limit, store):
        decision = await limit.decide(request())
        assert decision.allowed and decision.store_error
        redis_server.resume()

        async def back() -> None:
            assert not (await limit.decide(request())).store_error

        await assert_eventually(back)
        assert store.outages == 1
