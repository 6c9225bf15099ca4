"""Channels to the control plane, failover between them, and the call helpers.

The SDK's unary calls and server streams to the control plane go through
:meth:`Transport.unary` and :meth:`Transport.stream`; their gRPC errors
become the SDK's own through :func:`sdk._errors.translated` (the SDK's one
translation point), which also tells the transport to fail over on
UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import tenacity
from ecosystem.v1 import (
    acl_pb2_grpc,
    agent_pb2_grpc,
    catalog_pb2_grpc,
    gateway_pb2_grpc,
    intention_pb2_grpc,
    messaging_pb2_grpc,
    platform_pb2_grpc,
    registry_pb2_grpc,
    sidecar_pb2,
    sync_pb2_grpc,
)

from sdk._errors import (
    ClientClosedError,
    DeadlineExceededError,
    EcoError,
    UnavailableError,
    UnimplementedError,
    translated,
)
from sdk._retry import RetryPolicy

__all__ = [
    "CA_FILE_ENV",
    "DEFAULT_SERVER",
    "SERVER_ENV",
    "SIDECAR_LOCAL_API",
    "TOKEN_ENV",
    "CaFile",
    "ChannelFactory",
    "Transport",
    "client_channels",
    "resolve_servers",
    "resolve_token",
    "tls_channel_factory",
]

logger = logging.getLogger(__name__)

#: Where the control plane listens unless told otherwise.
DEFAULT_SERVER = "127.0.0.1:7400"
#: The environment variable naming the control plane(s), comma-separated.
SERVER_ENV = "ECO_SERVER"

#: The environment variable naming a CA file (PEM): clients then speak TLS and
#: trust the control plane's certificate only if that CA signed it.
CA_FILE_ENV = "ECO_CA_FILE"

#: The environment variable holding an ACL token's secret, sent with every call.
TOKEN_ENV = "ECO_TOKEN"

#: Builds the channel to one "host:port"; pass your own for extra options.
ChannelFactory = Callable[[str], grpc.aio.Channel]
#: The path of a PEM file of CA certificates.
CaFile = str | os.PathLike[str]

_PEM_CERT = b"-----BEGIN CERTIFICATE-----"

# Our own retries decide what is safe to repeat, so gRPC's are off. Reconnect
# quickly after a control-plane restart instead of backing off for minutes.
_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.enable_retries", 0),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]

Sleep = Callable[[float], Awaitable[None]]

#: The ``reason`` of the UnimplementedError a call gets from a sidecar's local
#: API: the address is a sidecar, not a control plane (a common slip, since
#: both speak gRPC on neighbouring ports).
SIDECAR_LOCAL_API = "SIDECAR_LOCAL_API"
_SIDECAR_SERVICE = sidecar_pb2.DESCRIPTOR.services_by_name["SidecarService"].full_name
# grpc.health.v1.HealthCheckRequest{service: SidecarService}, encoded by hand:
# the health package is a server extra, and this is one string field.
_SIDECAR_HEALTH_CHECK = b"\x0a" + bytes([len(_SIDECAR_SERVICE)]) + _SIDECAR_SERVICE.encode()


def resolve_servers(servers: str | Sequence[str] | None = None) -> tuple[str, ...]:
    """The control-plane addresses to use, in order of preference.

    Taken from ``servers`` (a sequence, or one comma-separated string), else
    from the ``ECO_SERVER`` environment variable, else ``127.0.0.1:7400``.
    Raises ValueError for an entry that is not ``host:port``.
    """
    if servers is None:
        servers = os.environ.get(SERVER_ENV, "").strip() or DEFAULT_SERVER
    parts = servers.split(",") if isinstance(servers, str) else list(servers)
    addresses = tuple(p.strip() for p in parts if p.strip())
    if not addresses:
        raise ValueError("no control-plane address given")
    for address in addresses:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"control-plane address {address!r} is not HOST:PORT")
    return addresses


def resolve_token(token: str | None = None) -> str:
    """The ACL token to send: ``token``, else ``ECO_TOKEN``, else "" (none)."""
    if token is None:
        token = os.environ.get(TOKEN_ENV, "")
    return token.strip()


def token_metadata(token: str) -> tuple[tuple[str, str], ...] | None:
    """The call metadata that carries ``token`` (None without one)."""
    return (("authorization", f"Bearer {token}"),) if token else None


def default_channel(address: str) -> grpc.aio.Channel:
    """A plaintext channel to ``address`` with the SDK's reconnect settings."""
    return grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)


class _TlsChannels:
    """Channels over TLS trusting the CA certificates in one PEM file, read when
    the first channel is made (and kept: a new CA file needs a new client)."""

    def __init__(self, ca_file: CaFile, options: Sequence[tuple[str, Any]]) -> None:
        self._ca_file = os.fspath(ca_file)
        self._options = list(options)
        self._credentials: grpc.ChannelCredentials | None = None

    def __call__(self, address: str) -> grpc.aio.Channel:
        if self._credentials is None:
            try:
                roots = Path(self._ca_file).read_bytes()
            except OSError as exc:
                raise ValueError(f"CA file {self._ca_file}: {exc.strerror}") from exc
            if _PEM_CERT not in roots:
                raise ValueError(f"CA file {self._ca_file}: no PEM certificate in it")
            self._credentials = grpc.ssl_channel_credentials(root_certificates=roots)
        return grpc.aio.secure_channel(address, self._credentials, options=self._options)

    def __repr__(self) -> str:
        return f"tls_channel_factory({self._ca_file!r})"


def tls_channel_factory(
    ca_file: CaFile, *, options: Sequence[tuple[str, Any]] | None = None
) -> ChannelFactory:
    """Channels over TLS to the control plane, trusting the CA certificates (PEM)
    in ``ca_file``, with the SDK's reconnect settings (or ``options``).

    The file is read when the first channel is made; ValueError then if it
    cannot be read or holds no certificate. A server whose certificate that CA
    did not sign, or does not name the address dialled, fails the handshake:
    calls get :class:`~sdk.UnavailableError`.
    """
    return _TlsChannels(ca_file, _CHANNEL_OPTIONS if options is None else options)


def client_channels(
    ca_file: CaFile | None,
    channel_factory: ChannelFactory | None,
    *,
    environment: bool = True,
) -> ChannelFactory | None:
    """The channel factory a client was asked for: its own ``channel_factory``,
    else TLS with ``ca_file`` (or, with ``environment``, ``ECO_CA_FILE``), else
    None (plaintext). Raises ValueError when given both."""
    if channel_factory is not None:
        if ca_file is not None:
            raise ValueError("give either ca_file or channel_factory, not both")
        return channel_factory
    if ca_file is None and environment:
        ca_file = os.environ.get(CA_FILE_ENV, "").strip() or None
    if ca_file is None or not os.fspath(ca_file):
        return None
    return tls_channel_factory(ca_file)


class Transport:
    """The channels to one or more control planes, and how calls use them.

    Calls go to the current address. UNAVAILABLE from it, or no answer at
    all before a call's deadline, moves the current address to the next one,
    so the following attempt (and every later call) fails over. Safe calls
    are retried with jittered backoff within their deadline; the others are
    attempted once. Channels are opened lazily.
    """

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        timeout: float,
        policy: RetryPolicy | None = None,
        channel_factory: ChannelFactory | None = None,
        sleep: Sleep = asyncio.sleep,
        token: str = "",
    ) -> None:
        if not addresses:
            raise ValueError("no control-plane address given")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._addresses = tuple(addresses)
        self._timeout = timeout
        self._policy = policy or RetryPolicy()
        self._factory = channel_factory or default_channel
        self._sleep = sleep
        # Sent with every call as ``authorization: Bearer <token>``; never logged.
        self._metadata = token_metadata(token)
        self._channels: dict[int, grpc.aio.Channel] = {}
        self._stubs: dict[int, Any] = {}
        self._current = 0
        self._closed = False

    @property
    def addresses(self) -> tuple[str, ...]:
        return self._addresses

    @property
    def current_address(self) -> str:
        """The address the next call goes to."""
        return self._addresses[self._current]

    @property
    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        """The metadata every call carries (the token), for calls made on :meth:`channel`."""
        return self._metadata

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def policy(self) -> RetryPolicy:
        return self._policy

    @property
    def closed(self) -> bool:
        return self._closed

    async def unary(
        self,
        method: str,
        request: Any,
        *,
        idempotent: bool,
        time_limit: float | None = None,
        token: str | None = None,
    ) -> Any:
        """Calls the unary RPC ``method`` and returns its response message.

        The call as a whole has ``time_limit`` seconds (the transport's
        default timeout when None), sent to the server as the gRPC deadline.
        An ``idempotent`` call is retried on UNAVAILABLE — on the next
        address, then with jittered backoff — until it succeeds, the
        attempts run out or the deadline passes. ``token`` (when not None)
        is sent instead of the transport's own: a server resolving a token
        its clients presented (``""``: none).
        """
        budget = self._timeout if time_limit is None else time_limit
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        metadata = self._metadata if token is None else token_metadata(token)
        if not idempotent:
            return await self._attempt(method, request, budget, metadata)
        retrying = tenacity.AsyncRetrying(
            stop=(
                tenacity.stop_after_attempt(self._policy.max_attempts)
                | tenacity.stop_before_delay(budget)
            ),
            wait=self._policy.wait(len(self._addresses)),
            retry=tenacity.retry_if_exception_type(UnavailableError),
            sleep=self._sleep,
            before_sleep=_log_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise DeadlineExceededError(
                        f"{method}: no attempt succeeded within {budget:g}s",
                        code="DEADLINE_EXCEEDED",
                        address=self.current_address,
                    )
                return await self._attempt(method, request, remaining, metadata)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def stream(self, method: str, request: Any) -> AsyncGenerator[Any, None]:
        """Yields the responses of the server-streaming RPC ``method``: one attempt.

        No deadline and no retry here; the watch loop owns reconnection.
        Closing the generator cancels the call.
        """
        index, stub = self._stub()
        call = getattr(stub, method)(request, metadata=self._metadata)
        try:
            with self._translated(index):
                async for response in call:
                    yield response
        finally:
            call.cancel()

    async def close(self) -> None:
        """Closes every channel, cancelling calls still in flight. Idempotent."""
        if self._closed:
            return
        self._closed = True
        channels = list(self._channels.values())
        self._channels.clear()
        self._stubs.clear()
        for channel in channels:
            await channel.close(grace=None)

    async def _attempt(
        self,
        method: str,
        request: Any,
        time_limit: float,
        metadata: tuple[tuple[str, str], ...] | None,
    ) -> Any:
        index, stub = self._stub()
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            with self._translated(index):
                return await getattr(stub, method)(request, timeout=time_limit, metadata=metadata)
        except UnimplementedError as error:
            if await self._is_sidecar(index, metadata):
                address = self._addresses[index]
                raise UnimplementedError(
                    f"{address} is a sidecar's local API, not a control plane "
                    f"(it does not serve {method})",
                    code=error.code,
                    address=address,
                    reason=SIDECAR_LOCAL_API,
                ) from error
            raise
        except DeadlineExceededError:
            # Silence for the whole time limit: the address is hung or cut off
            # (a frozen process, a partition), which no connection error will
            # ever report. Later calls go to the next address. A server that
            # answers DEADLINE_EXCEEDED itself (a bus request nobody replied
            # to) answers early, and stays current.
            if loop.time() - started >= 0.9 * time_limit:
                self._fail_over(index)
            raise

    async def _is_sidecar(self, index: int, metadata: tuple[tuple[str, str], ...] | None) -> bool:
        """Whether ``addresses[index]`` serves the sidecar's local API: its
        health service knows the SidecarService (a control plane's does not)."""
        check = self.channel(index).unary_unary(
            "/grpc.health.v1.Health/Check", request_serializer=None, response_deserializer=None
        )
        try:
            await check(_SIDECAR_HEALTH_CHECK, timeout=1.0, metadata=metadata)
        except grpc.RpcError:
            return False
        return True

    def mark_unresponsive(self, address: str) -> None:
        """Moves later calls off ``address``, as UNAVAILABLE from it would: for
        streams that noticed silence themselves (the watch's idle timeout)."""
        if address in self._addresses:
            self._fail_over(self._addresses.index(address))

    def channel(self, index: int) -> grpc.aio.Channel:
        """The channel to ``addresses[index]``, opened on first use and closed by
        :meth:`close`; for calls the transport's own helpers do not make (the
        agent session's bidirectional stream)."""
        if self._closed:
            raise ClientClosedError()
        channel = self._channels.get(index)
        if channel is None:
            channel = self._factory(self._addresses[index])
            self._channels[index] = channel
        return channel

    def _stub(self) -> tuple[int, Any]:
        if self._closed:
            raise ClientClosedError()
        index = self._current
        stub = self._stubs.get(index)
        if stub is None:
            channel = self.channel(index)
            stub = _Stubs(channel)
            self._stubs[index] = stub
        return index, stub

    def _translated(self, index: int) -> contextlib.AbstractContextManager[None]:
        """SDK errors for a call to ``addresses[index]``; UNAVAILABLE moves later calls on."""

        def fail_over(error: EcoError) -> None:
            if isinstance(error, UnavailableError):
                self._fail_over(index)

        return translated(self._addresses[index], on_error=fail_over)

    def _fail_over(self, index: int) -> None:
        # Only the first failure of an address moves on; concurrent calls that
        # failed on the same address must not skip the next one too.
        if len(self._addresses) > 1 and self._current == index:
            self._current = (index + 1) % len(self._addresses)
            logger.info(
                "control plane %s unavailable; failing over to %s",
                self._addresses[index],
                self._addresses[self._current],
            )


def _log_retry(state: tenacity.RetryCallState) -> None:
    outcome = state.outcome
    error = outcome.exception() if outcome is not None else None
    delay = state.next_action.sleep if state.next_action is not None else 0.0
    logger.debug("attempt %d failed (%s); retrying in %.3fs", state.attempt_number, error, delay)


class _Stubs:
    """The control plane's services on one channel, looked up by method name
    (method names are unique across them); each stub is made on first use."""

    _FACTORIES: tuple[Callable[[grpc.aio.Channel], Any], ...] = (
        registry_pb2_grpc.RegistryServiceStub,
        agent_pb2_grpc.AgentServiceStub,
        messaging_pb2_grpc.MessagingServiceStub,
        acl_pb2_grpc.AclServiceStub,
        intention_pb2_grpc.IntentionServiceStub,
        gateway_pb2_grpc.RouteServiceStub,
        sync_pb2_grpc.SyncServiceStub,
        platform_pb2_grpc.PlatformServiceStub,
        catalog_pb2_grpc.CatalogServiceStub,
    )
    _SERVICES: tuple[type, ...] = (
        registry_pb2_grpc.RegistryServiceServicer,
        agent_pb2_grpc.AgentServiceServicer,
        messaging_pb2_grpc.MessagingServiceServicer,
        acl_pb2_grpc.AclServiceServicer,
        intention_pb2_grpc.IntentionServiceServicer,
        gateway_pb2_grpc.RouteServiceServicer,
        sync_pb2_grpc.SyncServiceServicer,
        platform_pb2_grpc.PlatformServiceServicer,
        catalog_pb2_grpc.CatalogServiceServicer,
    )

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self._made: dict[int, Any] = {}

    def __getattr__(self, method: str) -> Any:
        for index, servicer in enumerate(self._SERVICES):
            if hasattr(servicer, method):
                stub = self._made.get(index)
                if stub is None:
                    stub = self._made[index] = self._FACTORIES[index](self._channel)
                return getattr(stub, method)
        raise AttributeError(method)
