"""``eco bus …`` through click's CliRunner against a real bus server in a thread."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner, Result

from bus import OutgoingMessage, Subscription, SubscriptionSpec
from eco._bus import parse_bytes, parse_duration
from eco.cli import cli
from tests.harness.bus_server import ThreadedBusServer

WAIT = 15.0


@pytest.fixture
def server() -> Iterator[ThreadedBusServer]:
    with ThreadedBusServer() as s:
        yield s


def eco(server: ThreadedBusServer, *args: str, input: bytes | None = None) -> Result:
    return CliRunner().invoke(cli, ["--server", server.address, "bus", *args], input=input)


def lines(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def wait_for(check: Any, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_publish_prints_where_the_message_went(server: ThreadedBusServer) -> None:
    result = eco(server, "publish", "orders.eu.created", '{"id": 7}', "--header", "source=web")
    assert result.exit_code == 0, result.output
    assert "no stream captures it" in result.stdout

    assert eco(server, "stream", "add", "ORDERS", "--subjects", "orders.>").exit_code == 0
    result = eco(server, "publish", "orders.eu.created", "x", "--id", "o-1", "-o", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "subject": "orders.eu.created",
        "stream": "ORDERS",
        "sequence": 1,
        "duplicate": False,
    }
    result = eco(server, "publish", "orders.eu.created", "x", "--id", "o-1")
    assert "duplicate of ORDERS #1" in result.stdout


def test_durable_subscribe_prints_json_lines_and_acks(server: ThreadedBusServer) -> None:
    assert eco(server, "stream", "add", "JOBS", "--subjects", "jobs.*").exit_code == 0
    for i in range(3):
        assert eco(server, "publish", "jobs.resize", f"job {i}").exit_code == 0
    assert eco(server, "publish", "jobs.raw", "-", input=b"\xff\xfe").exit_code == 0

    result = eco(server, "subscribe", "jobs.*", "--durable", "workers", "--count", "4")
    assert result.exit_code == 0, result.output
    got = lines(result)
    assert [(m["data"], m["sequence"]) for m in got[:3]] == [
        ("job 0", 1),
        ("job 1", 2),
        ("job 2", 3),
    ]
    for m in got:
        assert m["stream"] == "JOBS" and m["redelivered"] is False and m["delivery_count"] == 1
        assert m["headers"] == {}
    assert got[3]["encoding"] == "base64"
    assert base64.b64decode(got[3]["data"]) == b"\xff\xfe"

    def settled() -> bool:
        result = eco(server, "streams", "-o", "json")
        [stream] = json.loads(result.stdout)["streams"]
        consumers = {c["name"]: c for c in stream["consumers"]}
        return bool(stream["messages"] == 4 and consumers["workers"]["pending"] == 0)

    wait_for(settled)


def test_core_subscribe_prints_messages_as_they_come(server: ThreadedBusServer) -> None:
    outcome: list[Result] = []
    thread = threading.Thread(
        target=lambda: outcome.append(eco(server, "subscribe", "news.>", "--count", "2"))
    )
    thread.start()
    try:
        wait_for(lambda: server.server.servicer.subscription_count == 1)
        broker = server.server.broker
        server.run(broker.publish(OutgoingMessage("news.eu", b"hello", {"lang": "en"})))
        server.run(broker.publish(OutgoingMessage("news.us", b"\x00\x9f")))
    finally:
        thread.join(WAIT)
    [result] = outcome
    assert result.exit_code == 0, result.output
    first, second = lines(result)
    assert first.pop("published_at_ms", 1) > 0
    assert first == {"subject": "news.eu", "data": "hello", "headers": {"lang": "en"}}
    assert second["encoding"] == "base64" and base64.b64decode(second["data"]) == b"\x00\x9f"
    assert "sequence" not in first


def test_request_prints_the_reply(server: ThreadedBusServer) -> None:
    broker = server.server.broker
    sub: Subscription = server.run(broker.subscribe(SubscriptionSpec("svc.echo")))

    async def answer_once() -> None:
        try:
            async for request in sub:
                reply = OutgoingMessage(request.reply_to, b"pong:" + request.data)
                await broker.publish(reply)
                return
        finally:
            await sub.close()

    answered = server.submit(answer_once())
    result = eco(server, "request", "svc.echo", "ping", "--timeout", "10s")
    answered.result(WAIT)
    assert result.exit_code == 0, result.output
    assert result.stdout == "pong:ping\n"


def test_request_without_responders_is_one_line_and_exit_1(server: ThreadedBusServer) -> None:
    result = eco(server, "request", "svc.nobody", "ping")
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.endswith("no responders: nothing subscribes to svc.nobody")


def test_streams_table_json_and_delete(server: ThreadedBusServer) -> None:
    result = eco(server, "streams")
    assert result.exit_code == 0 and "no durable streams" in result.stdout
    result = eco(
        server,
        "stream",
        "add",
        "EVENTS",
        "--subjects",
        "billing.*,shipping.*",
        "--max-age",
        "24h",
        "--max-msgs",
        "1000",
        "--max-bytes",
        "1MiB",
        "--duplicate-window",
        "30s",
    )
    assert result.exit_code == 0, result.output
    assert "stream EVENTS captures billing.*, shipping.*" in result.stdout
    assert eco(server, "publish", "billing.paid", "1").exit_code == 0

    table = eco(server, "streams").stdout
    assert table.splitlines()[0].split()[:3] == ["NAME", "SUBJECTS", "MESSAGES"]
    assert "EVENTS" in table and "age 1d" in table and "1000 msgs" in table

    [info] = json.loads(eco(server, "stream", "list", "-o", "json").stdout)["streams"]
    assert info["subjects"] == ["billing.*", "shipping.*"]
    assert (info["max_age_seconds"], info["max_msgs"], info["max_bytes"]) == (86400, 1000, 2**20)
    assert (info["duplicate_window_seconds"], info["messages"]) == (30, 1)

    assert eco(server, "stream", "delete", "EVENTS").exit_code == 0
    result = eco(server, "stream", "delete", "EVENTS")
    assert result.exit_code == 1 and "not found" in result.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["publish", "orders..eu", "x"], "subject"),
        (["publish", "a", "x", "--header", "novalue"], "KEY=VALUE"),
        (["stream", "add", "S"], "--subjects"),
        (["stream", "add", "bad name", "--subjects", "a"], "config.name"),
        (["stream", "add", "S", "--subjects", "a", "--max-age", "5x"], "duration"),
        (["stream", "add", "S", "--subjects", "a", "--max-bytes", "lots"], "size"),
        (["subscribe", "a.>", "--stream", "S"], "--durable"),
        (["subscribe", "a.>.b", "--count", "1"], "subject"),
        (["request", "a", "x", "--timeout", "0"], "--timeout"),
    ],
)
def test_bad_input_exits_2(server: ThreadedBusServer, args: list[str], needle: str) -> None:
    result = eco(server, *args)
    assert result.exit_code == 2, result.output
    assert needle in result.output


def test_an_unreachable_server_exits_1() -> None:
    result = CliRunner().invoke(
        cli, ["--server", "127.0.0.1:1", "--timeout", "0.5", "bus", "streams"]
    )
    assert result.exit_code == 1
    assert "cannot reach control plane" in result.stderr


def test_help_shows_examples() -> None:
    for args in (["bus"], ["bus", "subscribe"], ["bus", "stream", "add"]):
        result = CliRunner().invoke(cli, [*args, "--help"])
        assert result.exit_code == 0
        assert "Example" in result.stdout


def test_durations_and_sizes() -> None:
    assert parse_duration("500ms") == 0.5
    assert (
        parse_duration("2") == 2 and parse_duration("1.5m") == 90 and parse_duration("7d") == 604800
    )
    assert (
        parse_bytes("1024") == 1024
        and parse_bytes("1KB") == 1000
        and parse_bytes("2GiB") == 2 << 30
    )
    with pytest.raises(ValueError):
        parse_duration("soon")
