"""The sidecar's token checker: its cache, one question per token at a time, and
what it answers while the control plane is away (the control plane faked: the
logic only; tests/integration/test_local_api_acl.py runs it against a real one)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ecosystem.v1 import acl_pb2

import sdk
from serving.acl import Need, PermissionDeniedError
from serving.errors import UnauthenticatedError, UnavailableError
from sidecar.acl import CACHE_SECONDS, TokenChecker

READ_ORDERS = [Need("service", "orders", "read", "default")]


class FakeControlPlane:
    """Answers ResolveToken from a table of secrets; ``down`` makes it unreachable."""

    def __init__(self) -> None:
        self.tokens: dict[str, list[str]] = {}
        self.default_allow = False
        self.down = False
        self.calls = 0
        self.gate: asyncio.Event | None = None

    async def unary(self, method: str, request: Any, **kwargs: Any) -> Any:
        assert method == "ResolveToken"
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise sdk.UnavailableError("connection refused", code="UNAVAILABLE")
        secret = kwargs["token"]
        if secret not in self.tokens:
            if not secret and self.default_allow:
                return acl_pb2.ResolveTokenResponse(default_allow=True)
            raise sdk.UnauthenticatedError("the token is not valid (unknown or deleted)")
        rules = [
            acl_pb2.AclRule(
                **dict(zip(("resource", "pattern", "access"), r.split(":"), strict=True))
            )
            for r in self.tokens[secret]
        ]
        return acl_pb2.ResolveTokenResponse(
            token=acl_pb2.AclToken(accessor_id=f"id-{secret}"), rules=rules
        )

    async def close(self) -> None:
        return  # nothing to close: no channel behind it


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def cp() -> FakeControlPlane:
    return FakeControlPlane()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def checker(cp: FakeControlPlane, clock: Clock) -> TokenChecker:
    checker = TokenChecker(["127.0.0.1:1"], clock=clock)
    checker._transport = cp  # type: ignore[assignment]
    return checker


async def test_a_token_is_asked_about_once_a_second(
    checker: TokenChecker, cp: FakeControlPlane, clock: Clock
) -> None:
    cp.tokens["s1"] = ["service:orders:read"]
    grant = await checker.check("s1", READ_ORDERS)
    assert grant.who == "id-s1"
    await checker.check("s1", READ_ORDERS)
    assert cp.calls == 1
    clock.now += CACHE_SECONDS + 0.01
    del cp.tokens["s1"]  # deleted: the next question, a second later, finds out
    with pytest.raises(UnauthenticatedError, match="not valid"):
        await checker.check("s1", READ_ORDERS)
    assert cp.calls == 2


async def test_a_missing_right_is_named(checker: TokenChecker, cp: FakeControlPlane) -> None:
    cp.tokens["s1"] = ["service:orders:read"]
    with pytest.raises(PermissionDeniedError, match=r"the token lacks bus:orders\.new:publish"):
        await checker.check("s1", [Need("bus", "orders.new", "publish")])


async def test_no_token_is_refused_under_deny_and_let_through_under_allow(
    checker: TokenChecker, cp: FakeControlPlane, clock: Clock
) -> None:
    with pytest.raises(UnauthenticatedError, match="this listener requires a token"):
        await checker.check("", READ_ORDERS)
    clock.now += CACHE_SECONDS + 0.01
    cp.default_allow = True
    assert (await checker.check("", READ_ORDERS)).who == "anonymous"


async def test_requests_with_one_token_at_once_make_one_question(
    checker: TokenChecker, cp: FakeControlPlane
) -> None:
    cp.tokens["s1"] = ["service:orders:read"]
    cp.gate = asyncio.Event()
    waiting = [asyncio.ensure_future(checker.check("s1", READ_ORDERS)) for _ in range(20)]
    await asyncio.sleep(0)
    cp.gate.set()
    grants = await asyncio.gather(*waiting)
    assert {g.who for g in grants} == {"id-s1"}
    assert cp.calls == 1


async def test_the_last_answer_stands_while_the_control_plane_is_away(
    checker: TokenChecker, cp: FakeControlPlane, clock: Clock
) -> None:
    cp.tokens["known"] = ["service:orders:read"]
    await checker.check("known", READ_ORDERS)
    cp.down = True
    clock.now += 60
    assert (await checker.check("known", READ_ORDERS)).who == "id-known"
    with pytest.raises(UnavailableError, match="the control plane is unreachable"):
        await checker.check("never-seen", READ_ORDERS)
