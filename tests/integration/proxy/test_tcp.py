"""The TCP listener against real backend processes on 127.0.0.1.

Clients are plain asyncio streams in the test's loop; the backends
(``backends/tcp_backend.py``) are separate processes that echo, hang, reset
or stream, and are killed and restarted to make endpoints fail.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import os
import socket
import time
from collections.abc import Callable, Iterator

import pytest
import uvloop

from sidecar.errors import StartupError
from sidecar.proxy import Listener, Target, fixed_endpoint
from sidecar.proxy._tcp import HIGH_WATER, TcpListener
from tests.integration.proxy.backends.tcp_backend import MIB, pattern
from tests.integration.proxy.conftest import Backend, policy, target
from tests.util import assert_eventually, assert_stays

Backends = Callable[..., Backend]
Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def start_listener(listeners: list[Listener], tgt: Target) -> TcpListener:
    listener = TcpListener(tgt.name, "127.0.0.1:0", tgt, tgt.policy)
    await listener.start()
    listeners.append(listener)
    return listener


def port_of(listener: TcpListener) -> int:
    return int(listener.address.rsplit(":", 1)[1])


async def connect(listener: TcpListener, source: str | None = None) -> Stream:
    """A connection to ``listener`` (from the loopback address ``source`` if given)."""
    local = None if source is None else (source, 0)
    return await asyncio.open_connection("127.0.0.1", port_of(listener), local_addr=local)


async def close(stream: Stream) -> None:
    stream[1].close()
    with contextlib.suppress(ConnectionError):
        await stream[1].wait_closed()


async def echoes(stream: Stream, data: bytes = b"ping") -> None:
    reader, writer = stream
    writer.write(data)
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(len(data)), 5) == data


async def closed_by_proxy(stream: Stream, within: float = 2.0) -> str:
    """Waits until the proxy closes the connection: ``"reset"`` or ``"eof"``."""
    try:
        rest = await asyncio.wait_for(stream[0].read(), within)
    except ConnectionResetError:
        return "reset"
    assert rest == b"", rest[:80]
    return "eof"


async def hello(stream: Stream) -> str:
    """Which backend answered (``--hello`` mode)."""
    return (await asyncio.wait_for(stream[0].readline(), 5)).decode().strip()


def equal(a: object, b: object) -> None:
    """For ``assert_eventually(lambda: equal(...))``."""
    assert a == b


def dead_backend(backends: Backends) -> Backend:
    """A port nothing listens on any more: connects are refused."""
    backend = backends("tcp_backend.py", "--mode", "echo")
    backend.stop()
    return backend


@pytest.fixture
def blackhole() -> Iterator[tuple[str, int]]:
    """An address whose connects hang: a listening socket with a full accept queue."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    filler = socket.create_connection(server.getsockname())
    try:
        yield server.getsockname()
    finally:
        filler.close()
        server.close()


# -- forwarding ------------------------------------------------------------------------------


async def test_echo_small(backends: Backends, listeners: list[Listener]) -> None:
    backend = backends("tcp_backend.py", "--mode", "echo")
    tgt = target("orders", "tcp", backend)
    listener = await start_listener(listeners, tgt)
    stream = await connect(listener)
    await echoes(stream, b"hello")
    await echoes(stream, b"again")
    await close(stream)

    def finished() -> None:
        assert tgt.stats.requests == 1
        assert tgt.stats.responses["closed"] == 1
        assert tgt.stats.active == 0
        assert tgt.connections == 0

    await assert_eventually(finished)
    assert tgt.stats.bytes_received == tgt.stats.bytes_sent == 10
    assert tgt.stats.latency.count == 1


async def roundtrip(listener: TcpListener, payload: bytes) -> bytes:
    """Sends ``payload`` then EOF, reads until EOF; returns what came back."""
    reader, writer = await connect(listener)

    async def send() -> None:
        for i in range(0, len(payload), MIB):
            writer.write(payload[i : i + MIB])
            await writer.drain()
        writer.write_eof()

    _, received = await asyncio.gather(send(), reader.read())
    await close((reader, writer))
    return received


async def test_large_echo_from_several_clients(
    backends: Backends, listeners: list[Listener]
) -> None:
    backend = backends("tcp_backend.py", "--mode", "echo")
    tgt = target("orders", "tcp", backend)
    listener = await start_listener(listeners, tgt)
    payloads = [os.urandom(20 * MIB) for _ in range(3)]

    results = await asyncio.gather(*(roundtrip(listener, p) for p in payloads))

    for sent, received in zip(payloads, results, strict=True):
        assert len(received) == len(sent)
        assert hashlib.sha256(received).digest() == hashlib.sha256(sent).digest()
    await assert_eventually(lambda: equal(tgt.stats.responses["closed"], 3))
    assert tgt.stats.bytes_received == tgt.stats.bytes_sent == 60 * MIB


async def test_half_close_still_receives_the_whole_echo(
    backends: Backends, listeners: list[Listener]
) -> None:
    backend = backends("tcp_backend.py", "--mode", "echo")
    listener = await start_listener(listeners, target("orders", "tcp", backend))
    payload = os.urandom(3 * MIB)
    sock = socket.socket()
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port_of(listener)))
        await loop.sock_sendall(sock, payload)
        sock.shutdown(socket.SHUT_WR)  # the client is done sending, not done reading
        received = bytearray()
        while chunk := await asyncio.wait_for(loop.sock_recv(sock, 65536), 5):
            received += chunk
    finally:
        sock.close()
    assert bytes(received) == payload


async def test_slow_reader_backpressure_keeps_buffers_bounded(
    backends: Backends, listeners: list[Listener]
) -> None:
    backend = backends("tcp_backend.py", "--mode", "big", "--size", "50")
    tgt = target("orders", "tcp", backend)
    listener = await start_listener(listeners, tgt)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # no autotuning
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port_of(listener)))
    reader, writer = await asyncio.open_connection(sock=sock)

    # The client reads nothing: what the proxy pulls from the backend stops
    # growing once the socket buffers are full.
    def bounded() -> None:
        assert tgt.stats.bytes_sent < 8 * MIB  # the socket buffers, at most
        buffered = listener.status()["buffered_bytes"]
        assert buffered <= HIGH_WATER + 512 * 1024, buffered

    await assert_stays(bounded, duration=1.0)

    received = await asyncio.wait_for(reader.read(), 20)
    await close((reader, writer))
    assert len(received) == 50 * MIB
    expected = hashlib.sha256(pattern() * 50).digest()
    assert hashlib.sha256(received).digest() == expected


async def test_upstream_reset_resets_the_client(
    backends: Backends, listeners: list[Listener]
) -> None:
    backend = backends("tcp_backend.py", "--mode", "reset")
    tgt = target("orders", "tcp", backend)
    listener = await start_listener(listeners, tgt)
    stream = await connect(listener)
    stream[1].write(b"hi")
    assert await closed_by_proxy(stream) == "reset"
    await close(stream)

    def counted() -> None:
        assert tgt.stats.responses["reset"] == 1
        assert tgt.stats.errors["reset"] == 1

    await assert_eventually(counted)


# -- failures, retries, timeouts ---------------------------------------------------------------


async def test_connect_failure_is_retried_on_another_endpoint(
    backends: Backends, listeners: list[Listener]
) -> None:
    dead = dead_backend(backends)
    live = backends("tcp_backend.py", "--mode", "echo")
    tgt = target("orders", "tcp", dead, live, outlier={"consecutive_failures": 0})
    listener = await start_listener(listeners, tgt)
    for _ in range(4):
        stream = await connect(listener)
        await echoes(stream)
        await close(stream)
    assert tgt.stats.errors["connect_failure"] >= 2
    assert tgt.stats.retries == tgt.stats.errors["connect_failure"]


async def test_all_endpoints_dead_closes_the_client_promptly(
    backends: Backends, listeners: list[Listener]
) -> None:
    tgt = target("orders", "tcp", dead_backend(backends), dead_backend(backends))
    listener = await start_listener(listeners, tgt)
    started = time.monotonic()
    stream = await connect(listener)
    assert await closed_by_proxy(stream) == "reset"
    assert time.monotonic() - started < 1.0
    await close(stream)
    assert tgt.stats.errors["connect_failure"] == 3  # one try and two retries

    def counted() -> None:
        assert tgt.stats.responses["unavailable"] == 1
        assert tgt.stats.active == 0
        assert tgt.pending == 0
        assert tgt.connections == 0

    await assert_eventually(counted)


async def test_connect_timeout_then_retry(
    backends: Backends, listeners: list[Listener], blackhole: tuple[str, int]
) -> None:
    live = backends("tcp_backend.py", "--mode", "echo")
    tgt = Target.fixed(
        "orders",
        policy("tcp", connect_timeout=0.3, outlier={"consecutive_failures": 0}),
        [blackhole, live.address],
    )
    listener = await start_listener(listeners, tgt)
    for _ in range(2):
        stream = await connect(listener)
        await echoes(stream)
        await close(stream)
    assert tgt.stats.errors["timeout"] >= 1


async def test_connect_timeout_without_retries_closes_the_client(
    listeners: list[Listener], blackhole: tuple[str, int]
) -> None:
    tgt = Target.fixed("orders", policy("tcp", connect_timeout=0.3, retries=0), [blackhole])
    listener = await start_listener(listeners, tgt)
    started = time.monotonic()
    stream = await connect(listener)
    assert await closed_by_proxy(stream) == "reset"
    assert 0.25 <= time.monotonic() - started < 1.5
    await close(stream)
    assert tgt.stats.errors["timeout"] == 1


async def test_idle_connection_is_closed(backends: Backends, listeners: list[Listener]) -> None:
    echo = backends("tcp_backend.py", "--mode", "echo")
    hang = backends("tcp_backend.py", "--mode", "hang")
    echo_target = target("echo", "tcp", echo, idle_timeout=0.5)
    hang_target = target("hang", "tcp", hang, idle_timeout=0.5)
    busy = await connect(await start_listener(listeners, echo_target))
    # A backend that never answers a request: nothing moves after it.
    idle = await connect(await start_listener(listeners, hang_target))
    idle[1].write(b"GET / HTTP/1.0\r\n\r\n")
    await echoes(busy)
    started = time.monotonic()

    async def keep_busy() -> None:
        while time.monotonic() - started < 1.2:
            await echoes(busy)
            await asyncio.sleep(0.1)

    closed, _ = await asyncio.gather(closed_by_proxy(idle, within=3), keep_busy())
    assert closed == "eof"
    assert time.monotonic() - started >= 0.45
    await echoes(busy)  # still open after 1.2 s of small exchanges
    await close(idle)
    await close(busy)
    await assert_eventually(lambda: equal(hang_target.stats.responses["idle_timeout"], 1))
    assert echo_target.stats.responses["idle_timeout"] == 0


# -- resilience --------------------------------------------------------------------------------


async def test_killed_endpoint_is_ejected_then_recovers(
    backends: Backends, listeners: list[Listener]
) -> None:
    a = backends("tcp_backend.py", "--mode", "echo", "--hello", "a")
    b = backends("tcp_backend.py", "--mode", "echo", "--hello", "b")
    tgt = target(
        "orders",
        "tcp",
        a,
        b,
        outlier={"consecutive_failures": 2, "base_ejection": 1.0, "max_ejection": 5.0},
    )
    listener = await start_listener(listeners, tgt)

    async def who() -> str:
        stream = await connect(listener)
        name = await hello(stream)
        await close(stream)
        return name

    a.kill()
    seen = [await who() for _ in range(6)]
    assert seen == ["b"] * 6  # connect failures on a were retried on b
    assert tgt.stats.ejections == 1
    assert tgt.balancer.ejected == {f"127.0.0.1:{a.port}"}
    failures = tgt.stats.errors["connect_failure"]
    assert failures == 2
    seen = [await who() for _ in range(4)]
    assert seen == ["b"] * 4
    assert tgt.stats.errors["connect_failure"] == failures  # a is no longer tried

    a.restart()
    await assert_eventually(lambda: equal(tgt.balancer.ejected, frozenset()), timeout=3)
    seen = [await who() for _ in range(4)]
    assert "a" in seen
    assert tgt.stats.errors["connect_failure"] == failures


async def two_admitted_and_a_third_reset(listener: TcpListener) -> tuple[Stream, Stream]:
    """Opens two connections, which echo, and a third, which ``listener`` (admitting two
    at most) must reset; returns the two."""
    first, second = await connect(listener), await connect(listener)
    await echoes(first)
    await echoes(second)
    third = await connect(listener)
    assert await closed_by_proxy(third, within=1) == "reset"
    await close(third)
    return first, second


async def test_circuit_overflow_closes_the_extra_connection(
    backends: Backends, listeners: list[Listener]
) -> None:
    backend = backends("tcp_backend.py", "--mode", "echo")
    tgt = target("orders", "tcp", backend, circuit_breaker={"max_requests": 2})
    listener = await start_listener(listeners, tgt)
    first, second = await two_admitted_and_a_third_reset(listener)
    assert tgt.stats.errors["circuit_open"] == 1
    await echoes(first)  # the admitted ones are unaffected

    await close(first)
    await assert_eventually(lambda: equal(tgt.stats.active, 1))
    fourth = await connect(listener)
    await echoes(fourth)
    await close(fourth)
    await close(second)
    assert tgt.stats.errors["circuit_open"] == 1


async def test_past_max_connections_a_new_connection_is_reset_while_open_ones_work(
    backends: Backends, listeners: list[Listener]
) -> None:
    backend = backends("tcp_backend.py", "--mode", "echo")
    tgt = target("orders", "tcp", backend, max_connections=2)
    listener = await start_listener(listeners, tgt)
    first, second = await two_admitted_and_a_third_reset(listener)
    await echoes(first)  # the admitted ones are unaffected
    await echoes(second)
    assert listener.status()["connections"] == {
        "open": 2,
        "max": 2,
        "max_per_ip": 1000,
        "refused": 1,
    }
    assert tgt.stats.errors["connection_limit"] == 1
    assert tgt.stats.requests == 0  # the refused one never reached the target

    await close(first)
    await assert_eventually(lambda: equal(listener.gate.count, 1))
    fourth = await connect(listener)
    await echoes(fourth)
    await close(fourth)
    await close(second)
    await assert_eventually(lambda: equal(listener.gate.count, 0))


async def test_max_connections_per_ip_resets_one_address_not_another(
    backends: Backends, listeners: list[Listener]
) -> None:
    backend = backends("tcp_backend.py", "--mode", "echo")
    tgt = target("orders", "tcp", backend, max_connections_per_ip=1)
    listener = await start_listener(listeners, tgt)
    first = await connect(listener, "127.0.0.1")
    await echoes(first)
    again = await connect(listener, "127.0.0.1")
    assert await closed_by_proxy(again, within=1) == "reset"
    await close(again)
    other = await connect(listener, "127.0.0.2")
    await echoes(other)
    for stream in (first, other):
        await close(stream)


async def test_removed_endpoint_keeps_its_connection_but_gets_no_new_ones(
    backends: Backends, listeners: list[Listener]
) -> None:
    a = backends("tcp_backend.py", "--mode", "echo", "--hello", "a")
    b = backends("tcp_backend.py", "--mode", "echo", "--hello", "b")
    tgt = target("orders", "tcp", a, b)
    listener = await start_listener(listeners, tgt)
    kept = await connect(listener)
    name = await hello(kept)
    other = b if name == "a" else a

    tgt.update([fixed_endpoint(*other.address)])

    await echoes(kept, b"still here")
    fresh = [await connect(listener) for _ in range(4)]
    assert [await hello(s) for s in fresh] == [("b" if name == "a" else "a")] * 4
    await echoes(kept, os.urandom(MIB))
    for stream in [kept, *fresh]:
        await close(stream)
    await assert_eventually(lambda: equal(tgt.stats.responses["closed"], 5))
    assert tgt.connections == 0


async def test_drain_refuses_new_connections_and_closes_leftovers_after_grace(
    backends: Backends, listeners: list[Listener]
) -> None:
    backend = backends("tcp_backend.py", "--mode", "echo")
    tgt = target("orders", "tcp", backend)
    listener = await start_listener(listeners, tgt)
    finishing, leftover = await connect(listener), await connect(listener)
    await echoes(finishing)
    await echoes(leftover)

    started = time.monotonic()
    drain = asyncio.create_task(listener.drain(1.0))
    await asyncio.sleep(0.05)
    with pytest.raises(ConnectionRefusedError):
        await connect(listener)

    # In the grace period an open connection still works and can finish.
    await echoes(finishing, b"last words")
    finishing[1].write_eof()
    assert await closed_by_proxy(finishing) == "eof"
    await close(finishing)
    assert not drain.done()

    assert await closed_by_proxy(leftover, within=3) == "eof"
    await drain
    assert 0.9 <= time.monotonic() - started < 5.0  # the 1 s grace, then at once
    await close(leftover)
    assert tgt.stats.responses["closed"] == 2
    assert tgt.stats.active == 0
    await listener.drain(1.0)  # idempotent
    with pytest.raises(RuntimeError):
        await listener.start()


async def test_busy_port_is_a_startup_error(listeners: list[Listener]) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        tgt = Target.fixed("orders", policy("tcp"), [("127.0.0.1", 1)])
        listener = TcpListener("orders", f"127.0.0.1:{port}", tgt, tgt.policy)
        with pytest.raises(StartupError, match=f"orders: cannot listen on 127.0.0.1:{port}"):
            await listener.start()
    finally:
        taken.close()


# -- uvloop --------------------------------------------------------------------------------------


def test_forwarding_on_uvloop(backends: Backends) -> None:
    """The production loop: echo with a half-close, a backpressured stream, resets."""
    echo = backends("tcp_backend.py", "--mode", "echo")
    big = backends("tcp_backend.py", "--mode", "big", "--size", "20")
    dead = dead_backend(backends)

    async def scenario() -> None:
        echo_target = target("echo", "tcp", echo)
        big_target = target("big", "tcp", big)
        dead_target = target("dead", "tcp", dead, retries=0)
        listeners: list[Listener] = []
        try:
            async with asyncio.timeout(30):
                echo_listener = await start_listener(listeners, echo_target)
                big_listener = await start_listener(listeners, big_target)
                payload = os.urandom(5 * MIB)
                assert await roundtrip(echo_listener, payload) == payload

                reader, writer = await connect(big_listener)

                def held_back() -> None:  # not reading: the proxy must hold back
                    assert big_listener.status()["buffered_bytes"] <= HIGH_WATER + 512 * 1024

                await assert_stays(held_back, duration=0.5)
                received = await asyncio.wait_for(reader.read(), 20)
                await close((reader, writer))
                assert received == pattern() * 20

                # Failing to forward resets the client.
                dead_listener = await start_listener(listeners, dead_target)
                assert await closed_by_proxy(await connect(dead_listener)) == "reset"
                assert dead_target.stats.errors["connect_failure"] == 1

                # So does a connection past max_connections.
                capped = await start_listener(
                    listeners, target("capped", "tcp", echo, max_connections=1)
                )
                held = await connect(capped)
                await echoes(held)
                assert await closed_by_proxy(await connect(capped)) == "reset"
                await echoes(held)
                await close(held)
        finally:
            for listener in listeners:
                await listener.drain(0.0)
        assert echo_target.stats.responses["closed"] == 1
        assert big_target.stats.responses["closed"] == 1

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(uvloop.run, scenario()).result(timeout=40)
