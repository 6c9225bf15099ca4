"""Fixtures of the end-to-end tests: `eco` processes from tests/harness."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.controlplane import ControlPlaneProcess


@pytest.fixture
def sqlite_plane(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    plane = ControlPlaneProcess(f"sqlite://{tmp_path / 'cp.db'}", tmp_path / "controlplane.log")
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()
