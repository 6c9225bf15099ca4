"""``dataplane: envoy`` configuration: what `eco sidecar --check` says and
refuses, and how the control plane reads the listeners an Envoy's bootstrap
lists (a bad entry is left out and said, the others are built)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from google.protobuf import json_format, struct_pb2

from controlplane.xds._envoy import plan_of
from sidecar.config import parse_config
from sidecar.envoy import bootstrap, envoy_listeners
from tests.harness.controlplane import ECO

ENVOY = Path(__file__).resolve().parents[2] / ".tools" / "envoy-venv" / "bin" / "envoy"

CONFIG = """\
node: {id: web-1, region: eu, zone: eu-1a}
controlplane: {addresses: ["127.0.0.1:7400"], token: s3cret}
dataplane: envoy
services:
  - {name: web, address: 127.0.0.1, port: 8080}
upstreams:
  - {service: orders, protocol: http, listen: "127.0.0.1:9001", timeout: 3s, retries: 1,
     circuit_breaker: {max_requests: 7}, outlier: {consecutive_failures: 4}}
  - {service: stock, namespace: shop, protocol: grpc, listen: "127.0.0.1:9002"}
  - {service: ledger, listen: "127.0.0.1:9003"}
inbound:
  - {listen: "127.0.0.1:9443", to: "127.0.0.1:8080"}
"""


def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "sidecar.yaml"
    path.write_text(text)
    return subprocess.run(
        [str(ECO), "sidecar", "--config", str(path), "--check"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_check_names_the_data_plane_of_each_listener_and_the_binary(tmp_path: Path) -> None:
    assert ENVOY.exists(), f"{ENVOY} is missing: run scripts/install-envoy.sh"
    done = check(tmp_path, CONFIG + f"envoy: {{binary: {json.dumps(str(ENVOY))}}}\n")
    assert done.returncode == 0, done.stderr
    assert "data plane envoy" in done.stdout
    assert "http 127.0.0.1:9001 -> orders [envoy]" in done.stdout
    assert "tcp 127.0.0.1:9443 -> 127.0.0.1:8080 (inbound) [envoy]" in done.stdout
    assert f"envoy: {ENVOY}" in done.stdout
    python = check(tmp_path, CONFIG.replace("dataplane: envoy\n", ""))
    assert "http 127.0.0.1:9001 -> orders [python]" in python.stdout


def test_check_refuses_what_envoy_cannot_run_naming_each_field(tmp_path: Path) -> None:
    zero = check(tmp_path, CONFIG.replace('"127.0.0.1:9003"', '"127.0.0.1:0"'))
    assert zero.returncode == 2
    assert "upstreams[2].listen: port 0 is not supported with dataplane: envoy" in zero.stderr
    text = CONFIG + 'envoy: {binary: /nonexistent/envoy, admin: "0.0.0.0:9901", concurrency: 0}\n'
    done = check(tmp_path, text)
    assert done.returncode == 2
    assert "envoy.binary: /nonexistent/envoy: no such file" in done.stderr
    assert "scripts/install-envoy.sh" in done.stderr
    assert "envoy.admin: 0.0.0.0:9901" in done.stderr
    assert "envoy.concurrency" in done.stderr
    unknown = check(tmp_path, CONFIG.replace("dataplane: envoy", "dataplane: nginx"))
    assert unknown.returncode == 2
    assert "dataplane: unknown data plane 'nginx'; expected one of python, envoy" in unknown.stderr


def test_the_bootstrap_lists_the_listeners_and_the_control_plane_builds_them() -> None:
    config = parse_config(CONFIG)
    document = bootstrap(config)
    node = document["node"]
    assert node["id"] == "web-1"
    assert node["locality"] == {"region": "eu", "zone": "eu-1a"}
    assert document["dynamic_resources"]["ads_config"]["grpc_services"][0]["initial_metadata"] == [
        {"key": "authorization", "value": "Bearer s3cret"}
    ]
    assert [lst.name for lst in envoy_listeners(config)] == [
        "upstream/orders.default",
        "upstream/stock.shop",
        "upstream/ledger.default",
        "inbound/web",
    ]
    metadata = struct_pb2.Struct()
    json_format.ParseDict(node["metadata"], metadata)
    plan = plan_of(metadata)
    assert plan is not None and not plan.problems
    assert sorted(plan.listeners) == sorted(plan.clusters)
    orders = cluster_pb2.Cluster()
    plan.clusters["sidecar/upstream/orders.default"].Unpack(orders)
    assert orders.eds_cluster_config.service_name == "sidecar/orders.default"
    assert orders.connect_timeout.seconds == 2
    assert orders.circuit_breakers.thresholds[0].max_requests.value == 7
    assert orders.outlier_detection.consecutive_5xx.value == 4
    stock = cluster_pb2.Cluster()
    plan.clusters["sidecar/upstream/stock.shop"].Unpack(stock)
    assert stock.eds_cluster_config.service_name == "sidecar/stock.shop"
    assert stock.typed_extension_protocol_options  # HTTP/2 to the backends
    inbound = cluster_pb2.Cluster()
    plan.clusters["sidecar/inbound/web"].Unpack(inbound)
    assert inbound.type == cluster_pb2.Cluster.STATIC
    listener = listener_pb2.Listener()
    plan.listeners["sidecar/upstream/ledger.default"].Unpack(listener)
    assert listener.address.socket_address.port_value == 9003
    assert [f.name for f in listener.filter_chains[0].filters][
        -1
    ] == "envoy.filters.network.tcp_proxy"


def test_a_listener_entry_the_control_plane_cannot_read_is_left_out_and_said() -> None:
    metadata = struct_pb2.Struct()
    json_format.ParseDict(
        {
            "eco.listeners": [
                {
                    "name": "upstream/a.default",
                    "direction": "upstream",
                    "port": 9001,
                    "address": "127.0.0.1",
                    "service": "a",
                },
                {"name": "upstream/b", "direction": "sideways", "port": 1, "address": "x"},
                {
                    "name": "upstream/c",
                    "direction": "upstream",
                    "port": 70000,
                    "address": "127.0.0.1",
                    "service": "c",
                },
                {
                    "name": "upstream/d",
                    "direction": "upstream",
                    "port": 9004,
                    "address": "127.0.0.1",
                    "service": "Not_A_Label",
                },
            ]
        },
        metadata,
    )
    plan = plan_of(metadata)
    assert plan is not None
    assert list(plan.listeners) == ["sidecar/upstream/a.default"]
    assert [p.split(":")[0] for p in plan.problems] == [
        "eco.listeners[1]",
        "eco.listeners[2]",
        "eco.listeners[3]",
    ]
    assert "direction: 'sideways'" in plan.problems[0]
    assert "port: 70000" in plan.problems[1]
    assert plan_of(struct_pb2.Struct()) is None  # a plain Envoy: no socket listeners
