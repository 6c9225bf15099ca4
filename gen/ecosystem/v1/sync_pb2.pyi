from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SyncRunStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SYNC_RUN_STATUS_UNSPECIFIED: _ClassVar[SyncRunStatus]
    SYNC_RUN_STATUS_PENDING: _ClassVar[SyncRunStatus]
    SYNC_RUN_STATUS_RUNNING: _ClassVar[SyncRunStatus]
    SYNC_RUN_STATUS_COMPLETED: _ClassVar[SyncRunStatus]
    SYNC_RUN_STATUS_FAILED: _ClassVar[SyncRunStatus]
    SYNC_RUN_STATUS_GUARDED: _ClassVar[SyncRunStatus]
SYNC_RUN_STATUS_UNSPECIFIED: SyncRunStatus
SYNC_RUN_STATUS_PENDING: SyncRunStatus
SYNC_RUN_STATUS_RUNNING: SyncRunStatus
SYNC_RUN_STATUS_COMPLETED: SyncRunStatus
SYNC_RUN_STATUS_FAILED: SyncRunStatus
SYNC_RUN_STATUS_GUARDED: SyncRunStatus

class SyncJob(_message.Message):
    __slots__ = ("name", "source", "destination", "mode", "checksum", "conflict", "max_delete", "transfers", "bandwidth", "every_seconds", "cron", "on_node", "paused", "revision", "created_at_ms", "updated_at_ms", "next_run_at_ms", "last_run", "last_status", "labels", "on_platform", "source_profile", "destination_profile")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    CONFLICT_FIELD_NUMBER: _ClassVar[int]
    MAX_DELETE_FIELD_NUMBER: _ClassVar[int]
    TRANSFERS_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_FIELD_NUMBER: _ClassVar[int]
    EVERY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CRON_FIELD_NUMBER: _ClassVar[int]
    ON_NODE_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    NEXT_RUN_AT_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_RUN_FIELD_NUMBER: _ClassVar[int]
    LAST_STATUS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ON_PLATFORM_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PROFILE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_PROFILE_FIELD_NUMBER: _ClassVar[int]
    name: str
    source: str
    destination: str
    mode: str
    checksum: bool
    conflict: str
    max_delete: float
    transfers: int
    bandwidth: int
    every_seconds: float
    cron: str
    on_node: str
    paused: bool
    revision: int
    created_at_ms: int
    updated_at_ms: int
    next_run_at_ms: int
    last_run: int
    last_status: SyncRunStatus
    labels: _containers.ScalarMap[str, str]
    on_platform: str
    source_profile: str
    destination_profile: str
    def __init__(self, name: _Optional[str] = ..., source: _Optional[str] = ..., destination: _Optional[str] = ..., mode: _Optional[str] = ..., checksum: _Optional[bool] = ..., conflict: _Optional[str] = ..., max_delete: _Optional[float] = ..., transfers: _Optional[int] = ..., bandwidth: _Optional[int] = ..., every_seconds: _Optional[float] = ..., cron: _Optional[str] = ..., on_node: _Optional[str] = ..., paused: _Optional[bool] = ..., revision: _Optional[int] = ..., created_at_ms: _Optional[int] = ..., updated_at_ms: _Optional[int] = ..., next_run_at_ms: _Optional[int] = ..., last_run: _Optional[int] = ..., last_status: _Optional[_Union[SyncRunStatus, str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., on_platform: _Optional[str] = ..., source_profile: _Optional[str] = ..., destination_profile: _Optional[str] = ...) -> None: ...

class SyncRun(_message.Message):
    __slots__ = ("job", "number", "node", "status", "scheduled_at_ms", "started_at_ms", "heartbeat_at_ms", "finished_at_ms", "spec", "counters", "report", "error", "revision", "slots", "executor", "platform")
    JOB_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_AT_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    job: str
    number: int
    node: str
    status: SyncRunStatus
    scheduled_at_ms: int
    started_at_ms: int
    heartbeat_at_ms: int
    finished_at_ms: int
    spec: SyncJob
    counters: SyncRunCounters
    report: _struct_pb2.Struct
    error: str
    revision: int
    slots: int
    executor: str
    platform: str
    def __init__(self, job: _Optional[str] = ..., number: _Optional[int] = ..., node: _Optional[str] = ..., status: _Optional[_Union[SyncRunStatus, str]] = ..., scheduled_at_ms: _Optional[int] = ..., started_at_ms: _Optional[int] = ..., heartbeat_at_ms: _Optional[int] = ..., finished_at_ms: _Optional[int] = ..., spec: _Optional[_Union[SyncJob, _Mapping]] = ..., counters: _Optional[_Union[SyncRunCounters, _Mapping]] = ..., report: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., error: _Optional[str] = ..., revision: _Optional[int] = ..., slots: _Optional[int] = ..., executor: _Optional[str] = ..., platform: _Optional[str] = ...) -> None: ...

class SyncRunCounters(_message.Message):
    __slots__ = ("files_copied", "bytes_copied", "files_deleted", "files_skipped", "conflicts", "errors", "duration_seconds")
    FILES_COPIED_FIELD_NUMBER: _ClassVar[int]
    BYTES_COPIED_FIELD_NUMBER: _ClassVar[int]
    FILES_DELETED_FIELD_NUMBER: _ClassVar[int]
    FILES_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    CONFLICTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    files_copied: int
    bytes_copied: int
    files_deleted: int
    files_skipped: int
    conflicts: int
    errors: int
    duration_seconds: float
    def __init__(self, files_copied: _Optional[int] = ..., bytes_copied: _Optional[int] = ..., files_deleted: _Optional[int] = ..., files_skipped: _Optional[int] = ..., conflicts: _Optional[int] = ..., errors: _Optional[int] = ..., duration_seconds: _Optional[float] = ...) -> None: ...

class CreateSyncJobRequest(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: SyncJob
    def __init__(self, job: _Optional[_Union[SyncJob, _Mapping]] = ...) -> None: ...

class CreateSyncJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: SyncJob
    def __init__(self, job: _Optional[_Union[SyncJob, _Mapping]] = ...) -> None: ...

class UpdateSyncJobRequest(_message.Message):
    __slots__ = ("job", "expected_revision")
    JOB_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    job: SyncJob
    expected_revision: int
    def __init__(self, job: _Optional[_Union[SyncJob, _Mapping]] = ..., expected_revision: _Optional[int] = ...) -> None: ...

class UpdateSyncJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: SyncJob
    def __init__(self, job: _Optional[_Union[SyncJob, _Mapping]] = ...) -> None: ...

class GetSyncJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetSyncJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: SyncJob
    def __init__(self, job: _Optional[_Union[SyncJob, _Mapping]] = ...) -> None: ...

class ListSyncJobsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSyncJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[SyncJob]
    def __init__(self, jobs: _Optional[_Iterable[_Union[SyncJob, _Mapping]]] = ...) -> None: ...

class DeleteSyncJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteSyncJobResponse(_message.Message):
    __slots__ = ("revision",)
    REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: int
    def __init__(self, revision: _Optional[int] = ...) -> None: ...

class PauseSyncJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class PauseSyncJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: SyncJob
    def __init__(self, job: _Optional[_Union[SyncJob, _Mapping]] = ...) -> None: ...

class ResumeSyncJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ResumeSyncJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: SyncJob
    def __init__(self, job: _Optional[_Union[SyncJob, _Mapping]] = ...) -> None: ...

class ListSyncRunsRequest(_message.Message):
    __slots__ = ("job", "limit")
    JOB_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    job: str
    limit: int
    def __init__(self, job: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListSyncRunsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[SyncRun]
    def __init__(self, runs: _Optional[_Iterable[_Union[SyncRun, _Mapping]]] = ...) -> None: ...

class WatchSyncRunsRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: str
    def __init__(self, node: _Optional[str] = ...) -> None: ...

class WatchSyncRunsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[SyncRun]
    def __init__(self, runs: _Optional[_Iterable[_Union[SyncRun, _Mapping]]] = ...) -> None: ...

class ClaimSyncRunRequest(_message.Message):
    __slots__ = ("job", "number", "node", "executor")
    JOB_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    job: str
    number: int
    node: str
    executor: str
    def __init__(self, job: _Optional[str] = ..., number: _Optional[int] = ..., node: _Optional[str] = ..., executor: _Optional[str] = ...) -> None: ...

class ClaimSyncRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: SyncRun
    def __init__(self, run: _Optional[_Union[SyncRun, _Mapping]] = ...) -> None: ...

class ReportSyncRunRequest(_message.Message):
    __slots__ = ("job", "number", "node", "status", "counters", "report", "error", "executor")
    JOB_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    job: str
    number: int
    node: str
    status: SyncRunStatus
    counters: SyncRunCounters
    report: _struct_pb2.Struct
    error: str
    executor: str
    def __init__(self, job: _Optional[str] = ..., number: _Optional[int] = ..., node: _Optional[str] = ..., status: _Optional[_Union[SyncRunStatus, str]] = ..., counters: _Optional[_Union[SyncRunCounters, _Mapping]] = ..., report: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., error: _Optional[str] = ..., executor: _Optional[str] = ...) -> None: ...

class ReportSyncRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: SyncRun
    def __init__(self, run: _Optional[_Union[SyncRun, _Mapping]] = ...) -> None: ...
