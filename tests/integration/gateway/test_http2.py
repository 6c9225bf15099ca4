"""HTTP/2 at the gateway's TLS listener (ALPN h2), with a bare h2 client: requests
with and without bodies through a route to a real backend, concurrent streams on
one connection, a plugin's refusal, a large body under flow control, a client's
RST_STREAM cancelling the upstream request, malformed requests reset alone,
HTTP/1.1 clients served beside, the client's address in the access log, GOAWAY
on drain."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from aiohttp import web
from h2.errors import ErrorCodes

from sidecar.gateway.app import Gateway
from sidecar.gateway.config import parse_config
from tests.harness.certs import TestCA
from tests.integration.test_gateway_auth import _client_certificate
from tests.util import assert_eventually

BIG = 24 * 1024 * 1024  # bytes of the large body
CHUNK = 64 * 1024


class Backend:
    """An aiohttp app: echoes requests, streams a large body, waits when told."""

    def __init__(self) -> None:
        self.port = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.sent = 0
        self.cancelled = 0
        self.release = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def _echo(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if "wait" in request.query:
                await asyncio.sleep(0.1)
            body = await request.read()
        finally:
            self.in_flight -= 1
        return web.json_response(
            {
                "method": request.method,
                "path": request.path_qs,
                "headers": dict(request.headers),
                "body": body.decode(),
            },
            headers={"x-backend": "yes"},
        )

    async def _big(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-length": str(BIG)})
        await resp.prepare(request)
        block = bytes(range(256)) * (CHUNK // 256)
        for _ in range(BIG // CHUNK):
            await resp.write(block)
            self.sent += CHUNK
        await resp.write_eof()
        return resp

    async def _count(self, request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        size = 0
        async for data in request.content.iter_any():
            digest.update(data)
            size += len(data)
        return web.json_response({"size": size, "sha256": digest.hexdigest()})

    async def _hang(self, request: web.Request) -> web.Response:
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return web.Response(text="late")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/big", self._big)
        app.router.add_get("/hang", self._hang)
        app.router.add_post("/count", self._count)
        app.router.add_route("*", "/{tail:.*}", self._echo)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass
class Response:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    reset: int | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def json(self) -> Any:
        return json.loads(bytes(self.body))


class H2Client:
    """A bare HTTP/2 client over TLS: streams, resets and windows by hand."""

    def __init__(self, address: str, context: ssl.SSLContext) -> None:
        self.host, _, port = address.rpartition(":")
        self.port = int(port)
        self.context = context
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.responses: dict[int, Response] = {}
        #: DATA not acknowledged yet (auto_ack off): the client "reads" nothing
        self.auto_ack = True
        self.unacked: list[tuple[int, int]] = []
        self.trailers: dict[int, dict[str, str]] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.settings: dict[int, int] = {}
        self.closed = asyncio.Event()

    async def __aenter__(self) -> H2Client:
        self.reader, self.writer = await asyncio.open_connection(
            self.host, self.port, ssl=self.context, server_hostname="localhost"
        )
        self.alpn = self.writer.get_extra_info("ssl_object").selected_alpn_protocol()
        assert self.alpn == "h2"
        self.conn.initiate_connection()
        self.flush()
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()

    def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())

    async def _read(self) -> None:
        try:
            while data := await self.reader.read(65536):
                for event in self.conn.receive_data(data):
                    self._event(event)
                self.flush()
        finally:
            self.closed.set()
            for response in self.responses.values():
                response.done.set()

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            r = self.responses[event.stream_id]  # type: ignore[index]
            for name, value in event.headers or []:
                if name == b":status":
                    r.status = int(value)
                else:
                    r.headers[name.decode()] = value.decode()
        elif isinstance(event, h2.events.DataReceived):
            r = self.responses[event.stream_id]  # type: ignore[index]
            r.body += event.data or b""
            credit = event.flow_controlled_length or 0
            if self.auto_ack:
                self.conn.acknowledge_received_data(credit, event.stream_id)  # type: ignore[arg-type]
            else:
                self.unacked.append((event.stream_id, credit))  # type: ignore[arg-type]
        elif isinstance(event, h2.events.TrailersReceived):
            self.trailers[event.stream_id] = {  # type: ignore[index]
                n.decode(): v.decode() for n, v in event.headers or []
            }
        elif isinstance(event, h2.events.StreamEnded):
            self.responses[event.stream_id].done.set()  # type: ignore[index]
        elif isinstance(event, h2.events.StreamReset):
            r = self.responses[event.stream_id]  # type: ignore[index]
            r.reset = event.error_code
            r.done.set()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            for code, change in event.changed_settings.items():
                self.settings[code] = change.new_value
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event
            # The h2 library takes no frame after a GOAWAY; a client must take the
            # streams it names as still running (RFC 9113 §6.8), as this one does.
            self.conn.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN

    def ack_all(self) -> None:
        self.auto_ack = True
        for stream_id, credit in self.unacked:
            if credit:
                self.conn.acknowledge_received_data(credit, stream_id)
        self.unacked = []
        self.flush()

    def send(
        self,
        method: str,
        path: str,
        headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
        body: bytes | None = None,
        *,
        authority: str = "api.example.com",
    ) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        self.responses[stream_id] = Response()
        fields = [
            (":method", method),
            (":scheme", "https"),
            (":authority", authority),
            (":path", path),
            *headers,
        ]
        self.conn.send_headers(
            stream_id, [(n.encode(), v.encode()) for n, v in fields], end_stream=body is None
        )
        if body is not None:
            self.conn.send_data(stream_id, body, end_stream=True)
        self.flush()
        return stream_id

    async def request(self, *args: Any, **kwargs: Any) -> Response:
        stream_id = self.send(*args, **kwargs)
        response = self.responses[stream_id]
        await asyncio.wait_for(response.done.wait(), 10)
        return response

    def reset(self, stream_id: int) -> None:
        self.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
        self.flush()


async def until(condition: Callable[[], bool]) -> None:
    """Waits until ``condition()`` holds (within assert_eventually's time)."""

    def check() -> None:
        assert condition()

    await assert_eventually(check)


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    made = Backend()
    await made.start()
    yield made
    made.release.set()
    await made.stop()


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA.create(tmp_path / "ca")


@pytest.fixture
def client_context(ca: TestCA) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.cert_file))
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


def _config(
    tmp_path: Path, ca: TestCA, backend: Backend, extra: str = "", clients: Path | None = None
) -> Any:
    cert, key = ca.issue_server("gateway")
    mtls = f"""
          - name: certified
            match: {{path_prefix: /certified}}
            upstream: app
            endpoints: ["127.0.0.1:{backend.port}"]
            plugins:
              mtls: {{ca_file: "{clients}"}}
    """
    return parse_config(
        f"""
        listen: "127.0.0.1:0"
        data_dir: "{tmp_path / "gw"}"
        access_log: "{tmp_path / "access.log"}"
        tls: {{cert: "{cert}", key: "{key}"{extra}}}
        consumers:
          - {{name: alice, api_keys: ["k-alice-0001"]}}
        routes:{mtls if clients is not None else ""}
          - name: private
            match: {{path_prefix: /private}}
            upstream: app
            endpoints: ["127.0.0.1:{backend.port}"]
            plugins:
              key_auth: {{header: x-api-key}}
          - name: api
            match: {{path_prefix: /}}
            upstream: app
            endpoints: ["127.0.0.1:{backend.port}"]
        """
    )


@pytest.fixture
async def gateway(
    tmp_path: Path, ca: TestCA, backend: Backend
) -> AsyncIterator[tuple[Gateway, Path]]:
    async with Gateway(_config(tmp_path, ca, backend)) as gw:
        yield gw, tmp_path / "access.log"


async def test_get_and_post_through_a_route(
    gateway: tuple[Gateway, Path], client_context: ssl.SSLContext
) -> None:
    gw, _ = gateway
    async with H2Client(gw.address, client_context) as client:
        r = await client.request("GET", "/orders/1?x=1", [("cookie", "a=1"), ("cookie", "b=2")])
        assert client.settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] == 100
        assert r.status == 200 and r.reset is None
        assert r.headers["x-backend"] == "yes"
        assert "connection" not in r.headers and "transfer-encoding" not in r.headers
        seen = r.json()
        assert seen["method"] == "GET" and seen["path"] == "/orders/1?x=1"
        assert seen["headers"]["Host"] == "api.example.com"
        assert seen["headers"]["Cookie"] == "a=1; b=2"
        assert seen["headers"]["X-Forwarded-For"] == "127.0.0.1"
        # A body without a content-length (sent chunked upstream), and one with.
        r = await client.request("POST", "/orders", body=b"hello")
        assert r.status == 200 and r.json()["body"] == "hello"
        r = await client.request("PUT", "/orders/2", [("content-length", "3")], body=b"abc")
        assert r.status == 200 and r.json()["body"] == "abc"
        r = await client.request("HEAD", "/orders/1")
        assert r.status == 200 and not r.body and r.headers["content-length"] != "0"
        r = await client.request("GET", "/orders/3")  # (after a HEAD, on the same hop)
        assert r.status == 200 and r.json()["path"] == "/orders/3"


async def test_concurrent_streams_on_one_connection(
    gateway: tuple[Gateway, Path], backend: Backend, client_context: ssl.SSLContext
) -> None:
    gw, _ = gateway
    async with H2Client(gw.address, client_context) as client:
        ids = [client.send("GET", f"/n/{i}?wait") for i in range(20)]
        for i, stream_id in enumerate(ids):
            r = client.responses[stream_id]
            await asyncio.wait_for(r.done.wait(), 10)
            assert r.status == 200 and r.json()["path"] == f"/n/{i}?wait"
    assert backend.most_in_flight > 1


async def test_a_plugin_refusal_is_an_h2_response(
    gateway: tuple[Gateway, Path], client_context: ssl.SSLContext
) -> None:
    gw, _ = gateway
    async with H2Client(gw.address, client_context) as client:
        r = await client.request("GET", "/private/x")
        assert r.status == 401 and "www-authenticate" in r.headers
        # refused before its body: the answer comes, and the stream is closed for both
        r = await client.request("POST", "/private/x", body=b"x" * 1000)
        assert r.status == 401
        r = await client.request("GET", "/private/x", [("x-api-key", "k-alice-0001")])
        assert r.status == 200


async def test_a_large_body_follows_the_windows(
    gateway: tuple[Gateway, Path], backend: Backend, client_context: ssl.SSLContext
) -> None:
    gw, _ = gateway
    async with H2Client(gw.address, client_context) as client:
        client.auto_ack = False  # a client that reads nothing for a while
        stream_id = client.send("GET", "/big")
        r = client.responses[stream_id]
        await until(lambda: len(r.body) == 65_535)

        async def stalled() -> None:
            before = backend.sent
            await asyncio.sleep(0.1)
            assert backend.sent == before

        await assert_eventually(stalled)
        # The gateway held the rest back, and so (through the pauses) did the backend:
        # what it wrote is what the sockets between hold, not the whole body.
        assert len(r.body) == 65_535
        assert backend.sent < BIG // 2
        client.ack_all()
        await asyncio.wait_for(r.done.wait(), 20)
        block = bytes(range(256)) * (CHUNK // 256)
        assert r.status == 200 and len(r.body) == BIG
        assert hashlib.sha256(r.body).digest() == hashlib.sha256(block * (BIG // CHUNK)).digest()


async def test_a_large_request_body_streams_to_the_backend(
    gateway: tuple[Gateway, Path], client_context: ssl.SSLContext
) -> None:
    gw, _ = gateway
    body = bytes(range(256)) * (8 * 1024 * 1024 // 256)
    async with H2Client(gw.address, client_context) as client:
        stream_id = client.conn.get_next_available_stream_id()
        client.responses[stream_id] = r = Response()
        fields = {":method": "POST", ":scheme": "https", ":authority": "a", ":path": "/count"}
        client.conn.send_headers(stream_id, [(k.encode(), v.encode()) for k, v in fields.items()])
        sent = 0
        while sent < len(body):  # as the gateway's windows let it
            window = min(
                client.conn.local_flow_control_window(stream_id),
                client.conn.max_outbound_frame_size,
            )
            if window <= 0:
                await asyncio.sleep(0.001)
                continue
            client.conn.send_data(stream_id, body[sent : sent + window])
            sent += window
            client.flush()
            await asyncio.sleep(0)
        client.conn.end_stream(stream_id)
        client.flush()
        await asyncio.wait_for(r.done.wait(), 20)
        assert r.status == 200
        assert r.json() == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}


async def test_a_client_reset_cancels_the_upstream_request(
    gateway: tuple[Gateway, Path], backend: Backend, client_context: ssl.SSLContext
) -> None:
    gw, _ = gateway
    async with H2Client(gw.address, client_context) as client:
        await client.request("GET", "/warm")
        stream_id = client.send("GET", "/hang")
        await until(lambda: gw.listener.status()["connections"]["open"] == 2)
        await asyncio.sleep(0.05)
        client.reset(stream_id)
        await until(lambda: backend.cancelled == 1)
        # nothing held for it: the h2 connection itself, and at most idle hops
        listener: Any = gw.listener
        await until(lambda: all(d.current is None for d in listener.downstreams))
        r = await client.request("GET", "/after")
        assert r.status == 200


async def test_malformed_requests_are_reset_alone(
    gateway: tuple[Gateway, Path], client_context: ssl.SSLContext
) -> None:
    gw, _ = gateway
    async with H2Client(gw.address, client_context) as client:
        client.conn.config.validate_outbound_headers = False
        client.conn.config.normalize_outbound_headers = False
        for bad in (
            [("connection", "keep-alive")],
            [("transfer-encoding", "chunked")],
            [("te", "gzip")],
            [("x-evil", "a\r\nx-injected: 1")],
            [("Upper", "case")],
        ):
            r = await client.request("GET", "/x", bad)
            assert r.reset == ErrorCodes.PROTOCOL_ERROR, bad
        r = await client.request("GET", "/x", [("te", "trailers")])
        assert r.status == 200 and "x-injected" not in str(r.json()["headers"]).lower()
        assert client.goaway is None


async def test_http11_clients_are_served_beside(gateway: tuple[Gateway, Path], ca: TestCA) -> None:
    gw, _ = gateway
    context = ssl.create_default_context(cafile=str(ca.cert_file))
    context.set_alpn_protocols(["http/1.1"])
    async with aiohttp.ClientSession() as http:
        url = f"https://localhost:{gw.address.rpartition(':')[2]}/orders/9"
        async with http.post(url, data=b"one", ssl=context) as resp:
            assert resp.status == 200 and (await resp.json())["body"] == "one"


async def test_the_access_log_shows_the_client(
    gateway: tuple[Gateway, Path], client_context: ssl.SSLContext
) -> None:
    gw, log = gateway
    async with H2Client(gw.address, client_context) as client:
        await client.request("GET", "/logged")
        await client.request("GET", "/private/no")

    def logged() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        assert len(lines) == 2
        return lines

    lines = await assert_eventually(logged)
    assert [(x["route"], x["status"], x["client"]) for x in lines] == [
        ("api", 200, "127.0.0.1"),
        ("private", 401, "127.0.0.1"),
    ]


async def test_drain_sends_goaway_and_finishes_what_runs(
    tmp_path: Path, ca: TestCA, backend: Backend, client_context: ssl.SSLContext
) -> None:
    gw = Gateway(_config(tmp_path, ca, backend))
    async with gw, H2Client(gw.address, client_context) as client:
        stream_id = client.send("GET", "/slow?wait")
        await until(lambda: backend.in_flight == 1)
        stopping = asyncio.create_task(gw.stop(grace=5))
        await until(lambda: client.goaway is not None)
        assert client.goaway is not None and client.goaway.last_stream_id == stream_id
        r = client.responses[stream_id]
        await asyncio.wait_for(r.done.wait(), 5)
        assert r.status == 200
        await stopping
        await asyncio.wait_for(client.closed.wait(), 5)


async def test_http2_can_be_turned_off(
    tmp_path: Path, ca: TestCA, backend: Backend, client_context: ssl.SSLContext
) -> None:
    async with Gateway(_config(tmp_path, ca, backend, ", http2: false")) as gw:
        host, _, port = gw.address.rpartition(":")
        _, writer = await asyncio.open_connection(
            host, int(port), ssl=client_context, server_hostname="localhost"
        )
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
        writer.close()
        await writer.wait_closed()


async def test_the_client_certificate_reaches_the_mtls_plugin(
    tmp_path: Path, ca: TestCA, backend: Backend
) -> None:
    clients = TestCA.create(tmp_path / "clients", "clients-ca")
    config = _config(tmp_path, ca, backend, clients=clients.cert_file)
    with_cert = ssl.create_default_context(cafile=str(ca.cert_file))
    with_cert.set_alpn_protocols(["h2"])
    with_cert.load_cert_chain(*_client_certificate(clients, "acme", tmp_path))
    without = ssl.create_default_context(cafile=str(ca.cert_file))
    without.set_alpn_protocols(["h2"])
    async with Gateway(config) as gw:
        async with H2Client(gw.address, with_cert) as client:
            r = await client.request("GET", "/certified/x")
            assert r.status == 200
            assert r.json()["headers"]["x-consumer-name"] == "acme"
        async with H2Client(gw.address, without) as client:
            r = await client.request("GET", "/certified/x")
            assert r.status == 401 and "ClientCertificate" in r.headers["www-authenticate"]


async def test_trailers_pass_both_ways(tmp_path: Path, ca: TestCA) -> None:
    """A raw backend that reads a chunked request's trailers and answers with its own."""
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head.lower()
        while (size := int((await reader.readline()).split(b";")[0], 16)) > 0:
            await reader.readexactly(size + 2)
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n"
            b"5\r\nhello\r\n0\r\nx-checksum: abc\r\n\r\n"
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    backend = Backend()
    backend.port = server.sockets[0].getsockname()[1]
    context = ssl.create_default_context(cafile=str(ca.cert_file))
    context.set_alpn_protocols(["h2"])
    try:
        gw = Gateway(_config(tmp_path, ca, backend))
        async with gw, H2Client(gw.address, context) as client:
            fields = [(b":method", b"POST"), (b":scheme", b"https"), (b":path", b"/t")]
            stream_id = client.conn.get_next_available_stream_id()
            client.responses[stream_id] = r = Response()
            client.conn.send_headers(
                stream_id, [*fields, (b":authority", b"a"), (b"te", b"trailers")]
            )
            client.conn.send_data(stream_id, b"body")
            client.conn.send_headers(stream_id, [(b"x-sum", b"42")], end_stream=True)
            client.flush()
            await asyncio.wait_for(r.done.wait(), 10)
            assert r.status == 200 and bytes(r.body) == b"hello"
            assert client.trailers[stream_id] == {"x-checksum": "abc"}
        assert b"x-sum: 42" in seen[0].lower()
    finally:
        server.close()
        await server.wait_closed()
