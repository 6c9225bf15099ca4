from ecosystem.v1 import agent_pb2 as _agent_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetTrustBundleRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetTrustBundleResponse(_message.Message):
    __slots__ = ("bundle",)
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    bundle: _agent_pb2.TrustBundle
    def __init__(self, bundle: _Optional[_Union[_agent_pb2.TrustBundle, _Mapping]] = ...) -> None: ...

class RotateRootRequest(_message.Message):
    __slots__ = ("propagation_seconds",)
    PROPAGATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    propagation_seconds: int
    def __init__(self, propagation_seconds: _Optional[int] = ...) -> None: ...

class RotateRootResponse(_message.Message):
    __slots__ = ("bundle", "signs_from_ms", "old_root_removed_at_ms")
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    SIGNS_FROM_MS_FIELD_NUMBER: _ClassVar[int]
    OLD_ROOT_REMOVED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    bundle: _agent_pb2.TrustBundle
    signs_from_ms: int
    old_root_removed_at_ms: int
    def __init__(self, bundle: _Optional[_Union[_agent_pb2.TrustBundle, _Mapping]] = ..., signs_from_ms: _Optional[int] = ..., old_root_removed_at_ms: _Optional[int] = ...) -> None: ...
