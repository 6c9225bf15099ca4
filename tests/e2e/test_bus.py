"""The bus end to end: `eco controlplane`, an `eco sidecar` relaying the bus on
its local API with an HTTP bridge, and the `eco bus` CLI on either."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.harness.controlplane import ECO, ControlPlaneProcess
from tests.harness.sidecar import SidecarProcess

pytestmark = pytest.mark.e2e


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    plane = ControlPlaneProcess(f"sqlite://{tmp_path}/cp.db", tmp_path / "controlplane.log")
    plane.start()
    yield plane
    plane.stop()


async def eco(*args: str, timeout: float = 20) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(ECO), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_bus_through_a_sidecar_relay_its_bridge_and_the_cli(
    tmp_path: Path, plane: ControlPlaneProcess
) -> None:
    sidecar = SidecarProcess(
        tmp_path,
        "relay",
        'bridges: [{protocol: http, listen: "127.0.0.1:0", '
        'allowed_origins: ["https://app.example"]}]\n',
        plane.address,
    )
    await sidecar.start()
    (bridge,) = await sidecar.bridge_addresses()
    try:
        # the bridge follows its configuration: a page of another origin is refused
        async with aiohttp.ClientSession() as http:
            for origin, status in (("https://evil.example", 403), ("https://app.example", 202)):
                async with http.post(
                    f"http://{bridge}/v1/publish/probe",
                    data=b"{}",
                    headers={"Origin": origin, "Content-Type": "application/json"},
                ) as r:
                    assert r.status == status, (origin, await r.text())
        # a durable stream, made through the sidecar's local API
        code, out, err = await eco(
            "--server",
            sidecar.local_api,
            "bus",
            "stream",
            "add",
            "orders",
            "--subjects",
            "orders.>",
        )
        assert code == 0, err
        # published over the HTTP bridge, and with the CLI straight to the control plane
        async with aiohttp.ClientSession() as http, http.post(
            f"http://{bridge}/v1/publish/orders.eu", data=b'{"id": 1}',
            headers={"Eco-Msg-Id": "m-1"},
        ) as r:  # fmt: skip
            assert r.status == 202, await r.text()
            assert (await r.json())["sequence"] == 1
        code, out, err = await eco("--server", plane.address, "bus", "publish", "orders.us", "two")
        assert code == 0, err
        # consumed durably through the sidecar
        code, out, err = await eco(
            "--server", sidecar.local_api, "bus", "subscribe", "orders.>",
            "--durable", "worker", "--count", "2",
        )  # fmt: skip
        assert code == 0, err
        lines = [json.loads(line) for line in out.splitlines()]
        assert [(m["subject"], m["data"], m["sequence"]) for m in lines] == [
            ("orders.eu", '{"id": 1}', 1),
            ("orders.us", "two", 2),
        ]
        code, out, err = await eco("--server", plane.address, "bus", "streams", "-o", "json")
        assert code == 0, err
        (stream,) = json.loads(out)["streams"]
        assert stream["messages"] == 2
        # nobody answers: one clear line, exit 1
        code, out, err = await eco("--server", sidecar.local_api, "bus", "request", "nobody", "x")
        assert code == 1 and "no responders" in err, (code, out, err)
    finally:
        await sidecar.stop()
