"""Rendering command results as a table, JSON or YAML.

JSON and YAML are data for scripts: stable lowercase keys, enum values as
their names (``"PASSING"``), exactly what the SDK types' ``to_dict()`` give.
Tables are for people and may change between versions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any

import click
import yaml

__all__ = ["OutputFormat", "emit", "json_line", "render_table"]


class OutputFormat(StrEnum):
    TABLE = "table"
    JSON = "json"
    YAML = "yaml"


def emit(data: Any, fmt: OutputFormat, table: Callable[[], str]) -> None:
    """Writes ``data`` as JSON or YAML, or the text ``table()`` builds."""
    if fmt is OutputFormat.JSON:
        click.echo(json.dumps(data, indent=2, sort_keys=False))
    elif fmt is OutputFormat.YAML:
        click.echo(yaml.safe_dump(data, sort_keys=False, default_flow_style=False), nl=False)
    else:
        click.echo(table())


def json_line(data: Any) -> str:
    """One compact JSON object, for streams of events."""
    return json.dumps(data, separators=(",", ":"))


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces; ``-`` for empty cells."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    lines = [headers, *cells]
    return "\n".join(
        "  ".join(value.ljust(widths[i]) for i, value in enumerate(line)).rstrip() for line in lines
    )


def _cell(value: Any) -> str:
    if value is None or value == "" or value == () or value == []:
        return "-"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)
