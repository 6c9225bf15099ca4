"""Check configuration: every kind, every default, and errors that name their field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from sdk import HealthStatus
from sidecar.health import (
    AnyCheckConfig,
    CheckKind,
    ExecCheckConfig,
    GrpcCheckConfig,
    HttpCheckConfig,
    TcpCheckConfig,
    TtlCheckConfig,
    parse_check,
)


def errors(data: Any) -> list[tuple[tuple[str | int, ...], str]]:
    with pytest.raises(ValidationError) as info:
        parse_check(data)
    return [(tuple(e["loc"]), e["msg"]) for e in info.value.errors()]


def error_locs(data: Any) -> list[tuple[str | int, ...]]:
    return [loc for loc, _ in errors(data)]


# -- each kind, with its defaults ---------------------------------------------------


def test_http_from_the_documented_shape() -> None:
    check = parse_check(
        {"http": "http://127.0.0.1:8080/health", "interval": "1s", "timeout": "500ms"}
    )
    assert isinstance(check, HttpCheckConfig)
    assert check.kind is CheckKind.HTTP
    assert check.http == "http://127.0.0.1:8080/health"
    assert (check.interval, check.timeout) == (1.0, 0.5)
    assert check.method == "GET"
    assert check.expected_status == ((200, 399),)
    assert check.body_contains is None
    assert check.headers == {}
    assert check.name == "http http://127.0.0.1:8080/health"


def test_common_defaults() -> None:
    check = parse_check({"tcp": "127.0.0.1:5432"})
    assert isinstance(check, TcpCheckConfig)
    assert check.interval == 10.0
    assert check.timeout == 5.0  # min(interval, 5s)
    assert check.jitter == 0.1
    assert check.initial_status is HealthStatus.CRITICAL
    assert check.failures_before_critical == 1
    assert check.successes_before_passing == 1
    assert (check.host, check.port) == ("127.0.0.1", 5432)
    assert check.name == "tcp 127.0.0.1:5432"


def test_timeout_defaults_to_the_interval_when_shorter_than_5s() -> None:
    assert parse_check({"tcp": "h:1", "interval": "2s"}).timeout == 2.0  # type: ignore[attr-defined]
    assert parse_check({"tcp": "h:1", "interval": 30}).timeout == 5.0  # type: ignore[attr-defined]


def test_grpc() -> None:
    check = parse_check({"grpc": "127.0.0.1:9000", "service": "orders.v1.Orders"})
    assert isinstance(check, GrpcCheckConfig)
    assert check.service == "orders.v1.Orders"
    assert check.name == "grpc 127.0.0.1:9000/orders.v1.Orders"
    assert parse_check({"grpc": "[::1]:9000"}).name == "grpc [::1]:9000"


def test_exec_list_and_string() -> None:
    listed = parse_check({"exec": ["/bin/check", "--fast"], "timeout": "1s", "interval": "5s"})
    assert isinstance(listed, ExecCheckConfig)
    assert listed.argv == ("/bin/check", "--fast")
    assert listed.name == "exec check"  # the program, not its arguments
    shell = parse_check({"exec": "test -f /tmp/ready"})
    assert isinstance(shell, ExecCheckConfig)
    assert shell.argv == ("/bin/sh", "-c", "test -f /tmp/ready")


def test_ttl() -> None:
    check = parse_check({"ttl": "10s"})
    assert isinstance(check, TtlCheckConfig)
    assert check.ttl == 10.0
    assert check.name == "ttl"
    assert check.initial_status is HealthStatus.CRITICAL


@pytest.mark.parametrize("value", ["passing", "PASSING", "Warning", "critical", "unknown"])
def test_initial_status_any_case(value: str) -> None:
    check = parse_check({"tcp": "h:1", "initial_status": value})
    assert check.initial_status is HealthStatus(value.upper())


def test_explicit_name_and_thresholds() -> None:
    check = parse_check(
        {
            "name": "db",
            "tcp": "db:5432",
            "failures_before_critical": 3,
            "successes_before_passing": 2,
        }
    )
    assert check.name == "db"
    assert isinstance(check, TcpCheckConfig)
    assert (check.failures_before_critical, check.successes_before_passing) == (3, 2)


def test_models_are_frozen_and_pass_through() -> None:
    check = parse_check({"tcp": "h:1"})
    with pytest.raises(ValidationError):
        check.name = "other"
    assert parse_check(check) is check


def test_json_dump_round_trips() -> None:
    for data in (
        {"http": "https://a/h", "expected_status": ["2xx", 404], "headers": {"X-A": "1"}},
        {"tcp": "h:1", "jitter": "100ms", "interval": "2s"},
        {"grpc": "h:1", "service": "s"},
        {"exec": ["a", "b"]},
        {"exec": "echo hi"},
        {"ttl": "30s"},
    ):
        check = parse_check(data)
        assert parse_check(check.model_dump(mode="json")) == check


# -- expected_status and jitter forms ----------------------------------------------


@pytest.mark.parametrize(
    ("value", "ranges"),
    [
        ("200-399", ((200, 399),)),
        (200, ((200, 200),)),
        ("200", ((200, 200),)),
        ("2xx", ((200, 299),)),
        ("200-299,304", ((200, 299), (304, 304))),
        ([200, "300-302", "4xx"], ((200, 200), (300, 302), (400, 499))),
        ([[200, 204]], ((200, 204),)),
        (range(200, 300), ((200, 299),)),
    ],
)
def test_expected_status_forms(value: Any, ranges: tuple[tuple[int, int], ...]) -> None:
    check = parse_check({"http": "http://h/", "expected_status": value})
    assert isinstance(check, HttpCheckConfig)
    assert check.expected_status == ranges


def test_expected_status_accepts() -> None:
    check = parse_check({"http": "http://h/", "expected_status": "200-299,418"})
    assert isinstance(check, HttpCheckConfig)
    assert check.accepts(204) and check.accepts(418)
    assert not check.accepts(302) and not check.accepts(500)


@pytest.mark.parametrize("value", ["99", "200-100", "600", "abc", "2xy", [], True, [True], 1.5])
def test_bad_expected_status(value: Any) -> None:
    assert error_locs({"http": "http://h/", "expected_status": value}) == [
        ("http", "expected_status")
    ]


@pytest.mark.parametrize(
    ("value", "fraction"), [(0.2, 0.2), (0, 0.0), ("25%", 0.25), ("100ms", 0.05), ("1s", 0.5)]
)
def test_jitter_forms(value: Any, fraction: float) -> None:
    check = parse_check({"tcp": "h:1", "interval": "2s", "jitter": value})
    assert isinstance(check, TcpCheckConfig)
    assert check.jitter == pytest.approx(fraction)


@pytest.mark.parametrize("value", [0.6, 2, -0.1, "60%", "2s", "-1s", "x%", True, [0.1]])
def test_bad_jitter(value: Any) -> None:
    assert error_locs({"tcp": "h:1", "interval": "2s", "jitter": value}) == [("tcp", "jitter")]


# -- errors name the field ------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["ftp://h/health", "127.0.0.1:8080/health", "http:///health", "http://h:99999/", "", "http//h"],
)
def test_bad_url(url: str) -> None:
    assert error_locs({"http": url}) == [("http", "http")]


@pytest.mark.parametrize("interval", [-1, 0, "0s", "-5s", "0.001s", "soon", "5"])
def test_bad_interval(interval: Any) -> None:
    assert error_locs({"tcp": "h:1", "interval": interval}) == [("tcp", "interval")]


def test_negative_interval_message() -> None:
    assert errors({"tcp": "h:1", "interval": "-1s"}) == [
        (("tcp", "interval"), "Value error, must be greater than 0")
    ]


def test_timeout_must_be_positive_and_within_the_interval() -> None:
    assert error_locs({"tcp": "h:1", "timeout": 0}) == [("tcp", "timeout")]
    [(loc, msg)] = errors({"tcp": "h:1", "interval": "1s", "timeout": "2s"})
    assert loc == ("tcp", "timeout")
    assert "longer than the interval" in msg


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"interval": "1s"},
        {"tcp": "h:1", "http": "http://h/"},
        {"ttl": "1s", "exec": "true"},
    ],
)
def test_exactly_one_kind(data: dict[str, Any]) -> None:
    [(loc, msg)] = errors(data)
    assert loc == ()
    assert "exactly one of http, tcp, grpc, exec, ttl" in msg


def test_not_a_mapping() -> None:
    [(_, msg)] = errors("tcp 127.0.0.1:80")
    assert "must be a mapping" in msg


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        ({"tcp": "h"}, ("tcp", "tcp")),
        ({"tcp": "h:0"}, ("tcp", "tcp")),
        ({"tcp": "::1:80"}, ("tcp", "tcp")),
        ({"grpc": "h:x"}, ("grpc", "grpc")),
        ({"exec": []}, ("exec", "exec")),
        ({"exec": "  "}, ("exec", "exec")),
        ({"ttl": "0s"}, ("ttl", "ttl")),
        ({"ttl": "1s", "interval": "1s"}, ("ttl", "interval")),
        ({"ttl": "1s", "failures_before_critical": 2}, ("ttl", "failures_before_critical")),
        ({"tcp": "h:1", "failures_before_critical": 0}, ("tcp", "failures_before_critical")),
        ({"tcp": "h:1", "successes_before_passing": "2"}, ("tcp", "successes_before_passing")),
        ({"tcp": "h:1", "initial_status": "green"}, ("tcp", "initial_status")),
        ({"tcp": "h:1", "bogus": 1}, ("tcp", "bogus")),
        ({"http": "http://h/", "method": "FETCH"}, ("http", "method")),
        ({"http": "http://h/", "headers": {"Bad Name": "x"}}, ("http", "headers")),
        ({"http": "http://h/", "headers": {"X": "a\r\nb"}}, ("http", "headers")),
        ({"http": "http://h/", "body_contains": ""}, ("http", "body_contains")),
        ({"tcp": "h:1", "name": "a\nb"}, ("tcp", "name")),
    ],
)
def test_field_errors(data: dict[str, Any], loc: tuple[str, ...]) -> None:
    assert loc in error_locs(data)


def test_error_text_is_one_clear_message() -> None:
    with pytest.raises(ValidationError) as info:
        parse_check({"http": "ftp://x"})
    text = str(info.value)
    assert "for check" in text
    assert "http.http" in text
    assert "must start with http:// or https://" in text


def test_any_check_config_inside_a_larger_model() -> None:
    class Service(BaseModel):
        checks: list[AnyCheckConfig] = []

    service = Service.model_validate(
        {"checks": [{"tcp": "h:1"}, {"ttl": "5s"}, {"http": "http://h/", "method": "head"}]}
    )
    assert [c.kind for c in service.checks] == [CheckKind.TCP, CheckKind.TTL, CheckKind.HTTP]
    assert isinstance(service.checks[2], HttpCheckConfig)
    assert service.checks[2].method == "HEAD"
    with pytest.raises(ValidationError) as info:
        Service.model_validate({"checks": [{"tcp": "h:1"}, {"tcp": "h:1", "interval": -1}]})
    assert [tuple(e["loc"]) for e in info.value.errors()] == [("checks", 1, "tcp", "interval")]
