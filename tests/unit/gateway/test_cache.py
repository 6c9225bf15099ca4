"""The gateway's response cache: RFC 9111 freshness, age, Vary, storing, LRU, purge, coalescing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from email.utils import formatdate

import pytest
from pydantic import ValidationError

from sidecar.gateway._freshness import http_date, parse_cache_control
from sidecar.gateway.cache import (
    SOLO_SECONDS,
    CacheConfig,
    CacheSlot,
    CacheStoreConfig,
    ResponseCache,
)
from sidecar.gateway.request import Consumer, GatewayRequest, Headers

T0 = 1_800_000_000.0
ROUTE = CacheConfig()
Fields = Iterable[tuple[str, str]]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(clock: Clock) -> ResponseCache:
    return ResponseCache(CacheStoreConfig(), clock=clock)


def req(
    path: str = "/a",
    *,
    method: str = "GET",
    query: str = "",
    headers: Fields = (),
    route: str = "r",
    host: str = "api.example.com",
    consumer: str | None = None,
) -> GatewayRequest:
    who = Consumer(consumer, via="key_auth") if consumer else None
    return GatewayRequest(method, host, path, query, Headers(headers), route=route, consumer=who)


async def ask(
    cache: ResponseCache,
    request: GatewayRequest,
    *,
    config: CacheConfig = ROUTE,
    status: int = 200,
    headers: Fields = (),
    body: bytes = b"upstream",
) -> tuple[CacheSlot, bool]:
    """One request through the cache: a miss is answered with the given response.

    Returns the slot and whether the response was stored.
    """
    async with cache.lookup(request, config, wait=1.0) as slot:
        if slot.hit is not None or slot.refusal is not None:
            return slot, False
        return slot, slot.store(status, headers, body)


def served(slot: CacheSlot) -> bytes:
    assert slot.hit is not None, "a miss"
    return slot.hit.body


def header(slot: CacheSlot, name: str) -> str | None:
    assert slot.hit is not None
    return next((v for n, v in slot.hit.headers if n == name), None)


# -- configuration --------------------------------------------------------------------------


def test_config_defaults_and_sizes() -> None:
    config = CacheConfig()
    assert config.ttl == 30.0
    assert config.methods == ("GET", "HEAD")
    assert config.statuses == (200, 203, 204, 300, 301, 404, 405, 410, 414, 501)
    assert config.cache_authorized is False
    store = CacheStoreConfig.model_validate({"max_bytes": "64MiB", "max_entry_bytes": "512KiB"})
    assert (store.max_bytes, store.max_entry_bytes) == (64 * 1024 * 1024, 512 * 1024)
    assert CacheConfig.model_validate({"ttl": "2m", "methods": ["get"]}).methods == ("GET",)


@pytest.mark.parametrize(
    ("model", "data", "words"),
    [
        (CacheConfig, {"ttl": "-1s"}, "greater than or equal to 0"),
        (CacheConfig, {"methods": ["GET", "POST"]}, "not POST"),
        (CacheConfig, {"statuses": [200, 206]}, "206 cannot be cached"),
        (CacheConfig, {"tll": "1s"}, "Extra inputs are not permitted"),
        (CacheConfig, {"vary_limit": 0}, "greater than or equal to 1"),
        (CacheStoreConfig, {"max_bytes": "1MiB", "max_entry_bytes": "2MiB"}, "at most max_bytes"),
        (CacheStoreConfig, {"max_bytes": "64 miles"}, "byte unit"),
    ],
)
def test_config_refusals_name_the_problem(model: type, data: dict[str, object], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        model.model_validate(data)


def test_config_is_frozen() -> None:
    with pytest.raises(ValidationError):
        ROUTE.ttl = 5.0  # type: ignore[misc]


# -- freshness ------------------------------------------------------------------------------


async def test_the_route_ttl_when_the_response_says_nothing(
    cache: ResponseCache, clock: Clock
) -> None:
    first, stored = await ask(cache, req())
    assert stored and first.x_cache == "MISS" and first.hit is None
    clock.now += 29.5
    hit, _ = await ask(cache, req())
    assert hit.hit is not None and hit.hit.body == b"upstream" and hit.x_cache == "HIT"
    assert header(hit, "x-cache") == "HIT" and header(hit, "age") == "29"
    clock.now += 0.5
    miss, _ = await ask(cache, req(), body=b"new")
    assert miss.hit is None
    assert cache.stats().hits == 1 and cache.stats().misses == 2


async def test_ttl_zero_stores_only_what_the_response_allows(cache: ResponseCache) -> None:
    config = CacheConfig(ttl=0)
    _, stored = await ask(cache, req(), config=config)
    assert not stored
    _, stored = await ask(cache, req(), config=config, headers=[("cache-control", "max-age=5")])
    assert stored


@pytest.mark.parametrize(
    ("fields", "lifetime"),
    [
        ([("cache-control", "max-age=10")], 10),
        ([("cache-control", "max-age=100, s-maxage=5")], 5),  # s-maxage first for a shared cache
        ([("cache-control", "public, max-age=7")], 7),
        ([("cache-control", "max-age=20, must-revalidate")], 20),
        ([("cache-control", "max-age=9"), ("cache-control", "max-age=4")], 4),  # the stricter
        (
            [
                ("date", formatdate(T0 - 5, usegmt=True)),
                ("expires", formatdate(T0 + 15, usegmt=True)),
            ],
            20,
        ),
        ([("expires", formatdate(T0 + 12, usegmt=True))], 12),  # no Date: the response time
        ([("cache-control", "max-age=8"), ("expires", formatdate(T0 + 100, usegmt=True))], 8),
    ],
)
async def test_explicit_freshness(
    cache: ResponseCache, clock: Clock, fields: list[tuple[str, str]], lifetime: int
) -> None:
    date_given = any(n == "date" for n, _ in fields)
    _, stored = await ask(cache, req(), headers=fields)
    assert stored
    # With a Date 5 s in the past the response was already 5 s old on arrival.
    already = 5 if date_given else 0
    clock.now = T0 + lifetime - already - 0.5
    assert (await ask(cache, req()))[0].hit is not None
    clock.now = T0 + lifetime - already
    assert (await ask(cache, req()))[0].hit is None


@pytest.mark.parametrize(
    "fields",
    [
        [("cache-control", "max-age=0")],
        [("cache-control", "s-maxage=0, max-age=60")],
        [("cache-control", "max-age=soon")],
        [("expires", "0")],
        [("expires", formatdate(T0 - 1, usegmt=True))],
        [("cache-control", "max-age=10"), ("age", "10")],  # stale on arrival
    ],
)
async def test_already_stale_responses_are_not_stored(
    cache: ResponseCache, fields: list[tuple[str, str]]
) -> None:
    _, stored = await ask(cache, req(), headers=fields)
    assert not stored
    assert cache.stats().entries == 0


async def test_age_counts_apparent_age_upstream_age_delay_and_residence(
    cache: ResponseCache, clock: Clock
) -> None:
    # Apparent age: the Date says the response was made 4 s before it arrived.
    await ask(cache, req("/date"), headers=[("date", formatdate(T0 - 4, usegmt=True))])
    # Corrected age: an upstream cache said Age 3, and the request took 2 s.
    async with cache.lookup(req("/age"), ROUTE, wait=1.0) as slot:
        clock.now += 2
        assert slot.store(200, [("age", "3"), ("date", formatdate(clock.now, usegmt=True))], b"x")
    clock.now = T0 + 10
    assert header((await ask(cache, req("/date")))[0], "age") == "14"
    assert header((await ask(cache, req("/age")))[0], "age") == "13"  # 3 + 2, then 8 resident


async def test_served_headers_drop_hop_by_hop_fields_and_are_framed(cache: ResponseCache) -> None:
    fields = [
        ("Content-Type", "text/plain"),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "x-hop"),
        ("X-Hop", "1"),
        ("X-Keep", "2"),
        ("Age", "0"),
    ]
    await ask(cache, req(), headers=fields, body=b"hello")
    slot, _ = await ask(cache, req())
    assert slot.hit is not None
    assert slot.hit.headers == (
        ("content-type", "text/plain"),
        ("x-keep", "2"),
        ("content-length", "5"),
        ("age", "0"),
        ("x-cache", "HIT"),
    )


# -- what is stored -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        [("cache-control", "no-store")],
        [("cache-control", "private, max-age=60")],
        [("cache-control", "no-cache")],
        [("set-cookie", "session=1")],
        [("vary", "*")],
        [("vary", ", ".join(f"x-{i}" for i in range(17)))],
    ],
)
async def test_responses_that_are_not_stored(
    cache: ResponseCache, fields: list[tuple[str, str]]
) -> None:
    _, stored = await ask(cache, req(), headers=fields)
    assert not stored
    assert (await ask(cache, req()))[0].hit is None


async def test_qualified_private_and_no_cache_drop_only_the_named_fields(
    cache: ResponseCache,
) -> None:
    fields = [
        ("cache-control", 'private="x-user", no-cache="x-token, x-other"'),
        ("x-user", "alice"),
        ("x-token", "t"),
        ("x-shared", "yes"),
    ]
    _, stored = await ask(cache, req(), headers=fields)
    assert stored
    slot, _ = await ask(cache, req())
    assert header(slot, "x-shared") == "yes"
    assert header(slot, "x-user") is None and header(slot, "x-token") is None


async def test_statuses_and_methods_of_the_route(cache: ResponseCache) -> None:
    _, stored = await ask(cache, req("/e"), status=500)
    assert not stored
    _, stored = await ask(cache, req("/nf"), status=404)
    assert stored
    post, stored = await ask(cache, req(method="POST"))
    assert not stored and post.x_cache == "BYPASS"
    get_only = CacheConfig(methods=["GET"])
    head, stored = await ask(cache, req(method="HEAD"), config=get_only)
    assert head.x_cache == "BYPASS" and not stored


async def test_request_no_store_is_served_but_never_stored(cache: ResponseCache) -> None:
    _, stored = await ask(cache, req(headers=[("cache-control", "no-store")]))
    assert not stored
    await ask(cache, req())
    slot, _ = await ask(cache, req(headers=[("cache-control", "no-store")]))
    assert slot.hit is not None


async def test_request_no_cache_goes_upstream_and_refreshes_the_entry(
    cache: ResponseCache,
) -> None:
    await ask(cache, req(), body=b"old")
    for fields in (
        [("cache-control", "no-cache")],
        [("pragma", "No-Cache")],
        [("cache-control", "max-age=0")],
    ):
        slot, stored = await ask(cache, req(headers=fields), body=b"new")
        assert slot.hit is None and slot.x_cache == "BYPASS" and stored
    slot, _ = await ask(cache, req())
    assert slot.hit is not None and slot.hit.body == b"new"


async def test_request_max_age_and_min_fresh(cache: ResponseCache, clock: Clock) -> None:
    await ask(cache, req(), headers=[("cache-control", "max-age=60")])
    clock.now += 10
    assert (await ask(cache, req(headers=[("cache-control", "max-age=10")])))[0].hit is not None
    assert (await ask(cache, req(headers=[("cache-control", "max-age=9")]), body=b"n"))[
        0
    ].hit is None
    # The miss above stored a new response, 0 s old, fresh for 60 s.
    await ask(
        cache,
        req(headers=[("cache-control", "no-cache")]),
        headers=[("cache-control", "max-age=60")],
    )
    clock.now += 20
    assert (await ask(cache, req(headers=[("cache-control", "min-fresh=40")])))[0].hit is not None
    assert (await ask(cache, req(headers=[("cache-control", "min-fresh=41")])))[0].hit is None


async def test_only_if_cached(cache: ResponseCache, clock: Clock) -> None:
    only = req(headers=[("cache-control", "only-if-cached")])
    slot, _ = await ask(cache, only)
    assert slot.refusal is not None and slot.refusal.status == 504
    await ask(cache, req(), headers=[("cache-control", "max-age=5")])
    slot, _ = await ask(cache, only)
    assert slot.hit is not None
    clock.now += 5
    slot, _ = await ask(cache, only)
    assert slot.hit is None and slot.refusal is not None


async def test_head_is_served_from_the_get_entry(cache: ResponseCache) -> None:
    await ask(cache, req(), body=b"12345")
    slot, _ = await ask(cache, req(method="HEAD"))
    assert slot.hit is not None and slot.hit.body == b""
    assert header(slot, "content-length") == "5"
    # A HEAD response is stored for HEAD only.
    await ask(cache, req("/h", method="HEAD"), headers=[("content-length", "9")], body=b"")
    assert (await ask(cache, req("/h"), status=500))[0].hit is None
    head, _ = await ask(cache, req("/h", method="HEAD"))
    assert head.hit is not None and header(head, "content-length") == "9"


# -- credentials ----------------------------------------------------------------------------


async def test_authorization_is_not_cached_unless_the_route_says_so(cache: ResponseCache) -> None:
    bearer = [("authorization", "Bearer t")]
    public = [("cache-control", "public, max-age=60")]
    slot, stored = await ask(cache, req(headers=bearer, consumer="alice"), headers=public)
    assert slot.x_cache == "BYPASS" and not stored
    # Without an authenticated consumer there is nothing to key it by: never cached.
    allowed = CacheConfig(cache_authorized=True)
    slot, stored = await ask(cache, req(headers=bearer), config=allowed, headers=public)
    assert slot.x_cache == "BYPASS" and not stored


async def test_authorized_responses_are_kept_per_consumer_when_shareable(
    cache: ResponseCache,
) -> None:
    allowed = CacheConfig(cache_authorized=True)
    bearer = [("authorization", "Bearer t")]
    # RFC 9111 §3.5: only with public, s-maxage or must-revalidate.
    _, stored = await ask(cache, req(headers=bearer, consumer="alice"), config=allowed)
    assert not stored
    for directive in ("public", "s-maxage=60", "must-revalidate"):
        _, stored = await ask(
            cache,
            req(f"/{directive}", headers=bearer, consumer="alice"),
            config=allowed,
            headers=[("cache-control", directive)],
            body=b"alice's",
        )
        assert stored, directive
    alice, _ = await ask(cache, req("/public", consumer="alice"), config=allowed)
    assert alice.hit is not None and alice.hit.body == b"alice's"
    bob, _ = await ask(cache, req("/public", consumer="bob"), config=allowed, body=b"bob's")
    assert bob.hit is None
    anonymous, _ = await ask(cache, req("/public"), config=allowed)
    assert anonymous.hit is None


# -- Vary -----------------------------------------------------------------------------------


async def test_vary_keeps_a_variant_per_normalized_value(cache: ResponseCache) -> None:
    vary = [("vary", "Accept-Encoding")]
    await ask(cache, req(headers=[("accept-encoding", "gzip, br")]), headers=vary, body=b"gz")
    await ask(cache, req(headers=[("accept-encoding", "identity")]), headers=vary, body=b"id")
    await ask(cache, req(), headers=vary, body=b"none")
    same = req(headers=[("Accept-Encoding", "GZIP,br"), ("x-other", "1")])
    assert served((await ask(cache, same))[0]) == b"gz"
    split = req(headers=[("accept-encoding", "gzip"), ("accept-encoding", " br")])
    assert served((await ask(cache, split))[0]) == b"gz"
    assert served((await ask(cache, req(headers=[("accept-encoding", "identity")])))[0]) == b"id"
    assert served((await ask(cache, req()))[0]) == b"none"
    br = req(headers=[("accept-encoding", "br")])
    assert (await ask(cache, br, headers=vary, body=b"br"))[0].hit is None
    assert cache.stats().entries == 4


async def test_vary_limit_drops_the_least_recently_used_variant(cache: ResponseCache) -> None:
    config = CacheConfig(vary_limit=2)
    vary = [("vary", "accept-language")]

    def lang(value: str) -> GatewayRequest:
        return req(headers=[("accept-language", value)])

    await ask(cache, lang("en"), config=config, headers=vary)
    await ask(cache, lang("fr"), config=config, headers=vary)
    await ask(cache, lang("en"), config=config)  # en used last
    await ask(cache, lang("de"), config=config, headers=vary)
    assert cache.stats().evictions == 1
    assert (await ask(cache, lang("en"), config=config))[0].hit is not None
    assert (await ask(cache, lang("fr"), config=config, headers=vary))[0].hit is None


async def test_a_new_vary_replaces_the_old_variants(cache: ResponseCache) -> None:
    await ask(cache, req(headers=[("accept", "a")]), headers=[("vary", "accept")], body=b"1")
    await ask(cache, req(headers=[("accept", "b")]), headers=[("vary", "accept")], body=b"2")
    await ask(cache, req(headers=[("accept", "c"), ("origin", "o")]), headers=[("vary", "origin")])
    assert cache.stats().entries == 1


# -- memory, purge, invalidation --------------------------------------------------------------


async def test_lru_eviction_keeps_the_bytes_under_the_bound(clock: Clock) -> None:
    cache = ResponseCache(CacheStoreConfig(max_bytes="64KiB", max_entry_bytes="30KiB"), clock=clock)
    body = b"x" * 20_000
    for path in ("/1", "/2", "/3"):
        assert (await ask(cache, req(path), body=body))[1]
    assert (await ask(cache, req("/1")))[0].hit is not None  # /2 is now the least recent
    assert (await ask(cache, req("/4"), body=body))[1]
    stats = cache.stats()
    assert stats.evictions == 1 and stats.entries == 3 and stats.bytes <= 64 * 1024
    assert (await ask(cache, req("/2"), body=b"again"))[0].hit is None
    assert (await ask(cache, req("/1")))[0].hit is not None
    # Larger than max_entry_bytes (fields and overhead count too): passed on, not stored.
    assert not (await ask(cache, req("/big"), body=b"x" * 30 * 1024))[1]
    assert not (await ask(cache, req("/small"), config=CacheConfig(max_entry_bytes=100)))[1]


async def test_expired_entries_are_dropped_when_met(cache: ResponseCache, clock: Clock) -> None:
    await ask(cache, req(), headers=[("cache-control", "max-age=1")])
    before = cache.stats()
    clock.now += 1
    await ask(cache, req(), headers=[("cache-control", "max-age=1")])
    after = cache.stats()
    assert before.entries == 1 and after.entries == 1  # the expired one out, the new one in
    assert after.bytes == before.bytes


async def test_purge_a_route_or_one_path_with_its_variants(cache: ResponseCache) -> None:
    vary = [("vary", "accept")]
    for query in ("", "page=2"):
        for accept in ("a", "b"):
            await ask(cache, req("/x", query=query, headers=[("accept", accept)]), headers=vary)
    await ask(cache, req("/y"))
    await ask(cache, req("/x", route="other"))
    assert cache.purge("r", "/x") == 4
    assert (await ask(cache, req("/y")))[0].hit is not None
    assert cache.purge("r") == 1
    assert cache.purge("r") == 0
    assert (await ask(cache, req("/x", route="other")))[0].hit is not None
    assert cache.stats().purged == 5


async def test_a_response_fetched_across_a_purge_is_not_stored(cache: ResponseCache) -> None:
    async with cache.lookup(req(), ROUTE, wait=1.0) as slot:
        cache.purge("r")
        assert not slot.store(200, [], b"stale")
    assert (await ask(cache, req()))[0].hit is None


async def test_unsafe_methods_invalidate_their_target(cache: ResponseCache) -> None:
    await ask(cache, req(query="q=1"))
    assert cache.invalidate(req(method="POST", query="q=1"), 500) == 0
    assert cache.invalidate(req(method="GET", query="q=1"), 200) == 0
    assert cache.invalidate(req(method="DELETE", query="q=1"), 204) == 1
    assert cache.stats().entries == 0


# -- streaming and coalescing ---------------------------------------------------------------


async def test_a_streamed_body_is_collected_up_to_the_limit(cache: ResponseCache) -> None:
    config = CacheConfig(max_entry_bytes=1000)
    async with cache.lookup(req("/s"), config, wait=1.0) as slot:
        assert slot.max_entry_bytes == 1000
        assert slot.begin(200, [("content-type", "text/plain")])
        assert slot.feed(b"a" * 300) and slot.feed(b"b" * 300)
        assert slot.finish()
    hit, _ = await ask(cache, req("/s"), config=config)
    assert hit.hit is not None and hit.hit.body == b"a" * 300 + b"b" * 300
    async with cache.lookup(req("/l"), config, wait=1.0) as slot:
        assert slot.begin(200, [])
        assert slot.feed(b"a" * 900)
        assert not slot.feed(b"b" * 200)
        assert not slot.feed(b"c")
        assert not slot.finish()
    assert cache.stats().entries == 1


async def test_coalescing_100_concurrent_misses_make_one_upstream_request(
    cache: ResponseCache,
) -> None:
    fetches = 0

    async def client() -> bytes:
        nonlocal fetches
        async with cache.lookup(req(), ROUTE, wait=5.0) as slot:
            if slot.hit is not None:
                return slot.hit.body
            fetches += 1
            await asyncio.sleep(0.05)
            assert slot.store(200, [("cache-control", "max-age=60")], b"the one")
            return b"the one"

    bodies = await asyncio.gather(*(client() for _ in range(100)))
    assert fetches == 1
    assert bodies == [b"the one"] * 100
    stats = cache.stats()
    assert (stats.coalesced, stats.hits, stats.misses, stats.stores) == (99, 99, 1, 1)


async def test_a_response_that_cannot_be_shared_sends_each_waiter_upstream(
    cache: ResponseCache,
) -> None:
    fetches = 0

    async def client(n: int) -> bytes:
        nonlocal fetches
        async with cache.lookup(req(), ROUTE, wait=5.0) as slot:
            assert slot.hit is None
            fetches += 1
            await asyncio.sleep(0.02)
            slot.store(200, [("cache-control", "private")], f"for {n}".encode())
            return f"for {n}".encode()

    bodies = await asyncio.gather(*(client(n) for n in range(20)))
    assert fetches == 20
    assert sorted(bodies) == sorted(f"for {n}".encode() for n in range(20))


async def test_waiters_are_released_when_the_leader_fails_or_gives_up(
    cache: ResponseCache,
) -> None:
    gate = asyncio.Event()
    outcomes: list[str] = []

    async def leader() -> None:
        async with cache.lookup(req(), ROUTE, wait=5.0) as slot:
            assert slot.hit is None
            await gate.wait()
            raise ConnectionError("upstream reset")

    async def waiter() -> None:
        async with cache.lookup(req(), ROUTE, wait=5.0) as slot:
            outcomes.append("hit" if slot.hit is not None else "miss")

    first = asyncio.create_task(leader())
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(waiter()) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert outcomes == []
    gate.set()
    with pytest.raises(ConnectionError):
        await first
    await asyncio.gather(*waiters)
    assert outcomes == ["miss"] * 3


async def test_a_waiter_stops_waiting_after_the_route_timeout(cache: ResponseCache) -> None:
    async with cache.lookup(req(), ROUTE, wait=5.0) as leader:
        assert leader.hit is None
        async with cache.lookup(req(), ROUTE, wait=0.05) as waiter:
            assert waiter.hit is None and waiter.x_cache == "MISS"
            assert waiter.store(200, [], b"waiter's")
        assert leader.store(200, [], b"leader's")
    assert cache.stats().coalesced == 1


async def test_a_waiter_with_another_variant_goes_upstream(cache: ResponseCache) -> None:
    async with cache.lookup(req(headers=[("accept", "a")]), ROUTE, wait=5.0) as leader:
        other = asyncio.create_task(
            ask(cache, req(headers=[("accept", "b")]), headers=[("vary", "accept")], body=b"b")
        )
        same = asyncio.create_task(ask(cache, req(headers=[("accept", "a")])))
        await asyncio.sleep(0.01)
        assert leader.store(200, [("vary", "accept")], b"a")
    other_slot, _ = await other
    same_slot, _ = await same
    assert other_slot.hit is None
    assert same_slot.hit is not None and same_slot.hit.body == b"a"


# -- header arithmetic ----------------------------------------------------------------------


def test_cache_control_parsing() -> None:
    assert parse_cache_control(['Max-Age=5, no-cache="a, b", private', 's-maxage="7"']) == {
        "max-age": "5",
        "no-cache": "a, b",
        "private": None,
        "s-maxage": "7",
    }
    assert parse_cache_control(["max-age=60", "max-age=30, max-age=90"]) == {"max-age": "30"}


@pytest.mark.parametrize(
    "text",
    ["Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"],
)
def test_the_three_http_date_forms(text: str) -> None:
    assert http_date(text) == 784111777.0


def test_invalid_http_dates() -> None:
    assert http_date("0") is None and http_date("soon") is None and http_date(None) is None


async def test_misses_stop_queueing_behind_responses_that_cannot_be_stored(
    cache: ResponseCache, clock: Clock
) -> None:
    running = peak = fetches = 0

    async def client(fields: list[tuple[str, str]]) -> None:
        nonlocal running, peak, fetches
        async with cache.lookup(req(), ROUTE, wait=5.0) as slot:
            if slot.hit is not None:
                return
            fetches += 1
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.02)
            running -= 1
            slot.store(200, fields, b"x")

    private = [("cache-control", "private")]
    await client(private)
    await asyncio.gather(*(client(private) for _ in range(5)))
    assert peak == 5 and cache.stats().coalesced == 0  # side by side, nobody waited
    # Once a response is stored again, misses are coalesced again.
    await client([("cache-control", "max-age=1")])
    clock.now += 1
    fetches = 0
    await asyncio.gather(*(client([("cache-control", "max-age=1")]) for _ in range(5)))
    assert fetches == 1 and cache.stats().coalesced == 4
    # And so they are once the response that could not be stored is old enough.
    clock.now += 1
    await client(private)
    peak = 0
    await asyncio.gather(*(client(private) for _ in range(3)))
    assert peak == 3
    clock.now += SOLO_SECONDS
    fetches = 0
    await asyncio.gather(*(client([]) for _ in range(5)))
    assert fetches == 1


def test_the_public_names() -> None:
    import sidecar.gateway.cache as module

    assert sorted(module.__all__) == [
        "CacheConfig",
        "CacheSlot",
        "CacheStats",
        "CacheStoreConfig",
        "CachedResponse",
        "ResponseCache",
    ]


async def test_a_plain_get_is_served_at_once_as_the_slot_would_serve_it(
    cache: ResponseCache, clock: Clock
) -> None:
    assert cache.hit(req(), ROUTE) is None  # nothing stored yet
    await ask(cache, req(), headers=[("cache-control", "max-age=60")], body=b"stored")
    clock.now += 5
    hit = cache.hit(req(), ROUTE)
    assert hit is not None and hit.body == b"stored" and hit.age == 5
    assert ("x-cache", "HIT") in hit.headers and ("age", "5") in hit.headers
    slot, _ = await ask(cache, req())
    assert slot.hit == hit  # the same answer through a slot
    assert cache.stats().hits == 2
    # Anything but a plain GET is left to the slot.
    assert cache.hit(req(method="HEAD"), ROUTE) is None
    assert cache.hit(req(headers=[("Cache-Control", "max-age=1")]), ROUTE) is None
    assert cache.hit(req(headers=[("authorization", "Bearer x")]), ROUTE) is None
    assert cache.hit(req(consumer="alice"), ROUTE) is None
    assert cache.hit(req(), CacheConfig(methods=("HEAD",))) is None
    clock.now += 60
    assert cache.hit(req(), ROUTE) is None  # expired
