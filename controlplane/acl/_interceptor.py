"""The one check point: a server interceptor that authorizes every call.

Each method's handler is wrapped once: the caller's token (``authorization:
Bearer <secret>`` metadata; on the agent stream also the Hello's ``token``) is
resolved to an :class:`Identity`, the method's entry in ``TABLE`` says which
rights the request needs, and the call goes on, or ends with UNAUTHENTICATED
(no token where one is required, or a secret no token has) or
PERMISSION_DENIED naming the first missing right (``service:web:write``).
Lists and watches come back filtered to what the caller may read. Writes and
refusals go to the audit log.

With ``--acl allow`` a call without a token skips all of this (the open
behaviour of a development control plane); a call with one is checked, with
"allowed" where no rule of the token matches.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import logging
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import grpc
import grpc.aio
from ecosystem.v1 import agent_pb2, catalog_pb2, gateway_pb2, intention_pb2, platform_pb2, sync_pb2
from ecosystem.v1 import registry_pb2 as pb

from controlplane.acl._audit import AuditLog
from controlplane.acl._store import AclStore, Identity
from controlplane.acl._table import PUBLIC, TABLE, Entry, Need, intention_need, message_needs
from controlplane.registry import lease_services
from serving.acl import PermissionDeniedError, allows, bearer_secret, denied, service_need
from serving.errors import ServiceError, UnauthenticatedError, end_call, to_status
from serving.interceptors import WrappingInterceptor

__all__ = [
    "BOOTSTRAP_REMOTE",
    "AclInterceptor",
    "Authorizer",
    "PermissionDeniedError",
    "is_loopback_peer",
]

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]

#: The identity of a call without a token under ``--acl allow``: nothing is checked.
_OPEN = Identity("", "", ())
_RESPONSES: dict[str, type[Any]] = {
    "/ecosystem.v1.RegistryService/Watch": pb.WatchResponse,
    "/ecosystem.v1.RegistryService/ListInstances": pb.ListInstancesResponse,
    "/ecosystem.v1.RegistryService/ListServices": pb.ListServicesResponse,
    "/ecosystem.v1.AgentService/ListNodes": agent_pb2.ListNodesResponse,
    "/ecosystem.v1.IntentionService/ListIntentions": intention_pb2.ListIntentionsResponse,
    "/ecosystem.v1.RouteService/ListRoutes": gateway_pb2.ListRoutesResponse,
    "/ecosystem.v1.RouteService/WatchRoutes": gateway_pb2.WatchRoutesResponse,
    "/ecosystem.v1.SyncService/ListSyncJobs": sync_pb2.ListSyncJobsResponse,
    "/ecosystem.v1.PlatformService/GetPlatform": platform_pb2.GetPlatformResponse,
    "/ecosystem.v1.PlatformService/ListPlatforms": platform_pb2.ListPlatformsResponse,
    "/ecosystem.v1.CatalogService/ListDatasets": catalog_pb2.ListDatasetsResponse,
}
_CONNECT = "/ecosystem.v1.AgentService/Connect"
#: Seconds between two checks that an open agent session's token still holds
#: (with the store's 1 s cache: a change reaches a session within about 1-1.5 s).
RECHECK = 0.5
_BOOTSTRAP = "/ecosystem.v1.AclService/Bootstrap"
#: The refusal of a bootstrap from another host.
BOOTSTRAP_REMOTE = (
    "bootstrap is accepted only from the control plane's own host: run "
    "'eco acl bootstrap --server 127.0.0.1:PORT' there (PORT: its --listen port)"
)


def is_loopback_peer(peer: str) -> bool:
    """Whether a gRPC peer (``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``,
    ``unix:/path``) is on this host: a loopback address or a unix socket."""
    kind, _, rest = unquote(peer).partition(":")
    if kind in ("unix", "unix-abstract"):
        return True
    if kind not in ("ipv4", "ipv6"):
        return False
    host = rest.rsplit(":", 1)[0].strip("[]").split("%", 1)[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


class Authorizer:
    """Decides: who a call comes from, and whether they may do what it asks."""

    def __init__(self, store: AclStore, *, default_allow: bool, audit: AuditLog | None) -> None:
        self.store = store
        self.default_allow = default_allow
        self.audit = audit

    async def identify(self, secret: str) -> Identity:
        """The identity for ``secret`` ("" for none); UnauthenticatedError when
        a token is required and missing, or the secret is no token's."""
        if not secret:
            if self.default_allow:
                return _OPEN
            raise UnauthenticatedError(
                "this control plane requires a token (--acl deny): pass --token or set "
                "ECO_TOKEN (sidecar: controlplane.token or token_file; gRPC xDS client: "
                "eco xds bootstrap --token-file)"
            )
        identity = await self.store.resolve(secret)
        if identity is None:
            raise UnauthenticatedError("the token is not valid (unknown or deleted)")
        return identity

    def allows(self, identity: Identity, need: Need) -> bool:
        if identity is _OPEN:
            return True
        return allows(identity.rules, need, default_allow=self.default_allow)

    def refusal(self, identity: Identity, needs: Sequence[Need]) -> Need | None:
        for need in needs:
            if not self.allows(identity, need):
                return need
        return None

    def may_read_instance(self, identity: Identity, instance: pb.Instance) -> bool:
        return self.allows(
            identity, Need("service", instance.service, "read", instance.namespace or "default")
        )

    def record(
        self, identity: Identity, rpc: str, resource: str, *, allowed: bool, reason: str = ""
    ) -> None:
        if self.audit is not None:
            self.audit.record(str(identity), rpc, resource, allowed=allowed, reason=reason)


def _secret(context: Any) -> str:
    return bearer_secret(context.invocation_metadata())


def _filter(authorizer: Authorizer, identity: Identity, method: str, response: Any) -> Any:
    response_type = _RESPONSES.get(method)
    if response_type is None or identity is _OPEN or response is None:
        return response
    message = response_type.FromString(response) if isinstance(response, bytes) else response
    if response_type is pb.WatchResponse:
        kept = [
            event
            for event in message.events
            if not event.HasField("instance")
            or authorizer.may_read_instance(identity, event.instance)
        ]
        if len(kept) != len(message.events):
            last = max((event.revision for event in message.events), default=0)
            del message.events[:]
            message.events.extend(kept)
            if not kept:
                message.events.add(type=pb.WATCH_EVENT_TYPE_PROGRESS, revision=last)
    elif response_type is pb.ListInstancesResponse:
        kept_instances = [i for i in message.instances if authorizer.may_read_instance(identity, i)]
        del message.instances[:]
        message.instances.extend(kept_instances)
    elif response_type is pb.ListServicesResponse:
        kept_services = [
            s
            for s in message.services
            if authorizer.allows(
                identity, Need("service", s.name, "read", s.namespace or "default")
            )
        ]
        del message.services[:]
        message.services.extend(kept_services)
    elif response_type is intention_pb2.ListIntentionsResponse:
        # An intention for destination X is X's policy: it is shown to whoever
        # may read X in its namespace (the right CheckIntention on X needs).
        # `*` is a name of its own: a rule must match `*` (service:*:read).
        kept_intentions = [
            i
            for i in message.intentions
            if authorizer.allows(identity, intention_need(i.destination, "read"))
        ]
        del message.intentions[:]
        message.intentions.extend(kept_intentions)
    elif response_type is gateway_pb2.ListRoutesResponse:
        kept_routes = [r for r in message.routes if _may_read_route(authorizer, identity, r.name)]
        del message.routes[:]
        message.routes.extend(kept_routes)
    elif response_type is gateway_pb2.WatchRoutesResponse:
        kept_events = [
            event
            for event in message.events
            if not event.HasField("route")
            or _may_read_route(authorizer, identity, event.route.name)
        ]
        if len(kept_events) != len(message.events):
            last = max((event.revision for event in message.events), default=0)
            del message.events[:]
            message.events.extend(kept_events)
            if not kept_events:
                message.events.add(type=pb.WATCH_EVENT_TYPE_PROGRESS, revision=last)
    elif response_type is sync_pb2.ListSyncJobsResponse:
        kept_jobs = [
            j for j in message.jobs if authorizer.allows(identity, Need("sync", j.name, "read"))
        ]
        del message.jobs[:]
        message.jobs.extend(kept_jobs)
    elif response_type is platform_pb2.ListPlatformsResponse:
        kept_platforms = [
            p
            for p in message.platforms
            if authorizer.allows(identity, Need("platform", p.name, "read"))
        ]
        del message.platforms[:]
        message.platforms.extend(kept_platforms)
    elif response_type is platform_pb2.GetPlatformResponse:
        kept_instances = [i for i in message.instances if authorizer.may_read_instance(identity, i)]
        del message.instances[:]
        message.instances.extend(kept_instances)
        kept_services = [
            s
            for s in message.services
            if authorizer.allows(
                identity, Need("service", s.name, "read", s.namespace or "default")
            )
        ]
        del message.services[:]
        message.services.extend(kept_services)
    elif response_type is catalog_pb2.ListDatasetsResponse:
        kept_datasets = [
            d
            for d in message.datasets
            if authorizer.allows(identity, Need("dataset", d.name, "read"))
        ]
        del message.datasets[:]
        message.datasets.extend(kept_datasets)
    else:
        kept_nodes = [
            n for n in message.nodes if authorizer.allows(identity, Need("node", n.node.id, "read"))
        ]
        del message.nodes[:]
        message.nodes.extend(kept_nodes)
    return message


def _may_read_route(authorizer: Authorizer, identity: Identity, name: str) -> bool:
    return authorizer.allows(identity, Need("route", name, "read"))


class _AgentContext:
    """The agent stream's context, checking each message the servicer reads.

    The session follows its token while it is open: before each message, and
    every ``RECHECK`` seconds while none comes, the token is resolved again
    (the store caches a resolution for ``CACHE_SECONDS``), and the session
    is ended when it no longer holds: UNAUTHENTICATED for a deleted token,
    PERMISSION_DENIED for a lost ``node:<id>:write`` or a lost read right on
    a service it subscribes to. Each message is checked against the rules
    the token has now.
    """

    def __init__(self, context: Any, authorizer: Authorizer, secret: str) -> None:
        self._context = context
        self._authorizer = authorizer
        self._secret = secret
        self._identity: Identity | None = None
        self._node = ""
        #: What the latest Subscribe needs (it replaces the ones before).
        self._subscribed: list[Need] = []
        self._checked_at = 0.0
        #: The read from the stream under way while a recheck may interrupt it.
        self._reading: asyncio.Future[Any] | None = None

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._context, attribute)

    def _end(self, identity: Identity | None, resource: str, exc: ServiceError) -> Any:
        if self._authorizer.audit is not None:
            self._authorizer.audit.record(
                str(identity) if identity is not None else "unknown",
                _CONNECT,
                resource,
                allowed=False,
                reason=str(exc),
            )
        end_call(self._context, to_status(exc))
        return grpc.aio.EOF  # type: ignore[attr-defined]

    async def close(self) -> None:
        """Stops a read under way (the stream has ended)."""
        reading, self._reading = self._reading, None
        if reading is not None and not reading.done():
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reading

    async def _recheck(self) -> Any:
        """None while the token still holds the session; else ends it (EOF)."""
        self._checked_at = asyncio.get_running_loop().time()
        authorizer = self._authorizer
        try:
            identity = await authorizer.identify(self._secret)
        except UnauthenticatedError as exc:
            log.info("ending the session of node %s: %s", self._node, exc)
            return self._end(self._identity, f"node:{self._node}:write", exc)
        self._identity = identity
        missing = authorizer.refusal(identity, [Need("node", self._node, "write")])
        if missing is None:
            missing = authorizer.refusal(identity, self._subscribed)
        if missing is not None:
            log.info("ending the session of node %s: its token lost %s", self._node, missing)
            return self._end(identity, str(missing), denied(missing))
        return None

    async def _receive(self) -> Any:
        """The next message; while waiting for it, a recheck every ``RECHECK``."""
        if self._identity is None or self._identity is _OPEN:
            return await self._context.read()
        loop = asyncio.get_running_loop()
        while True:
            if self._reading is None:
                self._reading = asyncio.ensure_future(self._context.read())
            wait = self._checked_at + RECHECK - loop.time()
            if wait > 0:
                done, _ = await asyncio.wait((self._reading,), timeout=wait)
                if done:
                    reading, self._reading = self._reading, None
                    return reading.result()
            ended = await self._recheck()
            if ended is not None:
                await self.close()
                return ended

    async def read(self) -> Any:
        message = await self._receive()
        if message is grpc.aio.EOF or not isinstance(message, agent_pb2.ConnectRequest):  # type: ignore[attr-defined]
            return message
        authorizer = self._authorizer
        if self._identity is None:
            if message.WhichOneof("message") != "hello":
                return message  # the servicer refuses a stream that does not start with Hello
            self._node = message.hello.node.id
            self._secret = self._secret or message.hello.token
            try:
                self._identity = await authorizer.identify(self._secret)
            except UnauthenticatedError as exc:
                return self._end(None, f"node:{self._node}:write", exc)
            self._checked_at = asyncio.get_running_loop().time()
        elif self._identity is not _OPEN:
            # Each message is checked against the token as it is now, like any
            # other call (the store's cache makes this a dictionary lookup).
            ended = await self._recheck()
            if ended is not None:
                return ended
        identity = self._identity
        if identity is _OPEN:
            return message
        needs, refusal = message_needs(self._node, message)
        if refusal:
            return self._end(identity, f"node:{self._node}:write", PermissionDeniedError(refusal))
        missing = authorizer.refusal(identity, needs)
        if missing is not None:
            return self._end(identity, str(missing), denied(missing))
        kind = message.WhichOneof("message")
        if kind == "subscribe":
            self._subscribed = needs
        if needs and kind in ("hello", "sync"):
            # One line per message, each right once (a sync lists every local instance).
            rights = ",".join(dict.fromkeys(str(need) for need in needs))
            authorizer.record(identity, _CONNECT, rights, allowed=True)
        return message


class AclInterceptor(WrappingInterceptor):
    """Wraps every method's handler with the check (see the module docstring)."""

    def __init__(self, authorizer: Authorizer) -> None:
        super().__init__()
        self.authorizer = authorizer

    async def _admit(
        self, method: str, entry: Entry | None, request: Any, context: Any
    ) -> Identity | None:
        """The caller's identity when the call may go on; otherwise ends it and returns None."""
        authorizer = self.authorizer
        if method == _BOOTSTRAP and not is_loopback_peer(context.peer() or ""):
            # Until it has run, bootstrap needs no token: whoever reached the
            # port first would hold the management token. Only someone on the
            # control plane's host may.
            remote = PermissionDeniedError(BOOTSTRAP_REMOTE)
            authorizer.record(
                Identity("", "", ()),
                method,
                f"peer {context.peer()}",
                allowed=False,
                reason=str(remote),
            )
            end_call(context, to_status(remote))
            return None
        try:
            if method in PUBLIC:
                identity = _OPEN
            else:
                identity = await authorizer.identify(_secret(context))
        except UnauthenticatedError as exc:
            resource = _describe(entry, request) if entry is not None else ""
            authorizer.record(
                Identity("", "", ()), method, resource, allowed=False, reason=str(exc)
            )
            end_call(context, to_status(exc))
            return None
        if identity is _OPEN:
            if entry is not None and entry.write and authorizer.audit is not None:
                authorizer.record(identity, method, _describe(entry, request), allowed=True)
            return identity
        if entry is None:
            unlisted = PermissionDeniedError(f"{method} has no access rule: refused to every token")
            authorizer.record(identity, method, "", allowed=False, reason=str(unlisted))
            end_call(context, to_status(unlisted))
            return None
        needs = entry.needs(request)
        if entry.lease:
            held = await lease_services(authorizer.store.store, request.lease_id)
            if held:
                needs = [service_need(name, namespace, "write") for namespace, name in held]
        if entry.stored is not None:
            needs = [*needs, *await entry.stored(authorizer.store.store, request)]
        missing = authorizer.refusal(identity, needs)
        if missing is not None:
            refused = denied(missing)
            authorizer.record(identity, method, str(missing), allowed=False, reason=str(refused))
            end_call(context, to_status(refused))
            return None
        if entry.write:
            authorizer.record(identity, method, ",".join(str(n) for n in needs), allowed=True)
        return identity

    def wrap(self, method: str, handler: Handler) -> Handler:
        entry = TABLE.get(method)
        authorizer = self.authorizer
        admit = self._admit
        deserialize = handler.request_deserializer
        serialize = handler.response_serializer
        if handler.unary_unary is not None:
            behavior_uu: Any = handler.unary_unary

            async def unary_unary(request: Any, context: Any) -> Any:
                identity = await admit(method, entry, request, context)
                if identity is None:
                    return None
                response = await behavior_uu(request, context)
                return _filter(authorizer, identity, method, response)

            return grpc.unary_unary_rpc_method_handler(unary_unary, deserialize, serialize)
        if handler.unary_stream is not None:
            behavior_us: Any = handler.unary_stream
            if not inspect.isasyncgenfunction(behavior_us):

                async def unary_stream_ctx(request: Any, context: Any) -> Any:
                    if await admit(method, entry, request, context) is None:
                        return None
                    return await behavior_us(request, context)

                return grpc.unary_stream_rpc_method_handler(
                    unary_stream_ctx, deserialize, serialize
                )

            async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                identity = await admit(method, entry, request, context)
                if identity is None:
                    return
                async for response in behavior_us(request, context):
                    yield _filter(authorizer, identity, method, response)

            return grpc.unary_stream_rpc_method_handler(unary_stream, deserialize, serialize)
        if handler.stream_unary is not None:
            behavior_su: Any = handler.stream_unary

            async def stream_unary(requests: Any, context: Any) -> Any:
                if await admit(method, entry, None, context) is None:
                    return None
                return await behavior_su(requests, context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, deserialize, serialize)
        behavior_ss: Any = handler.stream_stream
        assert behavior_ss is not None

        if method == _CONNECT:

            async def connect(requests: Any, context: Any) -> Any:
                checked = _AgentContext(context, authorizer, _secret(context))
                try:
                    result = behavior_ss(requests, checked)
                    if hasattr(result, "__aiter__"):
                        async for response in result:
                            await context.write(response)
                        return None
                    return await result
                finally:
                    await checked.close()

            return grpc.stream_stream_rpc_method_handler(connect, deserialize, serialize)

        async def stream_stream(requests: Any, context: Any) -> Any:
            if await admit(method, entry, None, context) is None:
                return None
            result = behavior_ss(requests, context)
            if hasattr(result, "__aiter__"):
                async for response in result:
                    await context.write(response)
                return None
            return await result

        return grpc.stream_stream_rpc_method_handler(stream_stream, deserialize, serialize)


def _describe(entry: Entry, request: Any) -> str:
    try:
        return ",".join(str(need) for need in entry.needs(request))
    except Exception:  # a request the servicer will refuse anyway
        return ""
