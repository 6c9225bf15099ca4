"""``eco sync job``'s duration and placement parsers, and the public names of controlplane.sync."""

from __future__ import annotations

import pytest

import controlplane.sync
from eco._sync_jobs import parse_every, parse_placement


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


@pytest.mark.parametrize(
    ("text", "placement"),
    [("nas-1", ("nas-1", "")), ("node:nas-1", ("nas-1", "")),
     ("platform:plant-7", ("", "plant-7"))],
)  # fmt: skip
def test_placements(text: str, placement: tuple[str, str]) -> None:
    assert parse_placement(text) == placement


@pytest.mark.parametrize(
    ("text", "message"),
    [("site:x", "say node:NAME or platform:NAME"), ("platform:", "platform's name is missing"),
     ("node:", "node's name is missing")],
)  # fmt: skip
def test_not_placements(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_placement(text)


def test_the_platforms_keep_the_sync_jobs_where_the_sync_package_does() -> None:
    from controlplane.catalog._platforms import SYNC_JOBS_PREFIX

    assert SYNC_JOBS_PREFIX == controlplane.sync.JOBS_PREFIX
