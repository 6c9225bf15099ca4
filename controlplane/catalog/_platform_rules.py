"""What the control plane checks of a platform, field by field, before storing it."""

from __future__ import annotations

import re
from collections.abc import Mapping

from ecosystem.v1 import platform_pb2 as ppb

from serving.errors import FieldViolation, cut, excerpt

__all__ = [
    "KINDS",
    "MAX_DESCRIPTION",
    "MAX_LABELS",
    "MAX_REGIONS",
    "dns_label_violations",
    "kind_name",
    "label_violations",
    "platform_name_violations",
    "platform_violations",
]

MAX_REGIONS = 64
MAX_LABELS = 64
MAX_DESCRIPTION = 1024
#: The kinds by their short names (the CLI's and the docs' words).
KINDS = {
    "core": ppb.PLATFORM_KIND_CORE,
    "cloud": ppb.PLATFORM_KIND_CLOUD,
    "onprem": ppb.PLATFORM_KIND_ONPREM,
}
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_DNS_RULE = (
    "a DNS label: lower-case letters, digits and '-', starting and ending with a letter or "
    "digit, at most 63 characters"
)
# Kubernetes' label syntax: [prefix/]name, name and value up to 63 characters.
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")
_LABEL_PREFIX = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")


def kind_name(kind: int) -> str:
    """The short name of a kind ("" for unspecified or unknown)."""
    return next((name for name, value in KINDS.items() if value == kind), "")


def dns_label_violations(field: str, value: str, *, required: bool = True) -> list[FieldViolation]:
    if not value:
        return [FieldViolation(field, "is required")] if required else []
    if _DNS_LABEL.fullmatch(value) is None:
        return [FieldViolation(field, f"{excerpt(value)} is not {_DNS_RULE}")]
    return []


def platform_name_violations(field: str, value: str) -> list[FieldViolation]:
    return dns_label_violations(field, value)


def label_violations(field: str, labels: Mapping[str, str]) -> list[FieldViolation]:
    """The problems of a label map (as Kubernetes labels: ``[prefix/]name`` = value)."""
    violations = []
    if len(labels) > MAX_LABELS:
        violations.append(FieldViolation(field, f"{len(labels)} labels; at most {MAX_LABELS}"))
    for key, value in sorted(labels.items())[:MAX_LABELS]:
        where = f"{field}[{cut(key, 64)}]"
        prefix, _, name = key.rpartition("/")
        if _LABEL_NAME.fullmatch(name) is None or (
            prefix and _LABEL_PREFIX.fullmatch(prefix) is None
        ):
            violations.append(
                FieldViolation(
                    where,
                    f"{excerpt(key)} is not a label key: [DNS-prefix/]name, the name up to 63 "
                    "letters, digits, '-', '_' and '.', starting and ending with a letter or digit",
                )
            )
        if value and _LABEL_NAME.fullmatch(value) is None:
            violations.append(
                FieldViolation(
                    where,
                    f"value {excerpt(value)} is not a label value: empty, or up to 63 letters, "
                    "digits, '-', '_' and '.', starting and ending with a letter or digit",
                )
            )
    return violations


def platform_violations(platform: ppb.Platform, prefix: str = "platform") -> list[FieldViolation]:
    """Every problem of a platform as RegisterPlatform would store it."""
    violations = platform_name_violations(f"{prefix}.name", platform.name)
    if platform.kind not in KINDS.values():
        violations.append(
            FieldViolation(f"{prefix}.kind", f"is required: one of {', '.join(KINDS)}")
        )
    if platform.kind == ppb.PLATFORM_KIND_CLOUD and not platform.provider:
        violations.append(
            FieldViolation(f"{prefix}.provider", "is required for a cloud platform (aws, gcp, …)")
        )
    else:
        violations += dns_label_violations(f"{prefix}.provider", platform.provider, required=False)
    if len(platform.regions) > MAX_REGIONS:
        violations.append(
            FieldViolation(
                f"{prefix}.regions", f"{len(platform.regions)} regions; at most {MAX_REGIONS}"
            )
        )
    seen: set[str] = set()
    for index, region in enumerate(platform.regions[:MAX_REGIONS]):
        field = f"{prefix}.regions[{index}]"
        violations += dns_label_violations(field, region)
        if region in seen:
            violations.append(FieldViolation(field, f"{excerpt(region)} is listed twice"))
        seen.add(region)
    violations += label_violations(f"{prefix}.labels", platform.labels)
    if len(platform.description) > MAX_DESCRIPTION:
        violations.append(
            FieldViolation(
                f"{prefix}.description",
                f"is {len(platform.description)} characters; at most {MAX_DESCRIPTION}",
            )
        )
    return violations
