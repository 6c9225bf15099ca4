from ecosystem.v1 import agent_pb2 as _agent_pb2
from ecosystem.v1 import registry_pb2 as _registry_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PlatformKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PLATFORM_KIND_UNSPECIFIED: _ClassVar[PlatformKind]
    PLATFORM_KIND_CORE: _ClassVar[PlatformKind]
    PLATFORM_KIND_CLOUD: _ClassVar[PlatformKind]
    PLATFORM_KIND_ONPREM: _ClassVar[PlatformKind]
PLATFORM_KIND_UNSPECIFIED: PlatformKind
PLATFORM_KIND_CORE: PlatformKind
PLATFORM_KIND_CLOUD: PlatformKind
PLATFORM_KIND_ONPREM: PlatformKind

class Platform(_message.Message):
    __slots__ = ("name", "kind", "provider", "regions", "labels", "description", "create_revision", "mod_revision")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CREATE_REVISION_FIELD_NUMBER: _ClassVar[int]
    MOD_REVISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: PlatformKind
    provider: str
    regions: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    description: str
    create_revision: int
    mod_revision: int
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[PlatformKind, str]] = ..., provider: _Optional[str] = ..., regions: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., description: _Optional[str] = ..., create_revision: _Optional[int] = ..., mod_revision: _Optional[int] = ...) -> None: ...

class RegisterPlatformRequest(_message.Message):
    __slots__ = ("platform", "expected_revision", "replace")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    platform: Platform
    expected_revision: int
    replace: bool
    def __init__(self, platform: _Optional[_Union[Platform, _Mapping]] = ..., expected_revision: _Optional[int] = ..., replace: _Optional[bool] = ...) -> None: ...

class RegisterPlatformResponse(_message.Message):
    __slots__ = ("platform", "created", "changed")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    platform: Platform
    created: bool
    changed: bool
    def __init__(self, platform: _Optional[_Union[Platform, _Mapping]] = ..., created: _Optional[bool] = ..., changed: _Optional[bool] = ...) -> None: ...

class GetPlatformRequest(_message.Message):
    __slots__ = ("name", "max_instances")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MAX_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    name: str
    max_instances: int
    def __init__(self, name: _Optional[str] = ..., max_instances: _Optional[int] = ...) -> None: ...

class GetPlatformResponse(_message.Message):
    __slots__ = ("platform", "nodes", "services", "instances", "instance_count", "datasets")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_COUNT_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    platform: Platform
    nodes: _containers.RepeatedCompositeFieldContainer[_agent_pb2.NodeStatus]
    services: _containers.RepeatedCompositeFieldContainer[_registry_pb2.Service]
    instances: _containers.RepeatedCompositeFieldContainer[_registry_pb2.Instance]
    instance_count: int
    datasets: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, platform: _Optional[_Union[Platform, _Mapping]] = ..., nodes: _Optional[_Iterable[_Union[_agent_pb2.NodeStatus, _Mapping]]] = ..., services: _Optional[_Iterable[_Union[_registry_pb2.Service, _Mapping]]] = ..., instances: _Optional[_Iterable[_Union[_registry_pb2.Instance, _Mapping]]] = ..., instance_count: _Optional[int] = ..., datasets: _Optional[_Iterable[str]] = ...) -> None: ...

class ListPlatformsRequest(_message.Message):
    __slots__ = ("kind", "provider", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    kind: PlatformKind
    provider: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, kind: _Optional[_Union[PlatformKind, str]] = ..., provider: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListPlatformsResponse(_message.Message):
    __slots__ = ("platforms", "revision")
    PLATFORMS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    platforms: _containers.RepeatedCompositeFieldContainer[Platform]
    revision: int
    def __init__(self, platforms: _Optional[_Iterable[_Union[Platform, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class DeregisterPlatformRequest(_message.Message):
    __slots__ = ("name", "force", "expected_revision")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    force: bool
    expected_revision: int
    def __init__(self, name: _Optional[str] = ..., force: _Optional[bool] = ..., expected_revision: _Optional[int] = ...) -> None: ...

class DeregisterPlatformResponse(_message.Message):
    __slots__ = ("revision",)
    REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: int
    def __init__(self, revision: _Optional[int] = ...) -> None: ...

class WatchPlatformsRequest(_message.Message):
    __slots__ = ("since_revision",)
    SINCE_REVISION_FIELD_NUMBER: _ClassVar[int]
    since_revision: int
    def __init__(self, since_revision: _Optional[int] = ...) -> None: ...

class PlatformEvent(_message.Message):
    __slots__ = ("type", "revision", "platform")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    type: _registry_pb2.WatchEventType
    revision: int
    platform: Platform
    def __init__(self, type: _Optional[_Union[_registry_pb2.WatchEventType, str]] = ..., revision: _Optional[int] = ..., platform: _Optional[_Union[Platform, _Mapping]] = ...) -> None: ...

class WatchPlatformsResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[PlatformEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[PlatformEvent, _Mapping]]] = ...) -> None: ...
