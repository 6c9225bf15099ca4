"""JSON Schemas (draft 2020-12) of the files the project reads, generated from their models.

Every file kind — the sidecar's and the gateway's configuration, and each
kind of apply document — is a pydantic model, and its schema is that model's
``model_json_schema`` with three things added:

* ``$schema``, ``$id`` and a title, so that an editor names what it checks;
* a description for every field the model documents with a ``#:`` (or ``#``)
  comment above it, which pydantic cannot see;
* the forms a field takes *before* its validator runs. A field such as
  ``timeout: Duration`` is a number once validated but ``"5s"`` in the file;
  pydantic describes the validated type, so each such ``mode="before"``
  validator is listed in :data:`_INPUTS` with the input it accepts. A new
  validator that is not listed is found by a unit test (an editor would
  otherwise underline a valid file).

``make schemas`` writes them to ``schemas/<kind>.schema.json``, and a unit
test fails when a committed file differs from what the models give.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from eco._extras import require_server
from eco._output import emit, render_table
from eco._settings import Settings, data_options, pass_settings

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = [
    "DOCUMENTS_KIND",
    "SCHEMA_DIALECT",
    "FileKind",
    "file_kinds",
    "find_kind",
    "render_schema",
    "schema_command",
    "schema_for",
    "spec_model",
    "unlisted_validators",
    "write_schemas",
]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: ``$id`` of each schema: a name, not a place (the files travel with the project).
ID_PREFIX = "urn:ecosystem:schema:"
#: The combined schema: any apply document, by its ``kind:``.
DOCUMENTS_KIND = "documents"


@dataclass(frozen=True, slots=True)
class FileKind:
    """One kind of file: its name on the command line and in ``schemas/``, what it
    is, and its model (``None`` for the combined apply-document schema)."""

    name: str
    title: str
    model: type[BaseModel] | None
    #: an apply document (``kind: Service`` …), validated by its ``kind:`` key
    document: bool = False

    @property
    def file_name(self) -> str:
        return f"{self.name}.schema.json"


def _document_models() -> dict[str, type[BaseModel]]:
    """The apply document kinds (``Service`` → model); none before they exist."""
    try:
        from eco._documents import KINDS
    except ImportError:
        return {}
    return dict(KINDS)


def file_kinds() -> list[FileKind]:
    """Every kind of file ``eco validate`` checks and ``eco schema`` describes."""
    from sidecar.config import SidecarConfig
    from sidecar.gateway.config import GatewayConfig

    kinds = [
        FileKind("sidecar", "Ecosystem sidecar configuration (eco sidecar -c)", SidecarConfig),
        FileKind("gateway", "Ecosystem gateway configuration (eco gateway -c)", GatewayConfig),
    ]
    documents = _document_models()
    kinds += [
        FileKind(kind.lower(), f"Ecosystem apply document: kind {kind}", model, document=True)
        for kind, model in sorted(documents.items())
    ]
    if documents:
        kinds.append(
            FileKind(
                DOCUMENTS_KIND,
                "Ecosystem apply documents: any kind (eco apply -f)",
                None,
                document=True,
            )
        )
    return kinds


def find_kind(name: str) -> FileKind | None:
    """The kind named ``name`` (any case: ``Service`` is ``service``), or None."""
    wanted = name.strip().lower()
    return next((k for k in file_kinds() if k.name == wanted), None)


# --- what fields take before their validators run ---------------------------------


def _same(inner: dict[str, Any]) -> dict[str, Any]:
    """The validator checks or reshapes, and takes what the field's type describes."""
    return inner


def _or_false(inner: dict[str, Any]) -> dict[str, Any]:
    """``admin: off`` may also be written ``admin: false``."""
    return {"anyOf": [inner, {"const": False}]}


def _one_or_many(inner: dict[str, Any]) -> dict[str, Any]:
    """A list, or one item of it on its own."""
    items = inner.get("items")
    return {"anyOf": [inner, items]} if isinstance(items, dict) else inner


def _duration(inner: dict[str, Any]) -> dict[str, Any]:
    # Forms described on the branches: the field's own description stays its documentation.
    return {
        "anyOf": [
            {"type": "number", "description": "seconds"},
            {
                "type": "string",
                "pattern": r"^\s*[+-]?\s*(0|((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d))+)\s*$",
                "description": "a duration such as 500ms, 1.5s, 2m or 1m30s",
            },
        ]
    }


def _health(inner: dict[str, Any]) -> dict[str, Any]:
    from sdk import HealthStatus

    return {"anyOf": [inner, {"enum": [s.value.lower() for s in HealthStatus]}]}


def _jitter(inner: dict[str, Any]) -> dict[str, Any]:
    return {
        "anyOf": [
            {"type": "number", "minimum": 0, "description": "a fraction of the interval"},
            {"type": "string", "description": "a percentage (10%) or a duration (200ms)"},
        ]
    }


def _statuses(inner: dict[str, Any]) -> dict[str, Any]:
    one = {
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "description": "a status code, or a range such as '200-399'",
    }
    pair = {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}
    return {"anyOf": [one, {"type": "array", "items": {"anyOf": [one, pair]}}]}


#: ``mode="before"`` validators (module.qualname) → the schema of what they take.
_INPUTS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "sidecar.health._duration._validate": _duration,
    "sidecar.health._base._status": _health,
    "sidecar.health._base.ProbeCheckConfig._parse_jitter": _jitter,
    "sidecar.health._base.ProbeCheckConfig._default_timeout": _same,
    "sidecar.health._kinds.HttpCheckConfig._parse_expected": _statuses,
    "sidecar.health._config._one_kind": _same,
    "sidecar.config.SidecarConfig._check_admin": _or_false,
    "sidecar.config.SidecarConfig._one_or_many": _one_or_many,
    "sidecar.config._at_most.<locals>.check": _same,
    "sidecar.config._bridge_kind": _same,
    "sidecar.gateway.config._admin": _or_false,
    "sidecar.gateway.config._compile": _same,
    "sidecar.gateway.config.RoutePolicy._refuse_route_keys": _same,
    "sidecar.gateway.cache.CacheConfig._methods": _same,
    "sidecar.gateway.ratelimit._config._one_or_many": _one_or_many,
}


def _qualified(function: Any) -> str:
    function = getattr(function, "__func__", function)
    return f"{function.__module__}.{function.__qualname__}"


@functools.cache
def _field_docs(cls: type) -> dict[str, str]:
    """``#:`` (or ``#``) comments right above each field of the class body, by field."""
    try:
        lines, _ = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    comment: list[str] = []
    indent: int | None = None
    for line in lines[1:]:
        stripped = line.strip()
        if not stripped:
            comment = []
            continue
        here = len(line) - len(line.lstrip())
        if indent is None and not stripped.startswith(("#", '"', "'")):
            indent = here
        if stripped.startswith("#"):
            if indent is None or here == indent:
                comment.append(stripped.lstrip("#:").strip())
            continue
        if here == indent:
            match = re.match(r"([A-Za-z_]\w*)\s*:", stripped)
            if match and comment:
                docs[match.group(1)] = " ".join(c for c in comment if c)
        comment = []
    return docs


def _documented(cls: type, field: str) -> str:
    for base in cls.__mro__:
        text = _field_docs(base).get(field) if base is not object else None
        if text:
            return text
    return ""


def _generator() -> type:
    from pydantic.json_schema import GenerateJsonSchema

    class Generator(GenerateJsonSchema):
        """Pydantic's generator, with the inputs of ``before`` validators and field comments."""

        unlisted: set[str]

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.unlisted = set()

        def _widen(self, schema: Any, inner: dict[str, Any]) -> dict[str, Any]:
            if "json_schema_input_schema" in schema:
                return inner  # the model says itself what the field takes
            name = _qualified(schema["function"]["function"])
            widen = _INPUTS.get(name)
            if widen is None:
                self.unlisted.add(name)
                return inner
            return widen(inner)

        def function_before_schema(self, schema: Any) -> Any:
            return self._widen(schema, super().function_before_schema(schema))

        def function_wrap_schema(self, schema: Any) -> Any:
            return self._widen(schema, super().function_wrap_schema(schema))

        def model_schema(self, schema: Any) -> Any:
            result = super().model_schema(schema)
            cls = schema["cls"]
            for name, prop in result.get("properties", {}).items():
                if isinstance(prop, dict) and "description" not in prop:
                    text = _documented(cls, name)
                    if text:
                        prop["description"] = text
            return result

    return Generator


def unlisted_validators() -> set[str]:
    """``before`` validators of the models that :data:`_INPUTS` does not describe."""
    found: set[str] = set()
    for kind in file_kinds():
        if kind.model is not None:
            generator = _generator()
            instance = generator(ref_template="#/$defs/{model}")
            instance.generate(kind.model.__pydantic_core_schema__, mode="validation")
            found |= instance.unlisted
    return found


def _header(kind: FileKind) -> dict[str, Any]:
    return {"$schema": SCHEMA_DIALECT, "$id": f"{ID_PREFIX}{kind.name}", "title": kind.title}


def schema_for(kind: FileKind) -> dict[str, Any]:
    """The JSON Schema of ``kind`` (a new dict each time)."""
    if kind.model is None:
        return _documents_schema(kind)
    body = kind.model.model_json_schema(schema_generator=_generator(), mode="validation")
    description = body.pop("description", "")
    body.pop("title", None)
    out = _header(kind)
    if description:
        out["description"] = inspect.cleandoc(description)
    if kind.document:
        body = _with_spec(_with_kind(body, kind))
    return {**out, **body}


def spec_model(kind: str) -> type[BaseModel] | None:
    """The model a document's free-form ``spec`` is checked against, beyond the
    document's own (a Route's spec is a gateway route: ``eco route apply`` and
    every gateway check it so); None when the document's model says it all."""
    if kind == "Route":
        from sidecar.gateway.config import RouteConfig

        return RouteConfig
    return None


def _with_spec(body: dict[str, Any]) -> dict[str, Any]:
    """A Route document's ``spec`` described as the gateway's route (its name optional:
    metadata.name gives it)."""
    model = spec_model(body["properties"]["kind"]["const"])
    if model is None:
        return body
    spec = model.model_json_schema(schema_generator=_generator(), mode="validation")
    for name, value in spec.pop("$defs", {}).items():
        body.setdefault("$defs", {})[name] = value
    spec.pop("title", None)
    spec["required"] = [r for r in spec.get("required", []) if r != "name"]
    if not spec["required"]:
        del spec["required"]
    spec["description"] = "The route, as a gateway's config file writes it (name: metadata.name)."
    body["properties"]["spec"] = spec
    return body


def _with_kind(body: dict[str, Any], kind: FileKind) -> dict[str, Any]:
    """A document's schema names its ``kind:`` (whether or not the model has the key)."""
    from eco._documents import KINDS

    name = next(k for k in KINDS if k.lower() == kind.name)
    properties = body.setdefault("properties", {})
    properties["kind"] = {**properties.get("kind", {}), "const": name}
    required = body.setdefault("required", [])
    if "kind" not in required:
        required.insert(0, "kind")
    return body


def _documents_schema(kind: FileKind) -> dict[str, Any]:
    """Any apply document: one schema per kind under ``$defs``, chosen by ``kind:``."""
    defs: dict[str, Any] = {}
    choices = []
    for each in file_kinds():
        if not each.document or each.model is None:
            continue
        single = schema_for(each)
        inner_defs = single.pop("$defs", {})
        for name, value in inner_defs.items():
            if name in defs and defs[name] != value:
                raise ValueError(f"two document kinds define {name!r} differently")
            defs[name] = value
        for key in ("$schema", "$id"):
            single.pop(key)
        name = single["properties"]["kind"]["const"]
        defs[f"kind:{name}"] = single
        choices.append((name, f"#/$defs/kind:{name}"))
    return {
        **_header(kind),
        "description": "One apply document; its kind: key says which (eco apply -f FILE).",
        "type": "object",
        "required": ["kind"],
        "properties": {"kind": {"enum": [name for name, _ in choices]}},
        # if/then rather than a bare oneOf: an editor then reports the fields of the
        # document's own kind, not "matches none of N schemas".
        "allOf": [
            {
                # required too: a document without kind: is not every kind at once
                "if": {"required": ["kind"], "properties": {"kind": {"const": name}}},
                "then": {"$ref": ref},
            }
            for name, ref in choices
        ],
        "$defs": defs,
    }


def render_schema(kind: FileKind) -> str:
    """The schema as ``schemas/`` holds it: indented JSON, one trailing newline."""
    return json.dumps(schema_for(kind), indent=2, ensure_ascii=False) + "\n"


def write_schemas(directory: Path) -> Iterator[Path]:
    """Writes every kind's schema into ``directory``, and removes schema files of
    kinds that are gone; yields the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    kinds = file_kinds()
    names = {k.file_name for k in kinds}
    for stale in directory.glob("*.schema.json"):
        if stale.name not in names:
            stale.unlink()
    for kind in kinds:
        path = directory / kind.file_name
        path.write_text(render_schema(kind), encoding="utf-8")
        yield path


@click.command("schema")
@click.argument("kind", required=False, metavar="KIND")
@click.option("--list", "list_kinds", is_flag=True, help="List the kinds (-o json: as data).")
@data_options
@pass_settings
def schema_command(settings: Settings, kind: str | None, list_kinds: bool) -> None:
    """Print the JSON Schema (draft 2020-12) of a kind of file.

    KIND is sidecar, gateway, an apply document's kind (service, platform, …)
    or documents (any apply document, by its kind: key). The same schemas are
    committed under schemas/ (make schemas); docs/registry-tools.md says how
    to point an editor at them.

    \b
    Examples:
      eco schema --list
      eco schema sidecar > sidecar.schema.json
      eco schema Service
    """
    require_server("schema", what="reads the configuration models")
    if list_kinds or kind is None:
        if kind is not None:
            raise click.UsageError("give KIND or --list, not both")
        kinds = file_kinds()
        rows = [{"kind": k.name, "file": f"schemas/{k.file_name}", "title": k.title} for k in kinds]
        emit(
            rows,
            settings.output,
            lambda: render_table(
                ["KIND", "SCHEMA FILE", "WHAT"], [[r["kind"], r["file"], r["title"]] for r in rows]
            ),
        )
        return
    found = find_kind(kind)
    if found is None:
        names = ", ".join(k.name for k in file_kinds())
        raise click.BadParameter(f"unknown kind {kind!r}; expected one of: {names}")
    click.echo(render_schema(found), nl=False)


if __name__ == "__main__":  # make schemas
    for written in write_schemas(Path(sys.argv[1] if len(sys.argv) > 1 else "schemas")):
        print(written)
