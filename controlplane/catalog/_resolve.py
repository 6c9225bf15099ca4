"""Sync jobs that name datasets (``dataset:NAME``) instead of URLs.

A job keeps the name; each run is given the dataset's location as it is when
the run is scheduled, so a dataset that moves takes its jobs with it.
"""

from __future__ import annotations

from ecosystem.v1 import sync_pb2 as spb

from controlplane.store import Store
from serving.errors import FieldViolation, excerpt

from ._dataset_rules import dataset_name_violations, dataset_reference
from ._keys import dataset_key, decode_dataset

__all__ = ["dataset_references", "resolve_datasets", "unknown_datasets"]

_ENDS = ("source", "destination")


def dataset_references(job: spb.SyncJob) -> dict[str, str]:
    """The datasets ``job`` names, by field (source, destination)."""
    found = {}
    for end in _ENDS:
        name = dataset_reference(getattr(job, end))
        if name is not None:
            found[end] = name
    return found


async def unknown_datasets(
    store: Store, job: spb.SyncJob, prefix: str = "job"
) -> list[FieldViolation]:
    """The problems of the datasets a job names: a bad name, or no such dataset."""
    violations = []
    for end, name in dataset_references(job).items():
        field = f"{prefix}.{end}"
        problems = dataset_name_violations(field, name)
        if problems:
            violations += problems
        elif await store.get(dataset_key(name)) is None:
            violations.append(
                FieldViolation(
                    field,
                    f"names dataset {excerpt(name)}, which is not in the catalog "
                    "(add it with 'eco catalog add')",
                )
            )
    return violations


async def resolve_datasets(store: Store, job: spb.SyncJob) -> str:
    """Replaces the job's ``dataset:NAME`` ends with their locations, in place;
    returns why it could not ("" when every named dataset was found)."""
    for end, name in dataset_references(job).items():
        kv = await store.get(dataset_key(name))
        if kv is None:
            return f"the {end} names dataset {name!r}, which is no longer in the catalog"
        setattr(job, end, decode_dataset(kv).location)
    return ""
