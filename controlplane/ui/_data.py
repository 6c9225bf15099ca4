"""What the console shows, read from the control plane's own objects.

Nothing here queries the store in a way of its own: instances and services
come from the registry view (the same index ListServices and ListInstances
read), nodes, platforms and datasets from the servicers that answer
ListNodes, ListPlatforms and ListDatasets (called in-process with the
caller's token, as a remote call would be), routes, sync jobs and intentions
from the books their servicers use, and bus streams from the broker. Every
row is kept only if the caller's identity may read it, by the same
``Authorizer`` checks the ACL interceptor makes on those RPCs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ecosystem.v1 import agent_pb2, catalog_pb2, gateway_pb2, intention_pb2, platform_pb2, sync_pb2
from ecosystem.v1 import registry_pb2 as pb

from controlplane.acl import Authorizer, Identity, Need
from controlplane.acl._table import intention_need
from controlplane.catalog import CatalogServicer, PlatformServicer
from controlplane.view import Selector, summarize
from controlplane.xds import NodeStatus
from sdk import StreamInfo

if TYPE_CHECKING:
    from controlplane.app import ControlPlane

__all__ = [
    "HEALTH_NAMES",
    "ConsoleData",
    "ConsoleError",
    "ServiceFilter",
    "ServiceRow",
    "health_name",
]

#: Health as the console spells it (and the ``health`` filter takes).
HEALTH_NAMES = {
    pb.HEALTH_STATUS_PASSING: "passing",
    pb.HEALTH_STATUS_WARNING: "warning",
    pb.HEALTH_STATUS_CRITICAL: "critical",
    pb.HEALTH_STATUS_UNKNOWN: "unknown",
    pb.HEALTH_STATUS_UNSPECIFIED: "unknown",
}
_HEALTH_BY_NAME = {
    "passing": pb.HEALTH_STATUS_PASSING,
    "warning": pb.HEALTH_STATUS_WARNING,
    "critical": pb.HEALTH_STATUS_CRITICAL,
    "unknown": pb.HEALTH_STATUS_UNKNOWN,
}
#: ListNodes pages of this many nodes (its maximum).
_NODE_PAGE = 1_000
#: Runs of a sync job shown with it.
SYNC_RUNS = 5


def health_name(status: int) -> str:
    return HEALTH_NAMES.get(status, "unknown")  # type: ignore[call-overload,no-any-return]


class ConsoleError(Exception):
    """A read the console could not make: ``field`` names the query parameter
    at fault ("" when it is none of them)."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class ServiceFilter:
    """The services page's filters (query parameters); empty ones match all."""

    namespace: str = ""
    platform: str = ""
    tag: str = ""
    health: str = ""

    @classmethod
    def parse(cls, query: Any) -> ServiceFilter:
        """From the query string; ConsoleError naming the parameter when one is bad."""
        found = cls(
            namespace=str(query.get("namespace", "")).strip(),
            platform=str(query.get("platform", "")).strip(),
            tag=str(query.get("tag", "")).strip(),
            health=str(query.get("health", "")).strip().lower(),
        )
        if found.health and found.health not in _HEALTH_BY_NAME:
            raise ConsoleError(
                f"health must be one of {', '.join(_HEALTH_BY_NAME)}, got {found.health!r}",
                "health",
            )
        for name in ("namespace", "platform", "tag"):
            if len(getattr(found, name)) > 256:
                raise ConsoleError(f"{name} is longer than 256 characters", name)
        return found

    def selector(self) -> Selector:
        return Selector(
            namespace=self.namespace,
            platform=self.platform,
            tags=frozenset((self.tag,)) if self.tag else frozenset(),
            health=frozenset((_HEALTH_BY_NAME[self.health],)) if self.health else frozenset(),
        )


@dataclass(slots=True)
class ServiceRow:
    summary: pb.Service
    platforms: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)

    @property
    def health(self) -> str:
        """The worst health among its instances (the row's colour)."""
        s = self.summary
        if s.critical_count:
            return "critical"
        if s.warning_count:
            return "warning"
        if s.unknown_count:
            return "unknown"
        return "passing" if s.passing_count else "unknown"


@dataclass(slots=True)
class Options:
    """The values the services page's filters offer (of what the caller may read)."""

    namespaces: list[str]
    platforms: list[str]
    tags: list[str]


class _LocalCall:
    """The servicer context of an in-process call: the caller's token as its
    metadata; the status a servicer sets instead of answering is kept."""

    def __init__(self, secret: str) -> None:
        self._metadata = (("authorization", f"Bearer {secret}"),) if secret else ()
        self.code: Any = None
        self.details = ""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return "ipv4:127.0.0.1:0"

    def set_code(self, code: Any) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, _metadata: Any) -> None:
        return None

    def failed(self, rpc: str) -> ConsoleError:
        return ConsoleError(f"{rpc} failed: {self.details or self.code}")


class ConsoleData:
    """Reads for one request, as ``identity`` (whose token is ``secret``) may see them."""

    def __init__(
        self, plane: ControlPlane, authorizer: Authorizer, identity: Identity, secret: str
    ) -> None:
        self.plane = plane
        self.authorizer = authorizer
        self.identity = identity
        self.secret = secret

    def may(self, need: Need) -> bool:
        return self.authorizer.allows(self.identity, need)

    def _may_read_service(self, namespace: str, name: str) -> bool:
        return self.may(Need("service", name, "read", namespace or "default"))

    # -- services --------------------------------------------------------------------

    def services(self, wanted: ServiceFilter) -> list[ServiceRow]:
        """Services with an instance ``wanted`` matches, counted over those instances."""
        groups: dict[tuple[str, str], list[pb.Instance]] = {}
        for inst in self.plane.view.select(wanted.selector()):
            if self.authorizer.may_read_instance(self.identity, inst):
                groups.setdefault((inst.namespace, inst.service), []).append(inst)
        rows = []
        for (namespace, name), instances in sorted(groups.items()):
            rows.append(
                ServiceRow(
                    summarize(namespace, name, instances),
                    platforms=sorted({i.platform for i in instances if i.platform}),
                    tags=sorted({t for i in instances for t in i.tags}),
                )
            )
        return rows

    def options(self) -> Options:
        namespaces: set[str] = set()
        platforms: set[str] = set()
        tags: set[str] = set()
        for _key, inst in list(self.plane.view.items()):
            if not self.authorizer.may_read_instance(self.identity, inst):
                continue
            namespaces.add(inst.namespace)
            if inst.platform:
                platforms.add(inst.platform)
            tags.update(inst.tags)
        return Options(sorted(namespaces), sorted(platforms), sorted(tags))

    def service(self, namespace: str, name: str) -> tuple[pb.Service, list[pb.Instance]] | None:
        """A service and its instances; None when there is none the caller may read."""
        if not self._may_read_service(namespace, name):
            return None
        return self.plane.view.service(namespace, name)

    # -- nodes -----------------------------------------------------------------------

    async def nodes(self) -> list[agent_pb2.NodeStatus]:
        """Every node, as ListNodes answers (this replica's and its peers' sidecars)."""
        agent = self.plane.agent
        if agent is None:
            return []
        found: list[agent_pb2.NodeStatus] = []
        token = ""
        while True:
            call = _LocalCall(self.secret)
            request = agent_pb2.ListNodesRequest(page_size=_NODE_PAGE, page_token=token)
            response = await agent.ListNodes(request, call)
            if response is None:
                raise call.failed("ListNodes")
            found.extend(n for n in response.nodes if self.may(Need("node", n.node.id, "read")))
            token = response.next_page_token
            if not token:
                return found

    def xds_nodes(self) -> list[NodeStatus]:
        """The xDS clients this replica has served (connected, or recently),
        those the caller may read, by node id."""
        return [
            n for n in self.plane.xds_nodes.nodes() if self.may(Need("node", n.node_id, "read"))
        ]

    @property
    def revision(self) -> int:
        """The revision the registry view has applied (what sidecars are sent)."""
        return self.plane.view.revision

    # -- platforms, datasets ---------------------------------------------------------

    async def platforms(self) -> list[tuple[platform_pb2.Platform, int]]:
        """Every platform the caller may read, with how many instances name it."""
        plane = self.plane
        call = _LocalCall(self.secret)
        servicer = PlatformServicer(plane.store, plane.view)
        response = await servicer.ListPlatforms(platform_pb2.ListPlatformsRequest(), call)
        if response is None:
            raise call.failed("ListPlatforms")
        return [
            (p, plane.view.platform_instance_count(p.name))
            for p in response.platforms
            if self.may(Need("platform", p.name, "read"))
        ]

    async def datasets(self) -> list[catalog_pb2.Dataset]:
        plane = self.plane
        if plane.sync is None:
            return []
        call = _LocalCall(self.secret)
        servicer = CatalogServicer(plane.store, plane.sync)
        response = await servicer.ListDatasets(catalog_pb2.ListDatasetsRequest(), call)
        if response is None:
            raise call.failed("ListDatasets")
        return [d for d in response.datasets if self.may(Need("dataset", d.name, "read"))]

    # -- routes, sync, intentions ----------------------------------------------------

    async def routes(self) -> list[gateway_pb2.Route]:
        book = self.plane.routes
        if book is None:
            return []
        listed = await book.list()
        return [r for r in listed.routes if self.may(Need("route", r.name, "read"))]

    async def sync_jobs(self) -> list[tuple[sync_pb2.SyncJob, list[sync_pb2.SyncRun]]]:
        """Each job the caller may read with its newest runs (newest first)."""
        book = self.plane.sync
        if book is None:
            return []
        jobs = [j for j in await book.list_jobs() if self.may(Need("sync", j.name, "read"))]
        jobs.sort(key=lambda j: j.name)
        return [(job, await book.list_runs(job.name, SYNC_RUNS)) for job in jobs]

    def intentions(self) -> tuple[list[intention_pb2.Intention], bool]:
        """The intentions the caller may read, and what a call none names gets."""
        book = self.plane.intentions
        if book is None:
            return [], self.authorizer.default_allow
        kept = [i for i in book.intentions if self.may(intention_need(i.destination, "read"))]
        return kept, book.default_allow

    # -- bus -------------------------------------------------------------------------

    @property
    def may_read_bus(self) -> bool:
        return self.may(Need("bus", "*", "read", anywhere=True))

    async def streams(self) -> list[StreamInfo]:
        """The durable streams and their consumers (what ListStreams answers)."""
        broker = self.plane.broker
        if broker is None or not self.may_read_bus:
            return []
        infos = await broker.streams()
        return sorted(infos, key=lambda i: i.name)
