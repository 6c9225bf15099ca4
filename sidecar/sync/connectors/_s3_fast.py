"""The S3 connector's per-object requests through obstore (the Rust
``object_store`` crate's Python bindings): reading an object and writing one
in a single PUT.

Why a second library beside aiobotocore: botocore spends about 1 ms of
Python CPU on each request (signing, event hooks, parsing), and an
aiohttp request adds its socket work on the event loop's thread. obstore
signs and sends in Rust, on threads of its own: 0.35 ms of this process's
CPU per 4 KiB PUT or GET against 1.2 to 1.4 ms through aiobotocore, measured
on moto (docs/benchmarks.md, "Sync"). For a run of small files that is
most of the difference.

Why not for everything: obstore has no multipart upload that can be
continued by upload id after the process dies (the engine's resume), no
HEAD with user metadata (the kept mtime), no object tags, and its paths
cannot name every S3 key: a key ending in ``/`` (an empty directory's
marker), or with an empty, ``.`` or ``..`` segment, is refused or changed
(``dir/`` becomes ``dir``), and one such key in a bucket fails a whole
listing. So listings, HEADs, multipart uploads, deletes and markers stay
with aiobotocore, and so does any key obstore cannot name
(:func:`nameable`).

It is used only when the keys are given (a profile's ``access_key_id`` and
``secret_access_key``, or ``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY``), the region is known without reading AWS's
files, and ETags are MD5s (``etag_is_md5``, the default): credentials from
files, SSO or an instance role, FIPS or dual-stack endpoints, and encrypted
buckets, go through aiobotocore, which resolves and checks them as the AWS
CLI does. ``AWS_CA_BUNDLE`` is honoured by both (obstore trusts its
certificates beside the system's).
"""

from __future__ import annotations

import atexit
import datetime
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import obstore
from obstore.store import S3Store

from sidecar.sync.connectors._base import StoreUnavailableError, SyncStoreError
from sidecar.sync.connectors._s3_rules import classify, obstore_code

if TYPE_CHECKING:
    from obstore import PutResult

__all__ = ["FastS3", "nameable"]

# The engine owns retries and backoff: obstore's own are off, so a 503
# SlowDown reaches the engine after one request.
_NO_RETRIES: Any = {"max_retries": 0, "retry_timeout": datetime.timedelta(0)}
_NO_LIMIT = datetime.timedelta(days=365)
_BOTOCORE_ONLY = ("AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT")
_POOL = "32"  # idle connections kept, as aiobotocore's pool (_cloud.POOL_SIZE)
_MESSAGE_CUT = 600
_EXIT_WAIT = 2.0  # at most, for obstore's threads to finish handing back results


def _let_handovers_finish() -> None:
    """Waits, at interpreter exit, until no thread of obstore's runtime is
    inside Python. Each result reaches the event loop from one of its threads
    through ``call_soon_threadsafe``, which lets go of the GIL to wake the
    loop; the loop may have taken the result and the program may be exiting
    before that thread has the GIL back. One that asks for it once
    finalisation has begun is ended by the interpreter, and a Rust thread
    ended that way aborts the whole process (SIGABRT, exit code 134) after
    a run that succeeded. atexit hooks run before that point, while such a
    thread can still finish."""
    deadline = time.monotonic() + _EXIT_WAIT
    me = threading.get_ident()
    while time.monotonic() < deadline:
        ours = {t.ident for t in threading.enumerate() if not isinstance(t, threading._DummyThread)}
        if all(ident == me or ident in ours for ident in sys._current_frames()):
            return
        time.sleep(0.001)  # lets go of the GIL: the thread takes it and finishes


atexit.register(_let_handovers_finish)


def nameable(key: str) -> bool:
    """Whether obstore's paths can name ``key`` exactly (else aiobotocore serves it)."""
    if not key or key.endswith("/") or key.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in key.split("/"))


def _aws_config_file() -> bool:
    path = os.environ.get("AWS_CONFIG_FILE") or str(Path.home() / ".aws" / "config")
    return Path(path).expanduser().is_file()


class FastS3:
    """An obstore S3Store for one bucket, made from a connector's settings and
    the standard AWS environment; ``None`` from :meth:`create` when the
    settings need aiobotocore's credential or region resolution."""

    def __init__(self, store: S3Store, url: str) -> None:
        self._store = store
        self._url = url

    @classmethod
    def create(
        cls, url: str, bucket: str, settings: Mapping[str, str], *, path_style: bool
    ) -> FastS3 | None:
        env = os.environ
        if any(env.get(name) for name in _BOTOCORE_ONLY):
            # FIPS or dual-stack endpoints: botocore's endpoint rules apply.
            return None
        if settings.get("access_key_id") and settings.get("secret_access_key"):
            key_id, secret = settings["access_key_id"], settings["secret_access_key"]
            token = settings.get("session_token") or None
        elif env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
            if settings.get("access_key_id") or settings.get("secret_access_key"):
                return None  # half a key in the profile: botocore says what is wrong
            key_id, secret = env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
            token = settings.get("session_token") or env.get("AWS_SESSION_TOKEN") or None
        else:
            return None
        region = settings.get("region") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        if not region:
            if _aws_config_file():
                return None  # the region may be in AWS's config file: botocore reads it
            region = "us-east-1"
        endpoint = (
            settings.get("endpoint_url")
            or env.get("AWS_ENDPOINT_URL_S3")
            or env.get("AWS_ENDPOINT_URL")
            or None
        )
        config: dict[str, Any] = {
            "access_key_id": key_id,
            "secret_access_key": secret,
            "region": region,
            "virtual_hosted_style_request": not path_style,
        }
        if token:
            config["session_token"] = token
        if endpoint:
            config["endpoint"] = endpoint.rstrip("/")
        client: Any = {
            "allow_http": bool(endpoint and endpoint.startswith("http://")),
            "connect_timeout": datetime.timedelta(seconds=10),
            # A stalled connection is one where no byte came for a minute (as
            # aiobotocore's read timeout); the whole request has no bound of
            # its own, since a read streams an object of any size (obstore's
            # default, 30 s for the whole request, would cut a large one off).
            "read_timeout": datetime.timedelta(seconds=60),
            "timeout": _NO_LIMIT,
            "pool_max_idle_per_host": _POOL,
        }
        bundle = env.get("AWS_CA_BUNDLE")
        if bundle:
            # The CA bundle botocore and the AWS CLI read (a private CA's MinIO):
            # its certificates are trusted beside the system's.
            try:
                client["root_certificate"] = Path(bundle).expanduser().read_bytes()
            except OSError:
                return None  # botocore says what is wrong with it
        try:
            store = S3Store(bucket, config=config, client_options=client, retry_config=_NO_RETRIES)  # type: ignore[arg-type]
        except Exception as exc:  # a malformed endpoint or region: aiobotocore's message is clearer
            if type(exc).__module__.startswith("obstore") or isinstance(exc, ValueError):
                return None
            raise
        return cls(store, url)

    def _error(self, exc: Exception, path: str) -> SyncStoreError:
        text = str(exc).split("\n\nDebug source:", 1)[0]
        code, status = obstore_code(text)
        if len(text) > _MESSAGE_CUT:
            text = text[:_MESSAGE_CUT] + "…"
        message = f"s3: {code or status or 'unreachable'}: {text}"
        error = classify(code, status, message, self._url, path)
        if status == 0 and type(error) is SyncStoreError:
            # No answer at all: refused, reset or timed out on the way.
            return StoreUnavailableError(message, url=self._url, path=path)
        return error

    async def put(self, key: str, path: str, data: bytes, metadata: dict[str, str]) -> str | None:
        """One PUT of ``data`` with ``metadata`` (user metadata); the ETag."""
        try:
            result: PutResult = await obstore.put_async(
                self._store, key, data, attributes=dict(metadata), use_multipart=False
            )
        except Exception as exc:
            raise self._error(exc, path) from exc
        return result["e_tag"]

    async def read(self, key: str, path: str, offset: int, chunk: int) -> AsyncIterator[bytes]:
        """The object's bytes from ``offset``; nothing when ``offset`` is its end."""
        options: Any = {"range": {"offset": offset}} if offset else None
        try:
            result = await obstore.get_async(self._store, key, options=options)
        except Exception as exc:
            error = self._error(exc, path)
            if offset and obstore_code(str(exc))[0] == "InvalidRange":
                return  # offset at the end: nothing left to read
            raise error from exc
        if result.meta["size"] - offset <= chunk:
            # One chunk's worth (a small file): one call, no stream to step through.
            try:
                whole = await result.bytes_async()
            except Exception as exc:
                raise self._error(exc, path) from exc
            if whole:
                yield bytes(whole)
            return
        stream = result.stream(min_chunk_size=chunk)
        while True:
            try:
                piece = await stream.__anext__()
            except StopAsyncIteration:
                return
            except Exception as exc:
                raise self._error(exc, path) from exc
            yield bytes(piece)
