"""Scheduled sync jobs end to end: an ``eco controlplane`` process, an ``eco
sidecar`` on node nas-1, and ``eco sync job add`` of a file:// → file:// job
every second on that node. Its runs happen on the sidecar, show in ``eco sync
runs``, publish started/completed on the bus and count in the sidecar's
/metrics; a control plane killed and restarted while runs are due does not
lose the job: the run due meanwhile happens once it is back, and a run
scheduled while the sidecar was away is claimed after the control plane
restarted."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import aiohttp
import pytest

from sdk.bus import BusClient
from tests.e2e.test_cli import Eco
from tests.harness.controlplane import ControlPlaneProcess
from tests.harness.sidecar import SidecarProcess
from tests.util import assert_eventually

pytestmark = pytest.mark.e2e


def completed(eco: Eco, name: str) -> list[dict[str, object]]:
    runs = eco.json("sync", "runs", name)["runs"]
    return [r for r in runs if r["status"] == "completed"]


async def test_a_job_runs_on_its_node(sqlite_plane: ControlPlaneProcess, tmp_path: Path) -> None:
    source, destination = tmp_path / "photos", tmp_path / "backup"
    source.mkdir()
    destination.mkdir()
    (source / "a.jpg").write_bytes(b"a" * 1000)
    (source / "b c.jpg").write_bytes(b"b" * 2000)
    eco = Eco(sqlite_plane.address)
    sidecar = SidecarProcess(tmp_path, "nas-1", "", sqlite_plane.address)
    await sidecar.start()
    try:
        async with (
            BusClient(sqlite_plane.address, timeout=5) as bus,
            bus.subscribe("eco.sync.photos.*") as events,
        ):
            out = eco.ok(
                "sync", "job", "add", "photos", source.as_uri(), destination.as_uri(),
                "--every", "1s", "--on", "nas-1", "--mode", "mirror",
            )  # fmt: skip
            assert "created sync job photos (every 1s on node nas-1)" in out
            seen: list[tuple[str, dict[str, object]]] = []
            async with asyncio.timeout(20):
                async for message in events:
                    seen.append((message.subject, json.loads(message.data)))
                    if message.subject.endswith(".completed"):
                        break
        subjects = [subject for subject, _ in seen]
        assert subjects[:2] == ["eco.sync.photos.started", "eco.sync.photos.completed"], seen
        done = seen[1][1]
        assert done["node"] == "nas-1" and done["status"] == "completed"
        assert done["counters"]["files_copied"] == 2  # type: ignore[index]
        assert sorted(p.name for p in destination.iterdir()) == ["a.jpg", "b c.jpg"]

        runs = completed(eco, "photos")
        first = runs[-1]
        assert first["node"] == "nas-1" and first["bytes_copied"] == 3000
        report = first["report"]
        assert isinstance(report, dict) and report["status"] == "completed"
        table = eco.ok("sync", "runs", "photos")
        assert table.splitlines()[0].split()[:3] == ["RUN", "STATUS", "NODE"]
        assert "completed  nas-1" in table
        listed = eco.ok("sync", "job", "list")
        assert "photos" in listed and "every 1s" in listed and "nas-1" in listed

        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://{sidecar.admin}/metrics") as answer,
        ):
            metrics = await answer.text()
        assert 'eco_sidecar_sync_runs_total{job="photos",status="completed"}' in metrics
        assert 'eco_sidecar_sync_bytes_total{job="photos"} 3000.0' in metrics
        status = (await sidecar.status())["sync_runs"]
        assert status["following"] is True and status["finished"] >= 1

        # The control plane dies with runs due; the sidecar keeps its state.
        before = max(int(r["number"]) for r in eco.json("sync", "runs", "photos")["runs"])
        (source / "late.jpg").write_bytes(b"l" * 500)
        sqlite_plane.kill(signal.SIGKILL)
        await asyncio.sleep(2.5)  # slots pass while no replica schedules
        sqlite_plane.start()

        def caught_up() -> None:
            after = [r for r in completed(eco, "photos") if int(r["number"]) > before]
            assert after, eco.json("sync", "runs", "photos")
            assert (destination / "late.jpg").exists()

        await assert_eventually(caught_up, timeout=30)
        # Missed slots were run once: the first run scheduled after the
        # restart covers the slots that passed, and run numbers have no gaps.
        history = eco.json("sync", "runs", "photos", "--limit", "1000")["runs"]
        numbers = [int(r["number"]) for r in history]
        assert numbers == list(range(max(numbers), 0, -1))
        assert any(int(r["slots"]) >= 2 for r in history if int(r["number"]) > before)

        # A run scheduled while its sidecar is away, then the control plane
        # restarted: the same run is claimed and done when both are back.
        await sidecar.stop()

        def waiting() -> None:
            runs = eco.json("sync", "runs", "photos")["runs"]
            assert runs[0]["status"] == "pending", runs[0]

        await assert_eventually(waiting, timeout=20)
        scheduled = int(eco.json("sync", "runs", "photos")["runs"][0]["number"])
        sqlite_plane.kill(signal.SIGKILL)
        sqlite_plane.start()
        await sidecar.start()

        def done_after_restart() -> None:
            runs = {int(r["number"]): r for r in eco.json("sync", "runs", "photos")["runs"]}
            assert runs[scheduled]["status"] == "completed", runs[scheduled]

        await assert_eventually(done_after_restart, timeout=30)
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://{sqlite_plane.admin_address}/metrics") as answer,
        ):
            plane_metrics = await answer.text()
        assert "eco_controlplane_sync_jobs 1.0" in plane_metrics
        assert "eco_controlplane_sync_runs_scheduled_total" in plane_metrics

        eco.ok("sync", "job", "pause", "photos")
        assert json.loads(eco.ok("-o", "json", "sync", "job", "get", "photos"))["paused"] is True
        eco.ok("sync", "job", "delete", "photos")
        missing = eco("sync", "runs", "photos")
        assert missing.returncode == 1 and "no sync job 'photos'" in missing.stderr
    finally:
        await sidecar.stop()


def test_refusals_and_replace(sqlite_plane: ControlPlaneProcess) -> None:
    eco = Eco(sqlite_plane.address)
    refused = eco(
        "sync", "job", "add", "bad.name", "ftp://x/y", "file:///b", "--cron", "99 * * * *",
        "--on", "nas-1",
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert "job.name:" in refused.stderr and "job.source:" in refused.stderr
    assert "job.cron:" in refused.stderr
    both = eco("sync", "job", "add", "x", "file:///a", "file:///b", "--on", "n")
    assert both.returncode == 2 and "exactly one of --every and --cron" in both.stderr
    assert eco.ok("sync", "job", "list").strip() == "no sync jobs"
    add = ("sync", "job", "add", "docs", "file:///a", "file:///b", "--on", "n1")
    eco.ok(*add, "--every", "1h")
    again = eco(*add, "--every", "1h")
    assert again.returncode == 1 and "sync job 'docs' exists" in again.stderr
    replaced = eco.ok(*add, "--cron", "0 2 * * *", "--replace")
    assert "replaced sync job docs (cron 0 2 * * * on node n1)" in replaced
    shown = json.loads(eco.ok("-o", "json", "sync", "job", "get", "docs"))
    assert (shown["cron"], shown["every_seconds"]) == ("0 2 * * *", None)
    missing = eco("sync", "job", "add", "nope", "file:///a", "file:///b", "--on", "n1",
                  "--every", "1m", "--replace")  # fmt: skip
    assert missing.returncode == 1 and "no sync job 'nope'" in missing.stderr
