"""The gRPC proxy passes on the status its upstream sent, and never one of its own.

An upstream can end a call before the proxy has written the request to it: an
unknown service or method is answered as soon as the call's headers arrive, and
a handler may abort before it reads anything. The proxy's request write then
races the upstream's status; it must lose quietly, so that the client gets the
upstream's code, details and trailers, and outlier detection sees an
application status, not a server error. Each case runs many times over one
proxy and over two in a row (as from an application through its sidecar to the
server's sidecar), on asyncio and on uvloop, and every status is compared with
the one the backend sends when called directly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import pytest
import uvloop

from sidecar.proxy import Listener, Target
from sidecar.proxy._grpc import GrpcListener
from tests.integration.proxy.conftest import Backend, policy

StartBackend = Callable[..., Backend]

#: Calls per case and chain. When the proxy let the race replace the status,
#: 2 to 16 % of all the calls of a chain came back INTERNAL, and every run failed.
REPEAT = 200
#: Calls in flight at once.
CONCURRENCY = 8


@dataclass(frozen=True)
class Case:
    """One call the upstream ends early, as a client makes it."""

    name: str
    method: str
    kind: str  # unary, server_stream or client_stream
    abort: str | None = None  # the code the backend's Abort ends with


CASES = (
    Case("unknown method", "/test.Echo/Missing", "unary"),
    Case("unknown service", "/test.Missing/Call", "unary"),
    Case("unknown method, server streaming", "/test.Echo/Missing", "server_stream"),
    Case("unknown method, client streaming", "/test.Echo/Missing", "client_stream"),
    Case("abort NOT_FOUND", "/test.Echo/Abort", "unary", "NOT_FOUND"),
    Case("abort PERMISSION_DENIED", "/test.Echo/Abort", "unary", "PERMISSION_DENIED"),
    Case("abort, server streaming", "/test.Echo/Abort", "server_stream", "NOT_FOUND"),
    Case("abort, client streaming", "/test.Echo/Abort", "client_stream", "PERMISSION_DENIED"),
)

#: What a client saw: code, details and the backend's ``x-trailer``.
Seen = tuple[str, str, str | None]

REQUESTS = (b"first", b"second", b"third")


async def call(channel: grpc.aio.Channel, blocking: grpc.Channel, case: Case) -> Seen:
    """Makes the case's call once and returns how it ended."""
    metadata = () if case.abort is None else (("x-abort", case.abort),)
    if case.kind == "client_stream":
        return await asyncio.to_thread(client_stream, blocking, case.method, metadata)
    made: Any
    with contextlib.suppress(grpc.aio.AioRpcError):  # read below, as any status
        if case.kind == "unary":
            made = channel.unary_unary(case.method, None, None)(
                b"request", metadata=metadata, timeout=5
            )
            await made
        else:
            made = channel.unary_stream(case.method, None, None)(
                b"request", metadata=metadata, timeout=5
            )
            async for _ in made:
                pass
    trailing = {key: value for key, value in await made.trailing_metadata() or ()}
    return (await made.code()).name, await made.details() or "", trailing.get("x-trailer")


def client_stream(channel: grpc.Channel, method: str, metadata: Any) -> Seen:
    """A client-streaming call on the blocking API: a grpc.aio client has the proxy's
    old race itself, and could replace the status it receives while it still writes."""
    made: Any
    try:
        _, made = channel.stream_unary(method, None, None).with_call(
            iter(REQUESTS), metadata=metadata, timeout=5
        )
    except grpc.RpcError as error:
        made = error  # also the call: code, details, trailers
    trailing = {key: value for key, value in made.trailing_metadata() or ()}
    return made.code().name, made.details() or "", trailing.get("x-trailer")


async def repeated(address: str, case: Case, times: int) -> Counter[Seen]:
    """How ``times`` calls of ``case`` through ``address`` ended."""
    seen: Counter[Seen] = Counter()
    async with grpc.aio.insecure_channel(address) as channel:
        with grpc.insecure_channel(address) as blocking:
            for start in range(0, times, CONCURRENCY):
                batch = min(CONCURRENCY, times - start)
                calls = (call(channel, blocking, case) for _ in range(batch))
                seen.update(await asyncio.gather(*calls))
    return seen


async def chain(listeners: list[Listener], backend: Backend, hops: int) -> tuple[str, list[Target]]:
    """``hops`` proxies in a row in front of ``backend``: the first one's address, and
    the targets, the first one's first."""
    targets: list[Target] = []
    upstream: tuple[str, int] = backend.address
    address = ""
    for _ in range(hops):
        # Ejection on at its most sensitive: any server error counted would show.
        hop = Target.fixed(
            "orders", policy("grpc", outlier={"consecutive_failures": 1}), [upstream]
        )
        listener = GrpcListener("orders", "127.0.0.1:0", hop, hop.policy)
        await listener.start()
        listeners.append(listener)
        address = listener.address
        host, _, port = address.rpartition(":")
        upstream = (host, int(port))
        targets.insert(0, hop)
    return address, targets


async def statuses_pass_through(listeners: list[Listener], backend: Backend, hops: int) -> None:
    """Every case, REPEAT times through ``hops`` proxies: exactly the backend's status."""
    front, targets = await chain(listeners, backend, hops)
    wrong: dict[str, Counter[Seen]] = {}
    expected_codes: Counter[str] = Counter()
    for case in CASES:
        # What the backend sends, asked directly (as a unary call: the same status).
        direct = Case(case.name, case.method, "unary", case.abort)
        expected = (await repeated(f"127.0.0.1:{backend.port}", direct, 1)).most_common(1)[0][0]
        assert expected[0] != "OK", case
        seen = await repeated(front, case, REPEAT)
        if seen != Counter({expected: REPEAT}):
            del seen[expected]
            wrong[case.name] = seen
        expected_codes[expected[0]] += REPEAT
    assert not wrong, f"over {hops} hop(s), calls out of {REPEAT} per case that differ: {wrong}"
    for hop in targets:
        # Application statuses all: not one failure for outlier detection.
        assert hop.stats.responses == expected_codes
        assert dict(hop.stats.errors) == {}
        assert hop.stats.ejections == 0
        assert hop.status()["ejected"] == []


@pytest.mark.parametrize("hops", [1, 2])
async def test_early_statuses_pass_through_unchanged(
    backends: StartBackend, listeners: list[Listener], hops: int
) -> None:
    backend = backends("grpc_backend.py", "--name", "b1")
    await statuses_pass_through(listeners, backend, hops)


def test_early_statuses_pass_through_unchanged_on_uvloop(backends: StartBackend) -> None:
    """The sidecar's own loop (in a thread of its own: the test's loop is asyncio's)."""
    backend = backends("grpc_backend.py", "--name", "b1")

    async def scenario(hops: int) -> None:
        listeners: list[Listener] = []
        try:
            await statuses_pass_through(listeners, backend, hops)
        finally:
            for listener in listeners:
                await listener.drain(0.0)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        for hops in (1, 2):
            pool.submit(uvloop.run, scenario(hops)).result(timeout=50)
