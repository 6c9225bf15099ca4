"""``s3://bucket/prefix``: Amazon S3 and S3-compatible stores through aiobotocore,
with obstore for single-request reads and writes (``_s3_fast`` says why and
when).

aiobotocore is botocore (the SDK the AWS CLI and boto3 use: signing, endpoint
and credential resolution, paginators) on aiohttp, so listing and transfers
are native asyncio with one connection pool. Settings come from the standard
AWS environment and files (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL``, ``AWS_REGION``, profiles), overridden by a job's
profile keys ``endpoint_url``, ``access_key_id``, ``secret_access_key``,
``session_token``, ``region``, ``part_size``, ``part_concurrency``,
``upload_cutoff``, ``etag_is_md5``, ``payload_signing``.

Hashes: a single-part object's ETag is the MD5 of its content (unless the
bucket encrypts with SSE-KMS or SSE-C: ``etag_is_md5=false`` then); a
multipart ETag (``…-N``) is the MD5 of the parts' MD5s and never reported as
an MD5. The MD5 of the whole content, computed while uploading, is kept in
metadata ``md5`` for a single PUT and, for a multipart upload (whose
metadata is fixed when it starts), in the object's tag ``md5``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import email.utils
import hashlib
import io
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

from sidecar.sync.connectors._base import (
    MD5,
    Entry,
    IntegrityError,
    ResumeToken,
    SourceOpener,
    StoreAuthError,
    StoreNotFoundError,
    StoreUnavailableError,
    SyncStoreError,
    known_md5,
)
from sidecar.sync.connectors._cloud import (
    META_MD5,
    META_MTIME,
    POOL_SIZE,
    ObjectRoot,
    Part,
    concurrency_from,
    cutoff_from,
    digest_of,
    exactly,
    flag_setting,
    in_memory_from,
    page_size_from,
    parse_mtime,
    part_count,
    part_size_from,
    read_exactly,
    send_parts,
    token_fits,
)
from sidecar.sync.connectors._hashing import compute_hash, new_hasher
from sidecar.sync.connectors._s3_fast import FastS3, nameable
from sidecar.sync.connectors._s3_rules import (
    MISSING_OBJECT,
    composite_etag,
    error_code,
    plain_md5,
    translate,
)
from sidecar.sync.connectors._source import SourceFailed, guarded, source_errors_unwrapped

__all__ = ["S3Connector"]

_Parts = list[dict[str, Any]]  # ListParts entries (``list`` is a method name below)

log = logging.getLogger(__name__)

_MIN_PART = 5 * 1024 * 1024  # S3's smallest part but the last
_MAX_PUT = 5 * 1024**3  # S3's largest single PUT
# upload_cutoff's default: objects up to 200 MiB go in one PUT (streamed when
# too big for memory), a common default among sync tools; a multipart upload
# costs a create, a complete, a HEAD and a tag beside its parts
# (docs/benchmarks.md, "Sync").
_STREAMED_CUTOFF = 200 * 1024 * 1024
_READ_CHUNK = 1024 * 1024


def _encrypted(answer: Mapping[str, Any]) -> bool:
    """Whether S3's answer is for an object whose ETag is no MD5 even in one part."""
    return answer.get("ServerSideEncryption") == "aws:kms" or bool(
        answer.get("SSECustomerAlgorithm")
    )


class _StreamedBody:
    """A request body botocore takes (it has ``read``, as a file has) and
    aiohttp streams (it is an async iterable). The source's errors come out
    :func:`guarded`; ``failure`` keeps the first, which aiohttp reports only
    as a failed connection."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self.failure: SourceFailed | None = None

    def read(self, size: int = -1) -> bytes:
        raise io.UnsupportedOperation("a streamed body is read by iterating it")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in guarded(self._chunks):
                yield chunk
        except SourceFailed as failed:
            self.failure = failed
            raise


class S3Connector:
    """An S3 bucket (and key prefix) as a sync store."""

    listed_hashes: tuple[str, ...]
    local = False

    def __init__(self, url: str, settings: Mapping[str, str] | None = None) -> None:
        self.url = url
        self._root = ObjectRoot(url, "s3")
        self._settings = dict(settings or {})
        self._part_size = part_size_from(self._settings, minimum=_MIN_PART)
        self._page_size = page_size_from(self._settings, maximum=1000)
        self._part_concurrency = concurrency_from(self._settings)
        self._cutoff = cutoff_from(
            self._settings, part_size=self._part_size, maximum=_MAX_PUT, default=_STREAMED_CUTOFF
        )
        held = in_memory_from(self._settings, part_size=self._part_size)
        self._in_memory = min(held, self._cutoff)
        self._etag_is_md5 = flag_setting(self._settings, "etag_is_md5", True)
        self._payload_signing = flag_setting(self._settings, "payload_signing", False)
        self.listed_hashes = (MD5,) if self._etag_is_md5 else ()
        self._exit: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        self._opening = asyncio.Lock()  # one client, however many calls open it at once
        self._fast: FastS3 | None = None  # obstore, for single-request reads and writes
        self._fast_checked = False

    # -- lifecycle ---------------------------------------------------------

    async def __aenter__(self) -> S3Connector:
        # Each library's client is made when a request first needs it (no I/O
        # either way): a run that needs only obstore never loads botocore.
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        stack, self._exit, self._client = self._exit, None, None
        if stack is not None:
            await stack.aclose()

    async def _ensure(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._opening:
            if self._client is None:
                await self._open()
        return self._client

    def _fast_store(self) -> FastS3 | None:
        """The obstore side (``_s3_fast``), made on first use; None when these
        settings need aiobotocore for every request."""
        if not self._fast_checked:
            self._fast_checked = True
            if self._etag_is_md5:
                addressing = self._settings.get("addressing_style") or self._default_addressing()
                # "auto" as botocore reads it: virtual-hosted unless the bucket's
                # name cannot be a host name under TLS (it has a dot).
                path_style = addressing == "path" or (
                    addressing == "auto" and "." in self._root.bucket
                )
                self._fast = FastS3.create(
                    self.url, self._root.bucket, self._settings, path_style=path_style
                )
        return self._fast

    async def _open(self) -> None:
        # aiobotocore (and botocore, ~0.5 s to import) only when a request
        # needs it: a run that only reads and writes small objects never does.
        import aiobotocore.session
        from aiobotocore.config import AioConfig
        from botocore.handlers import convert_body_to_file_like_object

        s = self._settings
        session = aiobotocore.session.get_session()
        parsers = session.get_component("response_parser_factory")
        parsers.set_parser_defaults(timestamp_parser=_timestamp)
        # The engine owns retries and backoff: botocore's own are turned off
        # (one attempt), so a 503 SlowDown reaches the engine at once.
        config = AioConfig(
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=POOL_SIZE,
            # Every PUT carries Content-MD5, which S3 checks: botocore's own
            # CRC32 of every body (its default) would be a second pass for
            # nothing, so only where S3 requires one (DeleteObjects).
            request_checksum_calculation="when_required",
            connect_timeout=10,
            read_timeout=60,
            s3={
                "addressing_style": s.get("addressing_style") or self._default_addressing(),
                # Every body goes with its Content-MD5, which the store checks;
                # the SHA-256 of the body in the signature is a second hash,
                # on the event loop, that botocore adds only on plain HTTP
                # (over HTTPS it already sends UNSIGNED-PAYLOAD with a
                # Content-MD5). ``payload_signing: true`` turns it on.
                "payload_signing_enabled": self._payload_signing,
            },
        )
        kwargs: dict[str, Any] = {"config": config}
        for ours, theirs in (
            ("endpoint_url", "endpoint_url"),
            ("region", "region_name"),
            ("access_key_id", "aws_access_key_id"),
            ("secret_access_key", "aws_secret_access_key"),
            ("session_token", "aws_session_token"),
        ):
            if s.get(ours):
                kwargs[theirs] = s[ours]
        if "region_name" not in kwargs:
            # AWS_REGION is what the AWS CLI v2 and the other SDKs read;
            # botocore reads only AWS_DEFAULT_REGION and ~/.aws/config.
            region = os.environ.get("AWS_REGION") or session.get_config_variable("region")
            kwargs["region_name"] = region or "us-east-1"
        stack = contextlib.AsyncExitStack()
        with self._errors(""):
            client = await stack.enter_async_context(session.create_client("s3", **kwargs))
        # botocore wraps a bytes Body in a BytesIO (to rewind it for its own
        # retries, which are off here), and aiohttp then copies it whole, on
        # the event loop, to get at its buffer: 8 MiB per part for nothing.
        # The bytes are sent as they are.
        for operation in ("PutObject", "UploadPart"):
            client.meta.events.unregister(
                f"before-parameter-build.s3.{operation}", convert_body_to_file_like_object
            )
        self._client = client
        self._exit = stack

    def _default_addressing(self) -> str:
        # S3-compatible servers and emulators expect host/bucket/key; AWS
        # prefers bucket.host/key, which botocore's "auto" picks there.
        custom = (
            self._settings.get("endpoint_url")
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        return "path" if custom else "auto"

    # -- errors ------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, path: str) -> Iterator[None]:
        """Translates botocore's and aiohttp's errors into the sync error tree."""
        try:
            yield
        except SyncStoreError:
            raise
        except Exception as exc:
            error = self._translated(exc, path)
            if error is None:
                raise
            raise error from exc

    def _translated(self, exc: Exception, path: str) -> SyncStoreError | None:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        if isinstance(exc, ClientError):
            return translate(exc, self.url, path)
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return StoreAuthError(f"s3: {exc}", url=self.url, path=path)
        if isinstance(exc, BotoCoreError | OSError | TimeoutError) or type(
            exc
        ).__module__.startswith("aiohttp"):
            # EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError,
            # ConnectionClosedError and aiohttp's connection errors (OSError).
            return StoreUnavailableError(f"s3: {exc}", url=self.url, path=path)
        return None

    @staticmethod
    def _code(exc: SyncStoreError) -> str:
        """S3's error code behind a translated botocore error ("" for others)."""
        cause = exc.__cause__
        if cause is None or not type(cause).__module__.startswith("botocore"):
            return ""
        from botocore.exceptions import ClientError

        return error_code(cause)[0] if isinstance(cause, ClientError) else ""

    # -- reading -----------------------------------------------------------

    def _entry(
        self, path: str, size: int, mtime: float, etag: str | None, *, encrypted: bool = False
    ) -> Entry:
        md5 = plain_md5(etag) if self._etag_is_md5 and not encrypted else None
        is_dir = path.endswith("/")
        return Entry(
            path=path.rstrip("/"),
            size=size,
            mtime=mtime,
            hashes={MD5: md5} if md5 and not is_dir else {},
            etag=etag.strip('"') if etag else None,
            is_dir=is_dir,
        )

    async def list(self) -> AsyncIterator[Entry]:
        # S3 listings carry no user metadata: mtime is LastModified here, while
        # stat() and write() (a HEAD) give the source mtime kept in metadata.
        # The engine tells changes by ETag and MD5, which agree between them.
        client = await self._ensure()
        paginator = client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self._root.bucket,
            Prefix=self._root.list_prefix,
            PaginationConfig={"PageSize": self._page_size},
        )
        iterator = pages.__aiter__()
        while True:
            with self._errors(""):
                try:
                    page = await iterator.__anext__()
                except StopAsyncIteration:
                    return
            for item in page.get("Contents", ()):
                path = self._root.path(item["Key"])
                if path is None:
                    continue
                yield self._entry(
                    path, int(item["Size"]), item["LastModified"].timestamp(), item.get("ETag")
                )

    async def _head(self, key: str, path: str) -> dict[str, Any] | None:
        client = await self._ensure()
        try:
            with self._errors(path):
                result: dict[str, Any] = await client.head_object(Bucket=self._root.bucket, Key=key)
                return result
        except SyncStoreError as exc:
            if self._code(exc) in MISSING_OBJECT:
                return None
            raise

    async def stat(self, path: str) -> Entry | None:
        key = self._root.key(path)
        for candidate, listed in ((key, path), (key + "/", path.rstrip("/") + "/")):
            head = await self._head(candidate, path)
            if head is not None:
                # HEAD has the metadata a listing lacks: the kept source mtime.
                kept = parse_mtime(head.get("Metadata", {}).get(META_MTIME))
                mtime = kept if kept is not None else head["LastModified"].timestamp()
                size, etag = int(head["ContentLength"]), head.get("ETag")
                return self._entry(listed, size, mtime, etag, encrypted=_encrypted(head))
        if not path:
            await self._check_bucket()
        return None

    async def _check_bucket(self) -> None:
        client = await self._ensure()
        try:
            with self._errors(""):
                await client.head_bucket(Bucket=self._root.bucket)
        except SyncStoreError as exc:
            cause = exc.__cause__
            response = getattr(cause, "response", None)
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") if response else 0
            if status == 404:
                raise StoreNotFoundError(
                    f"s3: bucket {self._root.bucket!r} does not exist", url=self.url
                ) from cause
            raise

    async def read(self, path: str, offset: int = 0) -> AsyncIterator[bytes]:
        key = self._root.key(path)
        fast = self._fast_store()
        if fast is not None and nameable(key):
            async for chunk in fast.read(key, path, offset, _READ_CHUNK):
                yield chunk
            return
        client = await self._ensure()
        kwargs: dict[str, Any] = {"Bucket": self._root.bucket, "Key": self._root.key(path)}
        if offset:
            kwargs["Range"] = f"bytes={offset}-"
        try:
            with self._errors(path):
                response = await client.get_object(**kwargs)
        except SyncStoreError as exc:
            if offset and self._code(exc) == "InvalidRange":
                return  # offset at the end: nothing left to read
            raise
        async with response["Body"] as body:
            while True:
                with self._errors(path):
                    chunk = await body.read(_READ_CHUNK)
                if not chunk:
                    return
                yield chunk

    async def hash(self, path: str, kind: str) -> str | None:
        if kind == MD5:
            head = await self._head(self._root.key(path), path)
            if head is None:
                return None
            kept = head.get("Metadata", {}).get(META_MD5)
            if kept:
                return str(kept)
            plain = plain_md5(head.get("ETag"))
            if plain and not _encrypted(head) and self._etag_is_md5:
                return plain
            tagged = await self._md5_tag(path)
            if tagged:
                return tagged
        if new_hasher(kind) is None:
            return None
        if await self._head(self._root.key(path), path) is None:
            return None
        return await compute_hash(self.read(path), kind)

    async def _md5_tag(self, path: str) -> str | None:
        client = await self._ensure()
        try:
            with self._errors(path):
                result = await client.get_object_tagging(
                    Bucket=self._root.bucket, Key=self._root.key(path)
                )
        except StoreAuthError:
            return None  # no s3:GetObjectTagging: the hash is computed by reading instead
        for tag in result.get("TagSet", ()):
            if tag.get("Key") == META_MD5:
                return str(tag.get("Value"))
        return None

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
        md5: str | None = None
        if self._in_memory < size <= self._cutoff:
            # Too big to hold, small enough for one request: one streamed PUT
            # when the MD5 can go ahead of the body (the store checks it).
            md5 = await known_md5(source)
        if size <= self._in_memory or md5 is not None:
            if resume and resume.get("upload_id"):
                await self._abort(path, key, str(resume["upload_id"]))  # one request now
            if md5 is not None:
                return await self._streamed_put(path, key, source, size, metadata, md5)
            return await self._put(path, key, source, size, metadata)
        return await self._multipart(path, key, source, size, mtime, metadata, resume, checkpoint)

    async def _put(
        self, path: str, key: str, source: SourceOpener, size: int, metadata: dict[str, str]
    ) -> Entry:
        data = await read_exactly(source, size)
        digest = await digest_of(data)
        metadata[META_MD5] = digest.hexdigest()
        fast = self._fast_store()
        if fast is not None and nameable(key):
            # obstore signs the body's SHA-256 (S3 refuses a body that does not
            # match it); the ETag it answers is checked against the MD5 below.
            etag = await fast.put(key, path, data, metadata)
            encrypted = False
            if plain_md5(etag) != digest.hexdigest():
                # Not the MD5 sent: an encrypting bucket (whose ETags are no
                # MD5s), or another content. The HEAD says which.
                head = await self._head(key, path)
                encrypted = head is not None and _encrypted(head)
        else:
            etag, encrypted = await self._put_object(path, key, data, digest.digest(), metadata)
        return await self._stored(path, size, metadata, etag, encrypted=encrypted)

    async def _put_object(
        self, path: str, key: str, body: Any, md5: bytes, metadata: dict[str, str], **more: Any
    ) -> tuple[str | None, bool]:
        """One PutObject through aiobotocore with ``md5`` as its Content-MD5;
        the ETag answered and whether the bucket encrypts (its ETags no MD5s)."""
        client = await self._ensure()
        with self._errors(path):
            response = await client.put_object(
                Bucket=self._root.bucket,
                Key=key,
                Body=body,
                ContentMD5=base64.b64encode(md5).decode(),
                Metadata=metadata,
                **more,
            )
        return response.get("ETag"), _encrypted(response)

    async def _streamed_put(
        self,
        path: str,
        key: str,
        source: SourceOpener,
        size: int,
        metadata: dict[str, str],
        md5: str,
    ) -> Entry:
        """One PutObject whose body streams from the source (a chunk in memory
        at a time), with the MD5 known ahead as its Content-MD5: S3 refuses a
        body that does not match, so nothing else is ever visible."""
        metadata[META_MD5] = md5
        body = _StreamedBody(exactly(source(0), size))
        with source_errors_unwrapped():
            try:
                etag, encrypted = await self._put_object(
                    path, key, body, bytes.fromhex(md5), metadata, ContentLength=size
                )
            except Exception:
                if body.failure is not None:
                    # The source failed, not the store (aiohttp reports it as a
                    # failed connection): its error, as it raised it.
                    raise body.failure from None
                raise
        return await self._stored(path, size, metadata, etag, encrypted=encrypted)

    async def _stored(
        self,
        path: str,
        size: int,
        metadata: dict[str, str],
        etag: str | None,
        *,
        encrypted: bool,
    ) -> Entry:
        """The entry a single PUT made, checked: its ETag is the MD5 sent."""
        sent = metadata[META_MD5]
        got = plain_md5(etag)
        if encrypted or got is None or not self._etag_is_md5:
            # The ETag is no MD5 here: ask the store what it holds.
            return await self._verified(path, size)
        if got != sent:
            raise IntegrityError(
                f"s3: stored ETag {got} is not the MD5 sent {sent}", url=self.url, path=path
            )
        # The store checked the body (Content-MD5 through aiobotocore, the
        # signed SHA-256 through obstore) and its ETag is its MD5: the object
        # is exactly what was sent, and no HEAD is needed to say so (it would
        # halve small-file throughput).
        return Entry(
            path=path,
            size=size,
            mtime=float(metadata[META_MTIME]),
            hashes={MD5: got},
            etag=etag.strip('"') if etag else None,
        )

    async def _verified(self, path: str, size: int, etag: str | None = None) -> Entry:
        entry = await self.stat(path)
        if entry is None or entry.size != size:
            got = "nothing" if entry is None else f"{entry.size} bytes"
            raise IntegrityError(
                f"s3: wrote {size} bytes, the store holds {got}", url=self.url, path=path
            )
        if etag is not None and entry.etag != etag:
            raise IntegrityError(
                f"s3: multipart ETag {entry.etag} is not {etag} (the MD5s of the parts sent)",
                url=self.url,
                path=path,
            )
        return entry

    async def _resumed_parts(self, path: str, key: str, upload_id: str) -> _Parts | None:
        """The parts an earlier upload holds (all of them, paged), or None when
        the store no longer knows the upload."""
        client = await self._ensure()
        parts: _Parts = []
        marker = 0
        while True:
            try:
                with self._errors(path):
                    page = await client.list_parts(
                        Bucket=self._root.bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumberMarker=marker,
                    )
            except SyncStoreError as exc:
                if self._code(exc) == "NoSuchUpload":
                    return None
                raise
            parts.extend(page.get("Parts", ()))
            if not page.get("IsTruncated"):
                return parts
            marker = int(page["NextPartNumberMarker"])

    async def _multipart(
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
        client = await self._ensure()
        held: dict[int, tuple[str, bytes]] = {}  # number: (etag, md5) of parts in place
        upload_id: str | None = None
        part_size = self._part_size
        if (
            resume
            and resume.get("upload_id")
            and not token_fits(resume, "upload_id", key, size, mtime)
        ):
            await self._abort(path, key, str(resume["upload_id"]))
        elif resume and token_fits(resume, "upload_id", key, size, mtime):
            part_size = int(resume.get("part_size", part_size))
            listed = await self._resumed_parts(path, key, str(resume["upload_id"]))
            if listed is not None:
                upload_id = str(resume["upload_id"])
                last = part_count(size, part_size)
                # Parts were in flight together: any whole part counts, not
                # only a run from the first; the rest is sent again.
                for part in listed:
                    number, md5 = int(part["PartNumber"]), plain_md5(part.get("ETag"))
                    whole_size = min(part_size, size - (number - 1) * part_size)
                    if md5 and 1 <= number <= last and int(part["Size"]) == whole_size:
                        held[number] = (str(part["ETag"]), bytes.fromhex(md5))
                log.info(
                    "s3: resuming %s: %s of %s parts held by upload %s",
                    key,
                    len(held),
                    last,
                    upload_id,
                )
        if upload_id is None:
            with self._errors(path):
                created = await client.create_multipart_upload(
                    Bucket=self._root.bucket, Key=key, Metadata=metadata
                )
            upload_id = str(created["UploadId"])
        token = self._token(upload_id, part_size, key, size, mtime)
        if checkpoint is not None:
            await checkpoint(token)
        whole = hashlib.md5(usedforsecurity=False) if not held else None

        async def send(number: int, part: Part, digest: bytes) -> tuple[str, bytes]:
            with self._errors(path):
                response = await client.upload_part(
                    Bucket=self._root.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=part.joined(),
                    ContentMD5=base64.b64encode(digest).decode(),
                )
            if checkpoint is not None:
                await checkpoint(token)  # the same token: a part more is in place
            return str(response["ETag"]), digest

        sent = await send_parts(
            source,
            size,
            part_size,
            held=held.keys(),
            concurrency=self._part_concurrency,
            whole=whole,
            send=send,
        )
        done = sorted({**held, **sent}.items())
        with self._errors(path):
            await client.complete_multipart_upload(
                Bucket=self._root.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, (e, _) in done]},
            )
        entry = await self._verified(path, size, composite_etag([m for _, (_, m) in done]))
        if whole is not None:
            # Multipart metadata is fixed when the upload starts: the whole MD5
            # (known only now) goes in a tag. After a resume the held parts were
            # not read again, so there is none and hash() reads the object.
            with self._errors(path):
                await client.put_object_tagging(
                    Bucket=self._root.bucket,
                    Key=key,
                    Tagging={"TagSet": [{"Key": META_MD5, "Value": whole.hexdigest()}]},
                )
        return entry

    @staticmethod
    def _token(upload_id: str, part_size: int, key: str, size: int, mtime: float) -> ResumeToken:
        return {
            "upload_id": upload_id,
            "part_size": part_size,
            "key": key,
            "size": size,
            "mtime": mtime,
        }

    async def _abort(self, path: str, key: str, upload_id: str) -> None:
        """Drops an upload that will not be continued (its parts cost storage)."""
        client = await self._ensure()
        # Gone already, or not ours to drop: no harm either way.
        with contextlib.suppress(SyncStoreError), self._errors(path):
            await client.abort_multipart_upload(
                Bucket=self._root.bucket, Key=key, UploadId=upload_id
            )

    async def delete(self, path: str) -> None:
        client = await self._ensure()
        key = self._root.key(path)
        with self._errors(path):
            await client.delete_objects(
                Bucket=self._root.bucket,
                Delete={"Objects": [{"Key": key}, {"Key": key + "/"}], "Quiet": True},
            )

    async def make_dir(self, path: str) -> None:
        client = await self._ensure()
        with self._errors(path):
            await client.put_object(
                Bucket=self._root.bucket, Key=self._root.key(path) + "/", Body=b""
            )


def _timestamp(value: Any) -> datetime.datetime:
    """A response's timestamp: what botocore's own parser gives, without its
    general-purpose date parsing (a tenth of a small object's CPU here) for
    the two forms S3 sends, HTTP dates (``Last-Modified``) and ISO 8601 with
    a zone (listings)."""
    if isinstance(value, str):
        try:
            parsed = (
                email.utils.parsedate_to_datetime(value)
                if value.endswith("GMT")
                else datetime.datetime.fromisoformat(value)
            )
        except (TypeError, ValueError):
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed
    from botocore.utils import parse_timestamp

    fallback: datetime.datetime = parse_timestamp(value)
    return fallback
