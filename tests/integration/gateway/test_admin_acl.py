"""The gateway's admin port off loopback: TLS with the listener's certificate,
and every call's token checked with the control plane's rules."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import pytest

from sidecar.gateway.app import Gateway
from sidecar.gateway.config import parse_config
from tests.harness.acl import acl_plane
from tests.harness.certs import TestCA


def test_an_admin_port_off_loopback_needs_tls_and_a_control_plane() -> None:
    with pytest.raises(ValueError, match="is off loopback: it then serves TLS"):
        parse_config('admin: "0.0.0.0:8081"\n')


async def test_the_admin_port_off_loopback_checks_tokens(tmp_path: Path) -> None:
    ca = TestCA.create(tmp_path / "ca")
    cert, key = ca.issue_server("gateway")
    async with acl_plane(tmp_path) as plane:
        config = parse_config(
            f"""
            listen: "127.0.0.1:0"
            admin: "0.0.0.0:0"
            tls: {{cert: "{cert}", key: "{key}"}}
            controlplane: {{addresses: ["{plane.plane.address}"]}}
            data_dir: "{tmp_path / "gw"}"
            routes:
              - {{name: a, match: {{path_prefix: /a}}, upstream: app,
                  endpoints: ["127.0.0.1:9"], plugins: {{cache: {{}}}}}}
            """
        )
        metrics = await plane.token("operator:metrics:read")
        purger = await plane.token("route:a:write")
        context = ssl.create_default_context(cafile=str(ca.cert_file))
        async with Gateway(config) as gw, aiohttp.ClientSession() as http:
            port = gw.admin_address.rpartition(":")[2]
            base = f"https://localhost:{port}"

            async def call(method: str, path: str, secret: str = "") -> int:
                headers = {"authorization": f"Bearer {secret}"} if secret else {}
                async with http.request(method, base + path, headers=headers, ssl=context) as r:
                    await r.read()
                    return r.status

            assert await call("GET", "/healthz") == 200  # open, for load balancers
            assert await call("GET", "/metrics") == 401
            assert await call("GET", "/metrics", "not-a-token") == 401
            assert await call("GET", "/metrics", purger) == 403
            assert await call("GET", "/metrics", metrics) == 200
            assert await call("GET", "/status", metrics) == 200
            assert await call("POST", "/cache/purge?route=a", metrics) == 403
            assert await call("POST", "/cache/purge?route=a", purger) == 200
            with pytest.raises(aiohttp.ClientError):  # plaintext to the TLS port
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    await resp.read()
