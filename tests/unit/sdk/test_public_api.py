"""The SDK's public surface, pinned: changing it must be a deliberate act."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import sdk

PUBLIC = [
    "HandlerStats",
    "ServiceEvent",
    "ServiceEventType",
    "ServiceEvents",
    "BusClient",
    "BusSubscription",
    "BusMessage",
    "ConsumerInfo",
    "DeliverPolicy",
    "PublishResult",
    "StreamConfig",
    "StreamInfo",
    "NoRespondersError",
    "StreamNotFoundError",
    "ServiceChannel",
    "ControlPlaneSource",
    "EndpointSource",
    "SidecarSource",
    "StaticEndpointSource",
    "AgentNode",
    "AgentState",
    "AgentStatus",
    "EndpointUpdate",
    "ServiceEndpoints",
    "ServiceRef",
    "SyncOutcome",
    "AgentSession",
    "STRATEGIES",
    "Balancer",
    "Endpoint",
    "Locality",
    "LocalityBalancer",
    "NoEndpointsError",
    "make_balancer",
    "DEFAULT_SERVER",
    "SERVER_ENV",
    "AlreadyExistsError",
    "AsyncClient",
    "ChannelFactory",
    "CheckStatus",
    "Client",
    "ClientClosedError",
    "ConflictError",
    "DeadlineExceededError",
    "Deregistration",
    "EcoError",
    "FailedPreconditionError",
    "FieldViolation",
    "HealthStatus",
    "Instance",
    "InstanceList",
    "InternalError",
    "InvalidArgumentError",
    "Liveness",
    "NodeInfo",
    "NodeState",
    "NotFoundError",
    "PermissionDeniedError",
    "RequestCancelledError",
    "ResourceExhaustedError",
    "RetryPolicy",
    "RevisionWait",
    "RevisionMismatchError",
    "Service",
    "ServiceDetail",
    "ServiceList",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "WatchEvent",
    "WatchEventType",
    "WatchIterator",
    "resolve_servers",
]

SDK_DIR = Path(sdk.__file__).parent


def test_all_is_pinned() -> None:
    assert sorted(sdk.__all__) == sorted(PUBLIC)


def test_every_public_name_exists() -> None:
    for name in sdk.__all__:
        assert getattr(sdk, name) is not None, name


def test_modules_are_private_except_testing() -> None:
    modules = sorted(p.stem for p in SDK_DIR.glob("*.py") if p.stem != "__init__")
    assert [m for m in modules if not m.startswith("_")] == ["testing"]


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_sdk_never_imports_the_control_plane_or_the_sidecar() -> None:
    for path in SDK_DIR.rglob("*.py"):
        if path == SDK_DIR / "testing.py":
            continue  # the documented exception, imported lazily
        assert not _imported_roots(path) & {"controlplane", "sidecar"}, path.name


def test_importing_sdk_and_its_testing_helper_loads_no_server_code() -> None:
    code = (
        "import sys, sdk, sdk.testing;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('controlplane', 'sidecar')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
