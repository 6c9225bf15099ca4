"""The Ecosystem SDK: typed clients for the control plane's service registry.

Start with :class:`AsyncClient` (asyncio) or :class:`Client` (blocking)::

    import sdk

    async with sdk.AsyncClient() as client:
        await client.register("web", "10.0.0.9", 8080, ephemeral=True)
        async for event in client.watch("web"):
            print(event.type, event.revision, event.instance)

Errors are the :class:`EcoError` tree (see ``sdk._errors``). For your own
tests, :mod:`controlplane.testing` starts an in-process control plane.

Besides the registry clients: :mod:`sdk.bus` (the message bus client and its
values), :mod:`sdk.proxyless` (a gRPC channel for a service name),
:mod:`sdk.agent` (a node's Agent session, what the sidecar runs) and
:mod:`sdk.balancer`; everything public in them is exported here too.
:mod:`sdk.lowlevel` holds the pieces a custom client builds on.
"""

from sdk._client import AsyncClient
from sdk._errors import (
    AlreadyExistsError,
    ClientClosedError,
    ConflictError,
    DeadlineExceededError,
    EcoError,
    FailedPreconditionError,
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    NoRespondersError,
    NotFoundError,
    PermissionDeniedError,
    RequestCancelledError,
    ResourceExhaustedError,
    RevisionMismatchError,
    StreamNotFoundError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
)
from sdk._events import HandlerStats, ServiceEvent, ServiceEvents, ServiceEventType
from sdk._nodes import NodeInfo, NodeState, RevisionWait
from sdk._retry import RetryPolicy
from sdk._sync import Client, WatchIterator
from sdk._transport import (
    CA_FILE_ENV,
    DEFAULT_SERVER,
    SERVER_ENV,
    TOKEN_ENV,
    ChannelFactory,
    resolve_servers,
    tls_channel_factory,
)
from sdk._types import (
    CheckStatus,
    Deregistration,
    HealthStatus,
    Instance,
    InstanceList,
    Liveness,
    Service,
    ServiceDetail,
    ServiceList,
    WatchEvent,
    WatchEventType,
)
from sdk.agent import (
    AgentNode,
    AgentSession,
    AgentState,
    AgentStatus,
    BusAccess,
    EndpointUpdate,
    Intention,
    IntentionDecision,
    IntentionName,
    IntentionSet,
    ServiceEndpoints,
    ServiceRef,
    SyncOutcome,
    TrustBundle,
    WorkloadCertificate,
)
from sdk.balancer import (
    STRATEGIES,
    Balancer,
    Endpoint,
    Locality,
    LocalityBalancer,
    NoEndpointsError,
    make_balancer,
)
from sdk.bus import (
    AckKind,
    BusClient,
    BusMessage,
    BusSubscription,
    ConsumerInfo,
    DeliverPolicy,
    PublishResult,
    StreamConfig,
    StreamInfo,
)
from sdk.proxyless import (
    ControlPlaneSource,
    EndpointSource,
    ServiceChannel,
    SidecarSource,
    StaticEndpointSource,
)

__all__ = [
    "CA_FILE_ENV",
    "DEFAULT_SERVER",
    "SERVER_ENV",
    "STRATEGIES",
    "TOKEN_ENV",
    "AckKind",
    "AgentNode",
    "AgentSession",
    "AgentState",
    "AgentStatus",
    "AlreadyExistsError",
    "AsyncClient",
    "Balancer",
    "BusAccess",
    "BusClient",
    "BusMessage",
    "BusSubscription",
    "ChannelFactory",
    "CheckStatus",
    "Client",
    "ClientClosedError",
    "ConflictError",
    "ConsumerInfo",
    "ControlPlaneSource",
    "DeadlineExceededError",
    "DeliverPolicy",
    "Deregistration",
    "EcoError",
    "Endpoint",
    "EndpointSource",
    "EndpointUpdate",
    "FailedPreconditionError",
    "FieldViolation",
    "HandlerStats",
    "HealthStatus",
    "Instance",
    "InstanceList",
    "Intention",
    "IntentionDecision",
    "IntentionName",
    "IntentionSet",
    "InternalError",
    "InvalidArgumentError",
    "Liveness",
    "Locality",
    "LocalityBalancer",
    "NoEndpointsError",
    "NoRespondersError",
    "NodeInfo",
    "NodeState",
    "NotFoundError",
    "PermissionDeniedError",
    "PublishResult",
    "RequestCancelledError",
    "ResourceExhaustedError",
    "RetryPolicy",
    "RevisionMismatchError",
    "RevisionWait",
    "Service",
    "ServiceChannel",
    "ServiceDetail",
    "ServiceEndpoints",
    "ServiceEvent",
    "ServiceEventType",
    "ServiceEvents",
    "ServiceList",
    "ServiceRef",
    "SidecarSource",
    "StaticEndpointSource",
    "StreamConfig",
    "StreamInfo",
    "StreamNotFoundError",
    "SyncOutcome",
    "TrustBundle",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "WatchEvent",
    "WatchEventType",
    "WatchIterator",
    "WorkloadCertificate",
    "make_balancer",
    "resolve_servers",
    "tls_channel_factory",
]
