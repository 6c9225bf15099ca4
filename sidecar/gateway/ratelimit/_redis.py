"""The Redis store that ``scope: global`` buckets share between gateway replicas.

One decision is one ``EVALSHA`` of a Lua script that does the whole token
bucket atomically on the server, with the server's clock (``TIME``), so the
replicas' clocks never enter into it. The bucket is the same single number as
the local one (see ``_local``), in microseconds, and its key expires when the
bucket is full again, so idle keys cost Redis nothing.

A store that is down must not slow every request down by its timeout: the
first failure (refused, reset, or no answer within ``timeout``) opens a
circuit; decisions then skip the store and apply their policy's
``on_store_error`` at once, while the store's own task probes it every
``probe_interval`` and closes the circuit when it answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from sidecar.gateway.ratelimit._config import RateLimitStoreConfig

__all__ = ["BUCKET_SCRIPT", "RateLimitStore"]

log = logging.getLogger(__name__)

#: KEYS[1]: the bucket; ARGV[1]: microseconds per token; ARGV[2]: capacity times that.
#: Returns {1, µs until full} when allowed, {0, µs until full} when refused.
BUCKET_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local ahead = tat + interval - now
if ahead > tolerance then return {0, tat - now} end
redis.call('SET', KEYS[1], string.format('%.0f', now + ahead), 'PX', math.ceil(ahead / 1000) + 1)
return {1, ahead}
"""

_STORE_ERRORS = (RedisError, OSError, TimeoutError)


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RateLimitStore:
    """The connection pool to the ``rate_limit_store`` and the task that probes it
    while it is down. ``start()`` opens nothing yet (connections are made on
    demand); ``close()`` is idempotent. Counters: ``errors`` (failed
    decisions), ``skipped`` (decisions not asked while the circuit was open),
    ``outages`` (times the circuit opened)."""

    def __init__(
        self, config: RateLimitStoreConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self._clock = clock
        self._client: Redis | None = None
        self._script: Any = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._down_since: float | None = None
        self._closed = False
        self.errors = 0
        self.skipped = 0
        self.outages = 0

    @property
    def available(self) -> bool:
        """False while the circuit is open (the last call failed and no probe succeeded)."""
        return self._down_since is None

    def key_prefix(self, route: str, policy: int) -> str:
        """``<key_prefix>:<route>:<policy>:``; the request's key completes it."""
        return f"{self.config.key_prefix}:{route}:{policy}:"

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("the rate limit store is closed")
        if self._client is not None:
            return
        timeout = self.config.timeout
        pool = BlockingConnectionPool.from_url(
            self.config.url,
            max_connections=self.config.max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # Never retry inside a decision: a failure opens the circuit instead.
            retry=Retry(NoBackoff(), 0),
        )
        self._client = Redis(connection_pool=pool)
        self._script = self._client.register_script(BUCKET_SCRIPT)
        self._task = asyncio.create_task(self._probe(), name="rate-limit-store-probe")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
            await client.connection_pool.aclose()

    async def take(self, key: str, interval_us: int, tolerance_us: int) -> tuple[bool, int] | None:
        """Takes one token from the bucket ``key``: (allowed, µs until the bucket is
        full), or None when the store could not be asked (down, or the circuit open)."""
        if self._down_since is not None or self._script is None:
            self.skipped += 1
            return None
        try:
            async with asyncio.timeout(self.config.timeout):
                allowed, ahead = await self._script(keys=[key], args=[interval_us, tolerance_us])
        except _STORE_ERRORS as exc:
            self._trip(exc)
            return None
        return bool(allowed), int(ahead)

    def _trip(self, exc: BaseException) -> None:
        self.errors += 1
        if self._down_since is not None:
            return
        self._down_since = self._clock()
        self.outages += 1
        log.warning(
            "rate limit store %s failed (%s); skipping it (on_store_error applies) "
            "and trying it again every %gs",
            _without_password(self.config.url),
            type(exc).__name__ if not str(exc) else exc,
            self.config.probe_interval,
        )
        self._wake.set()

    async def _probe(self) -> None:
        """While the circuit is open: drop the pool's connections (they are dead or
        stale), then PING every ``probe_interval`` until the store answers."""
        assert self._client is not None
        client = self._client
        while True:
            await self._wake.wait()
            self._wake.clear()
            await client.connection_pool.disconnect()
            while True:
                await asyncio.sleep(self.config.probe_interval)
                try:
                    async with asyncio.timeout(self.config.timeout):
                        await client.ping()
                except _STORE_ERRORS:
                    continue
                break
            since, self._down_since = self._down_since, None
            log.info(
                "rate limit store %s answers again (after %.1fs)",
                _without_password(self.config.url),
                self._clock() - (since or 0.0),
            )
