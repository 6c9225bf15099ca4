"""A gRPC backend for the proxy tests: health, reflection and a bytes ``test.Echo`` service.

``python grpc_backend.py --port 0 --name b1 [--fail-with UNAVAILABLE]`` binds
127.0.0.1, prints ``LISTENING <port>`` and serves until killed. It serves

- ``grpc.health.v1.Health`` (SERVING for ``""`` and for ``--name``),
- server reflection (``grpc.reflection.v1alpha``),
- ``test.Echo``, with raw bytes as messages (no generated code):

  ``Unary``         echoes the request; initial metadata ``x-backend: NAME``,
                    trailing ``x-trailer: NAME`` and any ``x-echo-bin`` echoed back
  ``ServerStream``  request ``N`` or ``N:MS``: N messages ``NAME:i``, MS apart
  ``ClientStream``  the request messages concatenated
  ``Bidi``          echoes each message as it arrives
  ``Fail``          request = a status code name: fails with it, details
                    ``failed by NAME``, trailing ``x-trailer: NAME`` and a rich
                    status (``grpc-status-details-bin``) with an ErrorInfo
  ``Abort``         fails at once, before reading any request message, with the
                    code named by the ``x-abort`` metadata (default NOT_FOUND),
                    details ``aborted by NAME`` and trailing ``x-trailer: NAME``
                    (a stream handler: call it as any kind)
  ``Sleep``         request = milliseconds: sleeps, then answers ``NAME``; trailing
                    ``x-deadline-ms``: the deadline it was given (``none`` without)
  ``Count``         request ``""``: ``test.Echo`` calls handled (Count excluded);
                    ``sent``: stream messages sent; ``cancelled``: calls the
                    client cancelled, as seen while sleeping or writing (to a
                    Python server, a cancel during a read looks like the end
                    of the request stream)

With ``--fail-with CODE`` every ``test.Echo`` method but ``Count`` fails at
once with that code (details ``failed by NAME``), before any metadata; with
``--slow-ms MS`` each of them first waits that long.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

Context = grpc.aio.ServicerContext[Any, Any]

ECHO_SERVICE = "test.Echo"
MAX_MESSAGE = 64 * 1024 * 1024


class Echo:
    """The ``test.Echo`` methods, and the counters ``Count`` reports."""

    def __init__(self, name: str, fail_with: grpc.StatusCode | None, slow: float) -> None:
        self.name = name
        self.fail_with = fail_with
        self.slow = slow
        self.calls = 0
        self.sent = 0
        self.cancelled = 0

    async def _begin(self, context: Context) -> None:
        self.calls += 1
        if self.slow:
            await asyncio.sleep(self.slow)
        if self.fail_with is not None:
            await context.abort(
                self.fail_with, f"failed by {self.name}", (("x-trailer", self.name),)
            )

    async def _initial(self, context: Context) -> None:
        await context.send_initial_metadata((("x-backend", self.name),))

    async def unary(self, request: bytes, context: Context) -> bytes:
        await self._begin(context)
        await self._initial(context)
        trailing: list[tuple[str, str | bytes]] = [("x-trailer", self.name)]
        for key, value in context.invocation_metadata() or ():
            if key == "x-echo-bin":
                trailing.append((key, value))
        context.set_trailing_metadata(tuple(trailing))
        return request

    async def server_stream(self, request: bytes, context: Context) -> None:
        await self._begin(context)
        await self._initial(context)
        count, _, interval = request.decode().partition(":")
        delay = int(interval or 0) / 1000
        try:
            for i in range(int(count)):
                if delay and i:
                    await asyncio.sleep(delay)
                await context.write(f"{self.name}:{i}".encode())
                self.sent += 1
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def client_stream(self, requests: AsyncIterator[bytes], context: Context) -> bytes:
        await self._begin(context)
        await self._initial(context)
        return b"".join([message async for message in requests])

    async def bidi(self, requests: AsyncIterator[bytes], context: Context) -> None:
        await self._begin(context)
        await self._initial(context)
        try:
            async for message in requests:
                await context.write(message)
                self.sent += 1
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def fail(self, request: bytes, context: Context) -> bytes:
        await self._begin(context)
        code = grpc.StatusCode[request.decode()]
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason="FAILED", domain=self.name))
        status = rpc_status.to_status(
            status_pb2.Status(
                code=code.value[0], message=f"failed by {self.name}", details=[detail]
            )
        )
        await context.abort(
            status.code, status.details, (*status.trailing_metadata, ("x-trailer", self.name))
        )

    async def abort(self, requests: AsyncIterator[bytes], context: Context) -> None:
        del requests  # never read: the status goes out before the request arrives
        self.calls += 1
        code = dict(context.invocation_metadata() or ()).get("x-abort", "NOT_FOUND")
        await context.abort(
            grpc.StatusCode[str(code)], f"aborted by {self.name}", (("x-trailer", self.name),)
        )

    async def sleep(self, request: bytes, context: Context) -> bytes:
        await self._begin(context)
        remaining = context.time_remaining()
        deadline = "none" if remaining is None else str(round(remaining * 1000))
        context.set_trailing_metadata((("x-deadline-ms", deadline),))
        try:
            await asyncio.sleep(int(request or b"0") / 1000)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return self.name.encode()

    async def count(self, request: bytes, context: Context) -> bytes:
        del context
        value = {b"": self.calls, b"sent": self.sent, b"cancelled": self.cancelled}[request]
        return str(value).encode()

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        return grpc.method_handlers_generic_handler(
            ECHO_SERVICE,
            {
                "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
                "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream),
                "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream),
                "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi),
                "Fail": grpc.unary_unary_rpc_method_handler(self.fail),
                "Abort": grpc.stream_stream_rpc_method_handler(self.abort),
                "Sleep": grpc.unary_unary_rpc_method_handler(self.sleep),
                "Count": grpc.unary_unary_rpc_method_handler(self.count),
            },
        )


async def serve(port: int, name: str, fail_with: grpc.StatusCode | None, slow: float) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ]
    )
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    name = name or f"grpc-{bound}"
    server.add_generic_rpc_handlers((Echo(name, fail_with, slow).handler(),))
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (ECHO_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    await server.start()
    for service in ("", name):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    print(f"LISTENING {bound}", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--name", default="")
    parser.add_argument("--fail-with", default=None, choices=[c.name for c in grpc.StatusCode])
    parser.add_argument("--slow-ms", type=int, default=0)
    args = parser.parse_args()
    fail_with = None if args.fail_with is None else grpc.StatusCode[args.fail_with]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.name, fail_with, args.slow_ms / 1000))


if __name__ == "__main__":
    main()
