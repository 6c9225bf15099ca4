"""An HTTP proxy in front of a storage emulator, in the test's own event loop,
that can answer requests itself: the way to show a connector what a busy
store says (S3's 503 SlowDown, Azure's 503 ServerBusy, GCS's 429) without
waiting for a real store to be busy.

Every request is counted (``requests``); ``fail_next(n, …)`` makes the next
``n`` answers the given error instead of forwarding them; everything else
goes to the emulator as it came (Host header included, so signatures made
for the proxy's address stay valid) and comes back as the emulator answered,
unless ``rewrite`` changes the answer (a store that holds something else).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

__all__ = ["THROTTLED", "Rewrite", "StoreProxy", "Throttle"]

# Changes an answer on its way back: (method, path?query, headers, body) →
# (headers, body). For showing a connector a store that holds something else
# than what was sent.
Rewrite = Callable[[str, str, dict[str, str], bytes], tuple[dict[str, str], bytes]]

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)


@dataclass(frozen=True)
class Throttle:
    """An answer a store gives when it wants clients to slow down."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


# What each store says, as its documentation shows.
THROTTLED = {
    "s3": Throttle(
        503,
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
        b"<Message>Please reduce your request rate.</Message></Error>",
        {"Content-Type": "application/xml"},
    ),
    "azure": Throttle(
        503,
        b'<?xml version="1.0" encoding="utf-8"?><Error><Code>ServerBusy</Code>'
        b"<Message>The server is busy.</Message></Error>",
        {"Content-Type": "application/xml", "x-ms-error-code": "ServerBusy"},
    ),
    "gcs": Throttle(
        429,
        b'{"error": {"code": 429, "message": "The rate of change requests to the bucket is '
        b'too high.", "errors": [{"reason": "rateLimitExceeded"}]}}',
        {"Content-Type": "application/json"},
    ),
}


class StoreProxy:
    """``async with StoreProxy(upstream) as proxy``: ``proxy.endpoint`` instead of
    the emulator's."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.requests = 0
        self.answered: list[int] = []  # the status of every answer, in order
        self.seen: list[tuple[str, str]] = []  # (method, path?query) of every request
        self._failing = 0
        self._throttle: Throttle | None = None
        self.rewrite: Rewrite | None = None
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_next(self, count: int, throttle: Throttle) -> None:
        self._failing, self._throttle = count, throttle

    async def __aenter__(self) -> StoreProxy:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = int(server.sockets[0].getsockname()[1])
        self._client = aiohttp.ClientSession(auto_decompress=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        client, runner = self._client, self._runner
        self._client = self._runner = None
        if client is not None:
            await client.close()
        if runner is not None:
            await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.seen.append((request.method, request.rel_url.raw_path_qs))
        body = await request.read()
        if self._failing > 0 and self._throttle is not None:
            self._failing -= 1
            self.answered.append(self._throttle.status)
            return web.Response(
                status=self._throttle.status,
                body=self._throttle.body,
                headers=self._throttle.headers,
            )
        assert self._client is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with self._client.request(
            request.method,
            self.upstream + request.rel_url.raw_path_qs,
            headers=headers,
            data=body,
            allow_redirects=False,
            # Nothing added: Azure signs Content-Type, which aiohttp would set.
            skip_auto_headers=("Content-Type", "Accept-Encoding", "User-Agent", "Accept"),
        ) as upstream:
            payload = await upstream.read()
            self.answered.append(upstream.status)
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
            if self.rewrite is not None:
                out, payload = self.rewrite(
                    request.method, request.rel_url.raw_path_qs, out, payload
                )
            if request.method == "HEAD":
                # A HEAD's Content-Length is the object's size, not this empty body's.
                response = web.StreamResponse(status=upstream.status, headers=out)
                response.content_length = int(upstream.headers.get("Content-Length", 0))
                await response.prepare(request)
                return response
            return web.Response(status=upstream.status, body=payload, headers=out)
