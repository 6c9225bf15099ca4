"""Platforms and the catalog with a real sidecar: an ``eco controlplane``
process and an ``eco sidecar`` on node edge-1 of platform plant-7 with a
health-checked service. ``eco platform get`` shows the node, the service and
its health; a sync job that names two datasets (``--from dataset:orders-eu
--to dataset:orders-us``) runs on the sidecar against the datasets'
locations, and ``eco catalog get`` shows the copy and when it was synced."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.e2e.test_cli import Eco
from tests.harness.controlplane import ControlPlaneProcess
from tests.harness.ports import free_port
from tests.harness.sidecar import SidecarProcess
from tests.util import assert_eventually

pytestmark = pytest.mark.e2e


async def test_platform_get_and_a_dataset_sync_job(
    sqlite_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    eco = Eco(sqlite_plane.address)
    eco.ok("platform", "register", "plant-7", "--kind", "onprem", "--region", "r1")
    eu, us = tmp_path / "orders-eu", tmp_path / "orders-us"
    eu.mkdir()
    us.mkdir()
    (eu / "2026-12-01.csv").write_text("id,total\n1,10\n")
    (eu / "2026-12-02.csv").write_text("id,total\n2,20\n")
    eco.ok("catalog", "add", "orders-eu", "--location", eu.as_uri(), "--platform", "plant-7")
    eco.ok("catalog", "add", "orders-us", "--location", us.as_uri(), "--owner", "team-us")

    # A service whose TCP check passes: something listens on its port.
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    dead = free_port()
    services = (
        "services:\n"
        f"  - {{name: web, address: 127.0.0.1, port: {port},\n"
        f'     checks: [{{tcp: "127.0.0.1:{port}", interval: 200ms}}]}}\n'
        f"  - {{name: db, address: 127.0.0.1, port: {dead},\n"
        f'     checks: [{{tcp: "127.0.0.1:{dead}", interval: 200ms,'
        " failures_before_critical: 1}]}\n"
    )
    sidecar = SidecarProcess(tmp_path, "edge-1", services, sqlite_plane.address, platform="plant-7")
    await sidecar.start()
    try:

        def shown() -> None:
            got = eco.json("platform", "get", "plant-7")
            assert [(n["id"], n["connected"]) for n in got["nodes"]] == [("edge-1", True)], got
            health = {i["service"]: i["health"] for i in got["instances"]}
            assert health == {"db": "critical", "web": "passing"}, got
            counts = {s["name"]: (s["passing"], s["critical"]) for s in got["services"]}
            assert counts == {"db": (0, 1), "web": (1, 0)}

        await assert_eventually(shown, timeout=20)
        table = eco.ok("platform", "get", "plant-7")
        assert "edge-1" in table and "passing" in table and "critical" in table
        refused = eco("platform", "deregister", "plant-7")
        assert refused.returncode == 1 and "1 node(s) (edge-1)" in refused.stderr

        out = eco.ok(
            "sync", "job", "add", "nightly", "--from", "dataset:orders-eu",
            "--to", "dataset:orders-us", "--every", "1s", "--on", "edge-1",
        )  # fmt: skip
        assert "created sync job nightly" in out
        assert eco.json("sync", "job", "get", "nightly")["source"] == "dataset:orders-eu"

        def synced() -> None:
            runs = eco.json("sync", "runs", "nightly")["runs"]
            assert [r for r in runs if r["status"] == "completed"], runs
            assert sorted(p.name for p in us.iterdir()) == ["2026-12-01.csv", "2026-12-02.csv"]

        await assert_eventually(synced, timeout=30)
        copies = eco.json("catalog", "get", "orders-eu")["copies"]
        assert [(c["job"], c["direction"], c["location"], c["dataset"]) for c in copies] == [
            ("nightly", "to", us.as_uri(), "orders-us")
        ]
        assert copies[0]["last_synced_at"] is not None and copies[0]["last_synced_run"] >= 1
        text = eco.ok("catalog", "get", "orders-us")
        assert "COPIES" in text and eu.as_uri() in text and "from" in text

        removal = eco("catalog", "remove", "orders-us")
        assert removal.returncode == 1 and "nightly" in removal.stderr
        unknown = eco("sync", "job", "add", "other", "--from", "dataset:orders-eu",
                      "--to", "dataset:nope", "--every", "1h", "--on", "edge-1")  # fmt: skip
        assert unknown.returncode == 2 and "job.destination" in unknown.stderr
        assert "not in the catalog" in unknown.stderr
    finally:
        await sidecar.stop()
        server.close()
        await server.wait_closed()
