from ecosystem.v1 import sync_pb2 as _sync_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Dataset(_message.Message):
    __slots__ = ("name", "location", "platform", "owner", "schema", "tags", "description", "copies", "create_revision", "mod_revision", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    COPIES_FIELD_NUMBER: _ClassVar[int]
    CREATE_REVISION_FIELD_NUMBER: _ClassVar[int]
    MOD_REVISION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    location: str
    platform: str
    owner: str
    schema: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    description: str
    copies: _containers.RepeatedCompositeFieldContainer[DatasetCopy]
    create_revision: int
    mod_revision: int
    labels: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., location: _Optional[str] = ..., platform: _Optional[str] = ..., owner: _Optional[str] = ..., schema: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., description: _Optional[str] = ..., copies: _Optional[_Iterable[_Union[DatasetCopy, _Mapping]]] = ..., create_revision: _Optional[int] = ..., mod_revision: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class DatasetCopy(_message.Message):
    __slots__ = ("location", "job", "direction", "dataset", "last_synced_at_ms", "last_synced_run", "last_run", "last_status")
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    LAST_SYNCED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_SYNCED_RUN_FIELD_NUMBER: _ClassVar[int]
    LAST_RUN_FIELD_NUMBER: _ClassVar[int]
    LAST_STATUS_FIELD_NUMBER: _ClassVar[int]
    location: str
    job: str
    direction: str
    dataset: str
    last_synced_at_ms: int
    last_synced_run: int
    last_run: int
    last_status: _sync_pb2.SyncRunStatus
    def __init__(self, location: _Optional[str] = ..., job: _Optional[str] = ..., direction: _Optional[str] = ..., dataset: _Optional[str] = ..., last_synced_at_ms: _Optional[int] = ..., last_synced_run: _Optional[int] = ..., last_run: _Optional[int] = ..., last_status: _Optional[_Union[_sync_pb2.SyncRunStatus, str]] = ...) -> None: ...

class AddDatasetRequest(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: Dataset
    def __init__(self, dataset: _Optional[_Union[Dataset, _Mapping]] = ...) -> None: ...

class AddDatasetResponse(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: Dataset
    def __init__(self, dataset: _Optional[_Union[Dataset, _Mapping]] = ...) -> None: ...

class UpdateDatasetRequest(_message.Message):
    __slots__ = ("dataset", "expected_revision")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    dataset: Dataset
    expected_revision: int
    def __init__(self, dataset: _Optional[_Union[Dataset, _Mapping]] = ..., expected_revision: _Optional[int] = ...) -> None: ...

class UpdateDatasetResponse(_message.Message):
    __slots__ = ("dataset", "changed")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    dataset: Dataset
    changed: bool
    def __init__(self, dataset: _Optional[_Union[Dataset, _Mapping]] = ..., changed: _Optional[bool] = ...) -> None: ...

class GetDatasetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetDatasetResponse(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: Dataset
    def __init__(self, dataset: _Optional[_Union[Dataset, _Mapping]] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ("platform", "owner", "tags")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    platform: str
    owner: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, platform: _Optional[str] = ..., owner: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ...) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets", "revision")
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[Dataset]
    revision: int
    def __init__(self, datasets: _Optional[_Iterable[_Union[Dataset, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class RemoveDatasetRequest(_message.Message):
    __slots__ = ("name", "force", "expected_revision")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    force: bool
    expected_revision: int
    def __init__(self, name: _Optional[str] = ..., force: _Optional[bool] = ..., expected_revision: _Optional[int] = ...) -> None: ...

class RemoveDatasetResponse(_message.Message):
    __slots__ = ("revision",)
    REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: int
    def __init__(self, revision: _Optional[int] = ...) -> None: ...
