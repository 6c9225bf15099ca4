"""The Aggregated Discovery Service, incremental (delta xDS).

The client subscribes and unsubscribes by name; each response carries only
the resources that changed for it since the last one, with a version each
(a digest of the resource, so that it means the same after a control-plane
restart: a client that reconnects and lists what it has in
``initial_resource_versions`` is sent only what differs), and the names of
those removed. A NACK is recorded and not resent, as in the state-of-the-
world stream; subscriptions in a request with a stale nonce still count
(they are deltas and cannot be repeated).

A delta is encoded once per snapshot and content (the resources changed
and the names removed), and the streams owed the same delta are sent the
same bytes, as state-of-the-world responses are; its nonce names that
content.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from controlplane.xds._cache import XdsCache
from controlplane.xds._resources import CLUSTER, LISTENER, TYPES
from controlplane.xds._session import WILDCARD, Session
from controlplane.xds._status import NodeBook

__all__ = ["DeltaSession"]


@dataclass(slots=True)
class _Subscription:
    names: set[str] = field(default_factory=set)
    wildcard: bool = False
    # What the client holds: by our responses, or as it said when it came.
    sent: dict[str, any_pb2.Any] = field(default_factory=dict)
    claimed: dict[str, str] = field(default_factory=dict)
    nonce: str = ""
    nonce_version: str = ""
    nonce_resources: list[str] = field(default_factory=list)
    due: bool = True


class DeltaSession(Session):
    def __init__(self, cache: XdsCache, book: NodeBook, peer: str) -> None:
        super().__init__(cache, book, peer)
        self.subs: dict[str, _Subscription] = {}

    def handle(self, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        node = self.node
        if node is None:
            node = self.open_node(request.node, "DeltaDiscoveryRequest")
        type_url = request.type_url
        if not self.served(type_url):
            return
        status = node.of(type_url)
        sub = self.subs.get(type_url)
        if sub is None:
            sub = self.subs[type_url] = _Subscription()
            self.changed = True
            sub.claimed = dict(request.initial_resource_versions)
            # An empty first request for listeners or clusters is a wildcard.
            sub.wildcard = type_url in (LISTENER, CLUSTER) and not request.resource_names_subscribe
        elif request.response_nonce and request.response_nonce == sub.nonce:
            if request.HasField("error_detail"):
                self.rejected(
                    type_url,
                    sub.nonce_version,
                    sub.nonce_resources,
                    request.error_detail.message,
                    status.acked_version,
                )
            else:
                status.acked_version = sub.nonce_version
        self.check_names(type_url, request.resource_names_subscribe)
        if request.resource_names_subscribe or request.resource_names_unsubscribe:
            self.changed = True
        for name in request.resource_names_subscribe:
            if name == WILDCARD:
                sub.wildcard = True
            else:
                sub.names.add(name)
        for name in request.resource_names_unsubscribe:
            if name == WILDCARD:
                sub.wildcard = False
            else:
                sub.names.discard(name)
                sub.sent.pop(name, None)
        status.names = ([WILDCARD] if sub.wildcard else []) + sorted(sub.names)

    def due(self) -> Iterator[bytes]:
        for type_url in TYPES:
            sub = self.subs.get(type_url)
            if sub is not None:
                response = self._response(type_url, sub)
                if response is not None:
                    yield response

    def _response(self, type_url: str, sub: _Subscription) -> bytes | None:
        assert self.node is not None
        current = self.resources(type_url, sub.names)
        if sub.wildcard:
            current.update(self.resources(type_url, None))
        if sub.claimed:
            # What the client already holds (from before a reconnect) is not resent.
            for name, version in sub.claimed.items():
                resource = current.get(name)
                if resource is not None and self.cache.version_of(resource) == version:
                    sub.sent[name] = resource
            sub.claimed = {}
        changed = sorted(name for name, res in current.items() if sub.sent.get(name) is not res)
        removed = sorted(name for name in sub.sent if name not in current)
        if not changed and not removed and not sub.due:
            return None
        sub.due = False
        for name in removed:
            del sub.sent[name]
        for name in changed:
            sub.sent[name] = current[name]
        # Encoded once per delta and snapshot, shared by the streams owed the same.
        sub.nonce, encoded = self.cache.delta(
            type_url, [(name, current[name]) for name in changed], removed
        )
        sub.nonce_version = self.cache.snapshot.version
        sub.nonce_resources = changed
        status = self.node.of(type_url)
        status.sent_version = sub.nonce_version
        status.resources = sub.sent
        return encoded
