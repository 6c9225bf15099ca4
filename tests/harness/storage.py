"""Stores for the sync tests: each ``<name>_target`` fixture gives a fresh,
empty root on a real store (a directory, an SFTP server, an S3/GCS/Azure
emulator) as a :class:`StoreTarget`.

File and SFTP targets are defined here; the cloud emulators' targets in
tests/harness/cloud_storage.py. tests/integration/sync/conftest.py imports
both, and the ``target`` fixture there is parametrised over every store.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STORE_NAMES = ("file", "sftp", "s3", "gcs", "azure")


@dataclass(frozen=True)
class StoreTarget:
    """A fresh root on a real store: its connector URL and the settings a
    connector needs to reach it (a job's named profile; the same keys as
    ``open_connector(url, settings)`` takes), plus the environment variables
    an ``eco`` subprocess would read instead."""

    name: str
    url: str
    settings: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
