"""The real ``eco`` console script against a real ``eco controlplane`` process."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.controlplane import ControlPlaneProcess
from tests.harness.ports import free_port

pytestmark = pytest.mark.e2e

ECO = str(Path(sys.executable).with_name("eco"))


def dead_address() -> str:
    return f"127.0.0.1:{free_port()}"


def run_eco(*args: str, server: str | None = None, env: dict[str, str] | None = None) -> Any:
    """Runs ``eco`` to completion; returns the CompletedProcess."""
    command = [ECO, *(["--server", server] if server else []), *args]
    environment = {k: v for k, v in os.environ.items() if k != "ECO_SERVER"}
    environment.update(env or {})
    return subprocess.run(
        command, capture_output=True, text=True, timeout=30, env=environment, check=False
    )


class Eco:
    """Runs ``eco`` commands against one control plane."""

    def __init__(self, server: str) -> None:
        self.server = server

    def __call__(self, *args: str) -> Any:
        return run_eco(*args, server=self.server)

    def ok(self, *args: str) -> str:
        result = self(*args)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return str(result.stdout)

    def json(self, *args: str) -> Any:
        return json.loads(self.ok("-o", "json", *args))


@pytest.fixture
def eco(sqlite_plane: ControlPlaneProcess) -> Eco:
    """The CLI pointed at a fresh ``eco controlplane`` process (SQLite store)."""
    return Eco(sqlite_plane.address)


class LineReader:
    """Reads a process's stdout line by line on a thread, with timeouts."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        assert process.stdout is not None
        self._thread = threading.Thread(target=self._pump, args=(process.stdout,), daemon=True)
        self._thread.start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self._lines.put(line)

    def next_json(self, timeout: float = 15.0, *, skip_progress: bool = True) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            line = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            data: dict[str, Any] = json.loads(line)
            if not (skip_progress and data["type"] == "PROGRESS"):
                return data


def test_register_list_get_deregister_in_json(eco: Eco) -> None:
    registered = eco.json(
        "service",
        "register",
        "web",
        "--address",
        "127.0.0.1",
        "--port",
        "8080",
        "--id",
        "web-1",
        "--zone",
        "z1",
        "--tag",
        "v1",
        "--tag",
        "canary",
        "--meta",
        "version=1.2.3",
        "--weight",
        "5",
    )
    assert registered["id"] == "web-1" and registered["service"] == "web"
    assert registered["port"] == 8080 and registered["zone"] == "z1"
    assert registered["tags"] == ["v1", "canary"]
    assert registered["metadata"] == {"version": "1.2.3"}
    assert registered["liveness"] == "PERSISTENT"
    generated = eco.json("service", "register", "web", "--address", "127.0.0.1", "--port", "8081")
    assert generated["id"].startswith("web-")

    listed = eco.json("service", "list")
    assert [s["name"] for s in listed["services"]] == ["web"]
    assert listed["services"][0]["instance_count"] == 2

    detail = eco.json("service", "get", "web")
    assert detail["name"] == "web"
    assert sorted(i["id"] for i in detail["instances"]) == sorted(["web-1", generated["id"]])
    for instance in detail["instances"]:
        assert instance["health"] in ("PASSING", "WARNING", "CRITICAL", "UNKNOWN")
        assert all(key == key.lower() for key in instance)

    removed = eco.json("service", "deregister", "web", "--id", "web-1")
    assert removed["id"] == "web-1" and removed["revision"] > registered["mod_revision"]
    assert removed["deleted"] is True
    assert [i["id"] for i in eco.json("service", "get", "web")["instances"]] == [generated["id"]]
    # Again, as a retry would: it succeeds, and says that nothing was removed.
    again = eco.json("service", "deregister", "web", "--id", "web-1")
    assert again["deleted"] is False and again["revision"] >= removed["revision"]
    said = eco.ok("service", "deregister", "web", "--id", "web-1")
    assert "was not registered; nothing removed" in said


def test_tables_and_yaml_for_people_and_scripts(eco: Eco) -> None:
    eco.ok("service", "register", "web", "--address", "127.0.0.1", "--port", "8080", "--id", "w1")
    table = eco.ok("service", "get", "web")
    assert "w1" in table and "127.0.0.1:8080" in table and "PASSING" in table
    assert "web" in eco.ok("service", "list")
    data = yaml.safe_load(eco.ok("-o", "yaml", "service", "get", "web"))
    assert data["instances"][0]["id"] == "w1"
    # -o also works after the subcommand.
    assert json.loads(eco.ok("service", "list", "-o", "json"))["services"][0]["name"] == "web"


PROGRESS_EVERY = ("--progress-interval", "0.5")


def test_watch_prints_one_json_object_per_line(eco: Eco) -> None:
    eco.ok("service", "register", "web", "--address", "127.0.0.1", "--port", "8080", "--id", "w1")
    watcher = subprocess.Popen(
        [ECO, "--server", eco.server, "service", "watch", "web", "--progress", *PROGRESS_EVERY],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = LineReader(watcher)
        head = [lines.next_json() for _ in range(3)]
        assert [e["type"] for e in head] == ["RESYNC", "PUT", "SNAPSHOT_END"]
        assert head[1]["instance"]["id"] == "w1" and head[1]["instance"]["service"] == "web"
        assert lines.next_json(skip_progress=False)["type"] in ("PROGRESS", "PUT")

        eco.ok(
            "service", "register", "web", "--address", "127.0.0.1", "--port", "8081", "--id", "w2"
        )
        put = lines.next_json()
        assert (put["type"], put["instance"]["id"]) == ("PUT", "w2")
        eco.ok("service", "deregister", "web", "--id", "w1")
        deleted = lines.next_json()
        assert (deleted["type"], deleted["instance"]["id"]) == ("DELETE", "w1")
        assert deleted["revision"] > put["revision"] > head[2]["revision"]
        since = put["revision"]
    finally:
        watcher.send_signal(signal.SIGINT)
        watcher.wait(timeout=10)

    # --since resumes after a revision: only what came later.
    resumed = subprocess.Popen(
        [ECO, "--server", eco.server, "service", "watch", "web", "--since", str(since)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        event = LineReader(resumed).next_json()
        assert (event["type"], event["instance"]["id"]) == ("DELETE", "w1")
    finally:
        resumed.terminate()
        resumed.wait(timeout=10)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["Bad_Name", "--address", "127.0.0.1", "--port", "80"], "instance.service"),
        (["web", "--address", "not an address", "--port", "80"], "instance.address"),
        (["web", "--address", "127.0.0.1", "--port", "80", "--id", "a b"], "instance.id"),
        (["web", "--address", "127.0.0.1", "--port", "80", "--weight", "99999"], "instance.weight"),
        (["web", "--address", "127.0.0.1", "--port", "70000"], "--port"),
        (["web", "--address", "127.0.0.1", "--port", "80", "--meta", "novalue"], "--meta"),
        (["web", "--port", "80"], "--address"),
    ],
)
def test_bad_input_exits_2_naming_the_field_and_stores_nothing(
    eco: Eco, args: list[str], named: str
) -> None:
    result = eco("service", "register", *args)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr
    assert result.stderr.startswith("eco: ")
    assert eco.json("service", "list")["services"] == []


def test_server_side_failures_exit_1(eco: Eco) -> None:
    result = eco("service", "get", "nope")
    assert result.returncode == 1
    assert "not found" in result.stderr and "nope" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unreachable_control_plane_exits_1_with_a_clear_message() -> None:
    address = dead_address()
    result = run_eco("service", "list", server=address)
    assert result.returncode == 1
    assert f"cannot reach control plane at {address}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    watch = run_eco("service", "watch", "web", server=address)
    assert watch.returncode == 1 and "cannot reach" in watch.stderr


def test_server_list_fails_over_and_comes_from_the_environment(eco: Eco) -> None:
    servers = f"{dead_address()},{eco.server}"
    result = run_eco("-o", "json", "service", "list", env={"ECO_SERVER": servers})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["services"] == []


def test_malformed_server_is_a_usage_error() -> None:
    result = run_eco("service", "list", server="no-port-here")
    assert result.returncode == 2
    assert "--server" in result.stderr


def test_controlplane_rejects_a_bad_listen_address() -> None:
    result = run_eco("controlplane", "--listen", "nowhere", "--store", "memory://")
    assert result.returncode == 2
    assert "--listen" in result.stderr


@pytest.mark.parametrize(
    "command", [[], ["service"], ["service", "register"], ["controlplane"], ["dev"]]
)
def test_help_has_examples(command: list[str]) -> None:
    result = run_eco(*command, "--help")
    assert result.returncode == 0
    assert "Usage: eco" in result.stdout
    assert "eco " in result.stdout.split("Options:")[0]


def test_watch_survives_a_control_plane_kill_and_restart(
    sqlite_plane: ControlPlaneProcess, eco: Eco
) -> None:
    eco.ok("service", "register", "web", "--address", "127.0.0.1", "--port", "8080", "--id", "w1")
    watcher = subprocess.Popen(
        [ECO, "--server", eco.server, "service", "watch", "web", "--progress-interval", "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = LineReader(watcher)
        assert [lines.next_json()["type"] for _ in range(3)] == ["RESYNC", "PUT", "SNAPSHOT_END"]
        sqlite_plane.kill(signal.SIGKILL)
        sqlite_plane.start()
        eco.ok(
            "service", "register", "web", "--address", "127.0.0.1", "--port", "8081", "--id", "w2"
        )
        event = lines.next_json(timeout=20)
        # Resumed from its last revision: the new instance, not a new snapshot.
        assert (event["type"], event["instance"]["id"]) == ("PUT", "w2")
        assert watcher.poll() is None
    finally:
        watcher.terminate()
        watcher.wait(timeout=10)
