"""The Aggregated Discovery Service: one session per stream.

Each stream is one session, in the manner of the reference control planes: a
reader task queues the client's requests; the session's loop waits on
"request, new snapshot or shutdown" and answers. Per resource type the
session keeps the names subscribed and the resources last sent (by
identity: the cache shares unchanged objects), so a new snapshot sends only
the types whose resources changed for this client, and a NACK is recorded
without resending: the client keeps the last good configuration until the
registry changes again.

Requests whose nonce is not the last one sent for their type are stale and
ignored. Incremental (delta) xDS is not served yet: that RPC ends with
UNIMPLEMENTED saying so.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2, ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

from controlplane.xds._cache import XdsCache
from controlplane.xds._resources import CLUSTER, LISTENER, TYPES
from controlplane.xds._status import NodeBook, NodeStatus, Rejection

__all__ = ["ADS_SERVICE", "AdsServicer", "add_ads", "node_kind"]

log = logging.getLogger(__name__)

# Imported for its descriptors too: reflection (and the ACL test) find the
# service in the default pool only once ads_pb2 is loaded.
ADS_SERVICE = ads_pb2.DESCRIPTOR.services_by_name["AggregatedDiscoveryService"].full_name
#: Requests a client may have queued before the stream is ended (a client
#: that sends far faster than it is answered is broken).
_INBOX = 1_000
_WILDCARD = "*"


def node_kind(node: base_pb2.Node) -> str:
    """``envoy`` for an Envoy proxy (its user agent says so), else
    ``proxyless`` (a gRPC library's xDS client)."""
    return "envoy" if node.user_agent_name.lower() == "envoy" else "proxyless"


@dataclass(slots=True)
class _Subscription:
    names: frozenset[str] | None  # None: wildcard
    nonce: str = ""
    sent: dict[str, any_pb2.Any] = field(default_factory=dict)
    due: bool = True  # a response is owed even if nothing changed


class _StreamError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _Session:
    _nonces = itertools.count(1)

    def __init__(self, cache: XdsCache, book: NodeBook, peer: str) -> None:
        self.cache = cache
        self.book = book
        self.peer = peer
        self.node: NodeStatus | None = None
        self.subs: dict[str, _Subscription] = {}
        self.unknown: set[str] = set()

    async def run(self, requests: AsyncIterator[Any], context: Any) -> None:
        wake = asyncio.Event()
        inbox: deque[discovery_pb2.DiscoveryRequest] = deque()
        ended = asyncio.Event()

        async def read() -> None:
            try:
                async for request in requests:
                    if len(inbox) >= _INBOX:
                        raise _StreamError(
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"more than {_INBOX} requests queued unanswered",
                        )
                    inbox.append(request)
                    wake.set()
            finally:
                ended.set()
                wake.set()

        reader = asyncio.create_task(read(), name=f"xds-reader {self.peer}")
        self.cache.listen(wake)
        try:
            while True:
                await wake.wait()
                wake.clear()
                while inbox:
                    self._handle(inbox.popleft())
                if reader.done() and not reader.cancelled() and reader.exception() is not None:
                    raise reader.exception()  # type: ignore[misc]
                if self.cache.closed:
                    raise _StreamError(
                        grpc.StatusCode.UNAVAILABLE,
                        "control plane is shutting down; reconnect",
                    )
                if self.node is not None:
                    for type_url in TYPES:
                        response = self._response(type_url)
                        if response is not None:
                            await context.write(response)
                if ended.is_set() and not inbox:
                    return
        finally:
            self.cache.unlisten(wake)
            reader.cancel()
            await asyncio.wait({reader})
            if self.node is not None:
                self.book.close(self.node)

    def _handle(self, request: discovery_pb2.DiscoveryRequest) -> None:
        if self.node is None:
            node = request.node
            if not node.id:
                raise _StreamError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "node.id: the first DiscoveryRequest of a stream must name its node "
                    "(the bootstrap file's node.id; eco xds bootstrap --node ID writes one)",
                )
            locality = "/".join(p for p in (node.locality.region, node.locality.zone) if p)
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
        type_url = request.type_url
        if type_url not in TYPES:
            if type_url not in self.unknown:
                self.unknown.add(type_url)
                log.warning(
                    "xDS node %s asked for %s, which is not served (only %s)",
                    self.node.node_id,
                    type_url or "no type_url",
                    ", ".join(t.rsplit(".", 1)[-1] for t in TYPES),
                )
            return
        sub = self.subs.get(type_url)
        status = self.node.of(type_url)
        if request.response_nonce:
            if sub is None or request.response_nonce != sub.nonce:
                return  # stale: answers a response that a newer one replaced
            if request.HasField("error_detail"):
                rejected = Rejection(
                    version=status.sent_version,
                    resources=sorted(sub.sent),
                    error=request.error_detail.message,
                    at=time.time(),
                )
                status.nack = rejected
                self.book.nacks += 1
                log.warning(
                    "xDS node %s rejected %s version %s (%s): %s; it keeps version %s",
                    self.node.node_id,
                    type_url.rsplit(".", 1)[-1],
                    rejected.version,
                    ", ".join(rejected.resources) or "no resources",
                    rejected.error,
                    request.version_info or "none",
                )
            else:
                status.acked_version = request.version_info
        names = frozenset(request.resource_names)
        wildcard = type_url in (LISTENER, CLUSTER) and (
            _WILDCARD in names or (not names and (sub is None or sub.names is None))
        )
        wanted = None if wildcard else names - {_WILDCARD}
        if sub is None:
            self.subs[type_url] = _Subscription(wanted)
        elif wanted != sub.names:
            sub.names = wanted
            sub.due = True
        status.names = [_WILDCARD] if wanted is None else sorted(wanted)

    def _response(self, type_url: str) -> discovery_pb2.DiscoveryResponse | None:
        sub = self.subs.get(type_url)
        if sub is None:
            return None
        assert self.node is not None
        resources = self.cache.resources(
            type_url, sub.names, proxyless=self.node.kind == "proxyless"
        )
        unchanged = resources.keys() == sub.sent.keys() and all(
            resources[name] is sub.sent[name] for name in resources
        )
        if unchanged and not sub.due:
            return None
        sub.due = False
        sub.sent = resources
        sub.nonce = str(next(self._nonces))
        version = self.cache.snapshot.version
        status = self.node.of(type_url)
        status.sent_version = version
        status.sent_resources = sorted(resources)
        return discovery_pb2.DiscoveryResponse(
            version_info=version,
            type_url=type_url,
            nonce=sub.nonce,
            resources=[resources[name] for name in sorted(resources)],
        )


class AdsServicer:
    """Serves the registry as xDS to proxyless gRPC clients (and Envoy)."""

    def __init__(self, cache: XdsCache, book: NodeBook) -> None:
        self.cache = cache
        self.book = book
        self._streams = 0

    @property
    def streams(self) -> int:
        return self._streams

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> None:
        if self.cache.closed:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "control plane is shutting down; reconnect"
            )
        session = _Session(self.cache, self.book, context.peer() or "")
        self._streams += 1
        try:
            await session.run(request_iterator, context)
        except _StreamError as exc:
            node = session.node.node_id if session.node is not None else "(no node yet)"
            log.warning("xDS stream of node %s from %s ended: %s", node, session.peer, exc.details)
            await context.abort(exc.code, exc.details)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            log.exception("xDS stream from %s failed", session.peer)
            await context.abort(grpc.StatusCode.INTERNAL, f"xDS stream failed: {exc}")
        finally:
            self._streams -= 1

    async def DeltaAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> None:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "incremental (delta) xDS is not served yet: use the state-of-the-world stream "
            "(StreamAggregatedResources; gRPC clients do by default)",
        )


def add_ads(server: grpc.aio.Server, cache: XdsCache, book: NodeBook) -> AdsServicer:
    """Serves ADS from ``cache`` on ``server``, recording nodes in ``book``."""
    servicer = AdsServicer(cache, book)
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    return servicer
