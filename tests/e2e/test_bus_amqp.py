"""The AMQP bridge end to end: `eco controlplane`, an `eco sidecar` bridging the bus
and a real RabbitMQ both ways, killed (SIGKILL) while messages flow and started again:
no message is lost on either side."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

import sdk
from tests.harness.controlplane import ControlPlaneProcess
from tests.harness.rabbitmq import RabbitMQServer, rabbitmq_fixture  # noqa: F401
from tests.harness.sidecar import SidecarProcess
from tests.util import assert_eventually

pytestmark = pytest.mark.e2e

COUNT = 600
WAIT = 40.0


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    plane = ControlPlaneProcess(f"sqlite://{tmp_path}/cp.db", tmp_path / "controlplane.log")
    plane.start()
    yield plane
    plane.stop()


def bridge_yaml(url: str) -> str:
    return f"""\
bridges:
  - protocol: amqp
    name: e2e
    url: {url}
    exchanges: [{{name: e2e-out, type: fanout}}]
    queues:
      - {{name: e2e-in}}
      - {{name: e2e-out, bindings: [{{exchange: e2e-out}}]}}
    inbound: [{{queue: e2e-in, subject: "amqpin.{{routing_key}}", prefetch: 20}}]
    outbound:
      - {{subject: "amqpout.>", durable: to-rabbit, exchange: e2e-out, ack_wait: 2s}}
"""


def publish_to_rabbitmq(url: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for i in range(COUNT):
            properties = pika.BasicProperties(delivery_mode=2, message_id=f"in-{i}")
            channel.basic_publish("", "e2e-in", b"x", properties, mandatory=True)
    finally:
        connection.close()


def drain(url: str, queue: str) -> set[str]:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    ids = set()
    try:
        channel = connection.channel()
        while True:
            method, properties, _body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return ids
            ids.add(str(properties.message_id))
    finally:
        connection.close()


async def stored(bus: sdk.BusClient, stream: str) -> int:
    return next(s.messages for s in await bus.streams() if s.name == stream)


async def test_a_killed_sidecar_loses_no_message_either_way(
    tmp_path: Path, plane: ControlPlaneProcess, rabbitmq: RabbitMQServer
) -> None:
    async with sdk.BusClient(plane.address) as bus:
        await bus.add_stream("AMQPIN", ["amqpin.>"])
        await bus.add_stream("AMQPOUT", ["amqpout.>"])
        sidecar = SidecarProcess(tmp_path, "bridge", bridge_yaml(rabbitmq.url), plane.address)
        await sidecar.start()
        try:

            async def connected() -> None:
                assert "AMQP bridge e2e connected" in sidecar.log()

            await assert_eventually(connected, timeout=WAIT)

            async def publish_on_the_bus() -> None:
                for i in range(COUNT):
                    await bus.publish("amqpout.x", b"y", id=f"out-{i}")

            publisher = asyncio.create_task(publish_on_the_bus())
            rabbit_publisher = asyncio.create_task(
                asyncio.to_thread(publish_to_rabbitmq, rabbitmq.url)
            )
            try:

                async def flowing() -> None:
                    assert await stored(bus, "AMQPIN") >= 50

                await assert_eventually(flowing, timeout=WAIT, interval=0.01)
                sidecar.kill()
                await sidecar.wait()
                in_at_kill = await stored(bus, "AMQPIN")
                await publisher
                await rabbit_publisher
            finally:
                publisher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await publisher
            await sidecar.start()

            async def all_stored() -> None:
                assert await stored(bus, "AMQPIN") == COUNT

            await assert_eventually(all_stored, timeout=WAIT, interval=0.2)
            assert in_at_kill < COUNT, "killed too late to be mid-flow"

            received: set[str] = set()

            async def all_forwarded() -> None:
                received.update(await asyncio.to_thread(drain, rabbitmq.url, "e2e-out"))
                assert received == {f"out-{i}" for i in range(COUNT)}

            await assert_eventually(all_forwarded, timeout=WAIT, interval=0.2)
        finally:
            await sidecar.stop()
    assert "AMQP bridge e2e connected" in sidecar.log()
