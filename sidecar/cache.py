"""The endpoint cache: the last good endpoints of every upstream, in memory and on disk.

Updates are applied in two steps, :meth:`EndpointCache.prepare` (computes
the new state and raises on anything wrong, touching nothing) and
:meth:`EndpointCache.commit`, so a rejected update leaves the previous
state whole. Every commit marks the cache dirty; one persister task writes
the latest state to ``<data_dir>/endpoints.pb`` atomically (temporary file,
fsync, rename, fsync of the directory), coalescing bursts of updates into
one write. At start, :meth:`EndpointCache.load` reads that file back, so a
sidecar that starts while the control plane is unreachable serves the last
good endpoints (``source == "disk"``).

The file is an ``ecosystem.v1.EndpointUpdate`` message (``full`` set)
holding every upstream. Each upstream's part is encoded once, when it
changes; the file is those parts concatenated after the header, which is
valid protobuf (repeated fields append), so a write costs no re-encoding of
unchanged upstreams.

Readers wait for changes with :meth:`EndpointCache.wait_changed` on a
per-upstream generation counter: a slow reader sees the latest state, never
a backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from ecosystem.v1 import agent_pb2
from google.protobuf.message import DecodeError

from sdk import EndpointUpdate, Instance, ServiceEndpoints, ServiceRef

__all__ = [
    "CACHE_FILE",
    "CacheSource",
    "EndpointCache",
    "UpstreamKey",
    "UpstreamState",
    "write_atomic",
]

logger = logging.getLogger(__name__)

#: The cache file's name inside the data directory.
CACHE_FILE = "endpoints.pb"

#: (namespace, service), the namespace normalised ("" is "default").
UpstreamKey = tuple[str, str]


class CacheSource(enum.Enum):
    """Where the cached endpoints came from."""

    EMPTY = "empty"
    DISK = "disk"
    CONTROL_PLANE = "controlplane"


@dataclass(frozen=True, slots=True)
class UpstreamState:
    """The cached endpoints of one upstream: all of them, whatever their health."""

    key: UpstreamKey
    instances: tuple[Instance, ...] = ()
    #: The update version that last changed it (0: never set).
    version: int = 0
    #: Unix time of that change (0: never).
    updated_at: float = 0.0

    @property
    def namespace(self) -> str:
        return self.key[0]

    @property
    def service(self) -> str:
        return self.key[1]


def write_atomic(path: Path, data: bytes) -> None:
    """Replaces ``path`` with ``data`` so that a crash leaves the old or the new file.

    Writes a temporary file in the same directory, fsyncs it, renames it over
    ``path`` and fsyncs the directory so the rename itself is durable.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class EndpointCache:
    """Endpoints of the configured upstreams; persisted to ``path`` when given."""

    def __init__(self, upstreams: Iterable[UpstreamKey], path: Path | None = None) -> None:
        self._states: dict[UpstreamKey, UpstreamState] = {k: UpstreamState(k) for k in upstreams}
        self._encoded: dict[UpstreamKey, bytes] = {}
        self._generations: dict[UpstreamKey, int] = dict.fromkeys(self._states, 0)
        self._path = path
        self._version = 0
        self._source = CacheSource.EMPTY
        self._saved_at: float | None = None
        self._changed = asyncio.Event()
        self._dirty = asyncio.Event()
        self._written = 0  # commits persisted so far
        self._commits = 0
        self._flushed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.write_errors = 0

    # -- reading ------------------------------------------------------------------

    @property
    def version(self) -> int:
        """The version of the last update applied (or loaded from disk)."""
        return self._version

    @property
    def source(self) -> CacheSource:
        return self._source

    @property
    def saved_at(self) -> float | None:
        """Unix time the loaded file was written (None unless loaded from disk)."""
        return self._saved_at

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def keys(self) -> tuple[UpstreamKey, ...]:
        return tuple(self._states)

    def get(self, key: UpstreamKey) -> UpstreamState | None:
        """The state of an upstream, or None if it is not one."""
        return self._states.get(key)

    def generation(self, key: UpstreamKey) -> int:
        """Bumped whenever the upstream's endpoints (or the cache's staleness) change."""
        return self._generations.get(key, 0)

    async def wait_changed(self, key: UpstreamKey, generation: int) -> None:
        """Returns once ``generation(key)`` differs from ``generation``, or the cache closes."""
        while self._generations.get(key, 0) == generation and not self._closed:
            event = self._changed
            await event.wait()

    def notify_all(self) -> None:
        """Wakes every reader as if each upstream changed (e.g. staleness flipped)."""
        for key in self._generations:
            self._generations[key] += 1
        self._broadcast()

    def add(self, key: UpstreamKey) -> bool:
        """Keeps endpoints of one more upstream (empty until an update names it);
        False when it is one already."""
        if key in self._states:
            return False
        self._states[key] = UpstreamState(key)
        self._generations[key] = 0
        return True

    # -- applying updates ------------------------------------------------------------

    def prepare(self, update: EndpointUpdate) -> dict[UpstreamKey, tuple[Instance, ...]]:
        """The upstreams an update changes and their new endpoints; changes nothing.

        Services that are not upstreams are ignored. A ``full`` update also
        empties every upstream it does not mention. Raises ValueError for an
        instance listed under the wrong service.
        """
        changes: dict[UpstreamKey, tuple[Instance, ...]] = {}
        for entry in update.services:
            key = entry.service.key
            if key not in self._states:
                logger.debug("update mentions %s, which is not an upstream; ignored", key)
                continue
            for instance in entry.instances:
                if instance.service and instance.service != key[1]:
                    raise ValueError(f"instance {instance.id!r} is not of service {key[1]!r}")
            changes[key] = entry.instances
        if update.full:
            for key in self._states:
                changes.setdefault(key, ())
        return changes

    def commit(self, changes: Mapping[UpstreamKey, Sequence[Instance]], version: int) -> None:
        """Applies what :meth:`prepare` returned, and schedules a write to disk."""
        now = time.time()
        for key, instances in changes.items():
            state = UpstreamState(key, tuple(instances), version, now)
            self._states[key] = state
            self._encoded.pop(key, None)
            self._generations[key] += 1
        self._version = version
        self._source = CacheSource.CONTROL_PLANE
        self._commits += 1
        self._dirty.set()
        self._broadcast()

    def _broadcast(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    # -- disk ---------------------------------------------------------------------------

    def load(self) -> bool:
        """Reads the cache file, if there is one; returns whether anything was loaded.

        A missing file is not an error; an unreadable or corrupt one is
        logged and ignored (the cache starts empty).
        """
        if self._path is None:
            return False
        try:
            data = self._path.read_bytes()
            saved_at = self._path.stat().st_mtime
        except FileNotFoundError:
            return False
        except OSError as exc:
            logger.warning("cannot read endpoint cache %s: %s; starting empty", self._path, exc)
            return False
        message = agent_pb2.EndpointUpdate()
        try:
            message.ParseFromString(data)
        except DecodeError as exc:
            logger.warning("endpoint cache %s is corrupt (%s); starting empty", self._path, exc)
            return False
        update = EndpointUpdate.from_proto(message)
        loaded = 0
        for entry in update.services:
            key = entry.service.key
            if key in self._states:
                self._states[key] = UpstreamState(key, entry.instances, update.version, saved_at)
                self._generations[key] += 1
                loaded += len(entry.instances)
        self._version = update.version
        self._source = CacheSource.DISK
        self._saved_at = saved_at
        self._broadcast()
        logger.info(
            "loaded %d cached endpoints of %d upstreams (version %d) from %s",
            loaded,
            len(update.services),
            update.version,
            self._path,
        )
        return True

    def encode(self) -> bytes:
        """The cache file's content for the current state."""
        parts = [agent_pb2.EndpointUpdate(version=self._version, full=True).SerializeToString()]
        for key, state in self._states.items():
            encoded = self._encoded.get(key)
            if encoded is None:
                entry = ServiceEndpoints(ServiceRef(key[1], key[0]), state.instances)
                encoded = agent_pb2.EndpointUpdate(services=[entry.to_proto()]).SerializeToString()
                self._encoded[key] = encoded
            parts.append(encoded)
        return b"".join(parts)

    async def start(self) -> None:
        """Starts the persister (no-op without a path)."""
        if self._path is None or self._task is not None or self._closed:
            return
        self._task = asyncio.get_running_loop().create_task(
            self._persist(), name="sidecar-cache-persister"
        )

    async def flush(self) -> None:
        """Returns once every commit so far is on disk (or failed to be written)."""
        if self._path is None or self._task is None:
            return
        target = self._commits
        while self._written < target and self._task is not None and not self._task.done():
            self._flushed.clear()
            if self._written >= target:
                break
            await self._flushed.wait()

    async def close(self) -> None:
        """Writes what is pending, stops the persister and wakes every reader. Idempotent."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            self._dirty.set()  # one last round writes what is pending, then it ends
            try:
                async with asyncio.timeout(5.0):
                    await asyncio.shield(task)
            except TimeoutError:
                logger.warning("endpoint cache not written within 5s of shutdown")
                task.cancel()
                await asyncio.wait([task])
        self._broadcast()

    async def __aenter__(self) -> EndpointCache:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _persist(self) -> None:
        assert self._path is not None
        path = self._path
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            target = self._commits
            if self._written < target:
                data = self.encode()
                try:
                    await asyncio.to_thread(write_atomic, path, data)
                except OSError as exc:
                    self.write_errors += 1
                    logger.warning("cannot write endpoint cache %s: %s", path, exc)
                self._written = target
                self._flushed.set()
            if self._closed and self._written >= self._commits:
                return
