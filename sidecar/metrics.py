"""Prometheus metrics of one sidecar, in its own registry (several sidecars can
share a process, as they do in tests).

Counters of events are incremented where the events happen; everything that
is state (connection, versions, endpoints, instance health) is read from the
sidecar when scraped, by one collector, so it can never drift.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from sidecar.proxy import Listener

__all__ = ["MetricsSnapshot", "SidecarMetrics"]


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """The state the collector reports, read from the sidecar at scrape time."""

    connected: bool
    stale: bool
    applied_version: int
    connects: int
    updates_applied: int
    updates_rejected: int
    reports_dropped: int
    #: (namespace, service) → endpoints cached
    endpoints: dict[tuple[str, str], int] = field(default_factory=dict)
    #: health name → local instances
    local_health: dict[str, int] = field(default_factory=dict)
    watch_streams: int = 0
    outstanding_picks: int = 0


class _StateCollector:
    def __init__(self, read: Callable[[], MetricsSnapshot]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        s = self._read()
        yield _gauge("eco_sidecar_connected", "1 while the agent stream is connected", s.connected)
        yield _gauge("eco_sidecar_stale", "1 while serving endpoints not confirmed live", s.stale)
        yield _gauge(
            "eco_sidecar_applied_version", "Version of the last endpoint update", s.applied_version
        )
        yield _counter("eco_sidecar_connects", "Agent streams established", s.connects)
        updates = CounterMetricFamily(
            "eco_sidecar_endpoint_updates", "Endpoint updates by result", labels=["result"]
        )
        updates.add_metric(["applied"], s.updates_applied)
        updates.add_metric(["rejected"], s.updates_rejected)
        yield updates
        yield _counter(
            "eco_sidecar_health_reports_dropped",
            "Health reports replaced by a full sync",
            s.reports_dropped,
        )
        endpoints = GaugeMetricFamily(
            "eco_sidecar_endpoints",
            "Cached endpoints per upstream",
            labels=["namespace", "service"],
        )
        for (namespace, service), count in sorted(s.endpoints.items()):
            endpoints.add_metric([namespace, service], count)
        yield endpoints
        local = GaugeMetricFamily(
            "eco_sidecar_local_instances", "Local instances by health", labels=["health"]
        )
        for health, count in sorted(s.local_health.items()):
            local.add_metric([health], count)
        yield local
        yield _gauge("eco_sidecar_watch_streams", "Open WatchEndpoints streams", s.watch_streams)
        yield _gauge("eco_sidecar_outstanding_picks", "Picks not yet reported", s.outstanding_picks)


class _ProxyCollector:
    """Per-listener proxy counters, read from the targets' plain counters at scrape time."""

    def __init__(self, read: Callable[[], Sequence[Listener]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        labels = ["listener", "protocol"]
        requests = CounterMetricFamily(
            "eco_sidecar_proxy_requests",
            "Finished requests (TCP: connections) per proxy listener",
            labels=labels,
        )
        active = GaugeMetricFamily(
            "eco_sidecar_proxy_active", "Requests (TCP: connections) in flight", labels=labels
        )
        responses = CounterMetricFamily(
            "eco_sidecar_proxy_responses",
            "Responses sent downstream by class (HTTP 2xx…5xx, gRPC code, TCP closed)",
            labels=[*labels, "code"],
        )
        errors = CounterMetricFamily(
            "eco_sidecar_proxy_errors",
            "Failures seen or made by the proxy, by kind",
            labels=[*labels, "kind"],
        )
        retries = CounterMetricFamily("eco_sidecar_proxy_retries", "Retries made", labels=labels)
        refused = CounterMetricFamily(
            "eco_sidecar_proxy_retries_refused", "Retries the retry budget refused", labels=labels
        )
        ejections = CounterMetricFamily(
            "eco_sidecar_proxy_ejections", "Endpoints ejected by outlier detection", labels=labels
        )
        ejected = GaugeMetricFamily(
            "eco_sidecar_proxy_ejected_endpoints", "Endpoints ejected now", labels=labels
        )
        connections = GaugeMetricFamily(
            "eco_sidecar_proxy_upstream_connections", "Open upstream connections", labels=labels
        )
        circuit = GaugeMetricFamily(
            "eco_sidecar_proxy_circuit_open",
            "1 while a circuit-breaker limit is reached",
            labels=labels,
        )
        received = CounterMetricFamily(
            "eco_sidecar_proxy_received_bytes", "Bytes received from downstream", labels=labels
        )
        sent = CounterMetricFamily(
            "eco_sidecar_proxy_sent_bytes", "Bytes sent downstream", labels=labels
        )
        latency = HistogramMetricFamily(
            "eco_sidecar_proxy_upstream_seconds",
            "Time to the upstream's answer (TCP: to connect), per attempt",
            labels=labels,
        )
        for listener in self._read():
            target = listener.target
            st = target.stats
            lv = [listener.name, listener.protocol]
            requests.add_metric(lv, st.requests)
            active.add_metric(lv, st.active)
            for code, n in sorted(st.responses.items()):
                responses.add_metric([*lv, code], n)
            for kind, n in sorted(st.errors.items()):
                errors.add_metric([*lv, kind], n)
            retries.add_metric(lv, st.retries)
            refused.add_metric(lv, st.retries_refused)
            ejections.add_metric(lv, st.ejections)
            ejected.add_metric(lv, len(target.balancer.ejected))
            connections.add_metric(lv, target.connections)
            circuit.add_metric(lv, 1.0 if target.circuit_open else 0.0)
            received.add_metric(lv, st.bytes_received)
            sent.add_metric(lv, st.bytes_sent)
            latency.add_metric(lv, buckets=st.latency.cumulative(), sum_value=st.latency.sum)
        yield from (requests, active, responses, errors, retries, refused, ejections, ejected)
        yield from (connections, circuit, received, sent, latency)


class _IdentityCollector:
    """The workload certificates: each one's expiry, and renewals so far."""

    def __init__(self, read: Callable[[], tuple[Sequence[tuple[str, float]], int]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        certificates, renewals = self._read()
        expiry = GaugeMetricFamily(
            "eco_sidecar_certificate_expiry_timestamp_seconds",
            "When each workload certificate expires (Unix time), by identity",
            labels=["identity"],
        )
        for identity, expires_at in certificates:
            expiry.add_metric([identity], expires_at)
        yield expiry
        yield _counter(
            "eco_sidecar_certificate_renewals", "Workload certificates renewed", renewals
        )


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value))


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=float(value))


class SidecarMetrics:
    """The sidecar's metrics; :meth:`render` is what ``/metrics`` serves."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "eco_sidecar_local_api_requests",
            "Local API calls by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "eco_sidecar_local_api_seconds",
            "Latency of unary local API calls",
            ["method"],
            registry=self.registry,
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25),
        )
        self.health_transitions = Counter(
            "eco_sidecar_health_transitions",
            "Health check transitions of local instances, by new status",
            ["status"],
            registry=self.registry,
        )
        self._children: dict[tuple[str, str], Counter] = {}
        self._latency: dict[str, Histogram] = {}

    def watch(self, read: Callable[[], MetricsSnapshot]) -> None:
        """Reports the sidecar's state, read at every scrape."""
        self.registry.register(_StateCollector(read))

    def observe(self, method: str, code: str, seconds: float | None) -> None:
        """Counts one local API call (children are looked up once, not per call)."""
        key = (method, code)
        counter = self._children.get(key)
        if counter is None:
            counter = self._children[key] = self.requests.labels(method, code)
        counter.inc()
        if seconds is not None:
            histogram = self._latency.get(method)
            if histogram is None:
                histogram = self._latency[method] = self.request_seconds.labels(method)
            histogram.observe(seconds)

    def watch_proxy(self, read: Callable[[], Sequence[Listener]]) -> None:
        """Reports the proxy listeners' counters, read at every scrape."""
        self.registry.register(_ProxyCollector(read))

    def watch_identity(self, read: Callable[[], tuple[Sequence[tuple[str, float]], int]]) -> None:
        """Reports the workload certificates ((identity, expiry) pairs, and the
        renewals so far), read at every scrape."""
        self.registry.register(_IdentityCollector(read))

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
