"""The connector conformance suite: every store (``target``: a directory, an
SFTP server, the S3, GCS and Azure emulators) keeps the promises of
sidecar/sync/connectors/_base.py the same way.

Each test gets a fresh, empty root. Run one store with ``-k file`` (or
``sftp``, ``s3``, ``gcs``, ``azure``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from sidecar.sync.connectors import (
    CRC32C,
    MD5,
    SHA256,
    Connector,
    Entry,
    ResumeToken,
    SourceOpener,
    StoreNotFoundError,
    open_connector,
)
from tests.harness.storage import StoreTarget

MTIME = 1_700_000_000.0  # whole seconds: every store keeps those exactly
MIB = 1 << 20
PART_SIZE = 5 * MIB  # S3's smallest part; the others honour it or clamp to their own minimum
# Stores whose listing has no object metadata, so a listed mtime is the
# store's last-modified time, not the one written (S3's ListObjectsV2); stat()
# returns the written one everywhere.
LISTS_NO_METADATA = {"s3"}


def connect(target: StoreTarget, **settings: str) -> Connector:
    return open_connector(target.url, {**target.settings, **settings})


def source_of(data: bytes, chunk: int = 256 * 1024) -> SourceOpener:
    async def opener(offset: int) -> AsyncIterator[bytes]:
        for start in range(offset, len(data), chunk):
            yield data[start : start + chunk]

    return opener


async def listing(c: Connector) -> dict[str, Entry]:
    entries: dict[str, Entry] = {}
    async for entry in c.list():
        assert entry.path not in entries, f"listed twice: {entry.path}"
        entries[entry.path] = entry
    return entries


async def put(c: Connector, path: str, data: bytes, mtime: float = MTIME) -> Entry:
    return await c.write(path, source_of(data), len(data), mtime=mtime)


async def content(c: Connector, path: str, offset: int = 0) -> bytes:
    return b"".join([chunk async for chunk in c.read(path, offset)])


def expected_hash(kind: str, data: bytes) -> str:
    if kind == CRC32C:
        import base64

        import google_crc32c

        checksum: object = google_crc32c.value(data)
        assert isinstance(checksum, int)
        return base64.b64encode(checksum.to_bytes(4, "big")).decode()
    return hashlib.new(kind, data).hexdigest()


def missing_root(target: StoreTarget) -> str:
    """A URL like the target's whose root does not exist: a directory that
    was never made, or a bucket/container nobody created."""
    parts = urlsplit(target.url)
    if parts.scheme in ("file", "sftp"):
        return target.url.rstrip("/") + "/no-such-directory"
    return urlunsplit((parts.scheme, f"eco-missing-{uuid.uuid4().hex[:12]}", "/", "", ""))


async def test_a_fresh_root_lists_nothing(target: StoreTarget) -> None:
    async with connect(target) as c:
        assert isinstance(c, Connector)
        assert await listing(c) == {}
        assert await c.stat("nothing-here.txt") is None


async def test_write_stat_read_round_trip(target: StoreTarget) -> None:
    data = os.urandom(300 * 1024 + 7)
    async with connect(target) as c:
        written = await put(c, "round/trip.bin", data)
        assert (written.path, written.size, written.mtime) == ("round/trip.bin", len(data), MTIME)
        stat = await c.stat("round/trip.bin")
        assert stat is not None
        assert (stat.size, stat.mtime, stat.is_dir) == (len(data), MTIME, False)
        listed = await listing(c)
        assert list(listed) == ["round/trip.bin"]
        assert listed["round/trip.bin"].size == len(data)
        if target.name not in LISTS_NO_METADATA:
            assert listed["round/trip.bin"].mtime == MTIME
        assert await content(c, "round/trip.bin") == data
        assert await content(c, "round/trip.bin", 1000) == data[1000:]
        # What a store lists as a content hash is the content's.
        for kind in c.listed_hashes:
            assert listed["round/trip.bin"].hashes.get(kind) == expected_hash(kind, data), kind

        # A second write replaces the first, whole.
        smaller = b"replaced"
        again = await put(c, "round/trip.bin", smaller, mtime=MTIME + 60)
        assert (again.size, again.mtime) == (len(smaller), MTIME + 60)
        assert await content(c, "round/trip.bin") == smaller
        assert list(await listing(c)) == ["round/trip.bin"]


async def test_zero_bytes(target: StoreTarget) -> None:
    async with connect(target) as c:
        entry = await put(c, "empty.txt", b"")
        assert entry.size == 0
        assert await content(c, "empty.txt") == b""
        assert (await listing(c))["empty.txt"].size == 0


async def test_a_listing_is_streamed_in_pages(target: StoreTarget) -> None:
    """Several pages of a listing (``list_page_size``: entries per listing
    request, honoured where the store lets the client choose): every entry
    once. 350 entries keep the emulators' part of the suite short (a Python
    GCS emulator takes ~25 ms a write); test_file_sftp.py lists 2,500 where
    writes are cheap."""
    count = 350
    async with connect(target, list_page_size="100") as c:
        limit = asyncio.Semaphore(32)

        async def one(i: int) -> None:
            async with limit:
                await put(c, f"many/{i % 3}/f{i:05d}", b"%d" % i)

        await asyncio.gather(*(one(i) for i in range(count)))
        seen: set[str] = set()
        async for entry in c.list():
            assert entry.path not in seen
            seen.add(entry.path)
        assert seen == {f"many/{i % 3}/f{i:05d}" for i in range(count)}


AWKWARD_NAMES = [
    "a/b/c/d/deep.txt",
    "ünïcödé/naïve café/日本語 ファイル.txt",
    "with space/file name with spaces.txt",
    "long/" + "n" * 196 + ".bin",  # a 200-character component
    "symbols/a+b=c & (d) [e] #f %g ~h.txt",
]


async def test_nested_unicode_spaces_and_long_names(target: StoreTarget) -> None:
    async with connect(target) as c:
        for i, path in enumerate(AWKWARD_NAMES):
            await put(c, path, f"content {i}".encode())
        listed = await listing(c)
        assert sorted(listed) == sorted(AWKWARD_NAMES)
        for i, path in enumerate(AWKWARD_NAMES):
            entry = await c.stat(path)
            assert entry is not None and entry.path == path, path
            assert await content(c, path) == f"content {i}".encode(), path


async def test_an_empty_directory_is_an_entry(target: StoreTarget) -> None:
    async with connect(target) as c:
        await c.make_dir("empty/inner")
        await put(c, "full/file.txt", b"x")
        listed = await listing(c)
        assert set(listed) == {"empty/inner", "full/file.txt"}
        assert listed["empty/inner"].is_dir and listed["empty/inner"].size == 0
        assert not listed["full/file.txt"].is_dir
        stat = await c.stat("empty/inner")
        assert stat is not None and stat.is_dir
        await c.make_dir("empty/inner")  # again: no error
        await c.delete("empty/inner")
        assert set(await listing(c)) == {"full/file.txt"}


async def test_delete(target: StoreTarget) -> None:
    async with connect(target) as c:
        await c.delete("never/was/here.txt")  # missing is fine
        await put(c, "d1/d2/f.txt", b"f")
        await put(c, "d1/g.txt", b"g")
        await c.delete("d1/d2/f.txt")
        # d1/d2, emptied, is gone (not left behind as an empty directory).
        assert set(await listing(c)) == {"d1/g.txt"}
        assert await c.stat("d1/d2/f.txt") is None
        await c.delete("d1/g.txt")
        assert await listing(c) == {}  # the root itself stays
        await c.delete("d1/g.txt")  # twice: still fine


async def test_hash(target: StoreTarget) -> None:
    data = os.urandom(70_000)
    async with connect(target) as c:
        await put(c, "hashed.bin", data)
        provided = {}
        for kind in (MD5, SHA256, CRC32C):
            value = await c.hash("hashed.bin", kind)
            if value is not None:
                assert value == expected_hash(kind, data), kind
                provided[kind] = value
        assert provided, "a connector provides at least one content hash"
        for kind in c.listed_hashes:
            assert kind in provided, f"{kind} is listed but hash() does not give it"
        assert await c.hash("hashed.bin", "no-such-kind") is None


class SourceBroke(Exception):
    """The source failed mid-transfer (a dropped download, a killed engine)."""


async def test_an_interrupted_write_resumes_from_its_checkpoint(target: StoreTarget) -> None:
    data = os.urandom(12 * MIB + 12345)
    path = "resume/big.bin"
    tokens: list[ResumeToken] = []

    async def checkpoint(token: ResumeToken) -> None:
        tokens.append(json.loads(json.dumps(token)))  # the engine keeps it as JSON

    def breaking_source(after: int) -> SourceOpener:
        async def opener(offset: int) -> AsyncIterator[bytes]:
            async for chunk in source_of(data)(offset):
                if offset >= after:
                    raise SourceBroke(f"after {after} bytes")
                offset += len(chunk)
                yield chunk

        return opener

    async with connect(target, part_size=str(PART_SIZE), upload_cutoff=str(PART_SIZE)) as c:
        with pytest.raises(SourceBroke):
            await c.write(
                path, breaking_source(11 * MIB), len(data), mtime=MTIME, checkpoint=checkpoint
            )
        assert tokens, "no checkpoint in 11 MiB with 5 MiB parts"
        # Nothing of the interrupted write is visible.
        assert await c.stat(path) is None
        assert await listing(c) == {}

    # A later process (a fresh connector) resumes where the last checkpoint was.
    opened_at: list[int] = []

    def recording_source() -> SourceOpener:
        async def opener(offset: int) -> AsyncIterator[bytes]:
            opened_at.append(offset)
            async for chunk in source_of(data)(offset):
                yield chunk

        return opener

    async with connect(target, part_size=str(PART_SIZE), upload_cutoff=str(PART_SIZE)) as c:
        entry = await c.write(
            path,
            recording_source(),
            len(data),
            mtime=MTIME,
            resume=tokens[-1],
            checkpoint=checkpoint,
        )
        assert len(opened_at) == 1 and 0 < opened_at[0] <= 11 * MIB, opened_at
        assert (entry.size, entry.mtime) == (len(data), MTIME)
        assert hashlib.sha256(await content(c, path)).digest() == hashlib.sha256(data).digest()
        assert list(await listing(c)) == [path]


@pytest.mark.parametrize("change", ["size", "mtime"])
async def test_a_resume_token_for_other_content_starts_again(
    target: StoreTarget, change: str
) -> None:
    """A token from a write of a source that has changed since (another size,
    or the same size and another mtime) is not continued from: the write
    starts at byte 0, and what the store holds is the new content, not the old
    one's first parts with the new one's end."""
    old = os.urandom(11 * MIB + (1 if change == "size" else 0))
    data = os.urandom(11 * MIB)
    new_mtime = MTIME + (60 if change == "mtime" else 0)
    tokens: list[ResumeToken] = []

    async def checkpoint(token: ResumeToken) -> None:
        tokens.append(json.loads(json.dumps(token)))

    async def broken(offset: int) -> AsyncIterator[bytes]:
        async for chunk in source_of(old[: 10 * MIB + 1])(offset):
            yield chunk
        raise SourceBroke("after two parts")

    async with connect(target, part_size=str(PART_SIZE), upload_cutoff=str(PART_SIZE)) as c:
        with pytest.raises(SourceBroke):
            await c.write("x.bin", broken, len(old), mtime=MTIME, checkpoint=checkpoint)
        assert tokens
        opened_at: list[int] = []

        async def recording(offset: int) -> AsyncIterator[bytes]:
            opened_at.append(offset)
            async for chunk in source_of(data)(offset):
                yield chunk

        entry = await c.write("x.bin", recording, len(data), mtime=new_mtime, resume=tokens[-1])
        assert opened_at == [0]
        assert (entry.size, entry.mtime) == (len(data), new_mtime)
        assert await content(c, "x.bin") == data


async def test_a_missing_root_is_store_not_found(target: StoreTarget) -> None:
    async with open_connector(missing_root(target), target.settings) as c:
        with pytest.raises(StoreNotFoundError):
            await listing(c)
