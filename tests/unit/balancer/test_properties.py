"""Property tests: distributions, fairness and ring movement over generated inputs.

Hypothesis runs derandomized (a fixed sequence of examples) and every balancer
is seeded, so a failure reproduces exactly.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdk._types import HealthStatus
from sdk.balancer import STRATEGIES, make_balancer
from sdk.balancer._wrr import MAX_GROUPS
from tests.unit.balancer.fakes import ep

CHECKS = settings(
    derandomize=True,
    database=None,  # derandomized: nothing to replay, and no directory left behind
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow],
)
FEW = settings(CHECKS, max_examples=25)

weights = st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=25)
few_distinct_weights = st.lists(
    st.integers(min_value=1, max_value=20), min_size=1, max_size=25
).filter(lambda ws: len(set(ws)) <= MAX_GROUPS)
many_distinct_weights = st.lists(
    st.integers(min_value=1, max_value=100),
    min_size=MAX_GROUPS + 1,
    max_size=60,
    unique=True,
)
healths = st.sampled_from(list(HealthStatus))


def reference_smooth_wrr(ws: list[int], n: int) -> list[int]:
    """The textbook O(n) smooth weighted round robin, as indices."""
    current = [0] * len(ws)
    total = sum(ws)
    out = []
    for _ in range(n):
        for i, w in enumerate(ws):
            current[i] += w
        best = max(range(len(ws)), key=lambda i: (current[i], -i))
        current[best] -= total
        out.append(best)
    return out


# -- weighted ---------------------------------------------------------------------------


@CHECKS
@given(few_distinct_weights)
def test_weighted_matches_the_reference_sequence(ws: list[int]) -> None:
    balancer = make_balancer("weighted")
    balancer.update([ep(f"e{i}", weight=w) for i, w in enumerate(ws)])
    n = 3 * sum(ws)
    assert [int(balancer.pick().id[1:]) for _ in range(n)] == reference_smooth_wrr(ws, n)


@CHECKS
@given(st.one_of(weights, many_distinct_weights), st.integers(min_value=1, max_value=3))
def test_weighted_shares_are_exact_over_whole_cycles(ws: list[int], cycles: int) -> None:
    balancer = make_balancer("weighted")
    balancer.update([ep(f"e{i}", weight=w) for i, w in enumerate(ws)])
    counts = Counter(balancer.pick().id for _ in range(cycles * sum(ws)))
    assert counts == {f"e{i}": cycles * w for i, w in enumerate(ws)}


@FEW
@given(st.one_of(weights, many_distinct_weights))
def test_weighted_shares_within_two_percent_over_many_picks(ws: list[int]) -> None:
    balancer = make_balancer("weighted")
    balancer.update([ep(f"e{i}", weight=w) for i, w in enumerate(ws)])
    n = 10_007  # deliberately not a multiple of the cycle
    counts = Counter(balancer.pick().id for _ in range(n))
    total = sum(ws)
    for i, w in enumerate(ws):
        assert abs(counts[f"e{i}"] / n - w / total) < 0.02


@CHECKS
@given(many_distinct_weights)
def test_weighted_spreads_picks_through_the_cycle(ws: list[int]) -> None:
    # No endpoint falls more than two picks behind (or ahead of) its exact share.
    balancer = make_balancer("weighted")
    balancer.update([ep(f"e{i}", weight=w) for i, w in enumerate(ws)])
    total = sum(ws)
    counts = [0] * len(ws)
    for t in range(1, total + 1):
        counts[int(balancer.pick().id[1:])] += 1
        for i, w in enumerate(ws):
            assert abs(counts[i] - t * w / total) < 2


# -- round robin and random --------------------------------------------------------------


@CHECKS
@given(st.integers(min_value=1, max_value=40), st.integers(min_value=0, max_value=500))
def test_round_robin_counts_never_differ_by_more_than_one(n: int, picks: int) -> None:
    balancer = make_balancer("round_robin", seed=n)
    balancer.update([ep(f"e{i}") for i in range(n)])
    counts = Counter(balancer.pick().id for _ in range(picks))
    values = [counts[f"e{i}"] for i in range(n)]
    assert max(values) - min(values) <= 1


@FEW
@given(st.lists(st.integers(min_value=1, max_value=5), min_size=2, max_size=6))
def test_random_shares_follow_weights(ws: list[int]) -> None:
    balancer = make_balancer("random", seed=len(ws))
    balancer.update([ep(f"e{i}", weight=w) for i, w in enumerate(ws)])
    n = 20_000
    counts = Counter(balancer.pick().id for _ in range(n))
    for i, w in enumerate(ws):
        assert abs(counts[f"e{i}"] / n - w / sum(ws)) < 0.02


# -- least connections ------------------------------------------------------------------


@CHECKS
@given(
    st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=12),
    st.lists(st.integers(min_value=0, max_value=30), max_size=200),
)
def test_least_connections_always_picks_a_least_loaded_endpoint(
    ws: list[int], ops: list[int]
) -> None:
    # op 0 picks and holds; op k > 0 releases the (k mod held)-th held request.
    balancer = make_balancer("least_connections", seed=len(ops))
    balancer.update([ep(f"e{i}", weight=w) for i, w in enumerate(ws)])
    held: list[str] = []
    for op in ops:
        if op == 0 or not held:
            loads = {f"e{i}": (balancer.in_flight(f"e{i}") + 1) / w for i, w in enumerate(ws)}
            chosen = balancer.pick().id
            assert loads[chosen] == min(loads.values())
            held.append(chosen)
        else:
            balancer.release(held.pop(op % len(held)))
    assert sum(balancer.in_flight(f"e{i}") for i in range(len(ws))) == len(held)


@CHECKS
@given(st.integers(min_value=1, max_value=20), st.integers(min_value=0, max_value=200))
def test_least_connections_with_requests_held_is_fair(n: int, picks: int) -> None:
    balancer = make_balancer("least_connections", seed=n)
    balancer.update([ep(f"e{i}") for i in range(n)])
    for _ in range(picks):
        balancer.pick()
    loads = [balancer.in_flight(f"e{i}") for i in range(n)]
    assert max(loads) - min(loads) <= 1


# -- p2c ---------------------------------------------------------------------------------


@FEW
@given(st.integers(min_value=2, max_value=20), st.integers(min_value=0, max_value=19))
def test_p2c_sends_the_slow_endpoint_less_than_its_fair_share(n: int, slow: int) -> None:
    slow %= n
    balancer = make_balancer("p2c_ewma", seed=n)
    balancer.update([ep(f"e{i}") for i in range(n)])
    counts: Counter[str] = Counter()
    for _ in range(50 * n):
        endpoint = balancer.pick()
        counts[endpoint.id] += 1
        balancer.release(endpoint, latency=0.100 if endpoint.id == f"e{slow}" else 0.010)
    assert counts[f"e{slow}"] < 50 * n / n / 2


# -- ring hash ---------------------------------------------------------------------------

KEYS = [f"key-{i}" for i in range(1500)]


def ring_mapping(ids: list[str], keys: list[str] = KEYS) -> dict[str, str]:
    balancer = make_balancer("ring_hash")
    balancer.update([ep(i) for i in ids])
    return {k: balancer.pick(k).id for k in keys}


@FEW
@given(st.integers(min_value=3, max_value=40), st.data())
def test_ring_removing_one_of_n_moves_only_its_keys(n: int, data: st.DataObject) -> None:
    ids = [f"node-{i}" for i in range(n)]
    gone = data.draw(st.sampled_from(ids))
    before = ring_mapping(ids)
    after = ring_mapping([i for i in ids if i != gone])
    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved == {k for k in KEYS if before[k] == gone}
    assert len(moved) / len(KEYS) < 1.5 / n + 0.02


@FEW
@given(st.integers(min_value=2, max_value=40))
def test_ring_adding_one_endpoint_moves_only_keys_to_it(n: int) -> None:
    ids = [f"node-{i}" for i in range(n)]
    before = ring_mapping(ids)
    after = ring_mapping([*ids, "newcomer"])
    moved = {k for k in KEYS if before[k] != after[k]}
    assert all(after[k] == "newcomer" for k in moved)
    assert len(moved) / len(KEYS) < 1.5 / (n + 1) + 0.02


@FEW
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from([f"n{i}" for i in range(30)]),
            st.integers(min_value=1, max_value=3),
            max_size=30,
        ),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from([1 << 18, 512]),
)
def test_ring_spliced_through_updates_equals_a_ring_built_at_once(
    history: list[dict[str, int]], max_ring_size: int
) -> None:
    keys = KEYS[:300]
    spliced = make_balancer("ring_hash", max_ring_size=max_ring_size)
    for members in history:
        spliced.update([ep(i, weight=w) for i, w in members.items()])
    fresh = make_balancer("ring_hash", max_ring_size=max_ring_size)
    fresh.update([ep(i, weight=w) for i, w in history[-1].items()])
    ring = list(spliced._ring)  # type: ignore[attr-defined]
    assert ring == sorted(ring)
    assert len(ring) == fresh.ring_size  # type: ignore[attr-defined]
    if history[-1]:
        assert [spliced.pick(k) for k in keys] == [fresh.pick(k) for k in keys]


# -- health, panic and state, across every strategy ----------------------------------------


@CHECKS
@given(
    st.sampled_from(STRATEGIES),
    st.lists(healths, min_size=1, max_size=12),
    st.sampled_from([0.0, 0.3, 0.5, 1.0]),
)
def test_critical_only_in_panic_and_panic_exactly_below_the_threshold(
    name: str, hs: list[HealthStatus], threshold: float
) -> None:
    balancer = make_balancer(name, seed=len(hs), panic_threshold=threshold)
    balancer.update([ep(f"e{i}", health=h) for i, h in enumerate(hs)])
    available = sum(h != HealthStatus.CRITICAL for h in hs)
    assert balancer.panicking == (threshold > 0 and available < threshold * len(hs))
    for i in range(50):
        if not available and not balancer.panicking:
            break
        endpoint = balancer.pick(f"k{i}")
        balancer.release(endpoint)
        if not balancer.panicking:
            assert endpoint.health != HealthStatus.CRITICAL


@CHECKS
@given(
    st.sampled_from(STRATEGIES),
    st.lists(st.sets(st.sampled_from([f"e{i}" for i in range(8)]), min_size=1), min_size=1),
)
def test_in_flight_counts_follow_endpoints_through_updates(
    name: str, updates: list[set[str]]
) -> None:
    balancer = make_balancer(name, seed=1, panic_threshold=0)
    held: Counter[str] = Counter()
    for members in updates:
        balancer.update([ep(i) for i in sorted(members)])
        held = Counter({i: c for i, c in held.items() if i in members})  # the rest left
        for j in range(3):
            held[balancer.pick(f"k{j}").id] += 1
        for i in sorted(members):
            assert balancer.in_flight(i) == held[i]
