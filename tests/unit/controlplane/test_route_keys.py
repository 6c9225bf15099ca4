"""The control plane's list of route keys is the gateway's route model's.

The control plane checks that a stored route's spec has only known top-level
keys, but may not import the gateway (layers); this keeps the two lists equal.
"""

from __future__ import annotations

from controlplane.routes import SPEC_KEYS
from sidecar.gateway.config import RouteConfig


def test_the_control_plane_knows_every_key_of_the_gateways_route_model() -> None:
    assert set(RouteConfig.model_fields) == SPEC_KEYS
