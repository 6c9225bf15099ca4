"""Gateway routes in a real control plane: RouteService (apply in one
transaction, prune within a group, list, get, delete, bad input refused
field by field and leaving nothing written), WatchRoutes (a snapshot, then
each change, resumed from a revision; two replicas on one store), and the
ACL rights each call needs under ``--acl deny``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from ecosystem.v1 import gateway_pb2 as gpb
from ecosystem.v1 import gateway_pb2_grpc
from ecosystem.v1 import registry_pb2 as pb
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from controlplane import ControlPlane
from controlplane.store import MemoryStore
from controlplane.testing import test_config
from tests.harness.acl import acl_plane, bearer
from tests.util import assert_eventually

PUT, DELETE = pb.WATCH_EVENT_TYPE_PUT, pb.WATCH_EVENT_TYPE_DELETE
RESYNC, END = pb.WATCH_EVENT_TYPE_RESYNC, pb.WATCH_EVENT_TYPE_SNAPSHOT_END
PROGRESS = pb.WATCH_EVENT_TYPE_PROGRESS


def route(route_name: str, upstream: str = "orders", **spec: Any) -> gpb.Route:
    body = struct_pb2.Struct()
    body.update({"match": {"path_prefix": f"/{route_name}"}, "upstream": upstream, **spec})
    return gpb.Route(name=route_name, spec=body)


def violations(err: grpc.aio.AioRpcError) -> dict[str, str]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, f"no google.rpc.BadRequest details: {err.details()}"
    found: dict[str, str] = {}
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            found.update({v.field: v.description for v in bad.field_violations})
    return found


async def until(condition: Any) -> None:
    def check() -> None:
        assert condition()

    await assert_eventually(check)


@pytest.fixture
async def plane() -> AsyncIterator[ControlPlane]:
    async with ControlPlane(test_config()) as cp:
        yield cp


@pytest.fixture
async def stub(plane: ControlPlane) -> AsyncIterator[gateway_pb2_grpc.RouteServiceStub]:
    async with grpc.aio.insecure_channel(plane.address) as channel:
        yield gateway_pb2_grpc.RouteServiceStub(channel)


async def names(stub: gateway_pb2_grpc.RouteServiceStub) -> list[str]:
    return [r.name for r in (await stub.ListRoutes(gpb.ListRoutesRequest())).routes]


async def test_apply_list_get_delete(stub: gateway_pb2_grpc.RouteServiceStub) -> None:
    applied = await stub.ApplyRoutes(
        gpb.ApplyRoutesRequest(routes=[route("orders"), route("users", "users")])
    )
    assert list(applied.created) == ["orders", "users"]
    assert applied.revision > 0
    assert await names(stub) == ["orders", "users"]
    got = (await stub.GetRoute(gpb.GetRouteRequest(name="users"))).route
    assert got.spec["upstream"] == "users"
    assert got.spec["name"] == "users"  # stored as a complete route mapping
    assert got.spec["match"]["path_prefix"] == "/users"
    assert got.revision == applied.revision

    # The same file again changes nothing: no new revision, nothing for gateways to do.
    again = await stub.ApplyRoutes(
        gpb.ApplyRoutesRequest(routes=[route("orders"), route("users", "users")])
    )
    assert list(again.unchanged) == ["orders", "users"]
    assert not again.created and not again.updated
    assert again.revision == applied.revision

    changed = await stub.ApplyRoutes(
        gpb.ApplyRoutesRequest(routes=[route("users", "users-v2"), route("orders")])
    )
    assert (list(changed.updated), list(changed.unchanged)) == (["users"], ["orders"])
    got = (await stub.GetRoute(gpb.GetRouteRequest(name="users"))).route
    assert (got.spec["upstream"], got.revision) == ("users-v2", changed.revision)

    deleted = await stub.DeleteRoute(gpb.DeleteRouteRequest(name="users"))
    assert deleted.revision > changed.revision
    assert await names(stub) == ["orders"]
    for call in (
        stub.DeleteRoute(gpb.DeleteRouteRequest(name="users")),
        stub.GetRoute(gpb.GetRouteRequest(name="users")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() is grpc.StatusCode.NOT_FOUND
        assert "no route 'users'" in (err.value.details() or "")


async def test_prune_deletes_the_routes_of_its_group_that_it_does_not_name(
    stub: gateway_pb2_grpc.RouteServiceStub,
) -> None:
    await stub.ApplyRoutes(
        gpb.ApplyRoutesRequest(routes=[route("a1"), route("a2"), route("a3")], group="team-a")
    )
    await stub.ApplyRoutes(gpb.ApplyRoutesRequest(routes=[route("b1")], group="team-b"))
    await stub.ApplyRoutes(gpb.ApplyRoutesRequest(routes=[route("loose")]))
    # Without prune, a route left out of the request stays.
    answer = await stub.ApplyRoutes(gpb.ApplyRoutesRequest(routes=[route("a1")], group="team-a"))
    assert not answer.deleted
    answer = await stub.ApplyRoutes(
        gpb.ApplyRoutesRequest(routes=[route("a1"), route("a4")], group="team-a", prune=True)
    )
    assert (list(answer.created), list(answer.deleted)) == (["a4"], ["a2", "a3"])
    assert await names(stub) == ["a1", "a4", "b1", "loose"]
    assert (await stub.GetRoute(gpb.GetRouteRequest(name="a4"))).route.group == "team-a"
    # Applying a route under another group moves it there.
    await stub.ApplyRoutes(gpb.ApplyRoutesRequest(routes=[route("a4")], group="team-b"))
    answer = await stub.ApplyRoutes(gpb.ApplyRoutesRequest(group="team-a", prune=True))
    assert list(answer.deleted) == ["a1"]
    assert await names(stub) == ["a4", "b1", "loose"]


async def test_bad_routes_are_refused_field_by_field_and_nothing_is_written(
    stub: gateway_pb2_grpc.RouteServiceStub,
) -> None:
    await stub.ApplyRoutes(gpb.ApplyRoutesRequest(routes=[route("keep")], group="g"))
    before = await stub.ListRoutes(gpb.ListRoutesRequest())
    big = route("big")
    big.spec.update({"plugins": {"request_transform": {"set_headers": {"x": "y" * 70_000}}}})
    request = gpb.ApplyRoutesRequest(
        group="g",
        prune=True,  # would delete "keep": it must not, since nothing is applied
        routes=[
            route("fine"),
            route("has space"),
            route("typo", upstrem="orders"),
            route("fine"),
            big,
            route("other", name="not-other"),
            gpb.Route(name="nospec"),
        ],
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ApplyRoutes(request)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    found = violations(err.value)
    assert "is not a valid name" in found["routes[1].name"]
    assert (
        "is not a route key; known keys: endpoints, match, name" in found["routes[2].spec.upstrem"]
    )
    assert found["routes[3].name"] == "'fine' is also routes[0]"
    assert "at most 65536" in found["routes[4].spec"]
    assert found["routes[5].spec.name"] == "must equal the route's name (or be left out)"
    assert "is required" in found["routes[6].spec"]
    assert "routes[0].name" not in found
    after = await stub.ListRoutes(gpb.ListRoutesRequest())
    assert after == before
    for call in (
        stub.GetRoute(gpb.GetRouteRequest(name="a/b")),
        stub.DeleteRoute(gpb.DeleteRouteRequest(name="x" * 129)),
        stub.ApplyRoutes(gpb.ApplyRoutesRequest()),
        stub.ApplyRoutes(gpb.ApplyRoutesRequest(routes=[route("ok")], group="bad group")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert await stub.ListRoutes(gpb.ListRoutesRequest()) == before


class Follower:
    """Reads a WatchRoutes stream in the background: the events and the routes they add up to."""

    def __init__(self, stub: gateway_pb2_grpc.RouteServiceStub, **request: Any) -> None:
        self.call = stub.WatchRoutes(gpb.WatchRoutesRequest(**request))
        self.events: list[gpb.RouteEvent] = []
        self.routes: dict[str, str] = {}  # name -> upstream
        self.store_id = ""
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for response in self.call:
            self.store_id = response.store_id
            for event in response.events:
                self.events.append(event)
                if event.type == RESYNC:
                    self.routes.clear()
                elif event.type == PUT:
                    self.routes[event.route.name] = event.route.spec["upstream"]
                elif event.type == DELETE:
                    self.routes.pop(event.route.name, None)

    def kinds(self) -> list[tuple[int, str]]:
        return [(e.type, e.route.name) for e in self.events if e.type != PROGRESS]

    @property
    def revision(self) -> int:
        return max(e.revision for e in self.events)

    async def close(self) -> None:
        self.call.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def test_watch_sends_a_snapshot_then_each_change_and_resumes_from_a_revision(
    stub: gateway_pb2_grpc.RouteServiceStub,
) -> None:
    await stub.ApplyRoutes(gpb.ApplyRoutesRequest(routes=[route("b"), route("a")]))
    first = Follower(stub)
    try:
        await until(lambda: first.kinds()[-1:] == [(END, "")])
        assert first.kinds() == [(RESYNC, ""), (PUT, "a"), (PUT, "b"), (END, "")]
        assert first.store_id
        snapshot_at = first.revision

        await stub.ApplyRoutes(gpb.ApplyRoutesRequest(routes=[route("a", "a-v2"), route("c")]))
        await stub.DeleteRoute(gpb.DeleteRouteRequest(name="b"))
        await until(lambda: first.routes == {"a": "a-v2", "c": "orders"})
        changes = [e for e in first.events[4:] if e.type != PROGRESS]
        assert [(e.type, e.route.name) for e in changes] == [(PUT, "a"), (PUT, "c"), (DELETE, "b")]
        # One apply is one revision; the deletion has the next one.
        assert changes[0].revision == changes[1].revision < changes[2].revision
        assert changes[2].route.group == "" and not changes[2].route.HasField("spec")
    finally:
        await first.close()

    # Resumed from the snapshot's revision: the changes after it, no snapshot.
    resumed = Follower(stub, since_revision=snapshot_at, store_id=first.store_id)
    try:
        await until(lambda: len(resumed.kinds()) == 3)
        assert resumed.kinds() == [(PUT, "a"), (PUT, "c"), (DELETE, "b")]
    finally:
        await resumed.close()
    # From another store's history (or revision 0): a snapshot.
    other = Follower(stub, since_revision=snapshot_at, store_id="another-store")
    try:
        await until(lambda: other.kinds()[-1:] == [(END, "")])
        assert other.kinds() == [(RESYNC, ""), (PUT, "a"), (PUT, "c"), (END, "")]
    finally:
        await other.close()
    # While idle, PROGRESS at the latest revision.
    idle = Follower(stub, progress_interval_ms=100)
    try:
        await until(lambda: idle.events and idle.events[-1].type == PROGRESS)
    finally:
        await idle.close()


async def test_every_replica_on_one_store_sends_a_change_to_its_watchers() -> None:
    async with (
        MemoryStore() as store,
        ControlPlane(test_config(), store=store) as one,
        ControlPlane(test_config(), store=store) as two,
        grpc.aio.insecure_channel(one.address) as to_one,
        grpc.aio.insecure_channel(two.address) as to_two,
    ):
        watchers = [
            Follower(gateway_pb2_grpc.RouteServiceStub(to_one)),
            Follower(gateway_pb2_grpc.RouteServiceStub(to_two)),
        ]
        try:
            await gateway_pb2_grpc.RouteServiceStub(to_one).ApplyRoutes(
                gpb.ApplyRoutesRequest(routes=[route("orders")])
            )
            for watcher in watchers:
                await until(lambda w=watcher: w.routes == {"orders": "orders"})
        finally:
            for watcher in watchers:
                await watcher.close()


async def test_acl_rights_of_each_route_call(tmp_path: Path) -> None:
    async with acl_plane(tmp_path) as acl:
        stub = gateway_pb2_grpc.RouteServiceStub(acl.channel)
        admin = bearer(acl.management)
        await stub.ApplyRoutes(
            gpb.ApplyRoutesRequest(
                routes=[route("public-a"), route("public-b"), route("internal")], group="g"
            ),
            metadata=admin,
        )
        public = bearer(await acl.token("route:public-*:write"))

        async def refused(call: Any) -> str:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
            return err.value.details() or ""

        assert "the token lacks route:internal:write" in await refused(
            stub.ApplyRoutes(
                gpb.ApplyRoutesRequest(routes=[route("public-a"), route("internal")]),
                metadata=public,
            )
        )
        # A prune that would delete "internal" needs write on it too.
        assert "the token lacks route:internal:write" in await refused(
            stub.ApplyRoutes(
                gpb.ApplyRoutesRequest(routes=[route("public-a")], group="g", prune=True),
                metadata=public,
            )
        )
        assert "the token lacks route:internal:write" in await refused(
            stub.DeleteRoute(gpb.DeleteRouteRequest(name="internal"), metadata=public)
        )
        assert [
            r.name for r in (await stub.ListRoutes(gpb.ListRoutesRequest(), metadata=admin)).routes
        ] == [
            "internal",
            "public-a",
            "public-b",
        ]
        answer = await stub.ApplyRoutes(
            gpb.ApplyRoutesRequest(routes=[route("public-a", "v2")], group="g"), metadata=public
        )
        assert list(answer.updated) == ["public-a"]

        # Lists and the watch show what the token may read, and nothing else.
        reader = bearer(await acl.token("route:public-*:read"))
        listed = await stub.ListRoutes(gpb.ListRoutesRequest(), metadata=reader)
        assert [r.name for r in listed.routes] == ["public-a", "public-b"]
        assert "the token lacks route:internal:read" in await refused(
            stub.GetRoute(gpb.GetRouteRequest(name="internal"), metadata=reader)
        )
        call = stub.WatchRoutes(gpb.WatchRoutesRequest(), metadata=reader)
        seen: list[str] = []
        async for response in call:
            seen += [e.route.name for e in response.events if e.type == PUT]
            if response.events[-1].type == END:
                break
        assert seen == ["public-a", "public-b"]
        await stub.ApplyRoutes(
            gpb.ApplyRoutesRequest(routes=[route("internal", "secret")], group="g"), metadata=admin
        )
        await stub.ApplyRoutes(
            gpb.ApplyRoutesRequest(routes=[route("public-b", "v3")], group="g"), metadata=admin
        )
        changes: list[gpb.RouteEvent] = []
        async for response in call:
            changes += [e for e in response.events if e.type != PROGRESS]
            if changes:
                break
        assert [(e.type, e.route.name, e.route.spec["upstream"]) for e in changes] == [
            (PUT, "public-b", "v3")
        ]
        call.cancel()


async def test_route_watches_are_capped_by_max_watch_streams() -> None:
    async with (
        ControlPlane(test_config(max_watch_streams=1)) as cp,
        grpc.aio.insecure_channel(cp.address) as channel,
    ):
        stub = gateway_pb2_grpc.RouteServiceStub(channel)
        first = stub.WatchRoutes(gpb.WatchRoutesRequest())
        await first.read()  # open, and counted
        second = stub.WatchRoutes(gpb.WatchRoutesRequest())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await second.read()
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "route watches" in (err.value.details() or "")
        first.cancel()

        async def reopened() -> None:
            third = stub.WatchRoutes(gpb.WatchRoutesRequest())
            try:
                await third.read()
            except grpc.aio.AioRpcError as exc:
                raise AssertionError(exc.details()) from None
            finally:
                third.cancel()

        await assert_eventually(reopened)  # the cancelled one no longer counts
