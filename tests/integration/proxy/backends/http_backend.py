"""An HTTP/1.1 backend for the proxy tests (one aiohttp server process).

``python http_backend.py --port 0 --name b1`` binds 127.0.0.1, prints
``LISTENING <port>`` and serves until killed. Routes:

``/``                 JSON: ``name``, ``method``, ``path``, ``version``,
                      ``headers`` (``[[name, value], …]`` as received),
                      ``peer_port`` (the proxy's side of the connection:
                      the same port twice means a reused connection)
``/status/{code}``    that status, body ``NAME CODE``
``/echo``             the request body streamed back as it arrives
                      (Content-Length kept, chunked otherwise)
``/stream``           ``?chunks=N&delay=MS``: a chunked body, one chunk
                      ``NAME:i\\n`` every MS milliseconds
``/big``              ``?mb=N``: N MiB of a repeating 0…255 pattern
``/hang``             never answers
``/reset``            resets the connection (RST) before answering; with
                      ``?after=N``, after sending the head and N of 2N body bytes
``/count``            JSON ``{"name", "count"}``: requests handled, /count aside
``/slow``             ``?ms=N``: answers ``NAME`` after N milliseconds

Every answer but ``/count`` carries ``x-backend: NAME``. With ``--fail
MODE`` every route but ``/count`` misbehaves instead: ``hang`` never
answers, ``reset`` resets the connection, a status code answers that status
(body ``NAME CODE``).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable

from aiohttp import web

PATTERN = bytes(range(256)) * 256  # 64 KiB

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_app(name: str, fail: str | None = None) -> web.Application:
    counter = {"count": 0}
    headers = {"x-backend": name}

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/count":
            return await handler(request)
        counter["count"] += 1
        if fail == "hang":
            return await hang(request)
        if fail == "reset":
            return await reset(request)
        if fail is not None:
            await request.read()
            return web.Response(status=int(fail), text=f"{name} {fail}", headers=headers)
        return await handler(request)

    async def index(request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        await request.read()
        return web.json_response(
            {
                "name": name,
                "method": request.method,
                "path": request.path_qs,
                "version": f"{request.version.major}.{request.version.minor}",
                "headers": [
                    [k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers
                ],
                "peer_port": peer[1] if peer else None,
            },
            headers=headers,
        )

    async def status(request: web.Request) -> web.StreamResponse:
        code = int(request.match_info["code"])
        await request.read()
        return web.Response(status=code, text=f"{name} {code}", headers=headers)

    async def echo(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers=headers)
        if request.content_length is not None:
            response.content_length = request.content_length
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        async for chunk in request.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response

    async def stream(request: web.Request) -> web.StreamResponse:
        chunks = int(request.query.get("chunks", "3"))
        delay = int(request.query.get("delay", "0")) / 1000
        response = web.StreamResponse(headers=headers)
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(chunks):
            if i and delay:
                await asyncio.sleep(delay)
            await response.write(f"{name}:{i}\n".encode())
        await response.write_eof()
        return response

    async def big(request: web.Request) -> web.StreamResponse:
        size = int(float(request.query.get("mb", "1")) * 1024 * 1024)
        response = web.StreamResponse(headers=headers)
        response.content_length = size
        await response.prepare(request)
        sent = 0
        while sent < size:
            piece = PATTERN[: min(len(PATTERN), size - sent)]
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
        return response

    async def hang(request: web.Request) -> web.StreamResponse:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def reset(request: web.Request) -> web.StreamResponse:
        await request.read()
        after = request.query.get("after")
        if after is not None:
            response = web.StreamResponse(headers=headers)
            response.content_length = 2 * int(after)
            await response.prepare(request)
            await response.write(b"x" * int(after))
            await asyncio.sleep(0.1)  # let those bytes leave before the reset
        transport = request.transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        await asyncio.Event().wait()  # cancelled when the connection is gone
        raise AssertionError("unreachable")

    async def count_route(request: web.Request) -> web.StreamResponse:
        return web.json_response({"name": name, "count": counter["count"]})

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(int(request.query.get("ms", "500")) / 1000)
        await request.read()
        return web.Response(text=name, headers=headers)

    app = web.Application(middlewares=[count], client_max_size=1024**3)
    app.router.add_route("*", "/", index)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/stream", stream)
    app.router.add_route("*", "/big", big)
    app.router.add_route("*", "/hang", hang)
    app.router.add_route("*", "/reset", reset)
    app.router.add_route("GET", "/count", count_route)
    app.router.add_route("*", "/slow", slow)
    return app


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--name", default="backend")
    parser.add_argument("--fail", default=None, help="hang, reset or a status code")
    args = parser.parse_args()
    runner = web.AppRunner(make_app(args.name, args.fail), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, reuse_address=True)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    print(f"LISTENING {server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
