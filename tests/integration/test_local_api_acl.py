"""The sidecar's local API off loopback: TLS, and the token of every call checked
against a real control plane with ``--acl deny`` (through AclService/ResolveToken)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from ecosystem.v1 import messaging_pb2, messaging_pb2_grpc, sidecar_pb2, sidecar_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.app import Sidecar
from sidecar.config import SidecarConfig
from tests.harness.acl import AclPlane, acl_plane, bearer
from tests.harness.certs import TestCA
from tests.util import assert_eventually


def config(tmp_path: Path, plane: AclPlane, secret: str, **fields: Any) -> SidecarConfig:
    return SidecarConfig.model_validate(
        {
            "node": {"id": "edge-1"},
            "controlplane": {"addresses": [plane.plane.address], "token": secret},
            "data_dir": str(tmp_path / "sidecar"),
            "local_api": "0.0.0.0:0",
            "admin": "127.0.0.1:0",
            "upstreams": [{"service": "orders"}],
            **fields,
        }
    )


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[AclPlane]:
    async with acl_plane(tmp_path) as plane:
        yield plane


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA.create(tmp_path / "ca")


async def sidecar_token(plane: AclPlane) -> str:
    # The relay publishes to the control plane as the sidecar: its token needs
    # the bus rights of what its applications publish, as theirs do here.
    return await plane.token("node:edge-1:write", "service:orders:read", "bus:orders.*:write")


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


async def test_the_local_api_off_loopback_serves_tls_and_checks_every_token(
    tmp_path: Path, plane: AclPlane, ca: TestCA, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cert, key = ca.issue_server("sidecar")
    tls = {"cert_file": str(cert), "key_file": str(key)}
    async with Sidecar(config(tmp_path, plane, await sidecar_token(plane), tls=tls)) as sidecar:
        target = f"localhost:{port_of(sidecar.local_api_address)}"
        creds = grpc.ssl_channel_credentials(ca.cert_file.read_bytes())
        reader = await plane.token("service:orders:read")
        publisher = await plane.token("bus:orders.*:publish")
        async with grpc.aio.secure_channel(target, creds) as channel:
            api = sidecar_pb2_grpc.SidecarServiceStub(channel)
            resolve = sidecar_pb2.ResolveEndpointsRequest(service="orders")
            for metadata, code, words in (
                (None, grpc.StatusCode.UNAUTHENTICATED, "this listener requires a token"),
                (bearer("nope"), grpc.StatusCode.UNAUTHENTICATED, "not valid"),
                (bearer(publisher), grpc.StatusCode.PERMISSION_DENIED, "service:orders:read"),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await api.ResolveEndpoints(resolve, metadata=metadata)
                assert err.value.code() is code, err.value.details()
                assert words in (err.value.details() or "")
            # The right token gets past the check (no endpoints yet is the answer).
            answer = await api.ResolveEndpoints(resolve, metadata=bearer(reader))
            assert list(answer.endpoints) == []

            bus = messaging_pb2_grpc.MessagingServiceStub(channel)
            publish = messaging_pb2.PublishRequest(subject="orders.created", data=b"{}")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await bus.Publish(publish, metadata=bearer(reader))
            assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert "bus:orders.created:publish" in (err.value.details() or "")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await bus.Publish(
                    messaging_pb2.PublishRequest(subject="eco.events.default.web"),
                    metadata=bearer(publisher),
                )
            assert "only the control plane publishes" in (err.value.details() or "")
            await bus.Publish(publish, metadata=bearer(publisher))

            # Health stays open, for probes.
            health = health_pb2_grpc.HealthStub(channel)
            checked = await health.Check(health_pb2.HealthCheckRequest())
            assert checked.status == health_pb2.HealthCheckResponse.SERVING

            # A deleted token is refused within about a second.
            await plane.delete_token(reader)

            async def refused() -> None:
                try:
                    await api.ResolveEndpoints(resolve, metadata=bearer(reader))
                except grpc.aio.AioRpcError as err:
                    assert err.code() is grpc.StatusCode.UNAUTHENTICATED
                else:
                    raise AssertionError("the deleted token is still accepted")

            await assert_eventually(refused, timeout=3)

        # Plaintext to the TLS listener gets nowhere.
        async with grpc.aio.insecure_channel(target) as plain:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await sidecar_pb2_grpc.SidecarServiceStub(plain).ResolveEndpoints(
                    resolve, metadata=bearer(publisher), timeout=2
                )
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    for secret in (reader, publisher):
        assert secret not in caplog.text


async def test_insecure_serves_plaintext_off_loopback_and_still_checks_tokens(
    tmp_path: Path, plane: AclPlane
) -> None:
    fields = {"insecure": True}
    async with Sidecar(config(tmp_path, plane, await sidecar_token(plane), **fields)) as sidecar:
        target = f"127.0.0.1:{port_of(sidecar.local_api_address)}"
        async with grpc.aio.insecure_channel(target) as channel:
            api = sidecar_pb2_grpc.SidecarServiceStub(channel)
            resolve = sidecar_pb2.ResolveEndpointsRequest(service="orders")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await api.ResolveEndpoints(resolve)
            assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
            reader = await plane.token("service:orders:read")
            await api.ResolveEndpoints(resolve, metadata=bearer(reader))


async def test_the_last_answer_stands_while_the_control_plane_is_away(
    tmp_path: Path, plane: AclPlane
) -> None:
    settings = config(tmp_path, plane, await sidecar_token(plane), insecure=True)
    async with Sidecar(settings) as sidecar:
        target = f"127.0.0.1:{port_of(sidecar.local_api_address)}"
        reader = await plane.token("service:orders:read")
        stranger = await plane.token("service:orders:read")
        async with grpc.aio.insecure_channel(target) as channel:
            api = sidecar_pb2_grpc.SidecarServiceStub(channel)
            resolve = sidecar_pb2.ResolveEndpointsRequest(service="orders")
            await api.ResolveEndpoints(resolve, metadata=bearer(reader))
            await plane.plane.stop()
            # A token resolved before keeps working; one never seen is UNAVAILABLE.
            await api.ResolveEndpoints(resolve, metadata=bearer(reader))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await api.ResolveEndpoints(resolve, metadata=bearer(stranger))
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "control plane is unreachable" in (err.value.details() or "")


async def test_a_listener_off_loopback_needs_tls_or_insecure(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"local_api listens on 0\.0\.0\.0:7410, off loopback"):
        SidecarConfig.model_validate({"local_api": "0.0.0.0:7410", "data_dir": str(tmp_path)})
