"""What the object-store connectors (s3, gs, az) share: URL and key handling,
cutting a source into parts, the metadata keys they write, and a content
hash computed by reading (``_hashing`` has the hashers).

Every object store here keeps a flat namespace of keys; a connector's root is
``bucket/prefix`` and a path is the key with ``prefix/`` taken off. An empty
directory is a zero-byte ``path/`` marker object (``Entry.is_dir``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from sidecar.sync.connectors._base import SourceOpener, SyncStoreError
from sidecar.sync.connectors._hashing import new_hasher

__all__ = [
    "DEFAULT_PART_SIZE",
    "META_MD5",
    "META_MTIME",
    "POOL_SIZE",
    "ObjectRoot",
    "compute_hash",
    "page_size_from",
    "parse_mtime",
    "part_size_from",
    "parts_of",
    "read_exactly",
    "token_fits",
]

# Object metadata the connectors write: the source's mtime (seconds since the
# epoch, as text) and the MD5 of the whole content computed while uploading
# (lowercase hex), so hash() answers for multipart objects without reading.
META_MTIME = "mtime"
META_MD5 = "md5"

# Objects up to this size go in one request; larger ones in parts of it.
# 8 MiB: above S3's 5 MiB part minimum, a multiple of GCS's 256 KiB chunk
# unit, small enough that 16 concurrent transfers hold 128 MiB at most.
DEFAULT_PART_SIZE = 8 * 1024 * 1024

# Connections per connector: the engine runs up to ~16 transfers at once,
# and listing or stat calls go beside them.
POOL_SIZE = 32


class ObjectRoot:
    """``scheme://bucket/prefix`` split into the bucket and the key prefix."""

    def __init__(self, url: str, scheme: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != scheme or not parts.netloc:
            raise ValueError(f"not a {scheme}:// URL with a bucket: {url!r}")
        self.bucket = parts.netloc
        self.prefix = unquote(parts.path).strip("/")

    def key(self, path: str) -> str:
        path = path.strip("/")
        if not self.prefix:
            return path
        return f"{self.prefix}/{path}" if path else self.prefix

    @property
    def list_prefix(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def path(self, key: str) -> str | None:
        """The path of ``key`` under the root, or None when it is outside it (or the root)."""
        start = self.list_prefix
        if not key.startswith(start) or len(key) == len(start):
            return None
        return key[len(start) :]


def _int_setting(settings: Mapping[str, str], key: str, default: int) -> int:
    raw = settings.get(key)
    if raw in (None, ""):
        return default
    try:
        value = int(str(raw))
    except ValueError:
        raise ValueError(f"setting {key}: {raw!r} is not a whole number") from None
    if value <= 0:
        raise ValueError(f"setting {key}: {raw!r} must be positive")
    return value


def part_size_from(settings: Mapping[str, str], *, minimum: int, multiple: int = 1) -> int:
    """The ``part_size`` setting (bytes), raised to the store's minimum and
    rounded up to the multiple it needs."""
    size = max(_int_setting(settings, "part_size", DEFAULT_PART_SIZE), minimum)
    return -(-size // multiple) * multiple


def page_size_from(settings: Mapping[str, str], *, maximum: int) -> int:
    """The ``list_page_size`` setting: entries per listing request (the
    store's usual 1,000 by default), at most what the store serves."""
    return min(_int_setting(settings, "list_page_size", 1000), maximum)


def parse_mtime(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None


async def parts_of(
    chunks: AsyncIterator[bytes], part_size: int, total: int
) -> AsyncIterator[bytes]:
    """The source's bytes re-cut into parts of exactly ``part_size`` (the last
    one shorter), ``total`` bytes in all; a source that ends early or runs
    over is an error, never a silently short object."""
    buffer = bytearray()
    seen = 0
    async for chunk in chunks:
        seen += len(chunk)
        if seen > total:
            raise SyncStoreError(f"the source gave more than the {total} bytes expected")
        buffer += chunk
        while len(buffer) >= part_size:
            yield bytes(buffer[:part_size])
            del buffer[:part_size]
    if seen < total:
        raise SyncStoreError(f"the source ended after {seen} of {total} bytes")
    if buffer:
        yield bytes(buffer)


def token_fits(
    resume: Mapping[str, Any] | None, field: str, key: str, size: int, mtime: float
) -> bool:
    """Whether ``resume`` is a token of this connector for this very write: the
    same key, and a source of the same size and mtime (a token from a write of
    other content is never continued from: the store would splice the old
    content's first parts to the new one's end)."""
    if not resume or not resume.get(field) or resume.get("key") != key:
        return False
    try:
        return int(resume.get("size", -1)) == size and float(resume.get("mtime", -1)) == mtime
    except (TypeError, ValueError):
        return False


async def read_exactly(source: SourceOpener, size: int) -> bytes:
    """The whole (small) source in memory, ``size`` bytes or an error."""
    data = b""
    async for part in parts_of(source(0), max(size, 1), size):
        data += part
    return data


async def compute_hash(chunks: AsyncIterator[bytes], kind: str) -> str | None:
    """``kind`` of the bytes ``chunks`` yields (reading them all), or None when
    this process cannot compute that kind."""
    hasher = new_hasher(kind)
    if hasher is None:
        return None
    async for chunk in chunks:
        hasher.update(chunk)
    return hasher.result()
