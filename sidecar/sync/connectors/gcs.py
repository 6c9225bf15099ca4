"""``gs://bucket/prefix``: Google Cloud Storage through google-cloud-storage.

google-cloud-storage is Google's own kept client (credentials through
google-auth: application default credentials, a service-account file, or
``STORAGE_EMULATOR_HOST`` for an emulator, anonymously). It is synchronous:
every call runs on a thread pool of the connector's own (``POOL_SIZE``
threads, not asyncio's small default pool), so ~16 transfers and a listing
run at once over one HTTP connection pool of the same size.

Large objects go through a resumable upload session: the SDK creates it
(``Blob.create_resumable_upload_session``, with the object's metadata), and
the parts are PUT to the session URI over the client's own authorised
transport as the resumable protocol defines (``Content-Range``, 308 with the
committed ``Range``). The SDK's upload helpers read from a file object in
one call and cannot take up a session URI from an earlier process, which
resuming after a crash needs. The session URI is the resume token; on resume
the store is asked for the committed offset (``Content-Range: bytes */N``).

Hashes: ``md5Hash`` (non-composite objects; GCS computes it for every
upload, resumable ones included) and ``crc32c`` (always). Settings:
``emulator_host``, ``project``, ``credentials_file``, ``part_size``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import google.auth.exceptions
import requests
from google.api_core import exceptions as api
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from requests.adapters import HTTPAdapter

from sidecar.sync.connectors._base import (
    CRC32C,
    MD5,
    Entry,
    IntegrityError,
    ResumeToken,
    SourceOpener,
    StoreAuthError,
    StoreNotFoundError,
    StoreThrottledError,
    StoreUnavailableError,
    SyncStoreError,
)
from sidecar.sync.connectors._cloud import (
    META_MD5,
    META_MTIME,
    POOL_SIZE,
    ObjectRoot,
    page_size_from,
    parse_mtime,
    part_size_from,
    parts_of,
    read_exactly,
    token_fits,
)
from sidecar.sync.connectors._hashing import compute_hash, new_hasher

__all__ = ["GcsConnector"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_CHUNK_UNIT = 256 * 1024  # resumable chunks are multiples of this, but the last
_READ_CHUNK = 4 * 1024 * 1024
_TIMEOUT = 60.0
_CONTENT_TYPE = "application/octet-stream"


def _md5_hex(encoded: str | None) -> str | None:
    return base64.b64decode(encoded).hex() if encoded else None


class GcsConnector:
    """A GCS bucket (and object-name prefix) as a sync store."""

    listed_hashes: tuple[str, ...] = (CRC32C, MD5)
    local = False

    def __init__(self, url: str, settings: Mapping[str, str] | None = None) -> None:
        self.url = url
        self._root = ObjectRoot(url, "gs")
        self._settings = dict(settings or {})
        self._part_size = part_size_from(self._settings, minimum=_CHUNK_UNIT, multiple=_CHUNK_UNIT)
        self._page_size = page_size_from(self._settings, maximum=1000)
        self._pool: ThreadPoolExecutor | None = None
        self._client: storage.Client | None = None
        self._opening = asyncio.Lock()  # one client, however many calls open it at once

    # -- lifecycle ---------------------------------------------------------

    async def __aenter__(self) -> GcsConnector:
        await self._ensure()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        pool, client = self._pool, self._client
        self._pool = self._client = None
        if pool is None:
            return
        if client is not None:
            await asyncio.get_running_loop().run_in_executor(pool, client.close)
        # Its threads end once idle; waiting for that off the loop leaves none behind.
        await asyncio.to_thread(pool.shutdown)

    async def _ensure(self) -> storage.Client:
        if self._client is not None:
            return self._client
        async with self._opening:
            if self._client is None:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(POOL_SIZE, thread_name_prefix="eco-gcs")
                # Finding credentials may read files or ask a metadata server: off the loop.
                self._client = await self._call("", self._make_client)
        return self._client

    def _make_client(self) -> storage.Client:
        s = self._settings
        project = s.get("project") or os.environ.get("GOOGLE_CLOUD_PROJECT") or None
        emulator = s.get("emulator_host") or os.environ.get("STORAGE_EMULATOR_HOST")
        if emulator:
            if "://" not in emulator:
                emulator = f"http://{emulator}"
            client = storage.Client(
                project=project or "eco",
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                client_options={"api_endpoint": emulator},
            )
        elif s.get("credentials_file"):
            from google.oauth2 import service_account

            try:
                credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                    s["credentials_file"]
                )
            except (OSError, ValueError) as exc:
                raise StoreAuthError(
                    f"gs: credentials_file {s['credentials_file']!r}: {exc}", url=self.url
                ) from exc
            client = storage.Client(
                project=project or credentials.project_id, credentials=credentials
            )
        else:
            # project None: no project looked up (objects in a bucket need none;
            # only creating or listing buckets would).
            client = storage.Client(project=project)
        # The engine owns retries: none in the transport either; a pool as
        # large as the thread pool.
        adapter = HTTPAdapter(pool_connections=POOL_SIZE, pool_maxsize=POOL_SIZE, max_retries=0)
        client._http.mount("https://", adapter)
        client._http.mount("http://", adapter)
        # The client fetches each bucket's metadata in the background to label
        # trace spans: a request per bucket the engine never asked for (and
        # one that competes with its transfers and throttling). Off.
        if getattr(client, "_bucket_metadata_cache", None) is not None:
            client._bucket_metadata_cache = None
        return client

    async def _call(self, path: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on the connector's threads, errors translated."""
        assert self._pool is not None, "connector is closed"
        loop = asyncio.get_running_loop()
        with self._errors(path):
            return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    # -- errors ------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, path: str) -> Iterator[None]:
        """Translates google-cloud's, google-auth's and requests' errors."""
        try:
            yield
        except SyncStoreError:
            raise
        except api.NotFound as exc:
            raise StoreNotFoundError(f"gs: {exc}", url=self.url, path=path) from exc
        except (api.Unauthorized, api.Forbidden) as exc:
            raise StoreAuthError(f"gs: {exc}", url=self.url, path=path) from exc
        except (api.TooManyRequests, api.ServiceUnavailable) as exc:
            raise StoreThrottledError(f"gs: {exc}", url=self.url, path=path) from exc
        except api.ServerError as exc:
            raise StoreUnavailableError(f"gs: {exc}", url=self.url, path=path) from exc
        except google.auth.exceptions.TransportError as exc:
            raise StoreUnavailableError(f"gs: {exc}", url=self.url, path=path) from exc
        except google.auth.exceptions.GoogleAuthError as exc:
            # DefaultCredentialsError, RefreshError: nothing to sign with, or refused.
            raise StoreAuthError(f"gs: {exc}", url=self.url, path=path) from exc
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise StoreUnavailableError(f"gs: {exc}", url=self.url, path=path) from exc
        except api.GoogleAPICallError as exc:
            raise SyncStoreError(f"gs: {exc}", url=self.url, path=path) from exc
        except Exception as exc:
            if type(exc).__name__ == "DataCorruption":
                raise IntegrityError(f"gs: {exc}", url=self.url, path=path) from exc
            raise

    # -- reading -----------------------------------------------------------

    def _entry(self, path: str, blob: storage.Blob) -> Entry:
        metadata = blob.metadata or {}
        kept = parse_mtime(metadata.get(META_MTIME))
        mtime = kept if kept is not None else (blob.updated.timestamp() if blob.updated else 0.0)
        hashes: dict[str, str] = {}
        if blob.crc32c:
            hashes[CRC32C] = blob.crc32c
        if blob.md5_hash and blob.component_count is None:
            hashes[MD5] = base64.b64decode(blob.md5_hash).hex()
        is_dir = path.endswith("/")
        return Entry(
            path=path.rstrip("/"),
            size=int(blob.size or 0),
            mtime=mtime,
            hashes={} if is_dir else hashes,
            etag=blob.etag,
            version=str(blob.generation) if blob.generation is not None else None,
            is_dir=is_dir,
        )

    async def list(self) -> AsyncIterator[Entry]:
        client = await self._ensure()
        iterator = client.list_blobs(
            self._root.bucket, prefix=self._root.list_prefix, page_size=self._page_size, retry=None
        )
        pages = iterator.pages

        def next_page() -> list[storage.Blob] | None:
            page = next(pages, None)
            return None if page is None else [*page]

        while (blobs := await self._call("", next_page)) is not None:
            for blob in blobs:
                path = self._root.path(blob.name)
                if path is not None:
                    yield self._entry(path, blob)

    async def _get(self, key: str, path: str) -> storage.Blob | None:
        client = await self._ensure()
        bucket = client.bucket(self._root.bucket)
        blob: storage.Blob | None = await self._call(
            path, bucket.get_blob, key, retry=None, timeout=_TIMEOUT
        )
        return blob

    async def stat(self, path: str) -> Entry | None:
        key = self._root.key(path)
        for candidate, listed in ((key, path), (key + "/", path.rstrip("/") + "/")):
            blob = await self._get(candidate, path)
            if blob is not None:
                return self._entry(listed, blob)
        if not path:
            client = await self._ensure()
            bucket = client.bucket(self._root.bucket)
            if not await self._call("", bucket.exists, retry=None, timeout=_TIMEOUT):
                raise StoreNotFoundError(
                    f"gs: bucket {self._root.bucket!r} does not exist", url=self.url
                )
        return None

    async def read(self, path: str, offset: int = 0) -> AsyncIterator[bytes]:
        blob = await self._get(self._root.key(path), path)
        if blob is None:
            raise SyncStoreError(f"gs: no object at {path!r}", url=self.url, path=path)
        size = int(blob.size or 0)
        # A fresh handle: the SDK then builds the download URL itself (quoted)
        # instead of using the store's mediaLink, which an emulator may not quote.
        client = await self._ensure()
        blob = client.bucket(self._root.bucket).blob(blob.name, generation=blob.generation)
        while offset < size:
            end = min(offset + _READ_CHUNK, size) - 1
            # One generation throughout: an object replaced mid-read fails
            # (412) rather than splicing two versions.
            chunk: bytes = await self._call(
                path,
                blob.download_as_bytes,
                start=offset,
                end=end,
                raw_download=True,
                checksum=None,
                if_generation_match=blob.generation,
                retry=None,
                timeout=_TIMEOUT,
            )
            if not chunk:
                raise SyncStoreError(f"gs: read stopped at {offset} of {size}", url=self.url)
            offset += len(chunk)
            yield chunk

    async def hash(self, path: str, kind: str) -> str | None:
        blob = await self._get(self._root.key(path), path)
        if blob is None:
            return None
        if kind == MD5:
            if blob.md5_hash and blob.component_count is None:
                return _md5_hex(blob.md5_hash)
            kept = (blob.metadata or {}).get(META_MD5)
            if kept:
                return str(kept)
        if kind == CRC32C and blob.crc32c:
            return str(blob.crc32c)
        if new_hasher(kind) is None:
            return None
        return await compute_hash(self.read(path), kind)

    # -- writing -----------------------------------------------------------

    async def write(
        self,
        path: str,
        source: SourceOpener,
        size: int,
        *,
        mtime: float,
        resume: ResumeToken | None = None,
        checkpoint: Callable[[ResumeToken], Awaitable[None]] | None = None,
    ) -> Entry:
        client = await self._ensure()
        key = self._root.key(path)
        blob = client.bucket(self._root.bucket).blob(key)
        blob.metadata = {META_MTIME: repr(float(mtime))}
        if size <= self._part_size:
            data = await read_exactly(source, size)
            digest = hashlib.md5(data, usedforsecurity=False)
            blob.md5_hash = base64.b64encode(digest.digest()).decode()  # checked by the store
            await self._call(
                path,
                blob.upload_from_string,
                data,
                content_type=_CONTENT_TYPE,
                checksum="md5",  # and by the SDK against what the store answers
                retry=None,
                timeout=_TIMEOUT,
            )
            return self._verified(path, size, blob, digest.hexdigest())
        return await self._resumable(path, key, blob, source, size, mtime, resume, checkpoint)

    def _verified(self, path: str, size: int, blob: storage.Blob, md5: str | None) -> Entry:
        entry = self._entry(path, blob)
        if entry.size != size:
            raise IntegrityError(
                f"gs: wrote {size} bytes, the store holds {entry.size}", url=self.url, path=path
            )
        stored = _md5_hex(blob.md5_hash)
        if md5 is not None and stored is not None and stored != md5:
            raise IntegrityError(
                f"gs: the store's MD5 {stored} is not the MD5 sent {md5}", url=self.url, path=path
            )
        return entry

    def _put(self, uri: str, data: bytes, content_range: str) -> requests.Response:
        assert self._client is not None
        response: requests.Response = self._client._http.put(
            uri, data=data, headers={"Content-Range": content_range}, timeout=_TIMEOUT
        )
        if response.status_code not in (200, 201, 308, 404, 410):
            raise api.from_http_response(response)  # type: ignore[no-untyped-call]
        return response

    async def _committed(self, path: str, uri: str, size: int) -> int | dict[str, Any] | None:
        """How many bytes the session holds (int), the finished object's
        resource (dict), or None when the store no longer knows the session."""
        response = await self._call(path, self._put, uri, b"", f"bytes */{size}")
        if response.status_code in (404, 410):
            return None
        if response.status_code in (200, 201):
            resource: dict[str, Any] = response.json()
            return resource
        held = response.headers.get("Range")  # "bytes=0-N", absent when nothing is held
        return int(held.rsplit("-", 1)[1]) + 1 if held else 0

    async def _resumable(
        self,
        path: str,
        key: str,
        blob: storage.Blob,
        source: SourceOpener,
        size: int,
        mtime: float,
        resume: ResumeToken | None,
        checkpoint: Callable[[ResumeToken], Awaitable[None]] | None,
    ) -> Entry:
        uri: str | None = None
        offset = 0
        part_size = self._part_size
        if resume and token_fits(resume, "session", key, size, mtime):
            state = await self._committed(path, str(resume["session"]), size)
            if isinstance(state, dict):
                blob._set_properties(state)
                return self._verified(path, size, blob, None)
            if state is not None:
                uri, offset = str(resume["session"]), state
                part_size = int(resume.get("part_size", part_size))
                log.info("gs: resuming %s at byte %s of %s", key, offset, size)
        if uri is None:
            uri = await self._call(
                path,
                blob.create_resumable_upload_session,
                content_type=_CONTENT_TYPE,
                size=size,
                retry=None,
                timeout=_TIMEOUT,
            )
        token = {"session": uri, "part_size": part_size, "key": key, "size": size, "mtime": mtime}
        if checkpoint is not None and offset == 0:
            await checkpoint(token)
        whole = hashlib.md5(usedforsecurity=False) if offset == 0 else None
        resource: dict[str, Any] | None = None
        async for data in parts_of(source(offset), part_size, size - offset):
            if whole is not None:
                whole.update(data)
            last = offset + len(data) - 1
            response = await self._call(path, self._put, uri, data, f"bytes {offset}-{last}/{size}")
            if response.status_code in (404, 410):
                raise SyncStoreError(
                    f"gs: the upload session ended ({response.status_code})",
                    url=self.url,
                    path=path,
                )
            offset = last + 1
            if response.status_code in (200, 201):
                resource = response.json()
                break
            held = response.headers.get("Range")
            if not held or int(held.rsplit("-", 1)[1]) + 1 != offset:
                # The store kept less than was sent: the engine retries with the
                # token, and the resume asks the store where to go on from.
                raise StoreUnavailableError(
                    f"gs: the store holds {held or 'nothing'} after {offset} bytes were sent",
                    url=self.url,
                    path=path,
                )
            if checkpoint is not None:
                await checkpoint(token)
        if resource is None:
            raise SyncStoreError("gs: the upload did not finish", url=self.url, path=path)
        blob._set_properties(resource)
        return self._verified(path, size, blob, whole.hexdigest() if whole else None)

    async def delete(self, path: str) -> None:
        client = await self._ensure()
        bucket = client.bucket(self._root.bucket)
        key = self._root.key(path)
        for candidate in (key, key + "/"):
            with contextlib.suppress(StoreNotFoundError):  # missing: nothing to do
                await self._call(path, bucket.blob(candidate).delete, retry=None, timeout=_TIMEOUT)
                return

    async def make_dir(self, path: str) -> None:
        client = await self._ensure()
        blob = client.bucket(self._root.bucket).blob(self._root.key(path) + "/")
        await self._call(path, blob.upload_from_string, b"", content_type=_CONTENT_TYPE, retry=None)
