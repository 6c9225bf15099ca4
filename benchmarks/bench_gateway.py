"""The gateway: the cost of matching one request against 10,000 routes.

``python -m benchmarks.bench_gateway [--quick]`` prints one JSON object per
line; ``run(quick)`` returns the same objects (``python -m benchmarks --only
gateway``). In-process and single-threaded: the router's own CPU cost.

``route_match``: 10,000 routes in a mix like a large gateway's: 400 exact
hosts, 40 ``*.`` wildcard hosts and routes for any host; paths exact,
prefixes one to four segments deep, 1% regex; a fifth with a method, header
or query condition. Lookups (100,000, in random order) hit every kind of
route, and one in ten matches nothing (the 404 path, which tries every host
group a request could fall to). Each lookup is timed alone; the row gives
p50, p99 and max in µs (budget: p99 ≤ 50 µs, ARCHITECTURE §11), and how long
the table took to build.

``cache_hit``: lookups/s of the response cache when every lookup finds a
fresh entry (see :func:`cache_hits`).

``rate_limit_local``, ``rate_limit_global`` and ``rate_limit_global_peer``:
rate limit decisions per second in this process, and against a redis-server
started for them beside a bare redis-py loop and ``redis-benchmark`` (see
``benchmarks._gateway_ratelimit``).

``gateway_rps``, ``gateway_latency`` and ``gateway_rss``: ``eco gateway`` as a
process beside HAProxy 2.6 (``nbthread 1``) on the same routes and nginx
backend: requests/s with no plugins, with JWT + rate limit and with a cache
hit, and the latency added at 1,000 requests/s (see
``benchmarks._gateway_http``; needs scripts/install-bench-tools.sh).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import sys
import time
from typing import Any

from benchmarks._gateway_http import gateway_http_rows
from benchmarks._gateway_ratelimit import rate_limit_rows
from benchmarks._report import percentile
from sidecar.gateway.cache import CacheConfig, CacheStoreConfig, ResponseCache
from sidecar.gateway.config import GatewayConfig
from sidecar.gateway.request import GatewayRequest, Headers
from sidecar.gateway.router import Router

__all__ = ["run"]

ROUTES = 10_000
BUDGET_P99_US = 50.0
_HOSTS = 400
_WILDCARDS = 40


def _routes(
    rng: random.Random,
) -> tuple[list[dict[str, Any]], list[tuple[str, str, str, Headers, str]]]:
    """The routes, and for each one a request it takes."""
    specs: list[dict[str, Any]] = []
    requests: list[tuple[str, str, str, Headers, str]] = []
    for i in range(ROUTES):
        kind = i % 10
        if kind < 6:
            host, hosts = f"api{i % _HOSTS}.example.com", [f"api{i % _HOSTS}.example.com"]
        elif kind < 8:
            suffix = f"tenant{i % _WILDCARDS}.example.net"
            host, hosts = f"c{i}.{suffix}", [f"*.{suffix}"]
        else:
            host, hosts = "any.example.org", []
        segments = [f"s{i}"] + [f"p{rng.randrange(50)}" for _ in range(i % 4)]
        base = "/" + "/".join(segments)
        match: dict[str, Any] = {"hosts": hosts}
        path = base + "/items/42"
        if i % 100 == 7:
            match["path_regex"] = base + r"/items/[0-9]+"
        elif i % 5 == 1:
            match["path"] = path
        else:
            match["path_prefix"] = base
        method, headers, query = "GET", Headers([("accept", "*/*")]), "page=2"
        if i % 5 == 3:
            condition = i % 3
            if condition == 0:
                match["methods"] = ["POST"]
                method = "POST"
            elif condition == 1:
                match["headers"] = {"x-env": "canary"}
                headers = Headers([("accept", "*/*"), ("x-env", "canary")])
            else:
                match["query"] = {"v": "2"}
                query = "page=2&v=2"
        specs.append(
            {
                "name": f"route-{i}",
                "match": match,
                "upstream": f"svc{i % 300}",
                "endpoints": ["127.0.0.1:9"],
            }
        )
        requests.append((host, path, method, headers, query))
    return specs, requests


def run(quick: bool) -> list[dict[str, Any]]:
    """Builds the table and times the lookups; one JSON-ready row."""
    rng = random.Random(14)
    lookups = 100_000
    specs, hits = _routes(rng)
    config = GatewayConfig.model_validate({"routes": specs})
    started = time.perf_counter()
    router = Router(config.routes)
    build_ms = (time.perf_counter() - started) * 1000
    misses = [
        ("api3.example.com", "/nowhere/at/all", "GET", Headers(), ""),
        ("x.tenant5.example.net", "/s1/p9/else", "GET", Headers(), ""),
        ("unknown.example.com", "/s123/nothing", "DELETE", Headers(), ""),
    ]
    requests = [
        rng.choice(misses) if rng.random() < 0.1 else hits[rng.randrange(len(hits))]
        for _ in range(lookups)
    ]
    for request in requests[:2000]:  # warm up
        router.match(*request)
    timings: list[float] = []
    found = 0
    clock = time.perf_counter_ns
    enabled = gc.isenabled()
    gc.disable()
    try:
        for request in requests:
            start = clock()
            match = router.match(*request)
            timings.append((clock() - start) / 1000)
            found += match is not None
    finally:
        if enabled:
            gc.enable()
    timings.sort()
    p99 = percentile(timings, 99)
    return [
        {
            "bench": "route_match",
            "system": "ecosystem",
            "routes": ROUTES,
            "lookups": lookups,
            "matched": found,
            "p50_us": percentile(timings, 50),
            "p99_us": p99,
            "max_us": timings[-1],
            "build_ms": build_ms,
            "value": p99,
            "unit": "us",
            "budget": BUDGET_P99_US,
            "within_budget": p99 <= BUDGET_P99_US,
            "quick": quick,
        },
        *cache_hits(quick),
        *rate_limit_rows(quick),
        *gateway_http_rows(quick),
    ]


def cache_hits(quick: bool) -> list[dict[str, Any]]:
    """``cache_hit``: lookups/s of fresh stored responses, in-process (no sockets).

    1,000 resources of 1 KiB on one route, a quarter of them with ``Vary:
    accept-encoding``; each lookup is one ``async with cache.lookup(...)``
    that finds a fresh entry and builds the response to send (``Age``,
    ``x-cache``). What bounds it: the interpreter's cost of the slot object,
    the key tuples and the served headers, one core.
    """
    return asyncio.run(_cache_hits(quick))


async def _cache_hits(quick: bool) -> list[dict[str, Any]]:
    rng = random.Random(14)
    cache = ResponseCache(CacheStoreConfig())
    config = CacheConfig(ttl=3600)
    requests: list[GatewayRequest] = []
    for i in range(1000):
        fields = [("accept", "*/*"), ("user-agent", "bench/1")]
        if i % 4 == 0:
            fields.append(("accept-encoding", "gzip, br"))
        request = GatewayRequest(
            "GET", "api.example.com", f"/items/{i}", "page=2", Headers(fields), route="items"
        )
        async with cache.lookup(request, config, wait=1.0) as slot:
            vary = [("vary", "accept-encoding")] if i % 4 == 0 else []
            slot.store(200, [("content-type", "application/json"), *vary], b"x" * 1024)
        requests.append(request)
    order = [requests[rng.randrange(len(requests))] for _ in range(20_000 if quick else 200_000)]
    hits = 0
    enabled = gc.isenabled()
    gc.disable()
    try:
        started = time.perf_counter()
        for request in order:
            async with cache.lookup(request, config, wait=1.0) as slot:
                hits += slot.hit is not None
        elapsed = time.perf_counter() - started
    finally:
        if enabled:
            gc.enable()
    rate = len(order) / elapsed
    return [
        {
            "bench": "cache_hit",
            "system": "ecosystem",
            "entries": cache.stats().entries,
            "lookups": len(order),
            "hits": hits,
            "us_per_lookup": elapsed / len(order) * 1e6,
            "value": rate,
            "unit": "lookups/s",
            "quick": quick,
        }
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_gateway",
        description="The gateway: route matching with 10,000 routes, the cache, rate limits, "
        "and eco gateway beside HAProxy; one JSON object per line.",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    args = parser.parse_args(argv)
    for row in run(args.quick):
        print(json.dumps(row, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
