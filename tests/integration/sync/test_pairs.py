"""Copy and mirror between every ordered pair of stores (file, SFTP, S3, GCS,
Azure Blob: 25 pairs), each against real servers, each case a handful of
files so the whole matrix stays quick; then a bisync run that must find both
sides in step (what a store lists after a write is what the state recorded)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sidecar.sync import Mode, SyncOptions, run_sync
from sidecar.sync.connectors import Connector, open_connector
from tests.harness.cloud_storage import (  # noqa: F401  (fixtures)
    azure_target,
    azurite_server,
    gcs_server,
    gcs_target,
    moto_server,
    s3_target,
)
from tests.harness.storage import (  # noqa: F401  (fixtures)
    STORE_NAMES,
    StoreTarget,
    file_target,
    sftp_server,
    sftp_target,
)

FILES = {
    "a.txt": b"alpha\n",
    "dir/b.bin": bytes(range(256)) * 16,
    "sp ace/ünï.txt": "grüße".encode(),
}


@pytest.fixture(params=STORE_NAMES)
def second_target(
    request: pytest.FixtureRequest, target: StoreTarget, tmp_path: Path
) -> StoreTarget:
    """A second fresh root; for a pair of one kind, a different root of it."""
    name = request.param
    if name != target.name:
        result: StoreTarget = request.getfixturevalue(f"{name}_target")
        return result
    if name == "file":
        root = tmp_path / "second-root"
        root.mkdir()
        return StoreTarget("file", root.as_uri())
    if name == "sftp":
        server = request.getfixturevalue("sftp_server")
        second: StoreTarget = server.target()
        return second
    # The same bucket or container, a sibling prefix.
    return dataclasses.replace(target, url=target.url.rsplit("/", 1)[0] + "/second")


def _once(data: bytes):  # type: ignore[no-untyped-def]
    def opener(offset: int) -> AsyncIterator[bytes]:
        async def chunks() -> AsyncIterator[bytes]:
            yield data[offset:]

        return chunks()

    return opener


async def _put(store: Connector, path: str, data: bytes, mtime: float) -> None:
    await store.write(path, _once(data), len(data), mtime=mtime)


async def _contents(store: Connector) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    async for entry in store.list():
        if entry.is_dir:
            continue
        found[entry.path] = b"".join([chunk async for chunk in store.read(entry.path)])
    return found


async def test_copy_and_mirror(
    target: StoreTarget, second_target: StoreTarget, tmp_path: Path
) -> None:
    source, destination = target, second_target
    options = SyncOptions(
        source.url,
        destination.url,
        state_path=str(tmp_path / "pair.db"),
        profiles={"source": source.settings, "destination": destination.settings},
        retry_delay=0.01,
    )
    async with (
        open_connector(source.url, source.settings) as src,
        open_connector(destination.url, destination.settings) as dst,
    ):
        for path, data in FILES.items():
            await _put(src, path, data, mtime=1_700_000_000.5)
        await _put(dst, "stray.txt", b"only on the destination", mtime=1_700_000_000.0)

        copied = await run_sync(options)
        assert copied.status == "completed", copied
        assert copied.files_copied == len(FILES)
        assert await _contents(dst) == {**FILES, "stray.txt": b"only on the destination"}

        again = await run_sync(options)
        assert (again.status, again.files_copied, again.decisions) == ("completed", 0, [])

        await src.delete("a.txt")
        await _put(src, "dir/b.bin", b"changed", mtime=1_700_000_100.0)
        mirrored = await run_sync(dataclasses.replace(options, mode=Mode.MIRROR, max_delete=100))
        assert mirrored.status == "completed", mirrored
        assert mirrored.files_deleted == 2 and mirrored.files_copied == 1
        assert await _contents(dst) == await _contents(src)

        # What each side lists now is what the state recorded after the
        # transfers: a two-way run finds nothing to carry either way.
        settled = await run_sync(dataclasses.replace(options, mode=Mode.BISYNC))
        assert (settled.status, settled.decisions) == ("completed", [])
