"""``eco sync`` as a user runs it: a subprocess, its report, its exit status;
killed with -9 in the middle of a 1,000-file run and of a large multipart
upload to S3, then run again: it finishes, redoes nothing, and no partial
object is ever visible."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.harness.cloud_storage import moto_server, s3_client, s3_target  # noqa: F401  (fixtures)
from tests.harness.storage import StoreTarget
from tests.util import assert_eventually

pytestmark = pytest.mark.e2e

ECO = str(Path(sys.executable).with_name("eco"))


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ECO_")}
    environment.update(extra or {})
    return environment


def eco_sync(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ECO, "sync", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(env),
        check=False,
    )


def start_sync(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [ECO, "sync", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(env),
    )


def report_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def last_progress(stderr: str) -> dict[str, Any]:
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith('{"progress"')]
    progress: dict[str, Any] = lines[-1]["progress"]
    return progress


def test_run_prints_a_json_report_and_exits_by_its_status(tmp_path: Path) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    src.mkdir()
    dst.mkdir()
    for i in range(6):
        (src / f"file {i}.txt").write_text(f"number {i}")
    args = [src.as_uri(), dst.as_uri(), "--state-dir", str(state), "--name", "demo"]

    result = eco_sync("run", *args, "--mode", "mirror", "-o", "json")
    assert result.returncode == 0, result.stderr
    report = report_of(result)
    assert report["status"] == "completed" and report["job"] == "demo"
    assert (report["files_copied"], report["bytes_copied"]) == (6, 6 * 8)
    assert {d["action"] for d in report["decisions"]} == {"copy-to-destination"}
    assert report["duration"] >= 0 and (state / "demo.db").exists()
    assert last_progress(result.stderr)["phase"] == "done"

    again = report_of(eco_sync("run", *args, "--mode", "mirror", "-o", "json"))
    assert (again["files_copied"], again["files_skipped"]) == (0, 6)

    text = eco_sync("run", *args, "--mode", "mirror", "--no-progress")
    assert text.returncode == 0 and "skipped  6 (unchanged)" in text.stdout
    assert text.stderr == ""

    for i in range(5):
        (src / f"file {i}.txt").unlink()
    guarded = eco_sync("run", *args, "--mode", "mirror", "-o", "json")
    assert guarded.returncode == 3
    assert report_of(guarded)["status"] == "guarded"
    assert "delete 5 of 6 entries" in guarded.stderr and "--max-delete" in guarded.stderr
    assert len(list(dst.iterdir())) == 6

    dry = eco_sync("run", *args, "--mode", "mirror", "--max-delete", "100", "--dry-run")
    assert dry.returncode == 0 and "nothing changed" in dry.stdout
    assert len(list(dst.iterdir())) == 6

    missing = eco_sync(
        "run", (tmp_path / "nowhere").as_uri(), dst.as_uri(), "--state-dir", str(state)
    )
    assert missing.returncode == 1 and "StoreNotFoundError" in missing.stderr

    bad = eco_sync("run", "ftp://host/x", dst.as_uri())
    assert bad.returncode == 2 and "unknown scheme" in bad.stderr


def test_conflicts_and_resolve(tmp_path: Path) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    src.mkdir()
    dst.mkdir()
    for name in ("notes.md", "a", "b"):
        (src / name).write_text(f"base {name}")
    args = [src.as_uri(), dst.as_uri(), "--mode", "bisync", "--conflict", "manual"]
    args += ["--state-dir", str(state), "--name", "notes"]
    assert eco_sync("run", *args).returncode == 0
    (src / "notes.md").write_text("edited on the source")
    (dst / "notes.md").write_text("edited on the destination")
    queued = report_of(eco_sync("run", *args, "-o", "json"))
    assert queued["conflicts"] == 1 and queued["status"] == "completed"

    listed = json.loads(
        eco_sync("conflicts", "notes", "--state-dir", str(state), "-o", "json").stdout
    )
    assert [(c["path"], c["resolution"]) for c in listed] == [("notes.md", None)]
    table = eco_sync("conflicts", "notes", "--state-dir", str(state)).stdout
    assert "notes.md" in table and "(waiting)" in table

    nope = eco_sync("resolve", "notes", "other.md", "--keep", "source", "--state-dir", str(state))
    assert nope.returncode == 1 and "no conflict queued" in nope.stderr
    unknown = eco_sync("conflicts", "nojob", "--state-dir", str(state))
    assert unknown.returncode == 1 and "no state for sync job" in unknown.stderr

    done = eco_sync(
        "resolve", "notes", "notes.md", "--keep", "destination", "--state-dir", str(state)
    )
    assert done.returncode == 0, done.stderr
    applied = report_of(eco_sync("run", *args, "-o", "json"))
    assert [d["action"] for d in applied["decisions"]] == ["copy-to-source"]
    assert (src / "notes.md").read_text() == "edited on the destination"
    empty = eco_sync("conflicts", "notes", "--state-dir", str(state))
    assert "no conflicts waiting" in empty.stdout


def _visible(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and ".eco-partial" not in p.name]


async def test_kill_9_in_a_1000_file_run_then_resume(tmp_path: Path) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    src.mkdir()
    dst.mkdir()
    for i in range(1000):
        sub = src / f"d{i % 10}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{i:04d}").write_bytes(os.urandom(4096))
    args = [src.as_uri(), dst.as_uri(), "--state-dir", str(state), "--name", "big", "-o", "json"]
    process = start_sync("run", *args, "--transfers", "4", "--bwlimit", "400K")

    def some_copied() -> None:
        assert len(_visible(dst)) >= 100

    try:
        await assert_eventually(some_copied, timeout=30)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()
    done_before = len(_visible(dst))
    assert 100 <= done_before < 1000, done_before
    for path in _visible(dst):  # nothing half-written under a real name
        assert path.stat().st_size == 4096

    result = eco_sync("run", *args)
    assert result.returncode == 0, result.stderr
    report = report_of(result)
    assert report["status"] == "completed"
    assert report["files_copied"] == 1000 - done_before  # nothing redone
    assert report["files_skipped"] == done_before
    assert {p.relative_to(dst): p.read_bytes() for p in _visible(dst)} == {
        p.relative_to(src): p.read_bytes() for p in _visible(src)
    }
    assert not [p for p in dst.rglob("*") if ".eco-partial" in p.name]
    assert report_of(eco_sync("run", *args))["files_copied"] == 0


def _journal_token(state: Path) -> str | None:
    if not state.exists():
        return None
    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT token FROM journal WHERE token IS NOT NULL").fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        db.close()
    return None if row is None else str(row[0])


def test_a_large_file_goes_to_s3_in_one_streamed_put_checked_by_its_md5(
    tmp_path: Path,
    s3_target: StoreTarget,  # noqa: F811  (the fixture imported above)
) -> None:
    """Above what a transfer holds in memory (32 MiB), under the cutoff (200
    MiB): the file is hashed where it lies, then streamed in one PUT whose
    Content-MD5 the store checks; the hash pass is not counted as sent."""
    src, state = tmp_path / "src", tmp_path / "state"
    src.mkdir()
    data = os.urandom(40 * 1024 * 1024)
    (src / "large.bin").write_bytes(data)
    args = [src.as_uri(), s3_target.url, "--state-dir", str(state), "--name", "one", "-o", "json"]
    result = eco_sync("run", *args, env=s3_target.env)
    assert result.returncode == 0, result.stderr
    assert report_of(result)["bytes_copied"] == len(data)
    assert last_progress(result.stderr)["bytes_done"] == len(data)
    s3 = s3_client(s3_target.settings)
    bucket, prefix = s3_target.url.removeprefix("s3://").split("/", 1)
    try:
        head = s3.head_object(Bucket=bucket, Key=f"{prefix}/large.bin")
        md5 = hashlib.md5(data).hexdigest()
        assert head["ETag"].strip('"') == md5  # one part: its ETag is its MD5
        assert head["Metadata"]["md5"] == md5
    finally:
        s3.close()


async def test_kill_9_in_a_multipart_upload_then_resume(
    tmp_path: Path,
    s3_target: StoreTarget,  # noqa: F811  (the fixture imported above)
) -> None:
    src, state = tmp_path / "src", tmp_path / "state"
    src.mkdir()
    data = os.urandom(40 * 1024 * 1024)  # five 8 MiB parts
    (src / "large.bin").write_bytes(data)
    # Parts above 8 MiB (by default an object of this size streams in one PUT).
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("profiles:\n  parts:\n    upload_cutoff: 8388608\n")
    args = [src.as_uri(), s3_target.url, "--state-dir", str(state), "--name", "up", "-o", "json"]
    args += ["--profiles", str(profiles), "--destination-profile", "parts"]
    s3 = s3_client(s3_target.settings)
    bucket, prefix = s3_target.url.removeprefix("s3://").split("/", 1)
    key = f"{prefix}/large.bin"
    try:
        process = start_sync("run", *args, "--bwlimit", "8M", env=s3_target.env)

        def a_part_is_checkpointed() -> None:
            token = _journal_token(state / "up.db")
            assert token is not None, "no upload checkpointed yet"
            upload = json.loads(token)["upload_id"]
            parts = s3.list_parts(Bucket=bucket, Key=key, UploadId=upload).get("Parts", [])
            assert parts, "no part uploaded yet"

        try:
            await assert_eventually(a_part_is_checkpointed, timeout=30)
        finally:
            process.send_signal(signal.SIGKILL)
            process.communicate()
        assert s3.list_objects_v2(Bucket=bucket).get("Contents", []) == []  # nothing visible

        result = eco_sync("run", *args, env=s3_target.env)
        assert result.returncode == 0, result.stderr
        assert report_of(result)["files_copied"] == 1
        # Resumed: the parts in place were not read from the source again.
        assert last_progress(result.stderr)["bytes_done"] <= len(data) - 8 * 1024 * 1024
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        assert report_of(eco_sync("run", *args, env=s3_target.env))["files_copied"] == 0
    finally:
        s3.close()
