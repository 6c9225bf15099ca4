"""A proxyless gRPC client under ``--acl deny``: its token goes in the
bootstrap's call credentials (``eco xds bootstrap --token-file``), over TLS.

The client is grpcio's own xDS resolver in a subprocess; nothing of the SDK.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
from pathlib import Path

import grpc
import grpc.aio
import pytest
from ecosystem.v1 import registry_pb2 as pb
from ecosystem.v1 import registry_pb2_grpc as pb_grpc

from tests.harness.acl import acl_plane
from tests.harness.certs import TestCA
from tests.harness.controlplane import ECO
from tests.integration.test_xds import (
    Backend,
    backends,  # noqa: F401  # the fixture
    instance,
    xds_client,
)
from tests.util import assert_eventually

pytestmark = pytest.mark.timeout(120)

#: gRPC releases that gate call credentials in the bootstrap file.
_CALL_CREDS = "GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS"


def _bootstrap(
    tmp_path: Path, server: str, node: str, ca: Path, token: str | None, *more: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ECO_TOKEN"}
    if token is not None:
        env["ECO_TOKEN"] = token
    command = [str(ECO), "--ca-file", str(ca), "xds", "bootstrap", "--node", node]
    command += ["--server", server, "--out", str(tmp_path / f"{node}.json"), *more]
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False)


async def test_a_client_with_a_token_file_gets_endpoints_and_one_without_is_refused(
    backends: list[Backend],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(_CALL_CREDS, "true")  # passed on to the client processes
    test_ca = TestCA.create(tmp_path)
    cert, key = test_ca.issue_server("cp")
    async with acl_plane(
        tmp_path, root_ca=test_ca.cert_file, tls_cert=str(cert), tls_key=str(key)
    ) as acl:
        a, b, _ = backends
        writer = await acl.token("service:orders:write")
        await register_with(acl.plane.address, test_ca.cert_file, writer, a, b)
        reader = await acl.token("service:*:read")
        token_file = tmp_path / "xds-token.jwt"
        made = _bootstrap(
            tmp_path, acl.plane.address, "with-token", test_ca.cert_file, reader,
            "--token-file", str(token_file),
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert reader not in (tmp_path / "with-token.json").read_text()
        async with xds_client(
            tmp_path / "with-token.json", "xds:///orders", tmp_path / "with.log"
        ) as client:
            await client.replies_from({"a", "b"}, timeout=30)

        # The same client without the token: the control plane refuses its
        # xDS stream, so it never gets the service.
        made = _bootstrap(tmp_path, acl.plane.address, "no-token", test_ca.cert_file, None)
        assert made.returncode == 0, made.stderr
        async with xds_client(
            tmp_path / "no-token.json", "xds:///orders", tmp_path / "without.log"
        ) as client:

            async def refused() -> None:
                assert client.lines, "no call made yet"
                assert all("ok" not in line for line in client.lines), client.lines[:3]
                details = client.lines[-1].get("details", "")
                assert "UNAUTHENTICATED" in details, client.lines[-1]

            await assert_eventually(refused, timeout=20)


async def register_with(address: str, ca: Path, secret: str, *servers: Backend) -> None:
    credentials = grpc.ssl_channel_credentials(await asyncio.to_thread(ca.read_bytes))
    async with grpc.aio.secure_channel(address, credentials) as channel:
        stub = pb_grpc.RegistryServiceStub(channel)
        for backend in servers:
            await stub.RegisterInstance(
                pb.RegisterInstanceRequest(instance=instance(backend)),
                metadata=(("authorization", f"Bearer {secret}"),),
                timeout=5,
            )


def test_token_file_errors_name_the_option(tmp_path: Path) -> None:
    test_ca = TestCA.create(tmp_path)
    no_token = _bootstrap(
        tmp_path, "127.0.0.1:1", "n1", test_ca.cert_file, None,
        "--token-file", str(tmp_path / "t.jwt"),
    )  # fmt: skip
    assert no_token.returncode == 2
    assert "--token-file" in no_token.stderr and "ECO_TOKEN" in no_token.stderr
    assert not (tmp_path / "t.jwt").exists()

    env = {**os.environ, "ECO_TOKEN": "s3cret"}
    plaintext = subprocess.run(
        [str(ECO), "xds", "bootstrap", "--node", "n1", "--server", "127.0.0.1:1",
         "--token-file", str(tmp_path / "t.jwt")],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert plaintext.returncode == 2
    assert "only over TLS" in plaintext.stderr and "--ca-file" in plaintext.stderr
    assert not (tmp_path / "t.jwt").exists()
