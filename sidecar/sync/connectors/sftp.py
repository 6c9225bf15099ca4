"""A directory on an SFTP server as a store: ``sftp://[user@]host[:port]/path``.

asyncssh is the client: asyncio-native (no thread per connection, unlike
paramiko), kept up to date, and it pipelines large reads and writes as many
parallel SFTP requests on one channel. The URL's path is absolute on the
server; ``/~/path`` is relative to the login directory.

Connections are made on first use, not in the constructor: ``connections``
SSH connections (setting, default 1), each with ``channels`` SFTP sessions
(default 4). Every operation takes the least busy session, so the engine's
concurrent transfers spread over them instead of queueing behind one. A lost
connection is dropped and made again on the next operation (the failed one
raises StoreUnavailableError for the engine to retry).

A write goes to a hidden ``.eco-partial.<name>`` beside its destination, is
fsynced (``fsync@openssh.com``, where the server has it), gets its mtime
(whole seconds: SFTP v3, which OpenSSH speaks, has no finer times) and is
renamed over the destination with ``posix-rename@openssh.com``. Every
``part_size`` bytes (default 16 MiB) the partial file is fsynced and
``checkpoint`` gets a token naming it and its length; a write given the token
cuts the partial file back to that length and asks the source for the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import posixpath
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import cast
from urllib.parse import unquote, urlsplit

with warnings.catch_warnings():
    # asyncssh imports the DSA classes cryptography deprecates; a user of
    # `eco sync` has nothing to do about that warning.
    warnings.filterwarnings("ignore", message=".*DSA.*")
    import asyncssh

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
    StoreUnavailableError,
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
from sidecar.sync.connectors._sftp_pool import SftpPool, SftpSettings
from sidecar.sync.connectors._source import guarded, source_errors_unwrapped

__all__ = ["SftpConnector"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20  # bytes per read request, and per buffered write
DEFAULT_PART_SIZE = 16 << 20

# A connection that failed this way is gone: the pool makes a new one.
_CONNECTION_ERRORS = (
    asyncssh.DisconnectError,
    asyncssh.ChannelOpenError,
    asyncssh.SFTPConnectionLost,
    asyncssh.SFTPNoConnection,
    ConnectionError,
    TimeoutError,
    OSError,
)


def parse_sftp_url(url: str) -> tuple[str | None, str, int | None, str]:
    """``(user, host, port, root)`` of an ``sftp://`` URL; ValueError otherwise.
    ``root`` is absolute, or relative to the login directory for ``/~/…``."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad SFTP URL {url!r}: {exc}") from None
    if parts.scheme != "sftp" or not parts.hostname or not parts.path.startswith("/"):
        raise ValueError(f"not an SFTP URL (sftp://[user@]host[:port]/path): {url!r}")
    path = unquote(parts.path)
    if path == "/~" or path.startswith("/~/"):
        root = posixpath.normpath(path[3:]) if len(path) > 3 else "."
    else:
        root = posixpath.normpath(path)
    user = unquote(parts.username) if parts.username else None
    return user, parts.hostname, port, root


class SftpConnector:
    """A directory on an SFTP server. Settings (each also read from
    ``ECO_SFTP_<KEY>`` in the environment): ``key_file``, ``passphrase``,
    ``known_hosts`` (``none`` turns host key checking off: insecure),
    ``password``, ``user``, ``port``, ``connections``, ``channels``,
    ``part_size``, ``timeout`` (seconds to connect)."""

    # SFTP servers keep no content hashes; ``hash()`` reads the file.
    listed_hashes: tuple[str, ...] = ()
    local = False

    def __init__(self, url: str, settings: Mapping[str, str] | None = None) -> None:
        self.url = url
        user, host, port, self.root = parse_sftp_url(url)
        merged = _settings_with_env(settings or {})
        merged["url"] = url
        self.part_size = positive_int_setting(merged, "part_size", DEFAULT_PART_SIZE)
        config = SftpSettings.from_settings(merged, user=user, host=host, port=port)
        self._pool = SftpPool(config)
        self._fsync_supported = True

    def __repr__(self) -> str:
        return f"SftpConnector({self.url!r})"

    async def __aenter__(self) -> SftpConnector:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._pool.close()

    # -- listing -------------------------------------------------------------

    async def list(self) -> AsyncIterator[Entry]:
        async with self._errors(""), self._pool.session() as sftp:
            attrs = await sftp.stat(self.root)
            if attrs.type != asyncssh.FILEXFER_TYPE_DIRECTORY:
                raise StoreNotFoundError(
                    f"not a directory on {self._pool.config.where}: {self.root}", url=self.url
                )
            # Depth first; the stack holds directories still to read, so memory
            # grows with the number of directories waiting, not with files.
            stack: list[tuple[str, float]] = [("", 0.0)]
            while stack:
                rel, mtime = stack.pop()
                found_any = False
                try:
                    async for name in sftp.scandir(self._abs(rel)):
                        filename = str(name.filename)
                        if filename in (".", ".."):
                            continue
                        if is_partial(filename):
                            # Not listed, and not an empty directory either:
                            # a write is under way there, or waits to resume.
                            found_any = True
                            continue
                        path = f"{rel}/{filename}" if rel else filename
                        kind = name.attrs.type
                        if kind == asyncssh.FILEXFER_TYPE_DIRECTORY:
                            found_any = True
                            stack.append((path, _mtime(name.attrs)))
                        elif kind == asyncssh.FILEXFER_TYPE_REGULAR:
                            found_any = True
                            yield _entry(path, name.attrs)
                        else:
                            log.debug(
                                "sync sftp: skipping %s (not a regular file or directory)", path
                            )
                except asyncssh.SFTPNoSuchFile:
                    if not rel:
                        raise
                    continue  # removed while we walked
                if rel and not found_any:
                    yield Entry(path=rel, size=0, mtime=mtime, is_dir=True)

    async def stat(self, path: str) -> Entry | None:
        if is_partial(split_path(path)[-1]):
            return None
        async with self._errors(path), self._pool.session() as sftp:
            try:
                attrs = await sftp.lstat(self._abs(path))
            except asyncssh.SFTPNoSuchFile:
                await self._check_root(sftp)
                return None
        if attrs.type == asyncssh.FILEXFER_TYPE_DIRECTORY:
            return Entry(path=path, size=0, mtime=_mtime(attrs), is_dir=True)
        if attrs.type == asyncssh.FILEXFER_TYPE_REGULAR:
            return _entry(path, attrs)
        return None

    # -- reading -------------------------------------------------------------

    async def read(self, path: str, offset: int = 0) -> AsyncIterator[bytes]:
        split_path(path)
        async with (
            self._errors(path),
            self._pool.session() as sftp,
            sftp.open(self._abs(path), "rb") as f,
        ):
            position = offset
            while chunk := await f.read(_CHUNK, position):
                position += len(chunk)
                yield cast(bytes, chunk)

    async def hash(self, path: str, kind: str) -> str | None:
        split_path(path)
        if kind not in (MD5, SHA256, CRC32C):
            return None
        hasher = new_hasher(kind)
        if hasher is None:
            return None
        try:
            async for chunk in self.read(path):
                # hashlib releases the GIL on large buffers: hash beside the loop.
                await asyncio.to_thread(hasher.update, chunk)
        except SyncStoreError:
            if await self.stat(path) is None:
                return None
            raise
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
        split_path(path)
        partial_rel = partial_path(path)
        tmp, final = self._abs(partial_rel), self._abs(path)
        # What a checkpoint's token says, besides the length: a token resumes
        # only the write it came from (same path, size and mtime of the source).
        token_base: dict[str, object] = {
            "kind": "sftp",
            "partial": partial_rel,
            "size": size,
            "mtime": mtime,
        }
        with source_errors_unwrapped():
            async with self._errors(path), self._pool.session() as sftp:
                offset = 0
                if resume is not None:
                    offset = await self._resumable_length(sftp, resume, token_base, size)
                f = await self._open_partial(sftp, partial_rel, offset)
                try:
                    written = await self._fill(f, source, offset, size, token_base, checkpoint)
                    if written != size:
                        raise IntegrityError(
                            f"the source gave {written} bytes, {size} expected",
                            url=self.url,
                            path=path,
                        )
                    await self._fsync(f)
                    await f.utime((mtime, mtime))
                finally:
                    await f.close()
                await self._rename(sftp, tmp, final)
                attrs = await sftp.lstat(final)
        entry = _entry(path, attrs)
        if entry.size != size:
            raise IntegrityError(
                f"{entry.size} bytes on the server after the write, {size} expected",
                url=self.url,
                path=path,
            )
        return entry

    async def _fill(
        self,
        f: asyncssh.SFTPClientFile,
        source: SourceOpener,
        offset: int,
        size: int,
        token_base: dict[str, object],
        checkpoint: Callable[[ResumeToken], Awaitable[None]] | None,
    ) -> int:
        """Copies the source from ``offset`` into ``f``; returns the bytes now in it.
        Writes go in pieces of about 1 MiB, which asyncssh sends as parallel
        requests."""
        written = last_checkpoint = flushed = offset
        pending: list[bytes] = []
        async for chunk in guarded(source(offset)):
            written += len(chunk)
            if written > size:
                raise IntegrityError(
                    f"the source gave more than the {size} bytes expected",
                    url=self.url,
                    path=str(token_base["partial"]),
                )
            pending.append(chunk)
            if written - flushed >= _CHUNK or (
                checkpoint is not None and written - last_checkpoint >= self.part_size
            ):
                await f.write(b"".join(pending), flushed)
                pending, flushed = [], written
            if checkpoint is not None and written - last_checkpoint >= self.part_size:
                await self._fsync(f)
                await checkpoint({**token_base, "length": written})
                last_checkpoint = written
        if pending:
            await f.write(b"".join(pending), flushed)
        return written

    async def _resumable_length(
        self,
        sftp: asyncssh.SFTPClient,
        token: ResumeToken,
        token_base: Mapping[str, object],
        size: int,
    ) -> int:
        """How much of the partial file the token vouches for and the server
        still holds; 0 (start again) for another write's token (another path,
        or a source of another size or mtime) or a partial file gone."""
        partial_rel = str(token_base["partial"])
        length = token.get("length")
        if any(token.get(key) != value for key, value in token_base.items()):
            log.info(
                "sync sftp: resume token is for another write of %s; starting again", partial_rel
            )
            return 0
        if not isinstance(length, int) or length < 0 or length > size:
            return 0
        try:
            attrs = await sftp.stat(self._abs(partial_rel))
        except asyncssh.SFTPNoSuchFile:
            log.info("sync sftp: partial file %s is gone; starting again", partial_rel)
            return 0
        return length if (attrs.size or 0) >= length else 0

    async def _open_partial(
        self, sftp: asyncssh.SFTPClient, partial_rel: str, offset: int
    ) -> asyncssh.SFTPClientFile:
        tmp = self._abs(partial_rel)
        if offset:
            f = await sftp.open(tmp, "r+b")
            await f.truncate(offset)
            return f
        try:
            return await sftp.open(tmp, "wb")
        except asyncssh.SFTPNoSuchFile:
            await self._make_parents(sftp, partial_rel)
            return await sftp.open(tmp, "wb")

    async def _fsync(self, f: asyncssh.SFTPClientFile) -> None:
        if not self._fsync_supported:
            return
        try:
            await f.fsync()
        except asyncssh.SFTPOpUnsupported:
            # Then the data is as durable as the server's page cache makes it.
            log.warning("sync sftp: %s has no fsync@openssh.com; writes are not fsynced", self.url)
            self._fsync_supported = False

    async def _rename(self, sftp: asyncssh.SFTPClient, tmp: str, final: str) -> None:
        try:
            await sftp.posix_rename(tmp, final)
        except asyncssh.SFTPOpUnsupported:
            # A server without posix-rename cannot rename over a file: remove
            # it first (a moment in which neither the old nor new file is there).
            with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                await sftp.remove(final)
            await sftp.rename(tmp, final)

    async def _make_parents(self, sftp: asyncssh.SFTPClient, rel: str) -> None:
        """Creates the directories above ``rel`` inside the root, one level at a
        time; a missing root stays missing (the first mkdir fails)."""
        for parent in reversed(parent_dirs(rel)):
            await self._mkdir(sftp, parent)

    async def _mkdir(self, sftp: asyncssh.SFTPClient, rel: str) -> None:
        try:
            await sftp.mkdir(self._abs(rel))
        except (asyncssh.SFTPFailure, asyncssh.SFTPFileAlreadyExists):
            # SFTP v3 says only "failure" for an existing directory: look.
            if not await sftp.isdir(self._abs(rel)):
                raise

    # -- deleting, directories ----------------------------------------------

    async def delete(self, path: str) -> None:
        split_path(path)
        async with self._errors(path), self._pool.session() as sftp:
            target = self._abs(path)
            try:
                await sftp.remove(target)
            except asyncssh.SFTPNoSuchFile:
                pass  # already gone; its parents may still be empty from an earlier delete
            except asyncssh.SFTPError:
                if not await sftp.isdir(target):
                    raise
                await sftp.rmdir(target)
            with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                # An interrupted write of this path will not be resumed now.
                await sftp.remove(self._abs(partial_path(path)))
            for parent in parent_dirs(path):
                try:
                    await sftp.rmdir(self._abs(parent))
                except asyncssh.SFTPNoSuchFile:
                    continue
                except asyncssh.SFTPError:
                    break  # not empty (v3 servers say only "failure")

    async def make_dir(self, path: str) -> None:
        """Creates ``path`` and its parents inside the root; ``make_dir("")``
        creates the root itself (for a destination that does not exist yet)."""
        async with self._errors(path), self._pool.session() as sftp:
            if path == "":
                await sftp.makedirs(self.root, exist_ok=True)
                return
            split_path(path)
            await self._make_parents(sftp, path)
            await self._mkdir(sftp, path)

    # -- helpers -------------------------------------------------------------

    def _abs(self, rel: str) -> str:
        return posixpath.join(self.root, rel) if rel else self.root

    async def _check_root(self, sftp: asyncssh.SFTPClient) -> None:
        if not await sftp.isdir(self.root):
            raise StoreNotFoundError(
                f"no such directory on {self._pool.config.where}: {self.root}", url=self.url
            )

    @contextlib.asynccontextmanager
    async def _errors(self, path: str) -> AsyncIterator[None]:
        """Translates asyncssh's and the socket's errors to the connector error
        tree (the one place this connector does)."""
        try:
            yield
        except SyncStoreError:
            raise
        except asyncssh.SFTPNoSuchFile as exc:
            raise await self._not_found(exc, path) from exc
        except asyncssh.SFTPPermissionDenied as exc:
            raise StoreAuthError(
                f"permission denied: {self._abs(path)}: {exc.reason}", url=self.url, path=path
            ) from exc
        except asyncssh.PermissionDenied as exc:
            raise StoreAuthError(
                f"authentication refused by {self._pool.config.where}: {exc.reason}",
                url=self.url,
            ) from exc
        except asyncssh.HostKeyNotVerifiable as exc:
            raise StoreAuthError(
                f"the host key of {self._pool.config.where} is not trusted ({exc.reason}): "
                f"add it to {self._pool.config.known_hosts_name}",
                url=self.url,
            ) from exc
        except asyncssh.SFTPError as exc:
            if isinstance(exc, _CONNECTION_ERRORS):
                raise self._unavailable(exc) from exc
            raise SyncStoreError(
                f"{self._abs(path)}: {exc.reason}", url=self.url, path=path
            ) from exc
        except _CONNECTION_ERRORS as exc:
            raise self._unavailable(exc) from exc

    async def _not_found(self, exc: asyncssh.SFTPError, path: str) -> SyncStoreError:
        with contextlib.suppress(asyncssh.Error, OSError):
            async with self._pool.session() as sftp:
                if not await sftp.isdir(self.root):
                    return StoreNotFoundError(
                        f"no such directory on {self._pool.config.where}: {self.root}",
                        url=self.url,
                        path=path,
                    )
        return SyncStoreError(f"{self._abs(path)}: {exc.reason}", url=self.url, path=path)

    def _unavailable(self, exc: BaseException) -> StoreUnavailableError:
        # The pool has dropped the connection that failed.
        reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        return StoreUnavailableError(
            f"SFTP server {self._pool.config.where}: {reason}", url=self.url
        )


def _settings_with_env(settings: Mapping[str, str]) -> dict[str, str]:
    merged = {
        key[len("ECO_SFTP_") :].lower(): value
        for key, value in os.environ.items()
        if key.startswith("ECO_SFTP_")
    }
    merged.update(settings)
    return merged


def _mtime(attrs: asyncssh.SFTPAttrs) -> float:
    if attrs.mtime is None:
        return 0.0
    if attrs.mtime_ns is not None:
        return attrs.mtime + attrs.mtime_ns / 1e9
    return float(attrs.mtime)


def _entry(path: str, attrs: asyncssh.SFTPAttrs) -> Entry:
    return Entry(path=path, size=attrs.size or 0, mtime=_mtime(attrs))
