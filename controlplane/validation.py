"""Validation of registry requests at the edge.

Each validator collects every problem of a request (not just the first) as a
``FieldViolation`` naming the field by its path in the request, e.g.
``instance.port`` or ``instance.metadata["owner"]``, and raises one
``InvalidArgumentError``. Nothing reaches the store unless this passed.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence

from ecosystem.v1 import registry_pb2 as pb

from serving.errors import FieldViolation, InvalidArgumentError, excerpt
from serving.paging import check_paging

__all__ = [
    "DEFAULT_NAMESPACE",
    "LIMITS",
    "MAX_VIOLATIONS",
    "check_violations",
    "excerpt",
    "instance_id_violations",
    "instance_violations",
    "name_violations",
    "node_violations",
    "placement_violations",
    "validate_deregister",
    "validate_get_service",
    "validate_list_instances",
    "validate_list_services",
    "validate_register",
    "validate_selector",
    "validate_watch",
]

DEFAULT_NAMESPACE = "default"

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_LOCATION = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?\Z")
_NODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_HOST_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
_META_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,126}[A-Za-z0-9])?\Z")


class LIMITS:
    """Size limits of one instance (documented in docs/api.md)."""

    tags = 64
    tag_length = 128
    metadata_entries = 64
    metadata_value_length = 1024
    metadata_total_bytes = 16 * 1024
    checks = 32
    check_name_length = 128
    check_output_length = 4096
    check_output_total = 32 * 1024
    weight = 10_000
    #: one instance, serialized: every field at its limit stays below this
    instance_bytes = 64 * 1024
    lease_ttl_seconds = 3600
    progress_interval_ms = (100, 60_000)


#: field violations listed in one error; the rest are counted
MAX_VIOLATIONS = 20


class _Violations:
    def __init__(self) -> None:
        self.items: list[FieldViolation] = []
        self.more = 0

    def add(self, field: str, description: str) -> None:
        if len(self.items) < MAX_VIOLATIONS:
            self.items.append(FieldViolation(field, description))
        else:
            self.more += 1

    def raise_if_any(self) -> None:
        if self.items:
            items = self.items
            if self.more:
                items = [*items, FieldViolation("", f"and {self.more} more problems")]
            raise InvalidArgumentError(items)


def _check_name(v: _Violations, field: str, value: str, *, required: bool) -> None:
    if not value:
        if required:
            v.add(field, "is required")
        return
    if not _DNS_LABEL.match(value):
        v.add(
            field,
            f"{excerpt(value)} is not a valid name: use 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit",
        )


def _check_pattern(
    v: _Violations, field: str, value: str, pattern: re.Pattern[str], what: str
) -> None:
    if value and not pattern.match(value):
        v.add(field, f"{excerpt(value)} is not valid: {what}")


def _is_host(address: str) -> bool:
    if len(address) > 253 or not address.isascii() or not address.isprintable():
        return False
    try:
        ipaddress.ip_address(address)
        return True
    except ValueError:
        pass
    if address.endswith("."):
        return False
    labels = address.split(".")
    # A bare number like "300" or "1.2.3.999" is a broken IP, not a host name.
    if all(label.isdigit() for label in labels):
        return False
    return all(_HOST_LABEL.match(label) for label in labels)


def _check_health(v: _Violations, field: str, value: int) -> None:
    if value not in pb.HealthStatus.values():
        v.add(field, f"unknown health status {value}")


def _check_tags(v: _Violations, field: str, tags: Iterable[str]) -> None:
    tags = list(tags)
    if len(tags) > LIMITS.tags:
        v.add(field, f"at most {LIMITS.tags} tags are allowed, got {len(tags)}")
        return
    seen: set[str] = set()
    for i, tag in enumerate(tags):
        if not tag:
            v.add(f"{field}[{i}]", "must not be empty")
        elif len(tag) > LIMITS.tag_length:
            v.add(f"{field}[{i}]", f"longer than {LIMITS.tag_length} characters")
        elif not tag.isprintable() or any(c.isspace() for c in tag):
            v.add(f"{field}[{i}]", "must not contain spaces or control characters")
        elif tag in seen:
            v.add(f"{field}[{i}]", f"duplicate tag {excerpt(tag)}")
        seen.add(tag)


def _check_instance(v: _Violations, inst: pb.Instance, *, prefix: str) -> None:
    _check_pattern(
        v,
        f"{prefix}.id",
        inst.id,
        _ID,
        "use 1-128 letters, digits, '.', '_' and '-', starting with a letter or digit",
    )
    _check_name(v, f"{prefix}.service", inst.service, required=True)
    _check_name(v, f"{prefix}.namespace", inst.namespace, required=False)
    _check_pattern(
        v, f"{prefix}.node", inst.node, _NODE, "use 1-128 letters, digits, '.', '_' and '-'"
    )
    _check_location(v, prefix, inst.platform, inst.region, inst.zone)
    if not inst.address:
        v.add(f"{prefix}.address", "is required")
    elif not _is_host(inst.address):
        v.add(
            f"{prefix}.address",
            f"{excerpt(inst.address)} is neither an IP address nor a valid host name",
        )
    if not 1 <= inst.port <= 65535:
        v.add(f"{prefix}.port", f"must be between 1 and 65535, got {inst.port}")
    _check_tags(v, f"{prefix}.tags", inst.tags)
    _check_metadata(v, f"{prefix}.metadata", inst.metadata)
    if inst.weight > LIMITS.weight:
        v.add(f"{prefix}.weight", f"must be at most {LIMITS.weight}, got {inst.weight}")
    _check_health(v, f"{prefix}.health", inst.health)
    _check_checks(v, f"{prefix}.checks", inst.checks)
    if inst.liveness not in pb.Liveness.values():
        v.add(f"{prefix}.liveness", f"unknown liveness {inst.liveness}")
    if not v.items and inst.ByteSize() > LIMITS.instance_bytes:
        # Only reachable past the field limits by unknown fields or a future
        # field: the backstop that keeps every stored instance small.
        v.add(
            prefix,
            f"takes {inst.ByteSize()} bytes serialized; at most {LIMITS.instance_bytes} "
            "are allowed",
        )


def _check_location(v: _Violations, prefix: str, platform: str, region: str, zone: str) -> None:
    for name, value in (("platform", platform), ("region", region), ("zone", zone)):
        _check_pattern(
            v,
            f"{prefix}.{name}",
            value,
            _LOCATION,
            "use 1-63 lowercase letters, digits, '.', '_' and '-'",
        )


def _check_metadata(v: _Violations, field: str, metadata: Mapping[str, str]) -> None:
    if len(metadata) > LIMITS.metadata_entries:
        v.add(
            field,
            f"at most {LIMITS.metadata_entries} entries are allowed, got {len(metadata)}",
        )
    total = 0
    entries = sorted(metadata.items()) if len(metadata) <= LIMITS.metadata_entries else []
    for key, value in entries:
        entry = f"{field}[{_key_path(key)}]"
        total += len(key.encode()) + len(value.encode())
        if not _META_KEY.match(key):
            v.add(
                entry,
                "key must be 1-128 letters, digits, '.', '_', '/' and '-', "
                "starting and ending with a letter or digit",
            )
        if len(value) > LIMITS.metadata_value_length:
            v.add(entry, f"value longer than {LIMITS.metadata_value_length} characters")
    if total > LIMITS.metadata_total_bytes:
        v.add(field, f"larger than {LIMITS.metadata_total_bytes} bytes in all")


def _key_path(key: str) -> str:
    """A map key as it appears in a field path: quoted, and cut when long."""
    if len(key) <= 128 and key.isprintable():
        return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return excerpt(key)


def _check_checks(v: _Violations, field: str, checks: Sequence[pb.CheckStatus]) -> None:
    if len(checks) > LIMITS.checks:
        v.add(field, f"at most {LIMITS.checks} checks are allowed, got {len(checks)}")
        return
    total = 0
    for i, check in enumerate(checks):
        if not check.name:
            v.add(f"{field}[{i}].name", "is required")
        elif len(check.name) > LIMITS.check_name_length:
            v.add(f"{field}[{i}].name", f"longer than {LIMITS.check_name_length} characters")
        elif not check.name.isprintable():
            v.add(f"{field}[{i}].name", "must not contain control characters")
        _check_health(v, f"{field}[{i}].status", check.status)
        total += len(check.output)
        if len(check.output) > LIMITS.check_output_length:
            v.add(
                f"{field}[{i}].output",
                f"longer than {LIMITS.check_output_length} characters",
            )
        if check.changed_at_ms < 0:
            v.add(f"{field}[{i}].changed_at_ms", "must not be negative")
    if total > LIMITS.check_output_total:
        v.add(field, f"outputs longer than {LIMITS.check_output_total} characters in all")


def check_violations(checks: Sequence[pb.CheckStatus], prefix: str) -> list[FieldViolation]:
    """Every problem of a list of check results (as a health report carries), without raising."""
    v = _Violations()
    _check_checks(v, prefix, checks)
    return v.items


def instance_violations(inst: pb.Instance, prefix: str) -> list[FieldViolation]:
    """Every problem of one instance (an id is required), without raising."""
    v = _Violations()
    _check_instance(v, inst, prefix=prefix)
    if not inst.id:
        v.add(f"{prefix}.id", "is required")
    return v.items


def node_violations(node_id: str, prefix: str) -> list[FieldViolation]:
    v = _Violations()
    if not node_id:
        v.add(prefix, "is required")
    else:
        _check_pattern(v, prefix, node_id, _NODE, "use 1-128 letters, digits, '.', '_' and '-'")
    return v.items


def _check_id(v: _Violations, field: str, value: str) -> None:
    if not value:
        v.add(field, "is required")
    else:
        _check_pattern(
            v,
            field,
            value,
            _ID,
            "use 1-128 letters, digits, '.', '_' and '-', starting with a letter or digit",
        )


def name_violations(field: str, value: str, *, required: bool) -> list[FieldViolation]:
    """The problems of a service or namespace name (a DNS label), without raising."""
    v = _Violations()
    _check_name(v, field, value, required=required)
    return v.items


def instance_id_violations(field: str, value: str) -> list[FieldViolation]:
    """The problems of an instance id (required), without raising."""
    v = _Violations()
    _check_id(v, field, value)
    return v.items


def placement_violations(
    prefix: str, *, platform: str, region: str, zone: str, metadata: Mapping[str, str]
) -> list[FieldViolation]:
    """The problems of a platform, region, zone and metadata held to the rules
    of an instance's (a sidecar's node is), named under ``prefix``, without raising."""
    v = _Violations()
    _check_location(v, prefix, platform, region, zone)
    _check_metadata(v, f"{prefix}.metadata", metadata)
    return v.items


def validate_register(req: pb.RegisterInstanceRequest) -> None:
    v = _Violations()
    if not req.HasField("instance"):
        v.add("instance", "is required")
        v.raise_if_any()
    _check_instance(v, req.instance, prefix="instance")
    if not req.instance.id:
        v.add("instance.id", "is required")
    ephemeral = req.instance.liveness == pb.LIVENESS_EPHEMERAL
    if req.lease_id < 0:
        v.add("lease_id", "must not be negative")
    elif req.lease_id and not ephemeral:
        v.add("lease_id", "only ephemeral instances are bound to a lease")
    if not 0 <= req.lease_ttl_seconds <= LIMITS.lease_ttl_seconds:
        v.add(
            "lease_ttl_seconds",
            f"must be between 1 and {LIMITS.lease_ttl_seconds} (0 for the default), "
            f"got {req.lease_ttl_seconds}",
        )
    if req.HasField("expected_revision") and req.expected_revision < 0:
        v.add("expected_revision", "must not be negative")
    v.raise_if_any()


def validate_deregister(req: pb.DeregisterInstanceRequest) -> None:
    v = _Violations()
    _check_name(v, "service", req.service, required=True)
    _check_name(v, "namespace", req.namespace, required=False)
    _check_id(v, "id", req.id)
    if req.HasField("expected_revision") and req.expected_revision <= 0:
        v.add(
            "expected_revision",
            "must be a revision (> 0); leave it unset to remove the instance at any revision",
        )
    v.raise_if_any()


def validate_get_service(req: pb.GetServiceRequest) -> None:
    v = _Violations()
    _check_name(v, "name", req.name, required=True)
    _check_name(v, "namespace", req.namespace, required=False)
    v.items += check_paging(req.page_size, req.page_token)
    v.raise_if_any()


def validate_list_services(req: pb.ListServicesRequest) -> None:
    v = _Violations()
    _check_name(v, "namespace", req.namespace, required=False)
    v.items += check_paging(req.page_size, req.page_token)
    v.raise_if_any()


def validate_list_instances(req: pb.ListInstancesRequest) -> None:
    v = _Violations()
    _selector_violations(v, req.selector, "selector")
    v.items += check_paging(req.page_size, req.page_token)
    v.raise_if_any()


def _selector_violations(v: _Violations, sel: pb.InstanceSelector, prefix: str) -> None:
    _check_name(v, f"{prefix}.service", sel.service, required=False)
    _check_name(v, f"{prefix}.namespace", sel.namespace, required=False)
    _check_pattern(v, f"{prefix}.platform", sel.platform, _LOCATION, "not a valid platform")
    _check_pattern(v, f"{prefix}.zone", sel.zone, _LOCATION, "not a valid zone")
    _check_tags(v, f"{prefix}.tags", sel.tags)
    if len(sel.health) > len(pb.HealthStatus.values()):
        v.add(
            f"{prefix}.health",
            f"at most {len(pb.HealthStatus.values())} states, got {len(sel.health)}",
        )
        return
    for i, health in enumerate(sel.health):
        _check_health(v, f"{prefix}.health[{i}]", health)


def validate_selector(sel: pb.InstanceSelector, prefix: str = "selector") -> None:
    v = _Violations()
    _selector_violations(v, sel, prefix)
    v.raise_if_any()


def validate_watch(req: pb.WatchRequest) -> None:
    v = _Violations()
    _selector_violations(v, req.selector, "selector")
    if req.since_revision < 0:
        v.add("since_revision", "must not be negative")
    low, high = LIMITS.progress_interval_ms
    if req.progress_interval_ms and not low <= req.progress_interval_ms <= high:
        v.add(
            "progress_interval_ms",
            f"must be between {low} and {high} (0 for the default), got {req.progress_interval_ms}",
        )
    v.raise_if_any()
