from ecosystem.v1 import registry_pb2 as _registry_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ResolveEndpointsRequest(_message.Message):
    __slots__ = ("service", "namespace", "health", "page_size", "page_token")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    service: str
    namespace: str
    health: _containers.RepeatedScalarFieldContainer[_registry_pb2.HealthStatus]
    page_size: int
    page_token: str
    def __init__(self, service: _Optional[str] = ..., namespace: _Optional[str] = ..., health: _Optional[_Iterable[_Union[_registry_pb2.HealthStatus, str]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ResolveEndpointsResponse(_message.Message):
    __slots__ = ("endpoints", "version", "stale", "next_page_token")
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[_registry_pb2.Instance]
    version: int
    stale: bool
    next_page_token: str
    def __init__(self, endpoints: _Optional[_Iterable[_Union[_registry_pb2.Instance, _Mapping]]] = ..., version: _Optional[int] = ..., stale: _Optional[bool] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class PickEndpointRequest(_message.Message):
    __slots__ = ("service", "namespace", "key")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    service: str
    namespace: str
    key: str
    def __init__(self, service: _Optional[str] = ..., namespace: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class PickEndpointResponse(_message.Message):
    __slots__ = ("endpoint", "pick_id")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    PICK_ID_FIELD_NUMBER: _ClassVar[int]
    endpoint: _registry_pb2.Instance
    pick_id: str
    def __init__(self, endpoint: _Optional[_Union[_registry_pb2.Instance, _Mapping]] = ..., pick_id: _Optional[str] = ...) -> None: ...

class WatchEndpointsRequest(_message.Message):
    __slots__ = ("service", "namespace")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    service: str
    namespace: str
    def __init__(self, service: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class WatchEndpointsResponse(_message.Message):
    __slots__ = ("endpoints", "version", "stale", "more")
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[_registry_pb2.Instance]
    version: int
    stale: bool
    more: bool
    def __init__(self, endpoints: _Optional[_Iterable[_Union[_registry_pb2.Instance, _Mapping]]] = ..., version: _Optional[int] = ..., stale: _Optional[bool] = ..., more: _Optional[bool] = ...) -> None: ...

class UpdateTTLRequest(_message.Message):
    __slots__ = ("service", "instance_id", "check", "status", "note")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    service: str
    instance_id: str
    check: str
    status: _registry_pb2.HealthStatus
    note: str
    def __init__(self, service: _Optional[str] = ..., instance_id: _Optional[str] = ..., check: _Optional[str] = ..., status: _Optional[_Union[_registry_pb2.HealthStatus, str]] = ..., note: _Optional[str] = ...) -> None: ...

class UpdateTTLResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReportResultRequest(_message.Message):
    __slots__ = ("pick_id", "latency_seconds", "failed")
    PICK_ID_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    pick_id: str
    latency_seconds: float
    failed: bool
    def __init__(self, pick_id: _Optional[str] = ..., latency_seconds: _Optional[float] = ..., failed: _Optional[bool] = ...) -> None: ...

class ReportResultResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
