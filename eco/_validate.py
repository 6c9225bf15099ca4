"""``eco validate FILE…``: check the files the project reads before they ship.

Each file's kind is told, in this order, by ``--kind``; by a ``# eco: KIND``
comment, or a ``# yaml-language-server: $schema=…/KIND.schema.json`` modeline,
in its leading comments; by a top-level ``kind:`` (apply documents); by the
top-level keys only a sidecar's or only a gateway's configuration has; and,
when those are even, by the file's name. The file is then read by the same
loader the program that uses it reads it with (so ``eco validate`` says what
``eco sidecar`` would), and every problem is printed, not the first:
``FILE:LINE: FIELD: message``.

A directory is walked for ``*.yaml``/``*.yml``; there, a file of no kind eco
reads is skipped rather than an error: one whose kind cannot be told, a
compose file (``compose.yaml``, ``docker-compose.yml``, ``compose.*.yaml``),
and a file of documents none of which is ``apiVersion: ecosystem/…`` (a
Kubernetes manifest).

Exit status: 0 every file is valid; 2 a problem in at least one; 1 a file or
directory could not be read (the check is then incomplete, which outweighs
the problems found).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click

from eco._extras import require_server
from eco._output import OutputFormat, emit
from eco._settings import Settings, data_options, pass_settings

__all__ = [
    "FILE_KINDS",
    "Problem",
    "detect_kind",
    "validate_command",
    "validate_file",
]

EXIT_UNREADABLE = 1
EXIT_INVALID = 2

SIDECAR = "sidecar"
GATEWAY = "gateway"
DOCUMENTS = "documents"
#: What ``--kind`` takes: the two configuration files, and apply documents of any kind.
FILE_KINDS = (SIDECAR, GATEWAY, DOCUMENTS)
#: Leading lines of a file searched for a ``# eco: KIND`` comment or a modeline.
_HINT_LINES = 40

_HINT = re.compile(r"^#\s*eco\s*:\s*([A-Za-z][\w-]*)\s*$")
_MODELINE = re.compile(
    r"^#\s*yaml-language-server\s*:.*\$schema=\S*?([A-Za-z][\w-]*)\.schema\.json"
)
_TOP_KEY = re.compile(r"^([A-Za-z_][\w.-]*)\s*:(?:\s|$)", re.MULTILINE)
#: Compose files (whose ``services:`` would read as a sidecar's), by their standard names.
_COMPOSE = re.compile(r"^(docker-)?compose(\.[\w.-]+)?\.ya?ml$")
_API_VERSION = re.compile(r"^apiVersion\s*:\s*['\"]?([^'\"\s#]+)", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a file: where (1-based line; 0 when it is the whole
    file), which field (``services[0].port``; "" for none), what, and the file's kind."""

    file: str
    line: int
    field: str
    message: str
    kind: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        if self.field:
            return f"{where}: {self.field}: {self.message}"
        return f"{where}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Unreadable(Exception):
    """A file or directory that cannot be read at all."""


@dataclass(frozen=True, slots=True)
class _Result:
    file: str
    kind: str
    #: "ok", "invalid", "unreadable" or "skipped"
    status: str
    problems: tuple[Problem, ...] = ()
    note: str = ""


def _keys(model: Any) -> set[str]:
    return {info.alias or name for name, info in model.model_fields.items()}


def detect_kind(text: str, name: str = "") -> tuple[str, str]:
    """The kind of a file (one of :data:`FILE_KINDS`), or "" and why not.

    ``name`` (the file's name) decides only between a sidecar and a gateway
    configuration whose keys do not.
    """
    from eco._schemas import find_kind
    from sidecar.config import SidecarConfig
    from sidecar.gateway.config import GatewayConfig

    for line in text.splitlines()[:_HINT_LINES]:
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and stripped != "---":
            break
        hint = _HINT.match(stripped) or _MODELINE.match(stripped)
        if hint:
            named = hint.group(1).lower()
            if named in FILE_KINDS:
                return named, ""
            found = find_kind(named)
            if found is not None and found.document:
                return DOCUMENTS, ""
            return "", f"the comment names kind {hint.group(1)!r}; expected one of " + ", ".join(
                FILE_KINDS
            )
    keys = set(_TOP_KEY.findall(text))
    if "kind" in keys or "apiVersion" in keys:
        return DOCUMENTS, ""
    sidecar_only = _keys(SidecarConfig) - _keys(GatewayConfig)
    gateway_only = _keys(GatewayConfig) - _keys(SidecarConfig)
    sidecar, gateway = len(keys & sidecar_only), len(keys & gateway_only)
    if sidecar != gateway:
        return (SIDECAR if sidecar > gateway else GATEWAY), ""
    stem = name.lower()
    if (SIDECAR in stem) != (GATEWAY in stem):
        return (SIDECAR if SIDECAR in stem else GATEWAY), ""
    return "", (
        "cannot tell what kind of file this is: name it with '# eco: sidecar' (or gateway, "
        "documents) on its first line, or give --kind"
    )


def _read(path: Path) -> str:
    from sidecar._config_file import MAX_FILE_BYTES

    try:
        with path.open("rb") as file:
            raw = file.read(MAX_FILE_BYTES * 4 + 1)
    except OSError as exc:
        raise _Unreadable(f"cannot read: {exc.strerror or exc}") from None
    return raw.decode("utf-8", errors="replace")


def _config_problems(path: Path, source: str, kind: str) -> list[Problem]:
    from sidecar._config_file import ConfigError, read_config_file
    from sidecar.config import SidecarConfig
    from sidecar.gateway.config import GatewayConfig

    model = SidecarConfig if kind == SIDECAR else GatewayConfig
    try:
        read_config_file(path, model, source)
    except ConfigError as err:
        return [Problem(source, p.line, p.field, p.message, kind) for p in err.problems]
    return []


def _document_problems(path: Path, source: str, text: str) -> list[Problem]:
    from eco._documents import load_documents

    problems = []
    for loaded in load_documents([path]):
        for error in loaded.errors:
            # "required", as the configuration files say it
            message = "required" if error.message == "Field required" else error.message
            problems.append(
                Problem(source, error.line, error.field, message, loaded.kind or DOCUMENTS)
            )
        if loaded.document is not None:
            problems += _spec_problems(source, loaded)
    problems += _duplicate_keys(text, source)
    return sorted(problems, key=lambda p: p.line)


def _duplicate_keys(text: str, source: str) -> list[Problem]:
    """Keys given twice in one mapping: YAML keeps the last one silently (so does the
    documents' loader), and a value the author wrote is lost without a word."""
    import yaml

    from sidecar._config_file import format_loc

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        roots = list(yaml.compose_all(text, Loader=loader))
    except (yaml.YAMLError, RecursionError):
        return []  # the loader reports what is wrong with the YAML itself
    problems: list[Problem] = []
    seen: set[int] = set()

    def walk(node: yaml.Node, path: tuple[str | int, ...], kind: str) -> None:
        if id(node) in seen:  # reached again through an alias
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key, value in node.value:
                name = str(key.value)
                if name in keys:
                    line = key.start_mark.line + 1
                    problems.append(
                        Problem(source, line, format_loc((*path, name)), "duplicate key", kind)
                    )
                keys.add(name)
                walk(value, (*path, name), kind)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, (*path, index), kind)

    for root in roots:
        kind = DOCUMENTS
        if isinstance(root, yaml.MappingNode):
            for key, value in root.value:
                if key.value == "kind" and isinstance(value, yaml.ScalarNode):
                    kind = str(value.value)
        if root is not None:
            walk(root, (), kind)
    return problems


def _spec_problems(source: str, loaded: Any) -> list[Problem]:
    """A document's spec checked against the model its kind's spec is (a Route's: the
    gateway's route), each problem at its line under ``spec``."""
    import pydantic

    from eco._schemas import spec_model
    from sidecar._config_file import format_loc

    model = spec_model(loaded.kind)
    if model is None:
        return []
    document = loaded.document
    try:
        model.model_validate({"name": document.metadata.name, **document.spec})
    except pydantic.ValidationError as err:
        out = []
        for error in err.errors(include_url=False):
            loc: tuple[str | int, ...] = ("spec", *error["loc"])
            if loc == ("spec", "name"):
                loc = ("metadata", "name")
            message = str(error["msg"]).removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown field"
            elif error["type"] == "missing":
                message = "required"
            line = next(
                (
                    loaded.lines[loc[:end]]
                    for end in range(len(loc), 0, -1)
                    if loc[:end] in loaded.lines
                ),
                loaded.line,
            )
            out.append(Problem(source, line, format_loc(loc), message, loaded.kind))
        return out
    return []


def _foreign_documents(text: str) -> bool:
    """Its documents name apiVersions, none of them ecosystem's (a Kubernetes manifest)."""
    versions = _API_VERSION.findall(text)
    return bool(versions) and not any(v.startswith("ecosystem/") for v in versions)


def validate_file(path: Path, kind: str | None = None, *, walked: bool = False) -> _Result:
    """Every problem of one file. ``walked``: found in a directory (a file of another
    tool's is skipped, not an error)."""
    source = str(path)
    try:
        text = _read(path)
    except _Unreadable as exc:
        return _Result(source, kind or "", "unreadable", (Problem(source, 0, "", str(exc)),))
    if kind is None:
        if walked and _COMPOSE.match(path.name):
            return _Result(source, "", "skipped", note="a compose file")
        kind, why = detect_kind(text, path.name)
        if not kind:
            if walked:
                return _Result(source, "", "skipped", note="not a file eco reads")
            return _Result(source, "", "invalid", (Problem(source, 0, "", why),))
        if walked and kind == DOCUMENTS and _foreign_documents(text):
            return _Result(source, "", "skipped", note="documents of another tool")
    if kind == DOCUMENTS:
        problems = _document_problems(path, source, text)
    else:
        problems = _config_problems(path, source, kind)
    return _Result(source, kind, "invalid" if problems else "ok", tuple(problems))


def _targets(paths: Iterable[Path]) -> list[tuple[Path, bool]]:
    out: list[tuple[Path, bool]] = []
    for path in paths:
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()
            )
            out += [(p, True) for p in found]
        else:
            out.append((path, False))
    return out


def _table(results: list[_Result]) -> str:
    lines = []
    for result in results:
        if result.problems:
            lines += [str(p) for p in result.problems]
        elif result.status == "ok":
            lines.append(f"{result.file}: ok ({result.kind})")
        else:
            lines.append(f"{result.file}: skipped ({result.note})")
    return "\n".join(lines)


@click.command("validate")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path), metavar="FILE|DIR…")
@click.option(
    "--kind",
    type=click.Choice(FILE_KINDS, case_sensitive=False),
    help="Read every FILE as this kind instead of telling it from the file.",
)
@click.option(
    "--registry",
    is_flag=True,
    help="Check the live registry (through the control plane) instead of files.",
)
@click.option(
    "--probe-timeout",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="With --registry: seconds to reach each dataset's location.",
)
@data_options
@pass_settings
@click.pass_context
def validate_command(
    ctx: click.Context,
    settings: Settings,
    paths: tuple[Path, ...],
    kind: str | None,
    registry: bool,
    probe_timeout: float,
) -> None:
    """Check files the project reads, or (--registry) the live registry.

    Each FILE is a sidecar or gateway configuration or a file of apply
    documents; its kind comes from --kind, a '# eco: KIND' first line, a
    top-level kind: (documents) or the keys it has. Every problem is
    printed as FILE:LINE: FIELD: message. A DIR is searched for *.yaml and
    *.yml (files of other tools in it are skipped).

    --registry asks the control plane instead and reports services with no
    passing instance, persistent instances whose node is gone, datasets
    whose location cannot be listed, and intentions naming unknown services.

    \b
    Exit status: 0 valid; 2 problems found; 1 a file could not be read
    (or the control plane could not be reached).
    \b
    Examples:
      eco validate sidecar.yaml gateway.yaml
      eco validate deploy/                     # every YAML file eco reads under it
      eco validate --kind sidecar edge.yml -o json
      eco validate --registry
    """
    require_server("validate", what="checks files against the configuration models")
    if registry:
        if paths or kind:
            raise click.UsageError("--registry checks the control plane: give no FILE or --kind")
        from eco._registry_check import run_registry_check

        ctx.exit(run_registry_check(settings, probe_timeout))
    if not paths:
        raise click.UsageError("give at least one FILE or DIR (or --registry)")
    results: list[_Result] = []
    for path, walked in _targets(paths):
        results.append(validate_file(path, kind.lower() if kind else None, walked=walked))
    problems = [p for r in results for p in r.problems]
    data = {
        "files": [
            {"file": r.file, "kind": r.kind, "status": r.status, "problems": len(r.problems)}
            for r in results
        ],
        "problems": [p.to_dict() for p in problems],
    }
    if settings.output is OutputFormat.TABLE and not results:
        click.echo("no YAML files found", err=True)
    emit(data, settings.output, lambda: _table(results))
    unreadable = any(r.status == "unreadable" for r in results)
    failed = sum(1 for r in results if r.problems)
    if settings.output is OutputFormat.TABLE and problems:
        click.echo(
            f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in {failed}"
            f" of {len(results)} file{'s' if len(results) != 1 else ''}",
            err=True,
        )
    if unreadable:
        ctx.exit(EXIT_UNREADABLE)
    if problems:
        ctx.exit(EXIT_INVALID)
