"""From YAML text to a validated model, with errors that name the line and the field.

The text is composed once into YAML nodes (which know their line), checked
for duplicate keys (which plain YAML loading silently merges), constructed,
and validated. Each pydantic error location (``services, 0, checks, 0,
interval``) is walked down the node tree to the line it came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from sidecar.health import CheckKind

__all__ = ["ConfigError", "ConfigProblem", "format_loc", "read_config"]

M = TypeVar("M", bound=BaseModel)

_KINDS = frozenset(k.value for k in CheckKind)


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a configuration file: where (1-based line, 0 if
    unknown), which field (``services[0].port``, "" for the whole file), and why."""

    line: int
    field: str
    message: str


class ConfigError(ValueError):
    """A configuration file that cannot be used; ``str()`` is one line.

    ``problems`` holds every problem found, first one first; the message
    names the first and counts the rest.
    """

    def __init__(self, source: str, problems: Sequence[ConfigProblem]) -> None:
        if not problems:
            raise ValueError("a ConfigError needs at least one problem")
        self.source = source
        self.problems = tuple(problems)
        super().__init__(self._message())

    def _message(self) -> str:
        first = self.problems[0]
        where = f"{self.source}:{first.line}" if first.line else self.source
        text = (
            f"{where}: {first.field}: {first.message}"
            if first.field
            else f"{where}: {first.message}"
        )
        more = len(self.problems) - 1
        if more:
            text += f" (and {more} more problem{'s' if more > 1 else ''})"
        return text

    def lines(self) -> list[str]:
        """Every problem, one per line, in the same form as the message."""
        out = []
        for p in self.problems:
            where = f"{self.source}:{p.line}" if p.line else self.source
            out.append(f"{where}: {p.field}: {p.message}" if p.field else f"{where}: {p.message}")
        return out


def read_config(text: str, source: str, model: type[M]) -> M:
    """Parses YAML ``text`` and validates it as ``model``; raises ConfigError."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            data: Any = {}
        else:
            duplicates = list(_duplicate_keys(root, ()))
            if duplicates:
                raise ConfigError(source, duplicates)
            data = loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        problem = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise ConfigError(source, [ConfigProblem(line, "", f"not valid YAML: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, [ConfigProblem(0, "", f"not valid YAML: {exc}")]) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        line = root.start_mark.line + 1 if root is not None else 0
        raise ConfigError(
            source, [ConfigProblem(line, "", "the file must be a mapping of settings (key: value)")]
        )
    try:
        return model.model_validate(data)
    except ValidationError as err:
        problems = [
            _problem(root, error["loc"], error["type"], error["msg"], model)
            for error in err.errors(include_url=False)
        ]
        # In the order of the file, so the first one named is the first to fix.
        problems.sort(key=lambda p: (p.line == 0, p.line))
        raise ConfigError(source, problems) from None


def _duplicate_keys(node: yaml.Node, path: tuple[str | int, ...]) -> Any:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else str(key.value)
            if name in seen:
                yield ConfigProblem(
                    key.start_mark.line + 1, format_loc((*path, name)), "duplicate key"
                )
            seen.add(name)
            yield from _duplicate_keys(value, (*path, name))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicate_keys(item, (*path, i))


def _clean_loc(loc: Sequence[str | int]) -> tuple[str | int, ...]:
    """Drops the union tag pydantic puts in a check's location (``checks, 0, http, interval``)."""
    out: list[str | int] = []
    i = 0
    while i < len(loc):
        part = loc[i]
        out.append(part)
        if (
            part == "checks"
            and i + 2 < len(loc)
            and isinstance(loc[i + 1], int)
            and loc[i + 2] in _KINDS
        ):
            out.append(loc[i + 1])
            i += 3
            continue
        i += 1
    return tuple(out)


def format_loc(loc: Sequence[str | int]) -> str:
    """``("services", 0, "port")`` → ``services[0].port``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _line(root: yaml.Node | None, loc: Sequence[str | int]) -> int:
    if root is None:
        return 0
    node: yaml.Node = root
    line = node.start_mark.line
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == part:
                    line, node = key.start_mark.line, value
                    break
            else:
                break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line
        else:
            break
    return line + 1


def _problem(
    root: yaml.Node | None, loc: Sequence[str | int], kind: str, msg: str, model: type[BaseModel]
) -> ConfigProblem:
    clean = _clean_loc(loc)
    if kind == "extra_forbidden":
        allowed = _fields_at(model, clean[:-1])
        message = f"unknown key {clean[-1]!r}" + (
            f" (expected one of: {', '.join(allowed)})" if allowed else ""
        )
    elif kind == "missing":
        message = "required"
    else:
        message = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return ConfigProblem(_line(root, clean), format_loc(clean), message)


def _fields_at(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """The keys the model nested at ``loc`` takes, best effort ([] if unknown)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        info = current.model_fields.get(part)
        if info is None:
            return []
        current = _model_in(info.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
