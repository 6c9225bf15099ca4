"""The asyncio client of the control plane's registry."""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from ecosystem.v1 import agent_pb2, registry_pb2

from sdk._errors import ClientClosedError
from sdk._lease import LeaseKeeper, instance_key
from sdk._nodes import NodeInfo, RevisionWait
from sdk._retry import RetryPolicy
from sdk._transport import (
    CaFile,
    ChannelFactory,
    Transport,
    client_channels,
    resolve_servers,
    resolve_token,
)
from sdk._types import (
    Deregistration,
    HealthStatus,
    Instance,
    InstanceList,
    Liveness,
    Service,
    ServiceDetail,
    ServiceList,
    WatchEvent,
    health_filter,
)
from sdk._watch import watch_events
from sdk.balancer import NoEndpointsError
from sdk.bus import BusClient

__all__ = ["AsyncClient"]

logger = logging.getLogger(__name__)

#: The health states :meth:`AsyncClient.resolve` keeps: an instance that is
#: WARNING still serves (as the balancers count it).
USABLE_HEALTH = (HealthStatus.PASSING, HealthStatus.WARNING)

#: Nodes asked for per ListNodes page (the most the control plane gives).
_NODES_PAGE = 1_000


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class AsyncClient:
    """Talks to the control plane's registry over gRPC (asyncio).

    ``servers`` is one ``"host:port"``, a comma-separated list of them, or a
    sequence; when None, ``ECO_SERVER`` is read, else ``127.0.0.1:7400``.
    Every call has a deadline (``timeout`` seconds, retries included). Calls
    that are safe to repeat are retried on UNAVAILABLE with jittered backoff
    (tuned by ``retry``), failing over between the addresses.
    ``ca_file`` (a PEM file of CA certificates; when None, ``ECO_CA_FILE`` is
    read) makes the channels TLS, trusting only servers whose certificate that
    CA signed; without one they are plaintext. ``channel_factory`` instead
    builds the channel to one address yourself. ``token`` (when None,
    ``ECO_TOKEN`` is read) is an ACL token's secret, sent with every call as
    ``authorization: Bearer <token>`` metadata. Nothing connects until the
    first call (the CA file is read then).

    Use it as an async context manager, or call :meth:`close`; a closed
    client cannot be reopened::

        async with AsyncClient("10.0.0.5:7400,10.0.0.6:7400") as client:
            await client.register("web", "10.0.0.9", 8080, ephemeral=True)
            async for event in client.watch("web"):
                ...
    """

    def __init__(
        self,
        servers: str | Sequence[str] | None = None,
        *,
        timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        ca_file: CaFile | None = None,
        channel_factory: ChannelFactory | None = None,
        token: str | None = None,
    ) -> None:
        self._transport = Transport(
            resolve_servers(servers),
            timeout=timeout,
            policy=retry,
            channel_factory=client_channels(ca_file, channel_factory),
            token=resolve_token(token),
        )
        self._lease = LeaseKeeper(self._transport)
        self._bus: BusClient | None = None
        self._state = _State.OPEN

    @property
    def servers(self) -> tuple[str, ...]:
        """The control-plane addresses, in order of preference."""
        return self._transport.addresses

    @property
    def closed(self) -> bool:
        return self._state is _State.CLOSED

    @property
    def bus(self) -> BusClient:
        """The message bus over this client's connection (see ``docs/bus.md``)."""
        self._check_open()
        if self._bus is None:
            self._bus = BusClient._over(self._transport)
        return self._bus

    async def __aenter__(self) -> Self:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stops the lease keepalive and closes the channels. Idempotent.

        The client's lease is revoked, so its ephemeral instances disappear
        at once (or, if the control plane cannot be reached, when the lease
        expires, at most ``lease_ttl`` seconds later). Watches iterating this
        client end.
        """
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        try:
            if self._bus is not None:
                await self._bus.close()
            await self._lease.close()
        finally:
            await self._transport.close()

    async def register(
        self,
        service: str,
        address: str,
        port: int,
        *,
        id: str | None = None,
        namespace: str = "",
        node: str = "",
        platform: str = "",
        region: str = "",
        zone: str = "",
        tags: Iterable[str] = (),
        metadata: Mapping[str, str] | None = None,
        weight: int = 0,
        ephemeral: bool = False,
        lease_ttl: int = 10,
        expected_revision: int | None = None,
    ) -> Instance:
        """Registers (or replaces) one instance and returns it as stored.

        Without ``id`` the control plane picks it: the id of the instance of
        ``service`` already registered at ``address`` and ``port`` (which is
        then updated, not duplicated), else a new ``"<service>-<12 hex
        digits>"``.
        A persistent instance stays until deregistered. An ``ephemeral`` one
        joins this client's lease, which the client keeps alive in the
        background and re-creates if the control plane loses it; it goes
        away ``lease_ttl`` seconds after the client closes or stops
        refreshing. ``expected_revision`` makes the write conditional: 0 for
        "must not exist yet" (AlreadyExistsError), N for "still at mod
        revision N" (RevisionMismatchError); such writes are not retried.
        """
        self._check_open()
        # Only what the wire cannot carry is refused here; the control plane
        # validates the rest and names each bad field (InvalidArgumentError).
        if port < 0 or weight < 0:
            raise ValueError("port and weight must not be negative")
        instance = registry_pb2.Instance(
            id=id or "",
            service=service,
            namespace=namespace,
            node=node,
            platform=platform,
            region=region,
            zone=zone,
            address=address,
            port=port,
            tags=list(tags),
            metadata=dict(metadata or {}),
            weight=weight,
            liveness=(Liveness.EPHEMERAL if ephemeral else Liveness.PERSISTENT).to_proto(),
        )
        if ephemeral:
            return await self._lease.register(
                instance, ttl=lease_ttl, expected_revision=expected_revision
            )
        request = registry_pb2.RegisterInstanceRequest(instance=instance)
        if expected_revision is not None:
            request.expected_revision = expected_revision
        response = await self._transport.unary(
            "RegisterInstance", request, idempotent=expected_revision is None
        )
        # Registered as persistent now: no longer ours to keep alive.
        await self._lease.release(instance_key(namespace, service, response.instance.id))
        return Instance.from_proto(response.instance)

    async def deregister(
        self,
        service: str,
        id: str,
        *,
        namespace: str = "",
        expected_revision: int | None = None,
    ) -> Deregistration:
        """Removes one instance; returns the revision and whether it was removed.

        Idempotent, like a delete in etcd or Consul: an instance that is not
        registered is not an error, only ``deleted=False``; so the call is
        retried on UNAVAILABLE like a read (a retry after a lost answer
        succeeds, with ``deleted=False``). ``expected_revision`` N removes it
        only while it is at mod revision N (RevisionMismatchError when it is
        registered at another); a missing one is not an error then either.
        """
        self._check_open()
        request = registry_pb2.DeregisterInstanceRequest(
            service=service, namespace=namespace, id=id
        )
        if expected_revision is not None:
            request.expected_revision = expected_revision
        try:
            response = await self._transport.unary("DeregisterInstance", request, idempotent=True)
        finally:
            await self._lease.release(instance_key(namespace, service, id))
        return Deregistration.from_proto(response)

    async def get_service(self, name: str, *, namespace: str = "") -> ServiceDetail:
        """One service: its health summary, every instance, and the revision read at."""
        self._check_open()
        request = registry_pb2.GetServiceRequest(name=name, namespace=namespace)
        instances, response = await self._all_pages("GetService", request, "instances")
        return ServiceDetail(
            service=Service.from_proto(response.service),
            instances=tuple(Instance.from_proto(i) for i in instances),
            revision=int(response.revision),
        )

    async def list_services(self, *, namespace: str = "") -> ServiceList:
        """Every service (in ``namespace``, or all when empty) with counts by health."""
        self._check_open()
        request = registry_pb2.ListServicesRequest(namespace=namespace)
        services, response = await self._all_pages("ListServices", request, "services")
        return ServiceList(
            services=tuple(Service.from_proto(s) for s in services),
            revision=int(response.revision),
        )

    async def list_nodes(self) -> list[NodeInfo]:
        """Every sidecar the control plane knows, with its session state (all
        pages of them)."""
        self._check_open()
        request = agent_pb2.ListNodesRequest(page_size=_NODES_PAGE)
        nodes, _ = await self._all_pages("ListNodes", request, "nodes")
        return [NodeInfo.from_proto(n) for n in nodes]

    async def wait_for_revision(self, revision: int, *, timeout: float = 30.0) -> RevisionWait:
        """Waits until every connected sidecar subscribed to a service changed
        at ``revision`` has applied it, or ``timeout`` seconds pass; the
        answer says which have not."""
        self._check_open()
        if revision <= 0:
            raise ValueError("revision must be positive")
        if not 0 < timeout <= 600:
            raise ValueError("timeout must be between 0 and 600 seconds")
        request = agent_pb2.WaitForRevisionRequest(
            revision=revision, timeout_ms=max(1, round(timeout * 1000))
        )
        response = await self._transport.unary(
            "WaitForRevision", request, idempotent=True, time_limit=timeout + 5.0
        )
        return RevisionWait.from_proto(revision, response)

    async def list_instances(
        self,
        *,
        service: str = "",
        namespace: str = "",
        platform: str = "",
        zone: str = "",
        tags: Iterable[str] = (),
        health: Iterable[HealthStatus | str] = (),
    ) -> InstanceList:
        """Instances matching every given filter; empty filters match all.

        ``tags`` must all be present on an instance; ``health`` keeps
        instances in any of the listed states.
        """
        self._check_open()
        selector = _selector(service, namespace, platform, zone, tags, health)
        request = registry_pb2.ListInstancesRequest(selector=selector)
        instances, response = await self._all_pages("ListInstances", request, "instances")
        return InstanceList(
            instances=tuple(Instance.from_proto(i) for i in instances),
            revision=int(response.revision),
        )

    async def resolve(
        self,
        service: str,
        *,
        namespace: str = "",
        platform: str = "",
        zone: str = "",
        tags: Iterable[str] = (),
    ) -> InstanceList:
        """The instances of ``service`` a caller may send requests to now: those
        whose health is PASSING or WARNING (and that match every other given
        filter), with the revision they were read at. Empty when none is."""
        return await self.list_instances(
            service=service,
            namespace=namespace,
            platform=platform,
            zone=zone,
            tags=tags,
            health=USABLE_HEALTH,
        )

    async def pick(
        self,
        service: str,
        *,
        namespace: str = "",
        platform: str = "",
        zone: str = "",
        tags: Iterable[str] = (),
    ) -> Instance:
        """One instance of ``service`` to call, from :meth:`resolve`'s, chosen at
        random in proportion to its weight (0 counts as 1).

        One read per call: to call a service often, use a ``ServiceChannel``
        (``docs/proxyless.md``) or a balancer fed by :meth:`watch`
        (``docs/load-balancing.md``). Raises :class:`NoEndpointsError` when no
        instance is PASSING or WARNING; its ``total`` says how many are
        registered.
        """
        tags = tuple(tags)
        usable = await self.resolve(
            service, namespace=namespace, platform=platform, zone=zone, tags=tags
        )
        if usable.instances:
            weights = [i.weight or 1 for i in usable.instances]
            return random.choices(usable.instances, weights=weights)[0]
        every = await self.list_instances(
            service=service, namespace=namespace, platform=platform, zone=zone, tags=tags
        )
        total = len(every.instances)
        detail = (
            f"none of its {total} instance(s) is PASSING or WARNING"
            if total
            else "it has no registered instance"
        )
        raise NoEndpointsError(
            f"no instance of {service!r} to call: {detail}", total=total, unavailable=total
        )

    async def _all_pages(self, method: str, request: Any, field: str) -> tuple[list[Any], Any]:
        """Every item of ``field`` over the pages of a list call (a large
        registry comes in several responses), and the last response."""
        items: list[Any] = []
        while True:
            response = await self._transport.unary(method, request, idempotent=True)
            items.extend(getattr(response, field))
            token = response.next_page_token
            if not token or token == request.page_token:
                return items, response
            request.page_token = token

    def watch(
        self,
        service: str = "",
        *,
        namespace: str = "",
        platform: str = "",
        zone: str = "",
        tags: Iterable[str] = (),
        since_revision: int = 0,
        progress_interval: float = 5.0,
    ) -> AsyncGenerator[WatchEvent, None]:
        """Streams changes to matching instances, for as long as it is iterated.

        From ``since_revision`` 0 (or one the server no longer retains) it
        starts with RESYNC, the current instances as PUTs, and SNAPSHOT_END;
        from a retained revision, every event after it. Then live PUT and
        DELETE events, and PROGRESS every ``progress_interval`` seconds while
        idle. After a disconnect or a control-plane restart it reconnects
        with jittered backoff and resumes after the last event it delivered;
        if the server cannot resume, it sends RESYNC again and the caller
        must drop what it holds. Close it with ``aclose()`` or by leaving the
        ``async for``; it also ends when the client closes.
        """
        self._check_open()
        if not 0.1 <= progress_interval <= 60.0:
            raise ValueError("progress_interval must be between 0.1 and 60 seconds")
        if since_revision < 0:
            raise ValueError("since_revision must not be negative")
        selector = _selector(service, namespace, platform, zone, tags, ())
        return watch_events(
            self._transport,
            selector,
            since_revision=since_revision,
            progress_interval=progress_interval,
            backoff=self._transport.policy.backoff(),
        )

    def _check_open(self) -> None:
        if self._state is _State.CLOSED:
            raise ClientClosedError()


def _selector(
    service: str,
    namespace: str,
    platform: str,
    zone: str,
    tags: Iterable[str],
    health: Iterable[HealthStatus | str],
) -> registry_pb2.InstanceSelector:
    return registry_pb2.InstanceSelector(
        service=service,
        namespace=namespace,
        platform=platform,
        zone=zone,
        tags=list(tags),
        health=health_filter(health),
    )
