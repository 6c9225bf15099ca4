"""Hooks of the docs site build (mkdocs.yml ``hooks:``).

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


def on_config(config: Any) -> Any:
    config.mdx_configs.setdefault("toc", {})["slugify"] = slugify
    # The table-of-contents extension looks this name up on its module at
    # every heading: there is no option for the suffix.
    toc.unique = unique
    return config
