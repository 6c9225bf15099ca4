"""The proxy's limits in the sidecar configuration: defaults, how to change them, bounds."""

from __future__ import annotations

import textwrap

import pytest

from sidecar.config import ConfigError, ProxyPolicy, SidecarConfig, parse_config


def test_defaults() -> None:
    policy = ProxyPolicy(protocol="http")
    assert policy.max_request_headers_kb == 60
    assert policy.max_url_kb == 16
    assert policy.max_headers == 100
    assert policy.max_response_headers_kb == 60
    assert policy.allow_trace is False
    assert policy.head_timeout == 10.0
    assert policy.max_connections == 10_000
    assert policy.max_connections_per_ip == 1_000


def with_limits(orders: str, inbound: str) -> SidecarConfig:
    """A configuration with one HTTP upstream, orders, and one inbound listener: ``orders``
    is the upstream's further fields (YAML lines), ``inbound`` the listener's."""
    text = textwrap.dedent(
        """\
        services: [{name: web, address: 127.0.0.1, port: 8080}]
        upstreams:
          - service: orders
            protocol: http
            listen: "127.0.0.1:9001"
        """
    )
    text += textwrap.indent(textwrap.dedent(orders), "    ")
    text += f'inbound:\n  - {{listen: "0.0.0.0:15001", to: "127.0.0.1:8080", {inbound}}}\n'
    return parse_config(text)


def test_set_per_upstream_and_per_inbound_listener() -> None:
    config = with_limits(
        """\
        max_request_headers_kb: 8
        max_url_kb: 4
        max_headers: 50
        max_response_headers_kb: 128
        """,
        "protocol: http, allow_trace: true",
    )
    (orders,) = config.upstreams
    assert (orders.max_request_headers_kb, orders.max_url_kb, orders.max_headers) == (8, 4, 50)
    assert orders.max_response_headers_kb == 128 and not orders.allow_trace
    (inbound,) = config.inbound
    assert inbound.allow_trace and inbound.max_request_headers_kb == 60


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("max_request_headers_kb: 0", "max_request_headers_kb"),
        ("max_request_headers_kb: 2048", "max_request_headers_kb"),
        ("max_url_kb: 0", "max_url_kb"),
        ("max_headers: 0", "max_headers"),
        ("max_headers: 1.5", "max_headers"),
        ("max_response_headers_kb: -1", "max_response_headers_kb"),
        ('allow_trace: "yes"', "allow_trace"),
        ("head_timeout: 500ms", "head_timeout"),
        ("head_timeout: 6m", "head_timeout"),
        ("max_connections: 0", "max_connections"),
        ("max_connections: 2000000", "max_connections"),
        ("max_connections_per_ip: 0", "max_connections_per_ip"),
        ('max_connections_per_ip: "many"', "max_connections_per_ip"),
    ],
)
def test_bad_values_name_the_field_and_line(line: str, field: str) -> None:
    text = f"upstreams:\n  - service: orders\n    protocol: http\n    {line}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "sidecar.yaml")
    message = str(info.value)
    assert "sidecar.yaml:4" in message and field in message


def test_time_and_connection_limits_per_listener() -> None:
    config = with_limits(
        """\
        head_timeout: 2s
        max_connections: 500
        max_connections_per_ip: 50
        """,
        "protocol: tcp, max_connections: 7",
    )
    (orders,) = config.upstreams
    assert (orders.head_timeout, orders.max_connections, orders.max_connections_per_ip) == (
        2.0,
        500,
        50,
    )
    (inbound,) = config.inbound
    assert (inbound.max_connections, inbound.max_connections_per_ip) == (7, 1_000)
