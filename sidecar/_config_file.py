"""From YAML text to a validated model, with errors that name the line and the field.

The text is composed once into YAML nodes (which know their line), checked
for duplicate keys (which plain YAML loading silently merges), constructed,
and validated. Each pydantic error location (``services, 0, checks, 0,
interval``) is walked down the node tree to the line it came from.

A configuration file is input nobody has checked yet, so reading it is
bounded before anything is built from it: at most :data:`MAX_FILE_BYTES`,
nested at most :data:`MAX_DEPTH` levels, and aliases (``*name``) may add at
most :data:`MAX_ALIAS_NODES` nodes once expanded. Aliases stay allowed —
sharing one list of checks between services is a fair use — but ten lines of
aliases that expand to a billion strings (a "billion laughs") are refused
while the text is composed, before any of it is walked, built or validated;
an alias inside the node it names is refused too. A value YAML cannot build
(an integer of 5,000 digits, the date 2001-13-01) is a problem at its line.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.resolver import Resolver

__all__ = [
    "MAX_ALIAS_NODES",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "ConfigError",
    "ConfigProblem",
    "Problems",
    "format_loc",
    "read_config",
    "read_config_file",
    "unknown_key_message",
]

M = TypeVar("M", bound=BaseModel)


class Problems:
    """Problems a model finds across its fields (a name used twice, a key that
    needs another), each at its location, raised together as one
    ValidationError so that a file's reader lists every one with its line."""

    def __init__(self) -> None:
        self.errors: list[InitErrorDetails] = []

    def __call__(self, loc: tuple[str | int, ...], message: str) -> None:
        self.errors.append(
            InitErrorDetails(
                type=PydanticCustomError("value_error", "{msg}", {"msg": message}),
                loc=loc,
                input=None,
            )
        )

    def raise_if_any(self, title: str) -> None:
        if self.errors:
            raise ValidationError.from_exception_data(title, self.errors)


def _check_kinds() -> frozenset[str]:
    # Imported when a check's error is placed: the health package (probes,
    # gRPC, HTTP clients) is not what reading a file needs up front.
    from sidecar.health import CheckKind

    return frozenset(k.value for k in CheckKind)


#: The largest configuration file read, in bytes (UTF-8).
MAX_FILE_BYTES = 1024 * 1024
#: How deeply mappings and lists may nest (the top-level mapping is level 1; the
#: deepest documented key, an AMQP queue binding's argument, is at level 7).
MAX_DEPTH = 32
#: How many nodes aliases may add to the document once expanded.
MAX_ALIAS_NODES = 100_000
#: The longest message of one problem (a quoted value is cut in the middle).
MAX_MESSAGE = 300


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


class _Refused(yaml.MarkedYAMLError):
    """YAML that parses but is not read: over a limit, or a value that cannot be built."""


class _Bounded(Composer, SafeConstructor, Resolver):
    """Composes with the limits of the module docstring; constructs like ``SafeLoader``."""

    def __init__(self) -> None:
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._depth = 0
        self._open: set[str] = set()  # anchors of the nodes being composed
        self._alias_nodes = 0
        self._measured: dict[int, tuple[int, int]] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[attr-defined]
        mark: Any = event.start_mark
        if isinstance(event, AliasEvent):
            anchor = event.anchor
            node = self.anchors.get(anchor)
            if anchor in self._open:
                raise _Refused(
                    None,
                    None,
                    f"the alias *{anchor} is inside the node it refers to",
                    mark,
                )
            if node is not None:
                size, height = self._measure(node)
                if self._depth + height > MAX_DEPTH:
                    raise _Refused(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
                self._alias_nodes += size
                if self._alias_nodes > MAX_ALIAS_NODES:
                    raise _Refused(
                        None,
                        None,
                        f"aliases expand to more than {MAX_ALIAS_NODES} nodes; "
                        "write the repeated parts out, or alias less",
                        mark,
                    )
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self._open.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor is not None:
                self._open.discard(anchor)

    def _measure(self, node: yaml.Node) -> tuple[int, int]:
        """The node's size and height with its aliases expanded (a complete node: no cycle)."""
        known = self._measured.get(id(node))
        if known is not None:
            return known
        size, height = 1, 0
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        for child in children:
            child_size, child_height = self._measure(child)
            size += child_size
            height = max(height, child_height)
        result = self._measured[id(node)] = (size, height + 1)
        return result

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:
            mark: Any = node.start_mark
            raise _Refused(None, None, f"cannot read the value: {exc}", mark) from None


# Events come from the C scanner and parser when PyYAML has them (what its own
# CSafeLoader uses; about three times faster than the pure-Python ones on a 1 MiB file),
# and are composed, bounded, in Python either way.
try:
    from yaml._yaml import CParser as _EventParser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml.parser import Parser as _Parser
    from yaml.reader import Reader as _Reader
    from yaml.scanner import Scanner as _Scanner

    class _Loader(_Reader, _Scanner, _Parser, _Bounded):
        def __init__(self, text: str) -> None:
            _Reader.__init__(self, text)
            _Scanner.__init__(self)
            _Parser.__init__(self)
            _Bounded.__init__(self)

else:

    class _Loader(_Bounded, _EventParser):  # type: ignore[no-redef]
        def __init__(self, text: str) -> None:
            _EventParser.__init__(self, text)
            _Bounded.__init__(self)


def read_config_file(path: Path, model: type[M], source: str | None = None) -> M:
    """Reads a file (at most :data:`MAX_FILE_BYTES` of it) and validates it as ``model``;
    raises ConfigError naming ``source`` (default: the path)."""
    source = str(path) if source is None else source
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(
            source, [ConfigProblem(0, "", f"cannot read: {exc.strerror or exc}")]
        ) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(source, [_TOO_LARGE])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(source, [ConfigProblem(0, "", "not UTF-8 text")]) from None
    return _parse(text, source, model)  # measured already, as bytes


_TOO_LARGE = ConfigProblem(
    0, "", f"larger than 1 MiB ({MAX_FILE_BYTES} bytes); is this the right file?"
)


def read_config(text: str, source: str, model: type[M]) -> M:
    """Parses YAML ``text`` and validates it as ``model``; raises ConfigError."""
    if len(text) > MAX_FILE_BYTES or len(text.encode("utf-8", "replace")) > MAX_FILE_BYTES:
        raise ConfigError(source, [_TOO_LARGE])
    return _parse(text, source, model)


def _parse(text: str, source: str, model: type[M]) -> M:
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            data: Any = {}
        else:
            duplicates = list(_duplicate_keys(root, (), set()))
            if duplicates:
                raise ConfigError(source, duplicates)
            data = loader.construct_document(root)
    except _Refused as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else 0
        raise ConfigError(source, [ConfigProblem(line, "", str(exc.problem))]) from None
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


def _duplicate_keys(node: yaml.Node, path: tuple[str | int, ...], seen_nodes: set[int]) -> Any:
    # A node reached again through an alias was checked the first time.
    if id(node) in seen_nodes:
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else str(key.value)
            if name in seen:
                yield ConfigProblem(
                    key.start_mark.line + 1, format_loc((*path, name)), "duplicate key"
                )
            seen.add(name)
            yield from _duplicate_keys(value, (*path, name), seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicate_keys(item, (*path, i), seen_nodes)


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
            and loc[i + 2] in _check_kinds()
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
        message = unknown_key_message(str(clean[-1]), _fields_at(model, clean[:-1]))
    elif kind == "missing":
        message = "required"
    else:
        message = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return ConfigProblem(_line(root, clean), format_loc(clean), _shorten(message))


def unknown_key_message(key: str, allowed: Sequence[str]) -> str:
    """What every loader of these files says of a key its model does not take:
    ``unknown key 'helth' (expected one of: …); did you mean 'health'?``, the
    suggestion when a key allowed there is close to it."""
    message = f"unknown key {key!r}"
    if allowed:
        message += f" (expected one of: {', '.join(allowed)})"
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        message += f"; did you mean {close[0]!r}?"
    return message


def _shorten(message: str) -> str:
    """A message quoting a huge value, cut in the middle: the start quotes the value, the
    end says what is wrong with it."""
    if len(message) <= MAX_MESSAGE:
        return message
    keep = (MAX_MESSAGE - 40) // 2
    return f"{message[:keep]}… ({len(message) - 2 * keep} characters) …{message[-keep:]}"


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
