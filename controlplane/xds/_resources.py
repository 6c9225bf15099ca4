"""xDS resources built from the registry: pure functions, no I/O.

One service (in one namespace) is one Cluster and one ClusterLoadAssignment,
both named ``<service>.<namespace>``. A proxyless gRPC client that dials
``xds:///orders`` asks for the Listener ``orders``: it gets an API listener
(an HttpConnectionManager with no socket) whose RouteConfiguration, also
named ``orders.default``, sends every call to the cluster ``orders.default``.

What a gRPC client rejects (a NACK of the whole response, after which it
misses every later change of those resources) is kept out here rather than
sent: an endpoint whose address is a host name (EDS carries IP addresses),
the same address twice in one assignment, least request in the old enum
field (gRPC's C-core has none; the policy list lets it fall back to round
robin), a locality without ``load_balancing_weight``. The duplicate
address and the least-request enum were seen as NACKs from grpcio's xDS
client before they were kept out.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ecosystem.v1 import registry_pb2 as pb
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.load_balancing_policies.least_request.v3 import least_request_pb2
from envoy.extensions.load_balancing_policies.round_robin.v3 import round_robin_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2

from controlplane.validation import DEFAULT_NAMESPACE

__all__ = [
    "CLUSTER",
    "ENDPOINTS",
    "LB_POLICY_KEY",
    "LISTENER",
    "ROUTE",
    "TYPES",
    "ServiceName",
    "api_listener",
    "cluster",
    "health_of",
    "load_assignment",
    "pack",
    "prioritized",
    "route_configuration",
]

_PREFIX = "type.googleapis.com/"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINTS = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
#: The four resource types served, in the order a client needs them.
TYPES = (LISTENER, ROUTE, CLUSTER, ENDPOINTS)

#: Instance metadata naming the service's balancing policy (the registry has
#: no per-service setting): ``round_robin`` (default), ``least_request``
#: (also ``least_connections``) or ``ring_hash``.
LB_POLICY_KEY = "lb_policy"
_POLICIES = {
    "round_robin": cluster_pb2.Cluster.ROUND_ROBIN,
    "least_request": cluster_pb2.Cluster.LEAST_REQUEST,
    "least_connections": cluster_pb2.Cluster.LEAST_REQUEST,
    "ring_hash": cluster_pb2.Cluster.RING_HASH,
}

_HEALTH: dict[int, int] = {
    pb.HEALTH_STATUS_PASSING: health_check_pb2.HEALTHY,
    # Envoy uses DEGRADED endpoints only when too few are HEALTHY; the gRPC
    # xDS client sends them nothing (docs/xds.md). HEALTHY when no instance
    # is better (load_assignment).
    pb.HEALTH_STATUS_WARNING: health_check_pb2.DEGRADED,
    pb.HEALTH_STATUS_CRITICAL: health_check_pb2.UNHEALTHY,
    pb.HEALTH_STATUS_UNKNOWN: health_check_pb2.UNKNOWN,
    pb.HEALTH_STATUS_UNSPECIFIED: health_check_pb2.UNKNOWN,
}

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_ADS = config_source_pb2.ConfigSource(
    ads=config_source_pb2.AggregatedConfigSource(),
    resource_api_version=config_source_pb2.V3,
)
_LEAST_REQUEST = cluster_pb2.LoadBalancingPolicy()
for _name, _config in (
    ("envoy.load_balancing_policies.least_request", least_request_pb2.LeastRequest()),
    ("envoy.load_balancing_policies.round_robin", round_robin_pb2.RoundRobin()),
):
    _entry = _LEAST_REQUEST.policies.add()
    _entry.typed_extension_config.name = _name
    _entry.typed_extension_config.typed_config.Pack(_config)
_ROUTER = hcm_pb2.HttpFilter(name="router")
_ROUTER.typed_config.Pack(router_pb2.Router())


@dataclass(frozen=True, slots=True)
class ServiceName:
    """A service in a namespace, as xDS names it: ``<service>.<namespace>``."""

    service: str
    namespace: str = DEFAULT_NAMESPACE

    @property
    def resource(self) -> str:
        """The name of its RouteConfiguration, Cluster and ClusterLoadAssignment."""
        return f"{self.service}.{self.namespace}"

    @classmethod
    def parse(cls, name: str) -> ServiceName:
        """Reads a listener name (the target's host: ``orders``,
        ``orders.shop``, with an optional ``:port``) or a resource name.
        Raises ValueError saying what is wrong."""
        host = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
        service, _, namespace = host.partition(".")
        namespace = namespace or DEFAULT_NAMESPACE
        for part, what in ((service, "service"), (namespace, "namespace")):
            if not _LABEL.match(part):
                raise ValueError(
                    f"{name!r} is not <service>[.<namespace>][:port]: {what} {part!r} is not "
                    "a DNS label (lowercase letters, digits and '-', at most 63)"
                )
        return cls(service, namespace)


def pack(message: object) -> any_pb2.Any:
    """``message`` as a ``google.protobuf.Any``, serialized once and shared."""
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def health_of(status: int) -> int:
    """The xDS health status of a registry health status."""
    return int(_HEALTH.get(status, health_check_pb2.UNKNOWN))


def lb_policy(instances: Iterable[pb.Instance]) -> tuple[int, str]:
    """The cluster's policy from its instances' ``lb_policy`` metadata: the
    value most instances give (ties: the first in name order), round robin
    when none gives a known one; and a complaint to log ("" for none)."""
    votes: dict[str, int] = {}
    unknown: set[str] = set()
    for inst in instances:
        value = inst.metadata.get(LB_POLICY_KEY, "").strip().lower()
        if not value:
            continue
        if value in _POLICIES:
            votes[value] = votes.get(value, 0) + 1
        else:
            unknown.add(value)
    complaint = ""
    if unknown:
        complaint = (
            f"metadata {LB_POLICY_KEY}={', '.join(sorted(unknown))} is not one of "
            f"{', '.join(sorted(_POLICIES))}: ignored"
        )
    if not votes:
        return cluster_pb2.Cluster.ROUND_ROBIN, complaint
    best = min(votes, key=lambda name: (-votes[name], name))
    if len(votes) > 1:
        complaint = (complaint + "; " if complaint else "") + (
            f"instances disagree on {LB_POLICY_KEY} ({', '.join(sorted(votes))}): using {best}"
        )
    return _POLICIES[best], complaint


def cluster(name: ServiceName, instances: Sequence[pb.Instance]) -> cluster_pb2.Cluster:
    """The service's Cluster: endpoints by EDS over the same ADS stream."""
    policy, _ = lb_policy(instances)
    result = cluster_pb2.Cluster(
        name=name.resource,
        type=cluster_pb2.Cluster.EDS,
        connect_timeout=duration_pb2.Duration(seconds=5),
    )
    if policy == cluster_pb2.Cluster.LEAST_REQUEST:
        # In the policy list, with round robin after it: a client without
        # least request (gRPC's C-core) takes the next one instead of
        # rejecting the cluster, as it does the old enum field.
        result.load_balancing_policy.CopyFrom(_LEAST_REQUEST)
    else:
        result.lb_policy = policy
    result.eds_cluster_config.eds_config.CopyFrom(_ADS)
    result.eds_cluster_config.service_name = name.resource
    return result


@functools.lru_cache(maxsize=65_536)
def _canonical_ip(address: str) -> str | None:
    """``address`` in its compressed form, or None for a host name. Cached:
    a service's endpoints are rebuilt at each of its changes, and parsing
    every address again was most of that work."""
    try:
        return ipaddress.ip_address(address).compressed
    except ValueError:
        return None


def is_ip(address: str) -> bool:
    return _canonical_ip(address) is not None


_RANK = {
    pb.HEALTH_STATUS_PASSING: 0,
    pb.HEALTH_STATUS_UNKNOWN: 1,
    pb.HEALTH_STATUS_UNSPECIFIED: 1,
    pb.HEALTH_STATUS_WARNING: 2,
    pb.HEALTH_STATUS_CRITICAL: 3,
}


def endpoint_instances(instances: Iterable[pb.Instance]) -> tuple[list[pb.Instance], list[str]]:
    """The instances that become endpoints, by id, and why others do not.

    A host name is left out (EDS carries IP addresses). Two instances at one
    address and port are one endpoint, the healthier one (then the first
    id): the gRPC client rejects a ClusterLoadAssignment that lists an
    address twice, and would then miss every later change of the service."""
    kept: dict[tuple[str, int], pb.Instance] = {}
    problems: list[str] = []
    for inst in sorted(instances, key=lambda i: i.id):
        canonical = _canonical_ip(inst.address)
        if canonical is None:
            problems.append(f"instance {inst.id}: {inst.address!r} is a host name, not an IP")
            continue
        key = (canonical, inst.port)
        other = kept.get(key)
        if other is not None:
            if _RANK.get(inst.health, 1) < _RANK.get(other.health, 1):
                kept[key], inst = inst, other
            problems.append(
                f"instances {kept[key].id} and {inst.id} are both at "
                f"{inst.address} port {inst.port}: {kept[key].id} is used"
            )
            continue
        kept[key] = inst
    return sorted(kept.values(), key=lambda i: i.id), problems


def load_assignment(
    name: ServiceName, instances: Sequence[pb.Instance], *, port_key: str = "", resource: str = ""
) -> endpoint_pb2.ClusterLoadAssignment:
    """The service's endpoints grouped by locality (region, zone), each with
    its health and weight; each locality weighs the sum of its endpoints'
    weights (gRPC requires a weight on every locality). Which instances are
    left out: see :func:`endpoint_instances`.

    WARNING instances are DEGRADED while some instance is PASSING or
    UNKNOWN, and HEALTHY when none is: the SDK's health tiers (the best tier
    left is used). gRPC's xDS client sends DEGRADED endpoints nothing, so a
    service whose instances all warn would otherwise get no calls at all.

    With ``port_key``, an instance whose metadata gives a port under that
    key is dialed on that port (a sidecar's inbound listener in front of
    it); ``resource`` names the assignment (default: the service's)."""
    localities: dict[tuple[str, str], endpoint_components_pb2.LocalityLbEndpoints] = {}
    totals: dict[tuple[str, str], int] = {}
    kept = endpoint_instances(instances)[0]
    warning_tier = pb.HEALTH_STATUS_WARNING if not any(_RANK[i.health] < 2 for i in kept) else -1
    for inst in kept:
        key = (inst.region, inst.zone)
        group = localities.get(key)
        if group is None:
            group = endpoint_components_pb2.LocalityLbEndpoints(
                locality=base_pb2.Locality(region=inst.region, zone=inst.zone)
            )
            localities[key] = group
            totals[key] = 0
        weight = inst.weight or 1
        totals[key] += weight
        endpoint = group.lb_endpoints.add()
        socket = endpoint.endpoint.address.socket_address
        socket.address = inst.address
        socket.port_value = inst.port
        if port_key:
            via = inst.metadata.get(port_key, "")
            if via.isdigit() and 1 <= int(via) <= 65535:
                socket.port_value = int(via)
                # A sidecar's inbound listener: mutual TLS when the CA is on (_envoy.py).
                match = endpoint.metadata.filter_metadata["envoy.transport_socket_match"]
                match.fields["eco.mtls"].bool_value = True
        endpoint.endpoint.hostname = inst.id
        endpoint.health_status = (
            health_check_pb2.HEALTHY if inst.health == warning_tier else health_of(inst.health)
        )
        endpoint.load_balancing_weight.value = weight
    result = endpoint_pb2.ClusterLoadAssignment(cluster_name=resource or name.resource)
    for key in sorted(localities):
        group = localities[key]
        group.load_balancing_weight.CopyFrom(wrappers_pb2.UInt32Value(value=totals[key]))
        result.endpoints.append(group)
    return result


def prioritized(
    assignment: endpoint_pb2.ClusterLoadAssignment, region: str, zone: str
) -> endpoint_pb2.ClusterLoadAssignment:
    """``assignment`` for a client in ``region``/``zone``: its own zone's
    localities first (priority 0), then the rest of its region, then the
    others; gRPC moves down a priority only when the one above has no usable
    endpoint. Priorities are numbered without gaps, as clients require."""
    result = endpoint_pb2.ClusterLoadAssignment()
    result.CopyFrom(assignment)

    def distance(group: endpoint_components_pb2.LocalityLbEndpoints) -> int:
        locality = group.locality
        if region and locality.region != region:
            return 2
        if zone and locality.zone != zone:
            return 1
        return 0

    distances = [distance(group) for group in result.endpoints]
    rank = {d: i for i, d in enumerate(sorted(set(distances)))}
    for group, d in zip(result.endpoints, distances, strict=True):
        group.priority = rank[d]
    return result


def api_listener(listener_name: str, name: ServiceName) -> listener_pb2.Listener:
    """What a proxyless client dialing ``xds:///<listener_name>`` asks for:
    an API listener whose routes come by RDS."""
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=name.resource,
        rds=hcm_pb2.Rds(config_source=_ADS, route_config_name=name.resource),
        http_filters=[_ROUTER],
    )
    result = listener_pb2.Listener(name=listener_name)
    result.api_listener.CopyFrom(api_listener_pb2.ApiListener(api_listener=pack(manager)))
    return result


def route_configuration(name: ServiceName) -> route_pb2.RouteConfiguration:
    """Every call to the service's cluster."""
    route = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(prefix=""),
        route=route_components_pb2.RouteAction(cluster=name.resource),
    )
    host = route_components_pb2.VirtualHost(name=name.resource, domains=["*"], routes=[route])
    return route_pb2.RouteConfiguration(name=name.resource, virtual_hosts=[host])
