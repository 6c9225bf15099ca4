"""The shape of a gateway route, as the control plane checks it.

The control plane cannot know what a route's keys mean (that is the
gateway's config model, in the sidecar layer, which it must not import):
it checks the name, that the spec is an object of the known top-level keys,
and the sizes. ``eco route apply`` checks the meaning before it sends
routes, and every gateway checks it again when it receives them.
"""

from __future__ import annotations

import re

from ecosystem.v1 import gateway_pb2 as gpb

from serving.errors import FieldViolation, cut, excerpt

__all__ = [
    "MAX_APPLY_SPEC_BYTES",
    "MAX_NAME",
    "MAX_ROUTES_PER_APPLY",
    "MAX_SPEC_BYTES",
    "SPEC_KEYS",
    "apply_violations",
    "route_name_violations",
]

MAX_NAME = 128
#: Bytes of one route's spec, encoded.
MAX_SPEC_BYTES = 64 * 1024
#: Routes in one ApplyRoutes request …
MAX_ROUTES_PER_APPLY = 1_000
#: … and bytes of their specs in all: one apply is one store revision, and
#: its watch events travel in one response (under a stock client's 4 MiB).
MAX_APPLY_SPEC_BYTES = 2 * 1024 * 1024
#: The top-level keys of a route in the gateway's config (docs/gateway.md);
#: a test keeps them equal to the gateway's route model.
SPEC_KEYS = frozenset(
    {
        "name",
        "match",
        "upstream",
        "endpoints",
        "split",
        "redirect",
        "namespace",
        "rewrite",
        "timeout",
        "policy",
        "plugins",
    }
)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_NAME_RULE = (
    f"letters, digits, '-', '_' and '.', starting with a letter or digit, "
    f"at most {MAX_NAME} characters"
)


def route_name_violations(field: str, value: str, *, required: bool = True) -> list[FieldViolation]:
    """The problems of a route name (or of a group, ``required=False``)."""
    if not value:
        return [FieldViolation(field, "is required")] if required else []
    if len(value) > MAX_NAME or _NAME.fullmatch(value) is None:
        return [FieldViolation(field, f"{excerpt(value)} is not a valid name: {_NAME_RULE}")]
    return []


def _route_violations(field: str, route: gpb.Route) -> list[FieldViolation]:
    violations = route_name_violations(f"{field}.name", route.name)
    if not route.HasField("spec"):
        return [*violations, FieldViolation(f"{field}.spec", "is required (the route's mapping)")]
    size = route.spec.ByteSize()
    if size > MAX_SPEC_BYTES:
        violations.append(
            FieldViolation(f"{field}.spec", f"is {size} bytes encoded; at most {MAX_SPEC_BYTES}")
        )
    unknown = sorted(set(route.spec.fields) - SPEC_KEYS)
    for key in unknown[:10]:
        violations.append(
            FieldViolation(
                f"{field}.spec.{cut(key, 64)}",
                f"is not a route key; known keys: {', '.join(sorted(SPEC_KEYS))}",
            )
        )
    if "name" in route.spec.fields:
        named = route.spec.fields["name"]
        if named.WhichOneof("kind") != "string_value" or named.string_value != route.name:
            violations.append(
                FieldViolation(f"{field}.spec.name", "must equal the route's name (or be left out)")
            )
    return violations


def apply_violations(request: gpb.ApplyRoutesRequest) -> list[FieldViolation]:
    """Every problem of an ApplyRoutes request (each route's, by index)."""
    violations = route_name_violations("group", request.group, required=False)
    if len(request.routes) > MAX_ROUTES_PER_APPLY:
        violations.append(
            FieldViolation(
                "routes", f"{len(request.routes)} routes; at most {MAX_ROUTES_PER_APPLY} per apply"
            )
        )
        return violations
    if not request.routes and not request.prune:
        violations.append(FieldViolation("routes", "is empty (to delete every route, use prune)"))
    seen: dict[str, int] = {}
    total = 0
    for index, route in enumerate(request.routes):
        field = f"routes[{index}]"
        violations += _route_violations(field, route)
        total += route.spec.ByteSize()
        first = seen.setdefault(route.name, index)
        if first != index and route.name:
            violations.append(
                FieldViolation(f"{field}.name", f"{excerpt(route.name)} is also routes[{first}]")
            )
    if total > MAX_APPLY_SPEC_BYTES:
        violations.append(
            FieldViolation(
                "routes", f"specs of {total} bytes in all; at most {MAX_APPLY_SPEC_BYTES} per apply"
            )
        )
    return violations
