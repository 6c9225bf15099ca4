"""What the object-store connectors (s3, gs, az) share: URL and key handling,
cutting a source into parts, the metadata keys they write, and a content
hash computed by reading (``_hashing`` has the hashers).

Every object store here keeps a flat namespace of keys; a connector's root is
``bucket/prefix`` and a path is the key with ``prefix/`` taken off. An empty
directory is a zero-byte ``path/`` marker object (``Entry.is_dir``).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection, Mapping
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from sidecar.sync.connectors._base import SourceOpener, SyncStoreError

__all__ = [
    "DEFAULT_PART_CONCURRENCY",
    "DEFAULT_PART_SIZE",
    "DEFAULT_UPLOAD_CUTOFF",
    "META_MD5",
    "META_MTIME",
    "POOL_SIZE",
    "ObjectRoot",
    "Part",
    "concurrency_from",
    "cutoff_from",
    "digest_of",
    "exactly",
    "in_memory_from",
    "page_size_from",
    "parse_mtime",
    "part_count",
    "part_size_from",
    "parts_of",
    "read_exactly",
    "send_parts",
    "token_fits",
]

T = TypeVar("T")

# Object metadata the connectors write: the source's mtime (seconds since the
# epoch, as text) and the MD5 of the whole content computed while uploading
# (lowercase hex), so hash() answers for multipart objects without reading.
META_MTIME = "mtime"
META_MD5 = "md5"

# Objects above ``upload_cutoff`` go in parts of ``part_size``, up to
# ``part_concurrency`` of one object's parts in flight at once; smaller ones
# in one request. 8 MiB parts: above S3's 5 MiB minimum, a multiple of GCS's
# 256 KiB chunk unit. The cutoff is parts in flight x part size, so a
# transfer holds at most 32 MiB (plus the part being read) either way:
# 8 transfers, 256 MiB. Measured on moto and azurite (docs/benchmarks.md,
# "Sync"): one request beats parts up to tens of MiB (a multipart upload
# costs a create, a complete and a HEAD beside the parts), and 4 parts at
# once carry a large object at about the speed of one request.
DEFAULT_PART_SIZE = 8 * 1024 * 1024
DEFAULT_PART_CONCURRENCY = 4
DEFAULT_UPLOAD_CUTOFF = DEFAULT_PART_CONCURRENCY * DEFAULT_PART_SIZE

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


def flag_setting(settings: Mapping[str, str], key: str, default: bool) -> bool:
    """A yes/no setting: ``true`` or ``false`` (any case; ``1``/``0``, ``yes``/``no`` too)."""
    raw = settings.get(key)
    if raw is None or str(raw).strip() == "":
        return default
    value = str(raw).strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise ValueError(f"setting {key}: {raw!r} is not true or false")


def part_size_from(settings: Mapping[str, str], *, minimum: int, multiple: int = 1) -> int:
    """The ``part_size`` setting (bytes), raised to the store's minimum and
    rounded up to the multiple it needs."""
    size = max(_int_setting(settings, "part_size", DEFAULT_PART_SIZE), minimum)
    return -(-size // multiple) * multiple


def concurrency_from(settings: Mapping[str, str]) -> int:
    """The ``part_concurrency`` setting: one object's parts sent at once."""
    return _int_setting(settings, "part_concurrency", DEFAULT_PART_CONCURRENCY)


def cutoff_from(
    settings: Mapping[str, str], *, part_size: int, maximum: int, default: int | None = None
) -> int:
    """The ``upload_cutoff`` setting (bytes): the largest object sent in one
    request (larger ones go in parts); at least one part, at most what the
    store takes in one request. Its default is ``default``, else the bytes
    of a transfer's parts in flight (``part_concurrency`` x ``part_size``)."""
    if default is None:
        default = in_memory_from(settings, part_size=part_size)
    return min(max(_int_setting(settings, "upload_cutoff", default), part_size), maximum)


def in_memory_from(settings: Mapping[str, str], *, part_size: int) -> int:
    """The most a transfer holds in memory: its parts in flight
    (``part_concurrency`` x ``part_size``); an object this small is read
    whole and sent in one request."""
    return concurrency_from(settings) * part_size


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


class Part:
    """One part of a source, as the pieces it was read in (views of the
    source's chunks: nothing copied yet). A sender that needs one buffer
    takes :meth:`joined` (one copy); one whose store takes a streamed body
    sends :meth:`stream`, so the part is never copied in this process."""

    __slots__ = ("pieces", "size")

    def __init__(self, pieces: list[memoryview]) -> None:
        self.pieces = pieces
        self.size = sum(len(piece) for piece in pieces)

    def __len__(self) -> int:
        return self.size

    def joined(self) -> bytes:
        return _joined(self.pieces)

    async def stream(self) -> AsyncIterator[memoryview]:
        for piece in self.pieces:
            yield piece


async def parts_of(
    chunks: AsyncIterator[bytes], part_size: int, total: int
) -> AsyncIterator[bytes]:
    """The source's bytes re-cut into parts of exactly ``part_size`` (the last
    one shorter), ``total`` bytes in all; a source that ends early or runs
    over is an error, never a silently short object."""
    async for part in _parts(chunks, part_size, total):
        data = part.joined()
        part.pieces.clear()  # let go of the pieces first: one copy of the part is held
        yield data


async def _parts(chunks: AsyncIterator[bytes], part_size: int, total: int) -> AsyncIterator[Part]:
    """As :func:`parts_of`, each part as its pieces (:class:`Part`)."""
    # The pieces of the part being gathered, views of the chunks: a byte is
    # copied once at most, when a part is joined (a growing bytearray sliced
    # into bytes copied every part three times, 3 x 64 MiB for 64 MiB).
    pending: list[memoryview] = []
    held = 0
    seen = 0
    async for chunk in chunks:
        seen += len(chunk)
        if seen > total:
            raise SyncStoreError(f"the source gave more than the {total} bytes expected")
        view = memoryview(chunk)
        while held + len(view) >= part_size:
            take = part_size - held
            pending.append(view[:take])
            whole = Part(pending)
            pending, held, view = [], 0, view[take:]
            yield whole
        if view:
            pending.append(view)
            held += len(view)
    if seen < total:
        raise SyncStoreError(f"the source ended after {seen} of {total} bytes")
    if pending:
        yield Part(pending)


async def exactly(chunks: AsyncIterator[bytes], total: int) -> AsyncIterator[bytes]:
    """``chunks`` as they come, checked to be ``total`` bytes in all: a source
    that ends early or runs over is an error before a byte too many is passed
    on (a streamed body with a Content-Length must not come up short)."""
    seen = 0
    try:
        async for chunk in chunks:
            seen += len(chunk)
            if seen > total:
                raise SyncStoreError(f"the source gave more than the {total} bytes expected")
            yield chunk
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    if seen < total:
        raise SyncStoreError(f"the source ended after {seen} of {total} bytes")


def _joined(pieces: list[memoryview]) -> bytes:
    return pieces[0].tobytes() if len(pieces) == 1 else b"".join(pieces)


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
    # One part of the whole size (read to the end: a longer source is an error).
    async for part in parts_of(source(0), max(size, 1), size):
        data = part
    return data


def part_count(size: int, part_size: int) -> int:
    return max(1, -(-size // part_size))


async def _missing(
    source: SourceOpener, size: int, part_size: int, held: Collection[int]
) -> AsyncGenerator[tuple[int, Part], None]:
    """(number, part) of each part (numbered from 1) not in ``held``: the
    source is opened once per run of missing parts, at its first byte, and
    read only to the run's end, so held parts are neither sent nor read."""
    last = part_count(size, part_size)
    number = 1
    while number <= last:
        if number in held:
            number += 1
            continue
        end = number
        while end < last and end + 1 not in held:
            end += 1
        start, stop = (number - 1) * part_size, min(end * part_size, size)
        chunks = _upto(source(start), stop - start)
        async for part in _parts(chunks, part_size, stop - start):
            yield number, part
            number += 1
        number = end + 1


async def _upto(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """The first ``limit`` bytes of ``chunks`` (the source is closed after them)."""
    try:
        async for chunk in chunks:
            if len(chunk) >= limit:
                if limit:
                    yield chunk[:limit]
                return
            limit -= len(chunk)
            yield chunk
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


# Below this, an MD5 (under ~1 ms) costs less than the hop to a thread.
_HASH_INLINE = 1 << 20


async def digest_of(data: bytes) -> Any:
    """A hashlib MD5 of ``data``, computed off the event loop when it is big."""
    if len(data) < _HASH_INLINE:
        return hashlib.md5(data, usedforsecurity=False)
    return await asyncio.to_thread(hashlib.md5, data, usedforsecurity=False)


def _digests(part: Part, whole: Any) -> bytes:
    # In a worker thread: hashlib lets go of the GIL over big buffers, so an
    # 8 MiB part's MD5 (~10 ms) does not stall the event loop's other transfers.
    md5 = hashlib.md5(usedforsecurity=False)
    for piece in part.pieces:
        if whole is not None:
            whole.update(piece)
        md5.update(piece)
    return md5.digest()


async def send_parts(
    source: SourceOpener,
    size: int,
    part_size: int,
    *,
    held: Collection[int],
    concurrency: int,
    whole: Any,
    send: Callable[[int, Part, bytes], Awaitable[T]],
) -> dict[int, T]:
    """Sends the parts of the source not in ``held`` (numbers from 1), up to
    ``concurrency`` at once: ``send(number, part, md5)`` for each (a
    :class:`Part`, the MD5 of its bytes), answered by number. Parts are read
    in order (``whole``, a hashlib MD5 or None, sees every byte read, in
    order); the next one only when a slot is free, so at most
    ``concurrency`` parts are in memory, plus the one being read.

    When a part or the source fails, no new part is started; the parts in
    flight are let finish (whole parts the store keeps for a resume) and the
    first error is raised. A cancellation cancels the parts in flight."""
    answers: dict[int, T] = {}
    failed: list[BaseException] = []
    slots = asyncio.Semaphore(concurrency)

    async def one(number: int, data: Part, digest: bytes) -> None:
        try:
            answers[number] = await send(number, data, digest)
        except Exception as exc:
            failed.append(exc)
        finally:
            slots.release()

    parts = _missing(source, size, part_size, held)
    try:
        async with asyncio.TaskGroup() as group:
            while not failed:
                await slots.acquire()
                if failed:
                    break
                try:
                    number, data = await anext(parts)
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    failed.append(exc)  # the source's: parts in flight still finish
                    break
                digest = await asyncio.to_thread(_digests, data, whole)
                group.create_task(one(number, data, digest))
    finally:
        await parts.aclose()
    if failed:
        raise failed[0]
    return answers
