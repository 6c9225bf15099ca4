"""The distribution as a user installs it: a wheel built from the source tree,
installed into fresh virtual environments, run with nothing of the source
tree on ``sys.path``.

- With the ``server`` extra: ``eco controlplane`` serves, the installed SDK
  does a register → watch → deregister round trip against it, ``eco
  sidecar`` connects and registers its local service, and ``eco dev`` starts
  and stops.
- Without extras: ``import sdk`` works and loads no server code, the client
  side of ``eco`` works, and the server commands say what to install.

The wheel is built once per run, from a copy of the files a clone has (so a
stale ``build/`` or ``*.egg-info`` cannot leak into it). The venvs are new
each run; pip installs into them from its own cache (the same wheels
``make install`` downloaded), so the module takes about half a minute.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness.addresses import (
    CONTROL_PLANE_SERVING,
    DEV_READY,
    SIDECAR_RUNNING,
    wait_addresses,
)
from tests.harness.ports import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"bus", "controlplane", "eco", "sdk", "serving", "sidecar"}
#: Modules that only the servers need: none may be installed, or loaded by
#: ``import sdk``, without the server extra.
SERVER_ONLY = (
    "aiohttp",
    "aio_pika",
    "grpc_health",
    "grpc_reflection",
    "grpc_status",
    "httptools",
    "nats",
    "prometheus_client",
    "pydantic",
    "uvloop",
)


def _env() -> dict[str, str]:
    """The environment of a process of the fresh venvs: nothing pointing back
    at the source tree or at another control plane."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ECO_SERVER")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _run(args: Sequence[str | Path], cwd: Path, timeout: float = 120) -> str:
    done = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the files a clone of the work tree has: tracked ones and new
    ones git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    copy = tmp_path_factory.mktemp("source")
    for name in filter(None, listed.split("\0")):
        path = ROOT / name
        if path.is_file():  # a file deleted in the work tree is still listed
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, copy / name)
    return copy


@pytest.fixture(scope="module")
def wheel(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", out, source], out)
    (built,) = out.glob("ecosystem-*.whl")
    return built


def _venv(wheel: Path, where: Path, extras: str = "") -> Path:
    """A new venv with the wheel (and ``extras``) installed; its python."""
    # No pip inside: this run's pip installs into it (pip --python), which
    # saves bootstrapping one per venv.
    _run([sys.executable, "-m", "venv", "--without-pip", where], where.parent)
    python = where / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", python, "install", "--quiet"]
    _run([*install, f"{wheel}{extras}"], where.parent, timeout=300)
    return python


@pytest.fixture(scope="module")
def server_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _venv(wheel, tmp_path_factory.mktemp("venv-server") / "venv", "[server]")


@pytest.fixture(scope="module")
def base_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _venv(wheel, tmp_path_factory.mktemp("venv-base") / "venv")


def _packages(names: Sequence[str]) -> set[str]:
    return {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith("/__init__.py")}


def test_the_wheel_holds_every_package_and_module_and_nothing_else(
    wheel: Path, source: Path
) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == PACKAGES | {"ecosystem"}, "tests, benchmarks or scripts in the wheel?"
    # Every module of the source tree, generated code included (mapped from gen/).
    expected = {
        str(p.relative_to(source))
        for top in PACKAGES
        for p in (source / top).rglob("*.py")
        if "__pycache__" not in p.parts
    } | {
        str(p.relative_to(source / "gen"))
        for p in (source / "gen").rglob("*.py*")
        if "__pycache__" not in p.parts
    }
    assert expected - set(names) == set(), "modules missing from the wheel"
    assert {n for n in names if n.endswith(".py")} - expected == set(), "modules not in the tree"
    assert {"controlplane.agent", "ecosystem.v1", "sdk.balancer"} <= _packages(names)
    assert "sdk/py.typed" in names
    assert "License-Expression: Apache-2.0" in metadata
    base = [
        line.split(":", 1)[1].strip()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert base and not [r for r in base if r.split(">")[0].split("<")[0] in _server_dists()]


def _server_dists() -> set[str]:
    from eco._extras import SERVER_MODULES

    return set(SERVER_MODULES.values())


def _health(address: str, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Waits until ``address`` answers grpc.health SERVING."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            assert proc.poll() is None, f"exited {proc.returncode}:\n{log.read_text()}"
            try:
                answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, f"not serving in {timeout}s:\n{log.read_text()}"
            time.sleep(0.05)


class _Processes:
    """Processes of one test, each logging to a file; all stopped at the end."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, args: Sequence[str | Path]) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.where / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(a) for a in args],
                cwd=self.where,
                env=_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.started.append((proc, log))
        return proc, log

    def stop(self, proc: subprocess.Popen[bytes], log: Path) -> int:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"did not stop on SIGTERM:\n{log.read_text()}") from None

    def stop_all(self) -> None:
        for proc, _log in reversed(self.started):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[_Processes]:
    running = _Processes(tmp_path)
    try:
        yield running
    finally:
        running.stop_all()


def _sidecar_config(path: Path, node: str, controlplane: str) -> None:
    path.write_text(
        f"node: {{id: {node}}}\n"
        f"controlplane: {{addresses: [{json.dumps(controlplane)}]}}\n"
        f"data_dir: {path.parent / (node + '-data')}\n"
        'local_api: "127.0.0.1:0"\n'
        'admin: "127.0.0.1:0"\n'
        "services: [{name: api, address: 127.0.0.1, port: 9}]\n"
    )


ROUND_TRIP = textwrap.dedent(
    """
    import asyncio, json, sys
    import sdk

    async def main(address):
        async with sdk.AsyncClient(address, timeout=10) as client:
            events = client.watch("web", progress_interval=0.5)

            async def next_change():
                while True:
                    event = await asyncio.wait_for(anext(events), 10)
                    if event.type is not sdk.WatchEventType.PROGRESS:
                        return event

            assert (await next_change()).type is sdk.WatchEventType.RESYNC
            assert (await next_change()).type is sdk.WatchEventType.SNAPSHOT_END
            registered = await client.register("web", "127.0.0.1", 8080, id="web-1")
            put = await next_change()
            removed = await client.deregister("web", "web-1")
            gone = await next_change()
            await events.aclose()
            for _ in range(100):  # the sidecar's local service, registered through it
                found = await client.list_instances(service="api")
                if found.instances:
                    break
                await asyncio.sleep(0.1)
            return {
                "sdk": sdk.__file__,
                "put": [put.type.value, put.revision, put.instance.id],
                "registered": registered.mod_revision,
                "delete": [gone.type.value, gone.revision],
                "removed": [removed.revision, removed.deleted],
                "api": [(i.id, i.node) for i in found.instances],
            }

    print(json.dumps(asyncio.run(main(sys.argv[1]))))
    """
)


def test_the_servers_and_the_sdk_work_from_the_installed_wheel(
    server_python: Path, processes: _Processes, tmp_path: Path
) -> None:
    venv_bin = server_python.parent
    eco = venv_bin / "eco"
    plane, plane_log = processes.start(
        "controlplane",
        [
            eco,
            "controlplane",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "off",
            "--store",
            "memory://",
        ],
    )
    address, _admin = wait_addresses(plane_log, CONTROL_PLANE_SERVING, plane, 30)
    _health(address, 30, plane, plane_log)

    config = tmp_path / "sidecar.yaml"
    _sidecar_config(config, "wheel-node", address)
    side, side_log = processes.start("sidecar", [eco, "sidecar", "--config", config])
    local_api, _admin = wait_addresses(side_log, SIDECAR_RUNNING, side, 30)
    _health(local_api, 30, side, side_log)

    script = tmp_path / "round_trip.py"
    script.write_text(ROUND_TRIP)
    # -I: no script directory, working directory, PYTHONPATH or user site on sys.path.
    result = json.loads(_run([server_python, "-I", script, address], tmp_path).strip())
    assert result["sdk"].startswith(str(venv_bin.parent)), result["sdk"]
    assert result["put"] == ["PUT", result["registered"], "web-1"]
    assert result["delete"][0] == "DELETE" and result["removed"] == [result["delete"][1], True]
    assert [node for _id, node in result["api"]] == ["wheel-node"]

    assert processes.stop(side, side_log) == 0, side_log.read_text()
    assert processes.stop(plane, plane_log) == 0, plane_log.read_text()

    dev_config = tmp_path / "dev-sidecar.yaml"
    _sidecar_config(dev_config, "dev-node", "127.0.0.1:1")  # replaced by eco dev's own
    dev, dev_log = processes.start(
        "dev",
        [
            eco,
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "off",
            "--store",
            "memory://",
            "--sidecar-config",
            dev_config,
        ],
    )
    deadline = time.monotonic() + 30
    while "ready: local API on" not in dev_log.read_text():  # the sidecar, after the plane
        assert dev.poll() is None, f"eco dev exited {dev.returncode}:\n{dev_log.read_text()}"
        assert time.monotonic() < deadline, f"eco dev not ready:\n{dev_log.read_text()}"
        time.sleep(0.05)
    (dev_address,) = wait_addresses(dev_log, DEV_READY, dev, 30)
    _health(dev_address, 30, dev, dev_log)
    assert processes.stop(dev, dev_log) == 0, dev_log.read_text()


def test_the_sdk_alone_installs_and_loads_no_server_code(base_python: Path, tmp_path: Path) -> None:
    probe = (
        "import importlib.metadata as md, json, sys; import sdk;"
        f"server = {SERVER_ONLY!r};"
        "print(json.dumps({"
        "'sdk': sdk.__file__,"
        "'installed': sorted(d.metadata['Name'].lower() for d in md.distributions()),"
        "'loaded': sorted(m for m in sys.modules"
        "  if m.split('.')[0] in server + ('bus', 'controlplane', 'serving', 'sidecar')),"
        "}))"
    )
    found = json.loads(_run([base_python, "-I", "-c", probe], tmp_path))
    assert found["sdk"].startswith(str(base_python.parent.parent)), found["sdk"]
    assert found["loaded"] == []
    assert not set(found["installed"]) & _server_dists(), found["installed"]

    eco = base_python.parent / "eco"
    assert "service" in _run([eco, "--help"], tmp_path)
    unreachable = subprocess.run(
        [str(eco), "--server", f"127.0.0.1:{free_port()}", "--timeout", "1", "service", "list"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr
    commands = (["controlplane"], ["sidecar"], ["dev"], ["ca", "init", "--dir", "ca"])
    for command in (*commands, ["apply", "-f", "x.yaml"], ["validate", "x.yaml"]):
        refused = subprocess.run(
            [str(eco), *command], cwd=tmp_path, env=_env(), capture_output=True, text=True
        )
        assert refused.returncode == 1, refused.stderr
        assert "pip install 'ecosystem[server]'" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
