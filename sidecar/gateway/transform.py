"""JSON body changes (``json_body``): remove, then rename, then set fields of a JSON object.

A field name may be a dotted path into nested objects (``user.id``): ``set``
makes the objects on the way that are missing; ``remove`` and ``rename`` of
a path that is not there change nothing. A body that is not a JSON object
(another JSON value, or not JSON) is left as it was: :func:`transform_json`
returns None for it.
"""

from __future__ import annotations

import json
from typing import Any

from sidecar.gateway.config import JsonBodyConfig

__all__ = ["is_json", "transform_json"]

_MISSING = object()


def is_json(content_type: str | None) -> bool:
    """Whether a ``Content-Type`` says JSON (``application/json``, ``…+json``)."""
    if not content_type:
        return False
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def transform_json(body: bytes, config: JsonBodyConfig) -> bytes | None:
    """``body`` changed as ``config`` says, or None when it is not a JSON object."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    for path in config.remove:
        _pop(data, path)
    for old, new in config.rename.items():
        value = _pop(data, old)
        if value is not _MISSING:
            _put(data, new, value)
    for path, value in config.set.items():
        _put(data, path, value)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _pop(data: dict[str, Any], path: str) -> Any:
    *parents, last = path.split(".")
    node: Any = data
    for name in parents:
        node = node.get(name) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return _MISSING
    return node.pop(last, _MISSING) if isinstance(node, dict) else _MISSING


def _put(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = data
    for name in parents:
        child = node.get(name)
        if not isinstance(child, dict):
            child = node[name] = {}
        node = child
    node[last] = value
