"""The xDS server: the registry as Listener, RouteConfiguration, Cluster and
ClusterLoadAssignment resources over the Aggregated Discovery Service, for
gRPC's proxyless clients in any language (and Envoy). docs/xds.md says how
to use it.

- ``XdsCache`` follows the registry view and builds the resources once per
  revision, shared by every stream;
- ``AdsServicer`` serves one session per stream (state of the world or
  incremental) and records, per node, what it was sent, ACKed and NACKed
  in a ``NodeBook``;
- ``CsdsServicer`` serves that book as the Client Status Discovery Service.
"""

from controlplane.xds._cache import Snapshot, XdsCache
from controlplane.xds._csds import CSDS_SERVICE, CsdsServicer, add_csds, client_config
from controlplane.xds._envoy import EnvoyMesh
from controlplane.xds._resources import (
    CLUSTER,
    ENDPOINTS,
    LB_POLICY_KEY,
    LISTENER,
    ROUTE,
    TYPES,
    ServiceName,
)
from controlplane.xds._servicer import ADS_SERVICE, AdsServicer, add_ads
from controlplane.xds._session import node_kind
from controlplane.xds._status import NodeBook, NodeStatus, Rejection, TypeStatus

__all__ = [
    "ADS_SERVICE",
    "CLUSTER",
    "CSDS_SERVICE",
    "ENDPOINTS",
    "LB_POLICY_KEY",
    "LISTENER",
    "ROUTE",
    "TYPES",
    "AdsServicer",
    "CsdsServicer",
    "EnvoyMesh",
    "NodeBook",
    "NodeStatus",
    "Rejection",
    "ServiceName",
    "Snapshot",
    "TypeStatus",
    "XdsCache",
    "add_ads",
    "add_csds",
    "client_config",
    "node_kind",
]
