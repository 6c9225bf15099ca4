"""Pure logic behind the first hour's fixes: ids made by the control plane for an
endpoint (over the memory store), the suggestion for a misspelt key, and which
SQLite paths ``eco controlplane`` refuses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pydantic
import pytest
from ecosystem.v1 import registry_pb2 as pb

from controlplane.config import ControlPlaneConfig
from controlplane.registry import Registry
from controlplane.store import MemoryStore
from controlplane.store.sqlite import missing_directory
from sidecar._config_file import ConfigError, unknown_key_message
from sidecar.config import parse_config
from sidecar.gateway.config import parse_config as parse_gateway

# -- ids ---------------------------------------------------------------------------


@pytest.fixture
async def registry() -> AsyncIterator[Registry]:
    async with MemoryStore() as store:
        yield Registry(store)


def request(
    address: str = "10.0.0.1", port: int = 80, id: str = "", namespace: str = ""
) -> pb.RegisterInstanceRequest:
    return pb.RegisterInstanceRequest(
        instance=pb.Instance(id=id, service="web", namespace=namespace, address=address, port=port)
    )


async def test_an_id_is_made_from_the_service_name(registry: Registry) -> None:
    made = (await registry.register(request())).instance.id
    prefix, _, suffix = made.rpartition("-")
    assert prefix == "web" and len(suffix) == 12 and int(suffix, 16) >= 0


async def test_the_same_endpoint_without_id_gets_the_id_it_has(registry: Registry) -> None:
    first = await registry.register(request())
    again = await registry.register(request())
    assert again.instance.id == first.instance.id
    # Nothing changed: nothing written.
    assert again.instance.mod_revision == first.instance.mod_revision
    named = await registry.register(request(address="10.0.0.2", id="web-b"))
    assert (await registry.register(request(address="10.0.0.2"))).instance.id == "web-b"
    other_port = await registry.register(request(port=81))
    other_namespace = await registry.register(request(namespace="staging"))
    ids = {first.instance.id, named.instance.id, other_port.instance.id}
    assert len(ids | {other_namespace.instance.id}) == 4


async def test_a_request_without_instance_is_still_refused_naming_it(registry: Registry) -> None:
    from serving.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError) as err:
        await registry.register(pb.RegisterInstanceRequest())
    assert "instance" in {v.field for v in err.value.violations}


# -- a misspelt key ----------------------------------------------------------------


def test_a_close_key_is_suggested_and_a_far_one_lists_the_keys() -> None:
    assert unknown_key_message("helth", ["health", "name"]) == (
        "unknown key 'helth' (expected one of: health, name); did you mean 'health'?"
    )
    assert unknown_key_message("zzz", ["health", "name"]) == (
        "unknown key 'zzz' (expected one of: health, name)"
    )
    assert unknown_key_message("zzz", []) == "unknown key 'zzz'"


def test_a_sidecar_file_lists_every_problem_with_line_field_and_suggestion() -> None:
    text = (
        "node: {id: web-1}\n"
        "servces: []\n"
        "upstreams:\n"
        "  - {service: orders, protocl: http}\n"
        "local_api: 'not an address'\n"
    )
    with pytest.raises(ConfigError) as err:
        parse_config(text, "sidecar.yaml")
    lines = err.value.lines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("sidecar.yaml:2: servces: unknown key 'servces'")
    assert lines[0].endswith("did you mean 'services'?")
    assert lines[1].startswith("sidecar.yaml:4: upstreams[0].protocl: unknown key")
    assert lines[1].endswith("did you mean 'protocol'?")
    assert lines[2].startswith("sidecar.yaml:5: local_api:")


def test_a_gateway_file_suggests_too() -> None:
    with pytest.raises(ConfigError) as err:
        parse_gateway("listen: 127.0.0.1:8000\nroutse: []\n", "gateway.yaml")
    assert any(
        line.startswith("gateway.yaml:2: routse:") and "did you mean 'routes'?" in line
        for line in err.value.lines()
    ), err.value.lines()


# -- sqlite paths ------------------------------------------------------------------


def test_only_the_file_s_own_directory_may_be_missing(tmp_path: Path) -> None:
    assert missing_directory(tmp_path / "x.db") is None
    assert missing_directory(tmp_path / "new" / "x.db") is None
    assert missing_directory(tmp_path / "a" / "b" / "x.db") == tmp_path / "a"
    assert missing_directory(tmp_path / "a" / "b" / "c" / "x.db") == tmp_path / "a"
    assert missing_directory(Path("x.db")) is None


def test_the_control_plane_config_refuses_a_deeper_missing_path(tmp_path: Path) -> None:
    ControlPlaneConfig(store_url=f"sqlite://{tmp_path / 'new' / 'x.db'}")
    with pytest.raises(pydantic.ValidationError) as err:
        ControlPlaneConfig(store_url=f"sqlite://{tmp_path / 'a' / 'b' / 'x.db'}")
    (error,) = err.value.errors()
    assert error["loc"] == ("store_url",)
    assert f"{tmp_path / 'a'} does not exist" in error["msg"]
    assert not (tmp_path / "a").exists()
