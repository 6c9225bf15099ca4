"""The sidecar's data plane: TCP, HTTP/1.1 and gRPC proxy listeners.

Upstream listeners (``upstreams[].listen``) take connections from local
applications and forward each to an endpoint of a service, picked by the
service's balancer; inbound listeners (``inbound``) take connections from
remote sidecars and forward them to the local application. Every listener
forwards through a :class:`Target`, which owns circuit breaking, outlier
ejection, the retry budget and the counters. See ``docs/proxy.md``.
"""

from sidecar.proxy._listener import Listener
from sidecar.proxy._stats import LatencyHistogram, TargetStats
from sidecar.proxy._target import CircuitOpenError, Outcome, Target, fixed_endpoint

__all__ = [
    "CircuitOpenError",
    "LatencyHistogram",
    "Listener",
    "Outcome",
    "Target",
    "TargetStats",
    "fixed_endpoint",
]
