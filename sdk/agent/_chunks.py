"""Agent-stream messages in parts: syncs cut to size, updates put back together.

Every message on the agent stream is at most `MESSAGE_BYTES` (1 MiB). A
Sync of a host whose instances take more is sent as several ``SyncInstances``
with ``more`` set on all but the last (`sync_parts`); the control plane
applies it only once whole. An ``EndpointUpdate`` larger than that arrives
the same way, and `UpdateAssembler` puts it back together: the parts share
version and nonce, one service's instances may continue from one part into
the next, and only a whole update is handed on (and acknowledged). An update
larger than `MAX_UPDATE_BYTES` in all is not kept: it is refused (NACKed)
once its last part is in.
"""

from __future__ import annotations

from ecosystem.v1 import agent_pb2

__all__ = [
    "MAX_UPDATE_BYTES",
    "MESSAGE_BYTES",
    "UpdateAssembler",
    "UpdateTooLargeError",
    "sync_parts",
]

#: the largest message either side sends on the agent stream
MESSAGE_BYTES = 1024 * 1024
#: the largest update (all its parts) a session puts together
MAX_UPDATE_BYTES = 64 * 1024 * 1024
# Room left in a part for the message's own framing.
_PART_BYTES = MESSAGE_BYTES - 1024
_FRAME = 6


def sync_parts(
    sync: agent_pb2.SyncInstances, limit: int = _PART_BYTES
) -> list[agent_pb2.SyncInstances]:
    """``sync`` as parts of at most ``limit`` bytes each (one instance may
    take a part of its own), ``more`` set on all but the last."""
    if sync.ByteSize() <= limit:
        return [sync]
    parts = [agent_pb2.SyncInstances()]
    size = 4
    for inst in sync.instances:
        inst_size = inst.ByteSize() + _FRAME
        if size + inst_size > limit and len(parts[-1].instances):
            parts[-1].more = True
            parts.append(agent_pb2.SyncInstances())
            size = 4
        parts[-1].instances.append(inst)
        size += inst_size
    return parts


class UpdateTooLargeError(ValueError):
    """An update whose parts add up to more than the session keeps."""


class UpdateAssembler:
    """Puts the parts of endpoint updates together, one update at a time."""

    def __init__(self, max_bytes: int = MAX_UPDATE_BYTES) -> None:
        self._max_bytes = max_bytes
        self._update: agent_pb2.EndpointUpdate | None = None
        self._bytes = 0
        self._too_large = False

    @property
    def pending(self) -> bool:
        """Whether some parts of an update are in and more are awaited."""
        return self._update is not None

    def add(self, part: agent_pb2.EndpointUpdate) -> agent_pb2.EndpointUpdate | None:
        """Takes one part; returns the whole update once its last part is in.

        A part of another update (a different nonce or version) drops what was
        put together so far: the control plane never interleaves updates, so
        that one was cut off. Raises UpdateTooLargeError at the last part of
        an update larger than ``max_bytes`` (nothing of it is kept).
        """
        update = self._update
        if update is not None and (update.nonce, update.version) != (part.nonce, part.version):
            update = None
        if update is None:
            update = agent_pb2.EndpointUpdate(
                version=part.version, nonce=part.nonce, full=part.full
            )
            self._bytes, self._too_large = 0, False
        self._bytes += part.ByteSize()
        if self._bytes > self._max_bytes:
            self._too_large = True
            del update.services[:]
        if not self._too_large:
            for entry in part.services:
                last = update.services[-1] if len(update.services) else None
                if last is not None and last.service == entry.service:
                    last.instances.extend(entry.instances)
                else:
                    update.services.append(entry)
        if part.more:
            self._update = update
            return None
        self._update = None
        if self._too_large:
            raise UpdateTooLargeError(
                f"update of {self._bytes} bytes in all; at most {self._max_bytes} are kept"
            )
        return update

    def reset(self) -> None:
        """Drops a partly received update (its stream ended)."""
        self._update = None
