"""Socket listeners for an Envoy that a sidecar runs (``dataplane: envoy``).

The sidecar writes its proxy listeners into the node metadata of Envoy's
bootstrap (docs/xds.md, "Envoy as the sidecar's data plane")::

    eco.dataplane: envoy
    eco.listeners:
      - {name: upstream/orders.default, direction: upstream, protocol: http,
         address: 127.0.0.1, port: 9000, service: orders, namespace: default,
         balancer: health_based, connect_timeout: 2.0, timeout: 15.0, ...}
      - {name: inbound/web, direction: inbound, protocol: grpc,
         address: 0.0.0.0, port: 9443, to_address: 127.0.0.1, to_port: 8080, ...}

and each entry becomes one Listener and one Cluster, both named
``sidecar/<name>`` (a ``/`` is in no proxyless listener name, so the two
never collide). An upstream's cluster takes its endpoints by EDS as
``sidecar/<service>.<namespace>``: the service's endpoints, dialed on the
port of the inbound listener in front of an instance where it has one (as
the Python data plane does); an inbound's cluster is the one local address.
Pure functions, no I/O: an entry that cannot be read is left out and its
problem returned, never raised.

When the control plane runs its CA (an :class:`EnvoyMesh` is given), the
Envoy speaks mutual TLS as the Python data plane does: an inbound listener
in front of a local service requires a client certificate of the trust
domain and lets through only the callers the intentions allow (an RBAC
filter, rebuilt when the intentions change); an upstream cluster presents
the sidecar's certificate to the endpoints dialed through another sidecar's
inbound listener and checks that the server is the service it meant to
reach. Certificates, keys and the trust bundle come from the sidecar itself
over SDS (sidecar/envoy/_sds.py, on a Unix socket): they are only named here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    grpc_service_pb2,
    protocol_pb2,
)
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.connection_limit.v3 import connection_limit_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, duration_pb2, json_format, struct_pb2, wrappers_pb2

from controlplane.xds._resources import _ADS, _ROUTER, ServiceName, pack
from sdk import IntentionName, IntentionSet
from serving.envoy_names import (
    BUNDLE_SECRET,
    CALLER_KEY,
    INBOUND_PORT_KEY,
    LISTENERS_KEY,
    NODE_SECRET,
    SDS_CLUSTER,
    service_secret,
)

if TYPE_CHECKING:
    from controlplane.intentions import IntentionBook

__all__ = [
    "CALLER_KEY",
    "INBOUND_PORT_KEY",
    "LISTENERS_KEY",
    "MTLS_MATCH",
    "PREFIX",
    "EnvoyMesh",
    "EnvoyPlan",
    "plan_of",
]

#: The first part of every resource name built here.
PREFIX = "sidecar/"
_PROTOCOLS = ("tcp", "http", "grpc")
_LEAST = {"least_connections", "p2c_ewma"}
_HTTP2_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
#: Endpoint metadata (under ``envoy.transport_socket_match``) of an endpoint
#: dialed through a sidecar's inbound listener: mutual TLS when the CA is on.
MTLS_MATCH = "eco.mtls"
_TLS = "envoy.transport_sockets.tls"


_SDS = config_source_pb2.ConfigSource(
    resource_api_version=config_source_pb2.V3,
    api_config_source=config_source_pb2.ApiConfigSource(
        api_type=config_source_pb2.ApiConfigSource.GRPC,
        transport_api_version=config_source_pb2.V3,
        grpc_services=[
            grpc_service_pb2.GrpcService(
                envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=SDS_CLUSTER)
            )
        ],
    ),
)


class EnvoyMesh:
    """What sidecars' Envoys need when the control plane runs its CA: the trust
    domain and the current intentions (``intentions``, read at each build).
    :meth:`changed` (on each change of the intentions) bumps :attr:`version`
    and wakes the streams that :meth:`listen`, which then rebuild their plan."""

    def __init__(self, trust_domain: str, intentions: Callable[[], IntentionSet]) -> None:
        self.trust_domain = trust_domain
        self._intentions = intentions
        self.version = 0
        self._wakes: set[asyncio.Event] = set()

    @classmethod
    def following(cls, trust_domain: str, book: IntentionBook) -> EnvoyMesh:
        """A mesh reading ``book``'s intentions and changing with them."""
        mesh = cls(trust_domain, lambda: IntentionSet.from_proto(book.snapshot()))
        book.on_change.append(mesh.changed)
        return mesh

    def intentions(self) -> IntentionSet:
        return self._intentions()

    def changed(self) -> None:
        self.version += 1
        for wake in self._wakes:
            wake.set()

    def listen(self, wake: asyncio.Event) -> None:
        self._wakes.add(wake)

    def unlisten(self, wake: asyncio.Event) -> None:
        self._wakes.discard(wake)


@dataclass(frozen=True, slots=True)
class EnvoyPlan:
    """One Envoy's listeners and clusters, packed once for its stream."""

    listeners: Mapping[str, any_pb2.Any] = field(default_factory=dict)
    clusters: Mapping[str, any_pb2.Any] = field(default_factory=dict)
    #: entries that were left out, and why
    problems: tuple[str, ...] = ()


def plan_of(
    metadata: struct_pb2.Struct, mesh: EnvoyMesh | None = None, previous: EnvoyPlan | None = None
) -> EnvoyPlan | None:
    """The plan of an Envoy whose node metadata lists the sidecar's listeners
    (None: not a sidecar's Envoy; it gets no socket listeners); with ``mesh``,
    mutual TLS and the intentions. A resource equal to one of ``previous`` is
    that one (not sent again)."""
    if LISTENERS_KEY not in metadata.fields:
        return None
    document = json_format.MessageToDict(metadata)
    entries = document.get(LISTENERS_KEY)
    if not isinstance(entries, list):
        return EnvoyPlan(problems=(f"node metadata {LISTENERS_KEY} is not a list",))
    security = None
    if mesh is not None:
        caller = document.get(CALLER_KEY)
        secret = NODE_SECRET
        if isinstance(caller, dict) and caller.get("service"):
            secret = service_secret(str(caller.get("namespace") or ""), str(caller["service"]))
        security = _Security(mesh.trust_domain, mesh.intentions(), secret)
    listeners: dict[str, any_pb2.Any] = {}
    clusters: dict[str, any_pb2.Any] = {}
    problems: list[str] = []
    for i, entry in enumerate(entries):
        try:
            spec = _Spec.read(entry)
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"{LISTENERS_KEY}[{i}]: {exc}")
            continue
        if spec.resource in listeners:
            problems.append(f"{LISTENERS_KEY}[{i}]: {spec.name!r} is listed twice")
            continue
        listeners[spec.resource] = _same(
            pack(spec.listener(security)), previous.listeners if previous else None, spec.resource
        )
        clusters[spec.resource] = _same(
            pack(spec.cluster(security)), previous.clusters if previous else None, spec.resource
        )
    return EnvoyPlan(listeners, clusters, tuple(problems))


def _same(
    packed: any_pb2.Any, previous: Mapping[str, any_pb2.Any] | None, name: str
) -> any_pb2.Any:
    old = previous.get(name) if previous is not None else None
    return old if old is not None and old.value == packed.value else packed


@dataclass(frozen=True, slots=True)
class _Security:
    """Mutual TLS and intentions for one Envoy's listeners and clusters."""

    trust_domain: str
    intentions: IntentionSet
    #: the SDS secret upstream connections present
    caller_secret: str

    def spiffe_id(self, namespace: str, service: str) -> str:
        return f"spiffe://{self.trust_domain}/ns/{namespace or 'default'}/svc/{service}"

    def _context(self, secret: str, peer: string_pb2.StringMatcher) -> tls_pb2.CommonTlsContext:
        context = tls_pb2.CommonTlsContext()
        # TLS 1.3 only, as between Python sidecars (an Envoy client's maximum is 1.2 unless set).
        context.tls_params.tls_minimum_protocol_version = common_pb2.TlsParameters.TLSv1_3
        context.tls_params.tls_maximum_protocol_version = common_pb2.TlsParameters.TLSv1_3
        context.tls_certificate_sds_secret_configs.add(name=secret, sds_config=_SDS)
        combined = context.combined_validation_context
        # TLS libraries do not check URI name constraints: the peer's SPIFFE ID is checked here.
        combined.default_validation_context.match_typed_subject_alt_names.add(
            san_type=common_pb2.SubjectAltNameMatcher.URI, matcher=peer
        )
        combined.validation_context_sds_secret_config.name = BUNDLE_SECRET
        combined.validation_context_sds_secret_config.sds_config.CopyFrom(_SDS)
        return context

    def downstream(self, namespace: str, service: str, protocol: str) -> any_pb2.Any:
        """An inbound listener's TLS: the local service's certificate; the
        caller's, of the trust domain, required."""
        context = tls_pb2.DownstreamTlsContext()
        context.require_client_certificate.value = True
        context.common_tls_context.CopyFrom(
            self._context(
                service_secret(namespace, service),
                string_pb2.StringMatcher(prefix=f"spiffe://{self.trust_domain}/"),
            )
        )
        if protocol != "tcp":
            context.common_tls_context.alpn_protocols.extend(["h2", "http/1.1"])
        return pack(context)

    def upstream(self, namespace: str, service: str, protocol: str) -> any_pb2.Any:
        """An upstream cluster's TLS: the caller's certificate; the server must
        be ``service``."""
        context = tls_pb2.UpstreamTlsContext()
        context.common_tls_context.CopyFrom(
            self._context(
                self.caller_secret,
                string_pb2.StringMatcher(exact=self.spiffe_id(namespace, service)),
            )
        )
        if protocol != "tcp":
            context.common_tls_context.alpn_protocols.append(
                "h2" if protocol == "grpc" else "http/1.1"
            )
        return pack(context)

    def allowed(self, namespace: str, service: str) -> rbac_pb2.Principal:
        """The callers the intentions let call ``namespace/service``, as one
        principal: the applicable intentions, most specific first (a deny
        before an allow of the same rank), the first that names the caller
        deciding, else the default; as the Python data plane decides."""
        destination = IntentionName.of(namespace, service)
        applicable = [
            i for i in self.intentions.intentions if i.destination_name.covers(destination)
        ]
        applicable.sort(
            key=lambda i: (
                -(i.destination_name.specificity * 3 + i.source_name.specificity),
                i.allow,
            )
        )
        everyone = rbac_pb2.Principal(any=True)
        result = everyone if self.intentions.default_allow else rbac_pb2.Principal(not_id=everyone)
        for intention in reversed(applicable):
            names = self._caller(intention.source_name)
            if intention.allow:  # (names and allow) or (not names and rest)
                result = rbac_pb2.Principal(or_ids=rbac_pb2.Principal.Set(ids=[names, result]))
            else:
                result = rbac_pb2.Principal(
                    and_ids=rbac_pb2.Principal.Set(ids=[rbac_pb2.Principal(not_id=names), result])
                )
        return result

    def _caller(self, source: IntentionName) -> rbac_pb2.Principal:
        if source.specificity == 0:  # every caller, nodes too
            return rbac_pb2.Principal(any=True)
        prefix = f"spiffe://{self.trust_domain}/ns/{source.namespace}/svc/"
        matcher = (
            string_pb2.StringMatcher(prefix=prefix)
            if source.specificity == 1
            else string_pb2.StringMatcher(exact=prefix + source.service)
        )
        return rbac_pb2.Principal(
            authenticated=rbac_pb2.Principal.Authenticated(principal_name=matcher)
        )

    def rbac(self, namespace: str, service: str) -> rbac_pb2.RBAC:
        policy = rbac_pb2.Policy(
            permissions=[rbac_pb2.Permission(any=True)],
            principals=[self.allowed(namespace, service)],
        )
        return rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW, policies={"intentions": policy})


def _seconds(value: float) -> duration_pb2.Duration:
    result = duration_pb2.Duration()
    result.FromNanoseconds(round(value * 1e9))
    return result


@dataclass(frozen=True, slots=True)
class _Spec:
    """One listener entry, read and checked."""

    name: str
    inbound: bool
    protocol: str
    address: str
    port: int
    target: str  # the service's EDS name (upstream) or "" (inbound)
    to: tuple[str, int]
    policy: Mapping[str, Any]
    #: an inbound listener's local service (namespace, service); ("", ""): none
    local: tuple[str, str] = ("", "")

    @property
    def resource(self) -> str:
        return PREFIX + self.name

    @classmethod
    def read(cls, entry: Any) -> _Spec:
        if not isinstance(entry, dict):
            raise TypeError("not a mapping")
        name = str(entry["name"])
        if not name or len(name) > 200:
            raise ValueError("name: empty or longer than 200 characters")
        direction = entry.get("direction")
        if direction not in ("upstream", "inbound"):
            raise ValueError(f"direction: {direction!r} is not upstream or inbound")
        protocol = entry.get("protocol", "tcp")
        if protocol not in _PROTOCOLS:
            raise ValueError(f"protocol: {protocol!r} is not one of {', '.join(_PROTOCOLS)}")
        port = int(entry["port"])
        if not 1 <= port <= 65535:
            raise ValueError(f"port: {port} is not between 1 and 65535")
        target, to, local = "", ("", 0), ("", "")
        if direction == "upstream":
            service = ServiceName(str(entry["service"]), str(entry.get("namespace") or "default"))
            target = ServiceName.parse(service.resource).resource  # checks both labels
        else:
            to = (str(entry["to_address"]), int(entry["to_port"]))
            if not 1 <= to[1] <= 65535:
                raise ValueError(f"to_port: {to[1]} is not between 1 and 65535")
            if entry.get("service"):
                local = (str(entry.get("namespace") or "default"), str(entry["service"]))
        return cls(
            name,
            direction == "inbound",
            protocol,
            str(entry["address"]),
            port,
            target,
            to,
            entry,
            local,
        )

    def _number(self, key: str, default: float) -> float:
        value = self.policy.get(key)
        return default if value is None else float(value)

    def _group(self, key: str) -> Mapping[str, Any]:
        value = self.policy.get(key)
        return value if isinstance(value, dict) else {}

    # -- the Listener -------------------------------------------------------------

    def listener(self, security: _Security | None = None) -> listener_pb2.Listener:
        result = listener_pb2.Listener(name=self.resource, stat_prefix=self.name.replace("/", "_"))
        socket = result.address.socket_address
        socket.address = self.address
        socket.port_value = self.port
        socket.protocol = address_pb2.SocketAddress.TCP
        chain = result.filter_chains.add()
        limit = self.policy.get("max_connections")
        if limit:
            chain.filters.add(
                name="envoy.filters.network.connection_limit",
                typed_config=pack(
                    connection_limit_pb2.ConnectionLimit(
                        stat_prefix=self.name.replace("/", "_"),
                        max_connections=wrappers_pb2.UInt64Value(value=int(limit)),
                    )
                ),
            )
        # An inbound listener in front of a local service: mutual TLS and the intentions.
        secure = security if self.inbound and self.local[1] else None
        if secure is not None:
            chain.transport_socket.name = _TLS
            chain.transport_socket.typed_config.CopyFrom(
                secure.downstream(*self.local, self.protocol)
            )
        if self.protocol == "tcp":
            if secure is not None:
                chain.filters.add(
                    name="envoy.filters.network.rbac",
                    typed_config=pack(
                        network_rbac_pb2.RBAC(
                            stat_prefix=self.name.replace("/", "_"), rules=secure.rbac(*self.local)
                        )
                    ),
                )
            proxy = tcp_proxy_pb2.TcpProxy(
                stat_prefix=self.name.replace("/", "_"),
                cluster=self.resource,
                idle_timeout=_seconds(self._number("idle_timeout", 300.0)),
            )
            # A connect failure is tried on another endpoint, as the Python listener does.
            proxy.max_connect_attempts.value = 1 + int(self._number("retries", 2))
            chain.filters.add(name="envoy.filters.network.tcp_proxy", typed_config=pack(proxy))
        else:
            chain.filters.add(
                name="envoy.filters.network.http_connection_manager",
                typed_config=pack(self._manager(secure)),
            )
        return result

    def _manager(self, secure: _Security | None) -> hcm_pb2.HttpConnectionManager:
        filters = [_ROUTER]
        if secure is not None:
            rbac = hcm_pb2.HttpFilter(name="envoy.filters.http.rbac")
            rbac.typed_config.CopyFrom(pack(http_rbac_pb2.RBAC(rules=secure.rbac(*self.local))))
            filters.insert(0, rbac)
        manager = hcm_pb2.HttpConnectionManager(
            stat_prefix=self.name.replace("/", "_"),
            codec_type=hcm_pb2.HttpConnectionManager.AUTO,
            route_config=self._routes(),
            http_filters=filters,
            request_headers_timeout=_seconds(self._number("head_timeout", 10.0)),
        )
        manager.max_request_headers_kb.value = int(self._number("max_request_headers_kb", 60))
        options = manager.common_http_protocol_options
        options.idle_timeout.CopyFrom(_seconds(self._number("idle_timeout", 300.0)))
        options.max_headers_count.value = int(self._number("max_headers", 100))
        return manager

    def _routes(self) -> route_pb2.RouteConfiguration:
        action = route_components_pb2.RouteAction(cluster=self.resource)
        action.timeout.CopyFrom(_seconds(self._number("timeout", 15.0)))
        retries = int(self._number("retries", 2))
        if retries:
            policy = action.retry_policy
            conditions = ["connect-failure", "refused-stream", "retriable-status-codes"]
            if self.protocol == "grpc":
                conditions.append("unavailable")
            policy.retry_on = ",".join(conditions)
            policy.num_retries.value = retries
            policy.retriable_status_codes.extend(
                int(s) for s in self.policy.get("retry_on") or (502, 503, 504)
            )
            per_try = self.policy.get("per_try_timeout")
            if per_try:
                policy.per_try_timeout.CopyFrom(_seconds(float(per_try)))
            # Another endpoint for each attempt, as the Python data plane does.
            policy.retry_host_predicate.add(
                name="envoy.retry_host_predicates.previous_hosts",
                typed_config=pack(previous_hosts_pb2.PreviousHostsPredicate()),
            )
            policy.host_selection_retry_max_attempts = 3
        route = route_components_pb2.Route(
            match=route_components_pb2.RouteMatch(prefix="/"), route=action
        )
        host = route_components_pb2.VirtualHost(name=self.name, domains=["*"], routes=[route])
        return route_pb2.RouteConfiguration(name=self.resource, virtual_hosts=[host])

    # -- the Cluster ----------------------------------------------------------------

    def cluster(self, security: _Security | None = None) -> cluster_pb2.Cluster:
        result = cluster_pb2.Cluster(
            name=self.resource, connect_timeout=_seconds(self._number("connect_timeout", 2.0))
        )
        if self.inbound:
            result.type = cluster_pb2.Cluster.STATIC
            assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=self.resource)
            socket = assignment.endpoints.add().lb_endpoints.add().endpoint.address.socket_address
            socket.address, socket.port_value = self.to
            result.load_assignment.CopyFrom(assignment)
        else:
            result.type = cluster_pb2.Cluster.EDS
            result.eds_cluster_config.eds_config.CopyFrom(_ADS)
            # Its own name for the endpoints: where an instance has a sidecar's
            # inbound listener in front, that listener's port (the cache builds it).
            result.eds_cluster_config.service_name = PREFIX + self.target
            result.lb_policy = self._lb_policy()
            if security is not None:
                # Endpoints behind another sidecar's inbound listener: mutual TLS
                # (the others, plain instances, stay plaintext).
                target = ServiceName.parse(self.target)
                match = result.transport_socket_matches.add(name="eco-mtls")
                match.match.fields[MTLS_MATCH].bool_value = True
                match.transport_socket.name = _TLS
                match.transport_socket.typed_config.CopyFrom(
                    security.upstream(target.namespace, target.service, self.protocol)
                )
            panic = self.policy.get("panic_threshold")
            if panic is not None:
                result.common_lb_config.healthy_panic_threshold.CopyFrom(
                    percent_pb2.Percent(value=100.0 * float(panic))
                )
        if self.protocol == "grpc":
            options = http_protocol_options_pb2.HttpProtocolOptions()
            options.explicit_http_config.http2_protocol_options.CopyFrom(
                protocol_pb2.Http2ProtocolOptions()
            )
            options.common_http_protocol_options.idle_timeout.CopyFrom(
                _seconds(self._number("idle_timeout", 300.0))
            )
            result.typed_extension_protocol_options[_HTTP2_OPTIONS].CopyFrom(pack(options))
        elif self.protocol == "http":
            options = http_protocol_options_pb2.HttpProtocolOptions()
            options.explicit_http_config.http_protocol_options.CopyFrom(
                protocol_pb2.Http1ProtocolOptions()
            )
            common = options.common_http_protocol_options
            common.idle_timeout.CopyFrom(_seconds(self._number("idle_timeout", 300.0)))
            common.max_response_headers_kb.value = int(self._number("max_response_headers_kb", 60))
            result.typed_extension_protocol_options[_HTTP2_OPTIONS].CopyFrom(pack(options))
        result.circuit_breakers.CopyFrom(self._breakers())
        outlier = self._outlier()
        if outlier is not None:
            result.outlier_detection.CopyFrom(outlier)
        return result

    def _lb_policy(self) -> int:
        balancer = str(self.policy.get("balancer") or "")
        if balancer in _LEAST:
            return int(cluster_pb2.Cluster.LEAST_REQUEST)
        if balancer == "ring_hash":
            return int(cluster_pb2.Cluster.RING_HASH)
        if balancer == "random":
            return int(cluster_pb2.Cluster.RANDOM)
        return int(cluster_pb2.Cluster.ROUND_ROBIN)

    def _breakers(self) -> circuit_breaker_pb2.CircuitBreakers:
        limits = self._group("circuit_breaker")
        budget = self._group("retry_budget")
        threshold = circuit_breaker_pb2.CircuitBreakers.Thresholds(
            priority=base_pb2.DEFAULT,
            max_connections=wrappers_pb2.UInt32Value(
                value=int(limits.get("max_connections", 1024))
            ),
            max_pending_requests=wrappers_pb2.UInt32Value(
                value=int(limits.get("max_pending", 1024))
            ),
            max_requests=wrappers_pb2.UInt32Value(value=int(limits.get("max_requests", 1024))),
        )
        threshold.retry_budget.budget_percent.value = float(budget.get("percent", 20.0))
        threshold.retry_budget.min_retry_concurrency.value = int(budget.get("min_retries", 3))
        return circuit_breaker_pb2.CircuitBreakers(thresholds=[threshold])

    def _outlier(self) -> outlier_detection_pb2.OutlierDetection | None:
        outlier = self._group("outlier")
        failures = int(outlier.get("consecutive_failures", 5))
        if failures <= 0:
            return None
        result = outlier_detection_pb2.OutlierDetection(
            base_ejection_time=_seconds(float(outlier.get("base_ejection", 30.0))),
            max_ejection_time=_seconds(float(outlier.get("max_ejection", 300.0))),
        )
        # Connect failures, resets and timeouts count with 5xx, as in the Python data plane.
        result.consecutive_5xx.value = failures
        result.max_ejection_percent.value = int(outlier.get("max_ejected_percent", 50))
        result.enforcing_consecutive_5xx.value = 100
        # Ejection on the other detectors' grounds (success rate, gateway errors): off.
        result.enforcing_success_rate.value = 0
        result.enforcing_consecutive_gateway_failure.value = 0
        return result
