"""The sidecar's health checks: HTTP, TCP, gRPC, exec and TTL, with hysteresis.

Configuration (:func:`parse_check`, one model per kind) is validated data;
:class:`HealthEngine` runs every check of a sidecar with one scheduler and
reports edge-triggered :class:`HealthTransition` records. The probes sit
behind the :class:`HealthChecker` protocol (:class:`NetworkHealthChecker`
for real, :class:`FakeHealthChecker` for tests), and time behind
:class:`Clock` (:class:`FakeClock` for tests). See docs/health-checks.md.
"""

from sidecar.health._base import CheckConfig, CheckKind, ProbeCheckConfig
from sidecar.health._checker import NetworkHealthChecker
from sidecar.health._clock import Clock, FakeClock, LoopClock
from sidecar.health._config import AnyCheckConfig, parse_check
from sidecar.health._duration import Duration, format_duration, parse_duration
from sidecar.health._engine import HealthEngine, TransitionCallback
from sidecar.health._errors import (
    CheckNotFoundError,
    DuplicateCheckError,
    EngineClosedError,
    HealthError,
    NotATtlCheckError,
)
from sidecar.health._fake import FakeHealthChecker
from sidecar.health._kinds import (
    ExecCheckConfig,
    GrpcCheckConfig,
    HttpCheckConfig,
    TcpCheckConfig,
    TtlCheckConfig,
)
from sidecar.health._probe import HealthChecker, Probe, ProbeResult
from sidecar.health._state import CheckDetail, HealthTransition, worst_status
from sidecar.health._stream import TransitionStream

__all__ = [
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
