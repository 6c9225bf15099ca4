"""The sidecar's admin and HTTP bridge off loopback: TLS and ACL tokens.

A real control plane with ``--acl deny``, tokens made through its
AclService, and a sidecar whose admin and bridge listen on ``0.0.0.0:0``
(off loopback) with a certificate from a test CA; clients connect over
127.0.0.1 with TLS, trusting that CA.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.app import Sidecar
from sidecar.config import SidecarConfig
from tests.harness.acl import AclPlane, acl_plane
from tests.harness.certs import TestCA
from tests.harness.sse import read_event
from tests.util import assert_eventually

WAIT = 10.0
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[AclPlane]:
    async with acl_plane(tmp_path) as plane:
        yield plane


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA.create(tmp_path / "ca")


def sidecar_config(plane: AclPlane, tmp_path: Path, host: str, **extra: Any) -> SidecarConfig:
    return SidecarConfig.model_validate(
        {
            "node": {"id": "node-a"},
            "controlplane": {"addresses": [plane.plane.address], "token": plane.management},
            "data_dir": str(tmp_path / "node-a"),
            "local_api": "127.0.0.1:0",
            "admin": f"{host}:0",
            "bridges": [{"protocol": "http", "listen": f"{host}:0"}],
            **extra,
        }
    )


@dataclass
class Listeners:
    sidecar: Sidecar
    admin: str  # scheme://127.0.0.1:port
    bridge: str
    ssl: ssl.SSLContext | bool


def port_of(address: str) -> str:
    return address.rpartition(":")[2]


@contextlib.asynccontextmanager
async def serving(config: SidecarConfig, ca: TestCA | None) -> AsyncIterator[Listeners]:
    """The sidecar of ``config`` and how to reach its admin and bridge over 127.0.0.1."""
    context: ssl.SSLContext | bool = False
    if ca is not None:
        context = ssl.create_default_context(cafile=str(ca.cert_file))
    scheme = "https" if ca is not None else "http"
    async with Sidecar(config) as sidecar:
        [bridge] = sidecar.bridges
        yield Listeners(
            sidecar,
            f"{scheme}://127.0.0.1:{port_of(sidecar.admin_address)}",
            f"{scheme}://127.0.0.1:{port_of(bridge.address)}",  # type: ignore[attr-defined]
            context,
        )


@pytest.fixture
async def exposed(plane: AclPlane, ca: TestCA, tmp_path: Path) -> AsyncIterator[Listeners]:
    cert, key = ca.issue_server("sidecar")
    config = sidecar_config(
        plane, tmp_path, "0.0.0.0", tls={"cert_file": str(cert), "key_file": str(key)}
    )
    async with serving(config, ca) as listeners:
        yield listeners


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=None, sock_read=WAIT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield session


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def get(
    http: aiohttp.ClientSession, at: Listeners, url: str, **headers: str
) -> tuple[int, dict[str, str], str]:
    async with http.get(url, headers=headers, ssl=at.ssl) as resp:
        return resp.status, dict(resp.headers), await resp.text()


async def publish(
    http: aiohttp.ClientSession, at: Listeners, subject: str, secret: str = "", **params: str
) -> tuple[int, Any]:
    headers = {**JSON, **(bearer(secret) if secret else {})}
    url = f"{at.bridge}/v1/publish/{subject}"
    async with http.post(url, data=b"{}", headers=headers, params=params, ssl=at.ssl) as resp:
        return resp.status, await resp.json()


# -- admin ----------------------------------------------------------------------------------


async def test_admin_off_loopback_needs_a_token_with_operator_metrics_read(
    exposed: Listeners,
    plane: AclPlane,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    narrow = await plane.token("operator:other:read", "bus:*:write")
    right = await plane.token("operator:metrics:read")
    for path in ("/metrics", "/status"):
        status, headers, body = await get(http, exposed, exposed.admin + path)
        assert status == 401, body
        assert headers["WWW-Authenticate"] == "Bearer"
        assert "requires a token" in body
        status, headers, body = await get(
            http, exposed, exposed.admin + path, **bearer("not-a-token")
        )
        assert (status, headers["WWW-Authenticate"]) == (401, "Bearer"), body
        status, _, body = await get(http, exposed, exposed.admin + path, **bearer(narrow))
        assert status == 403, body
        assert "operator:metrics:read" in body
        status, _, body = await get(http, exposed, exposed.admin + path, **bearer(right))
        assert status == 200, body
    assert json.loads((await get(http, exposed, exposed.admin + "/status", **bearer(right)))[2])
    # /healthz says nothing but "running": open to all.
    assert (await get(http, exposed, exposed.admin + "/healthz"))[0] == 200
    for secret in (narrow, right, plane.management):
        assert secret not in caplog.text


async def test_admin_answers_pipelined_guarded_requests_in_order(
    exposed: Listeners, plane: AclPlane
) -> None:
    right = await plane.token("operator:metrics:read")
    assert isinstance(exposed.ssl, ssl.SSLContext)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", int(port_of(exposed.admin)), ssl=exposed.ssl, server_hostname="127.0.0.1"
    )
    try:
        auth = f"Authorization: Bearer {right}\r\n"
        requests = [
            ("/status", auth),
            ("/healthz", ""),
            ("/metrics", ""),
            ("/nothing", ""),
            ("/metrics", auth),
        ]
        writer.write(
            "".join(f"GET {p} HTTP/1.1\r\nHost: a\r\n{h}\r\n" for p, h in requests).encode()
        )
        statuses = []
        for _ in requests:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
            lines = head.decode().split("\r\n")
            length = next(
                int(line.split(":")[1])
                for line in lines
                if line.lower().startswith("content-length")
            )
            await reader.readexactly(length)
            statuses.append(int(lines[0].split()[1]))
        assert statuses == [200, 200, 401, 404, 200]
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


async def test_plaintext_to_a_tls_listener_fails(
    exposed: Listeners, http: aiohttp.ClientSession
) -> None:
    for url in (exposed.admin + "/healthz", exposed.bridge + "/v1/subscribe/x"):
        plain = url.replace("https://", "http://")
        with pytest.raises(aiohttp.ClientError):
            async with http.get(plain) as resp:
                await resp.read()


# -- the HTTP bridge ------------------------------------------------------------------------


async def test_bridge_publish_and_request_need_bus_publish(
    exposed: Listeners,
    plane: AclPlane,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    narrow = await plane.token("bus:orders.*:subscribe")
    right = await plane.token("bus:orders.*:publish")
    status, body = await publish(http, exposed, "orders.created")
    assert (status, body["error"]) == (401, "unauthenticated"), body
    status, body = await publish(http, exposed, "orders.created", "not-a-token")
    assert (status, body["error"]) == (401, "unauthenticated"), body
    status, body = await publish(http, exposed, "orders.created", narrow)
    assert (status, body["error"]) == (403, "permission_denied"), body
    assert "bus:orders.created:publish" in body["message"]
    status, body = await publish(http, exposed, "orders.created", right)
    assert status == 202, body
    status, body = await publish(http, exposed, "billing.due", right)
    assert (status, body["error"]) == (403, "permission_denied"), body
    # a request publishes too: refused before anything is sent
    url = f"{exposed.bridge}/v1/request/orders.get"
    async with http.post(
        url, data=b"{}", headers={**JSON, **bearer(narrow)}, ssl=exposed.ssl
    ) as resp:
        assert resp.status == 403
        assert "bus:orders.get:publish" in (await resp.json())["message"]
    async with http.post(
        url,
        data=b"{}",
        headers={**JSON, **bearer(right)},
        params={"timeout": "100ms"},
        ssl=exposed.ssl,
    ) as resp:
        assert resp.status in (503, 504)  # past the check: nobody answers
        assert (await resp.json())["error"] in ("no_responders", "timeout")
    # the header or the query parameter, not both
    status, body = await publish(http, exposed, "orders.created", right, access_token=right)
    assert status == 400, body
    status, _ = await publish(http, exposed, "orders.created", access_token=right)
    assert status == 202
    for secret in (narrow, right, plane.management):
        assert secret not in caplog.text


async def test_bridge_subscribe_needs_bus_subscribe_and_takes_access_token(
    exposed: Listeners, plane: AclPlane, http: aiohttp.ClientSession
) -> None:
    publisher = await plane.token("bus:orders.*:publish")
    reader = await plane.token("bus:orders.*:subscribe")
    url = f"{exposed.bridge}/v1/subscribe/orders.created"
    async with http.get(url, ssl=exposed.ssl) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == "Bearer"
    async with http.get(url, params={"access_token": publisher}, ssl=exposed.ssl) as resp:
        assert resp.status == 403
        assert "bus:orders.created:subscribe" in (await resp.json())["message"]
    async with http.get(url, params={"access_token": reader}, ssl=exposed.ssl) as resp:
        assert resp.status == 200
        assert (await resp.content.readline()).startswith(b": subscribed")
        assert (await publish(http, exposed, "orders.created", publisher))[0] == 202
        event = await read_event(resp)
        assert event["event"] == "message"
        assert json.loads(event["data"])["subject"] == "orders.created"


async def test_bridge_websocket_checks_each_frame(
    exposed: Listeners, plane: AclPlane, http: aiohttp.ClientSession
) -> None:
    reader = await plane.token("bus:orders.*:subscribe")
    url = f"{exposed.bridge}/v1/ws"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(url, ssl=exposed.ssl)
    assert refused.value.status == 401
    async with http.ws_connect(url, params={"access_token": reader}, ssl=exposed.ssl) as ws:
        await ws.send_json({"op": "sub", "id": "s1", "subject": "orders.created", "ref": "1"})
        assert (await ws.receive_json(timeout=WAIT))["op"] == "ok"
        await ws.send_json({"op": "sub", "id": "s2", "subject": "billing.due", "ref": "2"})
        err = await ws.receive_json(timeout=WAIT)
        assert (err["op"], err["ref"], err["error"]) == ("err", "2", "permission_denied")
        assert "bus:billing.due:subscribe" in err["message"]
        await ws.send_json({"op": "pub", "subject": "orders.created", "data": "x", "ref": "3"})
        err = await ws.receive_json(timeout=WAIT)
        assert (err["op"], err["ref"], err["error"]) == ("err", "3", "permission_denied")
        assert "bus:orders.created:publish" in err["message"]


async def test_a_deleted_token_is_refused_and_its_streams_end(
    exposed: Listeners, plane: AclPlane, http: aiohttp.ClientSession
) -> None:
    secret = await plane.token("bus:orders.*:write")
    url = f"{exposed.bridge}/v1/subscribe/orders.created"
    async with (
        http.get(url, headers=bearer(secret), ssl=exposed.ssl) as sse,
        http.ws_connect(f"{exposed.bridge}/v1/ws", headers=bearer(secret), ssl=exposed.ssl) as ws,
    ):
        assert sse.status == 200
        await ws.send_json({"op": "sub", "id": "s1", "subject": "orders.created", "ref": "1"})
        assert (await ws.receive_json(timeout=WAIT))["op"] == "ok"
        assert (await publish(http, exposed, "orders.created", secret))[0] == 202
        await plane.delete_token(secret)
        loop = asyncio.get_running_loop()
        deleted_at = loop.time()

        async def refused() -> None:
            status, body = await publish(http, exposed, "orders.created", secret)
            assert (status, body.get("error")) == (401, "unauthenticated"), body

        await assert_eventually(refused, timeout=3.0)
        new_requests_refused = loop.time() - deleted_at
        events = []
        while (event := await read_event(sse)).get("event") == "message":
            events.append(event)
        assert event["event"] == "error"
        assert json.loads(event["data"])["error"] == "unauthenticated"
        assert (await sse.content.read()) == b""  # the stream ended
        sse_ended = loop.time() - deleted_at
        while (frame := await ws.receive_json(timeout=WAIT))["op"] == "msg":
            continue  # messages delivered before the refusal
        assert (frame["op"], frame["ref"], frame["error"]) == ("err", "s1", "unauthenticated")
        ws_ended = loop.time() - deleted_at
    # The sidecar's cache (1 s), then for a held-open stream its next recheck (1 s);
    # loose bounds, for a loaded machine.
    assert new_requests_refused < 3.0
    assert sse_ended < 4.5
    assert ws_ended < 4.5


# -- insecure: true, and loopback -----------------------------------------------------------


async def test_insecure_serves_plaintext_but_still_checks_tokens(
    plane: AclPlane, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    config = sidecar_config(plane, tmp_path, "0.0.0.0", insecure=True)
    right = await plane.token("operator:metrics:read", "bus:orders.*:publish")
    async with serving(config, None) as at:
        assert (await get(http, at, at.admin + "/metrics"))[0] == 401
        assert (await get(http, at, at.admin + "/metrics", **bearer(right)))[0] == 200
        assert (await publish(http, at, "orders.created"))[0] == 401
        assert (await publish(http, at, "orders.created", right))[0] == 202


async def test_loopback_listeners_need_no_token(
    plane: AclPlane, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    config = sidecar_config(plane, tmp_path, "127.0.0.1")
    async with serving(config, None) as at:
        assert at.sidecar.tokens is None
        status, _, body = await get(http, at, at.admin + "/metrics")
        assert status == 200, body
        assert (await get(http, at, at.admin + "/status"))[0] == 200
        assert (await publish(http, at, "orders.created"))[0] == 202


async def test_a_tls_handshake_that_never_comes_is_cut_at_head_timeout(
    plane: AclPlane, ca: TestCA, tmp_path: Path
) -> None:
    """A client that connects and sends nothing holds a bridge or admin
    connection for ``head_timeout``, not for asyncio's 60 s handshake default."""
    cert, key = ca.issue_server("sidecar")
    config = sidecar_config(
        plane, tmp_path, "0.0.0.0", tls={"cert_file": str(cert), "key_file": str(key)}
    )
    config = config.model_copy(
        update={"bridges": (config.bridges[0].model_copy(update={"head_timeout": 0.3}),)}
    )
    async with serving(config, ca) as at:
        port = int(at.bridge.rpartition(":")[2])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = asyncio.get_running_loop().time()
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # closed by the bridge, not by us
        assert asyncio.get_running_loop().time() - started < 2
        writer.close()
