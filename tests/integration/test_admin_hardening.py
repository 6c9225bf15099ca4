"""The admin ports against slow and hostile clients: the control plane's (/healthz,
/metrics) and the sidecar's, over real sockets with raw clients.

The finding: half-sent requests were held forever, and 1,100 of them (the
usual 1,024 file descriptors) made the control plane's gRPC API time out too.
Now a head must arrive within the head timeout, an idle connection is closed,
and each server holds a bounded number of connections, per client address
and in all, refusing the rest at once; the gRPC API is served throughout.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import resource
import signal
import sys
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import controlplane.admin
from controlplane import ControlPlane
from serving.http_limits import ADMIN_LIMITS, HttpLimits
from sidecar._http_server import HttpServer, Response
from tests.integration.raw_http import closed_within, head, open_raw, trickling
from tests.util import assert_eventually

HALF_SENT = b"GET /metrics HTTP/1.1\r\nHost: admin\r\nAccept: text/pl"


# -- the control plane ---------------------------------------------------------------------


@pytest.fixture
def small_admin_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = HttpLimits(
        head_timeout=2.0, idle_timeout=2.0, max_connections=10, max_connections_per_ip=5
    )
    monkeypatch.setattr(controlplane.admin, "ADMIN_LIMITS", limits)


@pytest.fixture
def plane(small_admin_limits: None, plane: ControlPlane) -> ControlPlane:
    """The integration tests' control plane, its admin port under small limits (set
    before it starts)."""
    return plane


async def grpc_health(plane: ControlPlane) -> int:
    async with grpc.aio.insecure_channel(plane.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    return int(reply.status)


async def test_a_flood_of_half_sent_requests_does_not_take_the_control_plane_down(
    plane: ControlPlane,
) -> None:
    # 200 half-sent requests from one address: 5 are held, the rest refused at once.
    flood = [await open_raw(plane.admin_address) for _ in range(200)]
    for client in flood:
        client.send(HALF_SENT)
    refused = await closed_within(flood, 0.5)
    assert len(refused) == 195
    assert all(answer.startswith(b"HTTP/1.1 503 ") for answer in refused), refused[0]

    # Meanwhile another client host gets /healthz, and the gRPC API answers.
    other = await open_raw(plane.admin_address, source="127.0.0.2")
    other.send(head("GET", "/healthz"))
    assert (await other.response()).status == 200
    assert await grpc_health(plane) == health_pb2.HealthCheckResponse.SERVING

    # The held ones are closed once their head is late (2 s); then the address is served again.
    for client in flood:
        await client.until_closed(timeout=5)
        client.close()
    other.close()
    again = await open_raw(plane.admin_address)
    again.send(head("GET", "/healthz"))
    assert (await again.response()).status == 200
    again.close()


async def test_the_whole_admin_port_holds_a_bounded_number_of_connections(
    plane: ControlPlane,
) -> None:
    held = []
    for source in ("127.0.0.2", "127.0.0.3"):
        for _ in range(5):
            client = await open_raw(plane.admin_address, source=source)
            client.send(HALF_SENT)
            held.append(client)
    assert await closed_within(held, 0.3) == []
    fourth = await open_raw(plane.admin_address, source="127.0.0.4")
    assert (await fourth.until_closed(timeout=2)).startswith(b"HTTP/1.1 503 ")
    for client in [*held, fourth]:
        client.close()
    assert await grpc_health(plane) == health_pb2.HealthCheckResponse.SERVING


async def test_an_idle_admin_connection_is_closed(plane: ControlPlane) -> None:
    client = await open_raw(plane.admin_address)
    for _ in range(2):  # kept alive between requests
        client.send(head("GET", "/healthz"))
        assert (await client.response()).status == 200
    assert await client.until_closed(timeout=5) == b""
    client.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /healthz HTTP/1.1\r\nHost: admin\r\nNo colon here\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: admin\r\nX: " + b"x" * 20_000 + b"\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: admin\r\nContent-Length: -1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    ],
)
async def test_a_malformed_admin_request_is_logged_quietly(
    plane: ControlPlane, caplog: pytest.LogCaptureFixture, request_bytes: bytes
) -> None:
    caplog.set_level(logging.DEBUG)
    client = await open_raw(plane.admin_address)
    client.send(request_bytes)
    answer = await client.until_closed()
    assert answer == b"" or answer.split(b" ")[1] in (b"400", b"431"), answer[:200]
    client.close()
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not loud, [(r.name, r.levelname, r.getMessage()) for r in loud]


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/0.9"])
async def test_an_admin_request_in_another_http_version_is_answered_505(
    plane: ControlPlane, version: str
) -> None:
    client = await open_raw(plane.admin_address)
    client.send(f"GET /healthz {version}\r\nHost: admin\r\n\r\n".encode())
    answer = await client.until_closed()
    client.close()
    assert answer.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n"), answer[:200]
    # HTTP/1.0 is served
    old = await open_raw(plane.admin_address)
    old.send(b"GET /healthz HTTP/1.0\r\n\r\n")
    assert (await old.response()).status == 200
    old.close()


# -- the sidecar's admin server --------------------------------------------------------------


@pytest.fixture
async def sidecar_admin() -> AsyncIterator[str]:
    server = HttpServer(
        {"/healthz": lambda: Response(200, "text/plain", b"SERVING\n")},
        limits=dataclasses.replace(
            ADMIN_LIMITS,
            head_timeout=0.5,
            idle_timeout=30.0,
            max_connections=6,
            max_connections_per_ip=3,
        ),
    )
    (host, port), *_ = await server.start("127.0.0.1", 0)
    try:
        yield f"{host}:{port}"
    finally:
        await server.close()


async def test_a_head_sent_a_byte_at_a_time_is_cut_at_the_head_timeout(
    sidecar_admin: str,
) -> None:
    # The idle timeout (30 s) would never fire: the client keeps sending.
    client = await open_raw(sidecar_admin)
    async with trickling(client.writer, HALF_SENT * 100, every=0.05):
        answer = await client.until_closed(timeout=5)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408 "), answer
    client.close()


async def test_the_sidecar_admin_refuses_connections_over_its_caps(sidecar_admin: str) -> None:
    flood = [await open_raw(sidecar_admin) for _ in range(10)]
    for client in flood:
        client.send(HALF_SENT)
    refused = await closed_within(flood, 0.3)
    assert len(refused) == 7
    assert all(answer.startswith(b"HTTP/1.1 503 ") for answer in refused), refused[0]
    # another address is served
    other = await open_raw(sidecar_admin, source="127.0.0.2")
    other.send(head("GET", "/healthz"))
    assert (await other.response()).status == 200
    # the held ones are closed by the head timeout, then the first address is served again
    for client in flood:
        await client.until_closed(timeout=5)
        client.close()
    other.close()

    async def served() -> None:
        client = await open_raw(sidecar_admin)
        try:
            client.send(head("GET", "/healthz"))
            assert (await client.response()).status == 200
        finally:
            client.close()

    await assert_eventually(served)


# -- the process's open files limit -----------------------------------------------------------

_LOW_LIMIT = """
import resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
from eco.cli import main
main(sys.argv[1:])
"""


async def test_eco_controlplane_raises_its_open_files_limit_and_says_so() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    args = ["controlplane", "--store", "memory://", "--listen", "127.0.0.1:0"]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _LOW_LIMIT,
        *args,
        "--admin-listen",
        "127.0.0.1:0",
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    lines = []
    try:
        async with asyncio.timeout(30):
            while b" serving on " not in (line := await process.stderr.readline()):
                assert line, b"".join(lines).decode()
                lines.append(line)
    finally:
        process.send_signal(signal.SIGTERM)
        await process.communicate()
    limit = str(1 << 20) if hard == resource.RLIM_INFINITY else str(hard)
    assert any(f"open files limit: {limit}".encode() in line for line in lines), lines
