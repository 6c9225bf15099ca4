"""Intentions against a real control plane: the IntentionService (create,
replace, list, check, delete, bad input), the default that follows
``--acl``, replicas sharing one store, and a real sidecar in this process
receiving every change over its agent session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from ecosystem.v1 import intention_pb2 as ipb
from ecosystem.v1 import intention_pb2_grpc

from controlplane import ControlPlane
from controlplane.store import MemoryStore, PutOp
from controlplane.testing import test_config
from sidecar.app import Sidecar
from sidecar.config import SidecarConfig
from tests.util import assert_eventually

ALLOW, DENY = ipb.INTENTION_ACTION_ALLOW, ipb.INTENTION_ACTION_DENY


config = test_config


@pytest.fixture
async def plane() -> AsyncIterator[ControlPlane]:
    async with ControlPlane(config()) as cp:
        yield cp


@pytest.fixture
async def stub(plane: ControlPlane) -> AsyncIterator[intention_pb2_grpc.IntentionServiceStub]:
    async with grpc.aio.insecure_channel(plane.address) as channel:
        yield intention_pb2_grpc.IntentionServiceStub(channel)


async def create(
    stub: intention_pb2_grpc.IntentionServiceStub, src: str, dst: str, action: int
) -> ipb.Intention:
    response = await stub.CreateIntention(
        ipb.CreateIntentionRequest(
            intention=ipb.Intention(source=src, destination=dst, action=action)
        )
    )
    return response.intention


async def check(stub: intention_pb2_grpc.IntentionServiceStub, src: str, dst: str) -> bool:
    response = await stub.CheckIntention(ipb.CheckIntentionRequest(source=src, destination=dst))
    return response.allowed


async def test_create_list_check_delete(stub: intention_pb2_grpc.IntentionServiceStub) -> None:
    assert await check(stub, "web", "orders")  # --acl allow: the default allows
    created = await create(stub, "*", "orders", DENY)
    assert created.create_time > 0
    await create(stub, "web", "orders", ALLOW)
    await create(stub, "web", "*", DENY)
    assert await check(stub, "web", "orders")
    assert not await check(stub, "api", "orders")
    assert not await check(stub, "web", "billing")
    answer = await stub.CheckIntention(
        ipb.CheckIntentionRequest(source="api", destination="orders")
    )
    assert answer.reason == "intention * -> default/orders denies"
    assert (answer.matched.source, answer.matched.destination) == ("*", "orders")

    listed = await stub.ListIntentions(ipb.ListIntentionsRequest())
    assert listed.default_allow
    # Most specific first.
    assert [(i.source, i.destination) for i in listed.intentions] == [
        ("web", "orders"),
        ("*", "orders"),
        ("web", "*"),
    ]

    # Creating one for a pair that has one replaces it.
    await create(stub, "web", "orders", DENY)
    assert not await check(stub, "web", "orders")
    assert len((await stub.ListIntentions(ipb.ListIntentionsRequest())).intentions) == 3

    await stub.DeleteIntention(ipb.DeleteIntentionRequest(source="web", destination="orders"))
    await stub.DeleteIntention(ipb.DeleteIntentionRequest(source="*", destination="orders"))
    assert not await check(stub, "web", "orders")  # web -> * still denies
    assert await check(stub, "api", "orders")
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.DeleteIntention(ipb.DeleteIntentionRequest(source="web", destination="orders"))
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    assert missing.value.details() == "no intention default/web -> default/orders"


async def test_namespaces_on_either_side(stub: intention_pb2_grpc.IntentionServiceStub) -> None:
    await create(stub, "*", "orders", DENY)
    # Written in any form, stored and sent in the shortest one.
    created = await create(stub, "team-a/web", "default/orders", ALLOW)
    assert (created.source, created.destination) == ("team-a/web", "orders")
    await create(stub, "*/*", "team-b/*", DENY)
    await create(stub, "team-b/*", "team-b/*", ALLOW)
    assert await check(stub, "team-a/web", "orders")
    assert not await check(stub, "team-b/web", "orders")
    assert not await check(stub, "web", "orders")  # default/web is not team-a/web
    assert await check(stub, "team-b/api", "team-b/orders")
    assert not await check(stub, "team-a/web", "team-b/orders")
    assert await check(stub, "team-a/web", "team-c/orders")  # the default (--acl allow)

    listed = await stub.ListIntentions(ipb.ListIntentionsRequest())
    assert [(i.source, i.destination) for i in listed.intentions] == [
        ("team-a/web", "orders"),
        ("*", "orders"),
        ("team-b/*", "team-b/*"),
        ("*", "team-b/*"),
    ]
    # `web` and `default/web` are one name: the same pair is replaced, not added.
    await create(stub, "team-a/web", "orders", DENY)
    assert not await check(stub, "team-a/web", "default/orders")
    assert len((await stub.ListIntentions(ipb.ListIntentionsRequest())).intentions) == 4
    await stub.DeleteIntention(
        ipb.DeleteIntentionRequest(source="team-a/web", destination="default/orders")
    )
    await stub.DeleteIntention(
        ipb.DeleteIntentionRequest(source="team-b/*", destination="team-b/*")
    )
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.DeleteIntention(
            ipb.DeleteIntentionRequest(source="team-b/*", destination="team-b/*")
        )
    assert missing.value.details() == "no intention team-b/* -> team-b/*"
    left = (await stub.ListIntentions(ipb.ListIntentionsRequest())).intentions
    assert [(i.source, i.destination) for i in left] == [("*", "orders"), ("*", "team-b/*")]


async def test_intentions_stored_before_namespaces_mean_the_default_namespace() -> None:
    store = MemoryStore()
    old = [
        ("web", "orders", ALLOW),
        ("*", "orders", DENY),
        ("web", "*", DENY),
    ]
    async with store:
        await store.txn(
            [],
            [
                PutOp(
                    f"/ecosystem/v1/intentions/{src}/{dst}",
                    ipb.Intention(source=src, destination=dst, action=action).SerializeToString(),
                )
                for src, dst, action in old
            ],
        )
        async with (
            ControlPlane(config(), store=store) as plane,
            grpc.aio.insecure_channel(plane.address) as channel,
        ):
            stub = intention_pb2_grpc.IntentionServiceStub(channel)
            assert await check(stub, "default/web", "default/orders")
            assert not await check(stub, "team-b/web", "orders")  # `*` is every namespace
            assert not await check(stub, "web", "team-b/billing")
            assert await check(stub, "team-b/web", "team-b/billing")
            listed = await stub.ListIntentions(ipb.ListIntentionsRequest())
            assert [(i.source, i.destination) for i in listed.intentions] == [
                ("web", "orders"),
                ("*", "orders"),
                ("web", "*"),
            ]
            # Writing an old pair moves it under its new key: still one intention.
            await create(stub, "default/web", "orders", DENY)
            assert not await check(stub, "web", "orders")
            assert len((await stub.ListIntentions(ipb.ListIntentionsRequest())).intentions) == 3
            keys = [kv.key for kv in (await store.range("/ecosystem/v1/intentions/")).kvs]
            assert "/ecosystem/v1/intentions/default/web/default/orders" in keys
            assert "/ecosystem/v1/intentions/web/orders" not in keys
            # Deleting an old one by either form removes it.
            await stub.DeleteIntention(
                ipb.DeleteIntentionRequest(source="*/*", destination="default/orders")
            )
            assert await check(stub, "team-b/web", "orders")
            assert len((await store.range("/ecosystem/v1/intentions/")).kvs) == 2


async def test_bad_input_is_refused(stub: intention_pb2_grpc.IntentionServiceStub) -> None:
    for intention, field in (
        (ipb.Intention(source="Web!", destination="orders", action=ALLOW), "intention.source"),
        (ipb.Intention(source="web", destination="", action=ALLOW), "intention.destination"),
        (ipb.Intention(source="*/web", destination="o", action=ALLOW), "intention.source"),
        (ipb.Intention(source="Team/web", destination="o", action=ALLOW), "intention.source"),
        (ipb.Intention(source="a", destination="b/c/d", action=ALLOW), "intention.destination"),
        (ipb.Intention(source="web", destination="orders"), "intention.action"),
        (
            ipb.Intention(source="web", destination="o", action=ALLOW, description="x" * 513),
            "intention.description",
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.CreateIntention(ipb.CreateIntentionRequest(intention=intention))
        assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert field in (bad.value.details() or "")
    assert not (await stub.ListIntentions(ipb.ListIntentionsRequest())).intentions


async def test_with_acl_deny_the_default_denies() -> None:
    async with ControlPlane(config(acl="deny")) as plane:
        assert plane.intentions is not None
        assert not plane.intentions.snapshot().default_allow


async def test_a_token_lists_the_intentions_of_destinations_it_may_read() -> None:
    from ecosystem.v1 import acl_pb2, acl_pb2_grpc

    async with (
        ControlPlane(config(acl="deny")) as plane,
        grpc.aio.insecure_channel(plane.address) as channel,
    ):
        acl = acl_pb2_grpc.AclServiceStub(channel)
        management = (await acl.Bootstrap(acl_pb2.BootstrapRequest())).secret

        def md(secret: str) -> tuple[tuple[str, str]]:
            return (("authorization", f"Bearer {secret}"),)

        async def token(name: str, *rules: str) -> str:
            policy = acl_pb2.AclPolicy(
                name=name,
                rules=[
                    acl_pb2.AclRule(
                        **dict(zip(("resource", "pattern", "access"), r.split(":"), strict=True))
                    )
                    for r in rules
                ],
            )
            await acl.CreatePolicy(
                acl_pb2.CreatePolicyRequest(policy=policy), metadata=md(management)
            )
            created = await acl.CreateToken(
                acl_pb2.CreateTokenRequest(policies=[name]), metadata=md(management)
            )
            return created.secret

        stub = intention_pb2_grpc.IntentionServiceStub(channel)
        for src, dst in (
            ("web", "orders"),
            ("*", "orders"),
            ("web", "*"),
            ("*", "*"),
            ("billing", "db"),
        ):
            await stub.CreateIntention(
                ipb.CreateIntentionRequest(
                    intention=ipb.Intention(source=src, destination=dst, action=ALLOW)
                ),
                metadata=md(management),
            )

        async def listed(secret: str) -> set[tuple[str, str]]:
            answer = await stub.ListIntentions(ipb.ListIntentionsRequest(), metadata=md(secret))
            return {(i.source, i.destination) for i in answer.intentions}

        orders = await token("orders-reader", "service:orders:read")
        assert await listed(orders) == {("web", "orders"), ("*", "orders")}
        # The source's read does not show it: an intention is its destination's policy.
        web = await token("web-writer", "service:web:write")
        assert await listed(web) == set()
        everything = await token("readers", "service:*:read", "service:db:deny")
        assert await listed(everything) == {
            ("web", "orders"),
            ("*", "orders"),
            ("web", "*"),
            ("*", "*"),
        }
        assert len(await listed(management)) == 5

        # Namespaces: the destination's namespace rules count, for writes and lists.
        team_b = await token("team-b", "namespace:team-b:write")

        async def write(secret: str, src: str, dst: str) -> grpc.StatusCode:
            try:
                await stub.CreateIntention(
                    ipb.CreateIntentionRequest(
                        intention=ipb.Intention(source=src, destination=dst, action=ALLOW)
                    ),
                    metadata=md(secret),
                )
            except grpc.aio.AioRpcError as error:
                return error.code()
            return grpc.StatusCode.OK

        assert await write(team_b, "*", "team-b/orders") is grpc.StatusCode.OK
        assert await write(team_b, "team-a/web", "team-b/*") is grpc.StatusCode.OK
        for dst in ("orders", "team-a/orders", "*"):
            assert await write(team_b, "*", dst) is grpc.StatusCode.PERMISSION_DENIED, dst
        assert await listed(team_b) == {("*", "team-b/orders"), ("team-a/web", "team-b/*")}
        # A service rule names a service in every namespace, as it does for the registry.
        assert ("*", "team-b/orders") in await listed(orders)
        assert ("team-a/web", "team-b/*") not in await listed(orders)
        denied = await write(orders, "*", "team-b/orders")
        assert denied is grpc.StatusCode.PERMISSION_DENIED  # read only


async def test_replicas_sharing_a_store_agree_within_a_second() -> None:
    store = MemoryStore()
    async with (
        store,
        ControlPlane(config(), store=store) as one,
        ControlPlane(config(), store=store) as two,
        grpc.aio.insecure_channel(one.address) as c1,
        grpc.aio.insecure_channel(two.address) as c2,
    ):
        first = intention_pb2_grpc.IntentionServiceStub(c1)
        second = intention_pb2_grpc.IntentionServiceStub(c2)
        await create(first, "web", "orders", DENY)
        assert not await check(second, "web", "orders")
        assert two.intentions is not None

        def followed() -> None:
            assert two.intentions is not None
            assert [i.source for i in two.intentions.intentions] == ["web"]

        await assert_eventually(followed, timeout=1.0)


async def test_a_sidecar_receives_every_change(
    plane: ControlPlane, stub: intention_pb2_grpc.IntentionServiceStub, tmp_path: Path
) -> None:
    sidecar_config = SidecarConfig.model_validate(
        {
            "node": {"id": "node-a"},
            "controlplane": {"addresses": [plane.address]},
            "data_dir": str(tmp_path / "node-a"),
            "local_api": "127.0.0.1:0",
            "services": [{"name": "orders", "address": "127.0.0.1", "port": 8080}],
        }
    )
    async with Sidecar(sidecar_config) as sidecar:
        table = sidecar.intentions

        def received() -> None:
            assert table.current is not None

        await assert_eventually(received, timeout=5)
        assert table.decide("web", "orders").allowed
        assert sidecar.status()["intentions"]["default"] == "allow"

        await create(stub, "web", "orders", DENY)

        def denied() -> None:
            decision = table.decide("web", "orders")
            assert not decision.allowed
            assert decision.reason == "intention default/web -> default/orders denies"

        await assert_eventually(denied, timeout=1.0)
        await stub.DeleteIntention(ipb.DeleteIntentionRequest(source="web", destination="orders"))
        await assert_eventually(lambda: table.decide("web", "orders").allowed, timeout=1.0)
