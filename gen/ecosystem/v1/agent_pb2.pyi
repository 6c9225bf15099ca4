from ecosystem.v1 import intention_pb2 as _intention_pb2
from ecosystem.v1 import registry_pb2 as _registry_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeSyncStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_SYNC_STATUS_UNSPECIFIED: _ClassVar[NodeSyncStatus]
    NODE_SYNC_STATUS_SYNCED: _ClassVar[NodeSyncStatus]
    NODE_SYNC_STATUS_STALE: _ClassVar[NodeSyncStatus]
    NODE_SYNC_STATUS_DISCONNECTED: _ClassVar[NodeSyncStatus]
NODE_SYNC_STATUS_UNSPECIFIED: NodeSyncStatus
NODE_SYNC_STATUS_SYNCED: NodeSyncStatus
NODE_SYNC_STATUS_STALE: NodeSyncStatus
NODE_SYNC_STATUS_DISCONNECTED: NodeSyncStatus

class Node(_message.Message):
    __slots__ = ("id", "platform", "region", "zone", "address", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    platform: str
    region: str
    zone: str
    address: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., platform: _Optional[str] = ..., region: _Optional[str] = ..., zone: _Optional[str] = ..., address: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ServiceRef(_message.Message):
    __slots__ = ("name", "namespace")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class ConnectRequest(_message.Message):
    __slots__ = ("hello", "sync", "health", "subscribe", "ack", "ping", "certificate_request")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    SYNC_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    sync: SyncInstances
    health: HealthReport
    subscribe: Subscribe
    ack: Ack
    ping: Ping
    certificate_request: CertificateRequest
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., sync: _Optional[_Union[SyncInstances, _Mapping]] = ..., health: _Optional[_Union[HealthReport, _Mapping]] = ..., subscribe: _Optional[_Union[Subscribe, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ..., certificate_request: _Optional[_Union[CertificateRequest, _Mapping]] = ...) -> None: ...

class CertificateRequest(_message.Message):
    __slots__ = ("request_id", "csr_pem", "namespace", "service", "node")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    csr_pem: bytes
    namespace: str
    service: str
    node: bool
    def __init__(self, request_id: _Optional[str] = ..., csr_pem: _Optional[bytes] = ..., namespace: _Optional[str] = ..., service: _Optional[str] = ..., node: _Optional[bool] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    def __init__(self, nonce: _Optional[int] = ...) -> None: ...

class Pong(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    def __init__(self, nonce: _Optional[int] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("node", "token", "session_id", "applied_version", "grace_seconds", "deregister_critical_after_seconds", "wants_intentions")
    NODE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    APPLIED_VERSION_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DEREGISTER_CRITICAL_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WANTS_INTENTIONS_FIELD_NUMBER: _ClassVar[int]
    node: Node
    token: str
    session_id: str
    applied_version: int
    grace_seconds: int
    deregister_critical_after_seconds: int
    wants_intentions: bool
    def __init__(self, node: _Optional[_Union[Node, _Mapping]] = ..., token: _Optional[str] = ..., session_id: _Optional[str] = ..., applied_version: _Optional[int] = ..., grace_seconds: _Optional[int] = ..., deregister_critical_after_seconds: _Optional[int] = ..., wants_intentions: _Optional[bool] = ...) -> None: ...

class SyncInstances(_message.Message):
    __slots__ = ("instances", "more")
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    instances: _containers.RepeatedCompositeFieldContainer[_registry_pb2.Instance]
    more: bool
    def __init__(self, instances: _Optional[_Iterable[_Union[_registry_pb2.Instance, _Mapping]]] = ..., more: _Optional[bool] = ...) -> None: ...

class HealthReport(_message.Message):
    __slots__ = ("service", "namespace", "instance_id", "health", "checks")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    service: str
    namespace: str
    instance_id: str
    health: _registry_pb2.HealthStatus
    checks: _containers.RepeatedCompositeFieldContainer[_registry_pb2.CheckStatus]
    def __init__(self, service: _Optional[str] = ..., namespace: _Optional[str] = ..., instance_id: _Optional[str] = ..., health: _Optional[_Union[_registry_pb2.HealthStatus, str]] = ..., checks: _Optional[_Iterable[_Union[_registry_pb2.CheckStatus, _Mapping]]] = ...) -> None: ...

class Subscribe(_message.Message):
    __slots__ = ("services",)
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[ServiceRef]
    def __init__(self, services: _Optional[_Iterable[_Union[ServiceRef, _Mapping]]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("version", "nonce", "rejected", "error")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    version: int
    nonce: str
    rejected: bool
    error: str
    def __init__(self, version: _Optional[int] = ..., nonce: _Optional[str] = ..., rejected: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("welcome", "update", "sync_result", "pong", "certificate", "trust_bundle", "intentions")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    SYNC_RESULT_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    TRUST_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    INTENTIONS_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    update: EndpointUpdate
    sync_result: SyncResult
    pong: Pong
    certificate: CertificateIssued
    trust_bundle: TrustBundle
    intentions: _intention_pb2.IntentionSet
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., update: _Optional[_Union[EndpointUpdate, _Mapping]] = ..., sync_result: _Optional[_Union[SyncResult, _Mapping]] = ..., pong: _Optional[_Union[Pong, _Mapping]] = ..., certificate: _Optional[_Union[CertificateIssued, _Mapping]] = ..., trust_bundle: _Optional[_Union[TrustBundle, _Mapping]] = ..., intentions: _Optional[_Union[_intention_pb2.IntentionSet, _Mapping]] = ...) -> None: ...

class CertificateIssued(_message.Message):
    __slots__ = ("request_id", "cert_pem", "spiffe_id", "expires_at_ms", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    cert_pem: bytes
    spiffe_id: str
    expires_at_ms: int
    error: str
    def __init__(self, request_id: _Optional[str] = ..., cert_pem: _Optional[bytes] = ..., spiffe_id: _Optional[str] = ..., expires_at_ms: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class TrustBundle(_message.Message):
    __slots__ = ("trust_domain", "roots_pem", "version")
    TRUST_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    ROOTS_PEM_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    trust_domain: str
    roots_pem: _containers.RepeatedScalarFieldContainer[bytes]
    version: int
    def __init__(self, trust_domain: _Optional[str] = ..., roots_pem: _Optional[_Iterable[bytes]] = ..., version: _Optional[int] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("session_id", "replica", "grace_seconds", "sync_interval_seconds", "resumed", "bus")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SYNC_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    BUS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    replica: str
    grace_seconds: int
    sync_interval_seconds: int
    resumed: bool
    bus: BusAccess
    def __init__(self, session_id: _Optional[str] = ..., replica: _Optional[str] = ..., grace_seconds: _Optional[int] = ..., sync_interval_seconds: _Optional[int] = ..., resumed: _Optional[bool] = ..., bus: _Optional[_Union[BusAccess, _Mapping]] = ...) -> None: ...

class BusAccess(_message.Message):
    __slots__ = ("url",)
    URL_FIELD_NUMBER: _ClassVar[int]
    url: str
    def __init__(self, url: _Optional[str] = ...) -> None: ...

class EndpointUpdate(_message.Message):
    __slots__ = ("version", "nonce", "services", "full", "more")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    version: int
    nonce: str
    services: _containers.RepeatedCompositeFieldContainer[ServiceEndpoints]
    full: bool
    more: bool
    def __init__(self, version: _Optional[int] = ..., nonce: _Optional[str] = ..., services: _Optional[_Iterable[_Union[ServiceEndpoints, _Mapping]]] = ..., full: _Optional[bool] = ..., more: _Optional[bool] = ...) -> None: ...

class ServiceEndpoints(_message.Message):
    __slots__ = ("service", "instances")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    service: ServiceRef
    instances: _containers.RepeatedCompositeFieldContainer[_registry_pb2.Instance]
    def __init__(self, service: _Optional[_Union[ServiceRef, _Mapping]] = ..., instances: _Optional[_Iterable[_Union[_registry_pb2.Instance, _Mapping]]] = ...) -> None: ...

class SyncResult(_message.Message):
    __slots__ = ("revision", "created", "updated", "removed", "errors")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    revision: int
    created: int
    updated: int
    removed: int
    errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, revision: _Optional[int] = ..., created: _Optional[int] = ..., updated: _Optional[int] = ..., removed: _Optional[int] = ..., errors: _Optional[_Iterable[str]] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("node", "status", "connected", "replica", "peer", "connected_at_ms", "last_seen_ms", "applied_version", "sent_version", "subscriptions", "instance_count", "last_error", "session_id", "grace_seconds", "deregister_critical_after_seconds", "lost_at_ms")
    NODE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_MS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_VERSION_FIELD_NUMBER: _ClassVar[int]
    SENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DEREGISTER_CRITICAL_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LOST_AT_MS_FIELD_NUMBER: _ClassVar[int]
    node: Node
    status: NodeSyncStatus
    connected: bool
    replica: str
    peer: str
    connected_at_ms: int
    last_seen_ms: int
    applied_version: int
    sent_version: int
    subscriptions: _containers.RepeatedCompositeFieldContainer[ServiceRef]
    instance_count: int
    last_error: str
    session_id: str
    grace_seconds: int
    deregister_critical_after_seconds: int
    lost_at_ms: int
    def __init__(self, node: _Optional[_Union[Node, _Mapping]] = ..., status: _Optional[_Union[NodeSyncStatus, str]] = ..., connected: _Optional[bool] = ..., replica: _Optional[str] = ..., peer: _Optional[str] = ..., connected_at_ms: _Optional[int] = ..., last_seen_ms: _Optional[int] = ..., applied_version: _Optional[int] = ..., sent_version: _Optional[int] = ..., subscriptions: _Optional[_Iterable[_Union[ServiceRef, _Mapping]]] = ..., instance_count: _Optional[int] = ..., last_error: _Optional[str] = ..., session_id: _Optional[str] = ..., grace_seconds: _Optional[int] = ..., deregister_critical_after_seconds: _Optional[int] = ..., lost_at_ms: _Optional[int] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes", "next_page_token")
    NODES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    next_page_token: str
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WaitForRevisionRequest(_message.Message):
    __slots__ = ("revision", "timeout_ms")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    revision: int
    timeout_ms: int
    def __init__(self, revision: _Optional[int] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class WaitForRevisionResponse(_message.Message):
    __slots__ = ("applied", "pending", "affected", "pending_count")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    AFFECTED_FIELD_NUMBER: _ClassVar[int]
    PENDING_COUNT_FIELD_NUMBER: _ClassVar[int]
    applied: bool
    pending: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    affected: int
    pending_count: int
    def __init__(self, applied: _Optional[bool] = ..., pending: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ..., affected: _Optional[int] = ..., pending_count: _Optional[int] = ...) -> None: ...
