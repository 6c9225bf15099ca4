"""What every RPC of every service needs: one entry per method, no exceptions.

An entry says, from the request, which rights a call needs (``Need``), and
whether the call writes (writes are audited). A method without an entry is
refused (PERMISSION_DENIED) to every caller that carries a token, and to
everyone with ``--acl deny``; a test pins that every method the control plane
serves has an entry. Streams whose client sends many messages (the agent
stream) are checked per message by ``message_needs``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ecosystem.v1 import agent_pb2

from controlplane.routes import prune_targets
from controlplane.store import Store
from sdk import IntentionName
from serving.acl import EVENTS_PREFIX, MESSAGING_NEEDS, Need, service_need

__all__ = [
    "EVENTS_PREFIX",
    "PUBLIC",
    "TABLE",
    "Entry",
    "Need",
    "intention_need",
    "message_needs",
]


@dataclass(frozen=True, slots=True)
class Entry:
    needs: Callable[[Any], Sequence[Need]]
    write: bool = False
    #: Filters what a stream or list sends back to what the caller may read.
    filtered: bool = False
    #: The request's ``lease_id`` names what it touches: the call needs write
    #: on every service the lease holds instances of (``needs`` when it holds none).
    lease: bool = False
    #: Rights the call needs beyond ``needs``, read from the store (what it
    #: would delete, e.g. the routes an apply with prune removes).
    stored: Callable[[Store, Any], Awaitable[Sequence[Need]]] | None = None


_service = service_need


def _any(resource: str, access: str) -> Need:
    return Need(resource, "*", access, anywhere=True)


def _selector_read(selector: Any) -> list[Need]:
    """One service: read on it. More (a namespace, everything): read on some
    service, and the answer is filtered to what the token may read."""
    if selector.service:
        return [_service(selector.service, selector.namespace, "read")]
    return [_any("service", "read")]


def _none(_request: Any) -> list[Need]:
    return []


def intention_need(destination: str, access: str) -> Need:
    """``access`` on an intention's destination (``SERVICE``, ``NAMESPACE/SERVICE``,
    ``NAMESPACE/*`` or ``*``): the service in its namespace, where ``*`` is a
    name of its own (a rule must match ``*``). A destination that is no such
    name needs the plain name's right, and is refused as invalid by the call."""
    try:
        name = IntentionName.parse(destination)
    except ValueError:
        return _service(destination, "", access)
    return _service(name.service, name.namespace, access)


_R = "/ecosystem.v1.RegistryService/"
_A = "/ecosystem.v1.AgentService/"
_M = "/ecosystem.v1.MessagingService/"
_C = "/ecosystem.v1.AclService/"
_CA = "/ecosystem.v1.CAService/"
_I = "/ecosystem.v1.IntentionService/"
_G = "/ecosystem.v1.RouteService/"
_S = "/ecosystem.v1.SyncService/"
_P = "/ecosystem.v1.PlatformService/"
_D = "/ecosystem.v1.CatalogService/"
_X = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"
_XS = "/envoy.service.status.v3.ClientStatusDiscoveryService/"


def _route(name: str, access: str) -> Need:
    return Need("route", name, access)


async def _pruned_routes(store: Store, request: Any) -> list[Need]:
    return [_route(name, "write") for name in await prune_targets(store, request)]


#: Methods anyone may call, with or without a token.
PUBLIC = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.health.v1.Health/List",
        _C + "Bootstrap",
        # The root certificates are public by nature.
        _CA + "GetTrustBundle",
    }
)

TABLE: dict[str, Entry] = {
    # Registry. A lease call needs write on every service the lease holds
    # instances of (looked up by the interceptor); for a lease that holds none
    # (e.g. one whose instances are gone), write on some service.
    _R + "RegisterInstance": Entry(
        lambda r: [_service(r.instance.service, r.instance.namespace, "write")], write=True
    ),
    _R + "DeregisterInstance": Entry(
        lambda r: [_service(r.service, r.namespace, "write")], write=True
    ),
    _R + "KeepAlive": Entry(lambda r: [_any("service", "write")], lease=True),
    _R + "RevokeLease": Entry(lambda r: [_any("service", "write")], write=True, lease=True),
    _R + "GetService": Entry(lambda r: [_service(r.name, r.namespace, "read")]),
    _R + "ListServices": Entry(lambda r: [_any("service", "read")], filtered=True),
    _R + "ListInstances": Entry(lambda r: _selector_read(r.selector), filtered=True),
    _R + "Watch": Entry(lambda r: _selector_read(r.selector), filtered=True),
    # Agent. Connect is checked per message (message_needs).
    _A + "Connect": Entry(_none, write=True),
    _A + "ListNodes": Entry(lambda r: [_any("node", "read")], filtered=True),
    _A + "WaitForRevision": Entry(lambda r: [_any("service", "read")]),
    # Bus: the same needs as a sidecar's local API (serving.acl.MESSAGING_NEEDS).
    **{
        _M + name: Entry(needs, write=name in ("AddStream", "DeleteStream"))
        for name, needs in MESSAGING_NEEDS.items()
    },
    # ACLs.
    _C + "Bootstrap": Entry(_none, write=True),
    _C + "CreatePolicy": Entry(lambda r: [Need("acl", "policy", "write")], write=True),
    _C + "ListPolicies": Entry(lambda r: [Need("acl", "policy", "read")]),
    _C + "GetPolicy": Entry(lambda r: [Need("acl", "policy", "read")]),
    _C + "DeletePolicy": Entry(lambda r: [Need("acl", "policy", "write")], write=True),
    _C + "CreateToken": Entry(lambda r: [Need("acl", "token", "write")], write=True),
    _C + "ListTokens": Entry(lambda r: [Need("acl", "token", "read")]),
    _C + "DeleteToken": Entry(lambda r: [Need("acl", "token", "write")], write=True),
    # A token reads itself (the interceptor has checked it is one).
    _C + "ResolveToken": Entry(_none),
    # The certificate authority.
    _CA + "GetTrustBundle": Entry(_none),
    _CA + "RotateRoot": Entry(lambda r: [Need("operator", "ca", "write")], write=True),
    # Intentions: writing one for a destination is writing that service's
    # policy (`service:<destination>:write`, in its namespace; `NS/*` needs a
    # service rule matching `*` or the namespace's rule, `*` a namespace rule
    # matching `*`).
    _I + "CreateIntention": Entry(
        lambda r: [intention_need(r.intention.destination, "write")], write=True
    ),
    _I + "DeleteIntention": Entry(lambda r: [intention_need(r.destination, "write")], write=True),
    # Listed: the intentions whose destination the token may read.
    _I + "ListIntentions": Entry(lambda r: [_any("service", "read")], filtered=True),
    _I + "CheckIntention": Entry(lambda r: [intention_need(r.destination, "read")]),
    # Gateway routes: write on each route an apply names and on each it
    # would prune; lists and the watch show the routes the token may read.
    _G + "ApplyRoutes": Entry(
        lambda r: [_route(route.name, "write") for route in r.routes] or [_any("route", "write")],
        write=True,
        stored=_pruned_routes,
    ),
    _G + "ListRoutes": Entry(lambda r: [_any("route", "read")], filtered=True),
    _G + "GetRoute": Entry(lambda r: [_route(r.name, "read")]),
    _G + "DeleteRoute": Entry(lambda r: [_route(r.name, "write")], write=True),
    _G + "WatchRoutes": Entry(lambda r: [_any("route", "read")], filtered=True),
    # Sync jobs: `sync:<job>:read|write`; a list shows the jobs the token may
    # read. The run calls are a sidecar's, for its own node: the right its
    # token holds for the node's session already.
    _S + "CreateSyncJob": Entry(lambda r: [Need("sync", r.job.name, "write")], write=True),
    _S + "UpdateSyncJob": Entry(lambda r: [Need("sync", r.job.name, "write")], write=True),
    _S + "DeleteSyncJob": Entry(lambda r: [Need("sync", r.name, "write")], write=True),
    _S + "PauseSyncJob": Entry(lambda r: [Need("sync", r.name, "write")], write=True),
    _S + "ResumeSyncJob": Entry(lambda r: [Need("sync", r.name, "write")], write=True),
    _S + "GetSyncJob": Entry(lambda r: [Need("sync", r.name, "read")]),
    _S + "ListSyncJobs": Entry(lambda r: [_any("sync", "read")], filtered=True),
    _S + "ListSyncRuns": Entry(lambda r: [Need("sync", r.job, "read")]),
    _S + "WatchSyncRuns": Entry(lambda r: [Need("node", r.node, "write")]),
    _S + "ClaimSyncRun": Entry(lambda r: [Need("node", r.node, "write")], write=True),
    _S + "ReportSyncRun": Entry(lambda r: [Need("node", r.node, "write")], write=True),
    # Platforms and datasets: `platform:<name>:read|write`, `dataset:<name>:
    # read|write`; lists show what the token may read, and a platform's
    # instances and services the ones the token may read.
    _P + "RegisterPlatform": Entry(
        lambda r: [Need("platform", r.platform.name, "write")], write=True
    ),
    _P + "GetPlatform": Entry(lambda r: [Need("platform", r.name, "read")], filtered=True),
    _P + "ListPlatforms": Entry(lambda r: [_any("platform", "read")], filtered=True),
    _P + "DeregisterPlatform": Entry(lambda r: [Need("platform", r.name, "write")], write=True),
    _P + "WatchPlatforms": Entry(lambda r: [Need("platform", "*", "read")]),
    _D + "AddDataset": Entry(lambda r: [Need("dataset", r.dataset.name, "write")], write=True),
    _D + "UpdateDataset": Entry(lambda r: [Need("dataset", r.dataset.name, "write")], write=True),
    _D + "GetDataset": Entry(lambda r: [Need("dataset", r.name, "read")]),
    _D + "ListDatasets": Entry(lambda r: [_any("dataset", "read")], filtered=True),
    _D + "RemoveDataset": Entry(lambda r: [Need("dataset", r.name, "write")], write=True),
    # xDS: a stream names any service (a wildcard all of them) and what it
    # is sent is not filtered per token: read on every service.
    _X + "StreamAggregatedResources": Entry(lambda r: [Need("service", "*", "read")]),
    _X + "DeltaAggregatedResources": Entry(lambda r: [Need("service", "*", "read")]),
    # What every xDS client holds: read on every node.
    _XS + "FetchClientStatus": Entry(lambda r: [Need("node", "*", "read")]),
    _XS + "StreamClientStatus": Entry(lambda r: [Need("node", "*", "read")]),
    # Health and reflection.
    "/grpc.health.v1.Health/Check": Entry(_none),
    "/grpc.health.v1.Health/Watch": Entry(_none),
    "/grpc.health.v1.Health/List": Entry(_none),
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": Entry(
        lambda r: [Need("operator", "reflection", "read")]
    ),
}


def message_needs(node_id: str, message: agent_pb2.ConnectRequest) -> tuple[list[Need], str]:
    """The rights one message of a sidecar's stream needs, and a refusal that
    no right lifts ("" for none): instances on another node."""
    kind = message.WhichOneof("message")
    if kind == "hello":
        return [Need("node", message.hello.node.id, "write")], ""
    if kind == "sync":
        needs = []
        for instance in message.sync.instances:
            if instance.node and instance.node != node_id:
                return [], (
                    f"instance {instance.id!r} of service {instance.service!r} is on node "
                    f"{instance.node!r}: a sidecar registers instances on its own node "
                    f"({node_id!r}) only"
                )
            needs.append(_service(instance.service, instance.namespace, "write"))
        return needs, ""
    if kind == "health":
        report = message.health
        return [_service(report.service, report.namespace, "write")], ""
    if kind == "subscribe":
        return [_service(s.name, s.namespace, "read") for s in message.subscribe.services], ""
    return [], ""
