from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HealthStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEALTH_STATUS_UNSPECIFIED: _ClassVar[HealthStatus]
    HEALTH_STATUS_PASSING: _ClassVar[HealthStatus]
    HEALTH_STATUS_WARNING: _ClassVar[HealthStatus]
    HEALTH_STATUS_CRITICAL: _ClassVar[HealthStatus]
    HEALTH_STATUS_UNKNOWN: _ClassVar[HealthStatus]

class Liveness(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LIVENESS_UNSPECIFIED: _ClassVar[Liveness]
    LIVENESS_PERSISTENT: _ClassVar[Liveness]
    LIVENESS_EPHEMERAL: _ClassVar[Liveness]

class WatchEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WATCH_EVENT_TYPE_UNSPECIFIED: _ClassVar[WatchEventType]
    WATCH_EVENT_TYPE_PUT: _ClassVar[WatchEventType]
    WATCH_EVENT_TYPE_DELETE: _ClassVar[WatchEventType]
    WATCH_EVENT_TYPE_RESYNC: _ClassVar[WatchEventType]
    WATCH_EVENT_TYPE_SNAPSHOT_END: _ClassVar[WatchEventType]
    WATCH_EVENT_TYPE_PROGRESS: _ClassVar[WatchEventType]
HEALTH_STATUS_UNSPECIFIED: HealthStatus
HEALTH_STATUS_PASSING: HealthStatus
HEALTH_STATUS_WARNING: HealthStatus
HEALTH_STATUS_CRITICAL: HealthStatus
HEALTH_STATUS_UNKNOWN: HealthStatus
LIVENESS_UNSPECIFIED: Liveness
LIVENESS_PERSISTENT: Liveness
LIVENESS_EPHEMERAL: Liveness
WATCH_EVENT_TYPE_UNSPECIFIED: WatchEventType
WATCH_EVENT_TYPE_PUT: WatchEventType
WATCH_EVENT_TYPE_DELETE: WatchEventType
WATCH_EVENT_TYPE_RESYNC: WatchEventType
WATCH_EVENT_TYPE_SNAPSHOT_END: WatchEventType
WATCH_EVENT_TYPE_PROGRESS: WatchEventType

class CheckStatus(_message.Message):
    __slots__ = ("name", "status", "output", "changed_at_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    CHANGED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    status: HealthStatus
    output: str
    changed_at_ms: int
    def __init__(self, name: _Optional[str] = ..., status: _Optional[_Union[HealthStatus, str]] = ..., output: _Optional[str] = ..., changed_at_ms: _Optional[int] = ...) -> None: ...

class Instance(_message.Message):
    __slots__ = ("id", "service", "namespace", "node", "platform", "region", "zone", "address", "port", "tags", "metadata", "weight", "health", "checks", "liveness", "lease_id", "create_revision", "mod_revision")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    LIVENESS_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_REVISION_FIELD_NUMBER: _ClassVar[int]
    MOD_REVISION_FIELD_NUMBER: _ClassVar[int]
    id: str
    service: str
    namespace: str
    node: str
    platform: str
    region: str
    zone: str
    address: str
    port: int
    tags: _containers.RepeatedScalarFieldContainer[str]
    metadata: _containers.ScalarMap[str, str]
    weight: int
    health: HealthStatus
    checks: _containers.RepeatedCompositeFieldContainer[CheckStatus]
    liveness: Liveness
    lease_id: int
    create_revision: int
    mod_revision: int
    def __init__(self, id: _Optional[str] = ..., service: _Optional[str] = ..., namespace: _Optional[str] = ..., node: _Optional[str] = ..., platform: _Optional[str] = ..., region: _Optional[str] = ..., zone: _Optional[str] = ..., address: _Optional[str] = ..., port: _Optional[int] = ..., tags: _Optional[_Iterable[str]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., weight: _Optional[int] = ..., health: _Optional[_Union[HealthStatus, str]] = ..., checks: _Optional[_Iterable[_Union[CheckStatus, _Mapping]]] = ..., liveness: _Optional[_Union[Liveness, str]] = ..., lease_id: _Optional[int] = ..., create_revision: _Optional[int] = ..., mod_revision: _Optional[int] = ...) -> None: ...

class Service(_message.Message):
    __slots__ = ("name", "namespace", "instance_count", "passing_count", "warning_count", "critical_count", "unknown_count")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_COUNT_FIELD_NUMBER: _ClassVar[int]
    PASSING_COUNT_FIELD_NUMBER: _ClassVar[int]
    WARNING_COUNT_FIELD_NUMBER: _ClassVar[int]
    CRITICAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_COUNT_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    instance_count: int
    passing_count: int
    warning_count: int
    critical_count: int
    unknown_count: int
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ..., instance_count: _Optional[int] = ..., passing_count: _Optional[int] = ..., warning_count: _Optional[int] = ..., critical_count: _Optional[int] = ..., unknown_count: _Optional[int] = ...) -> None: ...

class RegisterInstanceRequest(_message.Message):
    __slots__ = ("instance", "lease_id", "lease_ttl_seconds", "expected_revision")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    instance: Instance
    lease_id: int
    lease_ttl_seconds: int
    expected_revision: int
    def __init__(self, instance: _Optional[_Union[Instance, _Mapping]] = ..., lease_id: _Optional[int] = ..., lease_ttl_seconds: _Optional[int] = ..., expected_revision: _Optional[int] = ...) -> None: ...

class RegisterInstanceResponse(_message.Message):
    __slots__ = ("instance", "revision", "lease_id", "lease_ttl_seconds")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    instance: Instance
    revision: int
    lease_id: int
    lease_ttl_seconds: int
    def __init__(self, instance: _Optional[_Union[Instance, _Mapping]] = ..., revision: _Optional[int] = ..., lease_id: _Optional[int] = ..., lease_ttl_seconds: _Optional[int] = ...) -> None: ...

class DeregisterInstanceRequest(_message.Message):
    __slots__ = ("service", "namespace", "id", "expected_revision")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    service: str
    namespace: str
    id: str
    expected_revision: int
    def __init__(self, service: _Optional[str] = ..., namespace: _Optional[str] = ..., id: _Optional[str] = ..., expected_revision: _Optional[int] = ...) -> None: ...

class DeregisterInstanceResponse(_message.Message):
    __slots__ = ("revision", "deleted")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    revision: int
    deleted: bool
    def __init__(self, revision: _Optional[int] = ..., deleted: _Optional[bool] = ...) -> None: ...

class KeepAliveRequest(_message.Message):
    __slots__ = ("lease_id",)
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    lease_id: int
    def __init__(self, lease_id: _Optional[int] = ...) -> None: ...

class KeepAliveResponse(_message.Message):
    __slots__ = ("lease_id", "ttl_seconds")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    lease_id: int
    ttl_seconds: int
    def __init__(self, lease_id: _Optional[int] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class RevokeLeaseRequest(_message.Message):
    __slots__ = ("lease_id",)
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    lease_id: int
    def __init__(self, lease_id: _Optional[int] = ...) -> None: ...

class RevokeLeaseResponse(_message.Message):
    __slots__ = ("revision",)
    REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: int
    def __init__(self, revision: _Optional[int] = ...) -> None: ...

class GetServiceRequest(_message.Message):
    __slots__ = ("name", "namespace", "page_size", "page_token")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    page_size: int
    page_token: str
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class GetServiceResponse(_message.Message):
    __slots__ = ("service", "instances", "revision", "next_page_token")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    service: Service
    instances: _containers.RepeatedCompositeFieldContainer[Instance]
    revision: int
    next_page_token: str
    def __init__(self, service: _Optional[_Union[Service, _Mapping]] = ..., instances: _Optional[_Iterable[_Union[Instance, _Mapping]]] = ..., revision: _Optional[int] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListServicesRequest(_message.Message):
    __slots__ = ("namespace", "page_size", "page_token")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    page_size: int
    page_token: str
    def __init__(self, namespace: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListServicesResponse(_message.Message):
    __slots__ = ("services", "revision", "next_page_token")
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[Service]
    revision: int
    next_page_token: str
    def __init__(self, services: _Optional[_Iterable[_Union[Service, _Mapping]]] = ..., revision: _Optional[int] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class InstanceSelector(_message.Message):
    __slots__ = ("service", "namespace", "platform", "zone", "tags", "health")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    service: str
    namespace: str
    platform: str
    zone: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    health: _containers.RepeatedScalarFieldContainer[HealthStatus]
    def __init__(self, service: _Optional[str] = ..., namespace: _Optional[str] = ..., platform: _Optional[str] = ..., zone: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., health: _Optional[_Iterable[_Union[HealthStatus, str]]] = ...) -> None: ...

class ListInstancesRequest(_message.Message):
    __slots__ = ("selector", "page_size", "page_token")
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    selector: InstanceSelector
    page_size: int
    page_token: str
    def __init__(self, selector: _Optional[_Union[InstanceSelector, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListInstancesResponse(_message.Message):
    __slots__ = ("instances", "revision", "next_page_token")
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    instances: _containers.RepeatedCompositeFieldContainer[Instance]
    revision: int
    next_page_token: str
    def __init__(self, instances: _Optional[_Iterable[_Union[Instance, _Mapping]]] = ..., revision: _Optional[int] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("selector", "since_revision", "progress_interval_ms", "store_id")
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    SINCE_REVISION_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    STORE_ID_FIELD_NUMBER: _ClassVar[int]
    selector: InstanceSelector
    since_revision: int
    progress_interval_ms: int
    store_id: str
    def __init__(self, selector: _Optional[_Union[InstanceSelector, _Mapping]] = ..., since_revision: _Optional[int] = ..., progress_interval_ms: _Optional[int] = ..., store_id: _Optional[str] = ...) -> None: ...

class WatchEvent(_message.Message):
    __slots__ = ("type", "revision", "instance")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    type: WatchEventType
    revision: int
    instance: Instance
    def __init__(self, type: _Optional[_Union[WatchEventType, str]] = ..., revision: _Optional[int] = ..., instance: _Optional[_Union[Instance, _Mapping]] = ...) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("events", "store_id", "revision_continues")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    STORE_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_CONTINUES_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[WatchEvent]
    store_id: str
    revision_continues: bool
    def __init__(self, events: _Optional[_Iterable[_Union[WatchEvent, _Mapping]]] = ..., store_id: _Optional[str] = ..., revision_continues: _Optional[bool] = ...) -> None: ...
