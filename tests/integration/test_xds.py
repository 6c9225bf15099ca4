"""xDS against real processes: a control plane on 127.0.0.1:0, two (then
three) grpcio backends registered in its registry, and a grpcio client in a
subprocess that dials ``xds:///orders`` with nothing but a bootstrap file
(GRPC_XDS_BOOTSTRAP, written by ``eco xds bootstrap``): gRPC's own xDS
resolver and balancer, no SDK code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import grpc.aio
import pytest
from ecosystem.v1 import registry_pb2 as pb
from ecosystem.v1 import registry_pb2_grpc as pb_grpc
from envoy.admin.v3 import config_dump_shared_pb2 as dump_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc

from controlplane import ControlPlane, ControlPlaneConfig
from controlplane.xds import CLUSTER, ENDPOINTS, LISTENER, ROUTE
from tests.harness.certs import TestCA
from tests.harness.controlplane import ECO
from tests.util import assert_eventually

pytestmark = pytest.mark.timeout(120)

METHOD = "/demo.Echo/Who"

#: The client: one call every 20 ms, one JSON line per call on stdout.
CLIENT = """
import json, sys, time
from concurrent import futures
import grpc, grpc_csds
# What this client's xDS client received, over CSDS (grpcio-csds).
debug = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
grpc_csds.add_csds_servicer(debug)
print(json.dumps({"csds": debug.add_insecure_port("127.0.0.1:0")}), flush=True)
debug.start()
channel = grpc.insecure_channel(sys.argv[1])
who = channel.unary_unary(sys.argv[2])
while True:
    try:
        print(json.dumps({"ok": who(b"", timeout=2).decode()}), flush=True)
    except grpc.RpcError as err:
        print(json.dumps({"error": err.code().name, "details": err.details()}), flush=True)
    time.sleep(0.02)
"""


@dataclass
class Backend:
    name: str
    server: grpc.aio.Server
    port: int


async def start_backend(name: str) -> Backend:
    """A grpcio server whose one method answers with its name."""

    async def who(_request: bytes, _context: Any) -> bytes:
        return name.encode()

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "demo.Echo", {"Who": grpc.unary_unary_rpc_method_handler(who)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return Backend(name, server, port)


@dataclass
class Client:
    """The xDS client process and the replies it has printed."""

    proc: asyncio.subprocess.Process
    lines: list[dict[str, str]] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None
    #: Where the client serves CSDS (what its xDS client received).
    csds_port: int = 0

    async def read(self) -> None:
        assert self.proc.stdout is not None
        first = json.loads(await self.proc.stdout.readline())
        self.csds_port = first["csds"]
        async for raw in self.proc.stdout:
            self.lines.append(json.loads(raw))

    async def received(self) -> dict[tuple[str, str], str]:
        """What the client's own CSDS says it holds: (type, name) → status."""
        await assert_eventually(lambda: _at_least([1] if self.csds_port else [], 1))
        return await csds_statuses(f"127.0.0.1:{self.csds_port}")

    def recent(self, count: int) -> list[dict[str, str]]:
        return self.lines[-count:]

    async def replies_from(self, names: set[str], *, timeout: float = 15.0) -> Counter[str]:
        """Waits until the next 40 calls all succeed and reach exactly ``names``."""

        async def check() -> Counter[str]:
            start = len(self.lines)
            await assert_eventually(lambda: _at_least(self.lines, start + 40), timeout=5.0)
            window = self.lines[start : start + 40]
            errors = [line for line in window if "ok" not in line]
            assert not errors, errors[:3]
            seen = Counter(line["ok"] for line in window)
            assert set(seen) == names, seen
            return seen

        return await assert_eventually(check, timeout=timeout, interval=0.1)


def _at_least(lines: list[Any], count: int) -> None:
    assert len(lines) >= count, f"{len(lines)} replies so far"


@contextlib.asynccontextmanager
async def xds_client(bootstrap: Path, target: str, log: Path) -> AsyncIterator[Client]:
    env = {**os.environ, "GRPC_XDS_BOOTSTRAP": str(bootstrap)}
    with log.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CLIENT,
            target,
            METHOD,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
        )
    client = Client(proc)
    client.reader = asyncio.create_task(client.read())
    try:
        yield client
    finally:
        proc.kill()
        await proc.wait()
        client.reader.cancel()
        await asyncio.wait({client.reader})


def write_bootstrap(
    tmp_path: Path, server: str, node: str, ca: Path | None = None, *more: str
) -> Path:
    """``eco xds bootstrap``, the command a user runs (``more``: its options)."""
    out = tmp_path / f"{node}.json"
    trust = ["--ca-file", str(ca)] if ca is not None else []
    command = ["xds", "bootstrap", "--node", node, "--server", server, "--out", str(out)]
    subprocess.run([str(ECO), *trust, *command, *more], check=True, capture_output=True)
    return out


def instance(
    backend: Backend,
    health: int = pb.HEALTH_STATUS_PASSING,
    zone: str = "z1",
    region: str = "r1",
    **extra: Any,
) -> pb.Instance:
    return pb.Instance(
        id=backend.name,
        service="orders",
        address="127.0.0.1",
        port=backend.port,
        zone=zone,
        region=region,
        health=health,  # type: ignore[arg-type]
        liveness=pb.LIVENESS_PERSISTENT,
        **extra,
    )


def config(**overrides: Any) -> ControlPlaneConfig:
    values: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:0",
        "store_url": "memory://",
        "grace": 0.5,
        "drain_delay": 0,
    }
    values.update(overrides)
    return ControlPlaneConfig(**values)


@pytest.fixture
async def plane() -> AsyncIterator[ControlPlane]:
    async with ControlPlane(config()) as cp:
        yield cp


@pytest.fixture
async def backends() -> AsyncIterator[list[Backend]]:
    started = [await start_backend(name) for name in ("a", "b", "c")]
    yield started
    for backend in started:
        await backend.server.stop(0)


async def register(address: str, *instances: pb.Instance, ca: Path | None = None) -> None:
    if ca is None:
        opened = grpc.aio.insecure_channel(address)
    else:
        root = await asyncio.to_thread(ca.read_bytes)
        credentials = grpc.ssl_channel_credentials(root)
        opened = grpc.aio.secure_channel(address, credentials)
    async with opened as channel:
        stub = pb_grpc.RegistryServiceStub(channel)
        for inst in instances:
            await stub.RegisterInstance(pb.RegisterInstanceRequest(instance=inst), timeout=5)


async def csds_statuses(address: str, node: str = "") -> dict[tuple[str, str], str]:
    """FetchClientStatus at ``address``: (short type, name) → client status."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)
        request = csds_pb2.ClientStatusRequest()
        if node:
            request.node_matchers.add().node_id.exact = node
        response = await stub.FetchClientStatus(request, timeout=5)
    return {
        (entry.type_url.rsplit(".", 1)[-1], entry.name): dump_pb2.ClientResourceStatus.Name(
            entry.client_status
        )
        + (f": {entry.error_state.details}" if entry.error_state.details else "")
        for config in response.config
        for entry in config.generic_xds_configs
    }


async def xds_status(plane: ControlPlane) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{plane.admin_address}/xds") as response,
    ):
        assert response.status == 200
        return dict(await response.json())


async def test_calls_are_balanced_follow_health_and_new_instances(
    plane: ControlPlane, backends: list[Backend], tmp_path: Path
) -> None:
    a, b, c = backends
    await register(plane.address, instance(a), instance(b))
    bootstrap = write_bootstrap(tmp_path, plane.address, "orders-client-1")
    async with xds_client(bootstrap, "xds:///orders", tmp_path / "client.log") as client:
        seen = await client.replies_from({"a", "b"}, timeout=30)
        # Round robin: both get a fair share.
        assert min(seen.values()) >= 15, seen

        await register(plane.address, instance(a, pb.HEALTH_STATUS_CRITICAL))
        await client.replies_from({"b"})

        await register(plane.address, instance(c))
        await client.replies_from({"b", "c"})

        await register(plane.address, instance(a))
        await client.replies_from({"a", "b", "c"})

        # Warning instances get calls only when no better one is left.
        await register(plane.address, instance(a, pb.HEALTH_STATUS_WARNING))
        await client.replies_from({"b", "c"})
        await register(
            plane.address,
            instance(b, pb.HEALTH_STATUS_CRITICAL),
            instance(c, pb.HEALTH_STATUS_CRITICAL),
        )
        await client.replies_from({"a"})
        await register(plane.address, instance(b), instance(c))

        expected = {
            ("Listener", "orders"): "ACKED",
            ("RouteConfiguration", "orders.default"): "ACKED",
            ("Cluster", "orders.default"): "ACKED",
            ("ClusterLoadAssignment", "orders.default"): "ACKED",
        }
        # The client's CSDS and the control plane's agree on what it holds.
        assert await client.received() == expected
        assert await csds_statuses(plane.address, "orders-client-1") == expected

    status = await xds_status(plane)
    [node] = [n for n in status["nodes"] if n["node"] == "orders-client-1"]
    assert node["kind"] == "proxyless"
    assert node["types"]["ClusterLoadAssignment"]["state"] == "ACKED", node
    assert node["types"]["Listener"]["subscribed"] == ["orders"]


async def test_a_client_reaches_a_tls_control_plane_with_its_bootstrap(
    backends: list[Backend], tmp_path: Path
) -> None:
    test_ca = TestCA.create(tmp_path)
    cert, key = test_ca.issue_server("cp")
    async with ControlPlane(config(tls_cert=str(cert), tls_key=str(key))) as plane:
        a, b, _ = backends
        await register(plane.address, instance(a), instance(b), ca=test_ca.cert_file)
        bootstrap = write_bootstrap(tmp_path, plane.address, "tls-client", ca=test_ca.cert_file)
        async with xds_client(bootstrap, "xds:///orders", tmp_path / "client.log") as client:
            await client.replies_from({"a", "b"}, timeout=30)


async def test_a_client_with_a_zone_prefers_it_and_fails_over_outward(
    plane: ControlPlane, backends: list[Backend], tmp_path: Path
) -> None:
    a, b, c = backends
    await register(
        plane.address, instance(a, zone="z1"), instance(b, zone="z2"), instance(c, region="r2")
    )
    bootstrap = write_bootstrap(
        tmp_path, plane.address, "zoned", None, "--region", "r1", "--zone", "z1"
    )
    async with xds_client(bootstrap, "xds:///orders", tmp_path / "client.log") as client:
        await client.replies_from({"a"}, timeout=30)
        await register(plane.address, instance(a, pb.HEALTH_STATUS_CRITICAL, zone="z1"))
        await client.replies_from({"b"})  # the same region before another
        await register(plane.address, instance(b, pb.HEALTH_STATUS_CRITICAL, zone="z2"))
        await client.replies_from({"c"})
        await register(plane.address, instance(a, zone="z1"))
        await client.replies_from({"a"})


# -- the protocol, spoken by a raw ADS stream ----------------------------------


class Ads:
    """One ADS stream from the test: requests written, responses read."""

    def __init__(
        self, channel: grpc.aio.Channel, node: str = "raw-1", agent: str = "gRPC Python"
    ) -> None:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self.call = stub.StreamAggregatedResources()
        self.node = node
        self.agent = agent
        self._pending: asyncio.Task[Any] | None = None

    async def ask(
        self,
        type_url: str,
        names: tuple[str, ...] = (),
        *,
        answering: discovery_pb2.DiscoveryResponse | None = None,
        error: str = "",
    ) -> None:
        request = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=names)
        request.node.id = self.node
        request.node.user_agent_name = self.agent
        if answering is not None:
            request.response_nonce = answering.nonce
            request.version_info = answering.version_info
        if error:
            request.error_detail.code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
            request.error_detail.message = error
        await self.call.write(request)

    def _read(self) -> asyncio.Task[Any]:
        # One read at a time, kept across a wait that timed out: the message
        # it brings is the next one.
        if self._pending is None:
            self._pending = asyncio.ensure_future(self.call.read())
        return self._pending

    async def next(self, timeout: float = 5.0) -> discovery_pb2.DiscoveryResponse:
        read = self._read()
        done, _ = await asyncio.wait({read}, timeout=timeout)
        assert done, f"no response within {timeout}s"
        self._pending = None
        response = read.result()
        assert response is not grpc.aio.EOF, await self.call.details()
        return response  # type: ignore[no-any-return]

    async def nothing_for(self, seconds: float) -> None:
        done, _ = await asyncio.wait({self._read()}, timeout=seconds)
        assert not done, "a response came"

    async def close(self) -> None:
        self.call.cancel()
        if self._pending is not None:
            await asyncio.wait({self._pending})
            if not self._pending.cancelled():
                self._pending.exception()  # retrieved: a cancelled call's error


def _unpack(response: discovery_pb2.DiscoveryResponse, kind: type[Any]) -> dict[str, Any]:
    found = {}
    for packed in response.resources:
        message = kind()
        assert packed.Unpack(message), packed.type_url
        found[
            message.cluster_name if kind is endpoint_pb2.ClusterLoadAssignment else message.name
        ] = message
    return found


@pytest.fixture
async def channel(plane: ControlPlane) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(plane.address) as ch:
        yield ch


async def test_resources_carry_health_weight_locality_and_the_registry_revision(
    plane: ControlPlane, channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    def at(name: str, port: int, zone: str, **extra: Any) -> pb.Instance:
        return pb.Instance(
            id=name,
            service="orders",
            namespace="shop",
            address="10.0.0.1",
            port=port,
            region="eu",
            zone=zone,
            liveness=pb.LIVENESS_PERSISTENT,
            **extra,
        )

    await register(
        plane.address,
        at("p", 1001, "eu-1", health=pb.HEALTH_STATUS_PASSING, weight=3),
        at("w", 1002, "eu-1", health=pb.HEALTH_STATUS_WARNING),
        at("c", 1003, "eu-2", health=pb.HEALTH_STATUS_CRITICAL, weight=2),
        at("u", 1004, "eu-2", health=pb.HEALTH_STATUS_UNKNOWN, metadata={"lb_policy": "ring_hash"}),
        # A second registration of p's address: one endpoint, not two.
        at("p2", 1001, "eu-1", health=pb.HEALTH_STATUS_CRITICAL),
        # A host name: EDS carries IP addresses only.
        pb.Instance(
            id="h",
            service="orders",
            namespace="shop",
            address="orders.internal",
            port=1,
            liveness=pb.LIVENESS_PERSISTENT,
        ),
    )
    ads = Ads(channel)
    await ads.ask(LISTENER, ("orders.shop",))
    lds = await ads.next()
    assert lds.version_info == str(plane.view.revision)
    [listener] = _unpack(lds, listener_pb2.Listener).values()
    manager = hcm_pb2.HttpConnectionManager()
    assert listener.api_listener.api_listener.Unpack(manager)
    assert manager.rds.route_config_name == "orders.shop"
    assert manager.rds.config_source.HasField("ads")

    await ads.ask(LISTENER, ("orders.shop",), answering=lds)
    # A target that names no service gets nothing, and the log says why.
    caplog.set_level("WARNING", logger="controlplane.xds")
    await ads.ask(LISTENER, ("orders.shop", "Orders"), answering=lds)
    lds = await ads.next()
    assert set(_unpack(lds, listener_pb2.Listener)) == {"orders.shop"}
    assert any(
        "raw-1 dials xds:///Orders, which names no service" in r.getMessage()
        for r in caplog.records
    )
    await ads.ask(LISTENER, ("orders.shop", "Orders"), answering=lds)
    await ads.ask(ROUTE, ("orders.shop",))
    rds = await ads.next()
    [route] = _unpack(rds, route_pb2.RouteConfiguration).values()
    assert route.virtual_hosts[0].routes[0].route.cluster == "orders.shop"

    await ads.ask(ROUTE, ("orders.shop",), answering=rds)
    await ads.ask(CLUSTER, ())  # a wildcard: every cluster
    cds = await ads.next()
    clusters = _unpack(cds, cluster_pb2.Cluster)
    assert set(clusters) == {"orders.shop"}
    assert clusters["orders.shop"].type == cluster_pb2.Cluster.EDS
    # Most instances that name a policy name ring hash.
    assert clusters["orders.shop"].lb_policy == cluster_pb2.Cluster.RING_HASH

    await ads.ask(CLUSTER, (), answering=cds)
    await ads.ask(ENDPOINTS, ("orders.shop",))
    eds = await ads.next()
    [assignment] = _unpack(eds, endpoint_pb2.ClusterLoadAssignment).values()
    by_zone = {group.locality.zone: group for group in assignment.endpoints}
    assert set(by_zone) == {"eu-1", "eu-2"}
    health = {
        lb.endpoint.hostname: (
            health_check_pb2.HealthStatus.Name(lb.health_status),
            lb.load_balancing_weight.value,
        )
        for group in assignment.endpoints
        for lb in group.lb_endpoints
    }
    assert health == {
        "p": ("HEALTHY", 3),
        "w": ("DEGRADED", 1),
        "c": ("UNHEALTHY", 2),
        "u": ("UNKNOWN", 1),
    }
    # Every locality has a weight: the sum of its endpoints'.
    assert by_zone["eu-1"].load_balancing_weight.value == 4
    assert by_zone["eu-2"].load_balancing_weight.value == 3
    assert by_zone["eu-1"].locality.region == "eu"


async def test_a_nack_is_recorded_and_logged_and_nothing_is_resent_until_a_change(
    plane: ControlPlane, channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    a = pb.Instance(
        id="a", service="orders", address="10.0.0.1", port=80, liveness=pb.LIVENESS_PERSISTENT
    )
    await register(plane.address, a)
    ads = Ads(channel, node="picky-1")
    await ads.ask(ENDPOINTS, ("orders.default",))
    first = await ads.next()
    await ads.ask(ENDPOINTS, ("orders.default",), answering=first)

    a.port = 81
    await register(plane.address, a)
    second = await ads.next()
    assert int(second.version_info) > int(first.version_info)
    # The client refuses it: it keeps the first version.
    caplog.set_level("WARNING", logger="controlplane.xds")
    refused = discovery_pb2.DiscoveryResponse(nonce=second.nonce, version_info=first.version_info)
    await ads.ask(ENDPOINTS, ("orders.default",), answering=refused, error="port 81 is cursed")
    await ads.nothing_for(0.5)  # not resent: the client would only refuse it again

    status = await xds_status(plane)
    [node] = [n for n in status["nodes"] if n["node"] == "picky-1"]
    eds = node["types"]["ClusterLoadAssignment"]
    assert eds["state"] == "NACKED"
    assert eds["acked_version"] == first.version_info
    assert eds["last_nack"]["version"] == second.version_info
    assert eds["last_nack"]["resources"] == ["orders.default"]
    assert eds["last_nack"]["error"] == "port 81 is cursed"
    assert await csds_statuses(plane.address, "picky-1") == {
        ("ClusterLoadAssignment", "orders.default"): "NACKED: port 81 is cursed"
    }
    shown = await asyncio.to_thread(
        subprocess.run,
        [str(ECO), "--server", plane.address, "xds", "status", "--node", "picky-1"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout.splitlines()[1].split(None, 5) == [
        "picky-1",
        "ClusterLoadAssignment",
        "orders.default",
        second.version_info,
        "NACKED",
        "port 81 is cursed",
    ], shown.stdout
    assert any(
        "picky-1 rejected ClusterLoadAssignment" in r.getMessage()
        and "orders.default" in r.getMessage()
        and "port 81 is cursed" in r.getMessage()
        for r in caplog.records
    )

    # A stale answer (an old nonce) changes nothing.
    await ads.ask(ENDPOINTS, ("orders.default",), answering=first)
    await ads.nothing_for(0.3)

    # The next change is sent, and its ACK clears the state.
    a.port = 82
    await register(plane.address, a)
    third = await ads.next()
    await ads.ask(ENDPOINTS, ("orders.default",), answering=third)

    async def acked() -> None:
        status = await xds_status(plane)
        [node] = [n for n in status["nodes"] if n["node"] == "picky-1"]
        assert node["types"]["ClusterLoadAssignment"]["state"] == "ACKED"
        assert node["types"]["ClusterLoadAssignment"]["acked_version"] == third.version_info

    await assert_eventually(acked)
    await ads.close()


async def test_one_change_is_built_once_and_sent_only_to_whom_it_concerns(
    plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    inst = {
        svc: pb.Instance(
            id="i", service=svc, address="10.0.0.2", port=80, liveness=pb.LIVENESS_PERSISTENT
        )
        for svc in ("orders", "users")
    }
    await register(plane.address, *inst.values())
    streams = []
    for i in range(6):
        ads = Ads(channel, node=f"n{i}")
        service = "orders" if i % 2 == 0 else "users"
        await ads.ask(ENDPOINTS, (f"{service}.default",))
        await ads.ask(ENDPOINTS, (f"{service}.default",), answering=await ads.next())
        streams.append((service, ads))
    assert plane.xds is not None
    builds = plane.xds.builds

    inst["orders"].health = pb.HEALTH_STATUS_CRITICAL
    await register(plane.address, inst["orders"])
    for service, ads in streams:
        if service == "orders":
            [cla] = _unpack(await ads.next(), endpoint_pb2.ClusterLoadAssignment).values()
            status = cla.endpoints[0].lb_endpoints[0].health_status
            assert status == health_check_pb2.UNHEALTHY
        else:
            await ads.nothing_for(0.2)
    assert plane.xds.builds == builds + 1
    for _, ads in streams:
        await ads.close()


async def test_nothing_is_built_while_no_client_listens_and_the_first_gets_every_change(
    plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    assert plane.xds is not None
    builds = plane.xds.builds
    instances = [
        pb.Instance(
            id=f"i{i}",
            service="orders",
            address=f"10.0.0.{i}",
            port=80,
            liveness=pb.LIVENESS_PERSISTENT,
        )
        for i in (1, 2, 3)
    ]
    await register(plane.address, *instances)
    instances[1].health = pb.HEALTH_STATUS_CRITICAL
    await register(plane.address, instances[1])
    await asyncio.sleep(0.2)  # the cache has seen the changes, and built nothing
    assert plane.xds.builds == builds

    ads = Ads(channel, node="late")
    await ads.ask(ENDPOINTS, ("orders.default",))
    first = await ads.next()
    [cla] = _unpack(first, endpoint_pb2.ClusterLoadAssignment).values()
    statuses = {
        ep.endpoint.address.socket_address.address: ep.health_status
        for locality in cla.endpoints
        for ep in locality.lb_endpoints
    }
    assert statuses == {
        "10.0.0.1": health_check_pb2.HEALTHY,
        "10.0.0.2": health_check_pb2.UNHEALTHY,
        "10.0.0.3": health_check_pb2.HEALTHY,
    }
    # With a client listening, a change is built and sent at once.
    await ads.ask(ENDPOINTS, ("orders.default",), answering=first)
    instances[1].health = pb.HEALTH_STATUS_PASSING
    await register(plane.address, instances[1])
    [cla] = _unpack(await ads.next(), endpoint_pb2.ClusterLoadAssignment).values()
    assert all(
        ep.health_status == health_check_pb2.HEALTHY
        for locality in cla.endpoints
        for ep in locality.lb_endpoints
    )
    await ads.close()


async def test_streams_owed_the_same_response_share_it_and_each_node_s_ack_counts_alone(
    plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    """A response is encoded once per content and snapshot and its nonce
    names that content, so clients subscribed alike are sent the same
    bytes; each node's ACK (or its silence) is still its own."""
    inst = {
        svc: pb.Instance(
            id="i", service=svc, address="10.0.0.4", port=80, liveness=pb.LIVENESS_PERSISTENT
        )
        for svc in ("orders", "users")
    }
    await register(plane.address, *inst.values())
    alike = [Ads(channel, node=f"alike-{i}") for i in range(2)]
    both = Ads(channel, node="both")
    streams: list[tuple[Ads, tuple[str, ...]]] = [
        (alike[0], ("orders.default",)),
        (alike[1], ("orders.default",)),
        (both, ("orders.default", "users.default")),
    ]
    for ads, names in streams:
        await ads.ask(ENDPOINTS, names)
        await ads.ask(ENDPOINTS, names, answering=await ads.next())
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    deltas = [stub.DeltaAggregatedResources() for _ in range(3)]
    subscribed: list[tuple[str, ...]] = [
        ("orders.default",),
        ("orders.default",),
        ("orders.default", "users.default"),
    ]
    for i, (call, names) in enumerate(zip(deltas, subscribed, strict=True)):
        await call.write(_delta(f"delta-{i}", subscribe=names))
        await call.write(_delta(nonce=(await asyncio.wait_for(call.read(), 5)).nonce))

    inst["orders"].health = pb.HEALTH_STATUS_CRITICAL
    await register(plane.address, inst["orders"])
    first, second, wider = [await ads.next() for ads in (*alike, both)]
    assert first.SerializeToString() == second.SerializeToString()
    assert set(_unpack(wider, endpoint_pb2.ClusterLoadAssignment)) == {
        "orders.default",
        "users.default",
    }
    assert wider.nonce != first.nonce and wider.version_info == first.version_info
    # Only the orders endpoints changed: every delta stream is owed the same one.
    changes = [await asyncio.wait_for(call.read(), 5) for call in deltas]
    assert len({change.SerializeToString() for change in changes}) == 1
    assert [r.name for r in changes[0].resources] == ["orders.default"]

    # One of the alike clients ACKs, the other stays silent; the delta
    # streams one NACKs, two ACK: the shared nonce names each node's own.
    await alike[0].ask(ENDPOINTS, ("orders.default",), answering=first)
    await both.ask(ENDPOINTS, ("orders.default", "users.default"), answering=wider)
    await deltas[0].write(_delta(nonce=changes[0].nonce, error="not this one"))
    for call, change in zip(deltas[1:], changes[1:], strict=True):
        await call.write(_delta(nonce=change.nonce))

    async def states() -> dict[str, str]:
        found = {}
        for node in ("alike-0", "alike-1", "both", "delta-0", "delta-1", "delta-2"):
            statuses = await csds_statuses(plane.address, node)
            found[node] = statuses[("ClusterLoadAssignment", "orders.default")]
        return found

    async def settled() -> None:
        assert await states() == {
            "alike-0": "ACKED",
            "alike-1": "REQUESTED",
            "both": "ACKED",
            "delta-0": "NACKED: not this one",
            "delta-1": "ACKED",
            "delta-2": "ACKED",
        }

    await assert_eventually(settled)
    for ads in (*alike, both):
        await ads.close()
    for call in deltas:
        call.cancel()


async def test_a_stream_without_a_node_id_gets_a_clear_status(
    channel: grpc.aio.Channel,
) -> None:
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    for call, request in (
        (stub.StreamAggregatedResources(), discovery_pb2.DiscoveryRequest(type_url=CLUSTER)),
        (stub.DeltaAggregatedResources(), discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER)),
    ):
        await call.write(request)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call.read()
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "node.id" in (refused.value.details() or "")


def _delta(
    node: str = "",
    subscribe: tuple[str, ...] = (),
    unsubscribe: tuple[str, ...] = (),
    nonce: str = "",
    error: str = "",
    initial: dict[str, str] | None = None,
) -> discovery_pb2.DeltaDiscoveryRequest:
    request = discovery_pb2.DeltaDiscoveryRequest(
        type_url=ENDPOINTS,
        resource_names_subscribe=subscribe,
        resource_names_unsubscribe=unsubscribe,
        response_nonce=nonce,
        initial_resource_versions=initial or {},
    )
    request.node.id = node
    if error:
        request.error_detail.message = error
    return request


async def test_delta_sends_what_changed_removals_and_skips_what_a_client_holds(
    plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    inst = {
        svc: pb.Instance(
            id="i", service=svc, address="10.0.0.3", port=80, liveness=pb.LIVENESS_PERSISTENT
        )
        for svc in ("orders", "users")
    }
    await register(plane.address, *inst.values())
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    call = stub.DeltaAggregatedResources()
    await call.write(_delta("delta-1", subscribe=("orders.default", "users.default")))
    first = await asyncio.wait_for(call.read(), 5)
    versions = {r.name: r.version for r in first.resources}
    assert set(versions) == {"orders.default", "users.default"}
    assert first.system_version_info == str(plane.view.revision)
    await call.write(_delta(nonce=first.nonce))

    # One service changes: only its resource comes.
    inst["orders"].port = 81
    await register(plane.address, inst["orders"])
    second = await asyncio.wait_for(call.read(), 5)
    assert [r.name for r in second.resources] == ["orders.default"]
    cla = endpoint_pb2.ClusterLoadAssignment()
    assert second.resources[0].resource.Unpack(cla)
    assert cla.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value == 81
    await call.write(_delta(nonce=second.nonce, error="no port 81 here"))

    # A wildcard subscription of clusters, on another stream.
    clusters = stub.DeltaAggregatedResources()
    wildcard = _delta("delta-2")
    wildcard.type_url = CLUSTER
    await clusters.write(wildcard)
    listed = await asyncio.wait_for(clusters.read(), 5)
    assert {r.name for r in listed.resources} == {"orders.default", "users.default"}

    # A service without instances: named, it is an empty assignment (calls
    # fail UNAVAILABLE, not "does not exist"); in a wildcard, a removal.
    async with grpc.aio.insecure_channel(plane.address) as registry_channel:
        registry = pb_grpc.RegistryServiceStub(registry_channel)
        await registry.DeregisterInstance(
            pb.DeregisterInstanceRequest(service="users", id="i"), timeout=5
        )
    third = await asyncio.wait_for(call.read(), 5)
    assert [r.name for r in third.resources] == ["users.default"]
    assert third.resources[0].resource.Unpack(cla) and not cla.endpoints
    gone = await asyncio.wait_for(clusters.read(), 5)
    assert list(gone.removed_resources) == ["users.default"]
    assert not gone.resources
    clusters.cancel()
    status = await xds_status(plane)
    [node] = [n for n in status["nodes"] if n["node"] == "delta-1"]
    nack = node["types"]["ClusterLoadAssignment"]["last_nack"]
    assert (nack["version"], nack["resources"], nack["error"]) == (
        second.system_version_info,
        ["orders.default"],
        "no port 81 here",
    )
    call.cancel()

    # A client that comes back holding the current version is not sent it again.
    again = stub.DeltaAggregatedResources()
    current = second.resources[0].version
    await again.write(
        _delta("delta-1", subscribe=("orders.default",), initial={"orders.default": current})
    )
    empty = await asyncio.wait_for(again.read(), 5)
    assert not empty.resources and not empty.removed_resources
    again.cancel()


async def test_streams_end_unavailable_when_the_control_plane_stops(
    plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    ads = Ads(channel)
    await ads.ask(CLUSTER)
    await ads.next()
    await plane.stop()
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await ads.call.read()
    assert ended.value.code() is grpc.StatusCode.UNAVAILABLE


def test_bootstrap_files_and_their_errors(tmp_path: Path) -> None:
    def eco(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(ECO), *args], capture_output=True, text=True, check=False)

    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here: the gRPC client reads it\n")
    out = tmp_path / "boot.json"
    done = eco(
        "--server", "cp1:7400,cp2:7400", "--ca-file", str(ca),
        "xds", "bootstrap", "--node", "web-1", "--zone", "eu-1a", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"GRPC_XDS_BOOTSTRAP={out}" in done.stderr
    document = json.loads(out.read_text())
    assert [s["server_uri"] for s in document["xds_servers"]] == ["cp1:7400", "cp2:7400"]
    assert document["xds_servers"][0]["channel_creds"] == [
        {"type": "tls", "config": {"ca_certificate_file": str(ca)}}
    ]
    assert document["xds_servers"][0]["server_features"] == ["xds_v3"]
    assert document["node"] == {"id": "web-1", "locality": {"zone": "eu-1a"}}

    plain = json.loads(eco("xds", "bootstrap", "--node", "n", "--server", "h:1").stdout)
    assert plain["xds_servers"][0]["channel_creds"] == [{"type": "insecure"}]

    bad = eco("xds", "bootstrap", "--node", "no spaces", "--out", str(tmp_path / "bad.json"))
    assert bad.returncode == 2
    assert "--node" in bad.stderr and "letters, digits" in bad.stderr
    assert not (tmp_path / "bad.json").exists()

    nowhere = eco("xds", "bootstrap", "--node", "n", "--out", str(tmp_path / "no" / "b.json"))
    assert nowhere.returncode == 2
    assert "--out" in nowhere.stderr and "does not exist" in nowhere.stderr

    wrong = eco("xds", "bootstrap", "--node", "n", "--server", "nohostport")
    assert wrong.returncode == 2 and "--server" in wrong.stderr


async def test_csds_filters_nodes_and_refuses_a_bad_pattern(
    plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    streams = []
    for node in ("web-1", "web-2", "batch-1"):
        ads = Ads(channel, node=node)
        await ads.ask(CLUSTER)
        await ads.next()
        streams.append(ads)
    stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)

    async def nodes(**pattern: Any) -> list[str]:
        request = csds_pb2.ClientStatusRequest(exclude_resource_contents=True)
        matcher = request.node_matchers.add().node_id
        for kind, value in pattern.items():
            if kind == "safe_regex":
                matcher.safe_regex.regex = value
            else:
                setattr(matcher, kind, value)
        response = await stub.FetchClientStatus(request, timeout=5)
        return sorted(config.node.id for config in response.config)

    assert await nodes(prefix="web-") == ["web-1", "web-2"]
    assert await nodes(suffix="-1") == ["batch-1", "web-1"]
    assert await nodes(safe_regex="b.*") == ["batch-1"]
    assert await nodes(exact="nobody") == []
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await nodes(safe_regex="(")
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "node_matchers[0].node_id.safe_regex.regex" in (refused.value.details() or "")

    # The streaming form answers each request in turn.
    stream = stub.StreamClientStatus()
    for prefix, expected in (("web-", 2), ("batch-", 1)):
        request = csds_pb2.ClientStatusRequest()
        request.node_matchers.add().node_id.prefix = prefix
        await stream.write(request)
        answer = await asyncio.wait_for(stream.read(), 5)
        assert len(answer.config) == expected
    stream.cancel()
    for ads in streams:
        await ads.close()


async def test_an_envoy_gets_every_cluster_and_no_api_listeners(
    plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    await register(
        plane.address,
        *(
            pb.Instance(
                id="i", service=svc, address="10.0.0.4", port=80, liveness=pb.LIVENESS_PERSISTENT
            )
            for svc in ("orders", "users")
        ),
    )
    envoy = Ads(channel, node="edge-1", agent="envoy")
    await envoy.ask(CLUSTER)
    clusters = await envoy.next()
    assert set(_unpack(clusters, cluster_pb2.Cluster)) == {"orders.default", "users.default"}
    await envoy.ask(CLUSTER, answering=clusters)
    await envoy.ask(LISTENER)
    listeners = await envoy.next()
    assert not listeners.resources  # its socket listeners are not served yet
    status = await xds_status(plane)
    [node] = [n for n in status["nodes"] if n["node"] == "edge-1"]
    assert node["kind"] == "envoy"
    assert node["types"]["Listener"]["subscribed"] == ["*"]
    await envoy.close()
