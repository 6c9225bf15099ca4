"""The Aggregated Discovery Service, state of the world (SotW).

Per resource type the session keeps the names subscribed and the resources
last sent (by identity: the cache shares unchanged objects), so a new
snapshot sends only the types whose resources changed for this client, and
a NACK is recorded without resending: the client keeps the last good
configuration until the registry changes again. Requests whose nonce is not
the last one sent for their type are stale and ignored. The incremental
variant is in ``controlplane.xds._delta``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2, discovery_pb2

from controlplane.xds._cache import Encoded, XdsCache
from controlplane.xds._delta import DeltaSession
from controlplane.xds._resources import CLUSTER, LISTENER, TYPES
from controlplane.xds._session import WILDCARD, Session, StreamError
from controlplane.xds._status import NodeBook, TypeStatus

__all__ = ["ADS_SERVICE", "AdsServicer", "add_ads"]

log = logging.getLogger(__name__)

# Imported for its descriptors too: reflection (and the ACL test) find the
# service in the default pool only once ads_pb2 is loaded.
ADS_SERVICE = ads_pb2.DESCRIPTOR.services_by_name["AggregatedDiscoveryService"].full_name


@dataclass(slots=True)
class _Subscription:
    status: TypeStatus  # the node's, of this type (CSDS shows it)
    names: frozenset[str] | None  # None: wildcard
    #: The names of the last request taken: an ACK naming the same changes nothing.
    asked: frozenset[str] | None = None
    nonce: str = ""
    #: The response last sent (its resources are what the client holds).
    last: Encoded | None = None
    due: bool = True  # a response is owed even if nothing changed


class _WorldSession(Session):
    def __init__(self, cache: XdsCache, book: NodeBook, peer: str) -> None:
        super().__init__(cache, book, peer)
        self.subs: dict[str, _Subscription] = {}

    def handle(self, request: discovery_pb2.DiscoveryRequest) -> None:
        # After the first request, the node is known: request.node is not
        # looked at (reading it builds a message wrapper per ACK).
        node = self.node
        if node is None:
            node = self.open_node(request.node, "DiscoveryRequest")
        type_url = request.type_url
        if not self.served(type_url):
            return
        sub = self.subs.get(type_url)
        status = node.of(type_url) if sub is None else sub.status
        if request.response_nonce:
            if sub is None or request.response_nonce != sub.nonce:
                return  # stale: answers a response that a newer one replaced
            if request.HasField("error_detail"):
                self.rejected(
                    type_url,
                    status.sent_version,
                    sorted(sub.last.resources) if sub.last is not None else [],
                    request.error_detail.message,
                    request.version_info,
                )
            else:
                status.acked_version = request.version_info
        names = frozenset(request.resource_names)
        if sub is not None and names == sub.asked:
            return  # most requests: an ACK of a subscription as it was
        self.check_names(type_url, names)
        wildcard = type_url in (LISTENER, CLUSTER) and (
            WILDCARD in names or (not names and (sub is None or sub.names is None))
        )
        wanted = None if wildcard else names - {WILDCARD}
        if sub is None:
            self.subs[type_url] = _Subscription(status, wanted, names)
            self.changed = True
        else:
            sub.asked = names
            if wanted != sub.names:
                sub.names = wanted
                sub.due = self.changed = True
        status.names = [WILDCARD] if wanted is None else sorted(wanted)

    def due(self) -> Iterator[bytes]:
        for type_url in TYPES:
            response = self._response(type_url)
            if response is not None:
                yield response

    def _response(self, type_url: str) -> bytes | None:
        """The response due for ``type_url``, serialized: the cache encodes
        one per subscription and snapshot, shared by every stream sent it."""
        sub = self.subs.get(type_url)
        if sub is None:
            return None
        encoded = self.response(type_url, sub.names)
        last = sub.last
        # What the stream holds is kept alive by ``last``: equal identities
        # in the content are the same resources, so nothing changed for it.
        unchanged = last is not None and (encoded is last or encoded.content == last.content)
        if unchanged and not sub.due:
            return None
        sub.due = False
        sub.last = encoded
        sub.nonce = encoded.nonce
        status = sub.status
        status.sent_version = encoded.version
        status.resources = encoded.resources
        return encoded.data


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
        await self._serve(_WorldSession, context)

    async def DeltaAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> None:
        await self._serve(DeltaSession, context)

    async def _serve(self, kind: type[Session], context: Any) -> None:
        """One stream: its session reads the requests from ``context``."""
        if self.cache.closed:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "control plane is shutting down; reconnect"
            )
        session = kind(self.cache, self.book, context.peer() or "")
        self._streams += 1
        try:
            await session.run(context)
        except StreamError as exc:
            node = session.node.node_id if session.node is not None else "(no node yet)"
            # A shutdown ends every stream: one line each would flood the log.
            level = logging.INFO if exc.code is grpc.StatusCode.UNAVAILABLE else logging.WARNING
            log.log(
                level, "xDS stream of node %s from %s ended: %s", node, session.peer, exc.details
            )
            await context.abort(exc.code, exc.details)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            log.exception("xDS stream from %s failed", session.peer)
            await context.abort(grpc.StatusCode.INTERNAL, f"xDS stream failed: {exc}")
        finally:
            self._streams -= 1


def add_ads(server: grpc.aio.Server, cache: XdsCache, book: NodeBook) -> AdsServicer:
    """Serves ADS from ``cache`` on ``server``, recording nodes in ``book``.
    The handlers are the generated ones' but for the responses, which the
    sessions serialize (once per content, shared by the streams sent it):
    gRPC sends their bytes as they are, without a serializer to call."""
    servicer = AdsServicer(cache, book)
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
            servicer.StreamAggregatedResources,
            request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
            response_serializer=None,
        ),
        "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
            servicer.DeltaAggregatedResources,
            request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
            response_serializer=None,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ADS_SERVICE, handlers),))
    return servicer
