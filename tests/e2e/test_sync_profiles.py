"""Named profiles from the command line: ``eco sync run --destination-profile``
reaches a bucket on the S3 emulator with only the profile's endpoint and keys
(no AWS environment), from ``--profiles FILE`` or ``$ECO_SYNC_PROFILES``; a
name the file does not define, or a bad file, stops before anything is
written, naming the profile, the file and the line. ``eco sync job add``
stores the names, and ``eco sync job get`` shows them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_cli import Eco
from tests.harness.cloud_storage import moto_server, s3_client, s3_target  # noqa: F401  (fixtures)
from tests.harness.controlplane import ControlPlaneProcess
from tests.harness.storage import StoreTarget

pytestmark = pytest.mark.e2e

ECO = str(Path(sys.executable).with_name("eco"))


def eco_sync(
    *args: str, config: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``eco sync ARGS`` with neither eco's nor the S3 clients' settings from the
    outside (only a profile's), and ``config`` as its XDG_CONFIG_HOME."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("ECO_", "AWS_"))}
    environment["XDG_CONFIG_HOME"] = str(config)
    environment["HOME"] = str(config)  # no ~/.aws either
    environment.update(env or {})
    return subprocess.run(
        [ECO, "sync", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
        check=False,
    )


def keys(target: StoreTarget) -> list[str]:
    s3 = s3_client(target.settings)
    bucket, prefix = target.url.removeprefix("s3://").split("/", 1)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])
    return sorted(item["Key"].removeprefix(prefix + "/") for item in listed)


def test_run_with_a_destination_profile(
    tmp_path: Path,
    s3_target: StoreTarget,  # noqa: F811  (the fixture imported above)
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "notes.txt").write_text("hello\n")
    (src / "a b.bin").write_bytes(b"x" * 5000)
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(yaml.safe_dump({"profiles": {"moto": s3_target.settings}}))
    common = ["--state-dir", str(tmp_path / "state"), "--no-progress"]

    missing = eco_sync(
        "run", src.as_uri(), s3_target.url, "--destination-profile", "backup",
        "--profiles", str(profiles), *common,
        config=tmp_path,
    )  # fmt: skip
    assert missing.returncode == 2, missing.stderr
    assert (
        f"destination profile 'backup' is not defined in {profiles} (it defines: moto)"
        in missing.stderr
    )
    assert keys(s3_target) == []

    done = eco_sync(
        "run", src.as_uri(), s3_target.url, "--destination-profile", "moto",
        "--profiles", str(profiles), *common, "-o", "json",
        config=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["status"] == "completed" and report["files_copied"] == 2
    assert keys(s3_target) == ["a b.bin", "notes.txt"]

    # The same profile found through $ECO_SYNC_PROFILES; nothing left to copy.
    again = eco_sync(
        "run", src.as_uri(), s3_target.url, "--destination-profile", "moto",
        *common, "-o", "json",
        config=tmp_path, env={"ECO_SYNC_PROFILES": str(profiles)},
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["files_copied"] == 0

    # Without a profile the store's own environment applies: here, none.
    bare = eco_sync("run", src.as_uri(), s3_target.url, *common, "-o", "json", config=tmp_path)
    assert bare.returncode == 1

    profiles.write_text("profiles:\n  moto:\n    endpoint_url: http://x\n    secret_key: s\n")
    bad = eco_sync(
        "run", src.as_uri(), s3_target.url, "--destination-profile", "moto",
        "--profiles", str(profiles), *common,
        config=tmp_path,
    )  # fmt: skip
    assert bad.returncode == 2
    assert f"{profiles}:4: profiles.moto.secret_key: 'secret_key' is not a setting" in bad.stderr


def test_a_job_keeps_the_names(sqlite_plane: ControlPlaneProcess) -> None:
    eco = Eco(sqlite_plane.address)
    out = eco.ok(
        "sync", "job", "add", "up", "file:///data", "s3://backup/data", "--every", "1h",
        "--on", "nas-1", "--source-profile", "local", "--destination-profile", "minio",
    )  # fmt: skip
    assert "created sync job up" in out
    job = eco.json("sync", "job", "get", "up")
    assert job["source_profile"] == "local" and job["destination_profile"] == "minio"
    refused = eco(
        "sync", "job", "add", "bad", "file:///data", "s3://backup/data", "--every", "1h",
        "--on", "nas-1", "--destination-profile", "two words",
    )  # fmt: skip
    assert refused.returncode == 2
    assert "job.destination_profile" in refused.stderr
    assert "not a valid profile name" in refused.stderr
