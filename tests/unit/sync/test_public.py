"""The sync package's public names, and the CLI's small parsers."""

from __future__ import annotations

import sys

import pytest

import sidecar.sync
from eco._sync import job_name, parse_rate


def test_public_names_are_pinned() -> None:
    assert sidecar.sync.__all__ == [
        "ConflictPolicy",
        "Decision",
        "JobBusyError",
        "Mode",
        "ProfileError",
        "Profiles",
        "Progress",
        "QueuedConflict",
        "RunReport",
        "StateStore",
        "SyncHostConfig",
        "SyncOptions",
        "load_profiles",
        "profile_settings",
        "run_sync",
    ]


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("500", 500),
        ("500K", 512_000),
        ("10M", 10 * 1024**2),
        ("1.5G", int(1.5 * 1024**3)),
        ("10MiB/s", 10 * 1024**2),
        ("2mb", 2 * 1024**2),
    ],
)
def test_rates(text: str, rate: int) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["", "fast", "0", "10X", "-1M"])
def test_bad_rates(text: str) -> None:
    with pytest.raises(ValueError, match="not a rate"):
        parse_rate(text)


def test_job_names_are_stable_file_safe_and_distinct() -> None:
    name = job_name("file:///data/a b", "s3://bucket/x")
    assert name == job_name("file:///data/a b", "s3://bucket/x")
    assert name.startswith("file-data-a-b-to-s3-bucket-x-")
    assert name != job_name("s3://bucket/x", "file:///data/a b")
    long = job_name("file:///" + "d" * 300, "file:///" + "e" * 300)
    assert len(long) <= 71 and "/" not in long


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="max_delete"):
        sidecar.sync.SyncOptions("file:///a", "file:///b", max_delete=101)
    with pytest.raises(ValueError, match="transfers"):
        sidecar.sync.SyncOptions("file:///a", "file:///b", transfers=0)
    with pytest.raises(ValueError, match="destination"):
        sidecar.sync.SyncOptions("file:///a", "")
    options = sidecar.sync.SyncOptions("file:///a", "file:///b", mode="bisync")  # type: ignore[arg-type]
    assert options.mode is sidecar.sync.Mode.BISYNC


def test_the_memory_connector_is_a_connector() -> None:
    from sidecar.sync.connectors._base import Connector
    from sidecar.sync.connectors.memory import MemoryConnector

    assert isinstance(MemoryConnector(), Connector)
    assert MemoryConnector(hashes=False).listed_hashes == ()


def test_progress_is_a_bar_on_a_terminal_and_json_otherwise(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from eco import _sync
    from sidecar.sync import Progress

    moving = Progress("transferring", 10, 5, 2048, 1024, 2, 1, 0, 12)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    bar = _sync._ProgressPrinter()
    bar(moving)
    bar(Progress("done", 10, 10, 2048, 2048, 2, 2, 0, 12))
    bar.close()
    drawn = capsys.readouterr().err
    assert "\r[###############" in drawn and " 50%  5/10 files" in drawn and drawn.endswith("\n")

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    counters = _sync._ProgressPrinter()
    counters(moving)
    counters(moving)  # within a second: not repeated
    counters(Progress("done"))
    lines = capsys.readouterr().err.splitlines()
    assert [json.loads(line)["progress"]["phase"] for line in lines] == ["transferring", "done"]
