"""The SDK's public surface, pinned: changing it must be a deliberate act."""

from __future__ import annotations

import importlib
from pathlib import Path

import sdk
import sdk.lowlevel

PUBLIC = [
    "HandlerStats",
    "ServiceEvent",
    "ServiceEventType",
    "ServiceEvents",
    "BusClient",
    "BusSubscription",
    "BusMessage",
    "AckKind",
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
    "BusAccess",
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
    "CA_FILE_ENV",
    "TOKEN_ENV",
    "tls_channel_factory",
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
    # Workload certificates over the agent session.
    "TrustBundle",
    "WorkloadCertificate",
    # Intentions over the agent session.
    "Intention",
    "IntentionDecision",
    "IntentionName",
    "IntentionSet",
]

SDK_DIR = Path(sdk.__file__).parent


def test_all_is_pinned() -> None:
    assert sorted(sdk.__all__) == sorted(PUBLIC)


def test_every_public_name_exists() -> None:
    for name in sdk.__all__:
        assert getattr(sdk, name) is not None, name


def test_modules_are_private_except_the_low_level_one() -> None:
    modules = sorted(p.stem for p in SDK_DIR.glob("*.py") if p.stem != "__init__")
    assert [m for m in modules if not m.startswith("_")] == ["lowlevel"]


SUBPACKAGES = ["agent", "balancer", "bus", "proxyless"]


def test_subpackages_hold_private_modules_and_export_what_sdk_does() -> None:
    found = sorted(p.parent.name for p in SDK_DIR.glob("*/__init__.py"))
    assert found == SUBPACKAGES
    for name in SUBPACKAGES:
        package = importlib.import_module(f"sdk.{name}")
        modules = [p.stem for p in (SDK_DIR / name).glob("*.py") if p.stem != "__init__"]
        assert all(m.startswith("_") for m in modules), (name, modules)
        for public in package.__all__:
            exported = getattr(sdk, public, None) or getattr(sdk.lowlevel, public)
            assert exported is getattr(package, public), (name, public)
