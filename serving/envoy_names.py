"""Names the control plane and the sidecar agree on for a sidecar's Envoy
(docs/xds.md, "Envoy as the sidecar's data plane"): spelled once here, so the
two sides cannot drift apart.

- node metadata the sidecar's Envoy bootstrap sets and the control plane
  reads to plan that Envoy (its listeners, the identity it calls as);
- instance metadata of a service behind a sidecar's inbound listener;
- the Secret Discovery Service the sidecar serves to its Envoy: the static
  cluster that reaches it and the secrets' names, which the listeners and
  clusters the control plane builds refer to.
"""

from __future__ import annotations

__all__ = [
    "BUNDLE_SECRET",
    "CALLER_KEY",
    "INBOUND_PORT_KEY",
    "LISTENERS_KEY",
    "NODE_SECRET",
    "SDS_CLUSTER",
    "service_secret",
]

#: Node metadata holding the sidecar's proxy listeners and their policies.
LISTENERS_KEY = "eco.listeners"
#: Node metadata naming the identity upstream connections present:
#: ``{namespace, service}`` of the sidecar's first local service (absent: the node's).
CALLER_KEY = "eco.caller"
#: Instance metadata naming the port of the sidecar's inbound listener in front
#: of that instance: a client sidecar (or its Envoy) dials it instead of the
#: instance's port.
INBOUND_PORT_KEY = "eco.inbound.port"
#: The bootstrap's static cluster that reaches the sidecar's SDS server.
SDS_CLUSTER = "eco_sds"
#: The secret holding the node's own certificate and key.
NODE_SECRET = "eco/node"
#: The secret holding the CA's roots.
BUNDLE_SECRET = "eco/trust-bundle"


def service_secret(namespace: str, service: str) -> str:
    """The secret holding a local service's certificate and key."""
    return f"eco/svc/{namespace or 'default'}/{service}"
