"""The cost of one load-balancer pick, per strategy, at 10 and 10,000 endpoints.

``python -m benchmarks.bench_balancer [--quick]`` prints one JSON object per
line; ``run(quick)`` returns the same objects. In-process and single-threaded:
it measures the balancer's own CPU cost, nothing else.

For every strategy and size it reports, as the best of several rounds (the
garbage collector paused while timing):

- ``ns_per_pick``: ``pick()`` alone, in a loop (requests are left in flight);
- ``ns_per_pick_release``: ``pick()`` then ``release(endpoint, latency=...)``;
- ``update_us``: one ``update()`` with the same endpoints but one health change,
  what every watch update costs;
- ``first_update_ms``: the first ``update()``, which builds everything (the
  ring, for ``ring_hash``).

Endpoints have weights 1, 2, 3, 5 in turn (so weighted strategies do real
work) and are spread over three zones in two regions. Extra rows: ``weighted``
with all-distinct weights (its O(log n) path), ``round_robin`` behind the
locality wrapper, and ``(empty call)``, the loop and call overhead that every
figure includes.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from functools import partial
from typing import Any

from sdk._types import HealthStatus
from sdk.balancer import STRATEGIES, Balancer, Endpoint, Locality, make_balancer

__all__ = ["run"]

SIZES = (10, 10_000)
_WEIGHTS = (1, 2, 3, 5)
_ZONES = (("eu-1a", "eu"), ("eu-1b", "eu"), ("us-1a", "us"))


def _endpoints(n: int, *, distinct_weights: bool = False) -> list[Endpoint]:
    out = []
    for i in range(n):
        zone, region = _ZONES[i % len(_ZONES)]
        out.append(
            Endpoint(
                id=f"ep-{i}",
                address=f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                port=8080,
                weight=i + 1 if distinct_weights else _WEIGHTS[i % len(_WEIGHTS)],
                health=HealthStatus.PASSING,
                zone=zone,
                region=region,
            )
        )
    return out


def _best_ns(loop: Callable[[], None], count: int, rounds: int) -> float:
    best = float("inf")
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            start = time.perf_counter_ns()
            loop()
            best = min(best, (time.perf_counter_ns() - start) / count)
    finally:
        if enabled:
            gc.enable()
    return best


def _measure(
    label: str,
    make: Callable[[], Balancer],
    endpoints: list[Endpoint],
    picks: int,
    rounds: int,
    variant: str = "",
) -> dict[str, Any]:
    keys: list[str | None] = [f"user-{i}" for i in range(4096)] if label == "ring_hash" else [None]
    sequence = [keys[i % len(keys)] for i in range(picks)]
    balancer = make()
    start = time.perf_counter_ns()
    balancer.update(endpoints)
    first_update_ms = (time.perf_counter_ns() - start) / 1e6

    # A watch update that changes one endpoint's health, and one that changes it back.
    flipped = list(endpoints)
    flipped[0] = replace(endpoints[0], health=HealthStatus.WARNING)
    updates = [flipped, endpoints] * 5
    update_ns = min(_timed(partial(balancer.update, u)) for u in updates)

    pick = balancer.pick
    release = balancer.release

    def picks_only() -> None:
        for key in sequence:
            pick(key)

    def pick_and_release() -> None:
        for key in sequence:
            release(pick(key), latency=0.002)

    for key in sequence[:1000]:
        release(pick(key), latency=0.002)  # warm up, and give p2c_ewma latencies
    row: dict[str, Any] = {
        "bench": "balancer_pick",
        "strategy": label,
        "endpoints": len(endpoints),
        "ns_per_pick": round(_best_ns(picks_only, picks, rounds), 1),
        "ns_per_pick_release": round(_best_ns(pick_and_release, picks, rounds), 1),
        "update_us": round(update_ns / 1e3, 1),
        "first_update_ms": round(first_update_ms, 2),
        "picks": picks,
    }
    if variant:
        row["variant"] = variant
    return row


def _timed(call: Callable[[], None]) -> int:
    start = time.perf_counter_ns()
    call()
    return time.perf_counter_ns() - start


def _baseline(picks: int, rounds: int) -> dict[str, Any]:
    def noop(key: str | None = None) -> None:
        return None

    sequence: list[str | None] = [None] * picks

    def loop() -> None:
        for key in sequence:
            noop(key)

    return {
        "bench": "balancer_pick",
        "strategy": "(empty call)",
        "endpoints": 0,
        "ns_per_pick": round(_best_ns(loop, picks, rounds), 1),
        "picks": picks,
    }


def run(quick: bool) -> list[dict[str, Any]]:
    """Measures every strategy at 10 and 10,000 endpoints; JSON-ready rows."""
    picks = 20_000 if quick else 200_000
    rounds = 3 if quick else 5
    rows = [_baseline(picks, rounds)]
    here = Locality(zone="eu-1a", region="eu")
    for size in SIZES:
        endpoints = _endpoints(size)
        for name in STRATEGIES:
            rows.append(
                _measure(name, partial(make_balancer, name, seed=1), endpoints, picks, rounds)
            )
        rows.append(
            _measure(
                "weighted",
                partial(make_balancer, "weighted", seed=1),
                _endpoints(size, distinct_weights=True),
                picks,
                rounds,
                variant="distinct_weights",
            )
        )
        rows.append(
            _measure(
                "round_robin",
                partial(make_balancer, "round_robin", seed=1, locality=here),
                endpoints,
                picks,
                rounds,
                variant="locality",
            )
        )
    return rows


def _print(rows: Iterable[dict[str, Any]]) -> None:
    for row in rows:
        print(json.dumps(row, sort_keys=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_balancer",
        description="Cost of one load-balancer pick per strategy; one JSON object per line.",
    )
    parser.add_argument("--quick", action="store_true", help="fewer picks and rounds")
    args = parser.parse_args(argv)
    _print(run(args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
