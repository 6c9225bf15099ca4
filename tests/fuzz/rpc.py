"""Calling any RPC with a generated request, and the properties every answer must have.

:func:`call` sends raw request bytes to ``/<service>/<method>`` over a
synchronous channel (so a mutated message travels as it is), whatever the
method's kind, with a deadline, and returns an :class:`Outcome`: the status,
its details and trailing metadata, and the responses read. A stream is cut
short by the test after a few responses (or its deadline): the status of a
stream the test ended itself is never held against the server.

:func:`check_outcome` holds the per-call properties: never INTERNAL or
UNKNOWN, RESOURCE_EXHAUSTED only for a method with a documented cap,
DEADLINE_EXCEEDED only where the server may rightly wait, and small error
details. :class:`Served` holds the per-process ones: alive, answering
``grpc.health``, and resident memory that stays within a bound.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import note
from hypothesis.control import currently_in_test_context

# An error's details and trailing metadata together stay under this: a
# rejected value is quoted as a short excerpt, never echoed whole.
MAX_ERROR_BYTES = 4096

# How much a server's resident memory may grow over one fuzz test (its
# examples, up to a few dozen of them a 1 MiB string or payload). The
# allocator keeps some of what a large request needed, and a first test warms
# the process up (gRPC buffers, lazily imported modules, caches); a request
# the server held on to would show as about its own size per example, which
# the long `make fuzz` run turns into hundreds of MiB.
MAX_RSS_GROWTH_KB = 64 * 1024

NEVER = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})


@dataclass(frozen=True)
class Rpc:
    """One method of a service: its path, kinds and message classes."""

    service: str
    name: str
    client_streaming: bool
    server_streaming: bool
    request: type[Message]
    response: type[Message]

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"

    def __str__(self) -> str:
        return self.name


def rpcs(descriptor: ServiceDescriptor) -> list[Rpc]:
    """Every method of a service, in proto order."""

    def one(m: MethodDescriptor) -> Rpc:
        return Rpc(
            descriptor.full_name,
            m.name,
            m.client_streaming,
            m.server_streaming,
            GetMessageClass(m.input_type),
            GetMessageClass(m.output_type),
        )

    return [one(m) for m in descriptor.methods]


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str = ""
    trailing: Sequence[tuple[str, str | bytes]] = ()
    responses: list[Message] = field(default_factory=list)
    # The test ended the call itself (cancelled it, or its deadline passed).
    cut: bool = False

    @property
    def ok(self) -> bool:
        return self.code is grpc.StatusCode.OK

    def error_bytes(self) -> int:
        size = len(self.details.encode("utf-8", "replace"))
        for key, value in self.trailing:
            size += len(key) + len(value)
        return size


def wire(request: Message | bytes) -> bytes:
    return request if isinstance(request, bytes) else request.SerializeToString()


def call(
    channel: grpc.Channel,
    rpc: Rpc,
    request: Message | bytes | Sequence[Message | bytes],
    *,
    timeout: float = 5.0,
    max_responses: int = 3,
    stop: Callable[[Message], bool] = lambda _: False,
) -> Outcome:
    """Calls ``rpc`` with ``request`` (a sequence of them for a client stream).
    A server stream is read until ``max_responses`` responses, ``stop`` says
    so, the stream ends, or ``timeout``; then the call is cancelled."""
    deserialize = rpc.response.FromString
    if rpc.client_streaming:
        assert isinstance(request, Sequence) and not isinstance(request, bytes)
        sent: Any = iter([wire(r) for r in request])
    else:
        assert isinstance(request, Message | bytes)
        sent = wire(request)
    kind = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[(rpc.client_streaming, rpc.server_streaming)]
    multicallable = kind(rpc.path, request_serializer=None, response_deserializer=deserialize)
    responses: list[Message] = []
    if not rpc.server_streaming:
        try:
            responses.append(multicallable(sent, timeout=timeout))
        except grpc.RpcError as err:
            return _failed(err, responses, cut=False)
        return Outcome(grpc.StatusCode.OK, responses=responses)
    stream = multicallable(sent, timeout=timeout)
    try:
        for response in stream:
            responses.append(response)
            if len(responses) >= max_responses or stop(response):
                stream.cancel()
                return Outcome(grpc.StatusCode.OK, responses=responses, cut=True)
    except grpc.RpcError as err:
        return _failed(err, responses, cut=err.code() is grpc.StatusCode.DEADLINE_EXCEEDED)
    return Outcome(grpc.StatusCode.OK, responses=responses)


def _failed(err: grpc.RpcError, responses: list[Message], *, cut: bool) -> Outcome:
    call_: Any = err
    return Outcome(
        call_.code(),
        call_.details() or "",
        tuple(call_.trailing_metadata() or ()),
        responses,
        cut,
    )


def check_outcome(
    outcome: Outcome,
    *,
    exhausted_ok: bool = False,
    may_wait: bool = False,
    server: Served | None = None,
) -> None:
    """The properties of one answer. ``exhausted_ok``: the method has a
    documented cap (RESOURCE_EXHAUSTED); ``may_wait``: the request may ask the
    server to wait past the test's deadline (DEADLINE_EXCEEDED). ``server``:
    whose log to show when the answer is INTERNAL or UNKNOWN."""
    code = outcome.code
    say(f"answer: {code.name} {outcome.details[:300]!r}, {len(outcome.responses)} response(s)")
    if code in NEVER:
        log = server.log_tail() if server is not None else ""
        raise AssertionError(f"{code.name}: {outcome.details[:500]!r}\n{log}")
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        assert exhausted_ok, f"RESOURCE_EXHAUSTED without a documented cap: {outcome.details!r}"
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        assert may_wait or outcome.cut, "the server did not answer within the deadline"
    if code is grpc.StatusCode.CANCELLED:
        raise AssertionError(f"the server cancelled the call: {outcome.details!r}")
    assert outcome.error_bytes() <= MAX_ERROR_BYTES, (
        f"{code.name} with {outcome.error_bytes()} bytes of details and trailing metadata"
    )


def say(text: str) -> None:
    """Adds ``text`` to the report of a failing example (outside one: nothing)."""
    if currently_in_test_context():
        note(text)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


class Served:
    """A server process under test: its pid, its gRPC address and its log."""

    def __init__(self, name: str, address: str, pid: int, log: Callable[[], str]) -> None:
        self.name = name
        self.address = address
        self._pid = pid
        self._log = log
        self.channel = grpc.insecure_channel(address)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    @property
    def pid(self) -> int:
        """The pid, after checking the process still runs (exited or a zombie: it
        does not; /proc is read because the sidecar's asyncio process object
        only learns of an exit while its event loop runs)."""
        try:
            status = Path(f"/proc/{self._pid}/status").read_text()
        except FileNotFoundError:
            status = "State:\tX (gone)"
        state = next(line for line in status.splitlines() if line.startswith("State:"))
        assert state.split()[1] not in ("Z", "X"), (
            f"{self.name} has exited ({state}):\n{self.log_tail()}"
        )
        return self._pid

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self._log().splitlines()[-lines:])

    def assert_serving(self) -> None:
        """The process runs and its grpc.health says SERVING."""
        self.pid  # noqa: B018 - raises when the process has exited
        try:
            answer = self._health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError as err:
            raise AssertionError(f"{self.name} health check failed: {err}") from err
        assert answer.status == health_pb2.HealthCheckResponse.SERVING, answer

    def rss_kb(self) -> int:
        return rss_kb(self.pid)

    @contextlib.contextmanager
    def bounded(self, still_works: Callable[[], None]) -> Iterator[None]:
        """Around a fuzz test: afterwards the process is serving, ``still_works``
        (a normal request) passes, and RSS grew by less than MAX_RSS_GROWTH_KB."""
        before = self.rss_kb()
        yield
        self.assert_serving()
        still_works()
        growth = self.rss_kb() - before
        assert growth < MAX_RSS_GROWTH_KB, (
            f"{self.name} RSS grew by {growth} KiB (bound {MAX_RSS_GROWTH_KB} KiB)"
        )

    def close(self) -> None:
        self.channel.close()
