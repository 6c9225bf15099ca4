from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AclRule(_message.Message):
    __slots__ = ("resource", "pattern", "access")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    ACCESS_FIELD_NUMBER: _ClassVar[int]
    resource: str
    pattern: str
    access: str
    def __init__(self, resource: _Optional[str] = ..., pattern: _Optional[str] = ..., access: _Optional[str] = ...) -> None: ...

class AclPolicy(_message.Message):
    __slots__ = ("name", "description", "rules")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    rules: _containers.RepeatedCompositeFieldContainer[AclRule]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., rules: _Optional[_Iterable[_Union[AclRule, _Mapping]]] = ...) -> None: ...

class AclToken(_message.Message):
    __slots__ = ("accessor_id", "description", "policies", "create_time")
    ACCESSOR_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    accessor_id: str
    description: str
    policies: _containers.RepeatedScalarFieldContainer[str]
    create_time: int
    def __init__(self, accessor_id: _Optional[str] = ..., description: _Optional[str] = ..., policies: _Optional[_Iterable[str]] = ..., create_time: _Optional[int] = ...) -> None: ...

class BootstrapRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BootstrapResponse(_message.Message):
    __slots__ = ("token", "secret")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    token: AclToken
    secret: str
    def __init__(self, token: _Optional[_Union[AclToken, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class CreatePolicyRequest(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: AclPolicy
    def __init__(self, policy: _Optional[_Union[AclPolicy, _Mapping]] = ...) -> None: ...

class CreatePolicyResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: AclPolicy
    def __init__(self, policy: _Optional[_Union[AclPolicy, _Mapping]] = ...) -> None: ...

class ListPoliciesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPoliciesResponse(_message.Message):
    __slots__ = ("policies",)
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    policies: _containers.RepeatedCompositeFieldContainer[AclPolicy]
    def __init__(self, policies: _Optional[_Iterable[_Union[AclPolicy, _Mapping]]] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetPolicyResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: AclPolicy
    def __init__(self, policy: _Optional[_Union[AclPolicy, _Mapping]] = ...) -> None: ...

class DeletePolicyRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeletePolicyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("policies", "description")
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    policies: _containers.RepeatedScalarFieldContainer[str]
    description: str
    def __init__(self, policies: _Optional[_Iterable[str]] = ..., description: _Optional[str] = ...) -> None: ...

class CreateTokenResponse(_message.Message):
    __slots__ = ("token", "secret")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    token: AclToken
    secret: str
    def __init__(self, token: _Optional[_Union[AclToken, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[AclToken]
    def __init__(self, tokens: _Optional[_Iterable[_Union[AclToken, _Mapping]]] = ...) -> None: ...

class DeleteTokenRequest(_message.Message):
    __slots__ = ("accessor_id",)
    ACCESSOR_ID_FIELD_NUMBER: _ClassVar[int]
    accessor_id: str
    def __init__(self, accessor_id: _Optional[str] = ...) -> None: ...

class DeleteTokenResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResolveTokenRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResolveTokenResponse(_message.Message):
    __slots__ = ("token", "rules", "default_allow")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_ALLOW_FIELD_NUMBER: _ClassVar[int]
    token: AclToken
    rules: _containers.RepeatedCompositeFieldContainer[AclRule]
    default_allow: bool
    def __init__(self, token: _Optional[_Union[AclToken, _Mapping]] = ..., rules: _Optional[_Iterable[_Union[AclRule, _Mapping]]] = ..., default_allow: _Optional[bool] = ...) -> None: ...
