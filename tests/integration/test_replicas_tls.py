"""Replicas serving TLS from one CA: their sidecars connect, and a replica asks the
others about their sidecars over TLS (``ListNodes`` through one covers all)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from controlplane import ControlPlane, ControlPlaneConfig, StartupError
from controlplane.ca import CertificateAuthority
from controlplane.store import MemoryStore
from sdk import AgentNode, AgentSession, AsyncClient, HealthStatus, Instance, ServiceRef
from tests.harness.certs import TestCA
from tests.util import assert_eventually


@pytest.fixture
def ca_files(tmp_path: Path) -> tuple[Path, Path]:
    return CertificateAuthority.create().save(tmp_path / "ca")


def tls_config(ca: tuple[Path, Path], **overrides: Any) -> ControlPlaneConfig:
    fields: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin_listen": None,
        "store_url": "memory://",
        "grace": 0.5,
        "drain_delay": 0,
        "rebalance_interval": 0.3,
        "rebalance_batch": 0,
        "tls_ca": str(ca[0]),
        "tls_ca_key": str(ca[1]),
    }
    return ControlPlaneConfig(**{**fields, **overrides})


@contextlib.asynccontextmanager
async def replica(store: MemoryStore, config: ControlPlaneConfig) -> AsyncIterator[ControlPlane]:
    plane = ControlPlane(config, store=store)
    await plane.start()
    try:
        yield plane
    finally:
        await plane.stop(grace=0)


def sidecar(node: str, server: str, ca_file: Path) -> AgentSession:
    local = Instance(
        id=f"{node}-web", service="web", address="127.0.0.1", port=8080, health=HealthStatus.PASSING
    )
    return AgentSession(
        [server],
        AgentNode(id=node),
        instances=lambda: [local],
        on_update=lambda _update: None,
        subscriptions=[ServiceRef("orders")],
        ca_file=ca_file,
        initial_backoff=0.05,
        max_backoff=0.5,
    )


async def test_replicas_ask_each_other_over_tls(ca_files: tuple[Path, Path]) -> None:
    ca = ca_files[0]
    async with (
        MemoryStore() as store,
        replica(store, tls_config(ca_files)) as a,
        replica(store, tls_config(ca_files)) as b,
        sidecar("on-a", a.address, ca) as on_a,
        sidecar("on-b", b.address, ca) as on_b,
        AsyncClient(a.address, ca_file=ca) as client,
    ):
        assert a.spreader is not None

        async def both_listed() -> None:
            assert on_a.connected and on_b.connected
            assert list(a.spreader.peers) == [b.replica]  # type: ignore[union-attr]
            listed = {n.id: n.replica for n in await client.list_nodes()}
            assert listed == {"on-a": a.replica, "on-b": b.replica}

        await assert_eventually(both_listed, timeout=10)
        registered = await client.register("orders", "10.0.0.1", 80, id="o1")
        # Only b knows whether on-b applied it: a asked b, over TLS.
        wait = await client.wait_for_revision(registered.mod_revision, timeout=5)
        assert (wait.affected, wait.applied) == (2, True)


async def test_a_key_that_is_not_the_certificates_stops_the_start(tmp_path: Path) -> None:
    test_ca = TestCA.create(tmp_path)
    cert, _key = test_ca.issue_server("cp")
    _other_cert, other_key = test_ca.issue_server("other")
    config = ControlPlaneConfig(
        store_url="memory://", listen="127.0.0.1:0", tls_cert=str(cert), tls_key=str(other_key)
    )
    with pytest.raises(StartupError, match="the TLS key does not match the certificate"):
        async with ControlPlane(config):
            raise AssertionError("it started")


async def test_a_missing_certificate_file_stops_the_start(tmp_path: Path) -> None:
    config = ControlPlaneConfig(
        store_url="memory://",
        listen="127.0.0.1:0",
        tls_cert=str(tmp_path / "nope.pem"),
        tls_key=str(tmp_path / "nope-key.pem"),
    )
    with pytest.raises(StartupError, match=r"--tls-cert .*nope\.pem: No such file"):
        async with ControlPlane(config):
            raise AssertionError("it started")
