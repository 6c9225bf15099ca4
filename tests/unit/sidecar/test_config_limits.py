"""Hostile configuration files: YAML bombs, deep nesting, huge files and lists, values the
control plane would refuse. Each is one ConfigError naming the line and the field, fast,
never a traceback or a hang."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from eco.cli import cli
from sidecar.config import ConfigError, load_config, parse_config

SERVICE = "{name: web, address: 127.0.0.1, port: 80}"


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), "sidecar.yaml")
    return info.value


def billion_laughs(levels: int = 9) -> str:
    """Ten times more strings at each level: 10**levels once expanded, a few lines of text."""
    lines = ["node:", "  metadata:", "    a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    previous = "a"
    for i in range(1, levels):
        lines.append(f"    x{i}: &x{i} [{', '.join([f'*{previous}'] * 10)}]")
        previous = f"x{i}"
    return "\n".join(lines) + "\n"


# -- YAML: aliases, nesting, size ----------------------------------------------------------


def test_a_billion_laughs_fails_fast_with_a_clear_message() -> None:
    started = time.perf_counter()
    err = error_of(billion_laughs())
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5, f"took {elapsed:.2f}s"
    assert len(err.problems) == 1
    message = str(err)
    assert message.startswith("sidecar.yaml:"), message
    assert "aliases expand to more than 100000 nodes" in message, message


def test_a_recursive_alias_is_a_config_error_with_its_line() -> None:
    err = error_of(
        """\
        node: {id: n1}
        services: &s
          - name: web
            address: 127.0.0.1
            port: 80
            checks: *s
        """
    )
    assert str(err).startswith("sidecar.yaml:6: "), str(err)
    assert "the alias *s is inside the node it refers to" in str(err), str(err)


def test_aliases_that_share_a_few_checks_still_work() -> None:
    config = parse_config(
        textwrap.dedent(
            """\
            services:
              - name: web
                address: 127.0.0.1
                port: 80
                checks: &checks
                  - {tcp: "127.0.0.1:80", interval: 1s}
                  - {ttl: 30s}
              - name: api
                address: 127.0.0.1
                port: 81
                checks: *checks
            """
        )
    )
    assert [len(s.checks) for s in config.services] == [2, 2]


@pytest.mark.parametrize("levels", [40, 900, 5000])
def test_deep_nesting_is_refused_not_a_recursion_error(levels: int) -> None:
    text = "node:\n  metadata:\n    a: " + "[" * levels + "]" * levels + "\n"
    err = error_of(text)
    assert str(err).startswith("sidecar.yaml:3: "), str(err)
    # Past 1,000 levels the C parser refuses first, in its own words.
    assert "nested deeper than 32 levels" in str(err) or "nesting depth" in str(err), str(err)


def test_aliases_cannot_nest_deeper_than_the_text_does() -> None:
    lines = ["node:", "  metadata:", "    a0: &a0 [x]"]
    for i in range(1, 40):
        lines.append(f"    a{i}: &a{i} [*a{i - 1}]")
    err = error_of("\n".join(lines) + "\n")
    assert "nested deeper than 32 levels" in str(err), str(err)


def test_a_file_over_one_mib_is_refused(tmp_path: Path) -> None:
    text = "node: {id: n1}\n" + "# padding\n" * (110 * 1024)
    path = tmp_path / "big.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: larger than 1 MiB (1048576 bytes); is this the right file?"
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        parse_config(text)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("9" * 5000, "sidecar.yaml:2: cannot read the value: Exceeds the limit"),
        ("2001-13-01", "sidecar.yaml:2: cannot read the value: month must be in 1..12"),
    ],
)
def test_values_yaml_cannot_build_are_config_errors(value: str, message: str) -> None:
    err = error_of(f"services:\n  - {{name: web, address: 127.0.0.1, port: {value}}}\n")
    assert str(err).startswith(message), str(err)


# -- counts the control plane would refuse -------------------------------------------------


def test_more_services_than_the_control_plane_takes_per_sync() -> None:
    text = "services:\n" + "".join(
        f"  - {{name: s{i}, address: 127.0.0.1, port: {1 + i}}}\n" for i in range(1001)
    )
    err = error_of(text)
    assert str(err) == (
        "sidecar.yaml:1: services: at most 1000 services are allowed (the control plane "
        "takes at most 1000 instances per node), got 1001"
    )


def test_twenty_thousand_services_are_refused_quickly() -> None:
    text = "services:\n" + "".join(
        f"  - {{name: s{i}, address: 127.0.0.1, port: {1 + i % 60000}}}\n" for i in range(20_000)
    )
    started = time.perf_counter()
    err = error_of(text)
    assert len(err.problems) == 1 and "at most 1000 services" in str(err)
    # Most of it is reading the YAML; the 20,000 entries are not validated one by one.
    assert time.perf_counter() - started < 10.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "services:\n  - name: web\n    address: 127.0.0.1\n    port: 80\n    checks:\n"
            + "".join(f'      - {{tcp: "127.0.0.1:{i + 1}"}}\n' for i in range(33)),
            "sidecar.yaml:5: services[0].checks: at most 32 checks are allowed, got 33",
        ),
        (
            "upstreams:\n" + "".join(f"  - {{service: s{i}}}\n" for i in range(1001)),
            "sidecar.yaml:1: upstreams: at most 1000 upstreams are allowed, got 1001",
        ),
        (
            "inbound:\n"
            + "".join(
                f'  - {{listen: "127.0.0.1:{2000 + i}", to: "127.0.0.1:80"}}\n' for i in range(257)
            ),
            "sidecar.yaml:1: inbound: at most 256 inbound listeners are allowed, got 257",
        ),
        (
            "controlplane:\n  addresses:\n"
            + "".join(f'    - "10.0.0.{i}:7400"\n' for i in range(33)),
            "sidecar.yaml:2: controlplane.addresses: at most 32 addresses are allowed, got 33",
        ),
    ],
)
def test_list_limits_name_the_field_and_the_line(text: str, expected: str) -> None:
    assert str(error_of(text)) == expected


def test_tags_the_control_plane_refuses_are_refused_here() -> None:
    err = error_of(
        """\
        services:
          - {name: web, address: 127.0.0.1, port: 80, tags: [v1, v1]}
          - {name: api, address: 127.0.0.1, port: 81, tags: ["a\\u200bb"]}
        """
    )
    assert err.lines() == [
        "sidecar.yaml:2: services[0].tags: 'v1' is listed twice",
        "sidecar.yaml:3: services[1].tags: 'a\\u200bb': a tag is 1-128 printable characters "
        "without spaces",
    ]


def test_metadata_larger_than_the_control_plane_takes_in_all() -> None:
    entries = ", ".join(f"k{i}: {'v' * 1000}" for i in range(20))
    err = error_of(
        f"services:\n  - {{name: web, address: 127.0.0.1, port: 80, metadata: {{{entries}}}}}\n"
    )
    assert str(err) == (
        "sidecar.yaml:2: services[0].metadata: larger than 16384 bytes in all "
        "(keys and values, UTF-8), got 20050"
    )


def test_a_service_behind_an_inbound_listener_keeps_room_for_its_port_entry() -> None:
    entries = ", ".join(f"k{i}: v" for i in range(64))
    text = f"""\
        services:
          - {{name: web, address: 127.0.0.1, port: 80, metadata: {{{entries}}}}}
        inbound:
          - {{listen: "127.0.0.1:9080", to: "127.0.0.1:80"}}
        """
    err = error_of(text)
    assert str(err) == (
        "sidecar.yaml:2: services[0].metadata: at most 63 entries for a service behind an "
        "inbound listener (the sidecar adds eco.inbound.port), got 64"
    )
    # Without the listener, 64 entries are fine.
    parse_config(
        f"services:\n  - {{name: web, address: 127.0.0.1, port: 80, metadata: {{{entries}}}}}\n"
    )


def test_node_metadata_is_bounded_like_instance_metadata() -> None:
    entries = ", ".join(f"k{i}: v" for i in range(65))
    err = error_of(f"node: {{id: n1, metadata: {{{entries}}}}}\n")
    assert str(err) == "sidecar.yaml:1: node.metadata: at most 64 entries are allowed, got 65"


# -- the command line ----------------------------------------------------------------------


def test_check_of_a_billion_laughs_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "lol.yaml"
    path.write_text(billion_laughs())
    started = time.perf_counter()
    result = CliRunner().invoke(cli, ["sidecar", "--check", "--config", str(path)])
    assert time.perf_counter() - started < 1.0
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"eco: {path}:"), lines[0]
    assert "aliases expand to more than 100000 nodes" in lines[0]
    assert result.stdout == ""


def test_check_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("grace: -1s\nservices:\n  - {name: web, address: 127.0.0.1, port: 99999}\n")
    result = CliRunner().invoke(cli, ["sidecar", "--check", "--config", str(path)])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"eco: {path}:1: grace: must be greater than 0",
        f"eco: {path}:3: services[0].port: Input should be less than or equal to 65535",
    ]


def test_a_huge_rejected_value_is_quoted_in_part() -> None:
    err = error_of(f"services:\n  - {{name: {'W' * 100_000}, address: 127.0.0.1, port: 80}}\n")
    message = str(err)
    assert len(message) < 400, len(message)
    assert message.startswith("sidecar.yaml:2: services[0].name: 'WWW"), message
    assert message.endswith("at most 63 characters"), message
