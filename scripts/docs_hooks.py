"""Hooks of the docs site build (mkdocs.yml ``hooks:``).

A fenced code block inside a list item (indented under it, as the
repository's Markdown view renders it) is moved to the left margin: the
site's Markdown parser only knows fences there, and would otherwise print
the block as one line of inline code. The list ends before the block.

Heading anchors are made the way the repository's own Markdown view makes
them, so one link (``templates.md#eco-dev---from-dir``, ``#errors-1``) works
both when docs/ is browsed in the repository and on the built site: lower
case, punctuation dropped, every space a hyphen (runs are kept, not
collapsed), and a repeated heading's anchor suffixed ``-1``, ``-2``… (the
site builder's own way would collapse runs and suffix ``_1``).
"""

from __future__ import annotations

import re
from collections.abc import MutableSet
from typing import Any

from markdown.extensions import toc  # type: ignore[import-untyped]


def slugify(value: str, separator: str = "-") -> str:
    """A heading's anchor: lower case, word characters and hyphens kept, spaces as hyphens."""
    value = re.sub(r"[^\w\- ]", "", value.strip().lower())
    return value.replace(" ", separator)


def unique(id: str, ids: MutableSet[str], counters: dict[str, int] | None = None) -> str:
    """``id``, or ``id-1``, ``id-2``… when a heading before it on the page took it."""
    base, n = id, 0
    while id in ids or not id:
        n += 1
        id = f"{base}-{n}"
    ids.add(id)
    return id


_INDENTED_FENCE = re.compile(r"^( +)(`{3,}|~{3,})")
_FENCE = re.compile(r"^(`{3,}|~{3,})")


def dedent_fences(markdown: str) -> str:
    """Fenced blocks indented under list items, moved to the left margin."""
    out: list[str] = []
    top_fence = ""  # inside a block fenced at the margin: leave it alone
    indent, fence = 0, ""  # inside an indented block: its indent and fence
    for line in markdown.split("\n"):
        if fence:
            strip = min(indent, len(line) - len(line.lstrip(" ")))
            line = line[strip:]
            if line.startswith(fence) and not line[len(fence) :].strip():
                fence = ""
        elif top_fence:
            if line.startswith(top_fence) and not line[len(top_fence) :].strip():
                top_fence = ""
        elif match := _FENCE.match(line):
            top_fence = match.group(1)
        elif match := _INDENTED_FENCE.match(line):
            indent, fence = len(match.group(1)), match.group(2)
            if out and out[-1].strip():
                out.append("")
            line = line[indent:]
        out.append(line)
    return "\n".join(out)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return dedent_fences(markdown)


def on_config(config: Any) -> Any:
    config.mdx_configs.setdefault("toc", {})["slugify"] = slugify
    # The table-of-contents extension looks this name up on its module at
    # every heading: there is no option for the suffix.
    toc.unique = unique
    return config
