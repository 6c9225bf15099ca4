"""The gRPC face of the agent protocol: Connect, ListNodes, WaitForRevision."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import grpc
from ecosystem.v1 import agent_pb2, agent_pb2_grpc
from grpc_status import rpc_status

from controlplane.agent._nodes import NODES_PREFIX, now_ms
from controlplane.agent._session import (
    AgentSettings,
    NodeSession,
    SessionRunner,
    open_session,
    record_node,
)
from controlplane.errors import (
    ControlPlaneError,
    FieldViolation,
    InvalidArgumentError,
    UnauthenticatedError,
    UnavailableError,
    code_for,
    to_status,
)
from controlplane.store import Store
from controlplane.validation import node_violations
from controlplane.view import InstanceView

__all__ = ["AgentServicer"]

log = logging.getLogger(__name__)

_MAX_WAIT_MS = 600_000


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, store: Store, view: InstanceView, settings: AgentSettings) -> None:
        self._store = store
        self._view = view
        self._settings = settings
        self._sessions: dict[str, NodeSession] = {}
        self._changed = asyncio.Event()
        self._draining = False

    def drain(self) -> None:
        self._draining = True

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    @property
    def sessions(self) -> dict[str, NodeSession]:
        return self._sessions

    async def _abort(self, context: Any, exc: BaseException) -> None:
        if code_for(exc) is None:
            log.error("agent session failed", exc_info=exc)
        status = rpc_status.to_status(to_status(exc))
        await context.abort(status.code, status.details, status.trailing_metadata)

    async def Connect(self, request_iterator: Any, context: Any) -> None:
        try:
            if self._draining:
                raise UnavailableError("control plane is draining; use another address")
            first = await context.read()
            if first is grpc.aio.EOF:  # type: ignore[attr-defined]
                return
            if first.WhichOneof("message") != "hello":
                raise InvalidArgumentError(
                    [FieldViolation("hello", "the first message of a session must be hello")]
                )
            hello = first.hello
            problems = node_violations(hello.node.id, "hello.node.id")
            if problems:
                raise InvalidArgumentError(problems)
            if self._settings.token and hello.token != self._settings.token:
                raise UnauthenticatedError(f"node {hello.node.id!r}: wrong or missing token")
            session = await open_session(self._store, self._settings, hello, context.peer())
        except Exception as exc:
            await self._abort(context, exc)
            return
        node_id = session.node.id
        self._sessions[node_id] = session
        await record_node(self._store, session.status(len(self._view.node_instances(node_id))))
        self._notify()
        runner = SessionRunner(
            session, self._store, self._view, self._settings, context, self._notify
        )
        try:
            await runner.run()
        except* ControlPlaneError as group:
            await self._abort(context, group.exceptions[0])
        finally:
            session.connected = False
            session.last_seen_ms = now_ms()
            self._notify()
            if self._sessions.get(node_id) is session:
                try:
                    await asyncio.shield(
                        record_node(
                            self._store,
                            session.status(len(self._view.node_instances(node_id))),
                        )
                    )
                except Exception as exc:  # the store may be closing with us
                    log.debug("could not record disconnect of %s: %s", node_id, exc)
            log.info("node %s disconnected (session %s)", node_id, session.session_id)

    async def ListNodes(
        self, request: agent_pb2.ListNodesRequest, context: Any
    ) -> agent_pb2.ListNodesResponse:
        result = await self._store.range(NODES_PREFIX)
        nodes: dict[str, agent_pb2.NodeStatus] = {}
        for kv in result.kvs:
            status = agent_pb2.NodeStatus.FromString(kv.value)
            status.instance_count = len(self._view.node_instances(status.node.id))
            if not status.connected:
                status.status = agent_pb2.NODE_SYNC_STATUS_DISCONNECTED
            nodes[status.node.id] = status
        for node_id, session in self._sessions.items():
            if session.connected or node_id not in nodes:
                nodes[node_id] = session.status(len(self._view.node_instances(node_id)))
        return agent_pb2.ListNodesResponse(nodes=[nodes[k] for k in sorted(nodes)])

    async def WaitForRevision(
        self, request: agent_pb2.WaitForRevisionRequest, context: Any
    ) -> agent_pb2.WaitForRevisionResponse:
        problems = []
        if request.revision <= 0:
            problems.append(FieldViolation("revision", "must be a positive store revision"))
        if not 0 <= request.timeout_ms <= _MAX_WAIT_MS:
            problems.append(
                FieldViolation("timeout_ms", f"must be between 0 and {_MAX_WAIT_MS} (0: 30 s)")
            )
        if problems:
            await self._abort(context, InvalidArgumentError(problems))
        timeout = (request.timeout_ms or 30_000) / 1000
        deadline = time.monotonic() + timeout
        with contextlib.suppress(UnavailableError):  # reported below as not applied
            await self._view.wait_for(request.revision, timeout=timeout)
        while True:
            affected, pending = self._pending(request.revision)
            if not pending and self._view.revision >= request.revision:
                return agent_pb2.WaitForRevisionResponse(applied=True, affected=len(affected))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return agent_pb2.WaitForRevisionResponse(
                    applied=False,
                    affected=len(affected),
                    pending=[s.status(len(self._view.node_instances(s.node.id))) for s in pending],
                )
            changed = self._changed
            try:
                async with asyncio.timeout(min(remaining, 1.0)):
                    await changed.wait()
            except TimeoutError:
                pass

    def _pending(self, revision: int) -> tuple[list[NodeSession], list[NodeSession]]:
        services = self._view.services_changed_at(revision)
        affected = [
            s
            for s in self._sessions.values()
            if s.connected
            and s.subscriptions
            and (services is None or not services.isdisjoint(s.subscriptions))
        ]
        return affected, [s for s in affected if s.applied_version < revision]
