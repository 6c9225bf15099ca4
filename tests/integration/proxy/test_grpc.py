"""The gRPC proxy listener against real gRPC backend processes on 127.0.0.1.

Clients are ordinary ``grpc.aio`` channels: generated stubs the project does
not own (health, reflection) and raw-bytes calls of every kind to the
backends' ``test.Echo`` service (see ``backends/grpc_backend.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from sidecar.errors import StartupError
from sidecar.proxy import Listener, Target, fixed_endpoint
from sidecar.proxy._grpc import GrpcListener
from tests.integration.proxy.conftest import Backend, policy, target
from tests.integration.raw_http import open_raw, trickling
from tests.util import assert_eventually

EOF = grpc.aio.EOF  # type: ignore[attr-defined]
Code = grpc.StatusCode
MIB = 1024 * 1024
_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * MIB),
    ("grpc.max_send_message_length", 64 * MIB),
]

StartBackend = Callable[..., Backend]


async def proxy(listeners: list[Listener], upstream: Target) -> GrpcListener:
    listener = GrpcListener("orders", "127.0.0.1:0", upstream, upstream.policy)
    await listener.start()
    listeners.append(listener)
    return listener


@contextlib.asynccontextmanager
async def dial(address: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(address, options=_OPTIONS) as channel:
        yield channel


def unary(channel: grpc.aio.Channel, method: str) -> Any:
    return channel.unary_unary(f"/test.Echo/{method}")


async def count(backend: Backend, what: bytes = b"") -> int:
    """A backend's own counter, asked directly (not through the proxy)."""
    async with dial(f"127.0.0.1:{backend.port}") as channel:
        return int(await unary(channel, "Count")(what, timeout=5))


def metadata(pairs: Any) -> dict[str, Any]:
    return {key: value for key, value in pairs or ()}


# -- what passes through ----------------------------------------------------------------------


async def test_health_check_and_watch(backends: StartBackend, listeners: list[Listener]) -> None:
    b1 = backends("grpc_backend.py", "--name", "b1")
    listener = await proxy(listeners, target("orders", "grpc", b1))
    async with dial(listener.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "b1"):
            response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        assert failed.value.code() is Code.NOT_FOUND
        watch = stub.Watch(health_pb2.HealthCheckRequest(service="b1"))
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
    await assert_eventually(lambda: _idle(listener))


async def test_reflection_bidi_stream_lists_services(
    backends: StartBackend, listeners: list[Listener]
) -> None:
    b1 = backends("grpc_backend.py", "--name", "b1")
    listener = await proxy(listeners, target("orders", "grpc", b1))
    async with dial(listener.address) as channel:
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(timeout=5)
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        response = await call.read()
        names = {s.name for s in response.list_services_response.service}
        assert {"test.Echo", "grpc.health.v1.Health"} <= names
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        assert (await call.read()).list_services_response.service
        await call.done_writing()
        assert await call.read() is EOF
        assert await call.code() is Code.OK


async def test_unary_metadata_and_trailers(
    backends: StartBackend, listeners: list[Listener]
) -> None:
    b1 = backends("grpc_backend.py", "--name", "b1")
    upstream = target("orders", "grpc", b1)
    listener = await proxy(listeners, upstream)
    binary = bytes(range(256))
    async with dial(listener.address) as channel:
        call = unary(channel, "Unary")(
            b"hello\x00world", metadata=(("x-echo-bin", binary), ("x-user", "u1")), timeout=5
        )
        assert await call == b"hello\x00world"
        assert metadata(await call.initial_metadata())["x-backend"] == "b1"
        trailing = metadata(await call.trailing_metadata())
        assert trailing["x-trailer"] == "b1"
        assert trailing["x-echo-bin"] == binary
    assert upstream.stats.responses["OK"] == 1
    assert upstream.stats.bytes_received == upstream.stats.bytes_sent == len(b"hello\x00world")


async def test_every_streaming_kind(backends: StartBackend, listeners: list[Listener]) -> None:
    b1 = backends("grpc_backend.py", "--name", "b1")
    listener = await proxy(listeners, target("orders", "grpc", b1))
    async with dial(listener.address) as channel:
        stream = channel.unary_stream("/test.Echo/ServerStream")(b"5", timeout=5)
        assert [m async for m in stream] == [f"b1:{i}".encode() for i in range(5)]

        upload = channel.stream_unary("/test.Echo/ClientStream")(
            iter([b"a", b"bc", b"", b"d"]), timeout=5
        )
        assert await upload == b"abcd"

        # Each message comes back before the next is sent: nothing waits for the half-close.
        bidi = channel.stream_stream("/test.Echo/Bidi")(timeout=5)
        for i in range(3):
            await bidi.write(f"m{i}".encode())
            assert await bidi.read() == f"m{i}".encode()
        await bidi.done_writing()
        assert await bidi.read() is EOF
        assert await bidi.code() is Code.OK
        assert metadata(await bidi.initial_metadata())["x-backend"] == "b1"


async def test_status_details_and_rich_errors(
    backends: StartBackend, listeners: list[Listener]
) -> None:
    b1 = backends("grpc_backend.py", "--name", "b1")
    upstream = target("orders", "grpc", b1, outlier={"consecutive_failures": 1})
    listener = await proxy(listeners, upstream)
    async with dial(listener.address) as channel:
        for name in ("NOT_FOUND", "INVALID_ARGUMENT", "PERMISSION_DENIED", "INTERNAL"):
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await unary(channel, "Fail")(name.encode(), timeout=5)
            error = failed.value
            assert error.code() is Code[name]
            assert error.details() == "failed by b1"
            assert metadata(error.trailing_metadata())["x-trailer"] == "b1"
            status = rpc_status.from_call(error)  # grpc-status-details-bin passed through
            assert status is not None
            info = error_details_pb2.ErrorInfo()
            assert status.details[0].Unpack(info)
            assert info.domain == "b1"
        # INTERNAL is not retried (only UNAVAILABLE is): one attempt.
        assert await count(b1) == 4
    stats = upstream.stats
    assert stats.responses == {
        "NOT_FOUND": 1,
        "INVALID_ARGUMENT": 1,
        "PERMISSION_DENIED": 1,
        "INTERNAL": 1,
    }
    # Application statuses are successes; INTERNAL is a server error.
    assert dict(stats.errors) == {"server_error": 1}
    assert stats.retries == 0


async def test_large_messages(backends: StartBackend, listeners: list[Listener]) -> None:
    b1 = backends("grpc_backend.py", "--name", "b1")
    upstream = target("orders", "grpc", b1)
    listener = await proxy(listeners, upstream)
    payload = os.urandom(8 * MIB)
    async with dial(listener.address) as channel:
        assert await unary(channel, "Unary")(payload, timeout=20) == payload
        upload = channel.stream_unary("/test.Echo/ClientStream")(
            iter([payload, payload]), timeout=20
        )
        assert await upload == payload + payload
    assert upstream.stats.bytes_received == 3 * len(payload)


# -- deadlines and cancellation ----------------------------------------------------------------


async def test_deadline_propagated(backends: StartBackend, listeners: list[Listener]) -> None:
    b1 = backends("grpc_backend.py", "--name", "b1")
    async with contextlib.AsyncExitStack() as stack:
        for overrides, client_timeout, low, high in (
            ({}, 1.0, 500, 1000),  # the client's deadline
            ({"timeout": 3.0}, None, 2500, 3000),  # none from the client: the policy's
            ({"per_try_timeout": 0.4}, 1.0, 200, 400),  # each attempt's
        ):
            listener = await proxy(listeners, target("orders", "grpc", b1, **overrides))
            channel = await stack.enter_async_context(dial(listener.address))
            call = unary(channel, "Sleep")(b"0", timeout=client_timeout)
            assert await call == b"b1"
            seen = int(metadata(await call.trailing_metadata())["x-deadline-ms"])
            # gRPC itself is a little generous: a direct call with a 1 s timeout
            # shows a backend up to ~1010 ms (header rounding, clock conversion).
            assert low < seen <= high * 1.05, (overrides, seen)


async def test_deadline_exceeded_reaches_the_client(
    backends: StartBackend, listeners: list[Listener]
) -> None:
    b1 = backends("grpc_backend.py", "--name", "b1")
    upstream = target("orders", "grpc", b1, timeout=0.3)
    listener = await proxy(listeners, upstream)
    async with dial(listener.address) as channel:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await unary(channel, "Sleep")(b"3000")
        assert failed.value.code() is Code.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 2.0
    assert upstream.stats.errors["timeout"] == 1
    await assert_eventually(lambda: _equal(count(b1, b"cancelled"), 1))


async def test_client_cancel_stops_the_backend_stream(
    backends: StartBackend, listeners: list[Listener]
) -> None:
    b1 = backends("grpc_backend.py", "--name", "b1")
    upstream = target("orders", "grpc", b1)
    listener = await proxy(listeners, upstream)
    async with dial(listener.address) as channel:
        stream = channel.unary_stream("/test.Echo/ServerStream")(b"1000:20")
        for i in range(3):
            assert await stream.read() == f"b1:{i}".encode()
        stream.cancel()
        await assert_eventually(lambda: _equal(count(b1, b"cancelled"), 1))
    sent = await count(b1, b"sent")
    await asyncio.sleep(0.2)
    assert await count(b1, b"sent") == sent < 50
    await assert_eventually(lambda: _idle(listener))
    assert upstream.stats.errors == {}  # a cancel says nothing about the endpoint


# -- retries, ejection, circuit breaking -------------------------------------------------------


async def test_connect_failure_retried_on_live_backend(
    backends: StartBackend, listeners: list[Listener]
) -> None:
    dead = backends("grpc_backend.py", "--name", "dead")
    live = backends("grpc_backend.py", "--name", "live")
    dead.kill()
    upstream = target("orders", "grpc", dead, live, outlier={"consecutive_failures": 0})
    listener = await proxy(listeners, upstream)
    async with dial(listener.address) as channel:
        started = time.monotonic()
        for _ in range(4):
            call = unary(channel, "Unary")(b"x", timeout=5)
            assert await call == b"x"
            assert metadata(await call.initial_metadata())["x-backend"] == "live"
            # A streamed request is replayed in full on the other endpoint.
            upload = channel.stream_unary("/test.Echo/ClientStream")(
                iter([b"a", b"b", b"c"]), timeout=5
            )
            assert await upload == b"abc"
        assert time.monotonic() - started < 3.0
    assert upstream.stats.errors["connect_failure"] >= 2
    assert upstream.stats.retries >= 2
    assert upstream.stats.responses == {"OK": 8}


async def test_backend_that_never_answers_is_a_connect_timeout(
    backends: StartBackend, listeners: list[Listener]
) -> None:
    live = backends("grpc_backend.py", "--name", "live")
    with socket.socket() as hung:  # accepts connections (the kernel does), never speaks
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        upstream = Target.fixed(
            "orders",
            policy("grpc", connect_timeout=0.5, outlier={"consecutive_failures": 0}),
            [hung.getsockname(), live.address],
        )
        listener = await proxy(listeners, upstream)
        async with dial(listener.address) as channel:
            started = time.monotonic()
            for _ in range(2):
                assert await unary(channel, "Unary")(b"x", timeout=5) == b"x"
            assert time.monotonic() - started < 5.0  # at most one connect timeout a call
    assert upstream.stats.errors["connect_failure"] >= 1
    assert upstream.stats.responses == {"OK": 2}


async def test_unavailable_retried_then_ejected(
    backends: StartBackend, listeners: list[Listener]
) -> None:
    failing = backends("grpc_backend.py", "--name", "failing", "--fail-with", "UNAVAILABLE")
    good = backends("grpc_backend.py", "--name", "good")
    upstream = target("orders", "grpc", failing, good, outlier={"consecutive_failures": 2})
    listener = await proxy(listeners, upstream)
    async with dial(listener.address) as channel:
        for _ in range(8):
            call = unary(channel, "Unary")(b"x", timeout=5)
            assert await call == b"x"
            assert metadata(await call.initial_metadata())["x-backend"] == "good"
    # Two failures in a row ejected it: it saw no more calls.
    assert await count(failing) == 2
    assert upstream.stats.ejections == 1
    assert upstream.status()["ejected"] == [f"127.0.0.1:{failing.port}"]
    assert upstream.stats.errors["server_error"] == 2
    assert upstream.stats.responses == {"OK": 8}


async def test_per_try_timeout_retried_on_another_backend(
    backends: StartBackend, listeners: list[Listener]
) -> None:
    slow = backends("grpc_backend.py", "--name", "slow", "--slow-ms", "3000")
    fast = backends("grpc_backend.py", "--name", "fast")
    upstream = target(
        "orders", "grpc", slow, fast, per_try_timeout=0.3, outlier={"consecutive_failures": 0}
    )
    listener = await proxy(listeners, upstream)
    async with dial(listener.address) as channel:
        started = time.monotonic()
        for _ in range(2):
            call = unary(channel, "Unary")(b"x", timeout=5)
            assert await call == b"x"
            assert metadata(await call.initial_metadata())["x-backend"] == "fast"
        assert time.monotonic() - started < 3.0  # at most one try's timeout a call
    assert upstream.stats.errors["timeout"] >= 1
    assert upstream.stats.responses == {"OK": 2}


async def test_stream_broken_after_responses_is_not_retried(
    backends: StartBackend, listeners: list[Listener]
) -> None:
    b1 = backends("grpc_backend.py", "--name", "b1")
    b2 = backends("grpc_backend.py", "--name", "b2")
    upstream = target("orders", "grpc", b1, b2)
    listener = await proxy(listeners, upstream)
    async with dial(listener.address) as channel:
        stream = channel.unary_stream("/test.Echo/ServerStream")(b"1000:20", timeout=10)
        first = await stream.read()
        victim = b1 if first.startswith(b"b1:") else b2
        victim.kill()
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            while await stream.read() is not EOF:
                pass
        assert failed.value.code() is Code.UNAVAILABLE
    assert upstream.stats.errors["reset"] == 1
    assert upstream.stats.retries == 0


async def test_circuit_overflow_fails_fast(
    backends: StartBackend, listeners: list[Listener]
) -> None:
    b1 = backends("grpc_backend.py", "--name", "b1")
    upstream = target("orders", "grpc", b1, circuit_breaker={"max_requests": 1})
    listener = await proxy(listeners, upstream)
    async with dial(listener.address) as channel:
        slow = unary(channel, "Sleep")(b"1500", timeout=5)
        await assert_eventually(lambda: _equal(upstream.requests, 1))
        # Connected: in flight, no longer pending.
        await assert_eventually(lambda: _equal(upstream.pending, 0))
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await unary(channel, "Unary")(b"x", timeout=5)
        assert time.monotonic() - started < 1.0
        assert failed.value.code() is Code.UNAVAILABLE
        assert failed.value.details() == "upstream orders: circuit open (max_requests 1)"
        assert await slow == b"b1"
        assert await unary(channel, "Unary")(b"y", timeout=5) == b"y"
    assert upstream.stats.errors["circuit_open"] == 1
    assert upstream.stats.responses == {"OK": 2, "UNAVAILABLE": 1}


async def test_one_connection_per_endpoint_within_max_connections(
    backends: StartBackend, listeners: list[Listener]
) -> None:
    b1 = backends("grpc_backend.py", "--name", "b1")
    b2 = backends("grpc_backend.py", "--name", "b2")
    upstream = target("orders", "grpc", b1, b2, circuit_breaker={"max_connections": 1})
    listener = await proxy(listeners, upstream)
    async with dial(listener.address) as channel:
        codes = []
        for _ in range(4):  # round robin: b1, b2, b1, b2
            try:
                await unary(channel, "Unary")(b"x", timeout=5)
                codes.append("OK")
            except grpc.aio.AioRpcError as error:
                assert error.details() == "upstream orders: circuit open (max_connections 1)"
                codes.append(error.code().name)
    assert codes == ["OK", "UNAVAILABLE", "OK", "UNAVAILABLE"]
    assert upstream.connections == 1


async def test_calls_waiting_for_a_connection_overflow_max_pending(
    listeners: list[Listener],
) -> None:
    with socket.socket() as hung:  # the connection never becomes usable
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        upstream = Target.fixed(
            "orders",
            policy("grpc", connect_timeout=1.5, circuit_breaker={"max_pending": 1}),
            [hung.getsockname()],
        )
        listener = await proxy(listeners, upstream)
        async with dial(listener.address) as channel:
            waiting = asyncio.ensure_future(unary(channel, "Unary")(b"x", timeout=5))
            await assert_eventually(lambda: _equal(upstream.pending, 1))
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await unary(channel, "Unary")(b"y", timeout=5)
            assert time.monotonic() - started < 1.0
            assert failed.value.details() == "upstream orders: circuit open (max_pending 1)"
            with pytest.raises(grpc.aio.AioRpcError) as timed_out:
                await waiting
            assert timed_out.value.code() is Code.UNAVAILABLE
            assert "failed to connect" in (timed_out.value.details() or "")
    assert upstream.pending == 0
    assert upstream.stats.errors["circuit_open"] == 1


async def test_no_endpoints(listeners: list[Listener]) -> None:
    upstream = Target.fixed("orders", policy("grpc"), [])
    listener = await proxy(listeners, upstream)
    async with dial(listener.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await unary(channel, "Unary")(b"x", timeout=5)
    assert failed.value.code() is Code.UNAVAILABLE
    assert failed.value.details() == "no endpoints of upstream orders"
    assert upstream.stats.errors["no_endpoints"] == 1


# -- endpoint changes, drain, startup ------------------------------------------------------------


async def test_endpoint_removed_while_stream_in_flight(
    backends: StartBackend, listeners: list[Listener]
) -> None:
    b1 = backends("grpc_backend.py", "--name", "b1")
    b2 = backends("grpc_backend.py", "--name", "b2")
    upstream = target("orders", "grpc", b1)
    listener = await proxy(listeners, upstream)
    async with dial(listener.address) as channel:
        bidi = channel.stream_stream("/test.Echo/Bidi")(timeout=10)
        await bidi.write(b"before")
        assert await bidi.read() == b"before"
        assert upstream.connections == 1

        upstream.update([fixed_endpoint(*b2.address)])  # b1 goes away
        call = unary(channel, "Unary")(b"x", timeout=5)
        assert await call == b"x"
        assert metadata(await call.initial_metadata())["x-backend"] == "b2"

        # The stream to b1 goes on until it ends by itself.
        for message in (b"after-1", b"after-2"):
            await bidi.write(message)
            assert await bidi.read() == message
        assert metadata(await bidi.initial_metadata())["x-backend"] == "b1"
        await bidi.done_writing()
        assert await bidi.read() is EOF
        assert await bidi.code() is Code.OK
    # Then b1's channel closes.
    await assert_eventually(lambda: _equal(upstream.connections, 1))


async def test_drain_finishes_in_flight_calls_and_refuses_new(
    backends: StartBackend, listeners: list[Listener]
) -> None:
    b1 = backends("grpc_backend.py", "--name", "b1")
    upstream = target("orders", "grpc", b1)
    listener = await proxy(listeners, upstream)
    async with dial(listener.address) as channel:
        in_flight = unary(channel, "Sleep")(b"600", timeout=5)
        await assert_eventually(lambda: _equal(upstream.requests, 1))
        drain = asyncio.create_task(listener.drain(5.0))
        await asyncio.sleep(0.2)
        async with dial(listener.address) as fresh:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await unary(fresh, "Unary")(b"x", timeout=2)
        assert refused.value.code() is Code.UNAVAILABLE
        assert await in_flight == b"b1"
        await drain
    await listener.drain(5.0)  # idempotent
    assert upstream.connections == 0
    assert upstream.stats.responses == {"OK": 1}


async def test_drain_grace_over_cancels_calls(
    backends: StartBackend, listeners: list[Listener]
) -> None:
    b1 = backends("grpc_backend.py", "--name", "b1")
    upstream = target("orders", "grpc", b1)
    listener = await proxy(listeners, upstream)
    async with dial(listener.address) as channel:
        stuck = unary(channel, "Sleep")(b"10000", timeout=20)
        await assert_eventually(lambda: _equal(upstream.requests, 1))
        started = time.monotonic()
        await listener.drain(0.2)
        assert time.monotonic() - started < 2.0
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stuck
        assert failed.value.code() in (Code.CANCELLED, Code.UNAVAILABLE)
    await assert_eventually(lambda: _equal(count(b1, b"cancelled"), 1))
    assert upstream.connections == upstream.requests == 0


async def test_past_max_connections_a_new_connection_is_closed_while_open_ones_work(
    backends: StartBackend, listeners: list[Listener]
) -> None:
    b1 = backends("grpc_backend.py", "--name", "b1")
    listener = await proxy(listeners, target("orders", "grpc", b1, max_connections=1))
    async with dial(listener.address) as channel:
        assert await unary(channel, "Unary")(b"x", timeout=5) == b"x"
        over = await open_raw(listener.address)
        received = await over.until_closed(timeout=10)
        over.close()
        assert received == b""  # closed as it was accepted, before the server's settings
        assert await unary(channel, "Unary")(b"y", timeout=5) == b"y"
        assert listener.status()["connections"]["max"] == 1

    # The one connection gone (once the runtime has seen it close), another client gets in.
    async def answers() -> None:
        async with dial(listener.address) as other:
            try:
                assert await unary(other, "Unary")(b"z", timeout=1) == b"z"
            except grpc.aio.AioRpcError as error:
                raise AssertionError(error.details()) from error

    await assert_eventually(answers, timeout=10)


async def test_a_client_slower_than_head_timeout_with_its_preface_is_closed(
    backends: StartBackend, listeners: list[Listener]
) -> None:
    b1 = backends("grpc_backend.py", "--name", "b1")
    listener = await proxy(listeners, target("orders", "grpc", b1, head_timeout=1.0))
    slow = await open_raw(listener.address)
    started = time.monotonic()
    async with trickling(slow.writer, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"):
        await slow.until_closed(timeout=10)
    after = time.monotonic() - started
    slow.close()
    assert after < 5.0  # the head timeout (1 s); the runtime's own default is 120 s
    async with dial(listener.address) as channel:
        assert await unary(channel, "Unary")(b"x", timeout=5) == b"x"


async def test_cannot_listen_on_a_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listener = GrpcListener(
            "orders",
            f"127.0.0.1:{port}",
            Target.fixed("orders", policy("grpc"), []),
            policy("grpc"),
        )
        with pytest.raises(StartupError, match=rf"orders: cannot listen on 127\.0\.0\.1:{port}"):
            await listener.start()
        await listener.drain(0.0)


# -- helpers --------------------------------------------------------------------------------------


async def _equal(value: Any, expected: Any) -> None:
    if asyncio.iscoroutine(value):
        value = await value
    assert value == expected


def _idle(listener: GrpcListener) -> None:
    assert listener.target.requests == 0
