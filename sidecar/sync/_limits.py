"""A store's connection budget, shared by every run in the process.

``options.transfers`` bounds one job; a sidecar running several jobs at once
against one store would still open ``transfers`` times the jobs' connections to it.
So each store has a process-wide number of slots (:func:`store_slots`,
keyed by :func:`store_key`), and every run wraps its connectors in
:class:`LimitedConnector`, which holds a slot around each call that talks to
the store: a transfer holds a slot of each of its two stores for its whole
length (taken in key order, so two runs copying in opposite directions
cannot each hold one and wait for the other), a stat, hash, delete or
directory creation one slot of its own store. Listing is not limited (one
stream per side and run).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from sidecar.sync.connectors._base import Connector, Entry, ResumeToken, SourceOpener

__all__ = [
    "DEFAULT_CONNECTIONS",
    "LimitedConnector",
    "Slots",
    "default_connections",
    "store_key",
    "store_slots",
    "unlimited",
]

#: A store's budget when neither the run nor the connector says
#: (``max_connections``): by URL scheme, else ``"*"``.
DEFAULT_CONNECTIONS = {"file": 64, "sftp": 8, "s3": 32, "gs": 32, "az": 32, "*": 32}


class Slots:
    """A counting semaphore whose size can change (a later run may set
    another budget for the same store); ``peak`` is the most ever held."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.held = 0
        self.peak = 0
        self._freed = asyncio.Condition()

    async def acquire(self) -> None:
        async with self._freed:
            await self._freed.wait_for(lambda: self.held < self.size)
            self.held += 1
            self.peak = max(self.peak, self.held)

    async def release(self) -> None:
        async with self._freed:
            self.held -= 1
            self._freed.notify()

    async def resize(self, size: int) -> None:
        async with self._freed:
            self.size = size
            self._freed.notify_all()


#: Slots by store key, per event loop (a Condition belongs to one loop).
_SLOTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Slots]] = (
    weakref.WeakKeyDictionary()
)


def store_key(connector: Connector) -> str:
    """Which budget a connector's calls count against: its ``store_key``
    attribute when it has one, else its URL's scheme and host part (the
    bucket, container, ``user@host:port``; ``file://`` for every local path)."""
    key = getattr(connector, "store_key", None)
    if isinstance(key, str) and key:
        return key
    parts = urlsplit(connector.url)
    return f"{parts.scheme}://{parts.netloc}"


def default_connections(connector: Connector) -> int:
    """The connector's own ``max_connections`` when it has one, else by scheme."""
    own = getattr(connector, "max_connections", None)
    if isinstance(own, int) and own > 0:
        return own
    scheme = urlsplit(connector.url).scheme
    return DEFAULT_CONNECTIONS.get(scheme, DEFAULT_CONNECTIONS["*"])


async def store_slots(key: str, size: int) -> Slots:
    """The process's slots for ``key`` (made with ``size``; resized to it
    when they exist with another)."""
    by_key = _SLOTS.setdefault(asyncio.get_running_loop(), {})
    slots = by_key.get(key)
    if slots is None:
        slots = by_key[key] = Slots(size)
    elif slots.size != size:
        await slots.resize(size)
    return slots


@contextlib.asynccontextmanager
async def _holding(*slots: Slots) -> AsyncIterator[None]:
    taken: list[Slots] = []
    try:
        for slot in slots:
            await slot.acquire()
            taken.append(slot)
        yield
    finally:
        for slot in reversed(taken):
            await slot.release()


class LimitedConnector:
    """``inner`` with its store's slots held around each call to the store.

    ``peer`` is the other store of the run: a write reads its bytes from
    there, so it holds the peer's slot too (one per distinct store, in key
    order). Not entered or closed here: the run owns ``inner``."""

    def __init__(self, inner: Connector, own: tuple[str, Slots], peer: tuple[str, Slots]) -> None:
        self.inner = inner
        self.url = inner.url
        self.listed_hashes = inner.listed_hashes
        # A connector that does not say (an older or a wrapping one) is not local.
        self.local: bool = getattr(inner, "local", False)
        self._own = own[1]
        distinct = dict(sorted({own[0]: own[1], peer[0]: peer[1]}.items()))
        self._pair = tuple(distinct.values())

    async def __aenter__(self) -> LimitedConnector:
        return self

    async def __aexit__(self, *exc: object) -> None:
        """The run closes ``inner`` itself (or its caller does)."""

    async def close(self) -> None:
        """As :meth:`__aexit__`: ``inner`` is not this wrapper's to close."""

    def list(self) -> AsyncIterator[Entry]:
        return self.inner.list()

    def read(self, path: str, offset: int = 0) -> AsyncIterator[bytes]:
        # Only ever called inside a write, which holds both stores' slots.
        return self.inner.read(path, offset)

    async def _one(self, call: Callable[[], Awaitable[Any]]) -> Any:
        async with _holding(self._own):
            return await call()

    async def stat(self, path: str) -> Entry | None:
        result: Entry | None = await self._one(lambda: self.inner.stat(path))
        return result

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
        async with _holding(*self._pair):
            return await self.inner.write(
                path, source, size, mtime=mtime, resume=resume, checkpoint=checkpoint
            )

    async def delete(self, path: str) -> None:
        await self._one(lambda: self.inner.delete(path))

    async def make_dir(self, path: str) -> None:
        await self._one(lambda: self.inner.make_dir(path))

    async def hash(self, path: str, kind: str) -> str | None:
        result: str | None = await self._one(lambda: self.inner.hash(path, kind))
        return result


def unlimited(connector: Connector) -> Connector:
    """``connector`` without its slots: for a call made inside a write, which
    holds a slot of each of its two stores already (taking another could
    wait forever on slots only writes like it hold)."""
    return connector.inner if isinstance(connector, LimitedConnector) else connector
