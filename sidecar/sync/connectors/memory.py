"""A store held in a dict: the fake :class:`Connector` the engine's unit tests use.

It keeps the protocol's promises the way a real connector must, and asserts
the engine keeps its side: paths are relative and ``/``-separated, a write
reads exactly ``size`` bytes from the source, nothing is visible at a path
until the whole object is in place, and the connector is not used after
``close()``. Faults can be injected per operation (``fail``) to drive the
engine's retries, and ``calls`` counts operations so a test can say "nothing
was transferred".
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from sidecar.sync.connectors._base import (
    MD5,
    Entry,
    IntegrityError,
    ResumeToken,
    SourceOpener,
    StoreNotFoundError,
    SyncStoreError,
)

__all__ = ["MemoryConnector", "MemoryObject"]

#: Bytes per chunk ``read`` yields (small, so chunked paths are exercised).
CHUNK = 64 * 1024


@dataclass(slots=True)
class MemoryObject:
    """One stored object (or empty directory when ``is_dir``)."""

    data: bytes
    mtime: float
    version: int = 1
    is_dir: bool = False


@dataclass(slots=True)
class _Fault:
    error: SyncStoreError
    times: int


@dataclass
class MemoryConnector:
    """A :class:`Connector` over a dict; ``objects`` is the store's content.

    ``hashes`` says whether listings carry an MD5 (an object store's cheap
    hash) or nothing (a filesystem's listing).
    """

    url: str = "memory://"
    objects: dict[str, MemoryObject] = field(default_factory=dict)
    hashes: bool = True
    exists: bool = True
    #: Writes larger than this go in parts, with a checkpoint after each
    #: (0: one piece), as a multipart upload would.
    part_size: int = 0
    #: Unfinished multipart uploads: id → bytes held (never listed).
    uploads: dict[str, bytearray] = field(default_factory=dict)
    #: Bytes each write read from its source (a resumed write reads fewer).
    read_from: dict[str, list[int]] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    _faults: dict[tuple[str, str], _Fault] = field(default_factory=dict)
    _corrupt: dict[str, int] = field(default_factory=dict)
    _closed: bool = False
    _versions: int = 0

    #: Set from ``hashes`` on construction (a plain attribute, as the protocol has it).
    listed_hashes: tuple[str, ...] = ()
    local = True

    def __post_init__(self) -> None:
        self.listed_hashes = (MD5,) if self.hashes else ()

    # -- test helpers -----------------------------------------------------

    def put(self, path: str, data: bytes | str, *, mtime: float | None = None) -> None:
        """Writes an object directly (as a user of the store would)."""
        raw = data.encode() if isinstance(data, str) else data
        self._versions += 1
        stamp = time.time() if mtime is None else mtime
        self.objects[_check(path)] = MemoryObject(raw, stamp, self._versions)

    def get(self, path: str) -> bytes:
        return self.objects[path].data

    def files(self) -> dict[str, bytes]:
        """Every object's content by path (directories left out)."""
        return {p: o.data for p, o in sorted(self.objects.items()) if not o.is_dir}

    def fail(self, operation: str, path: str, error: SyncStoreError, times: int = 1) -> None:
        """The next ``times`` calls of ``operation`` on ``path`` ("*" for any) raise ``error``."""
        self._faults[(operation, path)] = _Fault(error, times)

    def corrupt(self, path: str, times: int = 1) -> None:
        """The next ``times`` writes of ``path`` leave a damaged object in
        place, then raise IntegrityError (a check after upload that failed)."""
        self._corrupt[path] = times

    def _maybe_fail(self, operation: str, path: str) -> None:
        assert not self._closed, f"{self.url}: {operation} after close()"
        self.calls[operation] += 1
        for key in ((operation, path), (operation, "*")):
            fault = self._faults.get(key)
            if fault is not None and fault.times > 0:
                fault.times -= 1
                raise fault.error

    # -- the protocol -----------------------------------------------------

    async def __aenter__(self) -> MemoryConnector:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True

    def _entry(self, path: str, obj: MemoryObject) -> Entry:
        hashes = {MD5: hashlib.md5(obj.data).hexdigest()} if self.hashes and not obj.is_dir else {}
        return Entry(
            path=path,
            size=len(obj.data),
            mtime=obj.mtime,
            hashes=hashes,
            etag=None,
            version=str(obj.version),
            is_dir=obj.is_dir,
        )

    async def list(self) -> AsyncIterator[Entry]:
        self._maybe_fail("list", "*")
        if not self.exists:
            raise StoreNotFoundError("no such store", url=self.url)
        for path, obj in list(self.objects.items()):
            yield self._entry(path, obj)

    async def stat(self, path: str) -> Entry | None:
        self._maybe_fail("stat", path)
        obj = self.objects.get(_check(path))
        return None if obj is None else self._entry(path, obj)

    async def read(self, path: str, offset: int = 0) -> AsyncIterator[bytes]:
        self._maybe_fail("read", path)
        obj = self.objects.get(_check(path))
        if obj is None:
            raise SyncStoreError("no such object", url=self.url, path=path)
        for start in range(offset, len(obj.data), CHUNK):
            yield obj.data[start : start + CHUNK]

    async def write(
        self,
        path: str,
        source: SourceOpener,
        size: int,
        *,
        mtime: float,
        resume: ResumeToken | None = None,
        checkpoint: Callable[[ResumeToken], Awaitable[None]] | None = None,
    ) -> Entry:
        self._maybe_fail("write", _check(path))
        if self.part_size and size > self.part_size:
            buffer = await self._write_parts(path, source, size, resume, checkpoint)
        else:
            buffer = bytearray()
            async for chunk in source(0):
                buffer.extend(chunk)
            self.read_from.setdefault(path, []).append(0)
        assert len(buffer) == size, f"{path}: source gave {len(buffer)} bytes, engine said {size}"
        # Only now is the object visible: a write that raised left nothing.
        self._versions += 1
        if self._corrupt.get(path, 0) > 0:
            # As a store that kept the object and then failed its check.
            self._corrupt[path] -= 1
            self.objects[path] = MemoryObject(bytes(buffer[:-1]) + b"?", mtime, self._versions)
            raise IntegrityError("stored hash differs (injected)", url=self.url, path=path)
        self.objects[path] = MemoryObject(bytes(buffer), mtime, self._versions)
        return self._entry(path, self.objects[path])

    async def _write_parts(
        self,
        path: str,
        source: SourceOpener,
        size: int,
        resume: ResumeToken | None,
        checkpoint: Callable[[ResumeToken], Awaitable[None]] | None,
    ) -> bytearray:
        upload = str(resume["upload"]) if resume else ""
        if upload not in self.uploads:  # unknown token: start again
            self._versions += 1
            upload = f"{path}#{self._versions}"
            self.uploads[upload] = bytearray()
        held = self.uploads[upload]
        offset = len(held) - len(held) % self.part_size
        del held[offset:]
        self.read_from.setdefault(path, []).append(offset)
        part = bytearray()
        async for chunk in source(offset):
            part.extend(chunk)
            while len(part) >= self.part_size:
                held.extend(part[: self.part_size])
                del part[: self.part_size]
                if checkpoint is not None:
                    await checkpoint({"upload": upload})
                self._maybe_fail("part", path)
        held.extend(part)
        return self.uploads.pop(upload)

    async def delete(self, path: str) -> None:
        self._maybe_fail("delete", _check(path))
        self.objects.pop(path, None)

    async def make_dir(self, path: str) -> None:
        self._maybe_fail("make_dir", _check(path))
        self._versions += 1
        self.objects[path] = MemoryObject(b"", time.time(), self._versions, is_dir=True)

    async def hash(self, path: str, kind: str) -> str | None:
        self._maybe_fail("hash", path)
        obj = self.objects.get(_check(path))
        if obj is None or kind != MD5:
            return None
        return hashlib.md5(obj.data).hexdigest()


def _check(path: str) -> str:
    assert path and not path.startswith("/") and "\\" not in path, f"bad path {path!r}"
    assert all(part not in ("", ".", "..") for part in path.split("/")), f"bad path {path!r}"
    return path
