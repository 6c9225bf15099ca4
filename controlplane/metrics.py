"""Prometheus metrics of one control-plane process (its own registry, so
several control planes can live in one process, as they do in tests)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rpcs = Counter(
            "eco_controlplane_rpcs",
            "RPCs handled, by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.rpc_seconds = Histogram(
            "eco_controlplane_rpc_seconds",
            "Latency of unary RPCs",
            ["method"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )
        self._rpc_children: dict[tuple[str, str], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}
        self.watch_streams = Counter(
            "eco_controlplane_watch_streams",
            "Watch streams opened",
            registry=self.registry,
        )
        self.agent_streams_shed = Counter(
            "eco_controlplane_agent_streams_shed",
            "Sidecar streams ended to spread load over the replicas",
            registry=self.registry,
        )

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        """Counts one RPC; the labelled children are looked up once, not per call."""
        key = (method, code)
        counter = self._rpc_children.get(key)
        if counter is None:
            counter = self._rpc_children[key] = self.rpcs.labels(method, code)
        counter.inc()
        histogram = self._latency_children.get(method)
        if histogram is None:
            histogram = self._latency_children[method] = self.rpc_seconds.labels(method)
        histogram.observe(seconds)

    def gauge(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """A gauge whose value is read when scraped."""
        Gauge(name, doc, registry=self.registry).set_function(read)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
