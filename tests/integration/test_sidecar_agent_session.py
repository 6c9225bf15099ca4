"""The SDK's agent session against a scripted AgentService on 127.0.0.1:0.

A scripted server makes the cases a real control plane rarely produces easy
to reach: malformed updates (NACK), refused hellos, unknown sessions, dead
addresses, streams ending at a chosen moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from ecosystem.v1 import agent_pb2, agent_pb2_grpc, registry_pb2

from sdk import (
    AgentNode,
    AgentSession,
    AgentState,
    EndpointUpdate,
    HealthStatus,
    Instance,
    ServiceRef,
)
from tests.harness.ports import free_port
from tests.util import assert_eventually

_END = agent_pb2.ConnectResponse()  # marks "end the stream" in a connection's outbox


class Connection:
    """One Connect stream as the fake server sees it."""

    def __init__(self, hello: agent_pb2.Hello, session_id: str) -> None:
        self.hello = hello
        self.session_id = session_id
        self.received: asyncio.Queue[agent_pb2.ConnectRequest] = asyncio.Queue()
        self.outgoing: asyncio.Queue[agent_pb2.ConnectResponse] = asyncio.Queue()
        self.abort: tuple[grpc.StatusCode, str] | None = None

    async def next(self, kind: str, timeout: float = 5.0) -> Any:
        """The next message of ``kind``, skipping others."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.received.get()
                if message.WhichOneof("message") == kind:
                    return getattr(message, kind)

    def send_update(self, version: int, nonce: str, *instances: registry_pb2.Instance) -> None:
        self.outgoing.put_nowait(
            agent_pb2.ConnectResponse(
                update=agent_pb2.EndpointUpdate(
                    version=version,
                    nonce=nonce,
                    services=[
                        agent_pb2.ServiceEndpoints(
                            service=agent_pb2.ServiceRef(name="orders"), instances=instances
                        )
                    ],
                )
            )
        )

    def end(self, abort: tuple[grpc.StatusCode, str] | None = None) -> None:
        self.abort = abort
        self.outgoing.put_nowait(_END)


class FakeAgentService(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self) -> None:
        self.connections: asyncio.Queue[Connection] = asyncio.Queue()
        self.refuse: tuple[grpc.StatusCode, str] | None = None
        self.known_sessions: set[str] = set()
        self.forget_sessions = False
        #: after the Welcome, answer nothing (a replica that hangs without closing)
        self.mute = False
        self._ids = itertools.count(1)

    async def Connect(self, request_iterator: Any, context: Any) -> None:
        first = await context.read()
        hello = first.hello
        if self.refuse is not None:
            await context.abort(*self.refuse)
        if hello.session_id and self.forget_sessions:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such session")
        resumed = hello.session_id in self.known_sessions
        session_id = hello.session_id if resumed else f"s{next(self._ids)}"
        self.known_sessions.add(session_id)
        conn = Connection(hello, session_id)
        await context.write(
            agent_pb2.ConnectResponse(
                welcome=agent_pb2.Welcome(
                    session_id=session_id,
                    replica="fake",
                    grace_seconds=hello.grace_seconds,
                    sync_interval_seconds=30,
                    resumed=resumed,
                )
            )
        )

        async def pump() -> None:
            while True:
                message = await context.read()
                if message is grpc.aio.EOF:  # type: ignore[attr-defined]
                    return
                if self.mute:
                    continue
                if message.WhichOneof("message") == "ping":
                    pong = agent_pb2.Pong(nonce=message.ping.nonce)
                    await conn.outgoing.put(agent_pb2.ConnectResponse(pong=pong))
                if message.WhichOneof("message") == "sync":
                    await conn.outgoing.put(
                        agent_pb2.ConnectResponse(
                            sync_result=agent_pb2.SyncResult(
                                revision=1, created=len(message.sync.instances)
                            )
                        )
                    )
                await conn.received.put(message)

        reader = asyncio.create_task(pump())
        await self.connections.put(conn)
        try:
            while (message := await conn.outgoing.get()) is not _END:
                await context.write(message)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        if conn.abort is not None:
            await context.abort(*conn.abort)


@contextlib.asynccontextmanager
async def fake_server(port: int = 0) -> AsyncIterator[tuple[FakeAgentService, str]]:
    service = FakeAgentService()
    server = grpc.aio.server()
    agent_pb2_grpc.add_AgentServiceServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        yield service, f"127.0.0.1:{bound}"
    finally:
        await server.stop(0)


LOCAL = Instance(
    id="web-1", service="web", address="127.0.0.1", port=8080, health=HealthStatus.PASSING
)


class Recorder:
    def __init__(self) -> None:
        self.updates: list[EndpointUpdate] = []

    def __call__(self, update: EndpointUpdate) -> None:
        self.updates.append(update)


def session(servers: list[str], recorder: Recorder, **kw: Any) -> AgentSession:
    options: dict[str, Any] = {"initial_backoff": 0.01, "max_backoff": 0.2, **kw}
    return AgentSession(
        servers,
        AgentNode(id="node-1", zone="z1"),
        instances=lambda: [LOCAL],
        on_update=recorder,
        subscriptions=[ServiceRef("orders")],
        token="secret",
        grace=2.5,
        **options,
    )


def good(id: str, port: int = 9000) -> registry_pb2.Instance:
    return registry_pb2.Instance(id=id, service="orders", address="10.0.0.2", port=port)


async def test_hello_sync_subscribe_then_updates_are_acked_or_nacked() -> None:
    recorder = Recorder()
    async with (
        fake_server() as (fake, address),
        session([address], recorder, applied_version=7) as s,
    ):
        conn = await fake.connections.get()
        hello = conn.hello
        assert (hello.node.id, hello.node.zone, hello.token) == ("node-1", "z1", "secret")
        assert hello.session_id == "" and hello.applied_version == 7
        assert hello.grace_seconds == 3, "whole seconds, rounded up"
        sync = await conn.next("sync")
        assert [i.id for i in sync.instances] == ["web-1"]
        assert sync.instances[0].health == registry_pb2.HEALTH_STATUS_PASSING
        subscribe = await conn.next("subscribe")
        assert [r.name for r in subscribe.services] == ["orders"]

        conn.send_update(10, "n1", good("a"), registry_pb2.Instance(id="b", service="orders"))
        ack = await conn.next("ack")
        assert (ack.version, ack.nonce, ack.rejected) == (10, "n1", True)
        assert "instances[1].address" in ack.error
        assert recorder.updates == [] and s.applied_version == 7

        conn.send_update(11, "n2", good("a"), good("b", 9001))
        ack = await conn.next("ack")
        assert (ack.version, ack.nonce, ack.rejected) == (11, "n2", False)
        assert [i.id for i in recorder.updates[0].services[0].instances] == ["a", "b"]
        status = s.status()
        assert status.applied_version == 11 and status.session_id == "s1"
        assert (status.updates_applied, status.updates_rejected) == (1, 1)
        assert status.last_sync is not None and status.last_sync.created == 1


async def test_a_failing_callback_nacks_and_keeps_the_session() -> None:
    def broken(update: EndpointUpdate) -> None:
        raise ValueError("cannot use this")

    async with fake_server() as (fake, address):
        s = AgentSession([address], AgentNode(id="node-1"), instances=list, on_update=broken)
        async with s:
            conn = await fake.connections.get()
            conn.send_update(3, "n", good("a"))
            ack = await conn.next("ack")
            assert ack.rejected and ack.error == "cannot use this"
            assert s.connected


async def test_leaves_a_replica_that_hangs_without_closing_the_stream() -> None:
    recorder = Recorder()
    async with (
        fake_server() as (hung, hung_address),
        fake_server() as (live, live_address),
        session([hung_address, live_address], recorder) as s,
    ):
        hung.mute = True
        first = await hung.connections.get()
        assert s.status().address == hung_address
        # grace 2.5 s: pinged after ~0.6 s of silence, left after ~1.9 s, before
        # the control plane would give up on the session.
        conn = await asyncio.wait_for(live.connections.get(), timeout=5)
        assert conn.hello.session_id == first.session_id  # it tries to resume
        await assert_eventually(lambda: _connected_to(s, live_address), timeout=5)


def _connected_to(s: AgentSession, address: str) -> None:
    assert s.connected and s.status().address == address, s.status()


async def test_a_quiet_stream_is_kept_alive_by_pings() -> None:
    async with fake_server() as (fake, address), session([address], Recorder()) as s:
        conn = await fake.connections.get()
        await conn.next("ping", timeout=5)  # nothing else to say: it pings
        for _ in range(3):  # and goes on pinging, on the same stream, for 3 intervals more
            await conn.next("ping", timeout=5)
        assert s.connected and s.status().connects == 1


async def test_fails_over_to_the_next_address_and_resumes_the_session() -> None:
    dead = f"127.0.0.1:{free_port()}"
    recorder = Recorder()
    async with fake_server() as (fake, address), session([dead, address], recorder) as s:
        conn = await fake.connections.get()
        await s.wait_connected()
        assert s.status().address == address
        await conn.next("sync")
        conn.end(abort=(grpc.StatusCode.UNAVAILABLE, "replica draining"))
        again = await asyncio.wait_for(fake.connections.get(), 10)
        assert again.hello.session_id == "s1", "the session is offered for resumption"
        # State is sent whole again on the new stream.
        await again.next("sync")
        await again.next("subscribe")
        await assert_eventually(lambda: _check(s.connected and s.status().resumed))
        assert s.status().connects == 2


async def test_a_forgotten_session_starts_a_new_one_at_once() -> None:
    recorder = Recorder()
    async with fake_server() as (fake, address), session([address], recorder) as s:
        conn = await fake.connections.get()
        fake.forget_sessions = True
        conn.end()
        again = await asyncio.wait_for(fake.connections.get(), 5)
        assert again.hello.session_id == ""
        await assert_eventually(lambda: _check(s.connected and s.session_id == "s2"))


async def test_a_refused_hello_is_reported_and_retried() -> None:
    recorder = Recorder()
    async with fake_server() as (fake, address):
        fake.refuse = (grpc.StatusCode.UNAUTHENTICATED, "wrong token")
        async with session([address], recorder, max_backoff=0.1) as s:
            await assert_eventually(lambda: _check("UNAUTHENTICATED" in s.status().last_error))
            assert s.state in (AgentState.DISCONNECTED, AgentState.CONNECTING)
            fake.refuse = None
            await asyncio.wait_for(fake.connections.get(), 5)
            await s.wait_connected()


async def test_health_reports_periodic_syncs_and_leave() -> None:
    recorder = Recorder()
    async with (
        fake_server() as (fake, address),
        session([address], recorder, sync_interval=0.3) as s,
    ):
        conn = await fake.connections.get()
        await conn.next("sync")
        await conn.next("subscribe")
        # (A report queued before a Sync is written is dropped: the Sync carries
        # current health anyway.)
        s.report_health(
            service="web", namespace="", instance_id="web-1", health=HealthStatus.CRITICAL
        )
        report = await conn.next("health")
        assert (report.instance_id, report.health) == ("web-1", registry_pb2.HEALTH_STATUS_CRITICAL)
        for _ in range(3):  # anti-entropy: full syncs keep coming
            await conn.next("sync", timeout=2)
        assert await s.leave(timeout=2)
        while True:
            sync = await conn.next("sync")
            if not sync.instances:
                break


async def test_close_is_idempotent_and_final() -> None:
    recorder = Recorder()
    s = session([f"127.0.0.1:{free_port()}"], recorder)
    await s.start()
    await s.close()
    await s.close()
    assert s.state is AgentState.CLOSED
    with pytest.raises(RuntimeError):
        await s.start()


async def test_a_shed_stream_moves_to_another_address_and_resumes() -> None:
    """A replica shedding load ends the stream with UNAVAILABLE "shedding load…":
    the session goes to one of the other addresses (never straight back), at once,
    and resumes there."""
    recorder = Recorder()
    async with (
        fake_server() as (a, address_a),
        fake_server() as (b, address_b),
        fake_server() as (c, address_c),
    ):
        fakes = {address_a: a, address_b: b, address_c: c}
        addresses = [address_a, address_b, address_c]
        rng = random.Random(7)
        async with session(addresses, recorder, rng=rng, initial_backoff=0.05) as s:
            where = address_a
            conn = await asyncio.wait_for(a.connections.get(), 5)
            visited = [where]
            for _ in range(6):
                await s.wait_connected()
                conn.end(abort=(grpc.StatusCode.UNAVAILABLE, "shedding load: go elsewhere"))
                await assert_eventually(
                    lambda: _check(any(f.connections.qsize() for f in fakes.values())), timeout=5
                )
                moved = next(addr for addr, f in fakes.items() if f.connections.qsize())
                conn = fakes[moved].connections.get_nowait()
                assert moved != where, "a shed stream went straight back"
                assert conn.hello.session_id, "the session is offered for resumption"
                where = moved
                visited.append(where)
            assert set(visited) == set(addresses), visited  # spread over all the others
            await assert_eventually(lambda: _check(s.connected))
            assert s.status().connects == 7


def _check(condition: bool) -> None:
    assert condition
