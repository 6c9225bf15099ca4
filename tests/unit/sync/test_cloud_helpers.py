"""What the object-store connectors share, without a store: roots and keys,
parts cut from a source, settings, resume tokens, and the S3 ETag rules."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import certifi
import pytest

from sidecar.sync.connectors._base import (
    IntegrityError,
    Source,
    SourceOpener,
    StoreAuthError,
    StoreNotFoundError,
    StoreThrottledError,
    StoreUnavailableError,
    SyncStoreError,
    known_md5,
    md5_to_be_had,
)
from sidecar.sync.connectors._cloud import (
    ObjectRoot,
    Part,
    cutoff_from,
    exactly,
    flag_setting,
    page_size_from,
    part_size_from,
    parts_of,
    send_parts,
    token_fits,
)
from sidecar.sync.connectors._s3_fast import FastS3, nameable
from sidecar.sync.connectors._s3_rules import classify, composite_etag, obstore_code, plain_md5


def test_a_root_maps_paths_to_keys_and_back() -> None:
    root = ObjectRoot("s3://bucket/some/prefix/", "s3")
    assert (root.bucket, root.prefix) == ("bucket", "some/prefix")
    assert root.key("a/b.txt") == "some/prefix/a/b.txt"
    assert root.path("some/prefix/a/b.txt") == "a/b.txt"
    assert root.path("some/prefix/") is None  # the root itself
    assert root.path("some/prefixed/x") is None  # beside the root, not under it
    bare = ObjectRoot("gs://bucket", "gs")
    assert (bare.key("x"), bare.list_prefix, bare.path("x")) == ("x", "", "x")
    assert ObjectRoot("az://c/with%20space", "az").prefix == "with space"
    with pytest.raises(ValueError, match="s3://"):
        ObjectRoot("gs://bucket/x", "s3")


def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        for i in range(0, len(data), size):
            yield data[i : i + size]

    return gen()


async def test_parts_are_cut_to_size_whatever_the_source_yields() -> None:
    data = bytes(range(256)) * 40  # 10,240 bytes
    parts = [p async for p in parts_of(_chunks(data, 777), 4096, len(data))]
    assert [len(p) for p in parts] == [4096, 4096, 2048]
    assert b"".join(parts) == data


async def test_a_source_of_the_wrong_length_is_an_error() -> None:
    with pytest.raises(SyncStoreError, match="ended after 10 of 20"):
        [p async for p in parts_of(_chunks(b"x" * 10, 3), 4, 20)]
    with pytest.raises(SyncStoreError, match="more than the 5"):
        [p async for p in parts_of(_chunks(b"x" * 10, 3), 4, 5)]


async def test_a_streamed_body_of_the_wrong_length_stops_before_the_extra_byte() -> None:
    passed: list[bytes] = []
    with pytest.raises(SyncStoreError, match="more than the 5"):
        async for chunk in exactly(_chunks(b"x" * 10, 3), 5):
            passed.append(chunk)
    assert sum(map(len, passed)) <= 5
    with pytest.raises(SyncStoreError, match="ended after 10 of 20"):
        [c async for c in exactly(_chunks(b"x" * 10, 3), 20)]
    assert b"".join([c async for c in exactly(_chunks(b"abcdef", 4), 6)]) == b"abcdef"


async def test_a_source_tells_its_md5_only_when_it_knows_it() -> None:
    hashed: list[bool] = []

    async def hash_here() -> str | None:
        hashed.append(True)
        return hashlib.md5(b"abc").hexdigest()

    opener = _opener(b"abc", [])
    listed = hashlib.md5(b"listed").hexdigest()
    assert await known_md5(opener) is None  # a bare opener knows nothing
    assert not md5_to_be_had(opener)
    assert await known_md5(Source(opener)) is None and not md5_to_be_had(Source(opener))
    assert await known_md5(Source(opener, listed_md5=listed)) == listed
    local = Source(opener, hash_here=hash_here)
    assert md5_to_be_had(local) and not hashed  # saying so costs no read
    assert await known_md5(local) == hashlib.md5(b"abc").hexdigest() and hashed
    both = Source(opener, listed_md5=listed, hash_here=hash_here)
    hashed.clear()
    assert await known_md5(both) == listed and not hashed  # the listed one, no read
    assert b"".join([c async for c in local(1)]) == b"bc"


def _opener(data: bytes, opened: list[int]) -> SourceOpener:
    def opener(offset: int) -> AsyncIterator[bytes]:
        opened.append(offset)
        return _chunks(data[offset:], 1000)

    return opener


async def test_parts_go_at_most_n_at_once_and_held_ones_are_not_read() -> None:
    data = bytes(range(256)) * 100  # 25,600 bytes: parts of 4,096, seven of them
    opened: list[int] = []
    in_flight = peak = 0
    whole = hashlib.md5()

    async def send(number: int, part: Part, digest: bytes) -> int:
        nonlocal in_flight, peak
        assert digest == hashlib.md5(part.joined()).digest()
        assert b"".join([piece async for piece in part.stream()]) == part.joined()
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.001 * (8 - number))  # later parts finish first
        in_flight -= 1
        return len(part)

    sent = await send_parts(
        _opener(data, opened), len(data), 4096, held=(), concurrency=3, whole=whole, send=send
    )
    assert sorted(sent) == [1, 2, 3, 4, 5, 6, 7] and peak == 3
    assert whole.digest() == hashlib.md5(data).digest()  # every byte, in order
    opened.clear()
    sent = await send_parts(
        _opener(data, opened),
        len(data),
        4096,
        held={1, 3, 4, 7},
        concurrency=3,
        whole=None,
        send=send,
    )
    assert sorted(sent) == [2, 5, 6] and opened == [4096, 4 * 4096]


async def test_a_failed_part_stops_new_ones_and_lets_those_in_flight_finish() -> None:
    data = b"x" * 10 * 100
    finished: list[int] = []

    async def send(number: int, part: Part, digest: bytes) -> None:
        if number == 2:
            raise SyncStoreError("refused")
        await asyncio.sleep(0.01)
        finished.append(number)

    with pytest.raises(SyncStoreError, match="refused"):
        await send_parts(
            _opener(data, []), len(data), 100, held=(), concurrency=3, whole=None, send=send
        )
    assert 1 in finished and 3 in finished and 10 not in finished


def test_settings_are_raised_to_the_stores_limits() -> None:
    assert cutoff_from({}, part_size=8 << 20, maximum=1 << 40) == 32 << 20
    assert cutoff_from({"part_concurrency": "2"}, part_size=8 << 20, maximum=1 << 40) == 16 << 20
    assert cutoff_from({"upload_cutoff": "1"}, part_size=5 << 20, maximum=1 << 40) == 5 << 20
    assert cutoff_from({"upload_cutoff": str(1 << 40)}, part_size=1, maximum=100) == 100
    assert cutoff_from({}, part_size=8 << 20, maximum=1 << 40, default=200 << 20) == 200 << 20
    assert part_size_from({}, minimum=5 << 20) == 8 << 20
    assert part_size_from({"part_size": "1"}, minimum=5 << 20) == 5 << 20
    assert part_size_from({"part_size": str(300_000)}, minimum=1, multiple=262_144) == 524_288
    assert page_size_from({"list_page_size": "100"}, maximum=1000) == 100
    assert page_size_from({"list_page_size": "9999"}, maximum=1000) == 1000
    with pytest.raises(ValueError, match="part_size"):
        part_size_from({"part_size": "lots"}, minimum=1)
    with pytest.raises(ValueError, match="list_page_size"):
        page_size_from({"list_page_size": "0"}, maximum=1000)


def test_a_token_fits_only_the_same_write() -> None:
    token = {"upload_id": "u", "key": "k", "size": 10, "mtime": 1.5}
    assert token_fits(token, "upload_id", "k", 10, 1.5)
    assert not token_fits(token, "upload_id", "other", 10, 1.5)
    assert not token_fits(token, "upload_id", "k", 11, 1.5)
    assert not token_fits(token, "upload_id", "k", 10, 2.0)
    assert not token_fits(token, "session", "k", 10, 1.5)
    assert not token_fits(None, "upload_id", "k", 10, 1.5)
    assert not token_fits({**token, "size": "many"}, "upload_id", "k", 10, 1.5)


def test_only_a_single_part_etag_is_an_md5() -> None:
    md5 = hashlib.md5(b"x").hexdigest()
    assert plain_md5(f'"{md5}"') == md5
    assert plain_md5(f'"{md5}-2"') is None
    assert plain_md5(None) is None
    parts = [b"a" * 10, b"b" * 3]
    digests = [hashlib.md5(p).digest() for p in parts]
    expected = hashlib.md5(b"".join(digests)).hexdigest() + "-2"
    assert composite_etag(digests) == expected
    assert composite_etag(digests).split("-")[0] != hashlib.md5(b"".join(parts)).hexdigest()


def test_a_flag_setting_takes_true_or_false_and_names_anything_else() -> None:
    assert flag_setting({}, "etag_is_md5", True) is True
    assert flag_setting({"etag_is_md5": ""}, "etag_is_md5", False) is False
    assert flag_setting({"etag_is_md5": "FALSE"}, "etag_is_md5", True) is False
    assert flag_setting({"payload_signing": "yes"}, "payload_signing", False) is True
    with pytest.raises(
        ValueError, match="setting payload_signing: 'sometimes' is not true or false"
    ):
        flag_setting({"payload_signing": "sometimes"}, "payload_signing", False)


@pytest.mark.parametrize(
    ("key", "fits"),
    [
        ("a.txt", True),
        ("dir/sub/name with spaces.txt", True),
        ("50%/ünï.txt", True),
        ("dir/", False),  # an empty directory's marker: obstore would drop the slash
        ("a//b", False),
        ("a/./b", False),
        ("a/../b", False),
        ("/a", False),
        ("", False),
    ],
)
def test_keys_obstore_names_exactly_and_the_rest(key: str, fits: bool) -> None:
    assert nameable(key) is fits


def test_s3_error_codes_are_read_from_obstore_messages() -> None:
    throttled = (
        "Generic S3 error: Error performing PUT http://h/b/a in 1ms - Server returned "
        'non-2xx status code: 503 Service Unavailable: <?xml version="1.0"?>'
        "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
    )
    assert obstore_code(throttled) == ("SlowDown", 503)
    assert obstore_code("Generic S3 error: HTTP error: error sending request") == ("", 0)


@pytest.mark.parametrize(
    ("code", "status", "error"),
    [
        ("NoSuchBucket", 404, StoreNotFoundError),
        ("InvalidAccessKeyId", 403, StoreAuthError),
        ("", 401, StoreAuthError),
        ("SlowDown", 503, StoreThrottledError),
        ("", 429, StoreThrottledError),
        ("InternalError", 500, StoreUnavailableError),
        ("InvalidRange", 416, SyncStoreError),
        ("BadDigest", 400, IntegrityError),  # the body is not what its Content-MD5 says
        ("XAmzContentSHA256Mismatch", 400, IntegrityError),
    ],
)
def test_s3_codes_map_onto_the_error_tree(code: str, status: int, error: type) -> None:
    assert type(classify(code, status, "m", "s3://b", "p")) is error


def test_obstore_serves_s3_only_when_the_keys_and_region_are_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_CA_BUNDLE",
        "AWS_USE_FIPS_ENDPOINT",
        "AWS_USE_DUALSTACK_ENDPOINT",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", f"{tmp_path}/none")
    keys = {"access_key_id": "k", "secret_access_key": "s"}
    assert FastS3.create("s3://b", "b", {}, path_style=True) is None  # botocore's chain
    assert FastS3.create("s3://b", "b", {"access_key_id": "k"}, path_style=True) is None
    assert FastS3.create("s3://b", "b", keys, path_style=True) is not None
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    assert FastS3.create("s3://b", "b", {}, path_style=True) is not None
    config = tmp_path / "config"
    config.write_text("[default]\nregion = eu-west-3\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    assert FastS3.create("s3://b", "b", {}, path_style=True) is None  # the region is in the file
    assert FastS3.create("s3://b", "b", {"region": "eu-west-3"}, path_style=True) is not None
    monkeypatch.setenv("AWS_CA_BUNDLE", certifi.where())  # a private CA's bundle is trusted
    assert FastS3.create("s3://b", "b", {"region": "eu-west-3"}, path_style=True) is not None
    monkeypatch.setenv("AWS_CA_BUNDLE", f"{tmp_path}/missing.pem")
    assert FastS3.create("s3://b", "b", {"region": "eu-west-3"}, path_style=True) is None
    monkeypatch.delenv("AWS_CA_BUNDLE")
    monkeypatch.setenv("AWS_USE_FIPS_ENDPOINT", "true")
    assert FastS3.create("s3://b", "b", {"region": "eu-west-3"}, path_style=True) is None
