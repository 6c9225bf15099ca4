"""Content hashes computed by reading, for stores that keep none of their own
(files, SFTP) and for checking what a store computed.

The forms are the engine's (see ``_base``): lowercase hex for ``md5`` and
``sha256``, and for ``crc32c`` the base64 of the big-endian 4-byte value, as
GCS reports it, so that a file can be compared with a GCS object by the one
hash GCS always has. CRC32C comes from ``google-crc32c`` (the GCS client's own
dependency, in the ``server`` extra); without it ``new_hasher`` returns None
for that kind, which callers pass on as "cannot provide".
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

from sidecar.sync.connectors._base import CRC32C, MD5, SHA256

__all__ = ["Hasher", "compute_hash", "new_hasher"]


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def result(self) -> str: ...


class _HashlibHasher:
    def __init__(self, name: str) -> None:
        self._h = hashlib.new(name)

    def update(self, data: bytes, /) -> None:
        self._h.update(data)

    def result(self) -> str:
        return self._h.hexdigest()


class _Crc32cHasher:
    def __init__(self) -> None:
        import google_crc32c

        checksum: Any = google_crc32c.Checksum  # the package's functions are untyped
        self._h = checksum()

    def update(self, data: bytes, /) -> None:
        self._h.update(data)

    def result(self) -> str:
        return base64.b64encode(self._h.digest()).decode("ascii")


def new_hasher(kind: str) -> Hasher | None:
    """A fresh hasher for ``kind`` (``md5``, ``sha256``, ``crc32c``), or None when
    this process cannot compute that kind."""
    if kind == MD5:
        return _HashlibHasher("md5")
    if kind == SHA256:
        return _HashlibHasher("sha256")
    if kind == CRC32C:
        try:
            return _Crc32cHasher()
        except ImportError:
            return None
    return None


# Below this, hashing a chunk costs less than the hop to a worker thread.
_OFF_LOOP = 256 * 1024


async def compute_hash(chunks: AsyncIterator[bytes], kind: str) -> str | None:
    """``kind`` of the bytes ``chunks`` yields (reading them all), or None when
    this process cannot compute that kind. Large chunks are hashed in a
    worker thread (hashlib lets go of the GIL over big buffers): a 1 MiB
    chunk's MD5 would hold the event loop for about 1.5 ms."""
    hasher = new_hasher(kind)
    if hasher is None:
        return None
    async for chunk in chunks:
        if len(chunk) >= _OFF_LOOP:
            await asyncio.to_thread(hasher.update, chunk)
        else:
            hasher.update(chunk)
    return hasher.result()
