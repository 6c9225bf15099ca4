"""The rough edges of a new user's first hour, each against real processes: the
watch that ends on its own, `eco service get`'s weight and metadata, `eco wait`
on a revision nothing needs or nothing has written, a control-plane command sent
to a sidecar, a registration without --id, the SDK's resolve and pick, and a
SQLite store whose directory is missing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from ecosystem.v1 import registry_pb2, registry_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import sdk
import sdk.lowlevel
from tests.e2e.test_cli import ECO, Eco
from tests.harness.controlplane import ControlPlaneProcess
from tests.harness.readme import readme_sidecar_config
from tests.harness.sidecar import SidecarProcess

pytestmark = pytest.mark.e2e


@pytest.fixture
def eco(sqlite_plane: ControlPlaneProcess) -> Eco:
    return Eco(sqlite_plane.address)


def register(eco: Eco, *args: str) -> dict[str, Any]:
    registered: dict[str, Any] = eco.json("service", "register", *args)
    return registered


# -- eco service watch ------------------------------------------------------------


def test_watch_prints_no_progress_unless_asked_and_ends_on_its_own(eco: Eco) -> None:
    register(eco, "web", "--address", "10.0.0.1", "--port", "80", "--id", "web-1")
    started = time.monotonic()
    quiet = eco("service", "watch", "web", "--progress-interval", "0.2", "--timeout", "1.5")
    assert quiet.returncode == 0, quiet.stderr
    assert 1.5 <= time.monotonic() - started < 15
    types = [json.loads(line)["type"] for line in quiet.stdout.splitlines()]
    assert types == ["RESYNC", "PUT", "SNAPSHOT_END"]

    chatty = eco(
        "service", "watch", "web", "--progress", "--progress-interval", "0.2", "--timeout", "1.5"
    )
    assert chatty.returncode == 0, chatty.stderr
    assert "PROGRESS" in [json.loads(line)["type"] for line in chatty.stdout.splitlines()]


def test_watch_count_ends_after_n_changes_and_says_when_they_did_not_come(eco: Eco) -> None:
    register(eco, "web", "--address", "10.0.0.1", "--port", "80", "--id", "web-1")
    register(eco, "web", "--address", "10.0.0.2", "--port", "80", "--id", "web-2")
    counted = eco("service", "watch", "web", "--count", "2")
    assert counted.returncode == 0, counted.stderr
    events = [json.loads(line) for line in counted.stdout.splitlines()]
    assert [e["type"] for e in events] == ["RESYNC", "PUT", "PUT"]

    # A live change ends a watch started after the snapshot.
    process = subprocess.Popen(
        [ECO, "--server", eco.server, "service", "watch", "web", "--count", "1", "--timeout", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)
        deleted = eco.json("service", "deregister", "web", "--id", "web-1")
        out, err = process.communicate(timeout=20)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0, err
    # The snapshot's first PUT was the one change counted.
    assert [json.loads(line)["type"] for line in out.splitlines()] == ["RESYNC", "PUT"]

    # From just before the delete: that one change, and the watch ends.
    since = str(deleted["revision"])
    resumed = eco(
        "service", "watch", "web", "--since", str(deleted["revision"] - 1), "--count", "1"
    )
    assert resumed.returncode == 0, resumed.stderr
    (event,) = [json.loads(line) for line in resumed.stdout.splitlines()]
    assert event["type"] == "DELETE" and event["instance"]["id"] == "web-1"

    short = eco("service", "watch", "web", "--since", since, "--count", "1", "--timeout", "0.5")
    assert short.returncode == 1
    assert short.stdout == ""
    assert "0 of 1 event(s) came within 0.5s" in short.stderr


# -- eco service get --------------------------------------------------------------


def test_get_shows_the_weight_json_shows_and_the_metadata(eco: Eco) -> None:
    register(eco, "web", "--address", "10.0.0.1", "--port", "80", "--id", "web-1", "--weight", "5")
    register(
        eco, "web", "--address", "10.0.0.2", "--port", "80", "--id", "web-2",
        "--meta", "owner=team-a", "--meta", "tier=gold",
    )  # fmt: skip
    weights = {i["id"]: i["weight"] for i in eco.json("service", "get", "web")["instances"]}
    table = eco.ok("service", "get", "web").splitlines()
    header = next(line for line in table if line.startswith("ID"))
    column = header.index("WEIGHT")
    rows = {line.split()[0]: line for line in table if line.startswith("web-")}
    for instance_id, weight in weights.items():
        assert rows[instance_id][column:].split()[0] == str(weight)
    assert "METADATA" in header
    assert rows["web-2"].rstrip().endswith("owner=team-a,tier=gold")


# -- eco wait ---------------------------------------------------------------------


def test_wait_for_a_revision_no_write_has_made_fails_at_once(eco: Eco) -> None:
    revision = int(register(eco, "web", "--address", "10.0.0.1", "--port", "80")["mod_revision"])
    started = time.monotonic()
    result = eco("wait", "--revision", str(revision + 1000), "--timeout", "30")
    assert result.returncode == 2
    assert time.monotonic() - started < 10
    assert f"revision {revision + 1000} is newer than the store's revision" in result.stderr


def test_wait_says_when_no_sidecar_is_affected(eco: Eco) -> None:
    revision = register(eco, "web", "--address", "10.0.0.1", "--port", "80")["mod_revision"]
    result = eco("wait", "--revision", str(revision), "--timeout", "5")
    assert result.returncode == 0, result.stderr
    assert "no connected sidecar is affected" in result.stdout


# -- a control-plane command against a sidecar's port -----------------------------


async def test_a_control_plane_command_sent_to_a_sidecar_says_so(
    sqlite_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    sidecar = SidecarProcess(tmp_path, "side-1", "", sqlite_plane.address)
    await sidecar.start()
    try:
        proc = await asyncio.create_subprocess_exec(
            ECO, "--server", sidecar.local_api, "service", "list",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate()
        assert proc.returncode == 1
        message = err.decode()
        assert f"{sidecar.local_api} is a sidecar's local API, not a control plane" in message
        assert "--server" in message and "Method not found" not in message

        # The SDK says it too, with the reason to test for.
        async with sdk.AsyncClient(sidecar.local_api) as client:
            with pytest.raises(sdk.UnimplementedError) as raised:
                await client.list_services()
        assert raised.value.reason == sdk.lowlevel.SIDECAR_LOCAL_API
        assert raised.value.address == sidecar.local_api
    finally:
        await sidecar.stop()


async def test_only_a_sidecar_s_health_service_knows_the_sidecar_service(
    sqlite_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    """What the SDK's check rests on: a control plane's health service does not
    know the SidecarService, so its own UNIMPLEMENTED answers are not taken
    for a sidecar's."""
    check = health_pb2.HealthCheckRequest(service="ecosystem.v1.SidecarService")
    async with grpc.aio.insecure_channel(sqlite_plane.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await health_pb2_grpc.HealthStub(channel).Check(check)
        assert raised.value.code() is grpc.StatusCode.NOT_FOUND
    sidecar = SidecarProcess(tmp_path, "side-2", "", sqlite_plane.address)
    await sidecar.start()
    try:
        async with grpc.aio.insecure_channel(sidecar.local_api) as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(check)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await sidecar.stop()


# -- registering without --id -----------------------------------------------------


def test_registering_the_same_endpoint_without_id_updates_it(eco: Eco) -> None:
    first = register(eco, "web", "--address", "10.0.0.1", "--port", "80", "--tag", "v1")
    again = register(eco, "web", "--address", "10.0.0.1", "--port", "80", "--tag", "v2")
    other = register(eco, "web", "--address", "10.0.0.1", "--port", "81")
    assert str(first["id"]).startswith("web-")
    assert again["id"] == first["id"] and again["tags"] == ["v2"]
    assert other["id"] != first["id"]
    instances = eco.json("service", "get", "web")["instances"]
    assert sorted((i["port"], i["tags"]) for i in instances) == [(80, ["v2"]), (81, [])]
    table = eco.ok("service", "list")
    assert "web" in table and " 2 " in table


async def test_the_sdk_sends_no_id_and_keeps_the_one_the_control_plane_chose(
    sqlite_plane: ControlPlaneProcess,
) -> None:
    async with sdk.AsyncClient(sqlite_plane.address) as client:
        persistent = await client.register("api", "10.0.0.5", 9000)
        async with sdk.AsyncClient(sqlite_plane.address) as owner:
            ephemeral = await owner.register("api", "10.0.0.6", 9000, ephemeral=True)
            assert ephemeral.id.startswith("api-") and ephemeral.id != persistent.id
            listed = await client.list_instances(service="api")
            assert {i.id for i in listed} == {persistent.id, ephemeral.id}
        # Closing the owner revoked its lease: the ephemeral instance is gone.
        listed = await client.list_instances(service="api")
        assert [i.id for i in listed] == [persistent.id]
        # Registering the same endpoint as ephemeral takes over the persistent one.
        async with sdk.AsyncClient(sqlite_plane.address) as owner:
            taken = await owner.register("api", "10.0.0.5", 9000, ephemeral=True)
            assert taken.id == persistent.id and taken.liveness is sdk.Liveness.EPHEMERAL


# -- the SDK's resolve and pick ---------------------------------------------------


async def test_resolve_and_pick_use_only_instances_that_serve(
    sqlite_plane: ControlPlaneProcess,
) -> None:
    async with sdk.AsyncClient(sqlite_plane.address) as client:
        with pytest.raises(sdk.NoEndpointsError) as none:
            await client.pick("web")
        assert none.value.total == 0 and "no registered instance" in str(none.value)

        await client.register("web", "10.0.0.1", 80, id="web-1", weight=1)
        await client.register("web", "10.0.0.2", 80, id="web-2", weight=100)
        async with grpc.aio.insecure_channel(sqlite_plane.address) as channel:
            await registry_pb2_grpc.RegistryServiceStub(channel).RegisterInstance(
                registry_pb2.RegisterInstanceRequest(
                    instance=registry_pb2.Instance(
                        id="web-3",
                        service="web",
                        address="10.0.0.3",
                        port=80,
                        health=registry_pb2.HEALTH_STATUS_CRITICAL,
                    )
                )
            )
        resolved = await client.resolve("web")
        assert sorted(i.id for i in resolved) == ["web-1", "web-2"]
        picks = [(await client.pick("web")).id for _ in range(40)]
        assert "web-3" not in picks
        assert picks.count("web-2") > picks.count("web-1")

        await client.deregister("web", "web-1")
        await client.deregister("web", "web-2")
        with pytest.raises(sdk.NoEndpointsError) as critical:
            await client.pick("web")
        assert critical.value.total == 1 and "none of its 1 instance(s)" in str(critical.value)

    with sdk.Client(sqlite_plane.address) as blocking:
        assert [i.id for i in blocking.resolve("web")] == []
        blocking.register("web", "10.0.0.4", 80, id="web-4")
        assert blocking.pick("web").id == "web-4"


# -- eco controlplane --store sqlite://… ------------------------------------------


def test_the_store_file_s_own_directory_is_made_and_no_more(tmp_path: Path) -> None:
    made = ControlPlaneProcess(f"sqlite://{tmp_path / 'new' / 'cp.db'}", tmp_path / "made.log")
    made.start()
    try:
        assert (tmp_path / "new" / "cp.db").exists()
        assert f"created the store's directory {tmp_path / 'new'}" in made.log()
    finally:
        made.stop()

    deep = tmp_path / "missing" / "dir" / "x.db"
    result = subprocess.run(
        [
            *(ECO, "controlplane", "--listen", "127.0.0.1:0", "--admin-listen", "off"),
            *("--store", f"sqlite://{deep}"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert f"{tmp_path / 'missing'} does not exist" in result.stderr
    assert not (tmp_path / "missing").exists()


def test_a_sidecar_that_cannot_start_lists_every_problem(tmp_path: Path) -> None:
    config = tmp_path / "sidecar.yaml"
    config.write_text(
        "node: {id: web-1}\n"
        "servics:\n"
        "  - {name: web, port: 8080}\n"
        "controlplane: {addresses: ['127.0.0.1:7400'], timeout: soon}\n"
    )
    for command in (["sidecar", "--config", str(config)], ["dev", "--sidecar-config", str(config)]):
        result = subprocess.run(
            [ECO, *command], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 2, result.stderr
        assert f"{config}:2: servics:" in result.stderr, result.stderr
        assert "did you mean 'services'?" in result.stderr
        assert f"{config}:4: controlplane.timeout:" in result.stderr, result.stderr


# -- the README's own sidecar, beside the dev one ---------------------------------


def test_the_readme_sidecar_holds_nothing_the_dev_sidecar_holds(tmp_path: Path) -> None:
    from eco._dev import DEV_SIDECAR_ADMIN, DEV_SIDECAR_LISTEN
    from sidecar.config import SidecarConfig, parse_config

    text = readme_sidecar_config()
    config = parse_config(text, "my-sidecar.yaml")
    assert config.local_api != DEV_SIDECAR_LISTEN and config.admin != DEV_SIDECAR_ADMIN
    assert config.data_dir != SidecarConfig.model_fields["data_dir"].default
    path = tmp_path / "my-sidecar.yaml"
    path.write_text(text)
    checked = subprocess.run(
        [ECO, "sidecar", "--config", str(path), "--check"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr


async def test_the_readme_sidecar_runs_beside_the_dev_sidecar(
    sqlite_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    text = readme_sidecar_config()
    # Both at once against one control plane, on ports of the test's choosing.
    dev = SidecarProcess(tmp_path, "dev", "", sqlite_plane.address)
    mine = SidecarProcess(
        tmp_path, "my-host", text[text.index("services:") :], sqlite_plane.address
    )
    await dev.start()
    try:
        await mine.start()
        try:
            nodes = Eco(sqlite_plane.address).json("node", "list")["nodes"]
            assert sorted(n["id"] for n in nodes) == ["dev", "my-host"]
            services = Eco(sqlite_plane.address).json("service", "list")["services"]
            assert "api" in [s["name"] for s in services]
        finally:
            await mine.stop()
    finally:
        await dev.stop()
