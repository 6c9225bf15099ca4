"""``eco init`` templates end to end, with the real ``eco`` command: each one
written, validated, applied into a real control plane, exported, diffed (no
change) and applied again (no change); ``eco dev --from DIR`` running one
(its platform, services, sidecar and gateway appear); ``eco dev`` refusing a
port in use by naming the flag that changes it; the host scripts saying what
is missing."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from eco._init import TEMPLATES
from tests.e2e.test_cli import ECO, Eco, run_eco
from tests.harness.addresses import DEV_READY, read_addresses
from tests.harness.controlplane import ControlPlaneProcess
from tests.harness.ports import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

#: The objects each template's documents make (kind, name as apply prints it).
OBJECTS = {
    "core": {
        ("Platform", "{n}"),
        ("Service", "{n}/db/db-1"),
        ("Intention", "{n}/api -> {n}/db"),
        ("Dataset", "{n}-reports"),
    },
    "cloud": {
        ("Platform", "{n}"),
        ("Service", "{n}/queue/queue-1"),
        ("Intention", "{n}/api -> {n}/queue"),
        ("Route", "{n}-api"),
        ("Dataset", "{n}-uploads"),
    },
    "onprem": {
        ("Platform", "{n}"),
        ("Platform", "{n}-backup"),
        ("Service", "{n}/db/db-1"),
        ("Intention", "{n}/api -> {n}/db"),
        ("Dataset", "{n}-files"),
        ("Dataset", "{n}-files-backup"),
        ("SyncJob", "{n}-backup"),
    },
}


def init(directory: Path, template: str, name: str) -> None:
    done = run_eco("init", "--template", template, str(directory), "--name", name)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_init_validate_apply_export_diff_apply_again(
    template: str, sqlite_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    eco = Eco(sqlite_plane.address)
    directory = tmp_path / "platform"
    name = f"{template}-t1"
    init(directory, template, name)

    # Everything written passes eco validate: each file eco reads is ok, the
    # compose file and the Kubernetes manifests are skipped as other tools'.
    checked = run_eco("-o", "json", "validate", str(directory))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    report = json.loads(checked.stdout)
    assert report["problems"] == []
    status = {Path(f["file"]).relative_to(directory).as_posix(): f for f in report["files"]}
    assert status["config/sidecar.yaml"]["kind"] == "sidecar"
    assert status["compose.yaml"]["status"] == "skipped"
    assert status["kubernetes/controlplane.yaml"]["status"] == "skipped"
    assert all(f["status"] == "ok" for p, f in status.items() if p.startswith("apply/"))
    if template == "cloud":
        assert status["config/gateway.yaml"]["kind"] == "gateway"

    applied = eco.json("apply", "-f", str(directory / "apply"))
    expected = {(k, n.format(n=name)) for k, n in OBJECTS[template]}
    assert {(r["kind"], r["name"]) for r in applied["results"]} == expected
    assert applied["summary"] == {"created": len(expected)}

    assert name in [p["name"] for p in eco.json("platform", "list")["platforms"]]
    exported = list(yaml.safe_load_all(eco.ok("export")))
    assert {(d["kind"], d["metadata"]["name"]) for d in exported} >= {("Platform", name)}

    same = eco("diff", "-f", str(directory / "apply"))
    assert (same.returncode, same.stdout) == (0, ""), same.stdout + same.stderr
    again = eco.ok("apply", "-f", str(directory / "apply")).strip()
    assert again == f"no changes ({len(expected)} unchanged)"

    # What export wrote applies as it is too: nothing to change.
    (tmp_path / "exported.yaml").write_text(eco.ok("export"))
    assert eco("diff", "-f", str(tmp_path / "exported.yaml")).returncode == 0


class DevProcess:
    """``eco dev`` as a subprocess, its output in a log file."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.log = cwd / "dev.log"
        env = {k: v for k, v in os.environ.items() if k != "ECO_SERVER"}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(ECO), "dev", *args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env
            )

    def wait_ready(self, timeout: float = 40.0) -> str:
        """The control plane's address, once the tour is printed (all started, applied)."""
        deadline = time.monotonic() + timeout
        while "Stop with Ctrl-C." not in self.log.read_text():
            assert self.proc.poll() is None, f"eco dev exited:\n{self.log.read_text()}"
            assert time.monotonic() < deadline, f"eco dev not ready:\n{self.log.read_text()}"
            time.sleep(0.05)
        found = read_addresses(self.log, DEV_READY)
        assert found is not None
        return found[0]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"eco dev did not stop:\n{self.log.read_text()}") from None
        return self.proc.returncode


@pytest.fixture
def dev_processes() -> Iterator[list[DevProcess]]:
    started: list[DevProcess] = []
    try:
        yield started
    finally:
        for dev in started:
            if dev.proc.poll() is None:
                dev.proc.kill()
                dev.proc.wait()


def eventually(check: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            assert callable(check)
            check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def free_upstream_ports(directory: Path) -> None:
    """The template's upstream listeners on free ports (tests run side by side)."""
    config = directory / "config" / "sidecar.yaml"
    text = config.read_text()
    for fixed in ("127.0.0.1:15432", "127.0.0.1:15672"):
        text = text.replace(fixed, f"127.0.0.1:{free_port()}")
    config.write_text(text)


def port_flags(*, gateway: bool) -> list[str]:
    flags = [
        "--store", "memory://",
        "--listen", "127.0.0.1:0",
        "--admin-listen", f"127.0.0.1:{free_port()}",
        "--sidecar-listen", f"127.0.0.1:{free_port()}",
        "--sidecar-admin", f"127.0.0.1:{free_port()}",
    ]  # fmt: skip
    if gateway:
        flags += ["--gateway-listen", f"127.0.0.1:{free_port()}", "--gateway-admin", "off"]
    return flags


def test_eco_dev_from_the_cloud_template_runs_it(
    tmp_path: Path, dev_processes: list[DevProcess]
) -> None:
    name = "shop"
    directory = tmp_path / name
    init(directory, "cloud", name)
    free_upstream_ports(directory)
    # The application the template's sidecar registers: on a free port here.
    api = app_server()
    config = directory / "config" / "sidecar.yaml"
    config.write_text(config.read_text().replace("8000", str(api.server_address[1])))
    flags = port_flags(gateway=True)
    gateway_address = flags[flags.index("--gateway-listen") + 1]
    dev = DevProcess(tmp_path, "--from", name, *flags)
    dev_processes.append(dev)
    address = dev.wait_ready()
    eco = Eco(address)
    tour = dev.log.read_text()
    assert "Applied shop/apply: 5 created." in tour
    assert f"Gateway ready on http://{gateway_address}" in tour
    assert "Sidecar 'shop-1' ready" in tour

    platforms = eco.json("platform", "list")["platforms"]
    assert [(p["name"], p["kind"]) for p in platforms] == [(name, "cloud")]
    queue = eco.json("service", "get", "queue", "--namespace", name)["instances"]
    assert [i["id"] for i in queue] == ["queue-1"]
    assert [r["name"] for r in eco.json("route", "list")["routes"]] == ["shop-api"]
    assert eco("diff", "-f", str(directory / "apply")).returncode == 0

    def sidecar_joined() -> None:  # the template's sidecar, on its platform
        nodes = eco.json("node", "list")["nodes"]
        assert [(n["id"], n["platform"]) for n in nodes if n["id"] == "shop-1"] == [
            ("shop-1", name)
        ]

    eventually(sidecar_joined)

    def routed() -> None:  # the gateway serves the route apply stored, to the api
        try:
            with urllib.request.urlopen(f"http://{gateway_address}/api/orders", timeout=2) as r:
                assert r.read() == b"api saw /orders"
        except urllib.error.HTTPError as err:
            raise AssertionError(f"HTTP {err.code}") from None

    try:
        eventually(routed)
    finally:
        api.shutdown()
        api.server_close()
    assert dev.stop() == 0, dev.log.read_text()


class _Api(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"ok" if self.path == "/healthz" else f"api saw {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None  # quiet: the test's output is the assertions'


def app_server() -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("template", ["core", "onprem"])
def test_eco_dev_from_the_other_templates_applies_them(
    template: str, tmp_path: Path, dev_processes: list[DevProcess]
) -> None:
    directory = tmp_path / "site"
    init(directory, template, "site")
    free_upstream_ports(directory)
    dev = DevProcess(tmp_path, "--from", str(directory), *port_flags(gateway=False))
    dev_processes.append(dev)
    eco = Eco(dev.wait_ready())
    assert f"{len(OBJECTS[template])} created." in dev.log.read_text()
    names = {p["name"] for p in eco.json("platform", "list")["platforms"]}
    assert names == {n.format(n="site") for k, n in OBJECTS[template] if k == "Platform"}
    if template == "onprem":
        job = eco.json("sync", "job", "get", "site-backup")
        assert job["on_node"] == "site-1", job
    assert eco("diff", "-f", str(directory / "apply")).returncode == 0
    assert dev.stop() == 0, dev.log.read_text()


def listening(port: int) -> socket.socket:
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", port))
    holder.listen()
    return holder


@pytest.mark.parametrize(
    "flag", ["--listen", "--admin-listen", "--sidecar-listen", "--sidecar-admin"]
)
def test_eco_dev_names_the_flag_of_a_port_in_use(tmp_path: Path, flag: str) -> None:
    busy = free_port()
    flags = port_flags(gateway=False)
    flags[flags.index(flag) + 1] = f"127.0.0.1:{busy}"
    with listening(busy):
        done = subprocess.run(
            [str(ECO), "dev", *flags], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 1, done.stdout + done.stderr
    assert (
        f"eco: 127.0.0.1:{busy} ({flag}): address already in use; stop what listens "
        f"there, or choose another port with {flag}"
    ) in done.stderr
    assert "Control plane ready" not in done.stdout


def test_eco_dev_names_the_file_of_a_template_port_in_use(tmp_path: Path) -> None:
    init(tmp_path / "shop", "cloud", "shop")
    busy = free_port()
    config = tmp_path / "shop" / "config" / "gateway.yaml"
    config.write_text(config.read_text().replace('"0.0.0.0:8080"', f'"127.0.0.1:{busy}"'))
    flags = [f for f in port_flags(gateway=False)]
    with listening(busy):
        done = subprocess.run(
            [str(ECO), "dev", "--from", "shop", *flags],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1, done.stdout + done.stderr
    assert (
        f"127.0.0.1:{busy} (listen in shop/config/gateway.yaml): address already in use; "
        "stop what listens there, or change listen in shop/config/gateway.yaml "
        "(or give --gateway-listen)"
    ) in done.stderr


def test_eco_dev_from_an_invalid_template_starts_nothing(tmp_path: Path) -> None:
    init(tmp_path / "shop", "core", "shop")
    services = tmp_path / "shop" / "apply" / "services.yaml"
    services.write_text(services.read_text().replace("port: 5432", "port: 99999"))
    done = subprocess.run(
        [str(ECO), "dev", "--from", "shop", *port_flags(gateway=False)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "shop/apply/services.yaml:" in done.stderr and "spec.instances[0].port" in done.stderr
    assert "Control plane ready" not in done.stdout


def test_check_script_says_what_is_missing(tmp_path: Path) -> None:
    init(tmp_path / "site", "onprem", "site")
    scripts = tmp_path / "site" / "scripts"
    for script in scripts.iterdir():
        syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert syntax.returncode == 0, (script, syntax.stderr)
    # A host with no python3 on its PATH (only the basic tools).
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("uname", "id", "printf", "dirname"):
        found = shutil.which(tool)
        assert found is not None
        (bare / tool).symlink_to(found)
    done = subprocess.run(
        [str(shutil.which("bash")), str(scripts / "check.sh")],
        capture_output=True,
        text=True,
        env={"PATH": str(bare)},
        timeout=30,
    )
    assert done.returncode == 1, done.stdout
    assert "MISSING: python3 (3.11 or newer)" in done.stdout
    assert "apt-get install -y python3" in done.stdout
    assert "MISSING: systemd" in done.stdout
    assert "the host is not ready" in done.stdout
