"""The health package's public surface, pinned: changing it must be a deliberate act."""

from __future__ import annotations

import ast
from pathlib import Path

import sidecar.health as health

PUBLIC = [
    "AnyCheckConfig",
    "CheckConfig",
    "CheckDetail",
    "CheckKind",
    "CheckNotFoundError",
    "Clock",
    "DuplicateCheckError",
    "Duration",
    "EngineClosedError",
    "ExecCheckConfig",
    "FakeClock",
    "FakeHealthChecker",
    "GrpcCheckConfig",
    "HealthChecker",
    "HealthEngine",
    "HealthError",
    "HealthTransition",
    "HttpCheckConfig",
    "LoopClock",
    "NetworkHealthChecker",
    "NotATtlCheckError",
    "Probe",
    "ProbeCheckConfig",
    "ProbeResult",
    "TcpCheckConfig",
    "TransitionCallback",
    "TransitionStream",
    "TtlCheckConfig",
    "format_duration",
    "parse_check",
    "parse_duration",
    "worst_status",
]

PACKAGE_DIR = Path(health.__file__).parent


def test_all_is_pinned() -> None:
    assert sorted(health.__all__) == sorted(PUBLIC)


def test_every_public_name_exists() -> None:
    for name in health.__all__:
        assert getattr(health, name) is not None, name


def test_modules_are_private_and_small() -> None:
    for path in PACKAGE_DIR.glob("*.py"):
        if path.stem == "__init__":
            continue
        assert path.stem.startswith("_"), path.name
        assert len(path.read_text().splitlines()) < 500, path.name


def test_no_control_plane_imports() -> None:
    for path in PACKAGE_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("controlplane"), path.name
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("controlplane") for a in node.names), path.name
