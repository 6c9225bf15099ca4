"""Connectors: one per kind of store, chosen by the URL's scheme.

``open_connector(url, settings)`` is the registry. Each connector's module is
imported only when its scheme is asked for, so ``eco sync`` between two
directories never loads the cloud SDKs (whose imports cost a second or more),
and a machine without one store's SDK can still use the others.

Accepted URLs::

    file:///absolute/path
    sftp://[user@]host[:port]/path
    s3://bucket[/prefix]
    gs://bucket[/prefix]
    az://container[/prefix]
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import cast
from urllib.parse import SplitResult, urlsplit

from sidecar.sync.connectors._base import (
    CRC32C,
    MD5,
    SHA256,
    Connector,
    Entry,
    IntegrityError,
    ResumeToken,
    Source,
    SourceOpener,
    StoreAuthError,
    StoreNotFoundError,
    StoreThrottledError,
    StoreUnavailableError,
    SyncStoreError,
)

__all__ = [
    "CRC32C",
    "MD5",
    "SCHEMES",
    "SHA256",
    "Connector",
    "Entry",
    "IntegrityError",
    "ResumeToken",
    "Source",
    "SourceOpener",
    "StoreAuthError",
    "StoreNotFoundError",
    "StoreThrottledError",
    "StoreUnavailableError",
    "SyncStoreError",
    "open_connector",
]

# scheme → (module under sidecar.sync.connectors, class); imported on first use.
SCHEMES: Mapping[str, tuple[str, str]] = {
    "file": ("file", "FileConnector"),
    "sftp": ("sftp", "SftpConnector"),
    "s3": ("s3", "S3Connector"),
    "gs": ("gcs", "GcsConnector"),
    "az": ("azure", "AzureConnector"),
}

ACCEPTED_FORMS = (
    "file:///absolute/path, sftp://[user@]host[:port]/path, "
    "s3://bucket[/prefix], gs://bucket[/prefix], az://container[/prefix]"
)


def open_connector(url: str, settings: Mapping[str, str] | None = None) -> Connector:
    """The connector for ``url``, not yet connected (no I/O here: use it as
    ``async with open_connector(url) as c``). ``settings`` are the job's named
    profile for this side (keys as each connector's docs say); what they leave
    out comes from the store's standard environment.

    ValueError, naming the URL and the accepted forms, for an unknown scheme or
    a malformed URL; ModuleNotFoundError when the store's SDK is not installed
    (the ``server`` extra has them all)."""
    parts = _check(url)
    module_name, class_name = SCHEMES[parts.scheme]
    module = importlib.import_module(f"{__name__}.{module_name}")
    connector_class = getattr(module, class_name)
    return cast(Connector, connector_class(url, settings))


def _check(url: str) -> SplitResult:
    def bad(why: str) -> ValueError:
        return ValueError(f"bad sync URL {url!r}: {why}; expected one of {ACCEPTED_FORMS}")

    try:
        parts = urlsplit(url)
        port = parts.port  # parses the port; ValueError when it is not a number in range
    except ValueError as exc:
        raise bad(str(exc)) from None
    if parts.scheme not in SCHEMES:
        raise bad(f"unknown scheme {parts.scheme!r}" if parts.scheme else "no scheme")
    if parts.query or parts.fragment:
        raise bad("a query or fragment is not part of any store's URL")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise bad("a file URL names no host: file:///absolute/path (three slashes)")
        if not parts.path.startswith("/"):
            raise bad("a file URL needs an absolute path")
    elif parts.scheme == "sftp":
        if not parts.hostname:
            raise bad("an SFTP URL needs a host")
        if not parts.path.startswith("/"):
            raise bad("an SFTP URL needs a path after the host (/ for the top, /~/ for home)")
        if port == 0:
            raise bad("port 0")
    else:
        if not parts.netloc:
            raise bad(f"{parts.scheme}:// needs a bucket or container name")
        if "@" in parts.netloc or ":" in parts.netloc:
            raise bad("a bucket or container name has no user or port")
    return parts
