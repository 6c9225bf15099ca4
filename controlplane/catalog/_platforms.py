"""PlatformService: platforms stored and revisioned in the control plane.

Platforms are few (a site, a cloud account, the core): every call reads the
store directly, and each WatchPlatforms stream follows the store's watch of
the platforms' prefix itself. What runs on a platform comes from the
registry's view (indexed by platform) and from the nodes' records.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from ecosystem.v1 import agent_pb2
from ecosystem.v1 import platform_pb2 as ppb
from ecosystem.v1 import registry_pb2 as pb
from ecosystem.v1 import sync_pb2 as spb

from controlplane.agent import NODES_PREFIX
from controlplane.registry import ROOT_PREFIX
from controlplane.store import Compacted, EventType, Store, StoreClosed
from controlplane.view import InstanceView, Selector, summarize
from serving.errors import (
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
    end_call,
    to_status,
)

from ._keys import (
    DATASETS_PREFIX,
    PLATFORMS_PREFIX,
    decode_dataset,
    decode_platform,
    platform_key,
)
from ._objects import delete_object, put_object
from ._platform_rules import platform_name_violations, platform_violations

__all__ = ["PLATFORM_SERVICE", "SYNC_JOBS_PREFIX", "PlatformServicer", "platform_matches"]

log = logging.getLogger(__name__)

PLATFORM_SERVICE = ppb.DESCRIPTOR.services_by_name["PlatformService"].full_name
DEFAULT_MAX_INSTANCES = 1_000
MAX_INSTANCES = 10_000
#: Names shown of what still uses a platform, in a refused deregistration.
_SHOWN = 5
#: Where the sync jobs are kept (``controlplane.sync.JOBS_PREFIX``: that package
#: imports this one, so the prefix is written out here; a test keeps them equal).
SYNC_JOBS_PREFIX = ROOT_PREFIX + "sync/jobs/"


def platform_matches(platform: ppb.Platform, request: ppb.ListPlatformsRequest) -> bool:
    return (
        (not request.kind or platform.kind == request.kind)
        and (not request.provider or platform.provider == request.provider)
        and all(platform.labels.get(k) == v for k, v in request.labels.items())
    )


def _stored(platform: ppb.Platform) -> ppb.Platform:
    stored = ppb.Platform()
    stored.CopyFrom(platform)
    stored.ClearField("create_revision")
    stored.ClearField("mod_revision")
    return stored


def _checked_name(name: str) -> None:
    violations = platform_name_violations("name", name)
    if violations:
        raise InvalidArgumentError(violations)


def _sample(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


class PlatformServicer:
    """Serves PlatformService (see the proto for what each call does)."""

    def __init__(self, store: Store, view: InstanceView) -> None:
        self.store = store
        self.view = view

    async def _run(self, name: str, context: Any, work: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await work()
        except Exception as exc:
            _fail(name, context, exc)
            return None

    async def RegisterPlatform(self, request: ppb.RegisterPlatformRequest, context: Any) -> Any:
        async def work() -> ppb.RegisterPlatformResponse:
            violations = platform_violations(request.platform)
            if request.replace and request.expected_revision:
                violations.append(
                    FieldViolation("replace", "is not for use with expected_revision")
                )
            if request.expected_revision < 0:
                violations.append(FieldViolation("expected_revision", "must not be negative"))
            if violations:
                raise InvalidArgumentError(violations)
            platform = _stored(request.platform)
            written = await put_object(
                self.store,
                platform_key(platform.name),
                f"platform {platform.name!r}",
                platform.SerializeToString(deterministic=True),
                create=not request.expected_revision,
                update=bool(request.expected_revision) or request.replace,
                expected=request.expected_revision,
            )
            platform.create_revision = written.create_revision
            platform.mod_revision = written.mod_revision
            if written.changed:
                log.info(
                    "platform %s %s at revision %d",
                    platform.name,
                    "registered" if written.created else "updated",
                    written.mod_revision,
                )
            return ppb.RegisterPlatformResponse(
                platform=platform, created=written.created, changed=written.changed
            )

        return await self._run("RegisterPlatform", context, work)

    async def _nodes(self, name: str) -> list[agent_pb2.NodeStatus]:
        result = await self.store.range(NODES_PREFIX)
        nodes = []
        for kv in result.kvs:
            status = agent_pb2.NodeStatus.FromString(kv.value)
            if status.node.platform != name:
                continue
            status.instance_count = len(self.view.node_instances(status.node.id))
            if not status.connected:
                status.status = agent_pb2.NODE_SYNC_STATUS_DISCONNECTED
            nodes.append(status)
        nodes.sort(key=lambda status: status.node.id)
        return nodes

    async def _datasets(self, name: str) -> list[str]:
        result = await self.store.range(DATASETS_PREFIX)
        return [d.name for d in map(decode_dataset, result.kvs) if d.platform == name]

    async def _sync_jobs(self, name: str) -> list[str]:
        """The sync jobs that run on this platform (``on_platform``)."""
        result = await self.store.range(SYNC_JOBS_PREFIX)
        return [
            job.name
            for job in (spb.SyncJob.FromString(kv.value) for kv in result.kvs)
            if job.on_platform == name
        ]

    async def GetPlatform(self, request: ppb.GetPlatformRequest, context: Any) -> Any:
        async def work() -> ppb.GetPlatformResponse:
            _checked_name(request.name)
            if not 0 <= request.max_instances <= MAX_INSTANCES:
                raise InvalidArgumentError(
                    [
                        FieldViolation(
                            "max_instances",
                            f"is {request.max_instances}; 0-{MAX_INSTANCES} (0: "
                            f"{DEFAULT_MAX_INSTANCES})",
                        )
                    ]
                )
            kv = await self.store.get(platform_key(request.name))
            if kv is None:
                raise NotFoundError(f"no platform {request.name!r}")
            await self.view.wait_for(kv.mod_revision)
            instances = self.view.select(Selector(platform=request.name))
            groups: dict[tuple[str, str], list[pb.Instance]] = {}
            for inst in instances:
                groups.setdefault((inst.namespace, inst.service), []).append(inst)
            limit = request.max_instances or DEFAULT_MAX_INSTANCES
            return ppb.GetPlatformResponse(
                platform=decode_platform(kv),
                nodes=await self._nodes(request.name),
                services=[summarize(ns, svc, group) for (ns, svc), group in sorted(groups.items())],
                instances=instances[:limit],
                instance_count=len(instances),
                datasets=await self._datasets(request.name),
            )

        return await self._run("GetPlatform", context, work)

    async def ListPlatforms(self, request: ppb.ListPlatformsRequest, context: Any) -> Any:
        async def work() -> ppb.ListPlatformsResponse:
            result = await self.store.range(PLATFORMS_PREFIX)
            return ppb.ListPlatformsResponse(
                platforms=[
                    p for p in map(decode_platform, result.kvs) if platform_matches(p, request)
                ],
                revision=result.revision,
            )

        return await self._run("ListPlatforms", context, work)

    async def DeregisterPlatform(self, request: ppb.DeregisterPlatformRequest, context: Any) -> Any:
        async def work() -> ppb.DeregisterPlatformResponse:
            _checked_name(request.name)
            what = f"platform {request.name!r}"
            kv = await self.store.get(platform_key(request.name))
            if kv is None:
                raise NotFoundError(f"no {what}")
            if not request.force:
                await self._refuse_in_use(request.name)
            revision = await delete_object(self.store, kv, what, request.expected_revision)
            log.info("platform %s deregistered at revision %d", request.name, revision)
            return ppb.DeregisterPlatformResponse(revision=revision)

        return await self._run("DeregisterPlatform", context, work)

    async def _refuse_in_use(self, name: str) -> None:
        await self.view.wait_for(self.store.revision)
        instances = [
            f"{i.namespace}/{i.service}/{i.id}" for i in self.view.select(Selector(platform=name))
        ]
        nodes = [status.node.id for status in await self._nodes(name)]
        datasets = await self._datasets(name)
        jobs = await self._sync_jobs(name)
        uses = [
            f"{len(found)} {noun}(s) ({_sample(found)})"
            for noun, found in (
                ("instance", instances),
                ("node", nodes),
                ("dataset", datasets),
                ("sync job", jobs),
            )
            if found
        ]
        if uses:
            raise FailedPreconditionError(
                f"platform {name!r} is still named by {'; '.join(uses)}: move or remove them "
                "first, or deregister with force (they keep the name)"
            )

    async def WatchPlatforms(
        self, request: ppb.WatchPlatformsRequest, context: Any
    ) -> AsyncIterator[ppb.WatchPlatformsResponse]:
        try:
            async for response in self._watch(request.since_revision):
                yield response
        except Exception as exc:
            _fail("WatchPlatforms", context, exc)

    async def _snapshot(self) -> tuple[ppb.WatchPlatformsResponse, int]:
        result = await self.store.range(PLATFORMS_PREFIX)
        revision = result.revision
        response = ppb.WatchPlatformsResponse()
        response.events.add(type=pb.WATCH_EVENT_TYPE_RESYNC, revision=revision)
        for platform in map(decode_platform, result.kvs):
            response.events.add(type=pb.WATCH_EVENT_TYPE_PUT, revision=revision, platform=platform)
        response.events.add(type=pb.WATCH_EVENT_TYPE_SNAPSHOT_END, revision=revision)
        return response, revision

    async def _watch(self, since: int) -> AsyncIterator[ppb.WatchPlatformsResponse]:
        if since < 0:
            raise InvalidArgumentError([FieldViolation("since_revision", "must not be negative")])
        seen = since
        if since <= 0 or since < self.store.compact_revision or since > self.store.revision:
            response, seen = await self._snapshot()
            yield response
        while True:
            try:
                async for batch in self.store.watch(PLATFORMS_PREFIX, start_revision=seen + 1):
                    seen = batch.revision
                    if batch.is_progress:
                        continue
                    response = ppb.WatchPlatformsResponse()
                    for event in batch.events:
                        if event.type is EventType.PUT:
                            platform = decode_platform(event.kv)
                            kind = pb.WATCH_EVENT_TYPE_PUT
                        else:
                            platform = ppb.Platform(
                                name=event.kv.key[len(PLATFORMS_PREFIX) :],
                                mod_revision=batch.revision,
                            )
                            kind = pb.WATCH_EVENT_TYPE_DELETE
                        response.events.add(type=kind, revision=batch.revision, platform=platform)
                    yield response
                return
            except Compacted:
                response, seen = await self._snapshot()
                yield response
            except StoreClosed as exc:
                raise UnavailableError("control plane is shutting down; reconnect") from exc


def _fail(name: str, context: Any, exc: Exception) -> None:
    status = to_status(exc)
    if status.code == grpc.StatusCode.INTERNAL.value[0]:
        log.exception("PlatformService/%s failed", name, exc_info=exc)
    end_call(context, status)
