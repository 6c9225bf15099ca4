"""What the control plane checks of a dataset, field by field, before storing it.

A dataset's location is a sync connector URL. The connectors live in the
sidecar layer, which the control plane must not import: the URL's scheme and
shape are checked here (the same rules as a sync job's source and
destination); whether it can be reached only a sidecar can tell. The schema
is checked to be a valid JSON Schema with ``jsonschema``'s metaschemas.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

import jsonschema
from ecosystem.v1 import catalog_pb2 as cpb

from serving.errors import FieldViolation, cut, excerpt

from ._platform_rules import MAX_DESCRIPTION, dns_label_violations

__all__ = [
    "DATASET_SCHEME",
    "MAX_SCHEMA_BYTES",
    "MAX_TAGS",
    "SCHEMES",
    "dataset_name_violations",
    "dataset_reference",
    "dataset_violations",
    "location_violations",
    "schema_problems",
]

#: URL schemes the sync connectors know (docs/sync.md).
SCHEMES = ("file", "s3", "gs", "az", "sftp")
#: A sync job's source or destination ``dataset:NAME`` names a dataset.
DATASET_SCHEME = "dataset:"
MAX_NAME = 128
MAX_URL = 2048
MAX_OWNER = 256
MAX_TAGS = 64
MAX_TAG = 64
MAX_SCHEMA_BYTES = 256 * 1024
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_NAME_RULE = (
    f"letters, digits, '-', '_' and '.', starting with a letter or digit, at most {MAX_NAME} "
    "characters"
)
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*")


def dataset_name_violations(field: str, value: str) -> list[FieldViolation]:
    if not value:
        return [FieldViolation(field, "is required")]
    if len(value) > MAX_NAME or _NAME.fullmatch(value) is None:
        return [
            FieldViolation(field, f"{excerpt(value)} is not a valid dataset name: {_NAME_RULE}")
        ]
    return []


def dataset_reference(value: str) -> str | None:
    """The dataset a sync job's ``dataset:NAME`` names (None for a URL)."""
    if value.startswith(DATASET_SCHEME):
        return value[len(DATASET_SCHEME) :]
    return None


def location_violations(field: str, value: str) -> list[FieldViolation]:
    """The problems of a sync connector URL (its scheme and shape)."""
    if not value:
        return [FieldViolation(field, "is required (a URL such as file:///data or s3://bucket)")]
    if len(value) > MAX_URL:
        return [FieldViolation(field, f"is {len(value)} characters; at most {MAX_URL}")]
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        return [FieldViolation(field, f"{excerpt(value)} is not a URL: {exc}")]
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        shown = f"scheme {scheme!r}" if scheme else "no scheme"
        return [FieldViolation(field, f"{excerpt(value)} has {shown}; known: {known}")]
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            return [FieldViolation(field, "a file URL is file:///absolute/path")]
    elif scheme == "sftp":
        if not parts.hostname:
            return [FieldViolation(field, "an sftp URL is sftp://user@host[:port]/path")]
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            return [FieldViolation(field, f"{excerpt(value)}: the port is not a number 1-65535")]
    elif not parts.netloc:
        where = "CONTAINER" if scheme == "az" else "BUCKET"
        return [FieldViolation(field, f"{scheme} URLs are {scheme}://{where}[/prefix]")]
    return []


def schema_problems(text: str) -> str:
    """Why ``text`` is not a JSON Schema document ("" when it is one)."""
    if len(text.encode()) > MAX_SCHEMA_BYTES:
        return f"is {len(text.encode())} bytes; at most {MAX_SCHEMA_BYTES}"
    try:
        document = json.loads(text)
    except ValueError as exc:
        return f"is not JSON: {exc}"
    if not isinstance(document, dict):
        return f"is a JSON {type(document).__name__}, not a schema (an object)"
    try:
        validator = jsonschema.validators.validator_for(
            document, default=jsonschema.Draft202012Validator
        )
        validator.check_schema(document)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(part) for part in exc.absolute_path) or "(the document)"
        return f"is not a valid JSON Schema at {where}: {cut(exc.message, 200)}"
    return ""


def dataset_violations(dataset: cpb.Dataset, prefix: str = "dataset") -> list[FieldViolation]:
    """Every problem of a dataset as Add or Update would store it (the platform's
    existence is the servicer's check: it needs the store)."""
    violations = dataset_name_violations(f"{prefix}.name", dataset.name)
    violations += location_violations(f"{prefix}.location", dataset.location)
    violations += dns_label_violations(f"{prefix}.platform", dataset.platform, required=False)
    if len(dataset.owner) > MAX_OWNER:
        violations.append(
            FieldViolation(
                f"{prefix}.owner", f"is {len(dataset.owner)} characters; at most {MAX_OWNER}"
            )
        )
    if dataset.schema:
        problem = schema_problems(dataset.schema)
        if problem:
            violations.append(FieldViolation(f"{prefix}.schema", problem))
    if len(dataset.tags) > MAX_TAGS:
        violations.append(
            FieldViolation(f"{prefix}.tags", f"{len(dataset.tags)} tags; at most {MAX_TAGS}")
        )
    seen: set[str] = set()
    for index, tag in enumerate(dataset.tags[:MAX_TAGS]):
        field = f"{prefix}.tags[{index}]"
        if len(tag) > MAX_TAG or _TAG.fullmatch(tag) is None:
            violations.append(
                FieldViolation(
                    field,
                    f"{excerpt(tag)} is not a tag: up to {MAX_TAG} letters, digits, '-', '_', "
                    "'.', ':' and '/', starting with a letter or digit",
                )
            )
        elif tag in seen:
            violations.append(FieldViolation(field, f"{excerpt(tag)} is listed twice"))
        seen.add(tag)
    if len(dataset.description) > MAX_DESCRIPTION:
        violations.append(
            FieldViolation(
                f"{prefix}.description",
                f"is {len(dataset.description)} characters; at most {MAX_DESCRIPTION}",
            )
        )
    return violations
