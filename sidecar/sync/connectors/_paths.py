"""What the file and SFTP connectors share about names: the checks on a
relative path, the hidden name a write goes to before its rename, and the
settings both read the same way.

A write goes to ``.eco-partial.<name>`` in the destination's own directory
(same filesystem, so the final rename is atomic) and is never listed. A name
too long for that prefix (a component may be 255 bytes, the prefix makes it
longer than the filesystem allows) gets ``.eco-partial.<sha256 of name>``
instead: still one fixed name per destination, so a resumed write finds its
partial file again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

__all__ = [
    "PARTIAL_PREFIX",
    "is_partial",
    "parent_dirs",
    "partial_name",
    "partial_path",
    "positive_int_setting",
    "split_path",
]

PARTIAL_PREFIX = ".eco-partial."
_NAME_MAX = 255  # bytes per path component on Linux filesystems, and on most SFTP servers


def split_path(path: str) -> list[str]:
    """The components of a connector-relative path; ValueError for an absolute
    path, an empty one, or one with ``.``/``..``/empty components."""
    if not path or path.startswith("/"):
        raise ValueError(f"not a relative path: {path!r}")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"path has an empty, '.' or '..' component: {path!r}")
    if "\x00" in path:
        raise ValueError(f"path contains NUL: {path!r}")
    return parts


def partial_name(name: str) -> str:
    """The hidden name a write of ``name`` goes to before its rename."""
    candidate = PARTIAL_PREFIX + name
    if len(candidate.encode("utf-8", "surrogateescape")) <= _NAME_MAX:
        return candidate
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()
    return PARTIAL_PREFIX + digest


def partial_path(path: str) -> str:
    """The hidden path a write of the relative ``path`` goes to: its partial
    name in the same directory."""
    head, _, name = path.rpartition("/")
    return f"{head}/{partial_name(name)}" if head else partial_name(name)


def is_partial(name: str) -> bool:
    return name.startswith(PARTIAL_PREFIX)


def parent_dirs(path: str) -> list[str]:
    """``a/b/c`` → ``["a/b", "a"]``: the parents of a relative path, deepest first."""
    parts = path.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(len(parts), 0, -1)]


def positive_int_setting(settings: Mapping[str, str], key: str, default: int) -> int:
    """``settings[key]`` as a positive integer (``default`` when absent);
    ValueError naming the key otherwise."""
    raw = settings.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"setting {key!r} must be a positive integer, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"setting {key!r} must be a positive integer, got {raw!r}")
    return value
