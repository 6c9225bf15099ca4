"""The gRPC face of the agent protocol: Connect, ListNodes, WaitForRevision.

``Connect`` admits a stream (the replica's and the peer's stream caps), waits
for its Hello (at most the hello timeout), checks it (`_validation`, the
token, the replica's Hello rate) and opens the session (`_handshake`), then
runs it (`_session`). ``ListNodes`` and ``WaitForRevision`` answer in bounded
pages (`_listing`).
"""

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

from controlplane.agent._handshake import open_session
from controlplane.agent._limits import StreamGate, TokenBucket, peer_host
from controlplane.agent._listing import PENDING_LISTED, Source, bounded, merge_page, page_request
from controlplane.agent._nodes import (
    NODES_PREFIX,
    TAKEN_OVER,
    SessionTakenOverError,
    now_ms,
    record_node,
)
from controlplane.agent._peers import answers_for_itself, ask_peers, caller_token
from controlplane.agent._session import AgentSettings, NodeSession, SessionRunner
from controlplane.agent._validation import hello_violations, raise_if_any, size_violation
from controlplane.store import Store
from controlplane.view import InstanceView
from serving.errors import (
    DeadlineExceededError,
    FieldViolation,
    InvalidArgumentError,
    ResourceExhaustedError,
    ServiceError,
    UnauthenticatedError,
    UnavailableError,
    code_for,
    end_call,
    to_status,
)

__all__ = ["AgentServicer"]

log = logging.getLogger(__name__)

_MAX_WAIT_MS = 600_000


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    """The AgentService of one replica. ``peers`` returns the addresses of the
    other live replicas over the same store (see `_peers`). ``settings`` may be
    replaced while it runs: new limits apply to streams opened after that; so
    may ``peer_credentials`` (the roots change with a root rotation)."""

    def __init__(
        self,
        store: Store,
        view: InstanceView,
        settings: AgentSettings,
        *,
        peers: Callable[[], Iterable[str]] = tuple,
        peer_credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._store = store
        self._view = view
        self.settings = settings
        self._peers = peers
        self.peer_credentials = peer_credentials
        # This replica's sessions, connected or ending; removed when their stream ends.
        self._sessions: dict[str, NodeSession] = {}
        self._gate = StreamGate()
        self._hellos: tuple[tuple[float, int], TokenBucket] | None = None
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
        return sum(1 for s in self._sessions.values() if s.active)

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
            if s.active and s.connected_at_ms <= oldest and s.node.id not in self._shed_at
        ]
        chosen = rng.sample(eligible, min(count, len(eligible)))
        for session in chosen:
            session.end(UnavailableError(reason))
            self._shed_at[session.node.id] = now
        return [s.node.id for s in chosen]

    def _fail(self, context: Any, exc: BaseException) -> None:
        """Ends the call with the status of ``exc`` (see ``end_call``: no abort,
        whose exception would keep the call's messages alive in a cycle)."""
        if code_for(exc) is None:
            log.error("agent session failed", exc_info=exc)
        end_call(context, to_status(exc))

    async def Connect(self, request_iterator: Any, context: Any) -> None:
        host = peer_host(context.peer())
        refusal = self._gate.admit(host, self.settings.limits)
        if refusal:  # logged by the gate, at most every 10 s
            self._fail(context, ResourceExhaustedError(refusal))
            return
        try:
            await self._connect(context)
        finally:
            self._gate.release(host)

    async def _connect(self, context: Any) -> None:
        try:
            session = await self._hello(context)
        except Exception as exc:
            self._fail(context, exc)
            return
        if session is None:
            return
        node_id = session.node.id
        previous = self._sessions.get(node_id)
        if previous is not None:
            # The new stream resumed the session this one carried (the Hello
            # had its id): only one stream may carry a session.
            previous.end(
                SessionTakenOverError(
                    f"{TAKEN_OVER}: another stream (peer {session.peer}) resumed it"
                )
            )
        self._sessions[node_id] = session
        session.record_revision = await record_node(
            self._store, session.status(len(self._view.node_instances(node_id)))
        )
        self._notify()
        runner = SessionRunner(
            session, self._store, self._view, self.settings, context, self._notify
        )
        try:
            await runner.run()
        except* ServiceError as group:
            self._fail(context, group.exceptions[0])
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
                if self._sessions.get(node_id) is session:
                    del self._sessions[node_id]
            log.info("node %s disconnected (session %s)", node_id, session.session_id)

    async def _hello(self, context: Any) -> NodeSession | None:
        """Reads and checks the Hello and opens its session (None: the stream
        ended first); raises what to end the stream with."""
        limits = self.settings.limits
        if self._draining:
            raise UnavailableError("control plane is draining; use another address")
        try:
            async with asyncio.timeout(limits.hello_timeout):
                first = await context.read()
        except TimeoutError:
            raise DeadlineExceededError(
                f"no Hello within {limits.hello_timeout:g}s of opening the stream"
            ) from None
        if first is grpc.aio.EOF:  # type: ignore[attr-defined]
            return None
        if first.WhichOneof("message") != "hello":
            raise InvalidArgumentError(
                [FieldViolation("hello", "the first message of a session must be hello")]
            )
        raise_if_any(size_violation("hello", first.ByteSize()))
        hello = first.hello
        raise_if_any(hello_violations(hello))
        if self.settings.token and hello.token != self.settings.token:
            raise UnauthenticatedError(f"node {hello.node.id!r}: wrong or missing token")
        rate = (limits.hellos_per_second, limits.hello_burst)
        if self._hellos is None or self._hellos[0] != rate:
            self._hellos = (rate, TokenBucket(*rate))
        if not self._hellos[1].try_take():
            raise ResourceExhaustedError(
                f"this replica takes at most {limits.hellos_per_second:g} Hellos a second; "
                "retry shortly"
            )
        return await open_session(
            self._store,
            self.settings,
            hello,
            context.peer(),
            local=self._sessions.get(hello.node.id),
        )

    async def ListNodes(
        self, request: agent_pb2.ListNodesRequest, context: Any
    ) -> agent_pb2.ListNodesResponse | None:
        try:
            page = page_request(request)
        except InvalidArgumentError as exc:
            self._fail(context, exc)
            return None
        mine = sorted(
            (
                s.status(len(self._view.node_instances(node_id)))
                for node_id, s in self._sessions.items()
                if node_id > page.after
            ),
            key=lambda status: status.node.id,
        )
        if answers_for_itself(context):
            # Another replica's fan-out: this replica's connected sidecars only.
            connected = [status for status in mine if status.connected]
            nodes, token = merge_page([Source(connected)], page.size)
            return agent_pb2.ListNodesResponse(nodes=nodes, next_page_token=token)
        elsewhere = ask_peers(
            self._peers(),
            "ListNodes",
            request,
            timeout=5.0,
            credentials=self.peer_credentials,
            metadata=caller_token(context),
        )
        result, answers = await asyncio.gather(self._store.range(NODES_PREFIX), elsewhere)
        stored = []
        for kv in result.kvs:
            node_id = kv.key[len(NODES_PREFIX) :]
            if node_id <= page.after:
                continue
            status = agent_pb2.NodeStatus.FromString(kv.value)
            status.instance_count = len(self._view.node_instances(status.node.id))
            if not status.connected:
                status.status = agent_pb2.NODE_SYNC_STATUS_DISCONNECTED
            stored.append(status)
        stored.sort(key=lambda status: status.node.id)
        # The live state of this replica's sidecars, then of those the others hold.
        sources = [Source(stored), Source(mine)]
        sources += [
            Source(list(answer.nodes), complete=not answer.next_page_token) for answer in answers
        ]
        nodes, token = merge_page(sources, page.size)
        return agent_pb2.ListNodesResponse(nodes=nodes, next_page_token=token)

    async def WaitForRevision(
        self, request: agent_pb2.WaitForRevisionRequest, context: Any
    ) -> agent_pb2.WaitForRevisionResponse | None:
        problems = []
        if request.revision <= 0:
            problems.append(FieldViolation("revision", "must be a positive store revision"))
        if not 0 <= request.timeout_ms <= _MAX_WAIT_MS:
            problems.append(
                FieldViolation("timeout_ms", f"must be between 0 and {_MAX_WAIT_MS} (0: 30 s)")
            )
        if problems:
            self._fail(context, InvalidArgumentError(problems))
            return None
        timeout = (request.timeout_ms or 30_000) / 1000
        if answers_for_itself(context):
            return await self._wait(request.revision, timeout)
        # Every replica waits for its own sidecars, at the same time.
        async with asyncio.TaskGroup() as group:
            local = group.create_task(self._wait(request.revision, timeout))
            remote = group.create_task(
                ask_peers(
                    self._peers(),
                    "WaitForRevision",
                    request,
                    timeout=timeout + 5.0,
                    credentials=self.peer_credentials,
                    metadata=caller_token(context),
                )
            )
        mine = local.result()
        pending = list(mine.pending)
        for answer in remote.result():
            mine.applied = mine.applied and answer.applied
            mine.affected += answer.affected
            mine.pending_count += answer.pending_count or len(answer.pending)
            pending.extend(answer.pending)
        pending.sort(key=lambda status: status.node.id)
        del mine.pending[:]
        mine.pending.extend(bounded(pending, PENDING_LISTED)[0])
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
                pending.sort(key=lambda s: s.node.id)
                listed, _ = bounded(
                    [
                        s.status(len(self._view.node_instances(s.node.id)))
                        for s in pending[:PENDING_LISTED]
                    ],
                    PENDING_LISTED,
                )
                return agent_pb2.WaitForRevisionResponse(
                    applied=False,
                    affected=len(affected),
                    pending=listed,
                    pending_count=len(pending),
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
