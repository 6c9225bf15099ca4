"""Proxyless mode: call a service by name over gRPC, balanced in this process.

:class:`ServiceChannel` stands where a ``grpc.aio.Channel`` would; it learns
the service's endpoints from an :class:`EndpointSource` and picks one per
call. Inside:

- ``_channel``: :class:`ServiceChannel`;
- ``_calls``: the multicallables and calls it hands to generated stubs
  (per-call pick, retry of unary calls);
- ``_policy``: the retry decision and per-call options the calls share;
- ``_pool``: :class:`EndpointPool`, the endpoints, their balancer and one
  channel each;
- ``_sources``: where the endpoints come from (the control plane, the local
  sidecar, a static list);
- ``_stream``: the deferred streaming call made before the first endpoint list.

Everything public here is also exported by :mod:`sdk`.
"""

from sdk.proxyless._channel import ServiceChannel
from sdk.proxyless._sources import (
    ControlPlaneSource,
    EndpointSource,
    SidecarSource,
    StaticEndpointSource,
)

__all__ = [
    "ControlPlaneSource",
    "EndpointSource",
    "ServiceChannel",
    "SidecarSource",
    "StaticEndpointSource",
]
