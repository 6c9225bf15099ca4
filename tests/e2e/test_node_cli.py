"""`eco node list` and `eco wait` against a real control plane and a scripted sidecar."""

from __future__ import annotations

import asyncio
import json
import subprocess

import grpc
from ecosystem.v1 import agent_pb2 as apb
from ecosystem.v1 import agent_pb2_grpc

from tests.harness.controlplane import ECO, ControlPlaneProcess


async def eco(plane: ControlPlaneProcess, *args: str) -> subprocess.CompletedProcess[str]:
    proc = await asyncio.create_subprocess_exec(
        str(ECO),
        "--server",
        plane.address,
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


async def test_node_list_and_wait_follow_what_sidecars_applied(
    sqlite_plane: ControlPlaneProcess,
) -> None:
    listed = await eco(sqlite_plane, "node", "list")
    assert listed.returncode == 0 and "no sidecars" in listed.stdout

    async with grpc.aio.insecure_channel(sqlite_plane.address) as channel:
        call = agent_pb2_grpc.AgentServiceStub(channel).Connect()
        await call.write(
            apb.ConnectRequest(hello=apb.Hello(node=apb.Node(id="edge-1", zone="eu-1a")))
        )
        assert (await call.read()).WhichOneof("message") == "welcome"
        await call.write(
            apb.ConnectRequest(subscribe=apb.Subscribe(services=[apb.ServiceRef(name="orders")]))
        )
        first = (await call.read()).update
        await call.write(apb.ConnectRequest(ack=apb.Ack(version=first.version, nonce=first.nonce)))

        registered = await eco(
            sqlite_plane,
            "service", "register", "orders", "--address", "10.0.0.1", "--port", "80", "-o", "json",
        )  # fmt: skip
        assert registered.returncode == 0, registered.stderr
        revision = json.loads(registered.stdout)["mod_revision"]
        update = (await call.read()).update
        assert update.version >= revision

        # Not acknowledged yet: wait times out naming the sidecar, exit 1.
        waited = await eco(sqlite_plane, "wait", "--revision", str(revision), "--timeout", "0.5")
        assert waited.returncode == 1
        assert "edge-1" in waited.stdout and "not applied" in waited.stdout

        nodes = json.loads((await eco(sqlite_plane, "node", "list", "-o", "json")).stdout)
        (node,) = nodes["nodes"]
        assert (node["id"], node["state"], node["connected"]) == ("edge-1", "STALE", True)
        assert node["subscriptions"] == ["default/orders"]

        await call.write(
            apb.ConnectRequest(ack=apb.Ack(version=update.version, nonce=update.nonce))
        )
        done = await eco(sqlite_plane, "wait", "--revision", str(revision), "-o", "json")
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout) == {
            "revision": revision,
            "applied": True,
            "affected": 1,
            "pending_count": 0,
            "pending": [],
        }
        table = (await eco(sqlite_plane, "node", "list")).stdout
        assert "edge-1" in table and "SYNCED" in table
        call.cancel()

    async def disconnected() -> None:
        nodes = json.loads((await eco(sqlite_plane, "node", "list", "-o", "json")).stdout)
        assert nodes["nodes"][0]["state"] == "DISCONNECTED"

    from tests.util import assert_eventually

    await assert_eventually(disconnected, timeout=10, interval=0.2)


async def test_wait_rejects_a_bad_revision(sqlite_plane: ControlPlaneProcess) -> None:
    bad = await eco(sqlite_plane, "wait", "--revision", "0")
    assert bad.returncode == 2 and "--revision" in bad.stderr


async def test_node_list_shows_xds_clients_and_a_nack_with_its_resource_and_error(
    sqlite_plane: ControlPlaneProcess,
) -> None:
    from controlplane.xds import ENDPOINTS
    from tests.integration.test_xds import Ads

    listed = json.loads((await eco(sqlite_plane, "node", "list", "-o", "json")).stdout)
    assert listed["xds_clients"] == [] and "xds_error" not in listed

    async with grpc.aio.insecure_channel(sqlite_plane.address) as channel:
        # A proxyless client's stream, spoken by hand: it rejects what it is sent.
        ads = Ads(channel, node="web-1", agent="gRPC Go")
        await ads.ask(ENDPOINTS, ("orders.default",))
        response = await ads.next()
        await ads.ask(
            ENDPOINTS, ("orders.default",), answering=response, error="priority 0 is empty"
        )

        async def shown() -> None:
            table = (await eco(sqlite_plane, "node", "list")).stdout
            assert "no sidecars have connected" in table
            row = next(line for line in table.splitlines() if line.startswith("web-1"))
            assert "proxyless" in row and "NACKED" in row, table
            assert "ClusterLoadAssignment orders.default: priority 0 is empty" in row, table

        from tests.util import assert_eventually

        await assert_eventually(shown, timeout=10, interval=0.2)
        listed = json.loads((await eco(sqlite_plane, "node", "list", "-o", "json")).stdout)
        (client,) = listed["xds_clients"]
        assert (client["node"], client["kind"], client["state"]) == ("web-1", "proxyless", "NACKED")
        await ads.close()
