"""The S3 connector's two libraries, against moto: single-request reads and
writes go through obstore when the keys are given, everything else (and any
key obstore's paths cannot name, and credentials only AWS's files hold)
through aiobotocore; a user sees the same objects, hashes and errors either
way (docs/sync-connectors.md, "s3")."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sidecar.sync.connectors import MD5, SourceOpener, open_connector
from tests.harness.cloud_storage import Emulator, s3_client
from tests.harness.storage import StoreTarget

MTIME = 1_700_000_000.0


def source_of(data: bytes) -> SourceOpener:
    async def opener(offset: int) -> AsyncIterator[bytes]:
        if offset < len(data):
            yield data[offset:]

    return opener


@pytest.mark.parametrize("path", ["dots/./x.txt", "up/../y.txt", "two//slashes.txt"])
async def test_a_key_obstore_cannot_name_round_trips_exactly(
    s3_target: StoreTarget, moto_server: Emulator, path: str
) -> None:
    """Keys with ``.``, ``..`` or empty segments (another tool's bucket may
    hold them) are written, read and listed under their very name."""
    data = b"odd key " + path.encode()
    async with open_connector(s3_target.url, s3_target.settings) as c:
        entry = await c.write(path, source_of(data), len(data), mtime=MTIME)
        assert entry.hashes[MD5] == hashlib.md5(data).hexdigest()
        assert b"".join([chunk async for chunk in c.read(path)]) == data
        assert b"".join([chunk async for chunk in c.read(path, 4)]) == data[4:]
        assert [e.path async for e in c.list()] == [path]
        stat = await c.stat(path)
        assert stat is not None and stat.mtime == MTIME
    bucket, _, prefix = s3_target.url.removeprefix("s3://").partition("/")
    client = s3_client(s3_target.settings)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    client.close()
    assert keys == [f"{prefix}/{path}"]


async def test_a_read_from_the_end_of_an_object_gives_nothing(s3_target: StoreTarget) -> None:
    async with open_connector(s3_target.url, s3_target.settings) as c:
        await c.write("five.txt", source_of(b"12345"), 5, mtime=MTIME)
        assert [chunk async for chunk in c.read("five.txt", 5)] == []
        assert b"".join([chunk async for chunk in c.read("five.txt", 2)]) == b"345"


def test_small_objects_move_without_loading_botocore(s3_target: StoreTarget) -> None:
    """A run of small files given the keys never imports botocore (about half a
    second of every run's start) and keeps the source mtime in metadata."""
    code = textwrap.dedent(
        f"""
        import asyncio, sys
        from sidecar.sync.connectors import open_connector

        async def source(offset):
            yield b"small"[offset:]

        async def main():
            async with open_connector({s3_target.url!r}, {s3_target.settings!r}) as c:
                entry = await c.write("small.txt", source, 5, mtime={MTIME!r})
                data = b"".join([chunk async for chunk in c.read("small.txt")])
            print("entry", entry.size, entry.mtime, data)
            print("botocore loaded:", "botocore" in sys.modules)

        asyncio.run(main())
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert f"entry 5 {MTIME!r} b'small'" in done.stdout, done.stdout + done.stderr
    assert "botocore loaded: False" in done.stdout, done.stdout + done.stderr


async def test_keys_from_the_aws_credentials_file_reach_the_store(
    s3_target: StoreTarget, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With no keys in the profile or the environment, the AWS credentials
    file (as the AWS CLI reads it) is used, for reads and writes alike."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    credentials = tmp_path / "credentials"
    credentials.write_text(
        "[default]\n"
        f"aws_access_key_id = {s3_target.settings['access_key_id']}\n"
        f"aws_secret_access_key = {s3_target.settings['secret_access_key']}\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    settings = {
        "endpoint_url": s3_target.settings["endpoint_url"],
        "region": s3_target.settings["region"],
    }
    async with open_connector(s3_target.url, settings) as c:
        entry = await c.write("file.txt", source_of(b"from the file"), 13, mtime=MTIME)
        assert entry.size == 13
        assert b"".join([chunk async for chunk in c.read("file.txt")]) == b"from the file"


async def test_the_s3_specific_endpoint_variable_is_honoured(
    s3_target: StoreTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``AWS_ENDPOINT_URL_S3`` (what the AWS CLI reads for S3 alone) reaches
    the store for every request, with path-style addressing as for
    ``AWS_ENDPOINT_URL``."""
    for name, value in s3_target.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_target.env["AWS_ENDPOINT_URL"])
    async with open_connector(s3_target.url) as c:
        await c.write("s3-only.txt", source_of(b"endpoint"), 8, mtime=MTIME)
        assert b"".join([chunk async for chunk in c.read("s3-only.txt")]) == b"endpoint"
        assert [e.path async for e in c.list()] == ["s3-only.txt"]
