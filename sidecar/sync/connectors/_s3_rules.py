"""What S3 says and what it means: its error codes mapped once onto the sync
error tree (for botocore's ClientError and for obstore's errors alike), and
which ETags are MD5s.

A single-part object's ETag is the MD5 of its content (without SSE-KMS or
SSE-C); a multipart object's is ``md5(md5(part 1) ‖ … ‖ md5(part N))-N``, a
hash of the parts' hashes that equals no hash of the content.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # botocore is imported only when a request goes through it
    from botocore.exceptions import ClientError

from sidecar.sync.connectors._base import (
    IntegrityError,
    StoreAuthError,
    StoreNotFoundError,
    StoreThrottledError,
    StoreUnavailableError,
    SyncStoreError,
)

__all__ = [
    "MISSING_OBJECT",
    "classify",
    "composite_etag",
    "error_code",
    "obstore_code",
    "plain_md5",
    "translate",
]

AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "InvalidClientTokenId",
        "AuthorizationHeaderMalformed",
    }
)
THROTTLE_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "ServiceUnavailable"}
)
MISSING_OBJECT = frozenset({"NoSuchKey", "404", "NotFound"})
# The body the store got is not the one whose Content-MD5 (or signed SHA-256)
# came with it: refused, nothing stored, worth sending again.
DIGEST_CODES = frozenset({"BadDigest", "XAmzContentSHA256Mismatch"})


def error_code(exc: ClientError) -> tuple[str, int]:
    error = exc.response.get("Error", {})
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return str(error.get("Code", "")), status


def plain_md5(etag: str | None) -> str | None:
    """The MD5 a single-part ETag is, or None for a multipart (``…-N``) one."""
    if not etag:
        return None
    value = etag.strip('"').lower()
    if len(value) == 32 and all(c in "0123456789abcdef" for c in value):
        return value
    return None


def composite_etag(part_md5s: list[bytes]) -> str:
    """The ETag S3 gives a multipart object: MD5 of the parts' MD5s, ``-N``."""
    digest = hashlib.md5(b"".join(part_md5s), usedforsecurity=False).hexdigest()
    return f"{digest}-{len(part_md5s)}"


def translate(exc: ClientError, url: str, path: str) -> SyncStoreError:
    """The sync error for what S3 answered (raised ``from`` it by the caller)."""
    code, status = error_code(exc)
    return classify(code, status, f"s3: {code or status}: {exc}", url, path)


def classify(code: str, status: int, message: str, url: str, path: str) -> SyncStoreError:
    """The sync error for S3's error ``code`` and HTTP ``status``."""
    if code == "NoSuchBucket":
        return StoreNotFoundError(message, url=url, path=path)
    if code in DIGEST_CODES:
        return IntegrityError(message, url=url, path=path)
    if code in AUTH_CODES or status in (401, 403):
        return StoreAuthError(message, url=url, path=path)
    if code in THROTTLE_CODES or status in (429, 503):
        return StoreThrottledError(message, url=url, path=path)
    if status >= 500:
        return StoreUnavailableError(message, url=url, path=path)
    return SyncStoreError(message, url=url, path=path)


_STATUS = re.compile(r"status code: (\d{3})")
_CODE = re.compile(r"<Code>([A-Za-z0-9.]+)</Code>")


def obstore_code(message: str) -> tuple[str, int]:
    """S3's error code and HTTP status in an obstore error's message (which
    quotes the answer: ``… status code: 503 Service Unavailable: <Error><Code>
    SlowDown</Code>…``); ("", 0) when no answer came (refused, reset, timed out)."""
    status = _STATUS.search(message)
    code = _CODE.search(message)
    return (code.group(1) if code else ""), (int(status.group(1)) if status else 0)
