"""The data-plane keys of the sidecar configuration: upstream listeners and inbound."""

from __future__ import annotations

import textwrap

import pytest

from sidecar.config import ConfigError, parse_config


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), "sidecar.yaml")
    return str(info.value)


def test_upstream_listener_with_policy() -> None:
    config = parse_config(
        textwrap.dedent(
            """\
            upstreams:
              - service: orders
                protocol: http
                listen: "127.0.0.1:9001"
                timeout: 5s
                per_try_timeout: 1s
                retries: 1
                retry_on: [503]
                circuit_breaker: {max_requests: 10}
                outlier: {consecutive_failures: 3, base_ejection: 10s}
            """
        )
    )
    (orders,) = config.upstreams
    assert (orders.protocol, orders.listen) == ("http", "127.0.0.1:9001")
    assert (orders.timeout, orders.per_try_timeout, orders.retries) == (5.0, 1.0, 1)
    assert orders.retry_on == (503,)
    assert orders.circuit_breaker.max_requests == 10
    assert orders.circuit_breaker.max_connections == 1024
    assert orders.outlier.consecutive_failures == 3 and orders.outlier.base_ejection == 10.0


def test_upstream_without_listen_has_no_listener_and_defaults() -> None:
    (orders,) = parse_config("upstreams: [{service: orders}]").upstreams
    assert orders.listen is None and orders.protocol == "tcp"
    assert orders.connect_timeout == 2.0 and orders.retries == 2


def test_inbound_takes_one_mapping_or_a_list() -> None:
    one = parse_config(
        textwrap.dedent(
            """\
            services: [{name: web, address: 127.0.0.1, port: 8080}]
            inbound: {listen: "0.0.0.0:15001", to: "127.0.0.1:8080"}
            """
        )
    )
    assert [(i.listen, i.to, i.protocol) for i in one.inbound] == [
        ("0.0.0.0:15001", "127.0.0.1:8080", "tcp")
    ]
    many = parse_config(
        textwrap.dedent(
            """\
            services: [{name: web, address: 127.0.0.1, port: 8080}]
            inbound:
              - {listen: "0.0.0.0:15001", to: "127.0.0.1:8080", protocol: http, service: web}
              - {listen: "0.0.0.0:15002", to: "127.0.0.1:9090", protocol: grpc}
            """
        )
    )
    assert [i.protocol for i in many.inbound] == ["http", "grpc"]
    assert many.inbound[0].service == "web"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'upstreams: [{service: orders, protocol: udp, listen: "127.0.0.1:9001"}]',
            "sidecar.yaml:1: upstreams[0].protocol: unknown protocol 'udp'; "
            "expected one of tcp, http, grpc",
        ),
        (
            'upstreams: [{service: orders, listen: "9001"}]',
            "sidecar.yaml:1: upstreams[0].listen: '9001' is not HOST:PORT",
        ),
        (
            'upstreams: [{service: orders, listen: "127.0.0.1:9001", retry_on: [404]}]',
            "sidecar.yaml:1: upstreams[0].retry_on: 404: only 5xx statuses can be retried",
        ),
        (
            'upstreams: [{service: orders, listen: "127.0.0.1:9001", per_try_timeout: -1s}]',
            "sidecar.yaml:1: upstreams[0].per_try_timeout: must be greater than 0",
        ),
        (
            "upstreams: [{service: orders, outlier: {base_ejection: 60s, max_ejection: 10s}}]",
            "sidecar.yaml:1: upstreams[0].outlier: max_ejection must be at least base_ejection",
        ),
        (
            "upstreams: [{service: orders, circuit_breaker: {max_requests: 0}}]",
            "sidecar.yaml:1: upstreams[0].circuit_breaker.max_requests: "
            "Input should be greater than or equal to 1",
        ),
        (
            'upstreams: [{service: orders, listen: "127.0.0.1:7410"}]',
            "sidecar.yaml:1: upstreams[0].listen: 127.0.0.1:7410 is also the listen address "
            "of local_api",
        ),
        (
            'inbound: {listen: "0.0.0.0:15001", to: "127.0.0.1:8080", service: web}',
            "sidecar.yaml:1: inbound[0].service: 'web' is not one of the local services (none)",
        ),
        (
            'inbound: {listen: "0.0.0.0:15001"}',
            "sidecar.yaml:1: inbound[0].to: required",
        ),
        (
            'inbound: {listen: "0.0.0.0:15001", to: "127.0.0.1:0"}',
            "sidecar.yaml:1: inbound[0].to: '127.0.0.1:0': the port must be a number from 1",
        ),
        (
            "drain_grace: -1s",
            "sidecar.yaml:1: drain_grace: must be 0 or greater",
        ),
    ],
)
def test_bad_proxy_keys_name_the_line_and_the_field(text: str, expected: str) -> None:
    message = error_of(text)
    assert message.startswith(expected), message
