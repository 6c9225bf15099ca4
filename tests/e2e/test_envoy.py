"""``dataplane: envoy`` end to end: a control plane, an `eco sidecar` whose
proxy listeners Envoy serves, real backends.

An application dials the sidecar's upstream listener, which is Envoy's; the
control plane gave Envoy that listener (from the listeners the sidecar wrote
into Envoy's bootstrap) and the service's endpoints. Envoy comes from
scripts/install-envoy.sh (`make test` runs it).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness.controlplane import ECO, ControlPlaneProcess
from tests.harness.ports import free_port
from tests.harness.sidecar import SidecarProcess
from tests.integration.proxy.conftest import Backend
from tests.util import assert_eventually

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ENVOY = ROOT / ".tools" / "envoy-venv" / "bin" / "envoy"


def envoy_binary() -> Path:
    assert ENVOY.exists(), f"{ENVOY} is missing: run scripts/install-envoy.sh (make test runs it)"
    return ENVOY


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    plane = ControlPlaneProcess(f"sqlite://{tmp_path / 'cp.db'}", tmp_path / "controlplane.log")
    plane.start()
    yield plane
    plane.stop()


def envoy_pids(sidecar: SidecarProcess) -> list[int]:
    """The Envoy processes running this sidecar's bootstrap."""
    bootstrap = str(sidecar.data_dir / "envoy" / "bootstrap.json").encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if bootstrap in argv:
            found.append(int(entry.name))
    return found


async def eco(plane: ControlPlaneProcess, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(ECO),
        "--server",
        plane.address,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, f"eco {' '.join(args)}: {err.decode()}"
    return out.decode()


async def register(plane: ControlPlaneProcess, service: str, name: str, backend: Backend) -> None:
    await eco(
        plane,
        "service",
        "register",
        service,
        "--id",
        name,
        "--address",
        "127.0.0.1",
        "--port",
        str(backend.port),
    )


async def get(port: int, path: str = "/") -> tuple[int, dict[str, str], str]:
    timeout = aiohttp.ClientTimeout(total=5)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, dict(response.headers), await response.text()


async def backends_seen(port: int, n: int = 10) -> set[str]:
    seen = set()
    for _ in range(n):
        status, headers, _ = await get(port)
        assert status == 200, status
        seen.add(headers["x-backend"])
    return seen


async def wait_serving(port: int, names: set[str], timeout: float = 15.0) -> None:
    async def exactly() -> None:
        try:
            seen = await backends_seen(port)
        except aiohttp.ClientError as exc:
            raise AssertionError(f"not serving yet: {exc}") from None
        assert seen == names

    await assert_eventually(exactly, timeout=timeout, interval=0.05)


class Mesh:
    def __init__(self, plane: ControlPlaneProcess, client: SidecarProcess, backends: list[Backend]):
        self.plane = plane
        self.client = client
        self.backends = backends
        self.http = 0
        self.grpc = 0


def client_body(http_port: int, grpc_port: int, extra: str = "") -> str:
    return (
        "dataplane: envoy\n"
        f"envoy: {{binary: {json.dumps(str(envoy_binary()))}, restart_backoff: 200ms}}\n"
        "upstreams:\n"
        f'  - {{service: orders, protocol: http, listen: "127.0.0.1:{http_port}", retries: 0,'
        " outlier: {consecutive_failures: 0}}\n"
        f'  - {{service: greeter, protocol: grpc, listen: "127.0.0.1:{grpc_port}"}}\n' + extra
    )


@pytest.fixture
async def mesh(tmp_path: Path, plane: ControlPlaneProcess) -> AsyncIterator[Mesh]:
    backends = [
        Backend("http_backend.py", "--name", "h1").start(),
        Backend("http_backend.py", "--name", "h2").start(),
        Backend("grpc_backend.py", "--name", "g1").start(),
    ]
    try:
        await register(plane, "orders", "h1", backends[0])
        await register(plane, "orders", "h2", backends[1])
        await register(plane, "greeter", "g1", backends[2])
        http_port, grpc_port = free_port(), free_port()
        client = SidecarProcess(
            tmp_path, "client", client_body(http_port, grpc_port), plane.address
        )
        await client.start()
        mesh = Mesh(plane, client, backends)
        mesh.http, mesh.grpc = http_port, grpc_port
        try:
            yield mesh
        finally:
            await client.stop()
            assert not envoy_pids(client), "Envoy outlived its sidecar"
    finally:
        for backend in backends:
            backend.stop()


async def grpc_serving(port: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10, wait_for_ready=True)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_http_and_grpc_go_through_envoy_one_hop(mesh: Mesh) -> None:
    await wait_serving(mesh.http, {"h1", "h2"})
    # The listener is Envoy's, not the sidecar's own.
    _status, headers, _body = await get(mesh.http)
    assert "x-envoy-upstream-service-time" in headers
    await grpc_serving(mesh.grpc)
    assert len(envoy_pids(mesh.client)) == 1
    envoy = (await mesh.client.status())["envoy"]
    assert envoy["pid"] in envoy_pids(mesh.client)
    assert sorted(envoy["listeners"]) == sorted(
        f"127.0.0.1:{port}" for port in (mesh.http, mesh.grpc)
    )

    # The sidecar keeps its other jobs: its local API resolves the same service.
    async def resolved() -> None:
        answer = await mesh.client.resolve("orders")
        ports = {e.port for e in answer.endpoints}
        want = {b.port for b in mesh.backends[:2]}
        assert ports == want, (ports, want, await mesh.client.status())

    # Generous: on a loaded machine the sidecar's own session may connect late.
    await assert_eventually(resolved, timeout=30)


async def test_a_deregistered_instance_gets_no_new_requests_within_a_second(mesh: Mesh) -> None:
    await wait_serving(mesh.http, {"h1", "h2"})
    await eco(mesh.plane, "service", "deregister", "orders", "--id", "h2")
    removed = time.monotonic()
    await wait_serving(mesh.http, {"h1"}, timeout=1.0)
    assert time.monotonic() - removed < 1.0
    assert await backends_seen(mesh.http, 20) == {"h1"}


async def test_a_killed_envoy_is_started_again_by_the_sidecar(mesh: Mesh) -> None:
    await wait_serving(mesh.http, {"h1", "h2"})
    [first] = envoy_pids(mesh.client)
    os.kill(first, signal.SIGKILL)

    def restarted() -> int:
        pids = envoy_pids(mesh.client)
        assert pids and pids != [first], pids
        return pids[0]

    await assert_eventually(restarted, timeout=10)
    await wait_serving(mesh.http, {"h1", "h2"})
    await grpc_serving(mesh.grpc)
    assert "Envoy exited with status -9; starting it again" in mesh.client.log()


async def test_the_control_plane_restarted_envoy_keeps_serving_then_resyncs(mesh: Mesh) -> None:
    await wait_serving(mesh.http, {"h1", "h2"})
    mesh.plane.kill()
    # Down: Envoy serves what it holds.
    assert await backends_seen(mesh.http, 20) == {"h1", "h2"}
    await grpc_serving(mesh.grpc)
    mesh.plane.start()
    third = Backend("http_backend.py", "--name", "h3").start()
    try:
        await register(mesh.plane, "orders", "h3", third)
        # Envoy reconnects (its backoff is up to a few seconds) and takes the change.
        await wait_serving(mesh.http, {"h1", "h2", "h3"}, timeout=30)
    finally:
        third.stop()


async def test_a_listener_envoy_rejects_is_reported_and_the_rest_keeps_serving(
    tmp_path: Path, plane: ControlPlaneProcess
) -> None:
    backend = Backend("http_backend.py", "--name", "h1").start()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        await register(plane, "orders", "h1", backend)
        http_port = free_port()
        busy = taken.getsockname()[1]
        body = client_body(http_port, free_port()).replace(
            "upstreams:\n",
            f'upstreams:\n  - {{service: stock, protocol: tcp, listen: "127.0.0.1:{busy}"}}\n',
        )
        client = SidecarProcess(tmp_path, "client", body, plane.address)
        await client.start()
        try:
            await wait_serving(http_port, {"h1"})

            async def nacked() -> str:
                table = await eco(plane, "xds", "status", "--node", "client")
                assert "NACKED" in table, table
                return table

            table = await assert_eventually(nacked, timeout=10)
            assert "Listener" in table
            assert str(busy) in table or "sidecar/upstream/stock.default" in table
            # The listeners Envoy took keep serving.
            assert await backends_seen(http_port) == {"h1"}
        finally:
            await client.stop()
    finally:
        taken.close()
        backend.stop()


async def envoy_stat(sidecar: SidecarProcess, name: str) -> int:
    admin = (sidecar.data_dir / "envoy" / "admin-address").read_text().strip()
    async with aiohttp.ClientSession() as http, http.get(f"http://{admin}/stats") as response:
        for line in (await response.text()).splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
    raise AssertionError(f"no stat {name}")


async def test_two_hops_through_the_inbound_envoy_of_the_instance(
    tmp_path: Path, plane: ControlPlaneProcess
) -> None:
    backend = Backend("http_backend.py", "--name", "h1").start()
    inbound_port, http_port = free_port(), free_port()
    binary = json.dumps(str(envoy_binary()))
    server = SidecarProcess(
        tmp_path,
        "server",
        f"dataplane: envoy\nenvoy: {{binary: {binary}}}\n"
        f"services:\n  - {{name: orders, id: h1, address: 127.0.0.1, port: {backend.port}}}\n"
        f'inbound:\n  - {{listen: "127.0.0.1:{inbound_port}", to: "127.0.0.1:{backend.port}",'
        " protocol: http}\n",
        plane.address,
    )
    client = SidecarProcess(
        tmp_path,
        "client",
        f"dataplane: envoy\nenvoy: {{binary: {binary}}}\n"
        f'upstreams:\n  - {{service: orders, protocol: http, listen: "127.0.0.1:{http_port}"}}\n',
        plane.address,
    )
    try:
        await server.start()
        await client.start()
        await wait_serving(http_port, {"h1"})
        # The instance is registered with the inbound listener's port, and the
        # client's Envoy dials that listener (the server's Envoy), not the backend.
        before = await envoy_stat(server, "http.inbound_orders.downstream_rq_total")
        assert await backends_seen(http_port, 5) == {"h1"}
        after = await envoy_stat(server, "http.inbound_orders.downstream_rq_total")
        assert after - before == 5

        async def advertised() -> None:
            answer = await client.resolve("orders")
            assert [e.metadata["eco.inbound.port"] for e in answer.endpoints] == [str(inbound_port)]

        await assert_eventually(advertised, timeout=10)
    finally:
        await client.stop()
        await server.stop()
        backend.stop()


async def test_the_proxy_policy_holds_in_envoy(tmp_path: Path, plane: ControlPlaneProcess) -> None:
    """Timeouts, retries, outlier ejection and circuit breaking, as the Python
    data plane's tests check them (tests/integration/proxy/test_http.py)."""
    good = Backend("http_backend.py", "--name", "ok").start()
    bad = Backend("http_backend.py", "--name", "bad", "--fail", "503").start()
    echo = Backend("tcp_backend.py", "--mode", "echo").start()
    ports = {name: free_port() for name in ("retry", "eject", "limit", "tcp")}
    try:
        for service in ("retry", "eject", "limit"):
            await register(plane, service, f"{service}-ok", good)
            await register(plane, service, f"{service}-bad", bad)
        await register(plane, "echo", "echo-1", echo)
        body = (
            f"dataplane: envoy\nenvoy: {{binary: {json.dumps(str(envoy_binary()))}}}\n"
            "upstreams:\n"
            f'  - {{service: retry, protocol: http, listen: "127.0.0.1:{ports["retry"]}",'
            " retries: 2, retry_on: [503], timeout: 1s, outlier: {consecutive_failures: 0}}\n"
            f'  - {{service: eject, protocol: http, listen: "127.0.0.1:{ports["eject"]}",'
            " retries: 0, outlier: {consecutive_failures: 2, base_ejection: 30s}}\n"
            f'  - {{service: limit, protocol: http, listen: "127.0.0.1:{ports["limit"]}",'
            " retries: 0, circuit_breaker: {max_requests: 1, max_pending: 1},"
            " outlier: {consecutive_failures: 0}}\n"
            f'  - {{service: echo, protocol: tcp, listen: "127.0.0.1:{ports["tcp"]}"}}\n'
        )
        client = SidecarProcess(tmp_path, "client", body, plane.address)
        await client.start()
        try:

            async def up() -> None:
                try:
                    status, _, _ = await get(ports["retry"])
                except aiohttp.ClientError as exc:
                    raise AssertionError(exc) from None
                assert status == 200

            await assert_eventually(up, timeout=15, interval=0.05)
            # retry_on 503: the bad endpoint's answer is retried on the good one.
            for _ in range(10):
                status, headers, _ = await get(ports["retry"])
                assert (status, headers["x-backend"]) == (200, "ok")
            # timeout: a whole request is bounded.
            started = time.monotonic()
            status, _, _ = await get(ports["retry"], "/hang")
            assert status == 504 and time.monotonic() - started < 3
            # outlier: two 503s in a row eject the bad endpoint.
            answers = [await get(ports["eject"]) for _ in range(12)]
            assert any(status == 503 for status, _, _ in answers)
            assert [
                s for s, _, _ in await asyncio.gather(*(get(ports["eject"]) for _ in range(8)))
            ] == [200] * 8
            # circuit breaker: one request in flight, one waiting; the rest fail at once.
            slow = await asyncio.gather(*(get(ports["limit"], "/slow?ms=800") for _ in range(6)))
            overloaded = [h for s, h, _ in slow if s == 503 and h.get("x-envoy-overloaded")]
            assert overloaded, [s for s, _, _ in slow]
            # tcp: bytes both ways.
            reader, writer = await asyncio.open_connection("127.0.0.1", ports["tcp"])
            writer.write(b"ping\n")
            await writer.drain()
            assert await asyncio.wait_for(reader.readline(), 5) == b"ping\n"
            writer.close()
        finally:
            await client.stop()
    finally:
        for backend in (good, bad, echo):
            backend.stop()


async def test_envoy_does_not_outlive_a_killed_sidecar(mesh: Mesh) -> None:
    await wait_serving(mesh.http, {"h1", "h2"})
    assert envoy_pids(mesh.client)
    assert mesh.client.proc is not None
    mesh.client.proc.kill()
    await mesh.client.proc.wait()

    def gone() -> None:
        assert not envoy_pids(mesh.client)

    await assert_eventually(gone, timeout=5)


# -- the gRPC proxy cases (tests/integration/proxy/test_grpc.py), through Envoy ------------------


def _md(pairs: object) -> dict[str, object]:
    return {key: value for key, value in pairs or ()}  # type: ignore[attr-defined]


async def test_the_grpc_proxy_cases_pass_through_envoy(mesh: Mesh) -> None:
    options = [
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
    ]
    await grpc_serving(mesh.grpc)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.grpc}", options=options) as channel:
        unary = channel.unary_unary("/test.Echo/Unary")
        # Metadata both ways, binary headers and trailers.
        binary = bytes(range(256))
        call = unary(b"hello\x00world", metadata=(("x-echo-bin", binary),), timeout=5)
        assert await call == b"hello\x00world"
        assert _md(await call.initial_metadata())["x-backend"] == "g1"
        trailing = _md(await call.trailing_metadata())
        assert trailing["x-trailer"] == "g1" and trailing["x-echo-bin"] == binary
        # Every streaming kind.
        stream = channel.unary_stream("/test.Echo/ServerStream")(b"5", timeout=5)
        assert [m async for m in stream] == [f"g1:{i}".encode() for i in range(5)]
        upload = channel.stream_unary("/test.Echo/ClientStream")(
            iter([b"a", b"bc", b"d"]), timeout=5
        )
        assert await upload == b"abcd"
        bidi = channel.stream_stream("/test.Echo/Bidi")(timeout=5)
        for i in range(3):
            await bidi.write(f"m{i}".encode())
            assert await bidi.read() == f"m{i}".encode()
        await bidi.done_writing()
        assert await bidi.read() is grpc.aio.EOF  # type: ignore[attr-defined]
        # Application statuses with their details pass through.
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await channel.unary_unary("/test.Echo/Fail")(b"NOT_FOUND", timeout=5)
        assert failed.value.code() is grpc.StatusCode.NOT_FOUND
        assert failed.value.details() == "failed by g1"
        # Large messages.
        payload = os.urandom(8 << 20)
        assert await unary(payload, timeout=20) == payload
        # The client's deadline reaches the backend.
        sleep = channel.unary_unary("/test.Echo/Sleep")(b"0", timeout=1.0)
        assert await sleep == b"g1"
        seen = int(_md(await sleep.trailing_metadata())["x-deadline-ms"])  # type: ignore[arg-type]
        assert 500 < seen <= 1050
        # Past it, the client gets DEADLINE_EXCEEDED in time.
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await channel.unary_unary("/test.Echo/Sleep")(b"3000", timeout=0.3)
        assert late.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 2.0


# -- a NACK of a registry change: reported, the last good endpoints keep serving ------------------


def interface_missing_here() -> str:
    """An interface name this host does not have (so Envoy cannot use a zone index naming it)."""
    for i in range(9, 100):
        name = f"eth{i}"
        try:
            socket.if_nametoindex(name)
        except OSError:
            return name
    raise AssertionError("every name eth9..eth99 is an interface of this host")


async def xds_rows(plane: ControlPlaneProcess, node: str, resource: str) -> list[dict[str, str]]:
    answer = json.loads(await eco(plane, "xds", "status", "--node", node, "-o", "json"))
    return [row for row in answer["resources"] if row["name"] == resource]


async def test_an_endpoint_envoy_rejects_is_reported_and_the_last_good_ones_keep_serving(
    mesh: Mesh,
) -> None:
    """An instance registered with a link-local IPv6 address whose zone index
    names an interface of its own host (``fe80::1%eth9``): the registry takes
    it (an IP address), and so does the control plane, which cannot know the
    interfaces of each Envoy's host; an Envoy whose host has no such interface
    rejects the service's endpoints. The NACK names the resource and Envoy's
    error, Envoy keeps the endpoints it had, and the next assignment without
    the bad instance is taken."""
    await wait_serving(mesh.http, {"h1", "h2"})
    endpoints = "sidecar/orders.default"  # the client Envoy's ClusterLoadAssignment for orders
    address = f"fe80::1%{interface_missing_here()}"
    await eco(
        mesh.plane,
        "service",
        "register",
        "orders",
        "--id",
        "far",
        "--address",
        address,
        "--port",
        str(mesh.backends[0].port),
    )

    async def nacked(after: int = 0) -> dict[str, str]:
        [row] = await xds_rows(mesh.plane, "client", endpoints)
        assert row["type"] == "ClusterLoadAssignment", row
        assert row["status"] == "NACKED" and int(row["version"]) > after, row
        return row

    row = await assert_eventually(nacked, timeout=10, interval=0.2)
    assert f"malformed IP address: {address}" in row["error"], row
    # The control plane's log says it too, with the other resources of that response.
    logged = (
        rf"rejected ClusterLoadAssignment version {row['version']} \([^)]*{re.escape(endpoints)}"
    )
    assert re.search(logged, mesh.plane.log()), mesh.plane.log()[-2000:]
    # And its admin page's /xds, with the version Envoy keeps.
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://{mesh.plane.admin_address}/xds") as response,
    ):
        [node] = [n for n in (await response.json())["nodes"] if n["node"] == "client"]
    status = node["types"]["ClusterLoadAssignment"]
    assert status["last_nack"]["version"] == row["version"], status
    assert endpoints in status["last_nack"]["resources"], status
    assert address in status["last_nack"]["error"], status
    assert int(status["acked_version"]) < int(row["version"]), status
    # Envoy runs the last assignment it took: both instances, every request answered.
    assert await backends_seen(mesh.http, 20) == {"h1", "h2"}

    # Every assignment of the service holds the bad instance while it is
    # registered: a new instance is rejected with it, and not served.
    third = Backend("http_backend.py", "--name", "h3").start()
    try:
        await register(mesh.plane, "orders", "h3", third)
        await assert_eventually(lambda: nacked(int(row["version"])), timeout=10, interval=0.2)
        assert await backends_seen(mesh.http, 20) == {"h1", "h2"}

        # Without it, the next assignment is taken, the new instance with it.
        await eco(mesh.plane, "service", "deregister", "orders", "--id", "far")
        await wait_serving(mesh.http, {"h1", "h2", "h3"})
        [row] = await xds_rows(mesh.plane, "client", endpoints)
        assert row["status"] == "ACKED" and not row["error"], row
    finally:
        third.stop()
