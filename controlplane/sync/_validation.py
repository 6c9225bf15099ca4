"""What the control plane checks of a sync job, field by field, before storing it.

The engine's vocabulary (modes, conflict policies) lives in the sidecar layer,
which the control plane must not import: the lists are written out here, and
a test keeps them equal to ``sidecar.sync.Mode`` and ``ConflictPolicy``. What a
URL *points at* (a bucket that exists, credentials that work) only the sidecar
on the job's node can know; here its scheme and shape are checked.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

from cronsim import CronSim, CronSimError
from ecosystem.v1 import sync_pb2 as spb

from controlplane.catalog import (
    SCHEMES,
    dataset_name_violations,
    dataset_reference,
    location_violations,
    platform_name_violations,
)
from controlplane.validation import node_violations as registry_node_violations
from serving.errors import FieldViolation, cut, excerpt

__all__ = [
    "CONFLICTS",
    "MAX_EVERY_SECONDS",
    "MAX_JOB_NAME",
    "MIN_EVERY_SECONDS",
    "MODES",
    "SCHEMES",
    "job_name_violations",
    "job_violations",
    "node_violations",
    "placement_violations",
    "profile_name_violations",
]

MODES = ("copy", "mirror", "bisync")
CONFLICTS = ("newer", "keep-both", "source", "destination", "manual")
MAX_JOB_NAME = 64
MIN_EVERY_SECONDS = 1.0
MAX_EVERY_SECONDS = 31 * 24 * 3600.0
MAX_TRANSFERS = 256
# A bus subject token: no '.', '*' or '>' (eco.sync.<name>.started).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_NAME_RULE = (
    f"letters, digits, '-' and '_', starting with a letter or digit, at most {MAX_JOB_NAME} "
    "characters (it is a token of the bus subject eco.sync.<name>.*)"
)


# A profile's name (the sidecar's rule, sidecar.sync._profiles, written out
# here for the same reason as MODES): the control plane keeps the name only.
_PROFILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def profile_name_violations(field: str, value: str) -> list[FieldViolation]:
    """The problems of a named profile ("" names none)."""
    if value and _PROFILE.fullmatch(value) is None:
        return [
            FieldViolation(
                field,
                f"{excerpt(value)} is not a valid profile name: letters, digits, '-', '_' and "
                "'.', starting with a letter or digit, at most 64 characters",
            )
        ]
    return []


def job_name_violations(field: str, value: str) -> list[FieldViolation]:
    """The problems of a job name."""
    if not value:
        return [FieldViolation(field, "is required")]
    if len(value) > MAX_JOB_NAME or _NAME.fullmatch(value) is None:
        return [FieldViolation(field, f"{excerpt(value)} is not a valid job name: {_NAME_RULE}")]
    return []


def node_violations(field: str, value: str) -> list[FieldViolation]:
    """The problems of a node id (the registry's rule for a node's id)."""
    if not value:
        return [FieldViolation(field, "is required (the node whose sidecar runs the job)")]
    return registry_node_violations(value, field)


def _url_violations(field: str, value: str) -> list[FieldViolation]:
    dataset = dataset_reference(value)
    if dataset is not None:
        # A dataset of the catalog (that it exists is the servicer's check).
        return dataset_name_violations(field, dataset)
    return location_violations(field, value)


def cron_problem(expression: str) -> str:
    """Why ``expression`` is not a usable cron expression ("" when it is)."""
    if len(expression.split()) != 5:
        return "a cron expression has five fields: minute hour day-of-month month day-of-week"
    try:
        CronSim(expression, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        return str(exc)
    return ""


def _schedule_violations(job: spb.SyncJob) -> list[FieldViolation]:
    which = job.WhichOneof("schedule")
    if which is None:
        return [FieldViolation("job.schedule", "is required: every_seconds or cron")]
    if which == "every_seconds":
        every = job.every_seconds
        if not math.isfinite(every) or not MIN_EVERY_SECONDS <= every <= MAX_EVERY_SECONDS:
            return [
                FieldViolation(
                    "job.every_seconds",
                    f"is {every:g}; between {MIN_EVERY_SECONDS:.0f} and {MAX_EVERY_SECONDS:.0f} "
                    "(31 days)",
                )
            ]
        return []
    problem = cron_problem(job.cron)
    if problem:
        return [FieldViolation("job.cron", f"{excerpt(job.cron, 64)}: {cut(problem, 200)}")]
    return []


def job_violations(job: spb.SyncJob) -> list[FieldViolation]:
    """Every problem of a job as Create or Update would store it."""
    violations = job_name_violations("job.name", job.name)
    violations += _url_violations("job.source", job.source)
    violations += _url_violations("job.destination", job.destination)
    if job.source and job.source.rstrip("/") == job.destination.rstrip("/"):
        violations.append(FieldViolation("job.destination", "is the source itself"))
    if job.mode and job.mode not in MODES:
        violations.append(
            FieldViolation("job.mode", f"{excerpt(job.mode)} is not one of {', '.join(MODES)}")
        )
    if job.conflict and job.conflict not in CONFLICTS:
        violations.append(
            FieldViolation(
                "job.conflict", f"{excerpt(job.conflict)} is not one of {', '.join(CONFLICTS)}"
            )
        )
    if job.HasField("max_delete") and not (
        math.isfinite(job.max_delete) and 0 <= job.max_delete <= 100
    ):
        violations.append(
            FieldViolation(
                "job.max_delete",
                f"is {job.max_delete:g}; a percentage 0-100 (100 turns the guard off)",
            )
        )
    if not 0 <= job.transfers <= MAX_TRANSFERS:
        violations.append(
            FieldViolation(
                "job.transfers", f"is {job.transfers}; 1-{MAX_TRANSFERS} (0: the default, 8)"
            )
        )
    if job.bandwidth < 0:
        violations.append(
            FieldViolation("job.bandwidth", f"is {job.bandwidth}; bytes per second, 0: unlimited")
        )
    violations += profile_name_violations("job.source_profile", job.source_profile)
    violations += profile_name_violations("job.destination_profile", job.destination_profile)
    violations += _schedule_violations(job)
    violations += placement_violations(job)
    return violations


def placement_violations(job: spb.SyncJob) -> list[FieldViolation]:
    """The problems of where a job runs: exactly one of a node and a platform
    (that the platform is registered is the servicer's check)."""
    if job.on_node and job.on_platform:
        return [
            FieldViolation(
                "job.on_platform",
                "is not for use with job.on_node: a job runs on one node or on any sidecar "
                "of one platform",
            )
        ]
    if job.on_platform:
        return platform_name_violations("job.on_platform", job.on_platform)
    if not job.on_node:
        return [
            FieldViolation(
                "job.on_node",
                "is required, or job.on_platform (the node whose sidecar runs the job, or "
                "the platform whose sidecars do)",
            )
        ]
    return node_violations("job.on_node", job.on_node)
