"""The API gateway's routes, kept in the control plane (RouteService).

Every gateway replica follows them over WatchRoutes. Stored under
``/ecosystem/v1/routes/<name>``; see ``_book`` for how they are followed and
fanned out, ``_validation`` for what the control plane checks of them.
"""

from __future__ import annotations

from ._book import ROUTES_PREFIX, RouteBook, RouteWatcher, decode_route, prune_targets, route_key
from ._servicer import ROUTE_SERVICE, RouteServicer, route_handler
from ._validation import MAX_NAME, MAX_ROUTES_PER_APPLY, MAX_SPEC_BYTES, SPEC_KEYS

__all__ = [
    "MAX_NAME",
    "MAX_ROUTES_PER_APPLY",
    "MAX_SPEC_BYTES",
    "ROUTES_PREFIX",
    "ROUTE_SERVICE",
    "SPEC_KEYS",
    "RouteBook",
    "RouteServicer",
    "RouteWatcher",
    "decode_route",
    "prune_targets",
    "route_handler",
    "route_key",
]
