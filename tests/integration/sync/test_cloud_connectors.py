"""What is particular to the object stores (S3, GCS, Azure Blob), against their
emulators: multipart ETags that are not MD5s, resumed uploads that send only
what the store lacks, throttling passed to the engine at once (no retries
inside the SDKs), refused credentials and missing buckets.

The shared promises (round trips, listings, names, deletes) are in
test_connectors.py, over every store.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from botocore.utils import parse_timestamp

from sidecar.sync import SyncOptions, run_sync
from sidecar.sync.connectors import (
    MD5,
    Connector,
    Entry,
    IntegrityError,
    ResumeToken,
    Source,
    SourceOpener,
    StoreAuthError,
    StoreNotFoundError,
    StoreThrottledError,
    SyncStoreError,
    open_connector,
)
from sidecar.sync.connectors.azure import _PROXY_VARIABLES, _env_names_a_proxy_or_netrc
from sidecar.sync.connectors.s3 import _timestamp
from tests.harness.cloud_storage import (
    AZURITE_KEY,
    Emulator,
    MotoServer,
    azurite_connection_string,
    make_s3_bucket,
    s3_settings,
)
from tests.harness.storage import StoreTarget
from tests.harness.store_proxy import THROTTLED, StoreProxy

MIB = 1 << 20
PART = 5 * MIB  # S3's smallest part, a multiple of GCS's 256 KiB
MTIME = 1_700_000_000.0
CLOUDS = ("s3", "gcs", "azure")
EMULATOR_OF = {"s3": "moto_server", "gcs": "gcs_server", "azure": "azurite_server"}


@pytest.fixture(params=CLOUDS)
def cloud(request: pytest.FixtureRequest) -> StoreTarget:
    """A fresh bucket or container on each cloud emulator in turn."""
    result: StoreTarget = request.getfixturevalue(f"{request.param}_target")
    return result


def connect(target: StoreTarget, **settings: str) -> Connector:
    return open_connector(target.url, {**target.settings, **settings})


def through(target: StoreTarget, endpoint: str) -> dict[str, str]:
    """The target's settings with the store at ``endpoint`` (a proxy) instead."""
    settings = dict(target.settings)
    if target.name == "s3":
        settings["endpoint_url"] = endpoint
    elif target.name == "gcs":
        settings["emulator_host"] = endpoint
    else:
        settings["connection_string"] = azurite_connection_string(endpoint)
    return settings


def source_of(data: bytes, chunk: int = 256 * 1024) -> SourceOpener:
    async def opener(offset: int) -> AsyncIterator[bytes]:
        for start in range(offset, len(data), chunk):
            yield data[start : start + chunk]

    return opener


class SourceBroke(Exception):
    """The source failed mid-transfer (a dropped download, a killed engine)."""


async def listing(c: Connector) -> dict[str, Entry]:
    return {entry.path: entry async for entry in c.list()}


async def content(c: Connector, path: str) -> bytes:
    return b"".join([chunk async for chunk in c.read(path)])


# -- settings from the environment --------------------------------------------


async def test_the_standard_environment_alone_reaches_the_store(
    cloud: StoreTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``eco`` reads when a job names no profile: AWS_ENDPOINT_URL and the
    AWS keys and region; STORAGE_EMULATOR_HOST; AZURE_STORAGE_CONNECTION_STRING."""
    for name, value in cloud.env.items():
        monkeypatch.setenv(name, value)
    async with open_connector(cloud.url) as c:
        entry = await c.write("env.txt", source_of(b"from the environment"), 20, mtime=MTIME)
        assert entry.size == 20
        assert await content(c, "env.txt") == b"from the environment"
        assert list(await listing(c)) == ["env.txt"]


# -- hashes ------------------------------------------------------------------


async def test_a_multipart_etag_is_not_an_md5_but_hash_answers_from_metadata(
    s3_target: StoreTarget, moto_server: Emulator
) -> None:
    data = os.urandom(2 * PART + 4321)
    md5 = hashlib.md5(data).hexdigest()
    async with connect(s3_target, part_size=str(PART), upload_cutoff=str(PART)) as c:
        entry = await c.write("big.bin", source_of(data), len(data), mtime=MTIME)
        assert entry.etag is not None and entry.etag.endswith("-3"), entry.etag
        assert MD5 not in entry.hashes
        listed = (await listing(c))["big.bin"]
        assert MD5 not in listed.hashes and listed.etag == entry.etag
        # A single-part object's ETag is its MD5, and is listed as one.
        small = await c.write("small.bin", source_of(b"small"), 5, mtime=MTIME)
        assert small.hashes[MD5] == hashlib.md5(b"small").hexdigest()

    # hash() answers from what the upload kept, without reading the object.
    async with StoreProxy(moto_server.endpoint) as proxy:
        async with open_connector(s3_target.url, through(s3_target, proxy.endpoint)) as c:
            assert await c.hash("big.bin", MD5) == md5
        reads = [(m, p) for m, p in proxy.seen if m == "GET" and "tagging" not in p]
        assert reads == [], reads


@pytest.mark.parametrize("store", ["gcs", "azure"])
async def test_a_large_objects_listed_md5_is_its_contents(
    store: str, request: pytest.FixtureRequest
) -> None:
    """GCS computes md5Hash for a resumable upload, and Azure keeps the
    Content-MD5 committed with the block list (from a source that can tell
    its MD5: a local file here): both are the whole content's (S3 lists a
    multipart ETag, never an MD5: the test above)."""
    cloud: StoreTarget = request.getfixturevalue(f"{store}_target")
    data = os.urandom(2 * PART + 99)

    async def hash_here() -> str:
        return hashlib.md5(data).hexdigest()

    local = Source(source_of(data), hash_here=hash_here)
    async with connect(cloud, part_size=str(PART), upload_cutoff=str(PART)) as c:
        entry = await c.write("big.bin", local, len(data), mtime=MTIME)
        listed = (await listing(c))["big.bin"]
        assert entry.hashes[MD5] == listed.hashes[MD5] == hashlib.md5(data).hexdigest()
        assert listed.mtime == MTIME  # kept in metadata, listed with it
        assert await c.hash("big.bin", MD5) == hashlib.md5(data).hexdigest()


async def test_azure_takes_a_blocks_md5_only_where_the_source_could_tell_one(
    azure_target: StoreTarget,
) -> None:
    """The whole content's MD5 is a second pass over every byte: from a source
    that cannot tell its MD5 (an S3 multipart object), the blob has none
    either and hash() reads it; a listed MD5 the bytes do not match is an
    IntegrityError before anything is committed."""
    data = os.urandom(2 * PART + 99)
    md5 = hashlib.md5(data).hexdigest()
    async with connect(azure_target, part_size=str(PART), upload_cutoff=str(PART)) as c:
        entry = await c.write("unknown.bin", source_of(data), len(data), mtime=MTIME)
        assert MD5 not in entry.hashes
        assert MD5 not in (await listing(c))["unknown.bin"].hashes
        assert await c.hash("unknown.bin", MD5) == md5  # read and computed

        listed = Source(source_of(data), listed_md5=md5)
        entry = await c.write("listed.bin", listed, len(data), mtime=MTIME)
        assert entry.hashes[MD5] == md5

        stale = Source(source_of(data), listed_md5=hashlib.md5(b"before").hexdigest())
        with pytest.raises(IntegrityError, match="nothing committed"):
            await c.write("stale.bin", stale, len(data), mtime=MTIME)
        assert "stale.bin" not in await listing(c)


# -- resumed uploads -----------------------------------------------------------


async def test_a_resumed_upload_sends_only_the_missing_parts(cloud: StoreTarget) -> None:
    data = os.urandom(3 * PART + 12345)
    tokens: list[ResumeToken] = []

    async def checkpoint(token: ResumeToken) -> None:
        tokens.append(json.loads(json.dumps(token)))  # kept as JSON by the engine

    async def breaks_in_the_third_part(offset: int) -> AsyncIterator[bytes]:
        async for chunk in source_of(data)(offset):
            if offset >= 2 * PART + 100_000:
                raise SourceBroke("killed mid-part")
            offset += len(chunk)
            yield chunk

    async with connect(cloud, part_size=str(PART), upload_cutoff=str(PART)) as c:
        with pytest.raises(SourceBroke):
            await c.write(
                "big.bin", breaks_in_the_third_part, len(data), mtime=MTIME, checkpoint=checkpoint
            )
        assert await c.stat("big.bin") is None  # nothing visible

    asked: list[int] = []
    sent = 0

    async def counting(offset: int) -> AsyncIterator[bytes]:
        nonlocal sent
        asked.append(offset)
        async for chunk in source_of(data)(offset):
            sent += len(chunk)
            yield chunk

    async with connect(cloud, part_size=str(PART), upload_cutoff=str(PART)) as c:
        entry = await c.write(
            "big.bin", counting, len(data), mtime=MTIME, resume=tokens[-1], checkpoint=checkpoint
        )
        # Two whole parts were in the store: only the rest was asked for.
        assert asked == [2 * PART]
        assert sent == len(data) - 2 * PART
        assert entry.size == len(data)
        assert hashlib.sha256(await content(c, "big.bin")).digest() == hashlib.sha256(data).digest()
        # After a resume the whole MD5 was not computed while uploading; hash()
        # still gives the true one (from the store's own, or by reading).
        assert await c.hash("big.bin", MD5) == hashlib.md5(data).hexdigest()


# -- parts in flight together (S3 parts, Azure blocks) -------------------------


@pytest.fixture(params=("s3", "azure"))
def parallel_cloud(request: pytest.FixtureRequest) -> StoreTarget:
    """The stores whose uploads send several parts of one object at once."""
    result: StoreTarget = request.getfixturevalue(f"{request.param}_target")
    return result


def _azure_block(prefix: str, number: int) -> str:
    return f"{prefix}{number - 1:06d}"


async def _stage(
    c: Connector, name: str, key: str, data: bytes, numbers: tuple[int, ...]
) -> ResumeToken:
    """An upload of ``data`` holding only parts ``numbers`` (from 1), as parts
    in flight together leave it when the run is killed; its resume token."""
    token: dict[str, object] = {"part_size": PART, "key": key, "size": len(data), "mtime": MTIME}
    if name == "s3":
        client = await c._ensure()  # type: ignore[attr-defined]
        bucket = c._root.bucket  # type: ignore[attr-defined]
        created = await client.create_multipart_upload(Bucket=bucket, Key=key)
        for n in numbers:
            await client.upload_part(
                Bucket=bucket,
                Key=key,
                UploadId=created["UploadId"],
                PartNumber=n,
                Body=data[(n - 1) * PART : n * PART],
            )
        token["upload_id"] = created["UploadId"]
    else:
        blob = c._ensure().get_blob_client(key)  # type: ignore[attr-defined]
        prefix = os.urandom(8).hex()
        for n in numbers:
            await blob.stage_block(_azure_block(prefix, n), data[(n - 1) * PART : n * PART])
        token["blocks"] = prefix
    return token


async def _held(c: Connector, name: str, key: str, token: ResumeToken) -> int:
    """Bytes of whole parts the store holds for the upload ``token`` names."""
    size = int(token["size"])
    whole = {n: min(PART, size - (n - 1) * PART) for n in range(1, -(-size // PART) + 1)}
    if name == "s3":
        client = await c._ensure()  # type: ignore[attr-defined]
        bucket = c._root.bucket  # type: ignore[attr-defined]
        page = await client.list_parts(Bucket=bucket, Key=key, UploadId=token["upload_id"])
        sizes = {int(p["PartNumber"]): int(p["Size"]) for p in page.get("Parts", ())}
    else:
        blob = c._ensure().get_blob_client(key)  # type: ignore[attr-defined]
        _, blocks = await blob.get_block_list("uncommitted")
        ids = {b.id: b.size for b in blocks}
        sizes = {n: ids.get(_azure_block(str(token["blocks"]), n), -1) for n in whole}
    return sum(n_size for n, n_size in whole.items() if sizes.get(n) == n_size)


async def test_a_resume_sends_only_the_parts_missing_between_held_ones(
    parallel_cloud: StoreTarget,
) -> None:
    """Parts in flight together finish in any order: a killed run can leave
    parts 1, 3 and 5 in the store and not 2 and 4. The resume reads and sends
    exactly those two (the source opened at each), and nothing is visible
    before the object is complete."""
    cloud = parallel_cloud
    data = os.urandom(4 * PART + 777)  # five parts, the last short
    async with connect(cloud, part_size=str(PART), upload_cutoff=str(PART)) as c:
        key = c._root.key("big.bin")  # type: ignore[attr-defined]
        token = await _stage(c, cloud.name, key, data, (1, 3, 5))
        assert await c.stat("big.bin") is None
        asked: list[int] = []
        sent = 0

        async def recording(offset: int) -> AsyncIterator[bytes]:
            nonlocal sent
            asked.append(offset)
            async for chunk in source_of(data)(offset):
                sent += len(chunk)
                yield chunk

        entry = await c.write("big.bin", recording, len(data), mtime=MTIME, resume=token)
        assert asked == [PART, 3 * PART] and sent == 2 * PART
        assert entry.size == len(data)
        assert await content(c, "big.bin") == data
        assert await c.hash("big.bin", MD5) == hashlib.md5(data).hexdigest()


async def test_an_upload_cancelled_with_parts_in_flight_resumes_with_what_the_store_holds(
    parallel_cloud: StoreTarget,
) -> None:
    """The engine killed while four parts are in flight (after one is in
    place): nothing is visible, and the resume sends exactly the bytes of the
    parts the store does not hold whole."""
    cloud = parallel_cloud
    data = os.urandom(6 * PART + 5)
    tokens: list[ResumeToken] = []
    one_in_place = asyncio.Event()

    async def checkpoint(token: ResumeToken) -> None:
        tokens.append(json.loads(json.dumps(token)))
        if len(tokens) >= 2:  # the first is before any part, each next after one
            one_in_place.set()

    async with connect(
        cloud, part_size=str(PART), upload_cutoff=str(PART), part_concurrency="4"
    ) as c:
        key = c._root.key("big.bin")  # type: ignore[attr-defined]
        write = asyncio.create_task(
            c.write("big.bin", source_of(data), len(data), mtime=MTIME, checkpoint=checkpoint)
        )
        await one_in_place.wait()
        write.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write
        assert await c.stat("big.bin") is None
        # A part whose request was cut off after its last byte may still be
        # stored by the emulator a moment later: wait until what it holds is settled.
        held = await _held(c, cloud.name, key, tokens[-1])
        for _ in range(50):
            await asyncio.sleep(0.2)
            settled, held = held, await _held(c, cloud.name, key, tokens[-1])
            if settled == held:
                break
        assert PART <= held < len(data)
        sent = 0

        async def counting(offset: int) -> AsyncIterator[bytes]:
            nonlocal sent
            async for chunk in source_of(data)(offset):
                sent += len(chunk)
                yield chunk

        entry = await c.write("big.bin", counting, len(data), mtime=MTIME, resume=tokens[-1])
        assert sent == len(data) - held
        assert entry.size == len(data)
        assert await content(c, "big.bin") == data


async def test_an_object_up_to_the_cutoff_goes_in_one_request(
    parallel_cloud: StoreTarget, request: pytest.FixtureRequest
) -> None:
    """Above the part size but within ``upload_cutoff``: one PUT, no upload of parts."""
    cloud = parallel_cloud
    emulator: Emulator = request.getfixturevalue(EMULATOR_OF[cloud.name])
    data = os.urandom(2 * PART)
    settings = {"part_size": str(PART), "upload_cutoff": str(2 * PART)}
    async with (
        StoreProxy(emulator.endpoint) as proxy,
        open_connector(cloud.url, {**through(cloud, proxy.endpoint), **settings}) as c,
    ):
        entry = await c.write("mid.bin", source_of(data), len(data), mtime=MTIME)
        puts = [q for m, q in proxy.seen if m in ("PUT", "POST")]
        assert len(puts) == 1 and "partNumber" not in puts[0] and "blockid" not in puts[0]
        assert entry.hashes[MD5] == hashlib.md5(data).hexdigest()
        assert await content(c, "mid.bin") == data


def known(data: bytes, md5: str | None = None) -> Source:
    """``data`` as a source that knows its MD5 (``md5``, when given, says otherwise)."""

    return Source(source_of(data), listed_md5=md5 or hashlib.md5(data).hexdigest())


# Memory for two parts in flight (10 MiB), under the default cutoff (200 MiB).
TWO_PARTS = {"part_size": str(PART), "part_concurrency": "2"}


async def test_s3_streams_an_object_too_big_for_memory_in_one_put_when_its_md5_is_known(
    s3_target: StoreTarget, moto_server: Emulator
) -> None:
    data = os.urandom(3 * PART)
    async with (
        StoreProxy(moto_server.endpoint) as proxy,
        open_connector(s3_target.url, {**through(s3_target, proxy.endpoint), **TWO_PARTS}) as c,
    ):
        entry = await c.write("one.bin", known(data), len(data), mtime=MTIME)
        puts = [q for m, q in proxy.seen if m in ("PUT", "POST")]
        assert len(puts) == 1 and "partNumber" not in puts[0] and "uploads" not in puts[0]
        assert entry.hashes[MD5] == entry.etag == hashlib.md5(data).hexdigest()
        assert await content(c, "one.bin") == data
        assert (await c.stat("one.bin")) == entry

        # The same object from a source that cannot tell its MD5 goes in parts.
        proxy.seen.clear()
        entry = await c.write("parts.bin", source_of(data), len(data), mtime=MTIME)
        assert sum("partNumber" in q for m, q in proxy.seen if m == "PUT") == 3
        assert entry.etag is not None and entry.etag.endswith("-3")
        assert await c.hash("parts.bin", MD5) == hashlib.md5(data).hexdigest()


async def test_s3_a_run_hashes_local_files_first_and_streams_them_on_one_slot_each(
    s3_target: StoreTarget, tmp_path: Path
) -> None:
    """Files too big for memory go from a directory in one streamed PUT each,
    hashed where they lie first; the hash is part of the write and takes no
    slot of its own, so two transfers on one connection per store finish
    (a slot taken for the hash would wait forever on the writes holding them)."""
    src = tmp_path / "src"
    src.mkdir()
    files = {f"f{i}.bin": os.urandom(3 * PART) for i in range(3)}
    for name, data in files.items():
        (src / name).write_bytes(data)
    options = SyncOptions(
        source=src.as_uri(),
        destination=s3_target.url,
        transfers=2,
        max_connections=1,
        state_path=str(tmp_path / "state.db"),
        profiles={"destination": {**s3_target.settings, **TWO_PARTS}},
    )
    report = await asyncio.wait_for(run_sync(options), timeout=60)
    assert report.status == "completed" and report.errors == []
    assert report.files_copied == 3 and report.bytes_copied == 9 * PART
    async with connect(s3_target) as c:
        for name, data in files.items():
            entry = await c.stat(name)
            assert entry is not None and entry.etag == hashlib.md5(data).hexdigest()  # one part


async def test_s3_keeps_no_streamed_object_whose_md5_is_not_the_one_told(
    s3_target: StoreTarget,
) -> None:
    data = os.urandom(3 * PART)
    wrong = hashlib.md5(b"another content").hexdigest()
    async with connect(s3_target, **TWO_PARTS) as c:
        # S3 refuses the body (BadDigest); the emulator stores it, and the
        # ETag it answers gives the mismatch away: an IntegrityError either way.
        with pytest.raises(IntegrityError):
            await c.write("bad.bin", known(data, wrong), len(data), mtime=MTIME)


async def test_s3_a_streamed_source_that_fails_raises_its_own_error(
    s3_target: StoreTarget,
) -> None:
    data = os.urandom(3 * PART)

    async def broken(offset: int) -> AsyncIterator[bytes]:
        yield data[:PART]
        raise SourceBroke("the download dropped")

    told = hashlib.md5(data).hexdigest()
    async with connect(s3_target, **TWO_PARTS) as c:
        with pytest.raises(SourceBroke, match="dropped"):
            await c.write("broken.bin", Source(broken, listed_md5=told), len(data), mtime=MTIME)
        with pytest.raises(SyncStoreError, match="ended after"):
            short = Source(source_of(data[:PART]), listed_md5=told)
            await c.write("short.bin", short, len(data), mtime=MTIME)
        assert await listing(c) == {}  # nothing visible


async def test_a_token_the_store_no_longer_knows_starts_again(cloud: StoreTarget) -> None:
    data = os.urandom(PART + 1)
    stale = {
        "s3": {"upload_id": "no-such-upload"},
        "gcs": {
            "session": f"{cloud.settings.get('emulator_host')}/upload/storage/v1/b/"
            f"{cloud.url.split('/')[2]}/o?uploadType=resumable&upload_id=gone"
        },
        "azure": {"blocks": "0123456789abcdef"},
    }[cloud.name]
    async with connect(cloud, part_size=str(PART), upload_cutoff=str(PART)) as c:
        key = c._root.key("x.bin")  # type: ignore[attr-defined]
        token = {**stale, "key": key, "size": len(data), "mtime": MTIME, "part_size": PART}
        asked: list[int] = []

        async def recording(offset: int) -> AsyncIterator[bytes]:
            asked.append(offset)
            async for chunk in source_of(data)(offset):
                yield chunk

        entry = await c.write("x.bin", recording, len(data), mtime=MTIME, resume=token)
        assert asked == [0] and entry.size == len(data)
        assert await content(c, "x.bin") == data


Answer = tuple[dict[str, str], bytes]  # what a proxy's rewrite gives back


# -- verification ------------------------------------------------------------


def _corrupt_s3_etag(method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
    # The HEAD after CompleteMultipartUpload: another object's ETag.
    for name in headers:
        if method == "HEAD" and name.lower() == "etag":
            headers[name] = '"00000000000000000000000000000000-3"'
    return headers, body


def _corrupt_gcs_md5(method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
    # The answer to the resumable session's last chunk: another content's MD5.
    if method == "PUT" and "upload_id" in path and body.startswith(b"{"):
        resource = json.loads(body)
        if "md5Hash" in resource:
            resource["md5Hash"] = base64.b64encode(b"\0" * 16).decode()
            body = json.dumps(resource).encode()
    return headers, body


def _corrupt_azure_md5(method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
    # Put Blob's answer: the service kept another MD5 than the one sent.
    for name in headers:
        if method == "PUT" and name.lower() == "content-md5" and "comp=" not in path:
            headers[name] = base64.b64encode(b"\0" * 16).decode()
    return headers, body


async def test_a_store_holding_other_content_is_an_integrity_error(
    cloud: StoreTarget, request: pytest.FixtureRequest
) -> None:
    """What each connector checks after a write (S3: the composite ETag of a
    multipart upload; GCS: md5Hash of a resumable upload; Azure: the
    Content-MD5 Put Blob kept), shown a store that answers with another."""
    emulator: Emulator = request.getfixturevalue(EMULATOR_OF[cloud.name])
    rewrite, size = {
        "s3": (_corrupt_s3_etag, 2 * PART + 1),
        "gcs": (_corrupt_gcs_md5, 2 * PART + 1),
        "azure": (_corrupt_azure_md5, 1000),
    }[cloud.name]
    data = os.urandom(size)
    settings = {"part_size": str(PART), "upload_cutoff": str(PART)}
    async with (
        StoreProxy(emulator.endpoint) as proxy,
        open_connector(cloud.url, {**through(cloud, proxy.endpoint), **settings}) as c,
    ):
        proxy.rewrite = rewrite
        with pytest.raises(IntegrityError):
            await c.write("x.bin", source_of(data), size, mtime=MTIME)
        proxy.rewrite = None
        entry = await c.write("x.bin", source_of(data), size, mtime=MTIME)
        assert entry.size == size


# -- throttling ----------------------------------------------------------------


async def test_throttling_reaches_the_engine_at_once(
    cloud: StoreTarget, request: pytest.FixtureRequest
) -> None:
    """The store's "slow down" (S3 503 SlowDown, Azure 503 ServerBusy, GCS 429)
    is raised as StoreThrottledError after one request: the SDK does not retry
    on its own (the engine backs off); the next call goes through."""
    emulator: Emulator = request.getfixturevalue(EMULATOR_OF[cloud.name])
    throttle = THROTTLED[cloud.name]
    async with (
        StoreProxy(emulator.endpoint) as proxy,
        open_connector(cloud.url, through(cloud, proxy.endpoint)) as c,
    ):
        proxy.fail_next(1, throttle)
        before = proxy.requests
        with pytest.raises(StoreThrottledError):
            await listing(c)
        assert proxy.requests == before + 1, "the SDK retried by itself"
        assert await listing(c) == {}

        proxy.fail_next(1, throttle)
        with pytest.raises(StoreThrottledError):
            await c.write("t.txt", source_of(b"throttled"), 9, mtime=MTIME)
        entry = await c.write("t.txt", source_of(b"throttled"), 9, mtime=MTIME)
        assert entry.size == 9
        assert await content(c, "t.txt") == b"throttled"

        proxy.fail_next(1, throttle)
        with pytest.raises(StoreThrottledError):
            await c.stat("t.txt")
    assert throttle.status in proxy.answered


async def test_a_throttled_part_is_resumed_not_restarted(
    cloud: StoreTarget, request: pytest.FixtureRequest
) -> None:
    """A "slow down" in the middle of a large upload: the write raises
    StoreThrottledError, and the engine's retry (the same write with the last
    checkpoint's token) sends only what the store lacks."""
    emulator: Emulator = request.getfixturevalue(EMULATOR_OF[cloud.name])
    data = os.urandom(3 * PART + 1)
    tokens: list[ResumeToken] = []
    read = 0
    one_at_a_time = {"part_size": str(PART), "upload_cutoff": str(PART), "part_concurrency": "1"}

    async def counting(offset: int) -> AsyncIterator[bytes]:
        nonlocal read
        async for chunk in source_of(data)(offset):
            read += len(chunk)
            yield chunk

    async with (
        StoreProxy(emulator.endpoint) as proxy,
        # One part at a time, so "the second part's request" is one request
        # (parts in flight together: test_parts_in_flight_…).
        open_connector(cloud.url, {**through(cloud, proxy.endpoint), **one_at_a_time}) as c,
    ):

        async def checkpoint(token: ResumeToken) -> None:
            tokens.append(json.loads(json.dumps(token)))
            if read >= PART and proxy.answered.count(THROTTLED[cloud.name].status) == 0:
                proxy.fail_next(1, THROTTLED[cloud.name])  # the second part's request

        with pytest.raises(StoreThrottledError):
            await c.write("big.bin", counting, len(data), mtime=MTIME, checkpoint=checkpoint)
        asked: list[int] = []

        async def resumed(offset: int) -> AsyncIterator[bytes]:
            asked.append(offset)
            async for chunk in source_of(data)(offset):
                yield chunk

        entry = await c.write(
            "big.bin", resumed, len(data), mtime=MTIME, resume=tokens[-1], checkpoint=checkpoint
        )
        assert asked == [PART] and entry.size == len(data)
        assert hashlib.sha256(await content(c, "big.bin")).digest() == hashlib.sha256(data).digest()


# -- credentials and missing buckets -------------------------------------------


@pytest.fixture
def moto_with_auth() -> Iterator[MotoServer]:
    """A moto server that checks credentials (against its IAM, where no key
    exists): every request is refused as S3 refuses an unknown key."""
    server = MotoServer(env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_refused_credentials_are_store_auth_errors(
    cloud: StoreTarget, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if cloud.name == "s3":
        server: MotoServer = request.getfixturevalue("moto_with_auth")
        settings = s3_settings(server.endpoint)
        url = "s3://some-bucket/root"
    elif cloud.name == "azure":
        wrong = base64.b64encode(b"not the account key" * 3).decode()
        assert wrong != AZURITE_KEY
        conn = cloud.settings["connection_string"].replace(AZURITE_KEY, wrong)
        settings, url = {"connection_string": conn}, cloud.url
    else:
        # The emulator takes anything; what a client sees first is a key file
        # that is not one.
        (tmp_path / "key.json").write_text("{}")
        settings = {"credentials_file": str(tmp_path / "key.json"), "project": "eco-test"}
        url = cloud.url
    # Refused when the connector opens (GCS reads its key file then) or at
    # the first request: either way before anything is listed or written.
    with pytest.raises(StoreAuthError):
        async with open_connector(url, settings) as c:
            await listing(c)
    with pytest.raises(StoreAuthError):
        async with open_connector(url, settings) as c:
            await c.write("a.txt", source_of(b"a"), 1, mtime=MTIME)


async def test_s3_without_any_credentials_is_a_store_auth_error(
    moto_server: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    bucket = make_s3_bucket(moto_server.endpoint)
    async with open_connector(f"s3://{bucket}", {"endpoint_url": moto_server.endpoint}) as c:
        with pytest.raises(StoreAuthError):
            await listing(c)


async def test_a_missing_bucket_is_store_not_found(cloud: StoreTarget) -> None:
    scheme, _, rest = cloud.url.partition("://")
    url = f"{scheme}://eco-missing-{os.urandom(4).hex()}/{rest.partition('/')[2]}"
    async with open_connector(url, cloud.settings) as c:
        with pytest.raises(StoreNotFoundError):
            await listing(c)
        with pytest.raises(StoreNotFoundError):
            await c.stat("")
        with pytest.raises(StoreNotFoundError):
            await c.write("a.txt", source_of(b"a"), 1, mtime=MTIME)
        with pytest.raises(StoreNotFoundError):
            await c.write("big.bin", source_of(os.urandom(PART + 1)), PART + 1, mtime=MTIME)


@pytest.mark.parametrize(
    ("variables", "netrc", "honoured"),
    [
        ({}, False, False),
        ({"HTTPS_PROXY": "http://proxy:3128"}, False, True),
        ({"https_proxy": "http://proxy:3128"}, False, True),
        ({"ALL_PROXY": ""}, False, False),
        ({}, True, True),
    ],
)
def test_the_azure_session_honours_the_environment_only_when_it_names_something(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    variables: dict[str, str],
    netrc: bool,
    honoured: bool,
) -> None:
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    if netrc:
        (tmp_path / ".netrc").write_text("machine example.com login a password b\n")
    assert _env_names_a_proxy_or_netrc() is honoured


@pytest.mark.parametrize(
    "value",
    [
        "Mon, 07 Dec 2026 13:00:00 GMT",
        "2026-12-07T13:00:00.000Z",
        "2026-12-07T13:00:00.250+02:00",
        "2026-12-07T13:00:00",
        1796648132,
        "1796648132.5",
    ],
)
def test_s3_timestamps_read_as_botocore_reads_them(value: object) -> None:
    assert _timestamp(value).timestamp() == parse_timestamp(value).timestamp()
