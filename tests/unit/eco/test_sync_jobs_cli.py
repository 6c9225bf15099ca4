"""``eco sync job``'s duration parser, and the public names of controlplane.sync."""

from __future__ import annotations

import pytest

import controlplane.sync
from eco._sync_jobs import parse_every


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("1h30m", 5400), ("1d", 86400), ("1w", 604800), ("1.5h", 5400),
     ("500ms", 0.5), (" 2m 10s ", 130)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_every(text) == seconds


@pytest.mark.parametrize("text", ["", "15", "m", "15 minutes", "-1m", "1h-5m"])
def test_not_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_every(text)


def test_public_names_are_pinned() -> None:
    assert set(controlplane.sync.__all__) >= {
        "SyncBook",
        "SyncScheduler",
        "SchedulerConfig",
        "SyncServicer",
        "SyncCollector",
        "build_run_message",
        "job_violations",
        "slots_through",
    }
    assert all(hasattr(controlplane.sync, name) for name in controlplane.sync.__all__)


def test_sidecar_runs_sync_jobs_unless_told_not_to() -> None:
    from sidecar.config import SidecarConfig

    assert SidecarConfig().sync_jobs is True
    assert SidecarConfig(sync_jobs=False).sync_jobs is False
