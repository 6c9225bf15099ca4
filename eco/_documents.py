"""The documents ``eco apply``, ``eco diff`` and ``eco export`` read and write.

Each YAML document names its kind and carries the object's settings only
(never what the control plane sets: revisions, times, health)::

    apiVersion: ecosystem/v1
    kind: Service
    metadata: {name: web, namespace: shop}
    spec:
      instances:
        - {id: web-1, address: 10.0.0.9, port: 8080}

The models are strict (an unknown field is an error) so that a typo is
reported instead of silently ignored; :func:`load_documents` reports every
problem of every file with its file, line and field, so a whole directory
can be fixed in one pass. ``KINDS`` maps each kind to its model (``eco
schema`` generates the JSON Schemas from it); the conversion of each kind to
and from the control plane's messages lives in ``eco._kinds``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "API_VERSION",
    "KINDS",
    "MANAGED_PREFIX",
    "DatasetDocument",
    "DocumentError",
    "IntentionDocument",
    "LoadedDocument",
    "PlatformDocument",
    "RouteDocument",
    "ServiceDocument",
    "SyncJobDocument",
    "document_files",
    "load_documents",
    "parse_duration",
]

API_VERSION = "ecosystem/v1"
#: Keys of labels and instance metadata with this prefix are apply's own
#: ownership marks; documents may not set them.
MANAGED_PREFIX = "eco.apply/"
#: Bytes of one document file read.
MAX_FILE_BYTES = 4 * 1024 * 1024

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value: str | float) -> float:
    """``15m``, ``1h30m``, ``90s``, ``1d`` or a number of seconds → seconds."""
    if isinstance(value, int | float):
        return float(value)
    compact = value.strip().replace(" ", "")
    if not compact or _DURATION.sub("", compact):
        raise ValueError(f"not a duration: {value!r} (e.g. 30s, 15m, 1h30m, 1d)")
    return sum(float(n) * _SECONDS[unit] for n, unit in _DURATION.findall(compact))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _no_reserved(values: dict[str, str]) -> dict[str, str]:
    reserved = sorted(k for k in values if k.startswith(MANAGED_PREFIX))
    if reserved:
        raise ValueError(
            f"keys starting with {MANAGED_PREFIX!r} are apply's own marks: {', '.join(reserved)}"
        )
    return values


Labels = dict[str, str]


class NamedMetadata(_Strict):
    """Metadata of a kind that has a name and nothing else."""

    name: str = Field(min_length=1, max_length=128, description="The object's name; unique.")


class LabelledMetadata(NamedMetadata):
    """Metadata of a kind that keeps labels."""

    labels: Labels = Field(default_factory=dict, description="Free key/value pairs.")

    _check_labels = pydantic.field_validator("labels")(_no_reserved)


class ServiceMetadata(NamedMetadata):
    name: str = Field(
        min_length=1, max_length=63, description="The service: lowercase letters, digits, '-'."
    )
    namespace: str = Field("", description="Its namespace; empty means 'default'.")


class _Document(_Strict):
    api_version: Literal["ecosystem/v1"] = Field(alias="apiVersion")


# -- Service ---------------------------------------------------------------------------


class InstanceSpec(_Strict):
    """One persistent instance of the service (apply never creates leased ones)."""

    id: str = Field(min_length=1, max_length=128, description="Unique within the service.")
    address: str = Field(min_length=1, description="IP address or DNS host name it serves on.")
    port: int = Field(ge=1, le=65535)
    node: str = ""
    platform: str = ""
    region: str = ""
    zone: str = ""
    tags: list[str] = Field(default_factory=list)
    metadata: dict[str, str] = Field(default_factory=dict)
    weight: int = Field(0, ge=0, le=10000, description="Relative weight, 1-10000; 0 means 1.")

    _check_metadata = pydantic.field_validator("metadata")(_no_reserved)


class ServiceSpec(_Strict):
    instances: list[InstanceSpec] = Field(default_factory=list)

    @pydantic.field_validator("instances")
    @classmethod
    def _unique_ids(cls, instances: list[InstanceSpec]) -> list[InstanceSpec]:
        seen: set[str] = set()
        for item in instances:
            if item.id in seen:
                raise ValueError(f"instance id {item.id!r} appears twice")
            seen.add(item.id)
        return instances


class ServiceDocument(_Document):
    """A service and its persistent instances."""

    kind: Literal["Service"]
    metadata: ServiceMetadata
    spec: ServiceSpec = Field(default_factory=ServiceSpec)


# -- Intention -------------------------------------------------------------------------


class IntentionSpec(_Strict):
    source: str = Field(
        min_length=1, description="SERVICE, NAMESPACE/SERVICE, NAMESPACE/* or * (who calls)."
    )
    destination: str = Field(min_length=1, description="Who is called, in the same forms.")
    action: Literal["allow", "deny"]
    description: str = Field("", max_length=512)


class IntentionDocument(_Document):
    """Whether source may call destination; one per (source, destination) pair."""

    kind: Literal["Intention"]
    metadata: LabelledMetadata
    spec: IntentionSpec


# -- Route -----------------------------------------------------------------------------


class RouteDocument(_Document):
    """A gateway route; spec is the route as a gateway's config file writes it
    (match, upstream or split or redirect, rewrite, timeout, policy, plugins)."""

    kind: Literal["Route"]
    metadata: NamedMetadata
    spec: dict[str, Any]

    @pydantic.model_validator(mode="after")
    def _name_matches(self) -> RouteDocument:
        name = self.spec.get("name")
        if name is not None and name != self.metadata.name:
            raise ValueError(f"spec.name {name!r} differs from metadata.name")
        return self


# -- SyncJob ---------------------------------------------------------------------------


class SyncJobSpec(_Strict):
    source: str = Field(min_length=1, description="A connector URI: file://, s3://, gs://, ….")
    destination: str = Field(min_length=1)
    on_node: str | None = Field(
        None, min_length=1, description="The node whose sidecar runs the job (or on_platform)."
    )
    on_platform: str | None = Field(
        None,
        min_length=1,
        description="Or the registered platform any one of whose sidecars runs each run.",
    )
    every: str | float | None = Field(
        None, description="Run every this long (30s, 15m, 1h30m, 1d, or seconds)."
    )
    cron: str | None = Field(None, description="Or a five-field cron expression, in UTC.")
    mode: Literal["copy", "mirror", "bisync"] = "copy"
    checksum: bool = False
    conflict: Literal["newer", "keep-both", "source", "destination", "manual"] = "newer"
    max_delete: float = Field(50.0, ge=0, le=100, description="Deletion guard, percent.")
    transfers: int = Field(8, ge=1, le=256)
    bandwidth: int = Field(0, ge=0, description="Bytes per second; 0: unlimited.")
    source_profile: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="A named profile of connector settings for the source's store, defined "
        "on the host that runs the job (its sidecar's sync.profiles_file); only the name is "
        "stored.",
    )
    destination_profile: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="The same for the destination's store.",
    )

    @pydantic.field_validator("every")
    @classmethod
    def _duration(cls, value: str | float | None) -> str | float | None:
        if value is not None and parse_duration(value) <= 0:
            raise ValueError("must be more than 0 seconds")
        return value

    @pydantic.model_validator(mode="after")
    def _one_schedule(self) -> SyncJobSpec:
        if (self.every is None) == (self.cron is None):
            raise ValueError("give exactly one of every and cron")
        if (self.on_node is None) == (self.on_platform is None):
            raise ValueError("give exactly one of on_node and on_platform")
        return self


class SyncJobDocument(_Document):
    """A scheduled sync job."""

    kind: Literal["SyncJob"]
    metadata: LabelledMetadata
    spec: SyncJobSpec


# -- Platform --------------------------------------------------------------------------


class PlatformMetadata(LabelledMetadata):
    name: str = Field(
        min_length=1,
        max_length=63,
        description="A DNS label: lowercase letters, digits and '-'; instances name it.",
    )


class PlatformSpec(_Strict):
    kind: Literal["core", "cloud", "onprem"]
    provider: str = Field("", description="aws, gcp, azure, …; required for a cloud platform.")
    regions: list[str] = Field(default_factory=list, description="The regions it spans.")
    description: str = Field("", max_length=1024)


class PlatformDocument(_Document):
    """A platform: the core, a public cloud account, or an on-premise site."""

    kind: Literal["Platform"]
    metadata: PlatformMetadata
    spec: PlatformSpec


# -- Dataset ---------------------------------------------------------------------------


class DatasetSpec(_Strict):
    location: str = Field(min_length=1, description="A connector URI: file://, s3://, ….")
    platform: str = Field("", description="The registered platform it lives on.")
    owner: str = Field("", max_length=256, description="Who owns it (a team or a person).")
    schema_: dict[str, Any] | None = Field(
        None, alias="schema", description="Its records' JSON Schema (a mapping)."
    )
    tags: list[str] = Field(default_factory=list)
    description: str = Field("", max_length=1024)


class DatasetDocument(_Document):
    """A dataset of the data catalog."""

    kind: Literal["Dataset"]
    metadata: LabelledMetadata
    spec: DatasetSpec


#: Every kind apply knows, by name, in the order apply writes them.
KINDS: dict[str, type[BaseModel]] = {
    "Platform": PlatformDocument,
    "Service": ServiceDocument,
    "Intention": IntentionDocument,
    "Route": RouteDocument,
    "Dataset": DatasetDocument,
    "SyncJob": SyncJobDocument,
}


# -- loading ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DocumentError:
    """One problem: where (file, 1-based line, dotted field) and what."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        if self.field:
            return f"{where}: {self.field}: {self.message}"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class LoadedDocument:
    """One YAML document of a file: its model when valid, else its errors."""

    file: str
    line: int
    kind: str
    document: BaseModel | None
    errors: tuple[DocumentError, ...] = ()
    #: Line of each field, by its path (("spec", "instances", 0, "port") → 12).
    lines: dict[tuple[str | int, ...], int] = field(default_factory=dict, repr=False)


def document_files(paths: Iterable[str | Path]) -> list[Path]:
    """The files to read: each file given, and each *.yaml/*.yml under a
    directory given (sorted, recursively)."""
    files: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            files.extend(
                sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
            )
        else:
            files.append(path)
    return files


def _node_lines(
    node: yaml.Node, path: tuple[str | int, ...], lines: dict[tuple[str | int, ...], int]
) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                lines[(*path, key.value)] = key.start_mark.line + 1
                _node_lines(value, (*path, key.value), lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _node_lines(item, (*path, index), lines)


def _line_of(loc: tuple[str | int, ...], lines: dict[tuple[str | int, ...], int]) -> int:
    """The line of a field, or of the nearest enclosing one that is written."""
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return 1


def _dotted(loc: Iterable[str | int]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _validate(
    file: str, line: int, data: Any, lines: dict[tuple[str | int, ...], int]
) -> LoadedDocument:
    if not isinstance(data, dict):
        return LoadedDocument(
            file, line, "", None, (DocumentError(file, line, "", "a document is a mapping"),)
        )
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        known = ", ".join(KINDS)
        message = f"unknown kind {kind!r} (one of {known})"
        if kind is None:
            message = f"missing (one of {known})"
        err = DocumentError(file, _line_of(("kind",), lines), "kind", message)
        return LoadedDocument(file, line, str(kind or ""), None, (err,), lines)
    try:
        model = KINDS[kind].model_validate(data)
    except pydantic.ValidationError as exc:
        return LoadedDocument(file, line, kind, None, _errors(file, exc, (), lines), lines)
    if isinstance(model, RouteDocument):
        try:
            _check_route(model)
        except pydantic.ValidationError as exc:
            # The gateway's model sees the spec alone: its fields are under spec.
            errors = _errors(file, exc, ("spec",), lines)
            return LoadedDocument(file, line, kind, None, errors, lines)
    return LoadedDocument(file, line, kind, model, (), lines)


def _errors(
    file: str,
    exc: pydantic.ValidationError,
    under: tuple[str, ...],
    lines: dict[tuple[str | int, ...], int],
) -> tuple[DocumentError, ...]:
    errors = []
    for problem in exc.errors():
        loc = under + tuple(p for p in problem["loc"] if isinstance(p, str | int))
        # A validator's own message reads "Value error, …": keep the "…".
        message = str(problem["msg"]).removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown field"
        errors.append(DocumentError(file, _line_of(loc, lines), _dotted(loc), message))
    return tuple(errors)


def _check_route(document: RouteDocument) -> None:
    """Checks a route's spec with the gateway's own route model, as a gateway
    will (pydantic.ValidationError); without the server extra (no gateway
    model installed) the control plane and the gateways check it instead."""
    try:
        from sidecar.gateway.config import RouteConfig
    except ImportError:
        return
    RouteConfig.model_validate({**document.spec, "name": document.metadata.name})


def _read_file(path: Path) -> Iterator[LoadedDocument]:
    file = str(path)
    try:
        raw = path.read_bytes()[: MAX_FILE_BYTES + 1]
    except OSError as exc:
        yield LoadedDocument(
            file, 1, "", None, (DocumentError(file, 1, "", f"cannot read: {exc.strerror}"),)
        )
        return
    if len(raw) > MAX_FILE_BYTES:
        err = DocumentError(file, 1, "", f"larger than {MAX_FILE_BYTES} bytes")
        yield LoadedDocument(file, 1, "", None, (err,))
        return
    loader = yaml.SafeLoader(raw.decode("utf-8", errors="replace"))
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            lines: dict[tuple[str | int, ...], int] = {}
            _node_lines(node, (), lines)
            data = loader.construct_document(node)
            if data is None:  # an empty document (a stray '---') names nothing
                continue
            yield _validate(file, node.start_mark.line + 1, data, lines)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = " ".join(filter(None, (exc.context, exc.problem)))
        yield LoadedDocument(
            file, line, "", None, (DocumentError(file, line, "", f"not valid YAML: {problem}"),)
        )
    except yaml.YAMLError as exc:
        yield LoadedDocument(
            file, 1, "", None, (DocumentError(file, 1, "", f"not valid YAML: {exc}"),)
        )
    finally:
        loader.dispose()


def load_documents(paths: Iterable[str | Path]) -> list[LoadedDocument]:
    """Every document of the files (and directories) given, in order; each
    carries its errors, so a caller reports all of them at once. A file that
    does not exist is an error of its own."""
    loaded: list[LoadedDocument] = []
    for path in document_files(paths):
        loaded.extend(_read_file(path))
    return loaded
