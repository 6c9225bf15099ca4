"""The sidecar's relay straight to NATS, end to end: a real nats-server,
`eco controlplane --bus nats://…` and `eco sidecar` processes, applications
using the SDK's BusClient on the sidecars' local APIs.

What the relay promises with NATS as the broker (docs/bus.md, "Through the
sidecar"), as with the control plane:

- kill -9 of nats-server mid-stream: every acknowledged publish is stored
  once at its sequence (or was queued by the sidecar and stored later),
  nothing is lost, redeliveries are marked, per-subject order holds;
- kill -9 of the sidecar: what it acknowledged as queued on its disk is
  published after its restart, even with the control plane gone (it
  remembers where NATS is);
- messages between two sidecars' applications do not pass through the
  control plane: it can be stopped while they flow.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import sdk
from tests.e2e.test_bus_faults import RETRY, crash_mid_stream
from tests.harness.controlplane import ControlPlaneProcess
from tests.harness.nats import NatsServer
from tests.harness.sidecar import SidecarProcess
from tests.util import assert_eventually

pytestmark = pytest.mark.e2e

WAIT = 20.0


@pytest.fixture
def plane(tmp_path: Path, nats: NatsServer) -> Iterator[ControlPlaneProcess]:
    plane = ControlPlaneProcess(
        "memory://", tmp_path / "controlplane.log", extra_args=("--bus", nats.url)
    )
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture
async def sidecar(tmp_path: Path, plane: ControlPlaneProcess) -> AsyncIterator[SidecarProcess]:
    sidecar = SidecarProcess(tmp_path, "relay", "", plane.address)
    await sidecar.start()
    try:
        await assert_eventually(lambda: relays_to_nats(sidecar), timeout=WAIT)
        yield sidecar
    finally:
        await sidecar.stop()


async def relays_to_nats(sidecar: SidecarProcess) -> dict[str, Any]:
    bus: dict[str, Any] = (await sidecar.status())["bus"]
    assert bus["route"] == "nats" and bus["connected"], bus
    return bus


class NatsKiller:
    """nats-server as the process `crash_mid_stream` kills and starts again."""

    def __init__(self, server: NatsServer) -> None:
        self.server = server

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert sig == signal.SIGKILL
        self.server.halt(kill=True)
        return -signal.SIGKILL

    def start(self) -> None:
        self.server.resume()


async def test_kill_9_of_nats_server_mid_stream_through_a_sidecar(
    nats: NatsServer, sidecar: SidecarProcess
) -> None:
    ledger = await crash_mid_stream(
        NatsKiller(nats),  # type: ignore[arg-type]
        sidecar.local_api,
        per_publisher=250,
        kills=1,
    )
    # The relay queued what NATS could not take (on its disk: the subjects are
    # durable), and kept answering the application.
    assert ledger.queued > 0
    assert ledger.publish_failures == 0
    assert len(ledger.held) == 1


async def test_kill_9_of_the_sidecar_keeps_what_it_queued_and_remembers_nats(
    tmp_path: Path, nats: NatsServer, plane: ControlPlaneProcess, sidecar: SidecarProcess
) -> None:
    async with sdk.BusClient(sidecar.local_api, retry=RETRY) as app:
        await app.add_stream("LEDGER", ["ledger.>"])
        stored = await app.publish("ledger.a", "0", id="m0")
        assert (stored.stream, stored.sequence) == ("LEDGER", 1)
        nats.halt(kill=True)
        for i in range(1, 21):
            queued = await app.publish(f"ledger.{'ab'[i % 2]}", str(i), id=f"m{i}")
            assert (queued.stream, queued.sequence) == ("", 0), queued
    sidecar.kill(signal.SIGKILL)
    assert await sidecar.wait() == -signal.SIGKILL
    # The control plane is gone too: the restarted sidecar cannot ask it where
    # the broker is, and relays to the NATS it remembers.
    plane.stop()
    nats.resume()
    await sidecar.start()
    await assert_eventually(lambda: relays_to_nats(sidecar), timeout=WAIT)
    async with sdk.BusClient(sidecar.local_api, retry=RETRY) as app:
        seen: list[tuple[str, str, int]] = []
        async with asyncio.timeout(WAIT), app.subscribe("ledger.>", durable="audit") as sub:
            async for message in sub:
                seen.append((message.id, message.subject, message.sequence))
                assert await message.ack()
                if len(seen) == 21:
                    break
        (info,) = await app.streams()
    assert [mid for mid, _, _ in seen] == [f"m{i}" for i in range(21)]
    assert [seq for _, _, seq in seen] == list(range(1, 22))
    assert info.messages == 21
    assert "flushed" in sidecar.log()


async def test_two_sidecars_apps_talk_over_nats_with_the_control_plane_stopped(
    tmp_path: Path, plane: ControlPlaneProcess, sidecar: SidecarProcess
) -> None:
    other = SidecarProcess(tmp_path, "other", "", plane.address)
    await other.start()
    try:
        await assert_eventually(lambda: relays_to_nats(other), timeout=WAIT)
        async with (
            sdk.BusClient(sidecar.local_api, retry=RETRY) as sender,
            sdk.BusClient(other.local_api, retry=RETRY) as receiver,
            receiver.subscribe("chat.>") as inbox,
            receiver.subscribe("rpc.echo", queue="echo") as echo,
        ):

            async def serve() -> None:
                async for call in echo:
                    await receiver.send(call.reply_to, call.data)

            server = asyncio.create_task(serve())
            try:
                await sender.send("chat.room", "before")
                async with asyncio.timeout(WAIT):
                    assert (await anext(inbox)).text == "before"

                plane.kill(signal.SIGKILL)  # out of the way for good
                for i in range(50):
                    await sender.send("chat.room", f"m{i}")
                async with asyncio.timeout(WAIT):
                    got = [(await anext(inbox)).text for _ in range(50)]
                assert got == [f"m{i}" for i in range(50)]
                reply = await sender.request("rpc.echo", "ping", timeout=5)
                assert reply.text == "ping"
                await sender.add_stream("AFTER", ["after.>"])
                stored = await sender.publish("after.x", "kept")
                assert (stored.stream, stored.sequence) == ("AFTER", 1)
            finally:
                server.cancel()
        for process in (sidecar, other):
            bus = await relays_to_nats(process)
            assert bus["buffered"] == 0
            status = await process.status()
            assert not status["connected"]  # to the control plane: it is gone
    finally:
        await other.stop()
