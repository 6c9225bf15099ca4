"""Sync jobs on a platform, and a run across a control plane restart, end to
end: an ``eco controlplane`` process and ``eco sidecar`` processes.

- ``eco sync job add … --on platform:plant-7`` with two sidecars of plant-7
  and one of depot: its runs happen on plant-7's sidecars (``eco sync runs``
  names the node of each), never on depot's; ``eco sync job list`` shows
  ``platform:plant-7``; the platform cannot be deregistered while the job
  runs on it; with one of plant-7's sidecars stopped, the other runs the job.
- A run in progress on a sidecar while the control plane is killed (-9) and
  started again: the run finishes, its end is reported to the restarted
  control plane, and the next runs happen.
- ``eco apply`` of a SyncJob document with ``on_platform``: applied after
  its platform, read back unchanged, exported as written.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from tests.e2e.test_cli import Eco
from tests.harness.controlplane import ControlPlaneProcess
from tests.harness.sidecar import SidecarProcess
from tests.util import assert_eventually

pytestmark = pytest.mark.e2e


def runs_of(eco: Eco, name: str, status: str | None = None) -> list[dict[str, object]]:
    runs: list[dict[str, object]] = eco.json("sync", "runs", name, "--limit", "1000")["runs"]
    return [r for r in runs if status is None or r["status"] == status]


async def test_a_platform_job_runs_on_the_platforms_sidecars(
    sqlite_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    eco = Eco(sqlite_plane.address)
    eco.ok("platform", "register", "plant-7", "--kind", "onprem")
    eco.ok("platform", "register", "depot", "--kind", "onprem")
    source, destination = tmp_path / "logs", tmp_path / "archive"
    source.mkdir()
    destination.mkdir()
    (source / "app.log").write_text("started\n" * 100)
    sidecars = {
        name: SidecarProcess(tmp_path, name, "", sqlite_plane.address, platform=platform)
        for name, platform in (("edge-1", "plant-7"), ("edge-2", "plant-7"), ("store-1", "depot"))
    }
    await asyncio.gather(*(sidecar.start() for sidecar in sidecars.values()))
    try:
        unknown = eco(
            "sync", "job", "add", "logs", source.as_uri(), destination.as_uri(),
            "--every", "1s", "--on", "platform:nowhere",
        )  # fmt: skip
        assert unknown.returncode == 2 and "job.on_platform" in unknown.stderr, unknown.stderr
        bad = eco("sync", "job", "add", "logs", "file:///a", "file:///b", "--every", "1s",
                  "--on", "site:x")  # fmt: skip
        assert bad.returncode == 2 and "node:NAME or platform:NAME" in bad.stderr
        out = eco.ok(
            "sync", "job", "add", "logs", source.as_uri(), destination.as_uri(),
            "--every", "1s", "--on", "platform:plant-7",
        )  # fmt: skip
        assert "created sync job logs (every 1s on platform plant-7)" in out
        shown = eco.json("sync", "job", "get", "logs")
        assert (shown["on_node"], shown["on_platform"]) == ("", "plant-7")
        listed = eco.ok("sync", "job", "list")
        assert listed.splitlines()[0].split()[4] == "ON" and "platform:plant-7" in listed

        def ran_several() -> None:
            done = runs_of(eco, "logs", "completed")
            assert len(done) >= 3, runs_of(eco, "logs")

        await assert_eventually(ran_several, timeout=40)
        done = runs_of(eco, "logs", "completed")
        assert {r["node"] for r in done} <= {"edge-1", "edge-2"}, done
        assert all(r["platform"] == "plant-7" for r in done)
        assert (destination / "app.log").read_text() == "started\n" * 100
        table = eco.ok("sync", "runs", "logs")
        assert "completed  edge-" in table
        finished = {
            name: (await s.status())["sync_runs"]["finished"] for name, s in sidecars.items()
        }
        assert finished["store-1"] == 0, finished
        assert finished["edge-1"] + finished["edge-2"] >= len(done), finished

        refused = eco("platform", "deregister", "plant-7")
        assert refused.returncode == 1 and "1 sync job(s) (logs)" in refused.stderr

        # One of the platform's sidecars stops: the other one runs what follows.
        await sidecars["edge-1"].stop()
        last = max(int(str(r["number"])) for r in runs_of(eco, "logs"))

        def on_edge_2() -> None:
            later = [r for r in runs_of(eco, "logs", "completed") if int(str(r["number"])) > last]
            assert len(later) >= 2 and {r["node"] for r in later} == {"edge-2"}, later

        await assert_eventually(on_edge_2, timeout=40)
        eco.ok("sync", "job", "delete", "logs")
        assert "deregistered" in eco.ok("platform", "deregister", "depot", "--force")
    finally:
        for sidecar in sidecars.values():
            await sidecar.stop()


async def test_a_run_in_progress_survives_a_control_plane_restart(
    sqlite_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    source, destination = tmp_path / "big", tmp_path / "copy"
    source.mkdir()
    destination.mkdir()
    payload = bytes(range(256)) * 4096 * 3  # 3 MiB: about 6 s at 500 KB/s
    (source / "blob.bin").write_bytes(payload)
    eco = Eco(sqlite_plane.address)
    sidecar = SidecarProcess(tmp_path, "nas-1", "", sqlite_plane.address)
    await sidecar.start()
    try:
        eco.ok(
            "sync", "job", "add", "big", source.as_uri(), destination.as_uri(),
            "--every", "1s", "--on", "nas-1", "--bwlimit", "500K",
        )  # fmt: skip

        def running() -> None:
            assert [r["status"] for r in runs_of(eco, "big")][:1] == ["running"], runs_of(
                eco, "big"
            )

        await assert_eventually(running, timeout=20)
        number = int(str(runs_of(eco, "big")[0]["number"]))
        sqlite_plane.kill(signal.SIGKILL)
        await asyncio.sleep(1.5)  # heartbeats fail while no control plane answers
        sqlite_plane.start()

        def finished_and_reported() -> None:
            runs = {int(str(r["number"])): r for r in runs_of(eco, "big")}
            assert runs[number]["status"] == "completed", runs[number]
            assert runs[number]["node"] == "nas-1" and runs[number]["files_copied"] == 1

        await assert_eventually(finished_and_reported, timeout=40)
        assert (destination / "blob.bin").read_bytes() == payload

        def next_runs() -> None:
            later = [r for r in runs_of(eco, "big", "completed") if int(str(r["number"])) > number]
            assert len(later) >= 2, runs_of(eco, "big")
            assert all(r["files_copied"] == 0 for r in later)  # nothing left to copy

        await assert_eventually(next_runs, timeout=30)
        # Never two runs at once: no other run started while the long one ran.
        history = runs_of(eco, "big")
        numbers = [int(str(r["number"])) for r in history]
        assert numbers == list(range(max(numbers), 0, -1))
    finally:
        await sidecar.stop()


def test_a_platform_job_from_a_document(sqlite_plane: ControlPlaneProcess, tmp_path: Path) -> None:
    """A SyncJob document with on_platform is applied after its platform,
    reads back unchanged (diff says nothing), and exports as it was written."""
    eco = Eco(sqlite_plane.address)
    path = tmp_path / "sync.yaml"
    path.write_text(
        "apiVersion: ecosystem/v1\n"
        "kind: Platform\n"
        "metadata: {name: plant-7}\n"
        "spec: {kind: onprem}\n"
        "---\n"
        "apiVersion: ecosystem/v1\n"
        "kind: SyncJob\n"
        "metadata: {name: logs}\n"
        "spec: {source: file:///var/log/app, destination: s3://logs/app,\n"
        "       on_platform: plant-7, every: 1h}\n"
    )
    out = eco.ok("apply", "-f", str(path))
    assert "created Platform plant-7" in out and "created SyncJob logs" in out, out
    same = eco("diff", "-f", str(path))
    assert (same.returncode, same.stdout) == (0, ""), same.stdout + same.stderr
    shown = eco.json("sync", "job", "get", "logs")
    assert (shown["on_node"], shown["on_platform"]) == ("", "plant-7")
    exported = eco.ok("export", "--kind", "SyncJob")
    assert "on_platform: plant-7" in exported and "on_node" not in exported, exported
    both = path.read_text().replace("on_platform: plant-7", "on_platform: plant-7, on_node: n1")
    path.write_text(both)
    refused = eco("apply", "-f", str(path))
    assert refused.returncode == 2 and "exactly one of on_node and on_platform" in (
        refused.stdout + refused.stderr
    )
