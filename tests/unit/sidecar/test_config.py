"""The sidecar configuration file: the documented shape works, and every kind
of bad input is one error naming the line and the field."""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path

import pytest

from sidecar.config import (
    DEFAULT_BALANCER,
    ConfigError,
    SidecarConfig,
    load_config,
    parse_config,
)
from sidecar.health import HttpCheckConfig, TtlCheckConfig

GOOD = """\
node: {id: web-1, platform: onprem, region: eu, zone: eu-1a}
controlplane: {addresses: ["127.0.0.1:7400"]}
data_dir: .eco/sidecar
local_api: "127.0.0.1:7410"
admin: "127.0.0.1:7411"
services:
  - name: web
    address: 127.0.0.1
    port: 8080
    tags: [v1]
    checks:
      - {http: "http://127.0.0.1:8080/health", interval: 1s, timeout: 500ms}
upstreams:
  - {service: orders}
"""


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), "sidecar.yaml")
    return info.value


def test_the_documented_shape_works() -> None:
    config = parse_config(GOOD)
    assert config.node.id == "web-1" and config.node.zone == "eu-1a"
    assert config.controlplane.addresses == ("127.0.0.1:7400",)
    (web,) = config.services
    assert web.id == "web-1-web-8080"
    assert web.tags == ("v1",)
    (check,) = web.checks
    assert isinstance(check, HttpCheckConfig)
    assert check.interval == 1.0 and check.timeout == 0.5
    (orders,) = config.upstreams
    assert orders.service == "orders" and orders.balancer == DEFAULT_BALANCER
    assert orders.key == ("default", "orders")


def test_defaults() -> None:
    config = parse_config("")
    assert config.node.id == socket.gethostname()
    assert config.local_api == "127.0.0.1:7410"
    assert config.admin == "127.0.0.1:7411"
    assert config.data_dir == Path(".eco/sidecar")
    assert config.controlplane.addresses == ("127.0.0.1:7400",)
    assert (config.grace, config.deregister_critical_after, config.sync_interval) == (15, 60, 30)
    assert config.services == () and config.upstreams == ()
    assert config.leave_on_shutdown is True


def test_models_are_frozen() -> None:
    config = parse_config(GOOD)
    with pytest.raises(ValueError):
        config.local_api = "x"  # type: ignore[misc]


def test_admin_off_and_balancer_options() -> None:
    config = parse_config(
        """
        admin: off
        grace: 2s
        deregister_critical_after: 1m30s
        upstreams:
          - {service: orders, balancer: p2c_ewma, smoothing: 0.5, locality: false}
          - {service: users, namespace: team-a, balancer: ring_hash, vnodes_per_weight: 10}
        services:
          - {name: api, address: "::1", port: 9000, id: api-main, weight: 5,
             checks: [{ttl: 10s}, {tcp: "[::1]:9000", name: port}]}
        """
    )
    assert config.admin is None
    assert config.grace == 2 and config.deregister_critical_after == 90
    assert config.upstreams[0].options == {"smoothing": 0.5}
    assert config.upstreams[1].key == ("team-a", "users")
    (api,) = config.services
    assert api.id == "api-main" and api.weight == 5
    assert isinstance(api.checks[0], TtlCheckConfig)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            """\
            services:
              - name: web
                address: 127.0.0.1
                port: 8080
                checks:
                  - http: "http://127.0.0.1:8080/health"
                    interval: -1s
            """,
            "sidecar.yaml:7: services[0].checks[0].interval: must be greater than 0",
        ),
        (
            """\
            services:
              - name: web
                address: 127.0.0.1
                port: 8080
                checks: [{http: "ftp://127.0.0.1/health"}]
            """,
            "sidecar.yaml:5: services[0].checks[0].http: 'ftp://127.0.0.1/health': "
            "the URL must start with http:// or https://",
        ),
        (
            """\
            services:
              - {name: web, address: 127.0.0.1, port: 0}
            """,
            "sidecar.yaml:2: services[0].port: Input should be greater than or equal to 1",
        ),
        (
            """\
            services:
              - name: web
                port: 80
            """,
            "sidecar.yaml:2: services[0].address: required",
        ),
        (
            """\
            node: {id: web-1}
            upstreams:
              - service: orders
                balancer: fastest
            """,
            "sidecar.yaml:4: upstreams[0].balancer: unknown balancer 'fastest'",
        ),
        (
            """\
            upstreams:
              - {service: orders, balancer: round_robin, smoothing: 0.3}
            """,
            "sidecar.yaml:2: upstreams[0].smoothing: the round_robin balancer does not take",
        ),
        (
            """\
            node: {id: web-1}
            controlplane:
              adresses: ["127.0.0.1:7400"]
            """,
            "sidecar.yaml:3: controlplane.adresses: unknown key 'adresses' "
            "(expected one of: addresses, ca_file, token, token_file); did you mean 'addresses'?",
        ),
        (
            """\
            controlplane: {addresses: ["no-port"]}
            """,
            "sidecar.yaml:1: controlplane.addresses: 'no-port' is not HOST:PORT",
        ),
        (
            """\
            grace: 0s
            """,
            "sidecar.yaml:1: grace: must be greater than 0",
        ),
        (
            """\
            sync_interval: 10
            services:
              - {name: Web, address: 127.0.0.1, port: 80}
            """,
            "sidecar.yaml:3: services[0].name: 'Web': lowercase letters",
        ),
        (
            """\
            services:
              - {name: web, address: "bad host!", port: 80}
            """,
            "sidecar.yaml:2: services[0].address: 'bad host!' is not an IP address",
        ),
        (
            """\
            services:
              - {name: web, address: 127.0.0.1, port: 80, checks: [{tcp: "a:1", http: "http://a"}]}
            """,
            "sidecar.yaml:2: services[0].checks[0]: a check needs exactly one of",
        ),
        (
            """\
            node: {id: "-bad"}
            """,
            "sidecar.yaml:1: node.id: '-bad' is not a node id",
        ),
        (
            """\
            services:
              - {name: web, address: 127.0.0.1, port: 80}
              - {name: web, address: 127.0.0.1, port: 80}
            """,
            "sidecar.yaml:3: services[1].id: ",
        ),
        (
            """\
            services:
              - name: web
                address: 127.0.0.1
                port: 80
                checks:
                  - {tcp: "127.0.0.1:80", name: up}
                  - {http: "http://127.0.0.1/", name: up}
            """,
            "sidecar.yaml:7: services[0].checks[1]: check name 'up' is also used by checks[0]",
        ),
        (
            """\
            upstreams:
              - {service: orders}
              - {service: orders, namespace: default}
            """,
            "sidecar.yaml:3: upstreams[1].service: 'orders' is also upstreams[0]",
        ),
        (
            """\
            local_api: "127.0.0.1"
            """,
            "sidecar.yaml:1: local_api: '127.0.0.1' is not HOST:PORT",
        ),
        (
            """\
            services:
              - {name: web, address: 127.0.0.1, port: "80"}
            """,
            "sidecar.yaml:2: services[0].port: Input should be a valid integer",
        ),
    ],
)
def test_bad_input_names_the_line_and_the_field(text: str, expected: str) -> None:
    message = str(error_of(text))
    assert message.startswith(expected.rstrip()), message
    assert "\n" not in message


def test_not_yaml() -> None:
    err = error_of("services: [\n  {name: web\n")
    assert str(err).startswith("sidecar.yaml:3: not valid YAML"), str(err)


def test_not_a_mapping() -> None:
    assert str(error_of("- a\n- b\n")) == (
        "sidecar.yaml:1: the file must be a mapping of settings (key: value)"
    )


def test_duplicate_keys_are_refused() -> None:
    err = error_of("local_api: 127.0.0.1:1\nadmin: off\nlocal_api: 127.0.0.1:2\n")
    assert str(err) == "sidecar.yaml:3: local_api: duplicate key"


def test_every_problem_is_kept_and_counted() -> None:
    err = error_of(
        """\
        grace: -1s
        services:
          - {name: web, address: 127.0.0.1, port: 99999}
        """
    )
    assert str(err).endswith("(and 1 more problem)")
    assert err.lines() == [
        "sidecar.yaml:1: grace: must be greater than 0",
        "sidecar.yaml:3: services[0].port: Input should be less than or equal to 65535",
    ]
    assert [p.line for p in err.problems] == [1, 3]


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(GOOD)
    assert isinstance(load_config(path), SidecarConfig)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_load_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("admin: 1.2.3.4\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:1: admin: '1.2.3.4' is not HOST:PORT")


def test_the_token_comes_from_token_or_token_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "node.token"
    secret_file.write_text("s3cret-value\n")
    config = parse_config(f"controlplane: {{token_file: {secret_file}}}\n")
    assert config.controlplane.secret == "s3cret-value"
    assert "s3cret" not in repr(parse_config("controlplane: {token: s3cret}\n"))
    assert parse_config("controlplane: {token: s3cret}\n").controlplane.secret == "s3cret"
    with pytest.raises(ConfigError, match="give token or token_file, not both"):
        parse_config(f"controlplane: {{token: x, token_file: {secret_file}}}\n")
    (tmp_path / "empty.token").write_text("\n")
    with pytest.raises(ConfigError, match="the file is empty"):
        parse_config(f"controlplane: {{token_file: {tmp_path / 'empty.token'}}}\n")
    with pytest.raises(ConfigError, match="No such file"):
        parse_config(f"controlplane: {{token_file: {tmp_path / 'missing'}}}\n")
