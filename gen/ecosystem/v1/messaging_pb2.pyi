from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeliverPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DELIVER_POLICY_UNSPECIFIED: _ClassVar[DeliverPolicy]
    DELIVER_POLICY_ALL: _ClassVar[DeliverPolicy]
    DELIVER_POLICY_NEW: _ClassVar[DeliverPolicy]
    DELIVER_POLICY_BY_SEQUENCE: _ClassVar[DeliverPolicy]
    DELIVER_POLICY_BY_TIME: _ClassVar[DeliverPolicy]
    DELIVER_POLICY_LAST: _ClassVar[DeliverPolicy]

class AckKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACK_KIND_UNSPECIFIED: _ClassVar[AckKind]
    ACK_KIND_ACK: _ClassVar[AckKind]
    ACK_KIND_NAK: _ClassVar[AckKind]
    ACK_KIND_TERM: _ClassVar[AckKind]
    ACK_KIND_IN_PROGRESS: _ClassVar[AckKind]
DELIVER_POLICY_UNSPECIFIED: DeliverPolicy
DELIVER_POLICY_ALL: DeliverPolicy
DELIVER_POLICY_NEW: DeliverPolicy
DELIVER_POLICY_BY_SEQUENCE: DeliverPolicy
DELIVER_POLICY_BY_TIME: DeliverPolicy
DELIVER_POLICY_LAST: DeliverPolicy
ACK_KIND_UNSPECIFIED: AckKind
ACK_KIND_ACK: AckKind
ACK_KIND_NAK: AckKind
ACK_KIND_TERM: AckKind
ACK_KIND_IN_PROGRESS: AckKind

class Message(_message.Message):
    __slots__ = ("subject", "data", "headers", "id", "reply_to", "stream", "sequence", "published_at_ms", "delivery_count", "ack_id")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_COUNT_FIELD_NUMBER: _ClassVar[int]
    ACK_ID_FIELD_NUMBER: _ClassVar[int]
    subject: str
    data: bytes
    headers: _containers.ScalarMap[str, str]
    id: str
    reply_to: str
    stream: str
    sequence: int
    published_at_ms: int
    delivery_count: int
    ack_id: str
    def __init__(self, subject: _Optional[str] = ..., data: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, str]] = ..., id: _Optional[str] = ..., reply_to: _Optional[str] = ..., stream: _Optional[str] = ..., sequence: _Optional[int] = ..., published_at_ms: _Optional[int] = ..., delivery_count: _Optional[int] = ..., ack_id: _Optional[str] = ...) -> None: ...

class PublishRequest(_message.Message):
    __slots__ = ("subject", "data", "headers", "id", "reply_to")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    subject: str
    data: bytes
    headers: _containers.ScalarMap[str, str]
    id: str
    reply_to: str
    def __init__(self, subject: _Optional[str] = ..., data: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, str]] = ..., id: _Optional[str] = ..., reply_to: _Optional[str] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("stream", "sequence", "duplicate")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    stream: str
    sequence: int
    duplicate: bool
    def __init__(self, stream: _Optional[str] = ..., sequence: _Optional[int] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class PublishBatchRequest(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[PublishRequest]
    def __init__(self, messages: _Optional[_Iterable[_Union[PublishRequest, _Mapping]]] = ...) -> None: ...

class PublishBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[PublishResult]
    def __init__(self, results: _Optional[_Iterable[_Union[PublishResult, _Mapping]]] = ...) -> None: ...

class PublishResult(_message.Message):
    __slots__ = ("ack", "error")
    ACK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ack: PublishResponse
    error: PublishError
    def __init__(self, ack: _Optional[_Union[PublishResponse, _Mapping]] = ..., error: _Optional[_Union[PublishError, _Mapping]] = ...) -> None: ...

class PublishError(_message.Message):
    __slots__ = ("code", "message", "reason", "violations")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    reason: str
    violations: _containers.RepeatedCompositeFieldContainer[FieldViolation]
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., reason: _Optional[str] = ..., violations: _Optional[_Iterable[_Union[FieldViolation, _Mapping]]] = ...) -> None: ...

class FieldViolation(_message.Message):
    __slots__ = ("field", "description")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    field: str
    description: str
    def __init__(self, field: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("subject", "queue_group", "durable", "stream", "deliver", "start_sequence", "start_time_ms", "ack_wait_ms", "max_deliver", "max_ack_pending", "backoff_ms", "batched")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    QUEUE_GROUP_FIELD_NUMBER: _ClassVar[int]
    DURABLE_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DELIVER_FIELD_NUMBER: _ClassVar[int]
    START_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    START_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    ACK_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_DELIVER_FIELD_NUMBER: _ClassVar[int]
    MAX_ACK_PENDING_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_MS_FIELD_NUMBER: _ClassVar[int]
    BATCHED_FIELD_NUMBER: _ClassVar[int]
    subject: str
    queue_group: str
    durable: str
    stream: str
    deliver: DeliverPolicy
    start_sequence: int
    start_time_ms: int
    ack_wait_ms: int
    max_deliver: int
    max_ack_pending: int
    backoff_ms: _containers.RepeatedScalarFieldContainer[int]
    batched: bool
    def __init__(self, subject: _Optional[str] = ..., queue_group: _Optional[str] = ..., durable: _Optional[str] = ..., stream: _Optional[str] = ..., deliver: _Optional[_Union[DeliverPolicy, str]] = ..., start_sequence: _Optional[int] = ..., start_time_ms: _Optional[int] = ..., ack_wait_ms: _Optional[int] = ..., max_deliver: _Optional[int] = ..., max_ack_pending: _Optional[int] = ..., backoff_ms: _Optional[_Iterable[int]] = ..., batched: _Optional[bool] = ...) -> None: ...

class SubscribeResponse(_message.Message):
    __slots__ = ("message", "subscribed", "batch")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    message: Message
    subscribed: Subscribed
    batch: MessageBatch
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ..., subscribed: _Optional[_Union[Subscribed, _Mapping]] = ..., batch: _Optional[_Union[MessageBatch, _Mapping]] = ...) -> None: ...

class MessageBatch(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ...) -> None: ...

class Subscribed(_message.Message):
    __slots__ = ("stream", "next_sequence")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    NEXT_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    stream: str
    next_sequence: int
    def __init__(self, stream: _Optional[str] = ..., next_sequence: _Optional[int] = ...) -> None: ...

class AckRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[AckItem]
    def __init__(self, items: _Optional[_Iterable[_Union[AckItem, _Mapping]]] = ...) -> None: ...

class AckItem(_message.Message):
    __slots__ = ("ack_id", "kind", "delay_ms")
    ACK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    ack_id: str
    kind: AckKind
    delay_ms: int
    def __init__(self, ack_id: _Optional[str] = ..., kind: _Optional[_Union[AckKind, str]] = ..., delay_ms: _Optional[int] = ...) -> None: ...

class AckResponse(_message.Message):
    __slots__ = ("unknown",)
    UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    unknown: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, unknown: _Optional[_Iterable[str]] = ...) -> None: ...

class RequestRequest(_message.Message):
    __slots__ = ("subject", "data", "headers", "timeout_ms")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    subject: str
    data: bytes
    headers: _containers.ScalarMap[str, str]
    timeout_ms: int
    def __init__(self, subject: _Optional[str] = ..., data: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, str]] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class RequestResponse(_message.Message):
    __slots__ = ("reply",)
    REPLY_FIELD_NUMBER: _ClassVar[int]
    reply: Message
    def __init__(self, reply: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...

class StreamConfig(_message.Message):
    __slots__ = ("name", "subjects", "max_age_ms", "max_msgs", "max_bytes", "duplicate_window_ms", "dead_letter_subject")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    MAX_AGE_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_MSGS_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_WINDOW_MS_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTER_SUBJECT_FIELD_NUMBER: _ClassVar[int]
    name: str
    subjects: _containers.RepeatedScalarFieldContainer[str]
    max_age_ms: int
    max_msgs: int
    max_bytes: int
    duplicate_window_ms: int
    dead_letter_subject: str
    def __init__(self, name: _Optional[str] = ..., subjects: _Optional[_Iterable[str]] = ..., max_age_ms: _Optional[int] = ..., max_msgs: _Optional[int] = ..., max_bytes: _Optional[int] = ..., duplicate_window_ms: _Optional[int] = ..., dead_letter_subject: _Optional[str] = ...) -> None: ...

class StreamInfo(_message.Message):
    __slots__ = ("config", "messages", "bytes", "first_sequence", "last_sequence", "consumers", "created_at_ms")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CONSUMERS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    config: StreamConfig
    messages: int
    bytes: int
    first_sequence: int
    last_sequence: int
    consumers: _containers.RepeatedCompositeFieldContainer[ConsumerInfo]
    created_at_ms: int
    def __init__(self, config: _Optional[_Union[StreamConfig, _Mapping]] = ..., messages: _Optional[int] = ..., bytes: _Optional[int] = ..., first_sequence: _Optional[int] = ..., last_sequence: _Optional[int] = ..., consumers: _Optional[_Iterable[_Union[ConsumerInfo, _Mapping]]] = ..., created_at_ms: _Optional[int] = ...) -> None: ...

class ConsumerInfo(_message.Message):
    __slots__ = ("name", "next_sequence", "pending", "redelivered", "dead_lettered", "subscribers")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NEXT_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    REDELIVERED_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERED_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    next_sequence: int
    pending: int
    redelivered: int
    dead_lettered: int
    subscribers: int
    def __init__(self, name: _Optional[str] = ..., next_sequence: _Optional[int] = ..., pending: _Optional[int] = ..., redelivered: _Optional[int] = ..., dead_lettered: _Optional[int] = ..., subscribers: _Optional[int] = ...) -> None: ...

class AddStreamRequest(_message.Message):
    __slots__ = ("config",)
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: StreamConfig
    def __init__(self, config: _Optional[_Union[StreamConfig, _Mapping]] = ...) -> None: ...

class AddStreamResponse(_message.Message):
    __slots__ = ("stream", "created")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    stream: StreamInfo
    created: bool
    def __init__(self, stream: _Optional[_Union[StreamInfo, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class ListStreamsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListStreamsResponse(_message.Message):
    __slots__ = ("streams",)
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    streams: _containers.RepeatedCompositeFieldContainer[StreamInfo]
    def __init__(self, streams: _Optional[_Iterable[_Union[StreamInfo, _Mapping]]] = ...) -> None: ...

class DeleteStreamRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteStreamResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
