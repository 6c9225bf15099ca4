"""Workload identities with real processes: `eco controlplane --tls-ca auto`, its root
taken out of band with `eco ca root --store`, a real `eco sidecar` whose /status shows
its certificates being renewed, `eco ca root --server` and `eco ca rotate` against the
running control plane, and two replicas over one etcd sharing one CA."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import sdk
from tests.harness.controlplane import ECO, ControlPlaneProcess
from tests.harness.etcd import EtcdServer
from tests.harness.sidecar import SidecarProcess
from tests.util import assert_eventually

pytestmark = pytest.mark.e2e

TD = "ecosystem.local"


def run_eco(*args: str) -> subprocess.CompletedProcess[str]:
    environment = {
        k: v for k, v in os.environ.items() if k not in ("ECO_SERVER", "ECO_CA_FILE", "ECO_TOKEN")
    }
    return subprocess.run(
        [str(ECO), *args], capture_output=True, text=True, timeout=30, env=environment, check=False
    )


def start_auto_plane(tmp_path: Path, *extra: str) -> tuple[ControlPlaneProcess, Path]:
    """A control plane with --tls-ca auto on SQLite, and its root, taken out of band
    from the store between a first start (which creates the CA) and the second."""
    store = f"sqlite://{tmp_path / 'cp.db'}"
    plane = ControlPlaneProcess(
        store, tmp_path / "cp.log", ("--tls-ca", "auto", "--workload-cert-ttl", "3", *extra)
    )
    plane.start()
    plane.stop()
    root = run_eco("ca", "root", "--store", store)
    assert root.returncode == 0, root.stderr
    assert root.stdout.count("BEGIN CERTIFICATE") == 1
    path = tmp_path / "root.pem"
    path.write_text(root.stdout)
    plane.start()
    return plane, path


@pytest.fixture
def auto_plane(tmp_path: Path) -> Iterator[tuple[ControlPlaneProcess, Path]]:
    plane, root = start_auto_plane(tmp_path)
    try:
        yield plane, root
    finally:
        plane.stop()


def test_rotating_the_root_takes_an_operator_token_under_acl_deny(tmp_path: Path) -> None:
    plane, root = start_auto_plane(tmp_path, "--acl", "deny")
    try:
        tls = ("--ca-file", str(root))
        # The bundle is public; rotating it is not.
        assert run_eco(*tls, "ca", "root", "--server", plane.address).returncode == 0
        refused = run_eco(*tls, "ca", "rotate", "--server", plane.address)
        assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr, refused.stderr
        bootstrap = run_eco(*tls, "--server", plane.address, "-o", "json", "acl", "bootstrap")
        assert bootstrap.returncode == 0, bootstrap.stderr
        secret = json.loads(bootstrap.stdout)["secret"]
        rotated = run_eco(*tls, "--token", secret, "ca", "rotate", "--server", plane.address)
        assert rotated.returncode == 0, rotated.stderr
        assert "a new root is in the bundle (2 roots)" in rotated.stdout
    finally:
        plane.stop()


async def identity(sidecar: SidecarProcess) -> dict[str, Any]:
    return dict((await sidecar.status())["identity"])


async def test_a_sidecar_gets_and_renews_its_certificates_from_a_ca_kept_in_the_store(
    tmp_path: Path, auto_plane: tuple[ControlPlaneProcess, Path]
) -> None:
    plane, root = auto_plane
    # The CA outlived the restart: the root taken from the store is still the one.
    async with sdk.AsyncClient(plane.address, ca_file=root) as client:
        assert [s.name for s in (await client.list_services()).services] == []
    sidecar = SidecarProcess(
        tmp_path,
        "node-a",
        "services:\n  - {name: web, address: 127.0.0.1, port: 8080}\n",
        plane.address,
        ca_file=root,
    )
    await sidecar.start()
    try:

        async def issued() -> dict[str, dict[str, Any]]:
            status = await identity(sidecar)
            assert status["trust_domain"] == TD and status["roots"] == 1
            certificates = {c["identity"]: c for c in status["certificates"]}
            assert certificates["default/web"]["spiffe_id"] == f"spiffe://{TD}/ns/default/svc/web"
            assert certificates["node"]["spiffe_id"] == f"spiffe://{TD}/node/node-a"
            assert certificates["default/web"]["expires_at"]
            return certificates

        first = await assert_eventually(issued, timeout=10)
        connects = (await sidecar.status())["controlplane"]["connects"]

        async def renewed() -> None:
            status = await identity(sidecar)
            assert status["renewals"] >= 2, status
            web = {c["identity"]: c for c in status["certificates"]}["default/web"]
            assert web["expires_at"] != first["default/web"]["expires_at"]

        # 3 s certificates are renewed every 2 s, on the same session.
        await assert_eventually(renewed, timeout=10)
        assert (await sidecar.status())["controlplane"]["connects"] == connects
        assert "not issued" not in sidecar.log()
    finally:
        await sidecar.stop()


async def test_eco_ca_root_from_the_server_and_a_rotation_reaching_a_sidecar(
    tmp_path: Path, auto_plane: tuple[ControlPlaneProcess, Path]
) -> None:
    plane, root = auto_plane
    fetched = run_eco("--ca-file", str(root), "ca", "root", "--server", plane.address)
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout == root.read_text()
    # Without a root to check it against, a TLS control plane is not trusted.
    blind = run_eco("ca", "root", "--server", plane.address)
    assert blind.returncode == 1 and "UNAVAILABLE" in blind.stderr
    # The SQLite store is held by the running control plane.
    held = run_eco("ca", "root", "--store", plane.store_url)
    assert held.returncode == 1 and held.stderr.startswith("eco: --store "), held.stderr

    sidecar = SidecarProcess(
        tmp_path,
        "node-a",
        "services:\n  - {name: web, address: 127.0.0.1, port: 8080}\n",
        plane.address,
        ca_file=root,
    )
    await sidecar.start()
    try:

        async def issued() -> int:
            status = await identity(sidecar)
            assert all(c["spiffe_id"] for c in status["certificates"]), status
            return int(status["bundle_version"])

        version = await assert_eventually(issued, timeout=10)
        rotated = run_eco(
            "--ca-file", str(root), "-o", "json", "ca", "rotate", "--server", plane.address,
            "--propagation", "1",
        )  # fmt: skip
        assert rotated.returncode == 0, rotated.stderr
        answer = json.loads(rotated.stdout)
        assert answer["trust_domain"] == TD and answer["roots"] == 2
        assert answer["new_root_signs_from"] < answer["old_root_removed_at"]

        async def two_roots() -> None:
            status = await identity(sidecar)
            assert status["roots"] == 2 and status["bundle_version"] != version

        await assert_eventually(two_roots, timeout=5)
        # Both roots are now served to clients that trust the old one.
        bundle = run_eco("--ca-file", str(root), "ca", "root", "--server", plane.address)
        assert bundle.stdout.count("BEGIN CERTIFICATE") == 2
        assert "the CA's signing root changed" in await _eventually_logged(
            sidecar, "the CA's signing root changed"
        )
    finally:
        await sidecar.stop()


async def _eventually_logged(sidecar: SidecarProcess, text: str) -> str:
    def logged() -> str:
        log = sidecar.log()
        assert text in log
        return log

    return await assert_eventually(logged, timeout=10)


def test_two_replicas_over_one_etcd_share_one_ca(tmp_path: Path) -> None:
    etcd = EtcdServer().start()
    try:
        store = f"etcd://{etcd.endpoint}/eco"
        replicas = [
            ControlPlaneProcess(store, tmp_path / f"cp{i}.log", ("--tls-ca", "auto"))
            for i in range(2)
        ]
        # Started together: both try to create the CA, one wins, both use it.
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda replica: replica.start(), replicas))
        try:
            root = run_eco("ca", "root", "--store", store)
            assert root.returncode == 0, root.stderr
            assert root.stdout.count("BEGIN CERTIFICATE") == 1
            path = tmp_path / "root.pem"
            path.write_text(root.stdout)
            for replica in replicas:
                served = run_eco("--ca-file", str(path), "ca", "root", "--server", replica.address)
                assert served.returncode == 0, served.stderr
                assert served.stdout == root.stdout
        finally:
            for replica in replicas:
                replica.stop()
    finally:
        etcd.stop()
