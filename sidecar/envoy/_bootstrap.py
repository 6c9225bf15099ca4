"""Envoy's bootstrap for ``dataplane: envoy``: pure functions, no I/O.

Envoy starts knowing only its node and where the control plane is; it gets
its listeners, clusters and endpoints over ADS. The node id is the
sidecar's, its locality the sidecar's region and zone (endpoints in the same
zone come first), and its metadata lists the sidecar's proxy listeners with
their policies (``eco.listeners``), from which the control plane builds
Envoy's socket listeners (controlplane/xds/_envoy.py reads the same format).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.envoy_names import CALLER_KEY, LISTENERS_KEY, SDS_CLUSTER
from sidecar.config import InboundConfig, ProxyPolicy, SidecarConfig, split_hostport
from sidecar.proxy._dataplane import inbound_namespace, inbound_service

__all__ = [
    "DEFAULT_BINARY",
    "SDS_SOCKET",
    "XDS_CLUSTER",
    "EnvoyListener",
    "bootstrap",
    "envoy_listeners",
    "find_binary",
]

#: Where scripts/install-envoy.sh puts Envoy (under the working directory).
DEFAULT_BINARY = Path(".tools/envoy-venv/bin/envoy")
#: The static cluster of the control plane's addresses.
XDS_CLUSTER = "eco_controlplane"
#: The sidecar's Secret Discovery Service socket, in ``<data_dir>/envoy/``.
SDS_SOCKET = "sds.sock"
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_INSTALL = "scripts/install-envoy.sh (make test runs it)"


@dataclass(frozen=True, slots=True)
class EnvoyListener:
    """One proxy listener Envoy serves: ``name`` is the resource's name
    after ``sidecar/``; ``where`` the config key (``upstreams[0]``)."""

    name: str
    where: str
    protocol: str
    listen: str
    spec: dict[str, Any]


def find_binary(configured: Path | None) -> Path:
    """The Envoy to run: ``envoy.binary``, else the one the install script
    put in ``.tools/envoy-venv`` (of the working directory or of the
    checkout), else ``envoy`` on PATH. Raises
    FileNotFoundError naming the install step when there is none."""
    if configured is not None:
        if not configured.is_file():
            raise FileNotFoundError(f"envoy.binary: {configured}: no such file; run {_INSTALL}")
        return configured
    # Under the working directory, then under the checkout this package runs from.
    for candidate in (DEFAULT_BINARY, Path(__file__).resolve().parents[2] / DEFAULT_BINARY):
        if candidate.is_file():
            return candidate.resolve()
    on_path = shutil.which("envoy")
    if on_path is not None:
        return Path(on_path)
    raise FileNotFoundError(
        f"dataplane: envoy needs an Envoy binary: none at {DEFAULT_BINARY} and no envoy on "
        f"PATH; run {_INSTALL} or give envoy.binary"
    )


def _policy(policy: ProxyPolicy) -> dict[str, Any]:
    return {
        "protocol": policy.protocol,
        "connect_timeout": policy.connect_timeout,
        "idle_timeout": policy.idle_timeout,
        "timeout": policy.timeout,
        "per_try_timeout": policy.per_try_timeout,
        "retries": policy.retries,
        "retry_on": list(policy.retry_on),
        "retry_budget": policy.retry_budget.model_dump(),
        "circuit_breaker": policy.circuit_breaker.model_dump(),
        "outlier": policy.outlier.model_dump(),
        "max_request_headers_kb": policy.max_request_headers_kb,
        "max_response_headers_kb": policy.max_response_headers_kb,
        "max_headers": policy.max_headers,
        "head_timeout": policy.head_timeout,
        "max_connections": policy.max_connections,
    }


def _inbound_name(inbound: InboundConfig, config: SidecarConfig, i: int) -> str:
    service = inbound_service(inbound, config)
    return f"inbound/{service}" if service else f"inbound/{i}"


def envoy_listeners(config: SidecarConfig) -> list[EnvoyListener]:
    """The listeners of the config that Envoy serves, with what the control
    plane needs to build each one."""
    found: list[EnvoyListener] = []
    for i, upstream in enumerate(config.upstreams):
        if upstream.listen is None:
            continue
        host, port = split_hostport(upstream.listen)
        namespace, service = upstream.key
        spec = {
            **_policy(upstream),
            "name": f"upstream/{service}.{namespace}",
            "direction": "upstream",
            "address": host.strip("[]"),
            "port": port,
            "service": service,
            "namespace": namespace,
            "balancer": upstream.balancer,
            "panic_threshold": upstream.panic_threshold,
        }
        found.append(
            EnvoyListener(spec["name"], f"upstreams[{i}]", upstream.protocol, upstream.listen, spec)
        )
    names: set[str] = set()
    for i, inbound in enumerate(config.inbound):
        host, port = split_hostport(inbound.listen)
        to_host, to_port = split_hostport(inbound.to)
        name = _inbound_name(inbound, config, i)
        if name in names:  # two inbound listeners in front of one service
            name = f"inbound/{i}"
        names.add(name)
        spec = {
            **_policy(inbound),
            "name": name,
            "direction": "inbound",
            "address": host.strip("[]"),
            "port": port,
            "to_address": to_host.strip("[]"),
            "to_port": to_port,
        }
        service = inbound_service(inbound, config)
        if service:  # the destination of the intentions, and its certificate
            spec["service"] = service
            spec["namespace"] = inbound_namespace(inbound, service, config) or "default"
        found.append(EnvoyListener(name, f"inbound[{i}]", inbound.protocol, inbound.listen, spec))
    return found


def _controlplane_cluster(config: SidecarConfig) -> dict[str, Any]:
    endpoints = []
    for address in config.controlplane.addresses:
        host, port = split_hostport(address)
        endpoints.append(
            {
                "endpoint": {
                    "address": {"socket_address": {"address": host.strip("[]"), "port_value": port}}
                }
            }
        )
    cluster: dict[str, Any] = {
        "name": XDS_CLUSTER,
        "type": "STRICT_DNS",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [{"lb_endpoints": endpoints}],
        },
        "typed_extension_protocol_options": {
            _HTTP_OPTIONS: {
                "@type": "type.googleapis.com/" + _HTTP_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
    }
    ca_file = config.controlplane.ca_file
    if ca_file is not None:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": {
                    "validation_context": {"trusted_ca": {"filename": str(ca_file.resolve())}}
                },
            },
        }
    return cluster


def _sds_cluster(config: SidecarConfig) -> dict[str, Any]:
    """The sidecar's own SDS server, on a Unix socket: the keys stay on this host."""
    path = (config.data_dir / "envoy" / SDS_SOCKET).resolve()
    return {
        "name": SDS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": SDS_CLUSTER,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": str(path)}}}}]}
            ],
        },
        "typed_extension_protocol_options": {
            _HTTP_OPTIONS: {
                "@type": "type.googleapis.com/" + _HTTP_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
    }


def _caller(config: SidecarConfig) -> dict[str, Any]:
    """Whose certificate upstream connections present: the first local
    service's, as in the Python data plane (none listed: the node's)."""
    if not config.services:
        return {}
    first = config.services[0]
    return {CALLER_KEY: {"namespace": first.namespace or "default", "service": first.name}}


def bootstrap(config: SidecarConfig) -> dict[str, Any]:
    """Envoy's bootstrap document (JSON), for the sidecar's node."""
    node = config.node
    admin_host, admin_port = split_hostport(config.envoy.admin, allow_zero=True)
    grpc_service: dict[str, Any] = {"envoy_grpc": {"cluster_name": XDS_CLUSTER}}
    secret = config.controlplane.secret
    if secret:
        grpc_service["initial_metadata"] = [{"key": "authorization", "value": f"Bearer {secret}"}]
    ads = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": {
            "id": node.id,
            "cluster": node.platform or "eco-sidecar",
            "locality": {"region": node.region, "zone": node.zone},
            "metadata": {
                "eco.dataplane": "envoy",
                LISTENERS_KEY: [listener.spec for listener in envoy_listeners(config)],
                **_caller(config),
            },
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [grpc_service],
            },
            "lds_config": ads,
            "cds_config": ads,
        },
        "static_resources": {"clusters": [_controlplane_cluster(config), _sds_cluster(config)]},
        "admin": {
            "address": {
                "socket_address": {"address": admin_host.strip("[]"), "port_value": admin_port}
            }
        },
        # Each listener has its own connection limit (max_connections); this
        # bounds them all and keeps Envoy from warning that nothing does.
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.resource_monitors."
                        "downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": 1_000_000,
                    },
                }
            ]
        },
    }
