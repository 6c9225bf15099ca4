"""What every ADS stream shares, state of the world or incremental.

Each stream is one session, in the manner of the reference control planes: a
reader task takes the client's requests into the session's state; the
session's loop waits on "changed subscription, new snapshot or shutdown"
and writes what is due. The first request must name its node; what the node is sent,
ACKs and NACKs goes into the :class:`NodeBook`.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import grpc
from envoy.config.core.v3 import base_pb2

from controlplane.xds._cache import Encoded, XdsCache
from controlplane.xds._envoy import PREFIX, EnvoyPlan, plan_of
from controlplane.xds._resources import ENDPOINTS, LISTENER, ROUTE, TYPES, ServiceName
from controlplane.xds._status import NodeBook, NodeStatus, Rejection

__all__ = ["WILDCARD", "Session", "StreamError", "node_kind", "short_type"]

log = logging.getLogger(__name__)

#: The resource name that subscribes to every resource of its type.
WILDCARD = "*"


def node_kind(node: base_pb2.Node) -> str:
    """``envoy`` for an Envoy proxy (its user agent says so), else
    ``proxyless`` (a gRPC library's xDS client)."""
    return "envoy" if node.user_agent_name.lower() == "envoy" else "proxyless"


def short_type(type_url: str) -> str:
    """``Listener`` for ``type.googleapis.com/envoy.config.listener.v3.Listener``."""
    return type_url.rsplit(".", 1)[-1]


class _Wake(asyncio.Event):
    """A stream's wake-up, set by the cache at each snapshot: an event whose
    ``wait`` takes the loop it was made on rather than looking the running
    loop up, which costs a getpid system call per stream per push. It has
    one waiter, the stream's own loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._home = loop
        self._pending = False
        self._waiter: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        return self._pending

    def set(self) -> None:
        self._pending = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._pending = False

    async def wait(self) -> Literal[True]:
        if not self._pending:
            self._waiter = self._home.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return True


class StreamError(Exception):
    """Ends the stream with ``code`` and ``details``."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class Session(abc.ABC):
    """One stream. Subclasses say how a request is handled (``handle``) and
    what is due to be sent (``due``)."""

    def __init__(self, cache: XdsCache, book: NodeBook, peer: str) -> None:
        self.cache = cache
        self.book = book
        self.peer = peer
        self.node: NodeStatus | None = None
        #: The client's (region, zone), from its bootstrap: endpoints near it first.
        self.locality = ("", "")
        #: Set by ``handle`` when a subscription changed: responses may be due.
        self.changed = False
        self._unknown: set[str] = set()
        self._bad_names: set[str] = set()
        #: A sidecar's Envoy: its socket listeners and their clusters (docs/envoy.md).
        self.plan: EnvoyPlan | None = None
        self._metadata: Any = None
        self._mesh_version = 0

    async def run(self, context: Any) -> None:
        """Serves the stream until the client ends it, the cache closes or
        the call is cancelled; requests are read with ``context.read``."""
        wake = _Wake(asyncio.get_running_loop())
        ended = asyncio.Event()

        async def read() -> None:
            # Requests are taken in here, as they come: most are ACKs, which
            # change no subscription and owe no response, and waking the
            # writing loop for each would cost a task switch per client per
            # push. The loop is woken when one does. Read from the context,
            # not the request iterator: the iterator adds two generator
            # layers to every ACK of every stream.
            receive = context.read
            try:
                while True:
                    request = await receive()
                    if request is grpc.aio.EOF:  # type: ignore[attr-defined]
                        return
                    self.handle(request)
                    if self.changed:
                        wake.set()
            finally:
                ended.set()
                wake.set()

        reader = asyncio.create_task(read(), name=f"xds-reader {self.peer}")
        cache = self.cache
        cache.listen(wake)
        # Looked up once: a push runs this loop once per stream.
        write = context.write
        seen = -1  # the snapshot revision last looked at
        if self.cache.mesh is not None:  # intentions changed: a sidecar's Envoy is replanned
            self.cache.mesh.listen(wake)
        try:
            while True:
                await wake.wait()
                wake.clear()
                if reader.done() and not reader.cancelled():
                    failure = reader.exception()
                    if failure is not None:
                        raise failure
                if cache.closed:
                    raise StreamError(
                        grpc.StatusCode.UNAVAILABLE, "control plane is shutting down; reconnect"
                    )
                self._replan()
                revision = cache.snapshot.revision
                if self.node is not None and (revision != seen or self.changed):
                    seen, self.changed = revision, False
                    for response in self.due():
                        await write(response)
                if ended.is_set():
                    return
        finally:
            if self.cache.mesh is not None:
                self.cache.mesh.unlisten(wake)
            self.cache.unlisten(wake)
            reader.cancel()
            await asyncio.wait({reader})
            if self.node is not None:
                self.book.close(self.node)

    @abc.abstractmethod
    def handle(self, request: Any) -> None:
        """Takes one request of the client into the session's state."""

    @abc.abstractmethod
    def due(self) -> Iterator[bytes]:
        """The responses owed now (for new subscriptions or a new snapshot),
        serialized."""

    # -- shared steps -------------------------------------------------------

    def open_node(self, node: base_pb2.Node, what: str) -> NodeStatus:
        """The stream's node, from its first request (which must name it)."""
        if self.node is not None:
            return self.node
        if not node.id:
            raise StreamError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"node.id: the first {what} of a stream must name its node "
                "(the bootstrap file's node.id; eco xds bootstrap --node ID writes one)",
            )
        self.locality = (node.locality.region, node.locality.zone)
        locality = "/".join(p for p in self.locality if p)
        self.node = self.book.open(
            node.id, node_kind(node), node.user_agent_name, node.cluster, locality
        )
        log.info(
            "xDS node %s connected (%s, %s) from %s",
            node.id,
            self.node.kind,
            node.user_agent_name or "no user agent",
            self.peer,
        )
        if self.node.kind == "envoy":
            mesh = self.cache.mesh
            self._metadata, self._mesh_version = node.metadata, mesh.version if mesh else 0
            self.plan = plan_of(node.metadata, mesh)
            for problem in self.plan.problems if self.plan is not None else ():
                log.warning("xDS node %s: listener left out: %s", node.id, problem)
        return self.node

    def _replan(self) -> None:
        """A sidecar's Envoy: its listeners again after the intentions changed
        (those unchanged stay the same objects: they are not sent again)."""
        mesh = self.cache.mesh
        if self.plan is None or mesh is None or mesh.version == self._mesh_version:
            return
        self._mesh_version = mesh.version
        self.plan = plan_of(self._metadata, mesh, self.plan)
        self.changed = True

    def resources(self, type_url: str, names: Iterable[str] | None) -> dict[str, Any]:
        """What the client is sent of ``type_url`` for ``names`` (None: all).
        A sidecar's Envoy gets its own listeners and clusters (built once
        per stream) and the shared endpoints; everyone else, the cache's."""
        assert self.node is not None
        plan = self.plan
        if plan is None or type_url in (ENDPOINTS, ROUTE):
            return self.cache.resources(
                type_url, names, proxyless=self.node.kind == "proxyless", locality=self.locality
            )
        current = plan.listeners if type_url == LISTENER else plan.clusters
        if names is None:
            return dict(current)
        return {name: current[name] for name in names if name in current}

    def response(self, type_url: str, names: frozenset[str] | None) -> Encoded:
        """The state-of-the-world response of ``type_url`` for ``names``
        (None: all): the cache's, shared by every stream subscribed alike,
        or, for a sidecar's Envoy's own listeners and clusters, encoded
        from its plan."""
        assert self.node is not None
        if self.plan is None or type_url in (ENDPOINTS, ROUTE):
            return self.cache.response(
                type_url, names, proxyless=self.node.kind == "proxyless", locality=self.locality
            )
        return self.cache.encode(type_url, self.resources(type_url, names))

    def served(self, type_url: str) -> bool:
        """Whether ``type_url`` is served; says once per stream when it is not."""
        if type_url in TYPES:
            return True
        if type_url not in self._unknown:
            self._unknown.add(type_url)
            log.warning(
                "xDS node %s asked for %s, which is not served (only %s)",
                self.node.node_id if self.node is not None else "?",
                type_url or "no type_url",
                ", ".join(short_type(t) for t in TYPES),
            )
        return False

    def check_names(self, type_url: str, names: Iterable[str]) -> None:
        """Says once per stream and name when a target is no service name:
        the client is sent nothing for it and reports "does not exist" only
        after its own timeout."""
        if type_url != LISTENER:
            return
        for name in names:
            if name == WILDCARD or name in self._bad_names or name.startswith(PREFIX):
                continue
            try:
                ServiceName.parse(name)
            except ValueError as exc:
                self._bad_names.add(name)
                log.warning(
                    "xDS node %s dials xds:///%s, which names no service: %s",
                    self.node.node_id if self.node is not None else "?",
                    name,
                    exc,
                )

    def rejected(
        self, type_url: str, version: str, resources: list[str], error: str, keeps: str
    ) -> None:
        """Records and logs a NACK of ``version`` (which held ``resources``)."""
        assert self.node is not None
        self.node.of(type_url).nack = Rejection(version, resources, error, time.time())
        self.book.nacks += 1
        log.warning(
            "xDS node %s rejected %s version %s (%s): %s; it keeps version %s",
            self.node.node_id,
            short_type(type_url),
            version,
            ", ".join(resources) or "no resources",
            error,
            keeps or "none",
        )
