"""The balancer package's surface: names, factory, endpoint type and error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import sdk
import sdk.balancer
from sdk._types import HealthStatus, Instance
from sdk.balancer import (
    STRATEGIES,
    Balancer,
    Endpoint,
    Locality,
    LocalityBalancer,
    NoEndpointsError,
    make_balancer,
)
from tests.unit.balancer.fakes import ep

PUBLIC = [
    "STRATEGIES",
    "Balancer",
    "Endpoint",
    "Locality",
    "LocalityBalancer",
    "NoEndpointsError",
    "make_balancer",
]


def test_all_is_pinned() -> None:
    assert sorted(sdk.balancer.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert getattr(sdk.balancer, name) is not None


def test_modules_are_private() -> None:
    package = Path(sdk.balancer.__file__).parent
    modules = [p.stem for p in package.glob("*.py") if p.stem != "__init__"]
    assert modules
    assert all(m.startswith("_") for m in modules), modules


def test_strategy_names_are_exactly_these() -> None:
    assert STRATEGIES == (
        "round_robin",
        "random",
        "health_based",
        "weighted",
        "least_connections",
        "p2c_ewma",
        "ring_hash",
    )


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_satisfies_the_protocol(name: str) -> None:
    balancer = make_balancer(name, seed=1)
    assert isinstance(balancer, Balancer)
    assert balancer.name == name
    local = make_balancer(name, seed=1, locality=Locality(zone="z"))
    assert isinstance(local, LocalityBalancer)
    assert isinstance(local, Balancer)
    assert local.name == name


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown balancer 'fastest'") as info:
        make_balancer("fastest")
    for name in STRATEGIES:
        assert name in str(info.value)


def test_an_option_the_strategy_does_not_take_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="'round_robin' takes no option 'vnodes_per_weight'"):
        make_balancer("round_robin", vnodes_per_weight=10)
    with pytest.raises(TypeError, match="panic_threshold"):
        make_balancer("weighted", decay=1.0)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("round_robin", {"panic_threshold": 1.5}),
        ("random", {"panic_threshold": -0.1}),
        ("p2c_ewma", {"smoothing": 0.0}),
        ("p2c_ewma", {"decay": 0.0}),
        ("p2c_ewma", {"failure_penalty": -1.0}),
        ("ring_hash", {"vnodes_per_weight": 0}),
        ("ring_hash", {"max_ring_size": 0}),
    ],
)
def test_out_of_range_options_are_value_errors(name: str, options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        make_balancer(name, **options)
    with pytest.raises(ValueError):
        make_balancer(name, locality=Locality(zone="z"), **options)


def test_locality_must_be_a_locality() -> None:
    with pytest.raises(TypeError, match="Locality"):
        make_balancer("random", locality=("z", "r"))  # type: ignore[call-overload]


def test_no_endpoints_error_is_an_eco_error() -> None:
    assert issubclass(NoEndpointsError, sdk.EcoError)
    balancer = make_balancer("round_robin")
    with pytest.raises(NoEndpointsError, match="no endpoints") as info:
        balancer.pick()
    assert info.value.code == "UNAVAILABLE"
    assert info.value.total == 0


def test_update_rejects_what_is_not_an_endpoint() -> None:
    balancer = make_balancer("round_robin")
    with pytest.raises(TypeError, match="expected Endpoint"):
        balancer.update(["10.0.0.1:80"])  # type: ignore[list-item]


def test_endpoint_normalises_weight_health_and_metadata() -> None:
    endpoint = Endpoint("a", "10.0.0.1", 80, weight=0, health="warning", metadata={"k": "v"})  # type: ignore[arg-type]
    assert endpoint.weight == 1
    assert endpoint.health is HealthStatus.WARNING
    with pytest.raises(TypeError):
        endpoint.metadata["k"] = "w"  # type: ignore[index]
    assert endpoint == Endpoint(
        "a", "10.0.0.1", 80, health=HealthStatus.WARNING, metadata={"k": "v"}
    )
    assert hash(endpoint) == hash(Endpoint("a", "10.0.0.1", 80, health=HealthStatus.WARNING))


@pytest.mark.parametrize(
    "kwargs",
    [{"id": ""}, {"weight": -1}, {"port": 70000}, {"health": "sick"}],
)
def test_endpoint_rejects_bad_values(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {"id": "a", "address": "10.0.0.1", "port": 80}
    with pytest.raises(ValueError):
        Endpoint(**{**base, **kwargs})  # type: ignore[arg-type]


def test_endpoint_from_instance() -> None:
    instance = Instance(
        id="web-1",
        service="web",
        address="fd00::1",
        port=8080,
        region="eu",
        zone="eu-1a",
        metadata={"version": "2"},
        weight=0,
        health=HealthStatus.CRITICAL,
    )
    endpoint = Endpoint.from_instance(instance)
    assert endpoint == Endpoint(
        id="web-1",
        address="fd00::1",
        port=8080,
        weight=1,
        health=HealthStatus.CRITICAL,
        zone="eu-1a",
        region="eu",
        metadata={"version": "2"},
    )
    assert endpoint.authority == "[fd00::1]:8080"
    assert ep("x").authority == "10.0.0.1:8000"
