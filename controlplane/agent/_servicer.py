"""The gRPC face of the agent protocol: Connect, ListNodes, WaitForRevision."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from ecosystem.v1 import agent_pb2, agent_pb2_grpc
from grpc_status import rpc_status

from controlplane.agent._nodes import NODES_PREFIX, now_ms
from controlplane.agent._peers import answers_for_itself, ask_peers
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
    """The AgentService of one replica. ``peers`` returns the addresses of the
    other live replicas over the same store (see `_peers`)."""

    def __init__(
        self,
        store: Store,
        view: InstanceView,
        settings: AgentSettings,
        *,
        peers: Callable[[], Iterable[str]] = tuple,
    ) -> None:
        self._store = store
        self._view = view
        self._settings = settings
        self._peers = peers
        self._sessions: dict[str, NodeSession] = {}
        self._shed_at: dict[str, int] = {}  # node id -> when its stream was last shed (ms)
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

    @property
    def stream_count(self) -> int:
        """Sidecar streams connected to this replica now."""
        return sum(1 for s in self._sessions.values() if s.connected and not s.ending.is_set())

    def shed(self, count: int, reason: str, *, min_age: float, rng: random.Random) -> list[str]:
        """Ends up to ``count`` streams, chosen at random among those connected
        for at least ``min_age`` seconds, with UNAVAILABLE and ``reason``; their
        sidecars reconnect to another replica and resume. Returns the node ids.

        A sidecar shed in the last ``10 * min_age`` seconds (at least a minute)
        is not shed again: if it is back here, it knows no other address."""
        now = now_ms()
        spared_since = now - max(60.0, 10 * min_age) * 1000
        self._shed_at = {node: at for node, at in self._shed_at.items() if at > spared_since}
        oldest = now - min_age * 1000
        eligible = [
            s
            for s in self._sessions.values()
            if s.connected
            and not s.ending.is_set()
            and s.connected_at_ms <= oldest
            and s.node.id not in self._shed_at
        ]
        chosen = rng.sample(eligible, min(count, len(eligible)))
        for session in chosen:
            session.end(reason)
            self._shed_at[session.node.id] = now
        return [s.node.id for s in chosen]

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
        session.record_revision = await record_node(
            self._store, session.status(len(self._view.node_instances(node_id)))
        )
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
                            if_revision=session.record_revision,
                        )
                    )
                except Exception as exc:  # the store may be closing with us
                    log.debug("could not record disconnect of %s: %s", node_id, exc)
            log.info("node %s disconnected (session %s)", node_id, session.session_id)

    async def ListNodes(
        self, request: agent_pb2.ListNodesRequest, context: Any
    ) -> agent_pb2.ListNodesResponse:
        if answers_for_itself(context):
            return agent_pb2.ListNodesResponse(nodes=self._connected())
        nodes: dict[str, agent_pb2.NodeStatus] = {}
        elsewhere = ask_peers(self._peers(), "ListNodes", request, timeout=5.0)
        result, answers = await asyncio.gather(self._store.range(NODES_PREFIX), elsewhere)
        for kv in result.kvs:
            status = agent_pb2.NodeStatus.FromString(kv.value)
            status.instance_count = len(self._view.node_instances(status.node.id))
            if not status.connected:
                status.status = agent_pb2.NODE_SYNC_STATUS_DISCONNECTED
            nodes[status.node.id] = status
        for node_id, session in self._sessions.items():
            if session.connected or node_id not in nodes:
                nodes[node_id] = session.status(len(self._view.node_instances(node_id)))
        # The live state of the sidecars the other replicas hold.
        for answer in answers:
            for status in answer.nodes:
                nodes[status.node.id] = status
        return agent_pb2.ListNodesResponse(nodes=[nodes[k] for k in sorted(nodes)])

    def _connected(self) -> list[agent_pb2.NodeStatus]:
        return [
            s.status(len(self._view.node_instances(node_id)))
            for node_id, s in sorted(self._sessions.items())
            if s.connected
        ]

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
        if answers_for_itself(context):
            return await self._wait(request.revision, timeout)
        # Every replica waits for its own sidecars, at the same time.
        async with asyncio.TaskGroup() as group:
            local = group.create_task(self._wait(request.revision, timeout))
            remote = group.create_task(
                ask_peers(self._peers(), "WaitForRevision", request, timeout=timeout + 5.0)
            )
        mine = local.result()
        for answer in remote.result():
            mine.applied = mine.applied and answer.applied
            mine.affected += answer.affected
            mine.pending.extend(answer.pending)
        return mine

    async def _wait(self, revision: int, timeout: float) -> agent_pb2.WaitForRevisionResponse:
        """Waits until every affected sidecar connected here applied ``revision``."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(UnavailableError):  # reported below as not applied
            await self._view.wait_for(revision, timeout=timeout)
        while True:
            affected, pending = self._pending(revision)
            if not pending and self._view.revision >= revision:
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
