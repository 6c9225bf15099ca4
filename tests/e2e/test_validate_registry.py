"""``eco validate --registry`` against a real ``eco controlplane`` process: a clean
registry, then one finding of every check (a service with no passing instance,
one with only WARNING ones, a persistent instance on a node no sidecar holds,
intentions naming an unknown service and an empty namespace, datasets whose
location is missing or does not answer), each with its severity, and the
exit statuses."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from ecosystem.v1 import catalog_pb2, catalog_pb2_grpc
from ecosystem.v1 import registry_pb2 as pb
from ecosystem.v1 import registry_pb2_grpc as pb_grpc

from tests.e2e.test_cli import Eco
from tests.harness.controlplane import ControlPlaneProcess

pytestmark = pytest.mark.e2e


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (an SSH server
    that hangs): the probe of a location there must give up in time."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.05)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def register(
    channel: grpc.Channel, service: str, id: str, health: pb.HealthStatus.ValueType, node: str = ""
) -> None:
    pb_grpc.RegistryServiceStub(channel).RegisterInstance(
        pb.RegisterInstanceRequest(
            instance=pb.Instance(
                id=id,
                service=service,
                node=node,
                address="10.0.0.1",
                port=8080,
                health=health,
                liveness=pb.LIVENESS_PERSISTENT,
            )
        ),
        timeout=10,
    )


def test_registry_findings_each_with_its_severity(
    sqlite_plane: ControlPlaneProcess, tmp_path: Path, silent_port: int
) -> None:
    eco = Eco(sqlite_plane.address)
    clean = eco("validate", "--registry")
    assert clean.returncode == 0, (clean.stdout, clean.stderr)
    assert "no findings" in clean.stdout

    present = tmp_path / "present"
    present.mkdir()
    eco.ok("service", "register", "web", "--address", "10.0.0.9", "--port", "80", "--id", "web-1")
    eco.ok(
        "service", "register", "web", "--address", "10.0.0.8", "--port", "80", "--id", "web-2",
        "--node", "ghost-1",
    )  # fmt: skip
    with grpc.insecure_channel(sqlite_plane.address) as channel:
        register(channel, "db", "db-1", pb.HEALTH_STATUS_CRITICAL)
        register(channel, "db", "db-2", pb.HEALTH_STATUS_UNKNOWN)
        register(channel, "cache", "cache-1", pb.HEALTH_STATUS_WARNING)
        catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
        for name, location in (
            ("good", f"file://{present}"),
            ("missing", f"file://{tmp_path / 'gone'}"),
            ("silent", f"sftp://eco@127.0.0.1:{silent_port}/data"),
        ):
            catalog.AddDataset(
                catalog_pb2.AddDatasetRequest(
                    dataset=catalog_pb2.Dataset(name=name, location=location)
                ),
                timeout=10,
            )
    eco.ok("intention", "create", "web", "db", "--allow")
    eco.ok("intention", "create", "web", "nosuch", "--allow")
    eco.ok("intention", "create", "team-x/*", "web", "--deny")

    result = eco("validate", "--registry", "--probe-timeout", "1", "-o", "json")
    assert result.returncode == 2, (result.stdout, result.stderr)
    findings = [
        (f["severity"], f["check"], f["subject"]) for f in json.loads(result.stdout)["findings"]
    ]
    assert findings == [
        ("error", "dataset-unreachable", "dataset missing"),
        ("error", "dataset-unreachable", "dataset silent"),
        ("error", "no-passing-instance", "service default/db"),
        ("warning", "no-passing-instance", "service default/cache"),
        ("warning", "node-gone", "instance default/web/web-2"),
        ("warning", "unknown-service", "intention team-x/* -> web"),
        ("warning", "unknown-service", "intention web -> nosuch"),
    ]
    by_subject = {f["subject"]: f["message"] for f in json.loads(result.stdout)["findings"]}
    assert by_subject["service default/db"] == (
        "no passing instance: 2 instances (1 critical, 1 unknown)"
    )
    assert "does not exist" in by_subject["dataset missing"]
    assert by_subject["dataset silent"].endswith("cannot be listed: no answer within 1s")
    assert "'ghost-1' has no sidecar session" in by_subject["instance default/web/web-2"]
    assert by_subject["intention web -> nosuch"] == (
        "its destination default/nosuch is not a registered service"
    )
    assert by_subject["intention team-x/* -> web"] == (
        "its source namespace 'team-x' has no services"
    )

    table = eco("validate", "--registry", "--probe-timeout", "1")
    assert table.returncode == 2
    assert table.stdout.splitlines()[0].split() == ["SEVERITY", "CHECK", "OBJECT", "PROBLEM"]
    assert "7 findings (3 errors)" in table.stderr


def test_an_unreachable_control_plane_exits_1(tmp_path: Path) -> None:
    from tests.e2e.test_cli import dead_address, run_eco

    result = run_eco("validate", "--registry", server=dead_address())
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "cannot reach control plane" in result.stderr
