"""What each option of Envoy mode's HTTP listener costs per request.

``python -m benchmarks.bench_proxy --envoy-options [--quick]``. A control
plane and a ``dataplane: envoy`` sidecar (:class:`SidecarMesh`) build the
Listener and Cluster of an http upstream (``bench-direct-http``, one hop to
nginx); they are read from that Envoy's admin page (``/config_dump``) and
written into static bootstraps, the cluster's one endpoint nginx, each with
one change (:data:`VARIANTS`). One Envoy per variant (``--concurrency 1``)
and HAProxy (``nbthread 1``, http mode) then take ``wrk -t1 -c50`` in
rounds, every route once per round, so that the machine's other work falls
on all of them. Rows ``envoy_option``: requests/s, the proxy's CPU, requests
per CPU second and its ratio to the config as the control plane sends it
(``as_sent``) and to HAProxy's. Requests per CPU second is the figure to
read: it says what a request costs whatever share of the cores each proxy
got.
"""

from __future__ import annotations

import contextlib
import copy
import json
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._proxy_load import CpuUse, WrkResult, wrk
from benchmarks._proxy_peers import HaproxyServer, NginxServer, SidecarMesh, _envoy
from benchmarks._servers import Server, ServerError, free_port
from benchmarks.bench_proxyless import _backend as grpc_backend

__all__ = ["VARIANTS", "measure_options"]

_NAME = "sidecar/upstream/bench-direct-http.default"
_CONNECTIONS = 50

Config = dict[str, Any]


def _progress(text: str) -> None:
    print(f"[proxy] {text}", file=sys.stderr, flush=True)


def _manager(config: Config) -> Config:
    for chain in config["static_resources"]["listeners"][0]["filter_chains"]:
        for item in chain["filters"]:
            if item["name"].endswith("http_connection_manager"):
                manager: Config = item["typed_config"]
                return manager
    raise ServerError("the listener has no http_connection_manager")


def _router(config: Config) -> Config:
    router: Config = _manager(config)["http_filters"][-1]["typed_config"]
    return router


def _route(config: Config) -> Config:
    route: Config = _manager(config)["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    return route


def _no_request_ids(config: Config) -> None:
    _manager(config)["generate_request_id"] = False


def _no_dynamic_stats(config: Config) -> None:
    _router(config)["dynamic_stats"] = False


def _no_envoy_headers(config: Config) -> None:
    _router(config)["suppress_envoy_headers"] = True


def _no_latency_histograms(config: Config) -> None:
    pattern = {"safe_regex": {"regex": ".*(_time|_ms|_length)$"}}
    config["stats_config"] = {"stats_matcher": {"exclusion_list": {"patterns": [pattern]}}}


def _no_stats(config: Config) -> None:
    config["stats_config"] = {"stats_matcher": {"reject_all": True}}


def _no_policy(config: Config) -> None:
    """No retries, timeouts, connection limit, circuit breakers, outlier detection."""
    route = _route(config)
    route.pop("retry_policy", None)
    route["timeout"] = "0s"
    manager = _manager(config)
    manager.pop("request_headers_timeout", None)
    manager.pop("common_http_protocol_options", None)
    for chain in config["static_resources"]["listeners"][0]["filter_chains"]:
        chain["filters"] = [f for f in chain["filters"] if "connection_limit" not in f["name"]]
    cluster = config["static_resources"]["clusters"][0]
    cluster.pop("circuit_breakers", None)
    cluster.pop("outlier_detection", None)


def _bare(config: Config) -> None:
    for change in (_no_request_ids, _no_dynamic_stats, _no_envoy_headers, _no_stats, _no_policy):
        change(config)


#: name → the change made to the config as sent (``as_sent``: none).
VARIANTS: dict[str, Callable[[Config], None]] = {
    "as_sent": lambda config: None,
    "no_request_ids": _no_request_ids,
    "no_dynamic_stats": _no_dynamic_stats,
    "no_envoy_headers": _no_envoy_headers,
    "no_latency_histograms": _no_latency_histograms,
    "no_stats": _no_stats,
    "no_policy": _no_policy,
    "bare": _bare,
}


class _StaticEnvoy(Server):
    """Envoy with one worker thread and a static bootstrap."""

    system = "envoy"

    def __init__(self, workdir: Path, config: Config) -> None:
        super().__init__(workdir)
        self.launcher = "envoy"
        self.port = free_port()
        self.admin = free_port()
        config = copy.deepcopy(config)
        config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = (
            self.port
        )
        config["admin"] = {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": self.admin}}
        }
        self.config_path = workdir / "envoy.json"
        self.config_path.write_text(json.dumps(config, indent=1))

    def command(self) -> list[str]:
        return [
            str(_envoy()),
            "--config-path",
            str(self.config_path),
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--log-level",
            "warning",
        ]

    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.admin}/ready"


def _sent_config(mesh: SidecarMesh, nginx_port: int) -> Config:
    """The client Envoy's listener and cluster for ``bench-direct-http``, static."""
    admin = (mesh.client.workdir / "data" / "envoy" / "admin-address").read_text().strip()
    with urllib.request.urlopen(f"http://{admin}/config_dump", timeout=10) as response:
        dump = json.load(response)
    listener = cluster = None
    for part in dump["configs"]:
        for entry in part.get("dynamic_listeners", []):
            if entry["name"] == _NAME:
                listener = entry["active_state"]["listener"]
        for entry in part.get("dynamic_active_clusters", []):
            if entry["cluster"]["name"] == _NAME:
                cluster = entry["cluster"]
    if listener is None or cluster is None:
        raise ServerError(f"the client Envoy's config_dump has no {_NAME} listener and cluster")
    for item in (listener, cluster):
        item.pop("@type", None)
    cluster["type"] = "STATIC"
    cluster.pop("eds_cluster_config", None)
    socket = {"address": "127.0.0.1", "port_value": nginx_port}
    cluster["load_assignment"] = {
        "cluster_name": _NAME,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": socket}}}]}],
    }
    bootstrap = json.loads((mesh.client.workdir / "data" / "envoy" / "bootstrap.json").read_text())
    return {
        "node": {"id": "bench-options"},
        "static_resources": {"listeners": [listener], "clusters": [cluster]},
        "overload_manager": bootstrap["overload_manager"],
    }


def measure_options(
    workdir: Path, rounds: int, seconds: int, emit: Callable[[dict[str, Any]], None]
) -> None:
    """Every variant beside HAProxy, ``rounds`` of ``seconds`` each; one row each."""
    with contextlib.ExitStack() as stack:
        nginx = NginxServer(workdir / "nginx", 2**20)
        stack.enter_context(nginx)
        haproxy = HaproxyServer(workdir / "haproxy", nginx.port)
        stack.enter_context(haproxy)
        _progress("the listener and cluster a dataplane: envoy sidecar gets")
        with (
            grpc_backend() as grpc_port,
            SidecarMesh(workdir / "mesh", nginx.port, grpc_port, dataplane="envoy") as mesh,
        ):
            sent = _sent_config(mesh, nginx.port)
        routes: dict[str, tuple[int, dict[str, int]]] = {
            "haproxy": (haproxy.http_port, {"haproxy": haproxy.pid})
        }
        for name, change in VARIANTS.items():
            config = copy.deepcopy(sent)
            change(config)
            envoy = _StaticEnvoy(workdir / f"envoy-{name}", config)
            stack.enter_context(envoy)
            routes[name] = (envoy.port, {"envoy": envoy.pid})
        for name, (port, _) in routes.items():
            _progress(f"wrk warm-up {name}")
            wrk(port, 1, _CONNECTIONS)
        results: dict[str, list[WrkResult]] = {name: [] for name in routes}
        cpu = {name: CpuUse() for name in routes}
        for round_ in range(rounds):
            _progress(f"wrk round {round_ + 1}/{rounds} over {len(routes)} proxies")
            for name, (port, pids) in routes.items():
                with cpu[name].measure(pids):
                    results[name].append(wrk(port, seconds, _CONNECTIONS))
        per_cpu: dict[str, float] = {}
        rows: list[dict[str, Any]] = []
        for name in routes:
            requests = sum(r.requests for r in results[name])
            used = sum(cpu[name].seconds.values())
            per_cpu[name] = requests / used if used else 0.0
            rows.append(
                {
                    "bench": "envoy_option",
                    "system": "haproxy" if name == "haproxy" else "envoy",
                    "variant": name,
                    "rps": round(requests / (seconds * rounds)),
                    "rounds_rps": [round(r.rps) for r in results[name]],
                    "vcpu": sum(cpu[name].vcpu().values()),
                    "rps_per_vcpu": round(per_cpu[name]),
                    "errors": sum(r.errors for r in results[name]),
                    "rounds": rounds,
                    "seconds": seconds,
                }
            )
        for row in rows:
            if per_cpu["as_sent"] and row["variant"] != "haproxy":
                row["per_vcpu_ratio_to_as_sent"] = row["rps_per_vcpu"] / per_cpu["as_sent"]
            if per_cpu["haproxy"]:
                row["per_vcpu_ratio_to_haproxy"] = row["rps_per_vcpu"] / per_cpu["haproxy"]
            emit(row)
