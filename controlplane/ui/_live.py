"""The console's live feed: one watch on the registry view, fanned out to browsers.

The feed subscribes to the view as a Watch stream does (``InstanceView.subscribe``
with an empty selector: every instance), and owns one task. It never sends
instances to a browser: what a browser may see depends on its token, so it
sends only "something changed at revision R", and the page fetches its own
content again, filtered as any page read is. Changes the view does not carry
(a sidecar applying an update, a route, a sync run, a bus stream's depth) are
noticed by comparing a fingerprint of them every ``poll`` seconds (the bus
streams every second).

Each browser has a bounded queue of one signal: a newer one replaces the one
not yet sent (the page refetches the latest state either way), so a slow
browser costs no memory. ``close()`` cancels the task and ends every stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Hashable
from typing import TYPE_CHECKING

from controlplane.view import Selector, Watcher
from serving.errors import UnavailableError

if TYPE_CHECKING:
    from controlplane.app import ControlPlane

__all__ = ["Listener", "LiveFeed"]

log = logging.getLogger(__name__)

#: Seconds between two looks at the bus streams' depths.
_STREAMS_EVERY = 1.0
#: What ends a listener's stream.
_END = -1


class Listener:
    """One browser's stream: the latest revision not yet sent, or the end."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)

    def offer(self, revision: int) -> None:
        if self._queue.full():
            self._queue.get_nowait()  # the newer signal replaces it
        self._queue.put_nowait(revision)

    async def next(self, timeout: float) -> int | None:
        """The next revision (``_END``: the feed closed), or None after ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                return await self._queue.get()
        except TimeoutError:
            return None


class LiveFeed:
    """Signals every listener within ``poll`` seconds of a change (at once for
    instances), at most once every ``min_gap`` seconds. Its task runs while a
    page listens: the first listener starts it, and it stops when none is left."""

    def __init__(self, plane: ControlPlane, *, poll: float = 0.25, min_gap: float = 0.2) -> None:
        self._plane = plane
        self._poll = poll
        # Signals at most every ``min_gap`` seconds, however fast the registry changes.
        self._min_gap = min_gap
        self._listeners: set[Listener] = set()
        self._task: asyncio.Task[None] | None = None
        self._watcher: Watcher | None = None
        self._closed = False
        self._fingerprint: Hashable = None
        self._streams: tuple[object, ...] = ()
        self._streams_due = 0.0
        #: The revision last signalled.
        self.revision = 0

    @property
    def listener_count(self) -> int:
        return len(self._listeners)

    def start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run(), name="console-live-feed")

    def listen(self) -> Listener:
        """A new listener; UnavailableError once the feed is closed."""
        if self._closed:
            raise UnavailableError("the control plane is shutting down")
        listener = Listener()
        self._listeners.add(listener)
        self.start()
        return listener

    def leave(self, listener: Listener) -> None:
        self._listeners.discard(listener)

    async def close(self) -> None:
        self._closed = True
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._end_all()

    def _end_all(self) -> None:
        for listener in self._listeners:
            listener.offer(_END)
        self._listeners.clear()

    async def _run(self) -> None:
        view = self._plane.view
        try:
            self._watcher = watcher = view.subscribe(Selector(), view.revision)
        except UnavailableError:
            self._closed = True
            self._end_all()
            return
        idle = False
        try:
            self._fingerprint = await self._fingerprint_now()
            while not watcher.closed:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll):
                        await watcher.wake.wait()
                if watcher.closed:
                    break
                if not self._listeners:
                    # Nobody is looking: stop until a page opens its stream again.
                    idle = True
                    break
                # The events themselves are not needed: the pages read the view.
                watcher.discard_pending()
                watcher.resync = False
                watcher.wake.clear()
                fingerprint = await self._fingerprint_now()
                if fingerprint != self._fingerprint:
                    self._fingerprint = fingerprint
                    self.revision = self._plane.store.revision
                    for listener in self._listeners:
                        listener.offer(self.revision)
                    # Changes in the meantime gather in the watcher and go as one.
                    await asyncio.sleep(self._min_gap)
        except Exception:
            log.exception("the console's live feed failed; browsers will reconnect")
        finally:
            # No await in here: a listener that joins now finds the task gone
            # and starts another.
            view.unsubscribe(watcher)
            self._watcher = None
            self._task = None
            if not idle:
                self._closed = True
                self._end_all()

    async def _fingerprint_now(self) -> Hashable:
        """What the pages show, in brief: a change to it is a change to signal."""
        plane = self._plane
        sessions: tuple[object, ...] = ()
        if plane.agent is not None:
            sessions = tuple(
                sorted(
                    (node, s.connected, s.applied_version, s.sent_version, s.last_error)
                    for node, s in plane.agent.sessions.items()
                )
            )
        xds = tuple(
            (
                n.node_id,
                n.streams,
                tuple(
                    (name, t.state, t.acked_version, t.nack.at if t.nack else 0.0)
                    for name, t in n.types.items()
                ),
            )
            for n in plane.xds_nodes.nodes()
        )
        loop = asyncio.get_running_loop()
        if plane.broker is not None and loop.time() >= self._streams_due:
            # At most once a second: with NATS, listing streams is a round trip each.
            self._streams_due = loop.time() + _STREAMS_EVERY
            try:
                self._streams = tuple(
                    (
                        s.name,
                        s.messages,
                        tuple(
                            (c.name, c.pending, c.dead_lettered, c.subscribers) for c in s.consumers
                        ),
                    )
                    for s in await plane.broker.streams()
                )
            except Exception as exc:  # the bus page shows the error itself
                log.debug("the console could not list the bus streams: %s", exc)
        return (
            plane.store.revision,
            plane.view.revision,
            plane.serving,
            sessions,
            xds,
            self._streams,
        )
