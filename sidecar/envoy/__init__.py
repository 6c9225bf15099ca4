"""Envoy as the sidecar's data plane (``dataplane: envoy``; docs/xds.md).

The sidecar starts and supervises an Envoy (:class:`EnvoyProcess`) whose
bootstrap names the sidecar's node and points at the control plane's ADS;
the control plane builds Envoy's listeners from the listeners the bootstrap
lists (:func:`envoy_listeners`). The sidecar keeps its other jobs, and
serves Envoy its workload certificates and trust bundle by SDS on a Unix
socket (:class:`SecretServer`): with a CA on the control plane, Envoy's
inbound listeners require mutual TLS and enforce the intentions.
"""

from sidecar.envoy._bootstrap import (
    DEFAULT_BINARY,
    EnvoyListener,
    bootstrap,
    envoy_listeners,
    find_binary,
)
from sidecar.envoy._process import EnvoyProcess
from sidecar.envoy._sds import SecretServer

__all__ = [
    "DEFAULT_BINARY",
    "EnvoyListener",
    "EnvoyProcess",
    "SecretServer",
    "bootstrap",
    "envoy_listeners",
    "find_binary",
]
