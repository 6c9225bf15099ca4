"""Check names: a name of one's own, validated as the control plane does, and default names
that never carry a credential (URL userinfo and query strings, a command's arguments)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from sidecar.config import parse_config
from sidecar.health import AnyCheckConfig, parse_check


def name_of(data: dict[str, Any]) -> str:
    return parse_check(data).name


def messages(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as info:
        parse_check(data)
    return [str(e["msg"]) for e in info.value.errors()]


@pytest.mark.parametrize(
    ("check", "name"),
    [
        (
            {"http": "http://user:pw@host:8080/health?token=x"},
            "http http://host:8080/health",
        ),
        ({"http": "https://host/health?key=s3cret#frag"}, "http https://host/health"),
        ({"http": "http://:pw@host/h"}, "http http://host/h"),
        ({"http": "http://127.0.0.1:8080/health"}, "http http://127.0.0.1:8080/health"),
        ({"grpc": "token@host:9000", "service": "orders"}, "grpc host:9000/orders"),
        ({"grpc": "127.0.0.1:9000"}, "grpc 127.0.0.1:9000"),
        ({"exec": ["/usr/local/bin/check-disk", "--password", "s3cret"]}, "exec check-disk"),
        ({"exec": "PGPASSWORD=s3cret psql -c 'select 1' db"}, "exec psql"),
        ({"exec": "test -f /tmp/ready && echo s3cret"}, "exec test"),
        ({"exec": "echo 'unterminated"}, "exec sh"),
        ({"tcp": "127.0.0.1:5432"}, "tcp 127.0.0.1:5432"),
        ({"ttl": "30s"}, "ttl"),
    ],
)
def test_default_names_carry_no_credentials(check: dict[str, Any], name: str) -> None:
    assert name_of(check) == name


def test_targets_in_logs_and_outputs_are_redacted_too() -> None:
    http = parse_check({"http": "http://user:pw@host/health?token=x"})
    assert "pw" not in http.target and "token" not in http.target
    command = parse_check({"exec": ["/bin/check", "--password", "s3cret"]})
    assert "s3cret" not in command.target


def test_a_long_url_makes_a_name_of_at_most_128_characters() -> None:
    name = name_of({"http": "http://host/" + "a" * 500})
    assert len(name) == 128 and name.endswith("…")


def test_an_own_name_is_kept() -> None:
    assert name_of({"http": "http://user:pw@host/h", "name": "orders db"}) == "orders db"
    assert name_of({"tcp": "h:1", "name": "  padded  "}) == "padded"
    assert name_of({"tcp": "h:1", "name": "é" * 128}) == "é" * 128


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("x" * 129, "a check name is at most 128 characters, got 129"),
        ("a\tb", "a check name must be printable: no tabs, line breaks or control characters"),
        ("a\x7fb", "a check name must be printable: no tabs, line breaks or control characters"),
        (
            "zero\u200bwidth",
            "a check name must be printable: no tabs, line breaks or control characters",
        ),
        ("   ", "a check name cannot be blank"),
    ],
)
def test_bad_names_are_refused(name: str, message: str) -> None:
    assert any(m.endswith(message) for m in messages({"tcp": "h:1", "name": name})), messages(
        {"tcp": "h:1", "name": name}
    )


# Only default names are numbered: a name of one's own used twice stays an error
# (test_bad_input_names_the_line_and_the_field in tests/unit/sidecar/test_config.py).
def test_equal_default_names_in_one_service_are_numbered() -> None:
    config = parse_config(
        """\
services:
  - name: web
    address: 127.0.0.1
    port: 80
    checks:
      - {exec: ["/bin/check", "--disk"]}
      - {exec: ["/bin/check", "--memory"]}
      - {http: "http://127.0.0.1/h?probe=a"}
      - {http: "http://127.0.0.1/h?probe=b"}
      - {exec: ["/bin/check", "--load"]}
"""
    )
    assert [c.name for c in config.services[0].checks] == [
        "exec check",
        "exec check #2",
        "http http://127.0.0.1/h",
        "http http://127.0.0.1/h #2",
        "exec check #3",
    ]


def test_names_in_a_larger_model_are_numbered_only_by_the_sidecar_config() -> None:
    class Holder(BaseModel):
        checks: tuple[AnyCheckConfig, ...]

    holder = Holder.model_validate({"checks": [{"exec": ["/bin/a", "1"]}, {"exec": ["/bin/a"]}]})
    assert [c.name for c in holder.checks] == ["exec a", "exec a"]


def test_body_contains_longer_than_what_is_read_is_refused() -> None:
    # Only the first 64 KiB of a body are read: a longer needle could never be found.
    assert any(
        "could never be found" in m
        for m in messages({"http": "http://h/", "body_contains": "x" * (64 * 1024 + 1)})
    )
    assert parse_check({"http": "http://h/", "body_contains": "x" * 64 * 1024})
