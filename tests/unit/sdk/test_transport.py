"""Addresses, failover and retries of the call helper, over fake channels."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from ecosystem.v1 import registry_pb2 as pb

import sdk
from sdk._transport import Transport, resolve_servers
from tests.unit.sdk.fakes import FakeControlPlane, RecordingSleep, rpc_error, unavailable


def ok(_address: str, _request: object) -> pb.ListServicesResponse:
    return pb.ListServicesResponse(revision=7)


def make(plane: FakeControlPlane, *addresses: str, **kwargs: object) -> Transport:
    options: dict[str, object] = {"timeout": 5.0, "channel_factory": plane.channel_factory}
    options.update(kwargs)
    return Transport(addresses, **options)  # type: ignore[arg-type]


class TestResolveServers:
    def test_argument_wins(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("ECO_SERVER", "env:1")
        assert resolve_servers("a:1") == ("a:1",)

    def test_comma_separated_string_and_sequence(self) -> None:
        assert resolve_servers("a:1, b:2,") == ("a:1", "b:2")
        assert resolve_servers(["a:1", "[::1]:7400"]) == ("a:1", "[::1]:7400")

    def test_environment_then_default(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("ECO_SERVER", "env:1,env:2")
        assert resolve_servers() == ("env:1", "env:2")
        monkeypatch.delenv("ECO_SERVER")
        assert resolve_servers() == ("127.0.0.1:7400",)

    @pytest.mark.parametrize("bad", ["localhost", "host:", ":80", "host:http", "h:70000", ","])
    def test_malformed_addresses_are_refused(self, bad: str) -> None:
        with pytest.raises(ValueError):
            resolve_servers(bad)


async def test_a_successful_call_returns_the_response_with_a_deadline() -> None:
    plane = FakeControlPlane(unary={"ListServices": ok})
    transport = make(plane, "a:1", timeout=2.0)
    response = await transport.unary("ListServices", pb.ListServicesRequest(), idempotent=True)
    assert response.revision == 7
    (call,) = plane.calls
    assert call.timeout is not None and 0 < call.timeout <= 2.0
    await transport.close()


async def test_fails_over_to_the_next_address_and_stays_there() -> None:
    plane = FakeControlPlane(unary={"ListServices": ok}, down={"a:1"})
    sleep = RecordingSleep()
    transport = make(plane, "a:1", "b:2", sleep=sleep)
    await transport.unary("ListServices", pb.ListServicesRequest(), idempotent=True)
    assert [c.address for c in plane.calls] == ["a:1", "b:2"]
    assert sleep.delays == [0.0]  # moving to an untried address costs nothing
    assert transport.current_address == "b:2"
    await transport.unary("ListServices", pb.ListServicesRequest(), idempotent=True)
    assert [c.address for c in plane.calls][-1] == "b:2"
    await transport.close()


async def test_retries_with_growing_jittered_backoff_then_gives_up() -> None:
    plane = FakeControlPlane(unary={"ListServices": ok}, down={"a:1"})
    sleep = RecordingSleep()
    policy = sdk.RetryPolicy(max_attempts=5, initial=0.1, maximum=1.0)
    transport = make(plane, "a:1", sleep=sleep, policy=policy)
    with pytest.raises(sdk.UnavailableError) as caught:
        await transport.unary("ListServices", pb.ListServicesRequest(), idempotent=True)
    assert len(plane.calls) == 5
    assert len(sleep.delays) == 4
    for attempt, delay in enumerate(sleep.delays, start=1):
        assert 0 <= delay <= min(1.0, 0.1 * 2 ** (attempt - 1))
    assert isinstance(caught.value.__cause__, grpc.RpcError)
    await transport.close()


async def test_recovers_when_the_server_comes_back() -> None:
    answers = [unavailable(), unavailable()]

    def flaky(address: str, request: object) -> pb.ListServicesResponse:
        if answers:
            raise answers.pop()
        return ok(address, request)

    plane = FakeControlPlane(unary={"ListServices": flaky})
    transport = make(plane, "a:1", sleep=RecordingSleep())
    response = await transport.unary("ListServices", pb.ListServicesRequest(), idempotent=True)
    assert response.revision == 7
    assert len(plane.calls) == 3
    await transport.close()


async def test_unsafe_calls_are_not_retried_but_the_next_call_fails_over() -> None:
    plane = FakeControlPlane(unary={"RegisterInstance": ok}, down={"a:1"})
    transport = make(plane, "a:1", "b:2", sleep=RecordingSleep())
    with pytest.raises(sdk.UnavailableError):
        await transport.unary("RegisterInstance", pb.RegisterInstanceRequest(), idempotent=False)
    assert len(plane.calls) == 1
    assert transport.current_address == "b:2"
    await transport.close()


@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ABORTED],
)
async def test_definite_answers_are_not_retried(code: grpc.StatusCode) -> None:
    def refuse(_address: str, _request: object) -> object:
        raise rpc_error(code, "no")

    plane = FakeControlPlane(unary={"GetService": refuse})
    transport = make(plane, "a:1", "b:2", sleep=RecordingSleep())
    with pytest.raises(sdk.EcoError):
        await transport.unary("GetService", pb.GetServiceRequest(), idempotent=True)
    assert len(plane.calls) == 1
    assert transport.current_address == "a:1"
    await transport.close()


async def test_retries_stop_at_the_deadline() -> None:
    plane = FakeControlPlane(unary={"ListServices": ok}, down={"a:1"})

    async def slow_sleep(delay: float) -> None:
        await asyncio.sleep(0.05)

    policy = sdk.RetryPolicy(max_attempts=1000, initial=0.05, maximum=0.05)
    transport = make(plane, "a:1", timeout=0.3, sleep=slow_sleep, policy=policy)
    with pytest.raises((sdk.UnavailableError, sdk.DeadlineExceededError)):
        await transport.unary("ListServices", pb.ListServicesRequest(), idempotent=True)
    assert len(plane.calls) < 20
    await transport.close()


async def test_an_address_that_answers_nothing_is_left_after_the_deadline() -> None:
    # A frozen or cut-off replica: no connection error ever comes, only silence.
    plane = FakeControlPlane(unary={"ListServices": ok}, hung={"a:1"})
    transport = make(plane, "a:1", "b:2", timeout=0.05, sleep=RecordingSleep())
    with pytest.raises(sdk.DeadlineExceededError):
        await transport.unary("ListServices", pb.ListServicesRequest(), idempotent=True)
    assert transport.current_address == "b:2"
    response = await transport.unary("ListServices", pb.ListServicesRequest(), idempotent=True)
    assert response.revision == 7
    assert [c.address for c in plane.calls] == ["a:1", "b:2"]
    await transport.close()


async def test_a_deadline_the_server_answers_early_keeps_the_address() -> None:
    def expired(_address: str, _request: object) -> object:
        raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "nobody replied in time")

    plane = FakeControlPlane(unary={"ListServices": expired})
    transport = make(plane, "a:1", "b:2", sleep=RecordingSleep())
    with pytest.raises(sdk.DeadlineExceededError):
        await transport.unary("ListServices", pb.ListServicesRequest(), idempotent=True)
    assert transport.current_address == "a:1"
    await transport.close()


async def test_close_is_idempotent_closes_channels_and_refuses_calls() -> None:
    plane = FakeControlPlane(unary={"ListServices": ok})
    transport = make(plane, "a:1")
    await transport.unary("ListServices", pb.ListServicesRequest(), idempotent=True)
    await transport.close()
    await transport.close()
    assert transport.closed
    assert all(channel.closed for channel in plane.channels)
    with pytest.raises(sdk.ClientClosedError):
        await transport.unary("ListServices", pb.ListServicesRequest(), idempotent=True)


def test_no_channel_is_opened_before_the_first_call() -> None:
    plane = FakeControlPlane()
    make(plane, "a:1", "b:2")
    assert plane.channels == []
