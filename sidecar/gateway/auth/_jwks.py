"""Signing keys for ``jwt``: parsed key sets, and a JWKS URL kept fresh in the background.

:class:`KeySet` holds public keys (JWKs, or PEM converted to JWKs) by
``kid`` and builds the verifier for a (key, algorithm) pair once.
:class:`JwksCache` owns the task that keeps a JWKS URL's keys fresh:

- fetched at :meth:`~JwksCache.start`, then again after the response's
  ``Cache-Control: max-age`` (or ``refresh`` without one), kept within
  ``[refresh_min, refresh_max]``;
- a token naming an unknown ``kid`` makes one refetch (an IdP that rotated
  its keys), at most once per ``refresh_min`` whatever the number of such
  tokens, so a flood of made-up kids cannot hammer the IdP; concurrent
  requests wait on the same fetch;
- while the IdP fails (unreachable, an error status, a document that is too
  big or has no usable key), the last good keys stay in use and retries back
  off exponentially from ``refresh_min`` to ``refresh_max``;
- bounded: the document is read up to ``max_bytes`` (256 KiB) and at most
  ``max_keys`` (100) keys are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import re
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt import PyJWK
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.exceptions import PyJWKError

__all__ = [
    "DEFAULT_MAX_JWKS_BYTES",
    "DEFAULT_MAX_KEYS",
    "JwksCache",
    "JwksError",
    "KeySet",
    "SigningKey",
    "jwk_from_pem",
]

_log = logging.getLogger(__name__)

DEFAULT_MAX_JWKS_BYTES = 256 * 1024
DEFAULT_MAX_KEYS = 100
MAX_KID_LENGTH = 256

#: algorithms by JWK key type (``oct`` keys are not accepted in key sets:
#: HS* tokens are verified with the plugin's ``secret`` only)
_ALGORITHMS_BY_KTY: dict[str, frozenset[str]] = {
    "RSA": frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
    "EC": frozenset({"ES256", "ES384", "ES512"}),
    "OKP": frozenset({"EdDSA"}),
}
_CURVE_FOR_ALG = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d{1,9})\"?\s*(?:,|$)", re.IGNORECASE)


class JwksError(Exception):
    """A key set could not be fetched or read (the message says why)."""


class SigningKey:
    """One public key: its JWK, and a verifier per algorithm, built on first use."""

    __slots__ = ("_verifiers", "alg", "jwk", "kid", "kty")

    def __init__(self, jwk: Mapping[str, Any]) -> None:
        kty = jwk.get("kty")
        if kty not in _ALGORITHMS_BY_KTY:
            raise JwksError(
                f"key type {kty!r} is not accepted (RSA, EC or OKP; HS* tokens use 'secret')"
            )
        kid = jwk.get("kid")
        if kid is not None and (not isinstance(kid, str) or len(kid) > MAX_KID_LENGTH):
            raise JwksError("'kid' must be a string of at most 256 characters")
        alg = jwk.get("alg")
        if alg is not None and alg not in _ALGORITHMS_BY_KTY[kty]:
            raise JwksError(f"algorithm {alg!r} does not fit key type {kty}")
        self.jwk = dict(jwk)
        self.kty: str = kty
        self.kid: str | None = kid
        self.alg: str | None = alg
        self._verifiers: dict[str, PyJWK] = {}
        # Parse now so that a broken key is refused when the set is read, not
        # when the first token arrives.
        self.verifier(alg or self._default_alg())

    def _default_alg(self) -> str:
        if self.kty == "EC":
            crv = self.jwk.get("crv")
            return next((a for a, c in _CURVE_FOR_ALG.items() if c == crv), "ES256")
        return {"RSA": "RS256", "OKP": "EdDSA"}[self.kty]

    def fits(self, alg: str) -> bool:
        """Whether a token signed with ``alg`` may be verified with this key."""
        if self.alg is not None:
            return alg == self.alg
        if alg not in _ALGORITHMS_BY_KTY[self.kty]:
            return False
        curve = _CURVE_FOR_ALG.get(alg)
        return curve is None or self.jwk.get("crv") == curve

    def verifier(self, alg: str) -> PyJWK:
        found = self._verifiers.get(alg)
        if found is None:
            try:
                found = PyJWK(self.jwk, alg)
            except (PyJWKError, ValueError, TypeError) as exc:
                raise JwksError(f"the key cannot be read: {exc}") from None
            self._verifiers[alg] = found
        return found


def jwk_from_pem(pem: str) -> dict[str, Any]:
    """A PEM public key (RSA, EC or Ed25519/Ed448) as a JWK (no ``kid``)."""
    try:
        key = load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise JwksError(f"not a PEM public key: {exc}") from None
    if isinstance(key, rsa.RSAPublicKey):
        return dict(RSAAlgorithm.to_jwk(key, as_dict=True))
    if isinstance(key, ec.EllipticCurvePublicKey):
        return dict(ECAlgorithm.to_jwk(key, as_dict=True))
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return dict(OKPAlgorithm.to_jwk(key, as_dict=True))
    raise JwksError(f"a {type(key).__name__} cannot verify tokens (RSA, EC or Ed25519)")


class KeySet:
    """Public keys by ``kid``, plus the keys that have none (immutable once built)."""

    __slots__ = ("_by_kid", "_unnamed")

    def __init__(self, keys: Iterable[SigningKey] = ()) -> None:
        self._by_kid: dict[str, SigningKey] = {}
        unnamed: list[SigningKey] = []
        for key in keys:
            if key.kid is None:
                unnamed.append(key)
            else:
                self._by_kid.setdefault(key.kid, key)
        self._unnamed = tuple(unnamed)

    @classmethod
    def from_document(cls, document: bytes, *, max_keys: int = DEFAULT_MAX_KEYS) -> KeySet:
        """A JWKS document (``{"keys": [...]}``). Keys this gateway cannot use
        (another ``use``, an unknown type) are skipped; none usable is an error."""
        try:
            parsed = json.loads(document)
        except (ValueError, UnicodeDecodeError) as exc:
            raise JwksError(f"not JSON: {exc}") from None
        entries = parsed.get("keys") if isinstance(parsed, dict) else None
        if not isinstance(entries, list):
            raise JwksError('not a JWK set: no "keys" list')
        keys: list[SigningKey] = []
        skipped: list[str] = []
        for entry in entries:
            if len(keys) >= max_keys:
                skipped.append(f"more than {max_keys} keys")
                break
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            try:
                keys.append(SigningKey(entry))
            except JwksError as exc:
                skipped.append(f"kid {entry.get('kid')!r}: {exc}")
        if skipped:
            _log.info("JWKS: keys skipped: %s", "; ".join(skipped[:5]))
        if not keys:
            raise JwksError("the key set has no usable signing key")
        return cls(keys)

    def __len__(self) -> int:
        return len(self._by_kid) + len(self._unnamed)

    def kids(self) -> list[str]:
        return sorted(self._by_kid)

    def candidates(self, kid: str | None, alg: str, *, unnamed: bool = True) -> list[SigningKey]:
        """The keys to try for a token with ``kid`` and ``alg``: the key named
        ``kid`` when there is one, else (with ``unnamed``, or for a token without
        a kid) the keys without a kid that fit ``alg``, at most four."""
        if kid is not None:
            key = self._by_kid.get(kid)
            if key is not None:
                return [key] if key.fits(alg) else []
            if not unnamed:
                return []
        return [k for k in self._unnamed if k.fits(alg)][:4]

    def knows(self, kid: str | None) -> bool:
        return kid is None or kid in self._by_kid


def _max_age(cache_control: str | None) -> float | None:
    if not cache_control:
        return None
    lowered = cache_control.lower()
    if "no-store" in lowered or "no-cache" in lowered:
        return 0.0
    match = _MAX_AGE.search(cache_control)
    return float(match.group(1)) if match else None


class JwksCache:
    """A JWKS URL's keys, kept fresh by a task this object owns (module docstring).

    ``start()`` begins the first fetch and returns; ``close()`` cancels and
    awaits every task it started and closes its HTTP session (idempotent).
    """

    def __init__(
        self,
        url: str,
        *,
        refresh: float = 300.0,
        refresh_min: float = 30.0,
        refresh_max: float = 3600.0,
        timeout: float = 5.0,
        ca_file: Path | None = None,
        max_bytes: int = DEFAULT_MAX_JWKS_BYTES,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._refresh = refresh
        self._refresh_min = refresh_min
        self._refresh_max = max(refresh_max, refresh_min)
        self._timeout = timeout
        self._ca_file = ca_file
        self._max_bytes = max_bytes
        self._max_keys = max_keys
        self._clock = clock
        self.keys = KeySet()
        #: bumped each time a fetched key set replaces the previous one
        self.version = 0
        self.fetches = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_success: float | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Task[float | None] | None = None
        self._last_on_demand = -float("inf")
        self._state = "new"
        self._digest = b""

    @property
    def ready(self) -> bool:
        """Whether a key set was fetched at least once."""
        return self.last_success is not None

    @property
    def state(self) -> str:
        """``new`` (not started), ``running`` or ``closed``."""
        return self._state

    async def start(self) -> None:
        if self._state != "new":
            raise RuntimeError(f"a JWKS cache cannot be started when {self._state}")
        self._state = "running"
        ssl_context: ssl.SSLContext | bool = True
        if self._ca_file is not None:
            ssl_context = ssl.create_default_context(cafile=str(self._ca_file))
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            connector=aiohttp.TCPConnector(ssl=ssl_context, limit=2),
            headers={"accept": "application/jwk-set+json, application/json"},
        )
        self._task = asyncio.create_task(self._run(), name=f"jwks-refresh {self.url}")

    async def close(self) -> None:
        if self._state == "closed":
            return
        self._state = "closed"
        for task in (self._task, self._inflight):
            if task is not None and not task.done():
                task.cancel()
        for task in (self._task, self._inflight):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, JwksError):
                    await task
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> JwksCache:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait_ready(self, timeout: float) -> bool:
        """Waits for the first successful fetch (at most ``timeout`` s); whether it came."""
        deadline = self._clock() + timeout
        while not self.ready and self._state == "running":
            inflight = self._inflight
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            if inflight is not None and not inflight.done():
                await asyncio.wait({inflight}, timeout=remaining)
            else:
                await asyncio.sleep(min(0.02, remaining))
        return self.ready

    async def refetch_for(self, kid: str | None) -> KeySet:
        """The key set after one refetch for a token naming an unknown ``kid``,
        unless a refetch ran less than ``refresh_min`` ago (then the current
        set); waits on a fetch already under way."""
        if self._state != "running":
            return self.keys
        inflight = self._inflight
        if inflight is None or inflight.done():
            now = self._clock()
            if now - self._last_on_demand < self._refresh_min:
                return self.keys
            self._last_on_demand = now
            _log.info("JWKS %s: unknown kid %r, fetching the key set again", self.url, kid)
            inflight = self._fetch_coalesced()
        with contextlib.suppress(JwksError):
            await asyncio.shield(inflight)
        return self.keys

    def status(self) -> dict[str, object]:
        """What ``/status`` shows about this key set (no key material)."""
        return {
            "url": self.url,
            "kids": self.keys.kids(),
            "keys": len(self.keys),
            "fetches": self.fetches,
            "failures": self.failures,
            "last_error": self.last_error,
        }

    def _fetch_coalesced(self) -> asyncio.Task[float | None]:
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(self._fetch(), name=f"jwks-fetch {self.url}")
            # A fetch nobody waits for any more still has its error read here.
            self._inflight.add_done_callback(_consume_error)
        return self._inflight

    async def _run(self) -> None:
        consecutive_failures = 0
        while True:
            try:
                max_age = await asyncio.shield(self._fetch_coalesced())
            except JwksError:
                consecutive_failures += 1
                delay = min(
                    self._refresh_min * 2 ** min(consecutive_failures - 1, 30), self._refresh_max
                )
                delay *= random.uniform(0.8, 1.0)
            else:
                consecutive_failures = 0
                wanted = self._refresh if max_age is None else max_age
                delay = min(max(wanted, self._refresh_min), self._refresh_max)
            await asyncio.sleep(delay)

    async def _fetch(self) -> float | None:
        """Fetches and installs the key set; returns the response's max-age."""
        assert self._session is not None
        self.fetches += 1
        try:
            async with self._session.get(self.url, max_redirects=3) as response:
                if response.status != 200:
                    raise JwksError(f"HTTP status {response.status}")
                if (response.content_length or 0) > self._max_bytes:
                    raise JwksError(f"the document is bigger than {self._max_bytes} bytes")
                body = bytearray()
                while chunk := await response.content.read(65536):
                    body += chunk
                    if len(body) > self._max_bytes:
                        raise JwksError(f"the document is bigger than {self._max_bytes} bytes")
                max_age = _max_age(response.headers.get("cache-control"))
            keys = KeySet.from_document(bytes(body), max_keys=self._max_keys)
        except JwksError as exc:
            self._failed(str(exc))
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            message = str(exc) or type(exc).__name__
            self._failed(message)
            raise JwksError(message) from exc
        if self.last_error is not None:
            _log.info("JWKS %s: fetched again after failures (%d keys)", self.url, len(keys))
        self.last_error = None
        digest = hashlib.sha256(body).digest()
        if digest != self._digest:
            # A new version only when the document changed: ``jwt`` drops the
            # tokens it verified with the previous keys.
            _log.info("JWKS %s: key set now %s", self.url, ", ".join(keys.kids()) or "(no kids)")
            self._digest = digest
            self.keys = keys
            self.version += 1
        self.last_success = self._clock()
        return max_age

    def _failed(self, message: str) -> None:
        self.failures += 1
        if self.last_error is None:
            _log.warning(
                "JWKS %s: cannot fetch the key set (%s); keeping the last good keys (%d)",
                self.url,
                message,
                len(self.keys),
            )
        self.last_error = message


def _consume_error(task: asyncio.Task[float | None]) -> None:
    if not task.cancelled():
        task.exception()
