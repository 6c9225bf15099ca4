"""Certificate renewal under traffic, with real processes: the mesh of
test_mtls.py (an `eco controlplane` with a CA, a client sidecar with HTTP, TCP
and gRPC upstreams, a server sidecar with inbound listeners in front of real
backends), its workload certificates lasting 3 s, so that each sidecar renews
every one of them every 2 s. Traffic runs through both hops the whole time,
on new connections and on connections held open, until every certificate has
been renewed twice: not one request fails, and the certificate the inbound
listener presents changes under it."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from cryptography import x509

from tests.e2e.test_mtls import (  # noqa: F401 - fixtures: the mesh, over this module's plane
    Mesh,
    backends,
    ca_dir,
    ca_plane,
    echo,
    health,
    mesh,
)
from tests.harness.controlplane import ControlPlaneProcess
from tests.harness.sidecar import SidecarProcess
from tests.util import assert_eventually

pytestmark = pytest.mark.e2e

#: Seconds a workload certificate lasts; renewed at two thirds of it.
TTL = 3


@pytest.fixture
def plane(tmp_path: Path, ca_dir: Path) -> Iterator[ControlPlaneProcess]:  # noqa: F811
    with ca_plane(tmp_path, ca_dir, "--workload-cert-ttl", str(TTL)) as process:
        yield process


async def expiries(sidecar: SidecarProcess) -> dict[str, str]:
    """Each certificate's expiry in the sidecar's /status, by identity."""
    status = await sidecar.status()
    return {c["identity"]: c["expires_at"] for c in status["identity"]["certificates"]}


async def presented_serial(port: int, ca: Path) -> int:
    """The serial of the certificate the inbound listener on ``port`` presents
    (read from the handshake; the listener then refuses this client, which has
    no certificate of its own)."""
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number
    finally:
        writer.close()


class Traffic:
    """Loops of calls through the mesh, counting what succeeded and what failed."""

    def __init__(self) -> None:
        self.ok: Counter[str] = Counter()
        self.failures: list[str] = []
        self.running = True

    async def loop(self, kind: str, call: Callable[[], Awaitable[None]], pause: float) -> None:
        while self.running:
            try:
                async with asyncio.timeout(5):
                    await call()
            except (AssertionError, OSError, TimeoutError, asyncio.IncompleteReadError,
                    aiohttp.ClientError, grpc.aio.AioRpcError) as exc:  # fmt: skip
                self.failures.append(f"{kind}: {exc!r}")
            else:
                self.ok[kind] += 1
            await asyncio.sleep(pause)


async def test_certificates_renewed_under_traffic_fail_no_request(
    mesh: Mesh,  # noqa: F811
    ca_dir: Path,  # noqa: F811
) -> None:
    ca = ca_dir / "ca.pem"
    traffic = Traffic()
    http_url = f"http://127.0.0.1:{mesh.ports['orders-http']}/"
    tcp_port = mesh.ports["orders-tcp"]
    serials = {await presented_serial(mesh.ports["inbound:orders-http"], ca)}
    seen: dict[str, dict[str, set[str]]] = {"client": {}, "server": {}}

    async def record() -> None:
        for name, sidecar in (("client", mesh.client), ("server", mesh.server)):
            for identity, expiry in (await expiries(sidecar)).items():
                seen[name].setdefault(identity, set()).add(expiry)

    await record()
    # One connection from the test to the client sidecar held open throughout,
    # through both hops: TCP is spliced, so this is one mTLS connection between
    # the sidecars, made with the certificates of the start.
    held_reader, held_writer = await asyncio.open_connection("127.0.0.1", tcp_port)

    async def held_tcp() -> None:
        assert await echo(held_reader, held_writer, b"held" * 64) == b"held" * 64

    async def new_tcp() -> None:  # a new mTLS connection between the sidecars each time
        reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port)
        try:
            assert await echo(reader, writer, b"new") == b"new"
        finally:
            writer.close()

    keep_alive = aiohttp.ClientSession()
    fresh = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
    wide = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{mesh.ports['orders-grpc']}")

    async def http(session: aiohttp.ClientSession) -> None:
        async with session.get(http_url) as response:
            await response.read()
            assert response.status == 200, (response.status, dict(response.headers))

    bursts = 0

    async def http_burst() -> None:
        # One more concurrent request each time than the client sidecar's pool has
        # connections for: it dials the server sidecar again, with the
        # certificate of the moment, while its older connections stay in use.
        nonlocal bursts
        bursts += 1
        await asyncio.gather(*(http(wide) for _ in range(2 + bursts)))

    async def grpc_call() -> None:
        assert await health(channel) is grpc.StatusCode.OK

    loops = [
        traffic.loop("tcp held open", held_tcp, 0.05),
        traffic.loop("tcp new connection", new_tcp, 0.01),
        traffic.loop("http keep-alive", lambda: http(keep_alive), 0.0),
        traffic.loop("http keep-alive", lambda: http(keep_alive), 0.0),
        traffic.loop("http new connection", lambda: http(fresh), 0.01),
        traffic.loop("http new pooled connections", http_burst, 0.2),
        traffic.loop("grpc", grpc_call, 0.01),
    ]
    tasks = [asyncio.create_task(loop) for loop in loops]
    started = time.monotonic()
    try:

        async def renewed_twice() -> None:
            await record()
            serials.add(await presented_serial(mesh.ports["inbound:orders-http"], ca))
            for name, identities in seen.items():
                for identity, expiries_seen in identities.items():
                    # The first expiry, then two renewals' (each 2 s later).
                    assert len(expiries_seen) >= 3, (name, identity, expiries_seen)

        await assert_eventually(renewed_twice, timeout=4 * TTL, interval=0.2)
    finally:
        traffic.running = False
        await asyncio.gather(*tasks)
        held_writer.close()
        await keep_alive.close()
        await fresh.close()
        await wide.close()
        await channel.close()
    elapsed = time.monotonic() - started

    assert traffic.failures == [], traffic.failures[:10]
    assert bursts >= 10 and traffic.ok["http new pooled connections"] == bursts, traffic.ok
    assert len(serials) >= 3, serials  # the inbound listener presented each new certificate
    # Every kind of call kept going for the whole time (not a handful at the start).
    for kind in ("tcp held open", "tcp new connection", "http keep-alive",
                 "http new connection", "grpc"):  # fmt: skip
        assert traffic.ok[kind] >= 5 * elapsed, (kind, traffic.ok, elapsed)
    for sidecar in (mesh.client, mesh.server):
        status = await sidecar.status()
        # Nothing failed and was hidden by a retry, at either hop.
        for listener in status["proxy"]:
            assert listener["stats"]["errors"] == {}, listener
            assert listener["stats"]["retries"] == 0, listener
        assert status["identity"]["renewals"] >= 2 * len(status["identity"]["certificates"])
        assert all(not c["error"] for c in status["identity"]["certificates"]), status
        assert "not issued" not in sidecar.log()
