"""The sidecar's relay straight to NATS: a real nats-server, a real control plane
on it (``--bus nats://…``) and real sidecars in this process, used through the
SDK's BusClient as applications would.

The control plane names NATS in each sidecar's session; the relays then
publish and subscribe on NATS themselves, and the control plane sees none of
the messages (it can even be stopped while they flow).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import sdk
from bus import BusUnavailableError, OutgoingMessage, SubscriptionSpec
from bus.nats import NatsBroker
from controlplane import ControlPlane, ControlPlaneConfig
from sidecar.app import Sidecar
from sidecar.config import SidecarConfig
from sidecar.relay import QueuedPublishAck, RelayBroker
from tests.harness.nats import NatsServer
from tests.harness.ports import free_port
from tests.util import assert_eventually

WAIT = 10.0


def plane_config(bus_url: str, **fields: Any) -> ControlPlaneConfig:
    return ControlPlaneConfig(
        listen="127.0.0.1:0",
        admin_listen=None,
        store_url="memory://",
        bus_url=bus_url,
        grace=1.0,
        drain_delay=0,
        **fields,
    )


@pytest.fixture
async def plane(nats: NatsServer) -> AsyncIterator[ControlPlane]:
    async with ControlPlane(plane_config(nats.url)) as cp:
        yield cp


def sidecar_config(tmp_path: Path, node: str, cp: str) -> SidecarConfig:
    return SidecarConfig.model_validate(
        {
            "node": {"id": node},
            "controlplane": {"addresses": [cp]},
            "data_dir": str(tmp_path / node),
            "local_api": "127.0.0.1:0",
            "admin": "127.0.0.1:0",
        }
    )


def on_nats(sidecar: Sidecar) -> None:
    assert sidecar.relay.route == "nats" and sidecar.relay.connected, sidecar.relay.status()


async def test_the_session_names_nats_and_messages_no_longer_pass_through_the_control_plane(
    tmp_path: Path, nats: NatsServer
) -> None:
    plane = ControlPlane(plane_config(nats.url))
    await plane.start()
    try:
        async with (
            Sidecar(sidecar_config(tmp_path, "a", plane.address)) as a,
            Sidecar(sidecar_config(tmp_path, "b", plane.address)) as b,
        ):
            await assert_eventually(lambda: on_nats(a), timeout=WAIT)
            await assert_eventually(lambda: on_nats(b), timeout=WAIT)
            assert a.status()["bus"]["broker"] == nats.url
            async with (
                sdk.BusClient(a.local_api_address) as app_a,
                sdk.BusClient(b.local_api_address) as app_b,
                app_b.subscribe("greetings.>") as inbox,
            ):
                await app_a.add_stream("JOBS", ["jobs.>"])
                stored = await app_a.publish("jobs.resize", "j1", id="j1")
                assert (stored.stream, stored.sequence) == ("JOBS", 1)
                await app_a.publish("greetings.hi", "one")
                async with asyncio.timeout(WAIT):
                    assert (await anext(inbox)).text == "one"
                # Neither the subscription nor the publishes reached the control plane.
                assert plane.messaging is not None
                assert plane.messaging.subscription_count == 0

                # The control plane goes away; the messages keep flowing over NATS.
                await plane.stop()
                await app_a.publish("greetings.hi", "two")
                async with asyncio.timeout(WAIT):
                    assert (await anext(inbox)).text == "two"
                async with app_b.subscribe("jobs.>", durable="worker") as jobs:
                    async with asyncio.timeout(WAIT):
                        job = await anext(jobs)
                    assert (job.id, job.text, job.sequence) == ("j1", "j1", 1)
                    assert await job.ack()
                assert not a.connected and a.relay.connected
    finally:
        await plane.stop()


async def test_with_sidecar_bus_controlplane_the_relay_stays_on_the_control_plane(
    tmp_path: Path, nats: NatsServer
) -> None:
    config = plane_config(nats.url, sidecar_bus_url="controlplane")
    async with (
        ControlPlane(config) as plane,
        Sidecar(sidecar_config(tmp_path, "a", plane.address)) as a,
        sdk.BusClient(a.local_api_address) as app,
    ):
        await assert_eventually(lambda: _connected(a), timeout=WAIT)
        async with app.subscribe("x.>") as sub:
            await app.publish("x.y", "through the control plane")
            async with asyncio.timeout(WAIT):
                assert (await anext(sub)).text == "through the control plane"
            assert plane.messaging is not None and plane.messaging.subscription_count == 1
        assert a.relay.route == "controlplane"


def _connected(sidecar: Sidecar) -> None:
    assert sidecar.connected


async def test_a_broker_change_in_a_later_session_is_followed(
    tmp_path: Path, nats: NatsServer
) -> None:
    """The control plane restarts on the same address with the embedded broker:
    the sidecar's next session says so, and its relay moves back to it."""
    first = ControlPlane(plane_config(nats.url))
    await first.start()
    address = first.address
    async with Sidecar(sidecar_config(tmp_path, "a", address)) as a:
        try:
            await assert_eventually(lambda: on_nats(a), timeout=WAIT)
        finally:
            await first.stop()
        config = plane_config("embedded://").model_copy(update={"listen": address})
        async with ControlPlane(config) as second:
            await assert_eventually(lambda: _route(a.relay, "controlplane"), timeout=2 * WAIT)
            assert second.broker is not None
            watcher = await second.broker.subscribe(SubscriptionSpec("back.>"))
            async with sdk.BusClient(a.local_api_address) as app:
                await app.publish("back.home", "through the control plane")
            async with asyncio.timeout(WAIT):
                assert (await anext(aiter(watcher))).data == b"through the control plane"
            await watcher.close()


async def test_a_relay_moves_to_nats_keeping_order_and_its_subscriptions(
    tmp_path: Path, plane: ControlPlane, nats: NatsServer
) -> None:
    """Started on the control plane (as before the first Welcome), then told to
    use NATS in the middle of a run of publishes."""
    relay = RelayBroker([plane.address], tmp_path, broker_url="")
    await relay.start()
    outside = NatsBroker([nats.url])
    await outside.start()
    try:
        await relay.add_stream(sdk.StreamConfig(name="RUN", subjects=("run.>",)))
        watcher = await relay.subscribe(SubscriptionSpec("news.>"))
        acks = []
        for i in range(200):
            if i == 100:
                relay.use_broker(nats.url)
            acks.append(await relay.publish(OutgoingMessage("run.x", str(i).encode())))
        await assert_eventually(lambda: _route(relay, "nats"), timeout=WAIT)
        assert [a.sequence for a in acks if a.stream] == sorted(
            a.sequence for a in acks if a.stream
        )
        # The core subscription moved over: a message published on NATS by someone
        # else reaches it.
        await assert_eventually(lambda: _resubscribed(relay), timeout=WAIT)
        await outside.publish(OutgoingMessage("news.today", b"moved"))
        async with asyncio.timeout(WAIT):
            assert (await anext(aiter(watcher))).data == b"moved"
        # Every publish stored once, in publish order.
        seen = []
        reader = await outside.subscribe(SubscriptionSpec("run.>", durable="audit"))
        async with asyncio.timeout(WAIT):
            async for delivery in reader:
                seen.append(int(delivery.data))
                if len(seen) == 200:
                    break
        await reader.close()
        assert seen == list(range(200))
        (info,) = await outside.streams()
        assert info.messages == 200
        await watcher.close()
    finally:
        await outside.close()
        await relay.close()


def _route(relay: RelayBroker, route: str) -> None:
    assert relay.route == route and relay.connected, relay.status()


def _resubscribed(relay: RelayBroker) -> None:
    assert relay.upstream_subscriptions == 1


async def test_durable_publishes_while_nats_is_down_survive_a_restart_and_arrive_in_order(
    tmp_path: Path, nats: NatsServer
) -> None:
    relay = RelayBroker(["127.0.0.1:1"], tmp_path, broker_url=nats.url)
    await relay.start()
    await assert_eventually(lambda: _route(relay, "nats"), timeout=WAIT)
    await relay.add_stream(sdk.StreamConfig(name="AUDIT", subjects=("audit.>",)))
    nats.halt(kill=True)
    await assert_eventually(lambda: _disconnected(relay), timeout=WAIT)
    for i in range(5):
        queued = await relay.publish(OutgoingMessage(f"audit.e{i}", str(i).encode()))
        assert isinstance(queued, QueuedPublishAck)
    assert relay.buffered == 5
    assert "NATS" in relay.status()["last_error"]
    await relay.close()  # a sidecar stopped while NATS is away

    nats.resume()
    # Started again with no broker given and no control plane to ask: it
    # remembers NATS, and flushes what it kept on disk.
    again = RelayBroker(["127.0.0.1:1"], tmp_path)
    await again.start()
    try:
        assert again.route == "nats"
        await assert_eventually(lambda: _route(again, "nats"), timeout=WAIT)
        assert again.buffered == 0
        reader = await again.subscribe(SubscriptionSpec("audit.>", durable="check"))
        seen = []
        async with asyncio.timeout(WAIT):
            async for delivery in reader:
                seen.append((delivery.subject, delivery.data, delivery.id.startswith("relay-")))
                if len(seen) == 5:
                    break
        await reader.close()
        assert seen == [(f"audit.e{i}", str(i).encode(), True) for i in range(5)]
    finally:
        await again.close()


def _disconnected(relay: RelayBroker) -> None:
    assert not relay.connected


async def test_an_unreachable_nats_buffers_publishes_and_says_so(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    relay = RelayBroker(["127.0.0.1:1"], tmp_path, broker_url=url)
    await relay.start()
    try:
        queued = await relay.publish(OutgoingMessage("a.b", b"x"))
        assert isinstance(queued, QueuedPublishAck)
        with pytest.raises(BusUnavailableError, match="NATS"):
            await relay.streams()
        status = relay.status()
        assert (status["route"], status["broker"], status["connected"]) == ("nats", url, False)
        assert "cannot connect to NATS" in status["last_error"]
    finally:
        await relay.close()
