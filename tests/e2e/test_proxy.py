"""The data plane end to end: `eco sidecar` processes, two hops, real backends.

A client sidecar has tcp, http and grpc upstream listeners; a server sidecar
registers three local services with an inbound listener in front of each. An
application dials the client sidecar, which dials the server sidecar's
inbound listener (advertised in the instance's metadata), which dials the
backend process.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sdk import AsyncClient
from tests.harness.controlplane import ControlPlaneProcess
from tests.harness.sidecar import SidecarProcess
from tests.integration.proxy.conftest import Backend
from tests.util import assert_eventually

pytestmark = pytest.mark.e2e


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    plane = ControlPlaneProcess("memory://", tmp_path / "controlplane.log")
    plane.start()
    yield plane
    plane.stop()


@pytest.fixture
def servers() -> Iterator[dict[str, Backend]]:
    started = {
        "http": Backend("http_backend.py", "--name", "h1").start(),
        "tcp": Backend("tcp_backend.py", "--mode", "echo").start(),
        "grpc": Backend("grpc_backend.py", "--name", "g1").start(),
    }
    yield started
    for backend in started.values():
        backend.stop()


class Pair:
    """The two sidecars, and the client sidecar's upstream ports by protocol."""

    def __init__(
        self,
        client: SidecarProcess,
        server: SidecarProcess,
        ports: dict[str, int],
        inbound: dict[str, int],
        plane: str,
    ) -> None:
        self.client = client
        self.server = server
        self.ports = ports
        self.inbound = inbound
        self.plane = plane


@pytest.fixture
async def pair(
    tmp_path: Path, plane: ControlPlaneProcess, servers: dict[str, Backend]
) -> AsyncIterator[Pair]:
    server_body = "services:\n" + "".join(
        f"  - {{name: orders-{proto}, address: 127.0.0.1, port: {b.port}}}\n"
        for proto, b in servers.items()
    )
    server_body += "inbound:\n" + "".join(
        f'  - {{listen: "127.0.0.1:0", to: "127.0.0.1:{b.port}", '
        f"protocol: {proto}, service: orders-{proto}}}\n"
        for proto, b in servers.items()
    )
    client_body = "upstreams:\n" + "".join(
        f'  - {{service: orders-{proto}, protocol: {proto}, listen: "127.0.0.1:0"}}\n'
        for proto in servers
    )
    server = SidecarProcess(tmp_path, "srv", server_body + "drain_grace: 5s\n", plane.address)
    client = SidecarProcess(tmp_path, "cli", client_body, plane.address)
    await server.start()
    await client.start()
    # The listeners bound port 0: where they listen is in the sidecars' status.
    listening = {**await server.proxy_addresses(), **await client.proxy_addresses()}
    port = {name: int(address.rsplit(":", 1)[1]) for name, address in listening.items()}
    inbound = {proto: port[f"inbound:orders-{proto}"] for proto in servers}
    upstream = {proto: port[f"orders-{proto}"] for proto in servers}

    async def everything_routable() -> None:
        status = await client.status()
        assert {p["name"]: p["endpoints"] for p in status["proxy"]} == {
            f"orders-{proto}": 1 for proto in servers
        }, status["proxy"]

    await assert_eventually(everything_routable, timeout=15)
    yield Pair(client, server, upstream, inbound, plane.address)
    await client.stop()
    await server.stop()


def proxy_entry(status: dict[str, Any], name: str) -> dict[str, Any]:
    (entry,) = [p for p in status["proxy"] if p["name"] == name]
    return entry


async def test_http_tcp_and_grpc_cross_two_sidecars(
    pair: Pair, servers: dict[str, Backend]
) -> None:
    # http: the backend sees the server sidecar as its peer, and the headers the proxies add
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{pair.ports['http']}/", headers={"X-Request-Id": "r-1"}) as r,
    ):
        assert r.status == 200
        body = json.loads(await r.text())
    headers = {k.lower(): v for k, v in body["headers"]}
    assert body["name"] == "h1"
    assert headers["x-request-id"] == "r-1"
    assert headers["x-forwarded-for"].startswith("127.0.0.1")
    assert headers["x-forwarded-proto"] == "http"

    # tcp: bytes both ways, through both hops
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.ports["tcp"])
    payload = bytes(range(256)) * 4096  # 1 MiB
    writer.write(payload)
    writer.write_eof()
    echoed = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    assert echoed == payload

    # grpc: a stub generated from a proto the project does not own
    async with grpc.aio.insecure_channel(f"127.0.0.1:{pair.ports['grpc']}") as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="g1"), timeout=5
        )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING

    # both hops counted what they carried
    client_status = await pair.client.status()
    server_status = await pair.server.status()
    for proto in ("http", "tcp", "grpc"):
        assert proxy_entry(client_status, f"orders-{proto}")["stats"]["requests"] >= 1
        inbound = proxy_entry(server_status, f"inbound:orders-{proto}")
        assert inbound["stats"]["requests"] >= 1, inbound
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://{pair.client.admin}/metrics") as r,
    ):
        metrics = await r.text()
    for proto in ("http", "tcp", "grpc"):
        labels = f'listener="orders-{proto}",protocol="{proto}"'
        assert f"eco_sidecar_proxy_requests_total{{{labels}}}" in metrics
        assert f"eco_sidecar_proxy_upstream_seconds_count{{{labels}}}" in metrics
    responses = [line for line in metrics.splitlines() if "proxy_responses_total{" in line]
    assert any('listener="orders-http"' in r and 'code="2xx"' in r for r in responses), responses

    # the registry has the app's port, and the inbound listener's port in the metadata
    async with AsyncClient(pair.plane) as client:
        for proto, backend in servers.items():
            (instance,) = (await client.get_service(f"orders-{proto}")).instances
            assert instance.port == backend.port
            assert instance.metadata["eco.inbound.port"] == str(pair.inbound[proto])


async def test_a_stopping_server_sidecar_finishes_requests_in_flight(pair: Pair) -> None:
    url = f"http://127.0.0.1:{pair.ports['http']}"
    async with aiohttp.ClientSession() as http:
        slow = asyncio.create_task(_get(http, f"{url}/slow?ms=1500"))

        async def in_flight() -> None:  # at the server sidecar's inbound listener
            status = await pair.server.status()
            inbound = proxy_entry(status, "inbound:orders-http")
            assert inbound["circuit"]["requests"] == 1, inbound

        await assert_eventually(in_flight)
        await pair.server.stop()  # SIGTERM: deregister, then drain with a 5 s grace
        status, text = await slow
        assert (status, text) == (200, "h1"), "the request in flight was cut"

        async def refused() -> None:
            status, text = await _get(http, f"{url}/")
            assert status == 503, (status, text)
            assert "orders-http" in text

        # once the deregistration reaches the client sidecar, it has nothing to route to
        await assert_eventually(refused, timeout=10)

    with socket.socket() as s:  # and the server sidecar's inbound listener is closed
        s.settimeout(2)
        assert s.connect_ex(("127.0.0.1", pair.inbound["http"])) != 0


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=10)) as r:
        return r.status, await r.text()
