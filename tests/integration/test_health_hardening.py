"""Health checks against hostile or careless servers on 127.0.0.1: outputs keep no
credentials, stay within the control plane's limits, and a probe never reads without end."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from aiohttp import web

from sdk import HealthStatus
from sidecar.health import HealthEngine, NetworkHealthChecker, parse_check
from tests.integration.test_health_checks import BOTH_CLIENTS, eventually_status
from tests.util import assert_eventually

P, C = HealthStatus.PASSING, HealthStatus.CRITICAL

FAST: dict[str, Any] = {"interval": "100ms", "timeout": "100ms", "jitter": 0}
SECRETS = ("s3cret", "tok3n", "alice")


@pytest.fixture
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[HealthEngine]:
    client = getattr(request, "param", "lean")
    checker = NetworkHealthChecker(lean_http=client == "lean")
    try:
        async with HealthEngine(checker) as eng:
            yield eng
    finally:
        await checker.close()


@contextlib.asynccontextmanager
async def http_app(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def raw_server(
    answer: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> Any:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await answer(reader, writer)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


# -- no credentials in names and outputs ---------------------------------------------------


@BOTH_CLIENTS
async def test_http_outputs_carry_no_userinfo_or_query(engine: HealthEngine) -> None:
    seen: list[tuple[str, str]] = []
    status = 200

    async def handle(request: web.Request) -> web.Response:
        seen.append((request.query_string, request.headers.get("Authorization", "")))
        return web.Response(status=status, text="fine")

    async with http_app(handle) as port:
        url = f"http://alice:s3cret@127.0.0.1:{port}/health?token=tok3n"
        config = parse_check({"http": url, **FAST})
        assert config.name == f"http http://127.0.0.1:{port}/health"
        check = engine.add("web-1", config)
        passing = await eventually_status(engine, check, P)
        status = 503
        failing = await eventually_status(engine, check, C)
    # The probe itself still sends them...
    assert seen[0][0] == "token=tok3n" and seen[0][1].startswith("Basic ")
    # ...but what is reported does not show them.
    for output in (passing, failing):
        assert f"http://127.0.0.1:{port}/health" in output, output
        assert not any(secret in output for secret in SECRETS), output


@BOTH_CLIENTS
async def test_http_errors_carry_no_userinfo_or_query(engine: HealthEngine) -> None:
    with socket_bound_and_closed() as port:
        url = f"http://alice:s3cret@127.0.0.1:{port}/health?token=tok3n"
        check = engine.add("web-1", parse_check({"http": url, **FAST}))
        output = await eventually_status(engine, check, C)
    assert not any(secret in output for secret in SECRETS), output


@contextlib.contextmanager
def socket_bound_and_closed() -> Any:
    """A port on 127.0.0.1 that refuses connections (bound, not listening)."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


# -- bounded outputs ------------------------------------------------------------------------


async def test_a_huge_reason_phrase_is_cut_to_the_output_limit(engine: HealthEngine) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_head(reader)
            writer.write(b"HTTP/1.1 503 " + b"R" * 60_000 + b"\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()

    async with raw_server(answer) as port:
        check = engine.add("web-1", parse_check({"http": f"http://127.0.0.1:{port}/", **FAST}))
        output = await eventually_status(engine, check, C)
    assert len(output) <= 4096 and output.endswith("…"), len(output)
    (status,) = [c.output for c in (d.to_check_status() for d in engine.checks("web-1"))]
    assert len(status) <= 4096


async def test_exec_output_with_its_exit_status_fits_the_limit(engine: HealthEngine) -> None:
    check = engine.add(
        "job-1",
        parse_check(
            {
                "exec": ["sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x; exit 1"],
                **FAST,
                "timeout": "2s",
                "interval": "2s",
            }
        ),
    )
    output = await assert_eventually(lambda: _output_when_checked(engine, check), timeout=10.0)
    assert output.startswith("exit status 1: xxx"), output[:40]
    assert len(output) <= 4096, len(output)


def _output_when_checked(engine: HealthEngine, check_id: str) -> str:
    detail = engine.check(check_id)
    assert detail.checked_at is not None
    return detail.output


# -- bounded reading -------------------------------------------------------------------------


@BOTH_CLIENTS
@pytest.mark.parametrize("framing", ["length", "close", "chunked"])
async def test_an_endless_body_is_judged_on_its_first_64_kib(
    engine: HealthEngine, framing: str
) -> None:
    """A server streaming a body without end: the probe reads the first 64 KiB, judges
    them, and drops the connection, instead of reading until its timeout."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        head = {
            "length": b"Content-Length: 100000000000\r\n",
            "close": b"Connection: close\r\n",
            "chunked": b"Transfer-Encoding: chunked\r\n",
        }[framing]
        writer.write(b"HTTP/1.1 200 OK\r\n" + head + b"\r\n")
        piece = b"status: up " * 1000
        if framing == "chunked":
            piece = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        while True:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0)

    async with raw_server(answer) as port:
        check = engine.add(
            "web-1",
            parse_check(
                {
                    "http": f"http://127.0.0.1:{port}/",
                    "body_contains": "status: up",
                    "interval": "10s",
                    "timeout": "10s",
                    "jitter": 0,
                }
            ),
        )
        started = time.monotonic()
        output = await eventually_status(engine, check, P)
        assert time.monotonic() - started < 5, "the probe read until its timeout"
    assert len(output) <= 4096


async def test_a_grpc_health_answer_over_64_kib_is_critical(engine: HealthEngine) -> None:
    # SERVING, then an unknown field of 1 MiB that a stock client would read whole.
    padding = b"\x12" + _varint(1024 * 1024) + b"p" * (1024 * 1024)
    big_answer = b"\x08\x01" + padding

    async def check_method(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return big_answer

    handler = grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health",
        {
            "Check": grpc.unary_unary_rpc_method_handler(
                check_method,
                request_deserializer=lambda b: b,
                response_serializer=lambda b: b,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        check = engine.add(
            "api-1",
            parse_check({"grpc": f"127.0.0.1:{port}", "interval": "1s", "timeout": "1s"}),
        )
        output = await eventually_status(engine, check, C)
    finally:
        await server.stop(grace=None)
    assert "RESOURCE_EXHAUSTED" in output, output
    assert len(output) <= 4096


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
