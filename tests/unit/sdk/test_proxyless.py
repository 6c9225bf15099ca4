"""Proxyless channel: endpoint lists from watch events, picking, retries, lifecycle.

No sockets: endpoints come from a StaticEndpointSource (or events folded by
EndpointTracker) and every per-endpoint channel is a FakeChannel whose
answers are scripted per address.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sdk import EndpointSource, ServiceChannel, StaticEndpointSource
from sdk._errors import ClientClosedError
from sdk._types import HealthStatus, Instance, WatchEvent, WatchEventType
from sdk.balancer import Balancer, Endpoint, NoEndpointsError, make_balancer
from sdk.proxyless._policy import idempotency, never_sent, should_retry
from sdk.proxyless._sources import EndpointTracker
from tests.util import assert_eventually

CHECK = "/grpc.health.v1.Health/Check"
WATCH = "/grpc.health.v1.Health/Watch"
REFUSED = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.0.1:80: "
    "Failed to connect to remote host: Connection refused"
)

# -- fakes ----------------------------------------------------------------------


def rpc_error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)


@dataclass
class Attempt:
    authority: str
    method: str
    request: Any
    timeout: float | None
    metadata: Any
    registered: bool | None


Answer = Callable[[Attempt], Any]  # returns a response, or raises


class FakeUnaryCall:
    """What a grpc.aio unary multicallable returns: awaitable, cancellable."""

    def __init__(self, answer: Answer, attempt: Attempt, delay: float) -> None:
        self._answer = answer
        self._attempt = attempt
        self._delay = delay
        self._code = grpc.StatusCode.OK

    def __await__(self) -> Any:
        return self._run().__await__()

    async def _run(self) -> Any:
        await asyncio.sleep(self._delay)
        try:
            return self._answer(self._attempt)
        except grpc.aio.AioRpcError as err:
            self._code = err.code()
            raise

    def cancel(self) -> bool:
        return True

    async def code(self) -> grpc.StatusCode:
        return self._code


class FakeStreamCall:
    """A server-streaming call: yields scripted items, runs done callbacks at the end."""

    def __init__(self, items: Sequence[Any]) -> None:
        self._items = list(items)
        self._done = False
        self._callbacks: list[Callable[[Any], None]] = []

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        try:
            for item in self._items:
                await asyncio.sleep(0)
                yield item
        finally:
            self._finish()

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            for callback in self._callbacks:
                callback(self)

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._done:
            callback(self)
        else:
            self._callbacks.append(callback)

    def done(self) -> bool:
        return self._done

    def cancel(self) -> bool:
        self._finish()
        return True


class FakeClientStreamCall:
    """A client-streaming call: consumes the requests, answers with how many there were."""

    def __init__(self, requests: Any) -> None:
        self._requests = requests
        self._callbacks: list[Callable[[Any], None]] = []

    def __await__(self) -> Any:
        return self._run().__await__()

    async def _run(self) -> Any:
        try:
            return f"{len(list(self._requests))} requests"
        finally:
            for callback in self._callbacks:
                callback(self)

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._callbacks.append(callback)


class FakeChannel:
    def __init__(self, backends: FakeBackends, authority: str) -> None:
        self.backends = backends
        self.authority = authority
        self.closed = False

    def _multicallable(self, kind: str, method: str, registered: bool | None) -> Any:
        def call(
            request: Any, *, timeout: float | None = None, metadata: Any = None, **_: Any
        ) -> Any:
            if self.closed:
                raise RuntimeError("channel closed")
            attempt = Attempt(self.authority, method, request, timeout, metadata, registered)
            self.backends.attempts.append(attempt)
            if kind == "unary_stream":
                return FakeStreamCall(self.backends.stream_items)
            if kind == "stream_unary":
                return FakeClientStreamCall(request)
            answer = self.backends.answers.get(self.authority, self.backends.default)
            return FakeUnaryCall(answer, attempt, self.backends.delay)

        return call

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return self._multicallable("unary_unary", method, _registered_method)

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return self._multicallable("unary_stream", method, _registered_method)

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return self._multicallable("stream_unary", method, _registered_method)

    async def close(self, grace: float | None = None) -> None:
        self.closed = True


def ok(attempt: Attempt) -> Any:
    return f"reply from {attempt.authority}"


@dataclass
class FakeBackends:
    """Answers per authority (default: a reply naming it); records attempts and channels."""

    answers: dict[str, Answer] = field(default_factory=dict)
    default: Answer = ok
    delay: float = 0.0
    stream_items: list[Any] = field(default_factory=lambda: ["a", "b"])
    attempts: list[Attempt] = field(default_factory=list)
    channels: list[FakeChannel] = field(default_factory=list)

    def channel_factory(self, authority: str) -> Any:
        channel = FakeChannel(self, authority)
        self.channels.append(channel)
        return channel

    def hits(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for attempt in self.attempts:
            counts[attempt.authority] = counts.get(attempt.authority, 0) + 1
        return counts


def failing(code: grpc.StatusCode, details: str = "") -> Answer:
    def answer(attempt: Attempt) -> Any:
        raise rpc_error(code, details)

    return answer


def ep(name: str, health: HealthStatus = HealthStatus.PASSING, port: int = 80) -> Endpoint:
    return Endpoint(id=name, address=f"{name}.local", port=port, health=health)


class RecordingBalancer:
    """A real round-robin balancer that records every release."""

    def __init__(self) -> None:
        self.inner = make_balancer("round_robin", seed=1)
        self.releases: list[tuple[str, float | None, bool]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self.inner.endpoints

    def release(
        self, endpoint: Endpoint | str, *, latency: float | None = None, failed: bool = False
    ) -> None:
        endpoint_id = endpoint if isinstance(endpoint, str) else endpoint.id
        self.releases.append((endpoint_id, latency, failed))
        self.inner.release(endpoint, latency=latency, failed=failed)


@pytest.fixture
def backends() -> FakeBackends:
    return FakeBackends()


@pytest.fixture
def source() -> StaticEndpointSource:
    return StaticEndpointSource({"svc": [ep("a"), ep("b"), ep("c")]})


def open_channel(source: EndpointSource, backends: FakeBackends, **options: Any) -> ServiceChannel:
    options.setdefault("balancer_options", {"seed": 7})
    return ServiceChannel.open(source, "svc", channel_factory=backends.channel_factory, **options)


def instance(name: str, health: HealthStatus = HealthStatus.PASSING) -> Instance:
    return Instance(id=name, service="svc", address=f"{name}.local", port=80, health=health)


def put(name: str, rev: int, health: HealthStatus = HealthStatus.PASSING) -> WatchEvent:
    return WatchEvent(WatchEventType.PUT, rev, instance(name, health))


def delete(name: str, rev: int) -> WatchEvent:
    return WatchEvent(WatchEventType.DELETE, rev, instance(name))


RESYNC = WatchEvent(WatchEventType.RESYNC, 0)


def end(rev: int) -> WatchEvent:
    return WatchEvent(WatchEventType.SNAPSHOT_END, rev)


def ids(endpoints: Sequence[Endpoint] | None) -> list[str]:
    assert endpoints is not None
    return sorted(e.id for e in endpoints)


# -- endpoint lists from watch events --------------------------------------------


def test_snapshot_is_published_whole_at_its_end() -> None:
    tracker = EndpointTracker()
    assert tracker.apply(RESYNC) is None
    assert tracker.apply(put("a", 1)) is None
    assert tracker.apply(put("b", 2)) is None
    assert ids(tracker.apply(end(2))) == ["a", "b"]


def test_an_empty_snapshot_publishes_an_empty_list() -> None:
    tracker = EndpointTracker()
    tracker.apply(RESYNC)
    assert tracker.apply(end(5)) == []


def test_deltas_after_the_snapshot_are_published_one_by_one() -> None:
    tracker = EndpointTracker()
    for event in (RESYNC, put("a", 1), put("b", 2), end(2)):
        tracker.apply(event)
    assert ids(tracker.apply(put("c", 3))) == ["a", "b", "c"]
    critical = tracker.apply(put("b", 4, HealthStatus.CRITICAL))
    assert critical is not None
    assert {e.id: e.health for e in critical}["b"] is HealthStatus.CRITICAL
    assert ids(tracker.apply(delete("a", 5))) == ["b", "c"]
    assert tracker.apply(delete("zz", 6)) is None  # not held: nothing to publish
    assert tracker.apply(WatchEvent(WatchEventType.PROGRESS, 7)) is None


def test_resync_keeps_the_old_list_until_the_new_snapshot_is_complete() -> None:
    tracker = EndpointTracker()
    for event in (RESYNC, put("a", 1), put("b", 2), end(2)):
        tracker.apply(event)
    # After a reconnect the server could not resume: a new snapshot follows.
    assert tracker.apply(RESYNC) is None
    assert tracker.in_snapshot
    assert tracker.apply(put("b", 9)) is None
    assert tracker.apply(put("c", 10)) is None
    assert ids(tracker.instances and [Endpoint.from_instance(i) for i in tracker.instances]) == [
        "a",
        "b",
    ]
    # "a" is not in the new snapshot: it is gone once the snapshot ends.
    assert ids(tracker.apply(end(10))) == ["b", "c"]
    assert not tracker.in_snapshot


def test_a_delete_inside_a_snapshot_is_applied_to_the_snapshot() -> None:
    tracker = EndpointTracker()
    for event in (RESYNC, put("a", 1), put("b", 2), delete("a", 3)):
        assert tracker.apply(event) is None
    assert ids(tracker.apply(end(3))) == ["b"]


# -- retry policy decisions ----------------------------------------------------------


def test_only_unavailable_is_retried() -> None:
    for code in (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
    ):
        assert not should_retry(code, REFUSED, idempotent=True)
    assert should_retry(grpc.StatusCode.UNAVAILABLE, "Socket closed", idempotent=True)


def test_a_non_idempotent_call_is_retried_only_when_it_was_never_sent() -> None:
    assert should_retry(grpc.StatusCode.UNAVAILABLE, REFUSED, idempotent=False)
    assert should_retry(grpc.StatusCode.UNAVAILABLE, "DNS resolution failed", idempotent=False)
    for details in ("Socket closed", "Cancelling all calls", "Connection reset by peer", ""):
        assert not should_retry(grpc.StatusCode.UNAVAILABLE, details, idempotent=False)
    assert never_sent(grpc.StatusCode.UNAVAILABLE, REFUSED)
    assert not never_sent(grpc.StatusCode.DEADLINE_EXCEEDED, REFUSED)


def test_idempotency_from_paths_services_or_a_predicate() -> None:
    none = idempotency(None)
    assert not none(CHECK)
    paths = idempotency([CHECK, "/pkg.Orders/*"])
    assert paths(CHECK)
    assert not paths(WATCH)
    assert paths("/pkg.Orders/Get")
    assert not paths("/pkg.OrdersAdmin/Get")
    assert idempotency(lambda m: m.endswith("/Get"))("/x.Y/Get")
    with pytest.raises(ValueError, match=r"not '/package\.Service/Method'"):
        idempotency(["Check"])
    with pytest.raises(TypeError):
        idempotency(CHECK)


# -- picking and endpoint updates ------------------------------------------------------


async def test_calls_spread_over_the_endpoints(
    source: StaticEndpointSource, backends: FakeBackends
) -> None:
    async with open_channel(source, backends) as channel:
        method = channel.unary_unary(CHECK)
        for _ in range(30):
            await method(b"req")
    assert backends.hits() == {"a.local:80": 10, "b.local:80": 10, "c.local:80": 10}


async def test_a_critical_endpoint_is_skipped_from_the_update_that_says_so(
    source: StaticEndpointSource, backends: FakeBackends
) -> None:
    async with open_channel(source, backends) as channel:
        method = channel.unary_unary(CHECK)
        await channel.wait_for_endpoints()
        source.set("svc", [ep("a"), ep("b", HealthStatus.CRITICAL), ep("c")])
        await assert_eventually(
            lambda: _assert({e.id: e.health for e in channel.endpoints}["b"] == "CRITICAL")
        )
        backends.attempts.clear()
        for _ in range(20):
            await method(b"req")
    assert "b.local:80" not in backends.hits()


async def test_router_applies_an_update_before_the_next_pick(backends: FakeBackends) -> None:
    source = StaticEndpointSource({"svc": [ep("a"), ep("b"), ep("c")]})
    channel = open_channel(source, backends)
    pool = channel._pool
    pool.update([ep("a"), ep("b", HealthStatus.CRITICAL), ep("c")])
    picked = set()
    for _ in range(10):
        endpoint, connection = pool.pick(None)
        pool.release(endpoint, connection)
        picked.add(endpoint.id)
    assert picked == {"a", "c"}
    await channel.close()


async def test_one_channel_per_endpoint_made_lazily_and_closed_when_it_leaves(
    source: StaticEndpointSource, backends: FakeBackends
) -> None:
    async with open_channel(source, backends) as channel:
        await channel.wait_for_endpoints()
        assert backends.channels == []  # nothing dialled before the first call
        method = channel.unary_unary(CHECK)
        for _ in range(9):
            await method(b"req")
        assert sorted(c.authority for c in backends.channels) == [
            "a.local:80",
            "b.local:80",
            "c.local:80",
        ]
        by_authority = {c.authority: c for c in backends.channels}
        # b leaves, c moves to another port: both old channels close.
        source.set("svc", [ep("a"), ep("c", port=81)])
        await assert_eventually(lambda: _assert(by_authority["b.local:80"].closed))
        await assert_eventually(lambda: _assert(by_authority["c.local:80"].closed))
        assert not by_authority["a.local:80"].closed
        for _ in range(4):
            await method(b"req")
        assert "c.local:81" in {c.authority for c in backends.channels}
        assert len(backends.channels) == 4
    assert all(c.closed for c in backends.channels)


async def test_a_leaving_endpoint_drains_its_calls_before_its_channel_closes(
    source: StaticEndpointSource, backends: FakeBackends
) -> None:
    backends.delay = 0.2
    async with open_channel(source, backends, balancer="round_robin") as channel:
        method = channel.unary_unary(CHECK)
        await channel.wait_for_endpoints()
        calls = [asyncio.ensure_future(method(b"req")) for _ in range(3)]
        await assert_eventually(lambda: _assert(len(backends.channels) == 3))
        source.set("svc", [])
        await assert_eventually(lambda: _assert(channel.endpoints == ()))
        assert not any(c.closed for c in backends.channels)  # calls still in flight
        replies = await asyncio.gather(*calls)
        assert len(replies) == 3
        await assert_eventually(lambda: _assert(all(c.closed for c in backends.channels)))


async def test_ring_hash_routes_a_metadata_key_to_one_endpoint(
    source: StaticEndpointSource, backends: FakeBackends
) -> None:
    async with open_channel(
        source, backends, balancer="ring_hash", key_metadata="x-user"
    ) as channel:
        method = channel.unary_unary(CHECK)
        for _ in range(10):
            await method(b"req", metadata=(("x-user", "alice"),))
        assert len(backends.hits()) == 1


async def test_generated_stubs_work_unchanged(
    source: StaticEndpointSource, backends: FakeBackends
) -> None:
    backends.default = lambda attempt: health_pb2.HealthCheckResponse(
        status=health_pb2.HealthCheckResponse.SERVING
    )
    async with open_channel(source, backends) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert [s async for s in stub.Watch(health_pb2.HealthCheckRequest())] == ["a", "b"]
    assert backends.attempts[0].registered is True  # _registered_method passed through
    assert backends.attempts[0].timeout == pytest.approx(1.0, abs=0.1)


# -- retries ---------------------------------------------------------------------


async def test_an_idempotent_call_is_retried_on_another_endpoint(
    source: StaticEndpointSource, backends: FakeBackends
) -> None:
    backends.answers["a.local:80"] = failing(grpc.StatusCode.UNAVAILABLE, "Socket closed")
    balancer = RecordingBalancer()
    async with open_channel(
        source, backends, balancer=balancer, balancer_options=None, idempotent=[CHECK]
    ) as channel:
        method = channel.unary_unary(CHECK)
        for _ in range(6):
            call = method(b"req")
            assert (await call).startswith("reply from")
            assert call.endpoint is not None and call.endpoint.id != "a"
    failed = [r for r in balancer.releases if r[2]]
    assert failed and all(r[0] == "a" for r in failed)
    assert all(r[1] is not None for r in balancer.releases)
    assert all(balancer.in_flight(i) == 0 for i in "abc")


async def test_a_non_idempotent_call_that_may_have_been_sent_is_not_retried(
    source: StaticEndpointSource, backends: FakeBackends
) -> None:
    for name in "abc":
        backends.answers[f"{name}.local:80"] = failing(grpc.StatusCode.UNAVAILABLE, "Socket closed")
    async with open_channel(source, backends) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary(CHECK)(b"req")
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert len(backends.attempts) == 1


async def test_a_call_that_could_not_connect_is_retried_whatever_the_method(
    source: StaticEndpointSource, backends: FakeBackends
) -> None:
    backends.answers["a.local:80"] = failing(grpc.StatusCode.UNAVAILABLE, REFUSED)
    async with open_channel(source, backends) as channel:
        method = channel.unary_unary("/pkg.Orders/Create")
        for _ in range(6):
            await method(b"req")
    # Tried once, retried elsewhere, then skipped: later calls pay no failed connect.
    assert sum(1 for a in backends.attempts if a.authority == "a.local:80") == 1
    assert len(backends.attempts) == 7


async def test_application_errors_are_not_retried(
    source: StaticEndpointSource, backends: FakeBackends
) -> None:
    backends.default = failing(grpc.StatusCode.NOT_FOUND, "no such order")
    async with open_channel(source, backends, idempotent=[CHECK]) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary(CHECK)(b"req")
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert len(backends.attempts) == 1


async def test_attempts_are_bounded(source: StaticEndpointSource, backends: FakeBackends) -> None:
    backends.default = failing(grpc.StatusCode.UNAVAILABLE, "Socket closed")
    async with open_channel(source, backends, idempotent=[CHECK], max_attempts=2) as channel:
        call = channel.unary_unary(CHECK)(b"req")
        with pytest.raises(grpc.aio.AioRpcError):
            await call
        assert call.attempts == 2
        assert await call.code() is grpc.StatusCode.UNAVAILABLE
    assert len({a.authority for a in backends.attempts}) == 2  # two different endpoints


async def test_a_single_endpoint_is_retried_after_a_pause(backends: FakeBackends) -> None:
    source = StaticEndpointSource({"svc": [ep("a")]})
    results = iter([rpc_error(grpc.StatusCode.UNAVAILABLE, "Socket closed"), None])

    def flaky(attempt: Attempt) -> Any:
        error = next(results)
        if error is not None:
            raise error
        return "ok"

    backends.answers["a.local:80"] = flaky
    async with open_channel(source, backends, idempotent=[CHECK]) as channel:
        assert await channel.unary_unary(CHECK)(b"req") == "ok"
    assert len(backends.attempts) == 2


async def test_retries_stay_within_the_call_deadline(
    source: StaticEndpointSource, backends: FakeBackends
) -> None:
    backends.delay = 0.15
    backends.default = failing(grpc.StatusCode.UNAVAILABLE, "Socket closed")
    async with open_channel(source, backends, idempotent=[CHECK], max_attempts=5) as channel:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(grpc.aio.AioRpcError):
            await channel.unary_unary(CHECK)(b"req", timeout=0.4)
        assert loop.time() - started < 2.0  # the 0.4 s deadline, not five attempts
    timeouts = [a.timeout for a in backends.attempts]
    assert 2 <= len(timeouts) <= 3
    assert timeouts[0] == pytest.approx(0.4, abs=0.05)
    assert all(t is not None and t < 0.4 for t in timeouts[1:])
    assert timeouts == sorted(timeouts, reverse=True)


# -- waiting for endpoints ----------------------------------------------------------


async def test_a_call_waits_for_the_first_endpoint_list(backends: FakeBackends) -> None:
    source = StaticEndpointSource()
    async with open_channel(source, backends) as channel:
        call = asyncio.ensure_future(channel.unary_unary(CHECK)(b"req", timeout=2.0))
        await asyncio.sleep(0.05)
        assert not call.done()
        source.set("svc", [ep("a")])
        assert await call == "reply from a.local:80"


async def test_no_endpoint_list_fails_after_the_wait(backends: FakeBackends) -> None:
    async with open_channel(StaticEndpointSource(), backends, resolve_timeout=0.1) as channel:
        with pytest.raises(NoEndpointsError, match=r"svc: no endpoint list received within 0\.1s"):
            await channel.unary_unary(CHECK)(b"req")
        # What was left of the call's deadline, to the millisecond: 0.05 s, or
        # a little less when the call took a moment to reach the wait.
        with pytest.raises(NoEndpointsError, match=r"within 0\.0(5|4\d{0,1})s"):
            await channel.unary_unary(CHECK)(b"req", timeout=0.05)


async def test_an_empty_list_fails_at_once_unless_waiting_for_ready(
    backends: FakeBackends,
) -> None:
    source = StaticEndpointSource({"svc": []})
    async with open_channel(source, backends) as channel:
        method = channel.unary_unary(CHECK)
        with pytest.raises(NoEndpointsError, match="no endpoints"):
            await method(b"req", timeout=5.0)
        waiting = asyncio.ensure_future(method(b"req", timeout=2.0, wait_for_ready=True))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        source.set("svc", [ep("b")])
        assert await waiting == "reply from b.local:80"


async def test_a_stream_made_before_the_first_list_starts_when_it_arrives(
    backends: FakeBackends,
) -> None:
    source = StaticEndpointSource()
    async with open_channel(source, backends) as channel:
        call = channel.unary_stream(WATCH)(b"req", timeout=2.0)
        collect = asyncio.ensure_future(_collect(call))
        await asyncio.sleep(0.05)
        source.set("svc", [ep("a")])
        assert await collect == ["a", "b"]
        assert call.done()
        assert channel.balancer.in_flight("a") == 0


async def test_streams_pick_once_and_release_when_done(
    source: StaticEndpointSource, backends: FakeBackends
) -> None:
    async with open_channel(source, backends) as channel:
        await channel.wait_for_endpoints()
        method = channel.unary_stream(WATCH)
        call = method(b"req")
        assert isinstance(call, FakeStreamCall)  # the endpoint channel's own call
        assert sum(channel.balancer.in_flight(i) for i in "abc") == 1
        assert await _collect(call) == ["a", "b"]
        assert sum(channel.balancer.in_flight(i) for i in "abc") == 0
    assert len(backends.attempts) == 1


async def test_client_streaming_takes_request_iterator_by_keyword(
    source: StaticEndpointSource, backends: FakeBackends
) -> None:
    async with open_channel(source, backends) as channel:
        await channel.wait_for_endpoints()
        method = channel.stream_unary("/pkg.Upload/Put")
        assert await method(request_iterator=iter([1, 2, 3]), timeout=1.0) == "3 requests"
        assert await method(iter([1])) == "1 requests"
        assert sum(channel.balancer.in_flight(i) for i in "abc") == 0


async def test_a_unary_call_can_be_cancelled_before_or_during_its_attempt(
    source: StaticEndpointSource, backends: FakeBackends
) -> None:
    backends.delay = 5.0
    async with open_channel(source, backends) as channel:
        method = channel.unary_unary(CHECK)
        early = method(b"req")
        assert early.cancel()
        assert early.cancelled() and early.done()
        with pytest.raises(asyncio.CancelledError):
            await early
        assert backends.attempts == []

        running = asyncio.ensure_future(_await(task_call := method(b"req")))
        await assert_eventually(lambda: _assert(len(backends.attempts) == 1))
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        assert task_call.cancelled()  # cancelling the awaiting task cancels the call
        assert sum(channel.balancer.in_flight(i) for i in "abc") == 0


# -- lifecycle -----------------------------------------------------------------------


async def test_close_is_idempotent_and_leaves_nothing_open(
    source: StaticEndpointSource, backends: FakeBackends
) -> None:
    channel = open_channel(source, backends)
    await channel.start()
    method = channel.unary_unary(CHECK)
    for _ in range(3):
        await method(b"req")
    assert source.watchers("svc") == 1
    await channel.close()
    await channel.close()
    assert channel.closed
    assert source.watchers("svc") == 0
    assert channel._watch_task is None
    assert all(c.closed for c in backends.channels)
    with pytest.raises(ClientClosedError):
        await method(b"req")
    with pytest.raises(ClientClosedError):
        await channel.start()


async def test_a_call_starts_the_watch_of_a_channel_never_entered(
    source: StaticEndpointSource, backends: FakeBackends
) -> None:
    channel = open_channel(source, backends)
    try:
        assert await channel.unary_unary(CHECK)(b"req", timeout=1.0)
    finally:
        await channel.close()


async def test_a_failing_source_is_reopened_and_its_error_explains_empty_routing(
    backends: FakeBackends,
) -> None:
    class Broken:
        opened = 0

        async def watch_endpoints(self, service: str, namespace: str) -> AsyncIterator[Any]:
            Broken.opened += 1
            raise NoEndpointsError("the sidecar does not know svc")
            yield  # pragma: no cover

    async with open_channel(Broken(), backends) as channel:
        with pytest.raises(NoEndpointsError, match="the endpoint source failed"):
            await channel.unary_unary(CHECK)(b"req", timeout=1.0)
        await assert_eventually(lambda: _assert(Broken.opened >= 2), timeout=3.0)


def test_options_are_validated(source: StaticEndpointSource) -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        ServiceChannel.open(source, "svc", max_attempts=0)
    with pytest.raises(ValueError, match="resolve_timeout"):
        ServiceChannel.open(source, "svc", resolve_timeout=-1)
    with pytest.raises(ValueError, match="unknown balancer"):
        ServiceChannel.open(source, "svc", balancer="fastest")
    with pytest.raises(TypeError, match="source must be"):
        ServiceChannel.open(object(), "svc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="only to a balancer given by name"):
        ServiceChannel.open(
            source, "svc", balancer=make_balancer("random"), balancer_options={"seed": 1}
        )
    assert isinstance(make_balancer("random"), Balancer)


# -- helpers ------------------------------------------------------------------------


def _assert(condition: bool) -> None:
    assert condition


async def _await(call: Any) -> Any:
    return await call


async def _collect(call: Any) -> list[Any]:
    return [item async for item in call]
