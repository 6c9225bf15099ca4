"""The local filesystem as a store: ``file:///absolute/path``.

Every blocking call (scandir, open, read, write, fsync, rename) runs in the
default thread pool, so a large directory or a slow disk never stalls the
event loop the engine's other transfers share; reads and writes move in 1 MiB
pieces to keep the number of thread hops small.

A write goes to a hidden ``.eco-partial.<name>`` beside its destination, is
fsynced, gets its mtime, and is renamed into place: nothing is ever visible at
the destination but a whole file. Every ``part_size`` bytes (setting, default
16 MiB) the partial file is fsynced and ``checkpoint`` gets a token naming it
and the length now on disk; a write given that token truncates the partial
file to that length (what came after it was never checkpointed) and asks the
source for the rest only.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat as stat_mod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from sidecar.sync.connectors._base import (
    CRC32C,
    MD5,
    SHA256,
    Entry,
    IntegrityError,
    ResumeToken,
    SourceOpener,
    StoreAuthError,
    StoreNotFoundError,
    SyncStoreError,
)
from sidecar.sync.connectors._hashing import new_hasher
from sidecar.sync.connectors._paths import (
    is_partial,
    parent_dirs,
    partial_path,
    positive_int_setting,
    split_path,
)
from sidecar.sync.connectors._source import guarded, source_errors_unwrapped

__all__ = ["FileConnector"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20  # bytes per read, and per buffered write handed to a thread
DEFAULT_LIST_PAGE_SIZE = 512  # directory entries read (and stat'ed) per thread hop
DEFAULT_PART_SIZE = 16 << 20

# One listed child of a directory: a file's entry, or a subdirectory to walk
# later as (path, mtime). Module-level: inside the class ``list`` is a method.
_Child = tuple[Entry | None, list[tuple[str, float]]]


def parse_file_url(url: str) -> str:
    """The absolute directory a ``file://`` URL names; ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        raise ValueError(f"not a file URL (file:///absolute/path): {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"a file URL takes no query or fragment: {url!r}")
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise ValueError(f"a file URL needs an absolute path (file:///absolute/path): {url!r}")
    return os.path.normpath(path)


class FileConnector:
    """A directory tree on this machine. Settings: ``part_size`` (bytes
    between checkpoints of a write, default 16 MiB), ``list_page_size``
    (directory entries read per thread hop while listing, default 512)."""

    # Nothing is known without reading the file; ``hash()`` reads it.
    listed_hashes: tuple[str, ...] = ()
    local = True

    def __init__(self, url: str, settings: Mapping[str, str] | None = None) -> None:
        self.url = url
        self.root = parse_file_url(url)
        settings = settings or {}
        self.part_size = positive_int_setting(settings, "part_size", DEFAULT_PART_SIZE)
        self.list_page_size = positive_int_setting(
            settings, "list_page_size", DEFAULT_LIST_PAGE_SIZE
        )
        self._closed = False

    def __repr__(self) -> str:
        return f"FileConnector({self.url!r})"

    async def __aenter__(self) -> FileConnector:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        # Holds no handles between calls; closing only refuses later use.
        self._closed = True

    # -- listing -------------------------------------------------------------

    async def list(self) -> AsyncIterator[Entry]:
        self._check_open()
        with self._errors(""):
            if not await asyncio.to_thread(os.path.isdir, self.root):
                raise StoreNotFoundError(f"no such directory: {self.root}", url=self.url)
        # Depth first; the stack holds directories still to read (paths only),
        # so memory grows with the tree's breadth of directories, not its files.
        stack: list[tuple[str, float]] = [("", 0.0)]
        while stack:
            rel, mtime = stack.pop()
            found_any = False
            async for entry, subdirs in self._scan(rel):
                found_any = True
                if entry is not None:
                    yield entry
                stack.extend(subdirs)
            if rel and not found_any:
                yield Entry(path=rel, size=0, mtime=mtime, is_dir=True)

    async def _scan(self, rel: str) -> AsyncIterator[_Child]:
        """One directory's visible children, a batch per thread hop: files as
        entries, subdirectories as (path, mtime) to walk later."""
        with self._errors(rel):
            try:
                it = await asyncio.to_thread(os.scandir, self._abs(rel))
            except FileNotFoundError:
                if not rel:
                    raise
                return  # removed while we walked: nothing there now
            try:
                while True:
                    batch, done = await asyncio.to_thread(_read_batch, it, rel, self.list_page_size)
                    for item in batch:
                        yield item
                    if done:
                        return
            finally:
                it.close()

    async def stat(self, path: str) -> Entry | None:
        self._check_open()
        name = split_path(path)[-1]
        if is_partial(name):
            return None
        with self._errors(path):
            try:
                st = await asyncio.to_thread(os.lstat, self._abs(path))
            except (FileNotFoundError, NotADirectoryError):
                if not await asyncio.to_thread(os.path.isdir, self.root):
                    raise
                return None
        if stat_mod.S_ISDIR(st.st_mode):
            return Entry(path=path, size=0, mtime=st.st_mtime, is_dir=True)
        if stat_mod.S_ISREG(st.st_mode):
            return Entry(path=path, size=st.st_size, mtime=st.st_mtime)
        return None

    # -- reading -------------------------------------------------------------

    async def read(self, path: str, offset: int = 0) -> AsyncIterator[bytes]:
        self._check_open()
        split_path(path)
        with self._errors(path):
            # Open and first read in one thread hop: a small file (most of a
            # many-files sync) is read whole in it.
            f, chunk = await asyncio.to_thread(_open_and_read, self._abs(path), offset)
            try:
                if chunk:
                    yield chunk
                while f is not None and (chunk := await asyncio.to_thread(f.read, _CHUNK)):
                    yield chunk
            finally:
                if f is not None:
                    f.close()

    async def hash(self, path: str, kind: str) -> str | None:
        self._check_open()
        split_path(path)
        if kind not in (MD5, SHA256, CRC32C):
            return None
        with self._errors(path):
            try:
                return await asyncio.to_thread(self._hash_file, self._abs(path), kind)
            except (FileNotFoundError, IsADirectoryError):
                return None

    @staticmethod
    def _hash_file(abs_path: str, kind: str) -> str | None:
        hasher = new_hasher(kind)
        if hasher is None:
            return None
        with open(abs_path, "rb") as f:
            while chunk := f.read(_CHUNK):
                hasher.update(chunk)
        return hasher.result()

    # -- writing -------------------------------------------------------------

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
        self._check_open()
        split_path(path)
        final = self._abs(path)
        partial_rel = partial_path(path)
        tmp = self._abs(partial_rel)
        # What a checkpoint's token says, besides the length: a token resumes
        # only the write it came from (same path, size and mtime of the source).
        token_base: dict[str, object] = {
            "kind": "file",
            "partial": partial_rel,
            "size": size,
            "mtime": mtime,
        }
        with source_errors_unwrapped(), self._errors(path):
            offset = 0
            if resume is not None:
                offset = await asyncio.to_thread(self._resumable_length, resume, token_base, size)
            f = await asyncio.to_thread(self._open_partial, partial_rel, offset)
            try:
                written = await self._fill(f, source, offset, size, token_base, checkpoint)
                if written != size:
                    raise IntegrityError(
                        f"the source gave {written} bytes, {size} expected", url=self.url, path=path
                    )
                st = await asyncio.to_thread(self._finish, f, tmp, final, mtime)
            finally:
                f.close()  # idempotent; on success _finish has closed it already
        if st.st_size != size:
            raise IntegrityError(
                f"{st.st_size} bytes on disk after the write, {size} expected",
                url=self.url,
                path=path,
            )
        return Entry(path=path, size=st.st_size, mtime=st.st_mtime)

    async def _fill(
        self,
        f: IO[bytes],
        source: SourceOpener,
        offset: int,
        size: int,
        token_base: dict[str, object],
        checkpoint: Callable[[ResumeToken], Awaitable[None]] | None,
    ) -> int:
        """Copies the source from ``offset`` into ``f``; returns the bytes now in it."""
        written = last_checkpoint = offset
        pending: list[bytes] = []
        pending_bytes = 0
        async for chunk in guarded(source(offset)):
            written += len(chunk)
            if written > size:
                raise IntegrityError(
                    f"the source gave more than the {size} bytes expected",
                    url=self.url,
                    path=str(token_base["partial"]),
                )
            pending.append(chunk)
            pending_bytes += len(chunk)
            if pending_bytes >= _CHUNK:
                await asyncio.to_thread(f.write, b"".join(pending))
                pending, pending_bytes = [], 0
            if checkpoint is not None and written - last_checkpoint >= self.part_size:
                if pending:
                    await asyncio.to_thread(f.write, b"".join(pending))
                    pending, pending_bytes = [], 0
                await asyncio.to_thread(_flush_and_sync, f)
                await checkpoint({**token_base, "length": written})
                last_checkpoint = written
        if pending:
            await asyncio.to_thread(f.write, b"".join(pending))
        return written

    def _resumable_length(
        self, token: ResumeToken, token_base: Mapping[str, object], size: int
    ) -> int:
        """How much of the partial file the token vouches for and still holds; 0
        (start again) for a token of another write (another path, or a source
        of another size or mtime) or a partial file gone."""
        partial_rel = str(token_base["partial"])
        if any(token.get(key) != value for key, value in token_base.items()):
            log.info(
                "sync file: resume token is for another write of %s; starting again", partial_rel
            )
            return 0
        length = token.get("length")
        if not isinstance(length, int) or length < 0 or length > size:
            return 0
        try:
            on_disk = os.stat(self._abs(partial_rel)).st_size
        except FileNotFoundError:
            log.info("sync file: partial file %s is gone; starting again", partial_rel)
            return 0
        return length if on_disk >= length else 0

    def _open_partial(self, partial_rel: str, offset: int) -> IO[bytes]:
        tmp = self._abs(partial_rel)
        if offset:
            f = open(tmp, "r+b")  # noqa: SIM115 - closed by write()
            f.truncate(offset)
            f.seek(offset)
            return f
        try:
            return open(tmp, "wb")
        except FileNotFoundError:
            self._make_parents(partial_rel)
            return open(tmp, "wb")

    @staticmethod
    def _finish(f: IO[bytes], tmp: str, final: str, mtime: float) -> os.stat_result:
        _flush_and_sync(f)
        f.close()
        os.utime(tmp, ns=(_ns(mtime), _ns(mtime)))
        os.replace(tmp, final)
        return os.lstat(final)

    def _make_parents(self, rel: str) -> None:
        """Creates the directories above ``rel`` inside the root, one level at a
        time: a missing root stays missing (FileNotFoundError), it is never
        created by a write."""
        for parent in reversed(parent_dirs(rel)):
            with contextlib.suppress(FileExistsError):
                os.mkdir(self._abs(parent))

    # -- deleting, directories ----------------------------------------------

    async def delete(self, path: str) -> None:
        self._check_open()
        split_path(path)
        with self._errors(path):
            await asyncio.to_thread(self._delete, path)

    def _delete(self, path: str) -> None:
        target = self._abs(path)
        try:
            os.unlink(target)
        except (IsADirectoryError, PermissionError):
            # Linux says EISDIR for a directory, POSIX allows EPERM.
            if not os.path.isdir(target):
                raise
            os.rmdir(target)
        except FileNotFoundError:
            pass  # already gone; its parents may still be empty from an earlier delete
        with contextlib.suppress(FileNotFoundError):
            # An interrupted write of this path will not be resumed now.
            os.unlink(self._abs(partial_path(path)))
        for parent in parent_dirs(path):
            try:
                os.rmdir(self._abs(parent))
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    log.debug("sync file: keeping %s: %s", parent, exc)
                break

    async def make_dir(self, path: str) -> None:
        """Creates ``path`` and its parents inside the root; ``make_dir("")``
        creates the root itself (for a destination that does not exist yet)."""
        self._check_open()
        with self._errors(path):
            if path == "":
                await asyncio.to_thread(os.makedirs, self.root, exist_ok=True)
                return
            split_path(path)
            await asyncio.to_thread(self._make_dir, path)

    def _make_dir(self, path: str) -> None:
        self._make_parents(path)
        with contextlib.suppress(FileExistsError):
            os.mkdir(self._abs(path))
        if not os.path.isdir(self._abs(path)):
            raise NotADirectoryError(errno.ENOTDIR, "a file is in the way", path)

    # -- helpers -------------------------------------------------------------

    def _abs(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")

    @contextlib.contextmanager
    def _errors(self, path: str) -> Iterator[None]:
        """Translates OSError to the connector error tree (the one place this
        connector does)."""
        try:
            yield
        except SyncStoreError:
            raise
        except OSError as exc:
            raise self._translate(exc, path) from exc

    def _translate(self, exc: OSError, path: str) -> SyncStoreError:
        where = self._abs(path)
        if isinstance(exc, (FileNotFoundError, NotADirectoryError)) and not os.path.isdir(
            self.root
        ):
            return StoreNotFoundError(f"no such directory: {self.root}", url=self.url, path=path)
        if isinstance(exc, PermissionError):
            return StoreAuthError(f"permission denied: {where}", url=self.url, path=path)
        reason = exc.strerror or str(exc)
        return SyncStoreError(f"{where}: {reason}", url=self.url, path=path)


def _read_batch(it: Iterator[os.DirEntry[str]], rel: str, size: int) -> tuple[list[_Child], bool]:
    """Up to ``size`` entries' visible children from ``it`` (run in a thread), and
    whether the directory is read to its end."""
    out: list[_Child] = []
    for _ in range(size):
        d = next(it, None)
        if d is None:
            return out, True
        if is_partial(d.name):
            # Not listed; but its directory is not an empty one either (a
            # write is under way there, or stopped to be resumed).
            out.append((None, []))
            continue
        path = f"{rel}/{d.name}" if rel else d.name
        try:
            st = d.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed since the directory was read
        if stat_mod.S_ISDIR(st.st_mode):
            out.append((None, [(path, st.st_mtime)]))
        elif stat_mod.S_ISREG(st.st_mode):
            out.append((Entry(path=path, size=st.st_size, mtime=st.st_mtime), []))
        else:
            # Symlinks, sockets, devices: not data a sync can copy faithfully.
            log.debug("sync file: skipping %s (not a regular file or directory)", path)
    return out, False


def _open_and_read(abs_path: str, offset: int) -> tuple[IO[bytes] | None, bytes]:
    """The file's first chunk from ``offset``, and the open file to read the
    rest from; None (closed already) when that chunk reached the end."""
    f = open(abs_path, "rb")  # noqa: SIM115 - returned open, or closed here
    try:
        if offset:
            f.seek(offset)
        chunk = f.read(_CHUNK)
    except BaseException:
        f.close()
        raise
    if len(chunk) < _CHUNK:  # a regular file reads short only at its end
        f.close()
        return None, chunk
    return f, chunk


def _flush_and_sync(f: IO[Any]) -> None:
    f.flush()
    os.fsync(f.fileno())


def _ns(seconds: float) -> int:
    return round(seconds * 1_000_000_000)
