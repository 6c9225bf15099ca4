from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class IntentionAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INTENTION_ACTION_UNSPECIFIED: _ClassVar[IntentionAction]
    INTENTION_ACTION_ALLOW: _ClassVar[IntentionAction]
    INTENTION_ACTION_DENY: _ClassVar[IntentionAction]
INTENTION_ACTION_UNSPECIFIED: IntentionAction
INTENTION_ACTION_ALLOW: IntentionAction
INTENTION_ACTION_DENY: IntentionAction

class Intention(_message.Message):
    __slots__ = ("source", "destination", "action", "description", "create_time", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    source: str
    destination: str
    action: IntentionAction
    description: str
    create_time: int
    labels: _containers.ScalarMap[str, str]
    def __init__(self, source: _Optional[str] = ..., destination: _Optional[str] = ..., action: _Optional[_Union[IntentionAction, str]] = ..., description: _Optional[str] = ..., create_time: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CreateIntentionRequest(_message.Message):
    __slots__ = ("intention",)
    INTENTION_FIELD_NUMBER: _ClassVar[int]
    intention: Intention
    def __init__(self, intention: _Optional[_Union[Intention, _Mapping]] = ...) -> None: ...

class CreateIntentionResponse(_message.Message):
    __slots__ = ("intention",)
    INTENTION_FIELD_NUMBER: _ClassVar[int]
    intention: Intention
    def __init__(self, intention: _Optional[_Union[Intention, _Mapping]] = ...) -> None: ...

class ListIntentionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListIntentionsResponse(_message.Message):
    __slots__ = ("intentions", "default_allow")
    INTENTIONS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_ALLOW_FIELD_NUMBER: _ClassVar[int]
    intentions: _containers.RepeatedCompositeFieldContainer[Intention]
    default_allow: bool
    def __init__(self, intentions: _Optional[_Iterable[_Union[Intention, _Mapping]]] = ..., default_allow: _Optional[bool] = ...) -> None: ...

class DeleteIntentionRequest(_message.Message):
    __slots__ = ("source", "destination")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    source: str
    destination: str
    def __init__(self, source: _Optional[str] = ..., destination: _Optional[str] = ...) -> None: ...

class DeleteIntentionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CheckIntentionRequest(_message.Message):
    __slots__ = ("source", "destination")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    source: str
    destination: str
    def __init__(self, source: _Optional[str] = ..., destination: _Optional[str] = ...) -> None: ...

class CheckIntentionResponse(_message.Message):
    __slots__ = ("allowed", "matched", "reason")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    matched: Intention
    reason: str
    def __init__(self, allowed: _Optional[bool] = ..., matched: _Optional[_Union[Intention, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class IntentionSet(_message.Message):
    __slots__ = ("intentions", "default_allow", "version")
    INTENTIONS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_ALLOW_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    intentions: _containers.RepeatedCompositeFieldContainer[Intention]
    default_allow: bool
    version: int
    def __init__(self, intentions: _Optional[_Iterable[_Union[Intention, _Mapping]]] = ..., default_allow: _Optional[bool] = ..., version: _Optional[int] = ...) -> None: ...
