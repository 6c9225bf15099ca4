"""The resumable watch: one async generator that outlives disconnects.

The generator keeps the last *safe* revision — one after which it has seen
every event — and reconnects from it after any transient failure, with
jittered backoff, to whichever control plane the transport now points at.

Revisions are only comparable within one store, so the generator also keeps
the ``store_id`` the server sends and hands it back on resume: a control
plane whose store was wiped answers with a snapshot instead of deltas.

A revision is safe after a delta (PUT or DELETE outside a snapshot), a
SNAPSHOT_END or a PROGRESS. PUTs between RESYNC and SNAPSHOT_END are not:
the snapshot is only whole at its end. If the stream breaks inside a
snapshot, the caller has already been told to forget its state, so the
generator asks for a fresh snapshot (revision 0) rather than deltas.
RESYNC is always passed through: it means "drop what you hold". A
response marked ``revision_continues`` ends inside a revision too large for
one response: until the rest of it arrives, the safe revision is the one
before it (a resume then repeats that revision's first events rather than
lose its last ones).

No task is created: the stream is read inside the generator, so closing it
(``aclose()``, or leaving an ``async for``) cancels the call and leaves
nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from ecosystem.v1 import registry_pb2

from sdk._errors import (
    DeadlineExceededError,
    EcoError,
    InternalError,
    RequestCancelledError,
    ResourceExhaustedError,
    UnavailableError,
)
from sdk._retry import Backoff
from sdk._transport import Sleep, Transport
from sdk._types import WatchEvent, WatchEventType

__all__ = ["ResumePoint", "watch_events"]

logger = logging.getLogger(__name__)

# Failures after which reconnecting can help; anything else (a bad selector,
# say) goes to the caller.
_TRANSIENT: tuple[type[EcoError], ...] = (
    UnavailableError,
    DeadlineExceededError,
    RequestCancelledError,
    ResourceExhaustedError,
    InternalError,
)


@dataclass(slots=True)
class ResumePoint:
    """Where a broken watch picks up: the last safe revision, and whether a
    snapshot was in progress."""

    revision: int = 0
    in_snapshot: bool = False
    # The history the revision belongs to; a server with another one answers
    # with a snapshot instead of deltas (the store was wiped or replaced).
    store_id: str = ""

    def advance(self, event: WatchEvent, *, partial: bool = False) -> None:
        """Accounts for one event the caller is about to receive; ``partial``:
        more events of its revision are still to come."""
        kind = event.type
        if kind is WatchEventType.RESYNC:
            self.in_snapshot = True
        elif kind is WatchEventType.SNAPSHOT_END:
            self.in_snapshot = False
            self.revision = event.revision
        elif not self.in_snapshot:
            # A delta or PROGRESS: everything up to it has been delivered
            # (everything before it, while its revision is not yet whole).
            safe = event.revision - 1 if partial else event.revision
            self.revision = max(self.revision, safe)

    def after_disconnect(self) -> int:
        """The revision to reconnect from; 0 (a fresh snapshot) if one was cut short."""
        if self.in_snapshot:
            self.in_snapshot = False
            self.revision = 0
        return self.revision


async def watch_events(
    transport: Transport,
    selector: registry_pb2.InstanceSelector,
    *,
    since_revision: int,
    progress_interval: float,
    backoff: Backoff,
    sleep: Sleep = asyncio.sleep,
    idle_timeout: float | None = None,
) -> AsyncGenerator[WatchEvent, None]:
    """Yields :class:`WatchEvent` for ``selector`` until closed, reconnecting as needed.

    Ends quietly when the client is closed; raises non-transient errors.
    """
    resume = ResumePoint(revision=since_revision)
    progress_ms = round(progress_interval * 1000)
    # PROGRESS arrives every interval while idle: a much longer silence means
    # the connection is dead even if TCP has not noticed yet.
    if idle_timeout is None:
        idle_timeout = 3 * progress_interval + 2.0
    while not transport.closed:
        request = registry_pb2.WatchRequest(
            selector=selector,
            since_revision=resume.revision,
            progress_interval_ms=progress_ms,
            store_id=resume.store_id,
        )
        address = transport.current_address
        try:
            async with contextlib.aclosing(transport.stream("Watch", request)) as stream:
                while True:
                    try:
                        async with asyncio.timeout(idle_timeout):
                            response = await anext(stream)
                    except StopAsyncIteration:
                        reason = "the server ended the stream"
                        break
                    backoff.reset()
                    if response.store_id:
                        resume.store_id = response.store_id
                    cut = response.events[-1].revision if response.revision_continues else -1
                    for message in response.events:
                        event = WatchEvent.from_proto(message)
                        resume.advance(event, partial=event.revision == cut)
                        yield event
                        if transport.closed:
                            return  # the client closed while the caller held this event
        except TimeoutError:
            reason = f"nothing received for {idle_timeout:g}s"
            # A hung or cut-off replica: reconnecting to it would hang again.
            transport.mark_unresponsive(address)
        except _TRANSIENT as err:
            reason = f"{err.code}: {err}"
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if transport.closed and (current is None or current.cancelling() == 0):
                return  # the client closed under us: the watch simply ends
            raise
        if transport.closed:
            return
        revision = resume.after_disconnect()
        delay = backoff.next_delay()
        logger.info(
            "watch on %s interrupted (%s); reconnecting in %.2fs from revision %d",
            address,
            reason,
            delay,
            revision,
        )
        await sleep(delay)
