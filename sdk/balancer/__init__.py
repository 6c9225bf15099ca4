"""Client-side load balancing: pick one endpoint of a service per request.

Used by the sidecar and by proxyless clients alike::

    from sdk.balancer import Endpoint, make_balancer

    balancer = make_balancer("p2c_ewma")
    balancer.update([Endpoint.from_instance(i) for i in instances])  # on every watch update
    endpoint = balancer.pick()
    ...  # call endpoint.authority
    balancer.release(endpoint, latency=elapsed, failed=not ok)

Strategies (:data:`STRATEGIES`): ``round_robin``, ``random``,
``health_based``, ``weighted``, ``least_connections``, ``p2c_ewma``,
``ring_hash``; locality preference wraps any of them
(``make_balancer(name, locality=Locality(zone=..., region=...))``). All skip
CRITICAL and ejected endpoints unless too few are left (panic routing).
``pick()`` costs O(1) or O(log n); ``update()`` rebuilds. Balancers are not
thread-safe: each belongs to one asyncio event loop. See
``docs/load-balancing.md``.
"""

from sdk.balancer._base import Balancer
from sdk.balancer._endpoint import Endpoint
from sdk.balancer._errors import NoEndpointsError
from sdk.balancer._factory import STRATEGIES, make_balancer
from sdk.balancer._locality import Locality, LocalityBalancer

__all__ = [
    "STRATEGIES",
    "Balancer",
    "Endpoint",
    "Locality",
    "LocalityBalancer",
    "NoEndpointsError",
    "make_balancer",
]
