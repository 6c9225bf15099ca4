"""Health checks against real servers on 127.0.0.1: HTTP, TCP, gRPC, exec and TTL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from sdk import HealthStatus
from sidecar.health import HealthEngine, HealthTransition, NetworkHealthChecker, parse_check
from tests.harness.ports import free_port
from tests.util import assert_eventually

P, W, C = HealthStatus.PASSING, HealthStatus.WARNING, HealthStatus.CRITICAL

FAST: dict[str, Any] = {"interval": "100ms", "timeout": "100ms", "jitter": 0}


class Recorder:
    """Collects transitions; ``at_change`` runs inside the engine as each one happens."""

    def __init__(self) -> None:
        self.transitions: list[HealthTransition] = []
        self.snapshots: list[Any] = []
        self.at_change: Any = None

    def __call__(self, transition: HealthTransition) -> None:
        self.transitions.append(transition)
        if self.at_change is not None:
            self.snapshots.append(self.at_change())

    def changes(self) -> list[tuple[HealthStatus, HealthStatus]]:
        return [(t.old, t.new) for t in self.transitions]


@pytest.fixture
async def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def engine(recorder: Recorder, request: pytest.FixtureRequest) -> AsyncIterator[HealthEngine]:
    """An engine on real probes; HTTP tests run it with each HTTP client (see BOTH_CLIENTS)."""
    client = getattr(request, "param", "lean")
    checker = NetworkHealthChecker(lean_http=client == "lean")
    try:
        async with HealthEngine(checker, on_transition=recorder) as eng:
            yield eng
    finally:
        await checker.close()


# Plain-HTTP probes use the built-in HTTP/1.1 client; "session" is the general
# client that HTTPS probes use. Both must judge the same way.
BOTH_CLIENTS = pytest.mark.parametrize("engine", ["lean", "session"], indirect=True)


async def eventually_status(engine: HealthEngine, check_id: str, status: HealthStatus) -> str:
    """Waits for the check to report ``status`` from a result (not its initial one)."""

    def check() -> str:
        detail = engine.check(check_id)
        assert detail.checked_at is not None
        assert detail.status is status, (detail.status, detail.output)
        return detail.output

    return await assert_eventually(check, timeout=10.0)


# -- HTTP -----------------------------------------------------------------------------------


class FlipServer:
    """An HTTP server whose /health answer the test sets; it records what it receives."""

    def __init__(self) -> None:
        self.status = 200
        self.body = "ok"
        self.delay = 0.0
        self.chunked = False
        self.released = asyncio.Event()  # set: slow answers return at once
        self.hits = 0
        self.failing_hits = 0
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.peers: set[Any] = set()
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        self.requests.append((request.method, dict(request.headers)))
        self.peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        if self.delay:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.released.wait(), self.delay)
        if not 200 <= self.status < 400:
            self.failing_hits += 1
        if self.chunked and request.method != "HEAD":
            response = web.StreamResponse(status=self.status)
            response.enable_chunked_encoding()
            await response.prepare(request)
            for part in self.body.split(" "):
                await response.write(part.encode() + b" ")
            await response.write_eof()
            return response
        return web.Response(status=self.status, text=self.body)


@pytest.fixture
async def http_server() -> AsyncIterator[FlipServer]:
    server = FlipServer()
    app = web.Application()
    app.router.add_route("*", "/health", server.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{port}/health"
    try:
        yield server
    finally:
        server.released.set()
        await runner.cleanup()


@BOTH_CLIENTS
async def test_http_hysteresis_on_a_flipping_server(
    engine: HealthEngine, recorder: Recorder, http_server: FlipServer
) -> None:
    check = engine.add(
        "web-1",
        parse_check(
            {
                "http": http_server.url,
                **FAST,
                "failures_before_critical": 3,
                "successes_before_passing": 2,
            }
        ),
    )
    output = await eventually_status(engine, check, P)
    assert output.startswith(f"HTTP GET {http_server.url}: 200 OK")
    assert output.endswith("Output: ok")

    recorder.at_change = lambda: (http_server.failing_hits, http_server.hits)
    http_server.status = 503
    http_server.body = "draining"
    output = await eventually_status(engine, check, C)
    assert "503 Service Unavailable" in output and "draining" in output
    # Exactly the third consecutive failure turned it CRITICAL.
    assert recorder.snapshots[-1][0] == 3

    hits_when_critical = http_server.hits
    http_server.status = 200
    await eventually_status(engine, check, P)
    # Two passes were needed: the first pass alone did not flip it back.
    assert recorder.snapshots[-1][1] - hits_when_critical == 2
    assert recorder.changes() == [(C, P), (P, C), (C, P)]
    assert engine.status("web-1") is P
    # One shared, kept-alive connection served every probe of the check.
    assert http_server.hits >= 6
    assert len(http_server.peers) <= 2


@BOTH_CLIENTS
async def test_http_expected_status_ranges(engine: HealthEngine, http_server: FlipServer) -> None:
    custom = engine.add(
        "web-1", parse_check({"http": http_server.url, **FAST, "expected_status": "200-299,418"})
    )
    default = engine.add("web-2", parse_check({"http": http_server.url, **FAST}))
    http_server.status = 418
    await eventually_status(engine, custom, P)
    await eventually_status(engine, default, C)
    http_server.status = 302  # redirects are not followed; the default range accepts 3xx
    await eventually_status(engine, custom, C)
    await eventually_status(engine, default, P)
    http_server.status = 429
    output = await eventually_status(engine, default, W)
    assert "429 Too Many Requests" in output
    http_server.status = 500
    await eventually_status(engine, default, C)


@BOTH_CLIENTS
async def test_http_body_contains(engine: HealthEngine, http_server: FlipServer) -> None:
    http_server.body = '{"status": "up"}'
    check = engine.add(
        "web-1", parse_check({"http": http_server.url, **FAST, "body_contains": '"up"'})
    )
    await eventually_status(engine, check, P)
    http_server.body = '{"status": "down"}'
    output = await eventually_status(engine, check, C)
    assert "does not contain" in output and "down" in output


@BOTH_CLIENTS
async def test_http_sends_method_and_headers(engine: HealthEngine, http_server: FlipServer) -> None:
    check = engine.add(
        "web-1",
        parse_check(
            {
                "http": http_server.url,
                **FAST,
                "method": "post",
                "headers": {"X-Check": "sidecar", "Authorization": "Bearer t0ken"},
            }
        ),
    )
    await eventually_status(engine, check, P)
    method, headers = http_server.requests[-1]
    assert method == "POST"
    assert headers["X-Check"] == "sidecar"
    assert headers["Authorization"] == "Bearer t0ken"
    assert headers["User-Agent"].startswith("ecosystem-health-check")


@BOTH_CLIENTS
async def test_http_timeout_and_refused(engine: HealthEngine, http_server: FlipServer) -> None:
    slow = engine.add("web-1", parse_check({"http": http_server.url, **FAST}))
    await eventually_status(engine, slow, P)
    http_server.delay = 0.5
    output = await eventually_status(engine, slow, C)
    assert output.endswith("timed out after 100ms")
    http_server.delay = 0.0
    http_server.released.set()

    free = free_port()  # nothing listens there
    refused = engine.add("web-2", parse_check({"http": f"http://127.0.0.1:{free}/health", **FAST}))
    output = await eventually_status(engine, refused, C)
    assert "Cannot connect" in output or "refused" in output.lower()
    await eventually_status(engine, slow, P)


@BOTH_CLIENTS
async def test_http_chunked_and_head(engine: HealthEngine, http_server: FlipServer) -> None:
    http_server.chunked = True
    http_server.body = "all systems nominal"
    get = engine.add(
        "web-1", parse_check({"http": http_server.url, **FAST, "body_contains": "nominal"})
    )
    head = engine.add("web-2", parse_check({"http": http_server.url, **FAST, "method": "HEAD"}))
    assert (await eventually_status(engine, get, P)).endswith("Output: all systems nominal")
    await eventually_status(engine, head, P)
    http_server.body = "all systems degraded"
    await eventually_status(engine, get, C)
    assert engine.check(head).status is P


async def _raw_server(answer: bytes, *, close: str) -> asyncio.Server:
    """A server answering every request with ``answer``.

    ``close``: "after" closes each connection after one answer, "unanswered"
    answers one request per connection and closes on the next without an
    answer (as a server timing out an idle keep-alive connection does, racing
    a new request), "never" keeps it open.
    """

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answered = 0
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                if close == "unanswered" and answered:
                    break
                writer.write(answer)
                await writer.drain()
                answered += 1
                if close == "after":
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


@pytest.mark.parametrize(
    ("answer", "close"),
    [
        # A body delimited by the server closing the connection.
        (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nfine", "after"),
        # Keep-alive announced, then the connection dropped after each answer:
        # the next probe finds it closed and uses a fresh one.
        (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine", "after"),
        # Dropped when the next request arrives: that request is sent again,
        # once, on a fresh connection, and the probe never notices.
        (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine", "unanswered"),
        # Kept open and reused.
        (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine", "never"),
    ],
)
async def test_http_connection_handling(
    engine: HealthEngine, recorder: Recorder, answer: bytes, close: str
) -> None:
    server = await _raw_server(answer, close=close)
    port = server.sockets[0].getsockname()[1]
    try:
        check = engine.add("web-1", parse_check({"http": f"http://127.0.0.1:{port}/", **FAST}))
        assert (await eventually_status(engine, check, P)).endswith("Output: fine")

        def five_probes() -> None:
            assert engine.check(check).consecutive_successes >= 5

        await assert_eventually(five_probes)
        assert recorder.changes() == [(C, P)]
    finally:
        server.close()
        await server.wait_closed()


async def test_http_garbage_is_critical(engine: HealthEngine) -> None:
    server = await _raw_server(b"SSH-2.0-OpenSSH_9.0\r\n\r\n", close="after")
    port = server.sockets[0].getsockname()[1]
    try:
        check = engine.add("web-1", parse_check({"http": f"http://127.0.0.1:{port}/", **FAST}))
        output = await eventually_status(engine, check, C)
        assert "invalid HTTP response: not an HTTP/1.x status line" in output
    finally:
        server.close()
        await server.wait_closed()


# -- TCP ------------------------------------------------------------------------------------


async def test_tcp_listener_closed_and_reopened(engine: HealthEngine, recorder: Recorder) -> None:
    accepted = 0

    def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        writer.close()

    listener = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    check = engine.add("db-1", parse_check({"tcp": f"127.0.0.1:{port}", **FAST}))
    assert (await eventually_status(engine, check, P)).endswith("success")

    listener.close()
    await listener.wait_closed()
    output = await eventually_status(engine, check, C)
    assert "connection refused" in output

    listener = await asyncio.start_server(on_connect, "127.0.0.1", port)
    try:
        await eventually_status(engine, check, P)
    finally:
        listener.close()
        await listener.wait_closed()
    assert accepted >= 2
    assert recorder.changes() == [(C, P), (P, C), (C, P)]


async def test_tcp_timeout_on_a_listener_that_never_accepts(engine: HealthEngine) -> None:
    # A full accept queue: the kernel drops further handshakes, so a connect hangs.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
            check = engine.add(
                "db-1",
                parse_check({"tcp": f"127.0.0.1:{port}", **FAST, "initial_status": "passing"}),
            )
            output = await eventually_status(engine, check, C)
            assert output == f"TCP connect 127.0.0.1:{port}: timed out after 100ms"
        finally:
            for filler in fillers:
                filler.close()


async def test_tcp_name_is_resolved(engine: HealthEngine) -> None:
    listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        check = engine.add("db-1", parse_check({"tcp": f"localhost:{port}", **FAST}))
        await eventually_status(engine, check, P)
    finally:
        listener.close()
        await listener.wait_closed()


# -- gRPC -----------------------------------------------------------------------------------


class GrpcServer:
    def __init__(self) -> None:
        self.server: grpc.aio.Server | None = None
        self.health: Any = None
        self.port = 0

    async def start(self, port: int = 0) -> None:
        self.server = grpc.aio.server()
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        await self.server.start()

    async def set(self, service: str, status: int) -> None:
        await self.health.set(service, status)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=None)
            self.server = None


@pytest.fixture
async def grpc_server() -> AsyncIterator[GrpcServer]:
    server = GrpcServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_grpc_serving_flips(engine: HealthEngine, grpc_server: GrpcServer) -> None:
    target = f"127.0.0.1:{grpc_server.port}"
    whole = engine.add("api-1", parse_check({"grpc": target, **FAST}))
    named = engine.add("api-1", parse_check({"grpc": target, "service": "orders", **FAST}))
    assert (await eventually_status(engine, whole, P)).endswith(": SERVING")
    output = await eventually_status(engine, named, C)
    assert "service unknown" in output

    await grpc_server.set("orders", health_pb2.HealthCheckResponse.SERVING)
    await eventually_status(engine, named, P)
    await grpc_server.set("orders", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert (await eventually_status(engine, named, C)).endswith("NOT_SERVING")
    assert engine.check(whole).status is P
    assert engine.status("api-1") is C

    await grpc_server.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await eventually_status(engine, whole, C)
    await grpc_server.set("", health_pb2.HealthCheckResponse.SERVING)
    await grpc_server.set("orders", health_pb2.HealthCheckResponse.SERVING)
    await eventually_status(engine, whole, P)
    await eventually_status(engine, named, P)
    assert engine.status("api-1") is P


async def test_grpc_server_stopped_and_restarted(
    engine: HealthEngine, grpc_server: GrpcServer
) -> None:
    port = grpc_server.port
    check = engine.add("api-1", parse_check({"grpc": f"127.0.0.1:{port}", **FAST}))
    await eventually_status(engine, check, P)
    await grpc_server.stop()
    output = await eventually_status(engine, check, C)
    assert "UNAVAILABLE" in output or "timed out" in output
    await grpc_server.start(port)
    # The channel's reconnect backoff is capped at 1 s for health checks.
    await eventually_status(engine, check, P)


async def test_grpc_without_a_health_service(engine: HealthEngine) -> None:
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        check = engine.add("api-1", parse_check({"grpc": f"127.0.0.1:{port}", **FAST}))
        output = await eventually_status(engine, check, C)
        assert "no health service" in output
    finally:
        await server.stop(grace=None)


# -- exec -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "status", "output"),
    [
        ("echo all good", P, "all good"),
        ("exit 0", P, "exit status 0"),
        ("echo slow >&2; exit 1", W, "exit status 1: slow"),
        ("exit 2", C, "exit status 2"),
        ("kill -9 $$", C, "killed by SIGKILL"),
    ],
)
async def test_exec_exit_statuses(
    engine: HealthEngine, script: str, status: HealthStatus, output: str
) -> None:
    check = engine.add(
        "job-1",
        parse_check({"exec": ["sh", "-c", script], **FAST, "initial_status": "unknown"}),
    )
    assert await eventually_status(engine, check, status) == output


async def test_exec_string_runs_through_the_shell(engine: HealthEngine) -> None:
    check = engine.add("job-1", parse_check({"exec": "test 1 -eq 1 && echo yes", **FAST}))
    assert await eventually_status(engine, check, P) == "yes"


async def test_exec_missing_program(engine: HealthEngine) -> None:
    check = engine.add("job-1", parse_check({"exec": ["/nonexistent/check"], **FAST}))
    output = await eventually_status(engine, check, C)
    assert output.startswith("cannot run '/nonexistent/check'")


def _live_members(pgid: int) -> list[int]:
    """Processes of a process group that are alive (zombies awaiting their reaper are not)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state not in ("Z", "X"):
            members.append(int(entry.name))
    return members


async def _wait_for_pids(path: Path) -> tuple[int, int]:
    def read() -> tuple[int, int]:
        text = path.read_text().split() if path.exists() else []
        assert len(text) == 2
        return int(text[0]), int(text[1])

    return await assert_eventually(read, timeout=10.0)


async def test_exec_timeout_kills_the_process_group(engine: HealthEngine, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # The shell starts a grandchild and writes both ids: its own ($$, the group) and the sleep's.
    script = f"sleep 30 & echo $$ $! > {pids}.tmp; mv {pids}.tmp {pids}; wait"
    check = engine.add(
        "job-1",
        parse_check(
            {"exec": ["sh", "-c", script], "interval": "10s", "timeout": "300ms", "jitter": 0}
        ),
    )
    pgid, sleeper = await _wait_for_pids(pids)
    assert os.getpgid(sleeper) == pgid
    assert len(_live_members(pgid)) == 2
    output = await eventually_status(engine, check, C)
    assert output == "timed out after 300ms; process group killed"
    await assert_eventually(lambda: _assert_no_members(pgid))


def _assert_no_members(pgid: int) -> None:
    assert _live_members(pgid) == []


async def test_closing_the_engine_kills_a_running_command(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 30 & echo $$ $! > {pids}.tmp; mv {pids}.tmp {pids}; wait"
    async with HealthEngine() as engine:
        engine.add(
            "job-1",
            parse_check({"exec": ["sh", "-c", script], "interval": "10s", "jitter": 0}),
        )
        pgid, _ = await _wait_for_pids(pids)
        assert _live_members(pgid)
    await assert_eventually(lambda: _assert_no_members(pgid))


@pytest.mark.parametrize("turns", [1, 2, 3, 5, 8])
async def test_a_probe_cancelled_while_its_command_starts_leaves_nothing_running(
    tmp_path: Path, turns: int
) -> None:
    """Cancelled after the fork but before the pipes are connected (a busy
    loop makes that window wide): the child's whole group is killed still."""
    from sidecar.health._exec import run_command

    pids = tmp_path / "pids"
    script = f"sleep 30 & echo $$ > {pids}.tmp; mv {pids}.tmp {pids}; wait"
    probe = asyncio.create_task(run_command(("sh", "-c", script), 10.0))
    for _ in range(turns):
        await asyncio.sleep(0)
    probe.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await probe
    await asyncio.sleep(0.3)  # a shell that got to run has written its group id by now
    if pids.exists():
        pgid = int(pids.read_text())
        await assert_eventually(lambda: _assert_no_members(pgid))


# -- TTL ------------------------------------------------------------------------------------


async def test_ttl_updates_and_expiry(engine: HealthEngine, recorder: Recorder) -> None:
    check = engine.add("app-1", parse_check({"ttl": "300ms"}))
    assert engine.check(check).status is C
    engine.update_ttl(check, "passing", "ready")
    assert engine.check(check).status is P
    for _ in range(4):  # reports inside the TTL keep it passing
        await asyncio.sleep(0.1)
        engine.update_ttl(check, "passing", "ready")
    assert engine.check(check).status is P
    assert await eventually_status(engine, check, C) == "TTL expired"
    engine.update_ttl(check, "warning", "queue is long")
    assert engine.check(check).output == "queue is long"
    assert recorder.changes() == [(C, P), (P, C), (C, W)]
    assert recorder.transitions[1].output == "TTL expired"


# -- many at once ---------------------------------------------------------------------------


async def test_mixed_checks_on_one_engine_report_through_a_stream(
    http_server: FlipServer, grpc_server: GrpcServer
) -> None:
    listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    tcp_port = listener.sockets[0].getsockname()[1]
    # A probe may take up to 1 s: 150 probes at once on a loaded machine can
    # take longer than FAST's 100 ms, which would turn a passing check critical
    # (a timeout is a failure), and that is not what this test is about.
    often = {**FAST, "interval": "1s", "timeout": "1s"}
    try:
        async with HealthEngine() as engine, engine.subscribe() as stream:
            for i in range(50):
                engine.add(f"web-{i}", parse_check({"http": http_server.url, **often}))
                engine.add(f"web-{i}", parse_check({"tcp": f"127.0.0.1:{tcp_port}", **often}))
                engine.add(
                    f"web-{i}", parse_check({"grpc": f"127.0.0.1:{grpc_server.port}", **often})
                )
            seen: set[str] = set()
            async for transition in stream:
                assert (transition.old, transition.new) == (C, P)
                seen.add(transition.check_id)
                if len(seen) == 150:
                    break
            assert all(engine.status(f"web-{i}") is P for i in range(50))
    finally:
        listener.close()
        await listener.wait_closed()


# -- on the sidecar's event loop ------------------------------------------------------------


def test_probes_on_the_faster_event_loop() -> None:
    """The sidecar runs on uvloop, whose transports are not asyncio's own classes."""
    import uvloop

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def scenario() -> None:
        app = web.Application()
        app.router.add_get("/health", ok)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        http_port = runner.addresses[0][1]
        listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        tcp_port = listener.sockets[0].getsockname()[1]
        try:
            async with HealthEngine() as engine:
                checks = [
                    engine.add("a", parse_check({"http": f"http://127.0.0.1:{http_port}/health"})),
                    engine.add("a", parse_check({"tcp": f"127.0.0.1:{tcp_port}", **FAST})),
                ]
                for check in checks:
                    await eventually_status(engine, check, P)
                listener.close()
                await listener.wait_closed()
                assert "refused" in await eventually_status(engine, checks[1], C)
        finally:
            listener.close()
            await runner.cleanup()

    uvloop.run(scenario())
