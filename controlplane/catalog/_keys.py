"""Where platforms and datasets live in the store, and how they are read back.

Keys (values: serialized ``Platform`` / ``Dataset`` messages without their
revisions, which are the key's ``create_revision`` and ``mod_revision``)::

    /ecosystem/v1/platforms/<name>
    /ecosystem/v1/catalog/datasets/<name>
"""

from __future__ import annotations

from ecosystem.v1 import catalog_pb2 as cpb
from ecosystem.v1 import platform_pb2 as ppb

from controlplane.registry import ROOT_PREFIX
from controlplane.store import KeyValue

__all__ = [
    "DATASETS_PREFIX",
    "PLATFORMS_PREFIX",
    "dataset_key",
    "decode_dataset",
    "decode_platform",
    "platform_key",
]

PLATFORMS_PREFIX = ROOT_PREFIX + "platforms/"
DATASETS_PREFIX = ROOT_PREFIX + "catalog/datasets/"


def platform_key(name: str) -> str:
    return PLATFORMS_PREFIX + name


def dataset_key(name: str) -> str:
    return DATASETS_PREFIX + name


def decode_platform(kv: KeyValue) -> ppb.Platform:
    platform = ppb.Platform.FromString(kv.value)
    platform.create_revision = kv.create_revision
    platform.mod_revision = kv.mod_revision
    return platform


def decode_dataset(kv: KeyValue) -> cpb.Dataset:
    dataset = cpb.Dataset.FromString(kv.value)
    dataset.create_revision = kv.create_revision
    dataset.mod_revision = kv.mod_revision
    return dataset
