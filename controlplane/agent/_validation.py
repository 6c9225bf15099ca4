"""Validation of agent-stream messages at the edge.

Every message a sidecar sends is checked before it changes anything; a
problem is a ``FieldViolation`` named by its path in the message
(``hello.grace_seconds``, ``subscribe.services[3].name``,
``health.checks[0].output``). What happens to a bad message:

- ``Hello``, ``HealthReport``, ``Subscribe``, ``Ack``, and any message over
  `AGENT_LIMITS.message_bytes`: the stream ends with INVALID_ARGUMENT and
  the violations (the SDK never sends such a message; a sidecar that does
  is broken or hostile, and nothing it sent is applied);
- ``SyncInstances``: a bad instance is reported in ``SyncResult.errors`` and
  skipped, the rest are applied; a sync over the count or size limit is
  reported there and applied not at all.

Instances, check lists, names, and the node's location and metadata are
checked by `controlplane.validation`, the same code the registry API uses, so
the limits are the same everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ecosystem.v1 import agent_pb2
from ecosystem.v1 import registry_pb2 as pb

from controlplane.validation import (
    DEFAULT_NAMESPACE,
    MAX_VIOLATIONS,
    check_violations,
    instance_id_violations,
    name_violations,
    node_violations,
    placement_violations,
)
from serving.errors import FieldViolation, InvalidArgumentError, excerpt

__all__ = [
    "AGENT_LIMITS",
    "ack_violations",
    "health_violations",
    "hello_violations",
    "raise_if_any",
    "size_violation",
    "subscribe_violations",
]


class AGENT_LIMITS:
    """What one agent-stream message may carry (documented in docs/api.md)."""

    #: one ConnectRequest, serialized; syncs and updates larger than this come in parts
    message_bytes = 1024 * 1024
    #: instances of one node (one sync, all its parts)
    sync_instances = 1_000
    #: one sync, all its parts, serialized
    sync_bytes = 16 * 1024 * 1024
    #: entries of SyncResult.errors (a last one counts the rest)
    sync_errors = 100
    #: services in one Subscribe
    subscriptions = 1_000
    nonce_length = 64
    ack_error_length = 1024
    session_id_length = 64
    token_length = 4096
    node_address_length = 256
    #: Hello.grace_seconds and deregister_critical_after_seconds (0: the default)
    grace_seconds = (1, 3600)
    deregister_critical_after_seconds = (1, 7 * 24 * 3600)


_SESSION_ID = re.compile(rf"^[A-Za-z0-9_-]{{1,{AGENT_LIMITS.session_id_length}}}\Z")


def raise_if_any(problems: Sequence[FieldViolation]) -> None:
    """Raises one InvalidArgumentError listing at most MAX_VIOLATIONS problems."""
    if not problems:
        return
    listed = list(problems[:MAX_VIOLATIONS])
    if len(problems) > MAX_VIOLATIONS:
        listed.append(FieldViolation("", f"and {len(problems) - MAX_VIOLATIONS} more problems"))
    raise InvalidArgumentError(listed)


def size_violation(kind: str, size: int) -> list[FieldViolation]:
    """A message larger than `AGENT_LIMITS.message_bytes`."""
    if size <= AGENT_LIMITS.message_bytes:
        return []
    what = "; send a large sync in parts (more = true)" if kind == "sync" else ""
    return [
        FieldViolation(
            kind or "message",
            f"the message takes {size} bytes; at most {AGENT_LIMITS.message_bytes} are allowed"
            + what,
        )
    ]


def _between(field: str, value: int, bounds: tuple[int, int], *, zero: str) -> list[FieldViolation]:
    low, high = bounds
    if value == 0 or low <= value <= high:
        return []
    return [FieldViolation(field, f"must be between {low} and {high} ({zero}), got {value}")]


def _text(field: str, value: str, limit: int) -> list[FieldViolation]:
    if len(value) <= limit and value.isprintable():
        return []
    if len(value) > limit:
        return [FieldViolation(field, f"longer than {limit} characters ({len(value)})")]
    return [FieldViolation(field, f"{excerpt(value)} must not contain control characters")]


def hello_violations(hello: agent_pb2.Hello) -> list[FieldViolation]:
    """Every problem of a Hello."""
    node = hello.node
    problems = node_violations(node.id, "hello.node.id")
    problems += placement_violations(
        "hello.node",
        platform=node.platform,
        region=node.region,
        zone=node.zone,
        metadata=node.metadata,
    )
    problems += _text("hello.node.address", node.address, AGENT_LIMITS.node_address_length)
    if len(hello.token) > AGENT_LIMITS.token_length:
        problems.append(
            FieldViolation("hello.token", f"longer than {AGENT_LIMITS.token_length} characters")
        )
    if hello.session_id and not _SESSION_ID.match(hello.session_id):
        problems.append(
            FieldViolation(
                "hello.session_id",
                f"{excerpt(hello.session_id)} is not a session id: at most "
                f"{AGENT_LIMITS.session_id_length} letters, digits, '-' and '_'",
            )
        )
    if hello.applied_version < 0:
        problems.append(FieldViolation("hello.applied_version", "must not be negative"))
    problems += _between(
        "hello.grace_seconds",
        hello.grace_seconds,
        AGENT_LIMITS.grace_seconds,
        zero="0 for the default",
    )
    problems += _between(
        "hello.deregister_critical_after_seconds",
        hello.deregister_critical_after_seconds,
        AGENT_LIMITS.deregister_critical_after_seconds,
        zero="0 for the default",
    )
    return problems


def subscribe_violations(subscribe: agent_pb2.Subscribe) -> list[FieldViolation]:
    """Every problem of a Subscribe: too many services, bad names, repeats."""
    services = subscribe.services
    if len(services) > AGENT_LIMITS.subscriptions:
        return [
            FieldViolation(
                "subscribe.services",
                f"at most {AGENT_LIMITS.subscriptions} services are allowed, got {len(services)}",
            )
        ]
    problems: list[FieldViolation] = []
    seen: set[tuple[str, str]] = set()
    for i, ref in enumerate(services):
        prefix = f"subscribe.services[{i}]"
        found = name_violations(f"{prefix}.name", ref.name, required=True)
        found += name_violations(f"{prefix}.namespace", ref.namespace, required=False)
        problems += found
        key = (ref.namespace or DEFAULT_NAMESPACE, ref.name)
        if not found and key in seen:
            problems.append(FieldViolation(prefix, f"{key[0]}/{key[1]} is listed twice"))
        seen.add(key)
        if len(problems) > MAX_VIOLATIONS:
            break
    return problems


def ack_violations(ack: agent_pb2.Ack) -> list[FieldViolation]:
    """Every problem of an Ack."""
    problems: list[FieldViolation] = []
    if ack.version < 0:
        problems.append(FieldViolation("ack.version", "must not be negative"))
    if len(ack.nonce) > AGENT_LIMITS.nonce_length:
        problems.append(
            FieldViolation("ack.nonce", f"longer than {AGENT_LIMITS.nonce_length} characters")
        )
    if len(ack.error) > AGENT_LIMITS.ack_error_length:
        problems.append(
            FieldViolation("ack.error", f"longer than {AGENT_LIMITS.ack_error_length} characters")
        )
    return problems


def health_violations(report: agent_pb2.HealthReport) -> list[FieldViolation]:
    """Every problem of a HealthReport taken alone (the merged instance is
    checked again before it is written)."""
    problems = name_violations("health.service", report.service, required=True)
    problems += name_violations("health.namespace", report.namespace, required=False)
    problems += instance_id_violations("health.instance_id", report.instance_id)
    if report.health not in pb.HealthStatus.values():
        problems.append(FieldViolation("health.health", f"unknown health status {report.health}"))
    problems += check_violations(report.checks, "health.checks")
    return problems
