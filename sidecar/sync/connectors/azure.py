"""``az://container/prefix``: Azure Blob Storage through azure-storage-blob's aio client.

azure-storage-blob is Microsoft's kept SDK; its ``aio`` client runs on
aiohttp, so listing and transfers are native asyncio (aiohttp's pool holds
up to 100 connections). Settings: ``AZURE_STORAGE_CONNECTION_STRING`` or
the profile's ``connection_string``; or ``account_url`` with
``account_key`` (and ``account_name`` when the URL does not name it) or
``sas_token``; and ``part_size``, ``part_concurrency``, ``upload_cutoff``.

Objects up to ``upload_cutoff`` go in one Put Blob with a transactional MD5
(the service checks it and keeps it as the blob's Content-MD5). Larger ones
are staged as blocks, up to ``part_concurrency`` at once (each with its MD5
checked by the service), and committed at the end with the source mtime as
metadata and, where the source can tell its MD5 as well (a local file, a
listed MD5), the MD5 of the whole content as Content-MD5; uncommitted
blocks are invisible. The resume token names the upload's block-id prefix;
a resume asks for the uncommitted block list and stages only the blocks
missing from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobBlock, BlobProperties, ContentSettings
from azure.storage.blob.aio import BlobServiceClient, ContainerClient

from sidecar.sync.connectors._base import (
    MD5,
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
    md5_to_be_had,
)
from sidecar.sync.connectors._cloud import (
    META_MD5,
    META_MTIME,
    ObjectRoot,
    Part,
    concurrency_from,
    cutoff_from,
    digest_of,
    page_size_from,
    parse_mtime,
    part_count,
    part_size_from,
    read_exactly,
    send_parts,
    token_fits,
)
from sidecar.sync.connectors._hashing import compute_hash, new_hasher

__all__ = ["AzureConnector"]

log = logging.getLogger(__name__)

_MIN_PART = 64 * 1024
_MAX_PUT = 5000 * 1024 * 1024  # Put Blob's largest body (service version 2019-12-12 on)
_MISSING_CONTAINER = frozenset({"ContainerNotFound", "ContainerBeingDeleted"})
_AUTH_CODES = frozenset(
    {"AuthenticationFailed", "AuthorizationFailure", "AuthorizationPermissionMismatch"}
)
_THROTTLE_CODES = frozenset({"ServerBusy", "OperationTimedOut", "IngressOverLimit"})


def _md5_of(blob: BlobProperties) -> str | None:
    settings = blob.content_settings
    md5 = settings.content_md5 if settings is not None else None
    return bytes(md5).hex() if md5 else None


def _block_id(prefix: str, number: int) -> str:
    """Block ``number`` (from 1) of the upload named ``prefix``: all of one
    blob's block ids have one length, as the service requires."""
    return f"{prefix}{number - 1:06d}"


def _error_code(exc: HttpResponseError) -> str:
    # Storage's errors carry the service's x-ms-error-code (set by the SDK at
    # run time; azure-core's type does not declare it).
    return str(getattr(exc, "error_code", None) or "")


class AzureConnector:
    """An Azure Blob container (and name prefix) as a sync store."""

    listed_hashes: tuple[str, ...] = (MD5,)
    local = False

    def __init__(self, url: str, settings: Mapping[str, str] | None = None) -> None:
        self.url = url
        self._root = ObjectRoot(url, "az")
        self._settings = dict(settings or {})
        self._part_size = part_size_from(self._settings, minimum=_MIN_PART)
        self._page_size = page_size_from(self._settings, maximum=5000)
        self._part_concurrency = concurrency_from(self._settings)
        self._cutoff = cutoff_from(self._settings, part_size=self._part_size, maximum=_MAX_PUT)
        self._service: BlobServiceClient | None = None
        self._container: ContainerClient | None = None

    # -- lifecycle ---------------------------------------------------------

    async def __aenter__(self) -> AzureConnector:
        self._ensure()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        service, self._service, self._container = self._service, None, None
        if service is not None:
            await service.close()

    def _ensure(self) -> ContainerClient:
        if self._container is not None:
            return self._container
        s = self._settings
        # The engine owns retries and backoff: the SDK's own are off.
        options: dict[str, Any] = {
            "retry_total": 0,
            "max_single_put_size": self._cutoff,
            "use_env_settings": _env_names_a_proxy_or_netrc(),
        }
        conn = s.get("connection_string") or os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        try:
            if conn:
                service = BlobServiceClient.from_connection_string(conn, **options)
            elif s.get("account_url") and (s.get("account_key") or s.get("sas_token")):
                credential: Any = s.get("sas_token")
                if s.get("account_key"):
                    name = (
                        s.get("account_name") or s["account_url"].split("//", 1)[-1].split(".")[0]
                    )
                    credential = {"account_name": name, "account_key": s["account_key"]}
                service = BlobServiceClient(s["account_url"], credential=credential, **options)
            else:
                raise StoreAuthError(
                    "az: no credentials: set AZURE_STORAGE_CONNECTION_STRING, or a profile's "
                    "connection_string, or account_url with account_key or sas_token",
                    url=self.url,
                )
        except ValueError as exc:
            raise StoreAuthError(f"az: bad connection settings: {exc}", url=self.url) from exc
        self._service = service
        self._container = service.get_container_client(self._root.bucket)
        return self._container

    # -- errors ------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, path: str) -> Iterator[None]:
        """Translates azure-core's errors into the sync error tree."""
        try:
            yield
        except SyncStoreError:
            raise
        except ClientAuthenticationError as exc:
            raise StoreAuthError(f"az: {exc.message}", url=self.url, path=path) from exc
        except HttpResponseError as exc:
            code, status = _error_code(exc), exc.status_code or 0
            message = f"az: {code or status}: {exc.message}"
            if code in _MISSING_CONTAINER or (status == 404 and code != "BlobNotFound"):
                raise StoreNotFoundError(message, url=self.url, path=path) from exc
            if code in _AUTH_CODES or status in (401, 403):
                raise StoreAuthError(message, url=self.url, path=path) from exc
            if code in _THROTTLE_CODES or status in (429, 503):
                raise StoreThrottledError(message, url=self.url, path=path) from exc
            if status >= 500:
                raise StoreUnavailableError(message, url=self.url, path=path) from exc
            raise SyncStoreError(message, url=self.url, path=path) from exc
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise StoreUnavailableError(f"az: {exc.message}", url=self.url, path=path) from exc
        except AzureError as exc:
            if str(exc.message).startswith("MD5 mismatch"):
                # validate_content: what the service answered is not what was sent.
                raise IntegrityError(f"az: {exc.message}", url=self.url, path=path) from exc
            raise SyncStoreError(f"az: {exc.message}", url=self.url, path=path) from exc

    @staticmethod
    def _blob_missing(exc: SyncStoreError) -> bool:
        cause = exc.__cause__
        return isinstance(cause, ResourceNotFoundError) and _error_code(cause) == "BlobNotFound"

    # -- reading -----------------------------------------------------------

    def _entry(self, path: str, blob: BlobProperties) -> Entry:
        kept = parse_mtime((blob.metadata or {}).get(META_MTIME))
        modified = blob.last_modified.timestamp() if blob.last_modified else 0.0
        md5 = _md5_of(blob)
        is_dir = path.endswith("/")
        return Entry(
            path=path.rstrip("/"),
            size=int(blob.size or 0),
            mtime=kept if kept is not None else modified,
            hashes={MD5: md5} if md5 and not is_dir else {},
            etag=str(blob.etag).strip('"') if blob.etag else None,
            version=blob.version_id,
            is_dir=is_dir,
        )

    async def list(self) -> AsyncIterator[Entry]:
        container = self._ensure()
        pages = container.list_blobs(
            name_starts_with=self._root.list_prefix,
            include=["metadata"],
            results_per_page=self._page_size,
        ).by_page()
        while True:
            with self._errors(""):
                try:
                    page = await pages.__anext__()
                except StopAsyncIteration:
                    return
                blobs = [blob async for blob in page]
            for blob in blobs:
                path = self._root.path(blob.name)
                if path is not None:
                    yield self._entry(path, blob)

    async def _properties(self, key: str, path: str) -> BlobProperties | None:
        try:
            with self._errors(path):
                props: BlobProperties = (
                    await self._ensure().get_blob_client(key).get_blob_properties()
                )
                return props
        except SyncStoreError as exc:
            cause = exc.__cause__
            if isinstance(cause, ResourceNotFoundError) and _error_code(cause) in (
                "BlobNotFound",
                "",
            ):
                return None
            raise

    async def stat(self, path: str) -> Entry | None:
        key = self._root.key(path)
        for candidate, listed in ((key, path), (key + "/", path.rstrip("/") + "/")):
            props = await self._properties(candidate, path)
            if props is not None:
                return self._entry(listed, props)
        if not path:
            with self._errors(""):
                if not await self._ensure().exists():
                    raise StoreNotFoundError(
                        f"az: container {self._root.bucket!r} does not exist", url=self.url
                    )
        return None

    async def read(self, path: str, offset: int = 0) -> AsyncIterator[bytes]:
        client = self._ensure().get_blob_client(self._root.key(path))
        with self._errors(path):
            try:
                downloader = await client.download_blob(offset=offset or None)
            except HttpResponseError as exc:
                if offset and exc.status_code == 416:
                    return  # offset at the end: nothing left to read
                raise
        chunks = downloader.chunks()
        while True:
            with self._errors(path):
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    return
            yield chunk

    async def hash(self, path: str, kind: str) -> str | None:
        props = await self._properties(self._root.key(path), path)
        if props is None:
            return None
        if kind == MD5:
            md5 = _md5_of(props) or (props.metadata or {}).get(META_MD5)
            if md5:
                return md5
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
        key = self._root.key(path)
        metadata = {META_MTIME: repr(float(mtime))}
        if size <= self._cutoff:
            return await self._put(path, key, source, size, metadata)
        return await self._blocks(path, key, source, size, mtime, metadata, resume, checkpoint)

    async def _put(
        self, path: str, key: str, source: SourceOpener, size: int, metadata: dict[str, str]
    ) -> Entry:
        data = await read_exactly(source, size)
        digest = (await digest_of(data)).digest()
        client = self._ensure().get_blob_client(key)
        with self._errors(path):
            # The MD5 (computed once, off the loop when the body is big) goes
            # as the request's Content-MD5: the service refuses a body that
            # does not match it, and keeps it as the blob's Content-MD5.
            # (validate_content would hash the body again, on the loop.)
            result = await client.upload_blob(
                data,
                overwrite=True,
                metadata=metadata,
                transactional_content_md5=bytearray(digest),
                content_settings=ContentSettings(content_md5=bytearray(digest)),
            )
        stored = result.get("content_md5")
        if stored and bytes(stored) != digest:
            raise IntegrityError(
                f"az: the store's MD5 {bytes(stored).hex()} is not the MD5 sent {digest.hex()}",
                url=self.url,
                path=path,
            )
        # Put Blob's answer has what a listing would show (our metadata's
        # mtime, the ETag, the MD5): no second request.
        return Entry(
            path=path,
            size=size,
            mtime=float(metadata[META_MTIME]),
            hashes={MD5: digest.hex()},
            etag=str(result.get("etag", "")).strip('"') or None,
            version=result.get("version_id"),
        )

    async def _blocks(
        self,
        path: str,
        key: str,
        source: SourceOpener,
        size: int,
        mtime: float,
        metadata: dict[str, str],
        resume: ResumeToken | None,
        checkpoint: Callable[[ResumeToken], Awaitable[None]] | None,
    ) -> Entry:
        client = self._ensure().get_blob_client(key)
        prefix = uuid.uuid4().hex[:16]
        part_size = self._part_size
        held: set[int] = set()  # numbers (from 1) of whole blocks staged already
        if resume and token_fits(resume, "blocks", key, size, mtime):
            theirs, their_size = str(resume["blocks"]), int(resume.get("part_size", part_size))
            with self._errors(path):
                try:
                    _, uncommitted = await client.get_block_list("uncommitted")
                except ResourceNotFoundError:
                    uncommitted = []  # no blob and no blocks yet
            sizes = {b.id: b.size for b in uncommitted}
            # Blocks were in flight together: any whole one counts, not only
            # a run from the first; the rest is staged again.
            for number in range(1, part_count(size, their_size) + 1):
                whole_size = min(their_size, size - (number - 1) * their_size)
                if sizes.get(_block_id(theirs, number)) == whole_size:
                    held.add(number)
            if held:
                prefix, part_size = theirs, their_size
                log.info("az: resuming %s: %s blocks staged", key, len(held))
        token = {"blocks": prefix, "part_size": part_size, "key": key, "size": size, "mtime": mtime}
        if checkpoint is not None:
            await checkpoint(token)  # before any block: a resume finds them all
        # The whole content's MD5, kept as the blob's Content-MD5, is a second
        # pass over every byte beside the blocks' own: taken only where the
        # source could tell its MD5 too (a local file, a listed MD5), which
        # it is then checked against before anything is visible. A blob from
        # a source without one (an S3 multipart object, an SFTP file) has
        # none either, and hash() reads it.
        whole = hashlib.md5(usedforsecurity=False) if not held and md5_to_be_had(source) else None

        async def send(number: int, part: Part, digest: bytes) -> None:
            with self._errors(path):
                # The MD5 computed off the loop goes as the block's
                # Content-MD5, which the service checks (validate_content
                # would hash the block again, on the loop). The block goes
                # as the pieces it was read in: joining them into one buffer
                # would copy every byte once more, and the HTTP client again
                # to put the headers before it.
                await client.stage_block(
                    _block_id(prefix, number),
                    part.stream(),  # type: ignore[arg-type]  # the aio client streams it
                    length=len(part),
                    transactional_content_md5=digest,
                )
            if checkpoint is not None:
                await checkpoint(token)  # the same token: a block more is staged

        await send_parts(
            source,
            size,
            part_size,
            held=held,
            concurrency=self._part_concurrency,
            whole=whole,
            send=send,
        )
        if whole is not None:
            told = source.listed_md5 if isinstance(source, Source) else None
            if told and told != whole.hexdigest():
                raise IntegrityError(
                    f"az: the source's bytes have MD5 {whole.hexdigest()}, not the {told} it"
                    " listed (changed while being read?); nothing committed",
                    url=self.url,
                    path=path,
                )
            metadata[META_MD5] = whole.hexdigest()
        settings = ContentSettings(content_md5=bytearray(whole.digest()) if whole else None)
        blocks = [
            BlobBlock(block_id=_block_id(prefix, n))
            for n in range(1, part_count(size, part_size) + 1)
        ]
        with self._errors(path):
            await client.commit_block_list(blocks, metadata=metadata, content_settings=settings)
        entry = await self.stat(path)
        if entry is None or entry.size != size:
            got = "nothing" if entry is None else f"{entry.size} bytes"
            raise IntegrityError(
                f"az: wrote {size} bytes, the store holds {got}", url=self.url, path=path
            )
        return entry

    async def delete(self, path: str) -> None:
        container = self._ensure()
        key = self._root.key(path)
        for candidate in (key, key + "/"):
            try:
                with self._errors(path):
                    await container.delete_blob(candidate)
                return
            except SyncStoreError as exc:
                if not self._blob_missing(exc):
                    raise

    async def make_dir(self, path: str) -> None:
        client = self._ensure().get_blob_client(self._root.key(path) + "/")
        with self._errors(path):
            await client.upload_blob(b"", overwrite=True)


_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "WS_PROXY", "WSS_PROXY")


def _env_names_a_proxy_or_netrc() -> bool:
    """Whether the SDK's HTTP session must honour the environment: a proxy
    variable (either case) or a netrc file. Honouring it costs two thread hops
    per request (the netrc file read and the proxy looked up each time), a
    third of a small blob's CPU here, so it is on only when there is
    something to honour."""
    if any(os.environ.get(name) or os.environ.get(name.lower()) for name in _PROXY_VARIABLES):
        return True
    netrc = os.environ.get("NETRC")
    candidates = [Path(netrc)] if netrc else [Path.home() / ".netrc", Path.home() / "_netrc"]
    return any(path.is_file() for path in candidates)
