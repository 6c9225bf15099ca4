"""The real probes: HTTP over shared keep-alive pools, TCP connects, gRPC health, exec.

Cost matters here (a thousand checks a second must stay cheap), so each
probe is prepared once: URLs parsed, requests built, timeouts set, gRPC
requests serialized; running it is one request and a comparison.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2

from sdk import HealthStatus
from sidecar.health._base import ProbeCheckConfig, split_host_port
from sidecar.health._duration import format_duration
from sidecar.health._exec import run_command
from sidecar.health._http1 import Http1Error, Http1Pool
from sidecar.health._http_judge import USER_AGENT, Judge, read_capped, request_head
from sidecar.health._kinds import (
    BODY_LIMIT,
    ExecCheckConfig,
    GrpcCheckConfig,
    HttpCheckConfig,
    TcpCheckConfig,
)
from sidecar.health._probe import Probe, ProbeResult

if TYPE_CHECKING:
    # Imported where a probe needs them: only https:// (and non-lean) HTTP probes use
    # the general client, whose import costs the sidecar about 11 MB of memory, and
    # only HTTP probes need the URL parser (about 1 MB).
    import aiohttp
    import yarl

__all__ = ["NetworkHealthChecker"]

logger = logging.getLogger(__name__)

_PASSING = HealthStatus.PASSING
_WARNING = HealthStatus.WARNING
_CRITICAL = HealthStatus.CRITICAL

# SO_LINGER {on, 0 s}: close() sends a reset, so a thousand connects a second
# do not leave a thousand TIME_WAIT sockets a second on this host.
_LINGER_RESET = struct.pack("ii", 1, 0)
#: The largest gRPC health answer read, in bytes.
GRPC_MESSAGE_LIMIT = 64 * 1024
# A health channel must notice a recovered server within about a second, not
# after gRPC's default reconnect backoff of up to two minutes.
_GRPC_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
    # A health answer is a few bytes; a server sending megabytes is not healthy, and
    # is not read whole (the default would be 4 MiB).
    ("grpc.max_receive_message_length", GRPC_MESSAGE_LIMIT),
]
_CHECK_METHOD = "/grpc.health.v1.Health/Check"
_SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass
class _GrpcTarget:
    target: str
    tls: bool
    refs: int = 0
    channel: grpc.aio.Channel | None = None
    call: grpc.aio.UnaryUnaryMultiCallable[Any, Any] | None = field(default=None, repr=False)

    def open(self) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
        if self.tls:
            creds = grpc.ssl_channel_credentials()
            self.channel = grpc.aio.secure_channel(self.target, creds, options=_GRPC_OPTIONS)
        else:
            self.channel = grpc.aio.insecure_channel(self.target, options=_GRPC_OPTIONS)
        self.call = self.channel.unary_unary(
            _CHECK_METHOD,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        return self.call


class NetworkHealthChecker:
    """Runs HTTP, TCP, gRPC and exec probes for one engine.

    Plain ``http://`` probes share one pool of keep-alive connections of a
    small built-in HTTP/1.1 client (see ``_http1``: half the CPU of the
    general client per request); ``https://`` probes — and every HTTP probe
    with ``lean_http=False`` — share one general client session with its own
    keep-alive pool (created on first use, inside the running loop). gRPC
    probes share one channel per target, closed when its last check is
    released. Exec probes run at most ``max_concurrent_exec`` commands at once;
    a command's timeout starts when it starts. ``close()`` is idempotent; the
    checker cannot be reused after it.
    """

    def __init__(self, *, max_concurrent_exec: int = 16, lean_http: bool = True) -> None:
        if max_concurrent_exec < 1:
            raise ValueError("max_concurrent_exec must be at least 1")
        self._lean_http = lean_http
        self._pool = Http1Pool(BODY_LIMIT)
        self._session: aiohttp.ClientSession | None = None
        self._grpc: dict[tuple[str, bool], _GrpcTarget] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._exec_slots = asyncio.Semaphore(max_concurrent_exec)
        self._closed = False

    def prepare(self, config: ProbeCheckConfig) -> Probe:
        if self._closed:
            raise RuntimeError("the health checker is closed")
        if isinstance(config, HttpCheckConfig):
            return self._http(config)
        if isinstance(config, TcpCheckConfig):
            return _tcp(config)
        if isinstance(config, GrpcCheckConfig):
            return self._grpc_probe(config)
        if isinstance(config, ExecCheckConfig):
            return self._exec(config)
        raise TypeError(f"no probe for {type(config).__name__}")

    def release(self, config: ProbeCheckConfig) -> None:
        if not isinstance(config, GrpcCheckConfig):
            return
        key = (config.grpc, config.tls)
        entry = self._grpc.get(key)
        if entry is None:
            return
        entry.refs -= 1
        if entry.refs > 0:
            return
        del self._grpc[key]
        if entry.channel is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop left to close it on; it went with its loop
            task = loop.create_task(
                entry.channel.close(grace=None), name=f"health-grpc-close:{entry.target}"
            )
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        channels = [e.channel for e in self._grpc.values() if e.channel is not None]
        self._grpc.clear()
        for channel in channels:
            await channel.close(grace=None)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        self._pool.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- HTTP ---------------------------------------------------------------

    def _open_session(self) -> aiohttp.ClientSession:
        import aiohttp

        # One pool for every HTTP check: connections are kept alive and reused
        # (the engine bounds concurrency, so the pool needs no limit of its own).
        connector = aiohttp.TCPConnector(limit=0, force_close=False, ttl_dns_cache=10)
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            headers={"User-Agent": USER_AGENT, "Accept": "text/plain, */*"},
        )
        return self._session

    def _http(self, config: HttpCheckConfig) -> Probe:
        import yarl

        url = yarl.URL(config.http)
        if self._lean_http and url.scheme == "http":
            return self._http_lean(config, url)
        return self._http_session(config, url)

    def _http_lean(self, config: HttpCheckConfig, url: yarl.URL) -> Probe:
        host = url.raw_host or ""
        port = url.port or 80
        request = request_head(config, url)
        head_only = config.method == "HEAD"
        timeout = config.timeout
        judge = Judge(config, url)
        pool = self._pool

        async def probe() -> ProbeResult:
            if self._closed:
                return judge.closed
            try:
                async with asyncio.timeout(timeout):
                    response = await pool.request(host, port, request, head_only=head_only)
            except TimeoutError:
                return judge.timed_out
            except Http1Error as exc:
                return judge.failed(f"invalid HTTP response: {exc}")
            except OSError as exc:
                return judge.failed(_describe(exc))
            return judge(response.status, response.reason, response.body)

        return probe

    def _http_session(self, config: HttpCheckConfig, url: yarl.URL) -> Probe:
        import aiohttp

        method = config.method
        headers = dict(config.headers) or None
        timeout = aiohttp.ClientTimeout(total=config.timeout)
        ssl = not config.tls_skip_verify
        judge = Judge(config, url)

        async def probe() -> ProbeResult:
            if self._closed:
                return judge.closed
            session = self._session or self._open_session()
            try:
                async with session.request(
                    method,
                    url,
                    headers=headers,
                    timeout=timeout,
                    ssl=ssl,
                    allow_redirects=False,
                ) as resp:
                    body = await read_capped(resp.content) if method != "HEAD" else b""
                    code = resp.status
                    reason = resp.reason or ""
            except TimeoutError:
                return judge.timed_out
            except aiohttp.ClientError as exc:  # before OSError: some are both
                return judge.failed(str(exc) or type(exc).__name__)
            except (OSError, ValueError) as exc:
                return judge.failed(_describe(exc))
            return judge(code, reason, body)

        return probe

    # -- gRPC ---------------------------------------------------------------

    def _grpc_probe(self, config: GrpcCheckConfig) -> Probe:
        key = (config.grpc, config.tls)
        entry = self._grpc.get(key)
        if entry is None:
            entry = self._grpc[key] = _GrpcTarget(config.grpc, config.tls)
        entry.refs += 1
        request = health_pb2.HealthCheckRequest(service=config.service)
        timeout = config.timeout
        label = f"gRPC health {config.target}"
        timed_out = ProbeResult(_CRITICAL, f"{label}: timed out after {format_duration(timeout)}")

        async def probe() -> ProbeResult:
            if self._closed:
                return ProbeResult(_CRITICAL, f"{label}: the health checker is closed")
            call = entry.call or entry.open()
            try:
                response = await call(request, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    return timed_out
                if code == grpc.StatusCode.NOT_FOUND:
                    return ProbeResult(_CRITICAL, f"{label}: service unknown to the server")
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    return ProbeResult(_CRITICAL, f"{label}: the server has no health service")
                return ProbeResult(_CRITICAL, f"{label}: {code.name}: {exc.details() or ''}")
            name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            if response.status == _SERVING:
                return ProbeResult(_PASSING, f"{label}: {name}")
            return ProbeResult(_CRITICAL, f"{label}: {name}")

        return probe

    # -- exec ---------------------------------------------------------------

    def _exec(self, config: ExecCheckConfig) -> Probe:
        argv = config.argv
        timeout = config.timeout

        async def probe() -> ProbeResult:
            async with self._exec_slots:
                return await run_command(argv, timeout)

        return probe


# -- TCP ----------------------------------------------------------------------


def _tcp(config: TcpCheckConfig) -> Probe:
    host, port = split_host_port(config.tcp)
    fixed: list[tuple[int, tuple[str, int]]] | None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        fixed = None  # a name: resolved on every probe, as its owner may move it
    else:
        fixed = [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, (host, port))]
    timeout = config.timeout
    label = f"TCP connect {config.tcp}"
    passed = ProbeResult(_PASSING, f"{label}: success")
    timed_out = ProbeResult(_CRITICAL, f"{label}: timed out after {format_duration(timeout)}")

    async def probe() -> ProbeResult:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            if fixed is None:
                async with asyncio.timeout(timeout):
                    targets = await _resolve(loop, host, port)
            else:
                targets = fixed
            error: OSError | None = None
            for family, address in targets:
                try:
                    await _connect(loop, family, address, deadline)
                    return passed
                except TimeoutError:
                    raise  # an OSError too, but it ends the probe
                except OSError as exc:
                    error = exc
        except TimeoutError:
            return timed_out
        except OSError as exc:  # resolution failed
            error = exc
        return ProbeResult(_CRITICAL, f"{label}: {_describe(error)}")

    return probe


_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)


async def _connect(
    loop: asyncio.AbstractEventLoop, family: int, address: tuple[str, int], deadline: float
) -> None:
    """Connects and closes at once; raises OSError, or TimeoutError at ``deadline``.

    A bare non-blocking socket watched for writability: measured about 20%
    cheaper per probe than the loop's sock_connect, and than a transport,
    on both event loops the sidecar may run on.
    """
    sock = socket.socket(family, socket.SOCK_STREAM | _NONBLOCK)
    try:
        if not _NONBLOCK:
            sock.setblocking(False)
        err = sock.connect_ex(address)
        if err in (errno.EINPROGRESS, errno.EINTR):
            fd = sock.fileno()
            waiter = loop.create_future()
            loop.add_writer(fd, _resolve_waiter, waiter, None)
            timer = loop.call_at(deadline, _resolve_waiter, waiter, TimeoutError())
            try:
                await waiter
            finally:
                timer.cancel()
                loop.remove_writer(fd)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
        _reset_on_close(sock)
    finally:
        sock.close()


def _resolve_waiter(waiter: asyncio.Future[None], error: BaseException | None) -> None:
    if waiter.done():
        return
    if error is None:
        waiter.set_result(None)
    else:
        waiter.set_exception(error)


def _reset_on_close(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)


async def _resolve(
    loop: asyncio.AbstractEventLoop, host: str, port: int
) -> list[tuple[int, tuple[str, int]]]:
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [(family, (str(addr[0]), int(addr[1]))) for family, _, _, _, addr in infos]


# -- helpers ------------------------------------------------------------------


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no address to connect to"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host: {exc.strerror}"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    text = str(exc)
    return text or type(exc).__name__
