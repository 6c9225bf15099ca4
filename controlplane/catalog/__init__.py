"""Platforms and the data catalog (PlatformService, CatalogService).

Platforms (core, cloud, on-premise) and datasets are registry objects of
their own, stored and revisioned in the shared store (``_keys``); each write
is guarded by the revision it read (``_objects``). A sync job may name a
dataset (``dataset:NAME``): ``_resolve`` checks the name and turns it into the
dataset's location when a run is scheduled.
"""

from __future__ import annotations

from ._dataset_rules import (
    DATASET_SCHEME,
    SCHEMES,
    dataset_name_violations,
    dataset_reference,
    dataset_violations,
    location_violations,
    schema_problems,
)
from ._datasets import CATALOG_SERVICE, CatalogServicer, SyncJobs, dataset_matches
from ._keys import DATASETS_PREFIX, PLATFORMS_PREFIX, dataset_key, platform_key
from ._platform_rules import KINDS, kind_name, platform_name_violations, platform_violations
from ._platforms import PLATFORM_SERVICE, PlatformServicer, platform_matches
from ._resolve import dataset_references, resolve_datasets, unknown_datasets

__all__ = [
    "CATALOG_SERVICE",
    "DATASETS_PREFIX",
    "DATASET_SCHEME",
    "KINDS",
    "PLATFORMS_PREFIX",
    "PLATFORM_SERVICE",
    "SCHEMES",
    "CatalogServicer",
    "PlatformServicer",
    "SyncJobs",
    "dataset_key",
    "dataset_matches",
    "dataset_name_violations",
    "dataset_reference",
    "dataset_references",
    "dataset_violations",
    "kind_name",
    "location_violations",
    "platform_key",
    "platform_matches",
    "platform_name_violations",
    "platform_violations",
    "resolve_datasets",
    "schema_problems",
    "unknown_datasets",
]
