"""The ``bridges`` section: ``http`` as it always was, ``amqp`` with its declarations and
rules, and each bad field named with its line."""

from __future__ import annotations

import textwrap

import pytest

from sidecar.bridges.amqp._convert import amqp_headers, bus_headers, check_template, visited
from sidecar.config import (
    AmqpBridgeConfig,
    ConfigError,
    HttpBridgeConfig,
    parse_config,
)

AMQP = """\
bridges:
  - protocol: amqp
    name: orders
    url: amqp://app:s3cret@rabbit.internal:5672/shop
    exchanges: [{name: orders, type: topic}]
    queues:
      - name: orders-in
        arguments: {x-dead-letter-exchange: orders-dlx, x-message-ttl: 60000}
        bindings: [{exchange: orders, routing_key: "eu.#"}]
    inbound:
      - {queue: orders-in, subject: "amqp.orders.{routing_key}", prefetch: 50}
    outbound:
      - {subject: "orders.>", durable: amqp-orders, exchange: orders, routing_key: "{subject}"}
      - {subject: "audit.*"}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), "sidecar.yaml")
    return info.value.lines()


def amqp(body: str) -> str:
    """A config with one AMQP bridge whose keys (after protocol and url) are ``body``."""
    lines = textwrap.dedent(body).strip().splitlines()
    head = "bridges:\n  - protocol: amqp\n    url: amqp://127.0.0.1/\n"
    return head + "".join(f"    {line}\n" for line in lines)


def test_an_http_bridge_is_as_it_was() -> None:
    config = parse_config(
        "bridges: [{listen: 127.0.0.1:7420}, {protocol: http, listen: '127.0.0.1:7421'}]"
    )
    first, second = config.bridges
    assert isinstance(first, HttpBridgeConfig) and isinstance(second, HttpBridgeConfig)
    assert (first.protocol, first.listen, first.max_body) == ("http", "127.0.0.1:7420", 1 << 20)
    assert problems("bridges: [{listen: 127.0.0.1:7420, max_body: 0}]") == [
        "sidecar.yaml:1: bridges[0].max_body: Input should be greater than or equal to 1"
    ]
    assert problems("bridges: [{listen: x}]")[0].startswith("sidecar.yaml:1: bridges[0].listen:")


def test_the_documented_amqp_shape_works() -> None:
    (bridge,) = parse_config(AMQP).bridges
    assert isinstance(bridge, AmqpBridgeConfig)
    assert bridge.name == "orders" and bridge.vhost == "shop"
    assert bridge.safe_url == "amqp://app:***@rabbit.internal:5672/shop"
    assert "s3cret" not in repr(bridge)
    (queue,) = bridge.queues
    assert queue.durable and queue.arguments == {
        "x-dead-letter-exchange": "orders-dlx",
        "x-message-ttl": 60000,
    }
    (inbound,) = bridge.inbound
    assert (inbound.prefetch, inbound.retry_delay) == (50, 1.0)
    first, second = bridge.outbound
    assert (first.durable, first.max_ack_pending, first.ack_wait) == ("amqp-orders", 1000, 30.0)
    assert (second.exchange, second.routing_key, second.durable) == ("", "{subject}", "")


def test_unknown_protocols_and_keys_are_named() -> None:
    assert problems("bridges: [{protocol: mqtt, listen: x}]") == [
        "sidecar.yaml:1: bridges[0].protocol: unknown protocol 'mqtt'; expected one of http, amqp"
    ]
    (line,) = problems(amqp("outbound: [{subject: a, queue: x}]"))
    assert line.startswith("sidecar.yaml:4: bridges[0].outbound[0].queue: unknown key 'queue'")
    assert "durable, exchange" in line
    (line,) = problems(amqp("inbound: [{queue: q, subject: a}]\nlisten: 1.2.3.4:5"))
    assert "bridges[0].listen: unknown key 'listen' (expected one of: confirm_timeout," in line


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h/", "the scheme must be amqp:// or amqps://, not 'http'"),
        ("amqp:///", "names no host (amqp://user:password@host:5672/vhost)"),
        ("amqp://h:0/", "the port must be 1-65535"),
        ("amqp://h:99999/", "not a URL like amqp://user:password@host:5672/vhost"),
        ("amqp://h/a/b", "a virtual host's own '/' is written %2F (amqp://host/%2F)"),
    ],
)
def test_bad_urls_are_named_without_the_password(url: str, message: str) -> None:
    text = amqp("outbound: [{subject: a}]").replace("amqp://127.0.0.1/", url)
    (line,) = problems(text)
    assert line == f"sidecar.yaml:3: bridges[0].url: {message}"


def test_a_url_with_an_escaped_vhost_and_amqps() -> None:
    text = amqp("outbound: [{subject: a}]").replace("amqp://127.0.0.1/", "amqps://h/%2F")
    (bridge,) = parse_config(text).bridges
    assert isinstance(bridge, AmqpBridgeConfig)
    assert bridge.vhost == "/" and bridge.safe_url == "amqps://h/%2F"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "inbound: [{queue: q, subject: 'amqp.{key}'}]\nqueues: [{name: q}]",
            "bridges[0].inbound[0].subject: 'amqp.{key}': unknown placeholder {key}; "
            "known: {exchange}, {queue}, {routing_key}",
        ),
        (
            "inbound: [{queue: q, subject: 'amqp..{routing_key}'}]\nqueues: [{name: q}]",
            "bridges[0].inbound[0].subject: does not make a bus subject: 'amqp..x' has an "
            "empty token at position 2 (leading, trailing or double dot)",
        ),
        (
            "inbound: [{queue: q, subject: 'a.{routing_key:>5}'}]\nqueues: [{name: q}]",
            "bridges[0].inbound[0].subject: 'a.{routing_key:>5}': write {routing_key} without "
            "a format or conversion",
        ),
        (
            "inbound: [{queue: q, subject: a, prefetch: 0}]\nqueues: [{name: q}]",
            "bridges[0].inbound[0].prefetch: Input should be greater than or equal to 1",
        ),
        (
            "inbound: [{queue: q, subject: a, prefetch: 70000}]\nqueues: [{name: q}]",
            "bridges[0].inbound[0].prefetch: Input should be less than or equal to 65535",
        ),
        (
            "inbound: [{queue: other, subject: a}]\nqueues: [{name: q}]",
            "bridges[0].inbound[0].queue: 'other' is not declared under queues "
            "(declare it, with passive: true if it exists already)",
        ),
        (
            "outbound: [{subject: a, exchange: nope}]",
            "bridges[0].outbound[0].exchange: 'nope' is not declared under exchanges "
            "(declare it, with passive: true if it exists already)",
        ),
        (
            "outbound: [{subject: 'a.>.b'}]",
            "bridges[0].outbound[0].subject: 'a.>.b' has '>' before its last token "
            "('>' matches the rest, so it comes last)",
        ),
        (
            "outbound: [{subject: a, routing_key: '{subj}'}]",
            "bridges[0].outbound[0].routing_key: '{subj}': unknown placeholder {subj}; "
            "known: {subject}",
        ),
        (
            "outbound: [{subject: a, durable: 'no spaces'}]",
            "bridges[0].outbound[0].durable: 'no spaces' may only hold letters, digits, "
            "'-' and '_'",
        ),
        (
            "outbound: [{subject: a, stream: S}]",
            "bridges[0].outbound[0].stream: only a durable consumer names a stream; "
            "set durable too",
        ),
        (
            "outbound: [{subject: a, durable: d}, {subject: b, durable: d}]",
            "bridges[0].outbound[1].durable: 'd' is also the consumer of outbound[0]; "
            "give each its own",
        ),
        (
            "outbound: [{subject: a, max_ack_pending: 0}]",
            "bridges[0].outbound[0].max_ack_pending: Input should be greater than or equal to 1",
        ),
        (
            "outbound: [{subject: a, nak_delay: 0s}]",
            "bridges[0].outbound[0].nak_delay: must be greater than 0 and at most 24h",
        ),
        (
            "exchanges: [{name: amq.mine}]\noutbound: [{subject: a}]",
            "bridges[0].exchanges[0].name: 'amq.mine': names starting with 'amq.' are "
            "RabbitMQ's own and cannot be declared",
        ),
        (
            "exchanges: [{name: x, type: x-delayed}]\noutbound: [{subject: a}]",
            "bridges[0].exchanges[0].type: Input should be 'direct', 'fanout', 'topic' "
            "or 'headers'",
        ),
        (
            "exchanges: [{name: x}, {name: x}]\noutbound: [{subject: a}]",
            "bridges[0].exchanges: each name may be declared once",
        ),
        (
            "queues: [{name: 'a b'}]\noutbound: [{subject: a}]",
            "bridges[0].queues[0].name: 'a b' is not a queue name: 1-255 letters, digits, "
            "'-', '_', '.' and ':'",
        ),
        (
            "queues: [{name: q, bindings: [{exchange: ''}]}]\noutbound: [{subject: a}]",
            "bridges[0].queues[0].bindings[0].exchange: a queue cannot be bound to the "
            "default exchange (it is implicit)",
        ),
        (
            "queues: [{name: q, bindings: [{exchange: x}]}]\noutbound: [{subject: a}]",
            "bridges[0].queues[0].bindings[0].exchange: 'x' is not declared under exchanges "
            "(declare it, with passive: true if it exists already)",
        ),
        (
            "queues: [{name: q}]",
            "bridges[0].inbound: needs inbound or outbound rules (or both)",
        ),
        (
            "name: 'a b'\noutbound: [{subject: a}]",
            "bridges[0].name: 'a b' may only hold letters, digits, '-' and '_'",
        ),
    ],
)
def test_each_bad_field_is_named(body: str, expected: str) -> None:
    lines = problems(amqp(body))
    assert [line.split(": ", 1)[1] for line in lines] == [expected]


def test_built_in_exchanges_need_no_declaration() -> None:
    text = amqp(
        """
        queues: [{name: q, bindings: [{exchange: amq.topic, routing_key: "#"}]}]
        outbound: [{subject: a, exchange: amq.fanout}]
        """
    )
    (bridge,) = parse_config(text).bridges
    assert isinstance(bridge, AmqpBridgeConfig)


def test_two_amqp_bridges_need_two_names() -> None:
    text = amqp("outbound: [{subject: a}]")
    text += "  - {protocol: amqp, url: 'amqp://h/', outbound: [{subject: b}]}\n"
    assert problems(text) == [
        "sidecar.yaml:5: bridges[1].name: 'amqp' is also the name of bridges[0]; "
        "give each AMQP bridge its own"
    ]


# -- what the bridge translates ------------------------------------------------------------


def test_templates() -> None:
    assert check_template("a.{routing_key}.{queue}", {"routing_key", "queue"}) == (
        "routing_key",
        "queue",
    )
    with pytest.raises(ValueError, match="unknown placeholder"):
        check_template("{0}", {"subject"})
    with pytest.raises(ValueError, match="without a format"):
        check_template("{subject!r}", {"subject"})


def test_amqp_headers_become_bus_headers_as_text() -> None:
    headers, dropped = bus_headers(
        {
            "s": "x",
            "i": 5,
            "b": False,
            "raw": b"\xff\x00",
            "text": b"ok",
            "nested": {"k": [1, "two"]},
            "bad name": "x",
            "eco-bridge": "other",
        },
        exchange="ex",
        routing_key="rk",
        content_type="text/plain",
        correlation_id=None,
        bridge="me",
    )
    assert dropped == 1
    assert headers == {
        "s": "x",
        "i": "5",
        "b": "false",
        "raw": "/wA=",
        "text": "ok",
        "nested": '{"k":[1,"two"]}',
        "content-type": "text/plain",
        "amqp-exchange": "ex",
        "amqp-routing-key": "rk",
        "eco-bridge": "other,me",
    }
    assert visited(headers, "me") and visited(headers, "other") and not visited(headers, "x")


def test_bus_headers_become_an_amqp_table() -> None:
    table = amqp_headers({"a": "1"}, subject="s.x", stream="S", sequence=7, bridge="me")
    assert table == {
        "a": "1",
        "eco-subject": "s.x",
        "eco-stream": "S",
        "eco-sequence": 7,
        "eco-bridge": "me",
    }
    assert "eco-stream" not in amqp_headers({}, subject="s", stream="", sequence=0, bridge="me")


def test_an_http_bridge_has_limits_and_allowed_origins() -> None:
    config = parse_config(
        textwrap.dedent(
            """\
            bridges:
              - listen: 127.0.0.1:7420
                allowed_origins: ["https://App.Example.com/", "http://localhost:3000", "https://a.b:443"]
                head_timeout: 5s
                body_timeout: 1m
                idle_timeout: 500ms
                max_connections: 100
                max_connections_per_ip: 10
                max_subscriptions: 5
            """
        )
    )
    (bridge,) = config.bridges
    assert isinstance(bridge, HttpBridgeConfig)
    assert bridge.allowed_origins == (
        "https://app.example.com",
        "http://localhost:3000",
        "https://a.b",
    )
    assert (bridge.head_timeout, bridge.body_timeout, bridge.idle_timeout) == (5.0, 60.0, 0.5)
    assert (bridge.max_connections, bridge.max_connections_per_ip) == (100, 10)
    assert bridge.max_subscriptions == 5
    default = parse_config("bridges: [{listen: 127.0.0.1:7420}]").bridges[0]
    assert isinstance(default, HttpBridgeConfig)
    assert default.allowed_origins == ()
    assert (default.head_timeout, default.max_connections) == (10.0, 1024)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('["*"]', "'*' would let any web page use the bus"),
        ('["null"]', "'null' is what sandboxed pages and local files send"),
        ('["https://app.example.com/path"]', "is not an origin like https://app.example.com"),
        ('["app.example.com"]', "is not an origin like https://app.example.com"),
    ],
)
def test_an_allowed_origin_is_an_origin(value: str, message: str) -> None:
    [line] = problems(f"bridges: [{{listen: 127.0.0.1:7420, allowed_origins: {value}}}]")
    assert line.startswith("sidecar.yaml:1: bridges[0].allowed_origins")
    assert message in line


def test_a_bridge_timeout_is_positive() -> None:
    [line] = problems("bridges: [{listen: 127.0.0.1:7420, head_timeout: 0s}]")
    assert line == "sidecar.yaml:1: bridges[0].head_timeout: must be between 1ms and 1h"
