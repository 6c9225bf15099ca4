"""CatalogService: datasets stored and revisioned in the control plane.

Datasets are read straight from the store. Their copies are worked out on
GetDataset from the sync jobs that name them (``dataset:NAME``, or the
dataset's location itself) and those jobs' runs, through the :class:`SyncJobs`
the control plane passes in (the sync package imports this one to resolve
``dataset:NAME``, so not the other way round).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import grpc
from ecosystem.v1 import catalog_pb2 as cpb
from ecosystem.v1 import sync_pb2 as spb

from controlplane.store import Store
from serving.errors import (
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    end_call,
    to_status,
)

from ._dataset_rules import dataset_name_violations, dataset_reference, dataset_violations
from ._keys import DATASETS_PREFIX, dataset_key, decode_dataset, platform_key
from ._objects import delete_object, put_object

__all__ = ["CATALOG_SERVICE", "CatalogServicer", "SyncJobs", "dataset_matches"]

log = logging.getLogger(__name__)

CATALOG_SERVICE = cpb.DESCRIPTOR.services_by_name["CatalogService"].full_name
#: Runs of a job looked through for its last completed one.
_RUNS_LOOKED_AT = 50


class SyncJobs(Protocol):
    """What the catalog reads of the sync jobs (``controlplane.sync.SyncBook``)."""

    @property
    def jobs(self) -> Mapping[str, spb.SyncJob]: ...

    async def list_runs(self, name: str, limit: int) -> list[spb.SyncRun]: ...


def dataset_matches(dataset: cpb.Dataset, request: cpb.ListDatasetsRequest) -> bool:
    return (
        (not request.platform or dataset.platform == request.platform)
        and (not request.owner or dataset.owner == request.owner)
        and set(request.tags).issubset(dataset.tags)
    )


def _stored(dataset: cpb.Dataset) -> cpb.Dataset:
    stored = cpb.Dataset()
    stored.CopyFrom(dataset)
    for name in ("copies", "create_revision", "mod_revision"):
        stored.ClearField(name)
    return stored


def _checked_name(name: str) -> None:
    violations = dataset_name_violations("name", name)
    if violations:
        raise InvalidArgumentError(violations)


def _names(value: str, dataset: cpb.Dataset) -> bool:
    """Whether a job's source or destination is ``dataset``."""
    return dataset_reference(value) == dataset.name or (
        value.rstrip("/") == dataset.location.rstrip("/")
    )


class CatalogServicer:
    """Serves CatalogService (see the proto for what each call does)."""

    def __init__(self, store: Store, sync: SyncJobs) -> None:
        self.store = store
        self.sync = sync

    async def _run(self, name: str, context: Any, work: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await work()
        except Exception as exc:
            _fail(name, context, exc)
            return None

    async def _checked(self, dataset: cpb.Dataset) -> cpb.Dataset:
        violations = dataset_violations(dataset)
        platform = dataset.platform
        shaped = platform and not any(v.field == "dataset.platform" for v in violations)
        if shaped and await self.store.get(platform_key(platform)) is None:
            violations.append(
                FieldViolation(
                    "dataset.platform",
                    f"{platform!r} is not a registered platform (register it with "
                    "'eco platform register')",
                )
            )
        if violations:
            raise InvalidArgumentError(violations)
        return _stored(dataset)

    async def AddDataset(self, request: cpb.AddDatasetRequest, context: Any) -> Any:
        async def work() -> cpb.AddDatasetResponse:
            dataset = await self._checked(request.dataset)
            written = await put_object(
                self.store,
                dataset_key(dataset.name),
                f"dataset {dataset.name!r}",
                dataset.SerializeToString(deterministic=True),
                create=True,
                update=False,
            )
            dataset.create_revision, dataset.mod_revision = (
                written.create_revision,
                written.mod_revision,
            )
            log.info("dataset %s added at revision %d", dataset.name, written.mod_revision)
            return cpb.AddDatasetResponse(dataset=dataset)

        return await self._run("AddDataset", context, work)

    async def UpdateDataset(self, request: cpb.UpdateDatasetRequest, context: Any) -> Any:
        async def work() -> cpb.UpdateDatasetResponse:
            if request.expected_revision < 0:
                raise InvalidArgumentError(
                    [FieldViolation("expected_revision", "must not be negative")]
                )
            dataset = await self._checked(request.dataset)
            written = await put_object(
                self.store,
                dataset_key(dataset.name),
                f"dataset {dataset.name!r}",
                dataset.SerializeToString(deterministic=True),
                create=False,
                update=True,
                expected=request.expected_revision,
            )
            dataset.create_revision, dataset.mod_revision = (
                written.create_revision,
                written.mod_revision,
            )
            if written.changed:
                log.info("dataset %s updated at revision %d", dataset.name, written.mod_revision)
            return cpb.UpdateDatasetResponse(dataset=dataset, changed=written.changed)

        return await self._run("UpdateDataset", context, work)

    async def GetDataset(self, request: cpb.GetDatasetRequest, context: Any) -> Any:
        async def work() -> cpb.GetDatasetResponse:
            _checked_name(request.name)
            kv = await self.store.get(dataset_key(request.name))
            if kv is None:
                raise NotFoundError(f"no dataset {request.name!r}")
            dataset = decode_dataset(kv)
            dataset.copies.extend(await self._copies(dataset))
            return cpb.GetDatasetResponse(dataset=dataset)

        return await self._run("GetDataset", context, work)

    async def _copies(self, dataset: cpb.Dataset) -> list[cpb.DatasetCopy]:
        result = await self.store.range(DATASETS_PREFIX)
        locations = {d.name: d.location for d in map(decode_dataset, result.kvs)}
        copies = []
        for name, job in sorted(self.sync.jobs.items()):
            for here, there, direction in (
                (job.source, job.destination, "to"),
                (job.destination, job.source, "from"),
            ):
                if not _names(here, dataset):
                    continue
                other = dataset_reference(there)
                copy = cpb.DatasetCopy(
                    location=locations.get(other, "") if other is not None else there,
                    job=name,
                    direction=direction,
                    dataset=other or "",
                )
                runs = await self.sync.list_runs(name, _RUNS_LOOKED_AT)
                if runs:
                    copy.last_run, copy.last_status = runs[0].number, runs[0].status
                for run in runs:
                    if run.status == spb.SYNC_RUN_STATUS_COMPLETED:
                        copy.last_synced_at_ms = run.finished_at_ms
                        copy.last_synced_run = run.number
                        break
                copies.append(copy)
        return copies

    async def ListDatasets(self, request: cpb.ListDatasetsRequest, context: Any) -> Any:
        async def work() -> cpb.ListDatasetsResponse:
            result = await self.store.range(DATASETS_PREFIX)
            return cpb.ListDatasetsResponse(
                datasets=[
                    d for d in map(decode_dataset, result.kvs) if dataset_matches(d, request)
                ],
                revision=result.revision,
            )

        return await self._run("ListDatasets", context, work)

    async def RemoveDataset(self, request: cpb.RemoveDatasetRequest, context: Any) -> Any:
        async def work() -> cpb.RemoveDatasetResponse:
            _checked_name(request.name)
            what = f"dataset {request.name!r}"
            kv = await self.store.get(dataset_key(request.name))
            if kv is None:
                raise NotFoundError(f"no {what}")
            if not request.force:
                jobs = sorted(
                    name
                    for name, job in self.sync.jobs.items()
                    if request.name
                    in (dataset_reference(job.source), dataset_reference(job.destination))
                )
                if jobs:
                    raise FailedPreconditionError(
                        f"{what} is named by sync job(s) {', '.join(jobs[:5])}"
                        f"{' and more' if len(jobs) > 5 else ''}: change or delete them first, "
                        "or remove with force (their runs then fail)"
                    )
            revision = await delete_object(self.store, kv, what, request.expected_revision)
            log.info("dataset %s removed at revision %d", request.name, revision)
            return cpb.RemoveDatasetResponse(revision=revision)

        return await self._run("RemoveDataset", context, work)


def _fail(name: str, context: Any, exc: Exception) -> None:
    status = to_status(exc)
    if status.code == grpc.StatusCode.INTERNAL.value[0]:
        log.exception("CatalogService/%s failed", name, exc_info=exc)
    end_call(context, status)
