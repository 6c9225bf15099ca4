"""The SDK against a real in-process control plane: registry calls and their errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import controlplane.testing
import sdk
from tests.harness.ports import free_port


@pytest.fixture
async def cp() -> AsyncIterator[controlplane.testing.TestControlPlane]:
    async with controlplane.testing.control_plane() as running:
        yield running


def dead_address() -> str:
    """An address nothing listens on."""
    return f"127.0.0.1:{free_port()}"


async def test_register_get_list_deregister(cp: controlplane.testing.TestControlPlane) -> None:
    async with cp.client() as client:
        web1 = await client.register(
            "web", "127.0.0.1", 8080, id="web-1", zone="z1", tags=("v1",), metadata={"a": "b"}
        )
        await client.register("web", "127.0.0.1", 8081, id="web-2", zone="z2")
        await client.register("api", "127.0.0.1", 9090, id="api-1")
        assert web1.liveness is sdk.Liveness.PERSISTENT
        assert web1.mod_revision > 0 and web1.metadata == {"a": "b"}

        detail = await client.get_service("web")
        assert detail.service.name == "web" and detail.service.instance_count == 2
        assert sorted(i.id for i in detail.instances) == ["web-1", "web-2"]
        assert all(isinstance(i.health, sdk.HealthStatus) for i in detail.instances)
        assert detail.revision >= web1.mod_revision

        services = await client.list_services()
        assert sorted(s.name for s in services) == ["api", "web"]

        in_z1 = await client.list_instances(service="web", zone="z1")
        assert [i.id for i in in_z1] == ["web-1"]
        tagged = await client.list_instances(tags=["v1"])
        assert [i.id for i in tagged] == ["web-1"]

        removed = await client.deregister("web", "web-1")
        assert removed.deleted and removed.revision > detail.revision
        assert [i.id for i in (await client.get_service("web")).instances] == ["web-2"]


async def test_registration_is_idempotent_by_id(cp: controlplane.testing.TestControlPlane) -> None:
    async with cp.client() as client:
        first = await client.register("web", "127.0.0.1", 8080, id="web-1")
        again = await client.register("web", "127.0.0.1", 8080, id="web-1", weight=5)
        assert again.create_revision == first.create_revision
        assert again.weight == 5
        assert len((await client.get_service("web")).instances) == 1


async def test_invalid_input_names_every_bad_field(
    cp: controlplane.testing.TestControlPlane,
) -> None:
    async with cp.client() as client:
        with pytest.raises(sdk.InvalidArgumentError) as caught:
            await client.register("Not_A_Name", "not an address", 70000, id="x")
        fields = {v.field for v in caught.value.field_violations}
        assert {"instance.service", "instance.address", "instance.port"} <= fields
        assert (await client.list_services()).services == ()


async def test_not_found_and_conflicts(cp: controlplane.testing.TestControlPlane) -> None:
    async with cp.client() as client:
        with pytest.raises(sdk.NotFoundError):
            await client.get_service("missing")
        first = await client.register("web", "127.0.0.1", 8080, id="web-1", expected_revision=0)
        with pytest.raises(sdk.AlreadyExistsError):
            await client.register("web", "127.0.0.1", 8080, id="web-1", expected_revision=0)
        with pytest.raises(sdk.RevisionMismatchError):
            await client.register(
                "web", "127.0.0.1", 8080, id="web-1", expected_revision=first.mod_revision + 10
            )
        updated = await client.register(
            "web", "127.0.0.1", 8081, id="web-1", expected_revision=first.mod_revision
        )
        assert updated.port == 8081
        with pytest.raises(sdk.RevisionMismatchError):
            await client.deregister("web", "web-1", expected_revision=first.mod_revision)
        removed = await client.deregister("web", "web-1", expected_revision=updated.mod_revision)
        assert removed.deleted


async def test_deregister_again_succeeds(cp: controlplane.testing.TestControlPlane) -> None:
    async with cp.client() as client:
        await client.register("web", "127.0.0.1", 8080, id="web-1")
        first = await client.deregister("web", "web-1")
        again = await client.deregister("web", "web-1")
        assert first.deleted and not again.deleted
        assert again.revision >= first.revision
        assert not (await client.deregister("web", "never-registered")).deleted


class _LoseFirstAnswer(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Lets the first call of ``method`` reach the control plane and be
    applied, then loses its answer, as a connection cut at that moment would:
    the caller sees UNAVAILABLE."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.lost: list[object] = []

    async def intercept_unary_unary(
        self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        call = await continuation(details, request)
        name = details.method.decode() if isinstance(details.method, bytes) else details.method
        if name.endswith("/" + self.method) and not self.lost:
            self.lost.append(await call)  # the control plane applied it and answered
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                details="connection reset after the request was sent (test)",
            )
        return call


async def test_a_deregister_whose_answer_was_lost_succeeds_on_retry(
    cp: controlplane.testing.TestControlPlane,
) -> None:
    """The SDK retries a deregister on UNAVAILABLE; the retry finds the
    instance already gone, and the caller sees success, not NOT_FOUND."""
    loser = _LoseFirstAnswer("DeregisterInstance")

    def channel(address: str) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(address, interceptors=[loser])

    async with sdk.AsyncClient(cp.address, channel_factory=channel) as client:
        await client.register("web", "127.0.0.1", 8080, id="web-1")
        done = await client.deregister("web", "web-1")
        assert len(loser.lost) == 1, "the first answer was not lost"
        assert not done.deleted  # the retry's view: the first attempt removed it
        with pytest.raises(sdk.NotFoundError):
            await client.get_service("web")


async def test_fails_over_past_a_dead_address(cp: controlplane.testing.TestControlPlane) -> None:
    async with sdk.AsyncClient([dead_address(), cp.address], timeout=5.0) as client:
        await client.register("web", "127.0.0.1", 8080, id="web-1")
        assert [i.id for i in (await client.get_service("web")).instances] == ["web-1"]
        events = client.watch("web")
        assert (await anext(events)).type is sdk.WatchEventType.RESYNC
        await events.aclose()


async def test_nothing_reachable_is_unavailable_within_the_timeout() -> None:
    async with sdk.AsyncClient([dead_address(), dead_address()], timeout=2.0) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises((sdk.UnavailableError, sdk.DeadlineExceededError)):
            await client.list_services()
        assert loop.time() - started < 10.0  # the 2 s timeout, not a hang


async def test_the_sync_client_works_from_a_thread(
    cp: controlplane.testing.TestControlPlane,
) -> None:
    def script() -> list[str]:
        with sdk.Client(cp.address) as client:
            client.register("web", "127.0.0.1", 8080, id="web-1")
            with client.watch("web") as events:
                kinds = [next(events).type for _ in range(3)]
            assert [i.id for i in client.list_instances(service="web")] == ["web-1"]
            client.deregister("web", "web-1")
            return [k.value for k in kinds]

    # The control plane runs on this loop, so the blocking client gets a thread.
    assert await asyncio.to_thread(script) == ["RESYNC", "PUT", "SNAPSHOT_END"]
