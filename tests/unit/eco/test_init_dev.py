"""``eco dev`` refusing what it cannot run before it starts anything (no
sockets: these are refused while reading the options and the template), and
how each port it would open says what changes it. Running a template and a
port in use are in tests/e2e/test_templates.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from eco._dev import Stack, builtin_sidecar, override_ports, port_of, read_template
from eco._init import TEMPLATES, render, write
from eco.cli import cli


def dev(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["dev", *args])
    return result.exit_code, result.output


@pytest.fixture
def cloud(tmp_path: Path) -> Path:
    write(tmp_path, render(TEMPLATES["cloud"], "shop"))
    return tmp_path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--from", ".", "--sidecar-config", "s.yaml"],
            "give --from or --sidecar-config, not both",
        ),
        (
            ["--gateway-listen", "127.0.0.1:1"],
            "--gateway-listen and --gateway-admin go with --from",
        ),
        (["--sidecar-listen", "nohost"], "Invalid value for '--sidecar-listen'"),
        (["--from", "/nonexistent/dir"], "'/nonexistent/dir' does not exist"),
    ],
)
def test_options_that_cannot_go_together_are_usage_errors(args: list[str], message: str) -> None:
    code, out = dev(*args)
    assert code == 2
    assert message in out


def test_a_directory_that_is_no_template_is_refused(tmp_path: Path) -> None:
    code, out = dev("--from", str(tmp_path))
    assert code == 2
    assert "has neither config/ nor apply/" in out


def test_a_bad_config_file_in_the_template_names_its_line_and_field(cloud: Path) -> None:
    config = cloud / "config" / "sidecar.yaml"
    config.write_text(config.read_text().replace("port: 8000", "port: 0"))
    code, out = dev("--from", str(cloud))
    assert code == 2
    assert f"{config}:" in out and "services[0].port" in out


def test_the_template_is_read_with_its_ports_and_what_changes_each(cloud: Path) -> None:
    stack = Stack()
    read_template(stack, cloud, with_servers=True)
    assert [s.node.id for _, s in stack.sidecars] == ["shop-1"]
    assert [str(g.listen) for _, g in stack.gateways] == ["0.0.0.0:8080"]
    assert {d.kind for d in stack.documents} == {
        "Platform",
        "Service",
        "Intention",
        "Route",
        "Dataset",
    }
    override_ports(stack, "127.0.0.1:7510", "off", None, None)
    sidecar = stack.sidecars[0][1]
    assert (sidecar.local_api, sidecar.admin) == ("127.0.0.1:7510", None)
    gateway_file = str(cloud / "config" / "gateway.yaml")
    sidecar_file = str(cloud / "config" / "sidecar.yaml")
    changes = {p.address: (p.what, p.change) for p in stack.ports}
    assert changes == {
        "127.0.0.1:7510": ("--sidecar-listen", "choose another port with --sidecar-listen"),
        "127.0.0.1:15672": (
            f"upstreams[0].listen in {sidecar_file}",
            f"change upstreams[0].listen in {sidecar_file}",
        ),
        "0.0.0.0:8080": (
            f"listen in {gateway_file}",
            f"change listen in {gateway_file} (or give --gateway-listen)",
        ),
        "127.0.0.1:8081": (
            f"admin in {gateway_file}",
            f"change admin in {gateway_file} (or give --gateway-admin)",
        ),
    }


def test_without_servers_only_documents_are_read(cloud: Path) -> None:
    stack = Stack()
    read_template(stack, cloud, with_servers=False)
    assert stack.sidecars == [] and stack.gateways == []
    assert stack.apply_dir == cloud / "apply"


def test_port_flags_need_exactly_one_sidecar_or_gateway() -> None:
    two = Stack(sidecars=[("a.yaml", builtin_sidecar(None)), ("b.yaml", builtin_sidecar(None))])
    with pytest.raises(Exception, match="--sidecar-listen and --sidecar-admin need one sidecar; 2"):
        override_ports(two, "127.0.0.1:1", None, None, None)
    with pytest.raises(Exception, match="--gateway-listen and --gateway-admin need one gateway; 0"):
        override_ports(Stack(), None, None, "127.0.0.1:1", None)


def test_the_builtin_sidecar_and_control_plane_ports_name_their_flags() -> None:
    stack = Stack(sidecars=[("", builtin_sidecar(None))])
    override_ports(stack, None, None, None, None)
    assert [(p.address, p.what) for p in stack.ports] == [
        ("127.0.0.1:7410", "--sidecar-listen"),
        ("127.0.0.1:7411", "--sidecar-admin"),
    ]
    listen = port_of("127.0.0.1:7400", "", "", "--listen", True)
    assert listen.change == "choose another port with --listen"
