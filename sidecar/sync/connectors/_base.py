"""What every connector is: the seam between the sync engine and a store.

The engine sees only :class:`Connector`; each store (``file``, ``s3``, ``gs``,
``az``, ``sftp``) implements it with that store's own kept SDK. Paths are
relative to the connector's root, ``/``-separated, never starting with ``/``.

Error tree (every connector translates its SDK's errors at one point, with
``raise … from``)::

    SyncStoreError                 anything a store said no to
    ├── StoreNotFoundError         the bucket/container/directory is missing
    ├── StoreAuthError             credentials missing or refused
    ├── StoreThrottledError        429 / 503 / SlowDown: retry with backoff
    ├── StoreUnavailableError      connection refused, reset, timed out: retry
    └── IntegrityError             what the store holds is not what was sent
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "Connector",
    "Entry",
    "IntegrityError",
    "ResumeToken",
    "Source",
    "SourceOpener",
    "StoreAuthError",
    "StoreNotFoundError",
    "StoreThrottledError",
    "StoreUnavailableError",
    "SyncStoreError",
    "known_md5",
    "md5_to_be_had",
]

# Content hash kinds, as the engine names them. Values are lowercase hex for
# md5/sha256 and the store's base64 form for crc32c (as GCS reports it).
MD5 = "md5"
SHA256 = "sha256"
CRC32C = "crc32c"


class SyncStoreError(Exception):
    """A store refused or failed an operation; ``url`` and ``path`` say where."""

    def __init__(self, message: str, *, url: str = "", path: str = "") -> None:
        super().__init__(message)
        self.url = url
        self.path = path


class StoreNotFoundError(SyncStoreError):
    """The root itself (bucket, container, directory) does not exist."""


class StoreAuthError(SyncStoreError):
    """Credentials are missing or were refused; retrying will not help."""


class StoreThrottledError(SyncStoreError):
    """The store asked us to slow down (429, 503, SlowDown); retry later."""


class StoreUnavailableError(SyncStoreError):
    """The store could not be reached or dropped the connection; retry later."""


class IntegrityError(SyncStoreError):
    """After a transfer, the stored object's size or hash differs from the source's."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One object or file as its store lists it.

    ``hashes`` holds only true content hashes (``md5``, ``sha256``,
    ``crc32c``); an S3 multipart ETag is *not* an MD5 and never appears
    there. ``etag`` and ``version`` (generation, version id) are opaque
    change tokens. ``mtime`` is the source's modification time when the
    store keeps it (files, SFTP, object metadata written by us), else the
    store's last-modified time. ``is_dir`` marks an empty directory (a
    directory on file/SFTP, a ``name/`` marker object on object stores).
    """

    path: str
    size: int
    mtime: float
    hashes: Mapping[str, str] = field(default_factory=dict)
    etag: str | None = None
    version: str | None = None
    is_dir: bool = False


# What a connector needs to resume an interrupted upload: opaque to the
# engine, JSON-serialisable (the engine keeps it in the job's state database
# between processes), e.g. {"upload_id": …, "part_size": …} for S3.
ResumeToken = Mapping[str, Any]

# Opens the source object at a byte offset and yields its bytes from there.
SourceOpener = Callable[[int], AsyncIterator[bytes]]


class Source:
    """What the engine gives a write to read: a :data:`SourceOpener` (called
    with an offset) that also says what it knows of the content's MD5
    without moving the bytes over a network: the MD5 its store listed
    (``listed_md5``), or that it can compute one by reading bytes that are
    on this host (``local``: a file, hashed where it lies).

    A store that checks a body against a Content-MD5 sent ahead of it can
    then take a large object in one streamed request instead of parts
    (``s3``); one that sets an object's MD5 at the end of a block upload
    computes it only where the source could tell it too (``az``). Any other
    write just calls it."""

    def __init__(
        self,
        opener: SourceOpener,
        *,
        listed_md5: str | None = None,
        hash_here: Callable[[], Awaitable[str | None]] | None = None,
    ) -> None:
        self._opener = opener
        self.listed_md5 = listed_md5
        self._hash_here = hash_here

    @property
    def local(self) -> bool:
        return self._hash_here is not None

    def __call__(self, offset: int) -> AsyncIterator[bytes]:
        return self._opener(offset)

    async def md5(self) -> str | None:
        """The content's MD5 (lowercase hex): the listed one, else one computed
        here by reading a local source; None when neither is to be had."""
        if self.listed_md5 or self._hash_here is None:
            return self.listed_md5
        return await self._hash_here()


async def known_md5(source: SourceOpener) -> str | None:
    """``source``'s MD5 when it is a :class:`Source` that can tell it, else None."""
    return await source.md5() if isinstance(source, Source) else None


def md5_to_be_had(source: SourceOpener) -> bool:
    """Whether ``source`` can tell its MD5 without the bytes crossing a network."""
    return isinstance(source, Source) and (bool(source.listed_md5) or source.local)


@runtime_checkable
class Connector(Protocol):
    """A store the engine can list, read, write and delete in.

    Lifecycle: ``async with open_connector(url) as c`` (or ``await c.close()``);
    no I/O in the constructor. Every method may raise :class:`SyncStoreError`
    subclasses, never the SDK's own exceptions.
    """

    url: str
    # Hash kinds ``list()`` reports without extra requests, best first.
    listed_hashes: tuple[str, ...]
    # Whether the bytes are on this host (a directory, memory): reading them
    # twice costs no network, so a write may hash them before sending them.
    local: bool

    async def __aenter__(self) -> Connector: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def close(self) -> None: ...

    def list(self) -> AsyncIterator[Entry]:
        """Every entry under the root, recursively, streamed page by page (any
        order; memory does not grow with the number of objects). Partial
        uploads and the connector's own temporary names are never listed."""
        ...

    async def stat(self, path: str) -> Entry | None:
        """The entry at ``path``, or None when there is none."""
        ...

    def read(self, path: str, offset: int = 0) -> AsyncIterator[bytes]:
        """The object's bytes from ``offset``, in chunks."""
        ...

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
        """Store ``size`` bytes from ``source`` at ``path`` and return the entry
        as the store now lists it.

        Nothing is visible at ``path`` until the whole object is in place
        (temporary name then rename; an uncompleted multipart upload; an
        uncommitted block list; an unfinished resumable session). Large
        objects go in parts; after each durable part the connector calls
        ``checkpoint`` with a token, and a later call given that token as
        ``resume`` continues from what the store already holds, opening the
        source at the first missing byte. A token the store no longer knows
        is ignored (the upload starts again). The connector verifies what it
        wrote (size, and a content hash the store computed where it has one)
        and raises :class:`IntegrityError` on a mismatch. ``mtime`` is kept
        (utime on files, object metadata on stores) and comes back in
        listings where the store lists metadata.
        """
        ...

    async def delete(self, path: str) -> None:
        """Remove the entry at ``path``; a missing entry is not an error. Empty
        parent directories left behind are removed (file, SFTP)."""
        ...

    async def make_dir(self, path: str) -> None:
        """Create an empty directory (or a ``path/`` marker object)."""
        ...

    async def hash(self, path: str, kind: str) -> str | None:
        """A content hash of ``kind`` for ``path``: from the store when it
        keeps one (object metadata written at upload included), else computed
        by reading the object; None when the connector cannot provide it."""
        ...
