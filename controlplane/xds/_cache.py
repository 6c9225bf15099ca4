"""xDS resources of the whole registry, rebuilt per revision and shared.

The cache is one more subscriber of the registry view (like a Watch stream,
with a selector matching everything): when the view publishes a revision, the
services it touched are rebuilt (a RESYNC rebuilds all of them), and a new
immutable :class:`Snapshot` replaces the old one. Each resource is packed
into a ``google.protobuf.Any`` once; a service whose Cluster or endpoints come
out byte-for-byte the same keeps its previous object, so that a stream can
tell what changed by identity and a thousand subscribers of one change share
one build. Streams register a wake-up event and are all woken per snapshot.

While no stream listens, nothing is built: the services touched are noted
and built when a snapshot is next asked for, so a control plane that serves
no xDS client does not pay for one (a change to a service of ten thousand
instances rebuilds all of its endpoints).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ecosystem.v1 import registry_pb2 as pb
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from controlplane.view import InstanceView, Selector, Watcher
from controlplane.xds._envoy import INBOUND_PORT_KEY, EnvoyMesh
from controlplane.xds._envoy import PREFIX as ENVOY_PREFIX
from controlplane.xds._resources import (
    CLUSTER,
    ENDPOINTS,
    LISTENER,
    ROUTE,
    ServiceName,
    api_listener,
    cluster,
    endpoint_instances,
    lb_policy,
    load_assignment,
    pack,
    prioritized,
    route_configuration,
)

__all__ = ["Encoded", "Snapshot", "XdsCache"]

log = logging.getLogger(__name__)

#: Listeners, routes and empty placeholders remembered by name (they depend
#: on the name alone); past this many the memo starts over.
_MEMO_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every service's Cluster and ClusterLoadAssignment at one registry revision."""

    revision: int
    clusters: Mapping[str, any_pb2.Any]
    endpoints: Mapping[str, any_pb2.Any]
    #: A sidecar's Envoy's endpoints (``sidecar/<service>.<namespace>``): the
    #: port of the inbound listener in front of an instance where it has one.
    #: Only services with such an instance; the others get the shared one renamed.
    via_inbound: Mapping[str, any_pb2.Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def version(self) -> str:
        """The ``version_info`` of responses built from it: the registry revision."""
        return str(self.revision)


@dataclass(frozen=True, slots=True)
class Encoded:
    """A state-of-the-world response as sent: the resources it holds, what
    names its content (each name with its resource's identity: the same
    content at two snapshots when no resource in it was rebuilt), and its
    version, nonce and bytes."""

    resources: Mapping[str, any_pb2.Any]
    content: tuple[tuple[str, int], ...]
    version: str
    nonce: str
    data: bytes


class XdsCache:
    """Follows the view and publishes snapshots; ``start`` once, ``close`` once."""

    def __init__(self, view: InstanceView) -> None:
        self._view = view
        self._snapshot = Snapshot(0, MappingProxyType({}), MappingProxyType({}))
        self._clusters: dict[str, any_pb2.Any] = {}
        self._endpoints: dict[str, any_pb2.Any] = {}
        self._via: dict[str, any_pb2.Any] = {}
        self._renamed: dict[str, tuple[any_pb2.Any, any_pb2.Any]] = {}
        self._memo: dict[tuple[str, str], any_pb2.Any] = {}
        self._problems: dict[str, tuple[str, ...]] = {}
        # (assignment name, region, zone) -> (the shared assignment, its variant)
        self._nearby: dict[tuple[str, str, str], tuple[any_pb2.Any, any_pb2.Any]] = {}
        # Encodings at the current snapshot (``_encoded_revision``):
        # (type, ((name, id of resource), ...)) -> the response;
        self._encoded: dict[tuple[object, ...], Encoded] = {}
        # (type, names, proxyless, locality) -> the response of that subscription;
        self._responses: dict[tuple[object, ...], Encoded] = {}
        # (type, changed (name, id)s, removed names) -> (resources, nonce, bytes).
        self._deltas: dict[tuple[object, ...], tuple[tuple[object, ...], str, bytes]] = {}
        # id of a resource -> (the resource, its digest version)
        self._versions: dict[int, tuple[any_pb2.Any, str]] = {}
        self._encoded_revision = -1
        self._nonces = itertools.count(1)
        self._listeners: set[asyncio.Event] = set()
        self._wake = asyncio.Event()
        # Services changed since the last build while nobody listened (None: all).
        self._stale: set[tuple[str, str]] | None = set()
        self._is_stale = False
        self._watcher: Watcher | None = None
        self._task: asyncio.Task[None] | None = None
        self.closed = False
        #: Mutual TLS and intentions for sidecars' Envoys (set when the CA is on).
        self.mesh: EnvoyMesh | None = None
        #: Snapshots built, and how long the last one took (seconds).
        self.builds = 0
        self.last_build_seconds = 0.0

    @property
    def snapshot(self) -> Snapshot:
        """The resources at the view's revision (built now if changes waited)."""
        if self._is_stale:
            self._rebuild(self._stale)
        return self._snapshot

    async def start(self) -> None:
        """Builds the first snapshot from the view, then follows it."""
        view = self._view
        self._watcher = view.subscribe(Selector(), view.revision, wake=self._wake)
        self._changed(None)
        self._task = asyncio.create_task(self._follow(), name="xds-cache")

    async def close(self) -> None:
        """Stops following; every stream is woken and finds the cache closed."""
        if self.closed:
            return
        self.closed = True
        if self._watcher is not None:
            self._view.unsubscribe(self._watcher)
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
        self._notify()

    def listen(self, wake: asyncio.Event) -> None:
        """``wake`` is set at every new snapshot, and when the cache closes."""
        self._listeners.add(wake)

    def unlisten(self, wake: asyncio.Event) -> None:
        self._listeners.discard(wake)

    @property
    def listener_count(self) -> int:
        return len(self._listeners)

    # -- resources by type and name ----------------------------------------

    def resources(
        self,
        type_url: str,
        names: Iterable[str] | None,
        *,
        proxyless: bool = True,
        locality: tuple[str, str] = ("", ""),
    ) -> dict[str, any_pb2.Any]:
        """The resources of ``type_url`` a client subscribed to (``names``;
        None for all of them), by name. A well-formed name of a service
        without instances gets an empty cluster (calls fail UNAVAILABLE
        until one registers), not "does not exist". Names that are not
        service names are left out (the client times them out as missing).
        A client that gave its ``locality`` (region, zone) gets endpoints
        with priorities: its zone, its region, the rest."""
        snapshot = self.snapshot
        if type_url in (CLUSTER, ENDPOINTS):
            current = snapshot.clusters if type_url == CLUSTER else snapshot.endpoints
            found: dict[str, any_pb2.Any] = {}
            if names is None:
                found = dict(current)
            else:
                for name in names:
                    resource = current.get(name)
                    if resource is None:
                        resource = self._placeholder(type_url, name)
                    if resource is not None:
                        found[name] = resource
            if type_url == ENDPOINTS and names is not None:
                for name in names:
                    if name.startswith(ENVOY_PREFIX):
                        resource = self._via_inbound(snapshot, name)
                        if resource is not None:
                            found[name] = resource
            if type_url == ENDPOINTS and any(locality):
                found = {name: self._near(name, res, locality) for name, res in found.items()}
            return found
        if names is None:
            # A wildcard listener or route subscription is an Envoy's: its
            # socket listeners are not served yet (docs/xds.md).
            return {}
        found = {}
        for name in names:
            resource = self._named(type_url, name, proxyless)
            if resource is not None:
                found[name] = resource
        return found

    def response(
        self,
        type_url: str,
        names: frozenset[str] | None,
        *,
        proxyless: bool = True,
        locality: tuple[str, str] = ("", ""),
    ) -> Encoded:
        """The state-of-the-world response for a subscription to ``names``
        (None: all) at the current snapshot, as :meth:`resources` selects
        them: looked up and encoded once per subscription and snapshot, so
        the thousand streams subscribed alike cost one build between them
        and a dictionary look-up each."""
        self._current_revision()
        key = (type_url, names, proxyless, locality)
        found = self._responses.get(key)
        if found is None:
            found = self.encode(
                type_url, self.resources(type_url, names, proxyless=proxyless, locality=locality)
            )
            if len(self._responses) >= _MEMO_LIMIT:
                self._responses.clear()
            self._responses[key] = found
        return found

    def encode(self, type_url: str, resources: Mapping[str, any_pb2.Any]) -> Encoded:
        """A state-of-the-world response of ``resources`` at the current
        snapshot, serialized once and shared by every stream sent the same
        resources (a thousand clients of one service are sent one buffer).
        The nonce names that content: a stream sent it twice was sent the
        same response twice."""
        snapshot = self.snapshot
        self._current_revision()
        ordered = sorted(resources.items())
        content = tuple((name, id(resource)) for name, resource in ordered)
        key = (type_url, content)
        known = self._encoded.get(key)
        if known is None:
            nonce = str(next(self._nonces))
            response = discovery_pb2.DiscoveryResponse(
                version_info=snapshot.version,
                type_url=type_url,
                nonce=nonce,
                resources=[resource for _, resource in ordered],
            )
            # It holds the resources: the identities in its content stay theirs.
            known = Encoded(
                MappingProxyType(dict(ordered)),
                content,
                snapshot.version,
                nonce,
                response.SerializeToString(),
            )
            self._encoded[key] = known
        return known

    def delta(
        self,
        type_url: str,
        changed: list[tuple[str, any_pb2.Any]],
        removed: list[str],
    ) -> tuple[str, bytes]:
        """An incremental response carrying ``changed`` (name, resource; in
        name order) and the names ``removed``, at the current snapshot: its
        nonce and bytes, serialized once and shared by every stream owed
        the same delta (a thousand clients of one changed service are sent
        one buffer). Each resource's version is its digest, taken once."""
        snapshot = self.snapshot
        self._current_revision()
        key = (type_url, tuple((name, id(res)) for name, res in changed), tuple(removed))
        known = self._deltas.get(key)
        if known is None:
            nonce = str(next(self._nonces))
            response = discovery_pb2.DeltaDiscoveryResponse(
                system_version_info=snapshot.version,
                type_url=type_url,
                nonce=nonce,
                removed_resources=removed,
            )
            for name, resource in changed:
                entry = response.resources.add(name=name, version=self.version_of(resource))
                entry.resource.CopyFrom(resource)
            # The resources are kept with it: their ids in the key stay theirs.
            known = (tuple(res for _, res in changed), nonce, response.SerializeToString())
            self._deltas[key] = known
        return known[1], known[2]

    def version_of(self, resource: any_pb2.Any) -> str:
        """A resource's version in incremental responses: a digest of its
        bytes (the same after a restart), taken once per resource object."""
        known = self._versions.get(id(resource))
        if known is not None and known[0] is resource:
            return known[1]
        version = hashlib.blake2b(resource.value, digest_size=8).hexdigest()
        if len(self._versions) >= _MEMO_LIMIT:
            self._versions.clear()
        self._versions[id(resource)] = (resource, version)
        return version

    def _current_revision(self) -> None:
        """Forgets the encodings of older snapshots (and past the memo limit)."""
        revision = self.snapshot.revision
        if self._encoded_revision != revision or len(self._encoded) >= _MEMO_LIMIT:
            self._encoded.clear()
            self._responses.clear()
            self._deltas.clear()
            self._encoded_revision = revision
        elif len(self._deltas) >= _MEMO_LIMIT:
            self._deltas.clear()

    def _via_inbound(self, snapshot: Snapshot, name: str) -> any_pb2.Any | None:
        """The endpoints a sidecar's Envoy dials for ``sidecar/<service>``: the
        inbound listeners' ports, or the shared assignment renamed (once per change)."""
        shared_name = name.removeprefix(ENVOY_PREFIX)
        via = snapshot.via_inbound.get(shared_name)
        if via is not None:
            return via
        shared = snapshot.endpoints.get(shared_name) or self._placeholder(ENDPOINTS, shared_name)
        if shared is None:
            return None
        known = self._renamed.get(name)
        if known is not None and known[0] is shared:
            return known[1]
        assignment = endpoint_pb2.ClusterLoadAssignment()
        shared.Unpack(assignment)
        assignment.cluster_name = name
        renamed = pack(assignment)
        if len(self._renamed) >= _MEMO_LIMIT:
            self._renamed.clear()
        self._renamed[name] = (shared, renamed)
        return renamed

    def _near(self, name: str, resource: any_pb2.Any, locality: tuple[str, str]) -> any_pb2.Any:
        """``resource`` (an assignment) with priorities for ``locality``: built
        once per assignment and locality, shared by the clients there."""
        key = (name, *locality)
        known = self._nearby.get(key)
        if known is not None and known[0] is resource:
            return known[1]
        assignment = endpoint_pb2.ClusterLoadAssignment()
        resource.Unpack(assignment)
        near = pack(prioritized(assignment, *locality))
        if len(self._nearby) >= _MEMO_LIMIT:
            self._nearby.clear()
        self._nearby[key] = (resource, near)
        return near

    def _named(self, type_url: str, name: str, proxyless: bool) -> any_pb2.Any | None:
        key = (type_url, name)
        memo = self._memo.get(key)
        if memo is not None:
            return memo
        try:
            service = ServiceName.parse(name)
        except ValueError:
            return None
        if type_url == LISTENER:
            if not proxyless:
                return None
            resource = pack(api_listener(name, service))
        elif type_url == ROUTE:
            if name != service.resource:
                return None
            resource = pack(route_configuration(service))
        else:
            return None
        return self._remember(key, resource)

    def _placeholder(self, type_url: str, name: str) -> any_pb2.Any | None:
        key = (type_url, name)
        memo = self._memo.get(key)
        if memo is not None:
            return memo
        try:
            service = ServiceName.parse(name)
        except ValueError:
            return None
        if service.resource != name:
            return None
        message = cluster(service, ()) if type_url == CLUSTER else load_assignment(service, ())
        return self._remember(key, pack(message))

    def _remember(self, key: tuple[str, str], resource: any_pb2.Any) -> any_pb2.Any:
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        self._memo[key] = resource
        return resource

    # -- following the view -------------------------------------------------

    async def _follow(self) -> None:
        watcher = self._watcher
        assert watcher is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            if watcher.closed:
                log.info("xDS cache: the registry view closed; no more snapshots")
                self.closed = True
                self._notify()
                return
            if watcher.resync:
                watcher.resync = False
                watcher.discard_pending()
                self._changed(None)
            elif watcher.pending:
                frames, _ = watcher.take(watcher.pending_bytes)
                batch = pb.WatchResponse.FromString(b"".join(frames))
                touched = {
                    (event.instance.namespace, event.instance.service)
                    for event in batch.events
                    if event.HasField("instance")
                }
                self._changed(touched)

    def _changed(self, touched: set[tuple[str, str]] | None) -> None:
        """Rebuilds now for the streams listening, or notes what to build later."""
        if touched is None or self._stale is None:
            self._stale = None
        else:
            self._stale |= touched
        self._is_stale = True
        if self._listeners:
            self._rebuild(self._stale)

    def _rebuild(self, touched: set[tuple[str, str]] | None) -> None:
        """Rebuilds the ``touched`` services (None: all) and publishes."""
        started = time.perf_counter()
        view = self._view
        if touched is None:
            touched = {(svc.namespace, svc.name) for svc in view.services()}
            gone = set(self._clusters) - {ServiceName(s, ns).resource for ns, s in touched}
            for resource in gone:
                self._clusters.pop(resource, None)
                self._endpoints.pop(resource, None)
                self._via.pop(resource, None)
                self._problems.pop(resource, None)
        for namespace, service in touched:
            name = ServiceName(service, namespace)
            found = view.service(namespace, service)
            if found is None:
                self._clusters.pop(name.resource, None)
                self._endpoints.pop(name.resource, None)
                self._via.pop(name.resource, None)
                self._problems.pop(name.resource, None)
                continue
            _summary, instances = found
            _policy, complaint = lb_policy(instances)
            _kept, problems = endpoint_instances(instances)
            found_problems = tuple(filter(None, (complaint, *problems)))
            known = self._problems.get(name.resource, ())
            for problem in found_problems:
                if problem not in known:  # said once, not at every change of the service
                    log.warning("xDS cluster %s: %s", name.resource, problem)
            self._problems[name.resource] = found_problems
            self._keep(self._clusters, name.resource, pack(cluster(name, instances)))
            self._keep(self._endpoints, name.resource, pack(load_assignment(name, instances)))
            if any(INBOUND_PORT_KEY in inst.metadata for inst in instances):
                via = load_assignment(
                    name,
                    instances,
                    port_key=INBOUND_PORT_KEY,
                    resource=ENVOY_PREFIX + name.resource,
                )
                self._keep(self._via, name.resource, pack(via))
            else:
                self._via.pop(name.resource, None)
        self._snapshot = Snapshot(
            view.revision,
            MappingProxyType(dict(self._clusters)),
            MappingProxyType(dict(self._endpoints)),
            MappingProxyType(dict(self._via)),
        )
        self._stale = set()
        self._is_stale = False
        self.builds += 1
        self.last_build_seconds = time.perf_counter() - started
        self._notify()

    @staticmethod
    def _keep(current: dict[str, any_pb2.Any], name: str, fresh: any_pb2.Any) -> None:
        previous = current.get(name)
        if previous is None or previous.value != fresh.value:
            current[name] = fresh

    def _notify(self) -> None:
        for wake in self._listeners:
            wake.set()
