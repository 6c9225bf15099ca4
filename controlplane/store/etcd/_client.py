"""The connection of `EtcdStore` to an etcd cluster: channels, auth, one call helper.

gRPC types stop here. Every unary RPC goes through `EtcdClient.call`, the one place
where a gRPC failure becomes a store error (`EtcdError` for an answer etcd gave,
`EtcdUnavailable` when no member answered). Streams (watch, lease keepalive) are
opened with `EtcdClient.open_stream`; their errors are translated with
`translate`.

One channel per member. Requests go to the current member; when it does not
answer (UNAVAILABLE), the client moves to the next one. A request that cannot have
changed anything (a read, a lease renewal, a compaction) is then retried there; a
write is not, because it may have been applied before the connection broke, and
the caller gets `EtcdUnavailable` saying so.

With a user name, the client authenticates at start and again whenever etcd says
the token is no longer valid (simple tokens expire after 5 minutes of disuse by
default), then retries the request once.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio
from ecosystem.etcd import rpc_pb2 as pb
from google.protobuf.message import Message

from controlplane.store._protocol import StoreError, StoreUnavailable

from ._config import EtcdConfig

__all__ = [
    "AUTHENTICATE",
    "COMPACT",
    "LEASE_GRANT",
    "LEASE_KEEPALIVE",
    "LEASE_REVOKE",
    "LEASE_TTL",
    "RANGE",
    "STATUS",
    "TXN",
    "WATCH",
    "EtcdClient",
    "EtcdError",
    "EtcdUnavailable",
    "translate",
]

logger = logging.getLogger(__name__)

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)


@dataclass(frozen=True, slots=True)
class Method(Generic[Req, Resp]):
    """One RPC of etcd's API: its path on the wire and its message types."""

    path: str
    request: type[Req]
    response: type[Resp]


RANGE = Method("/etcdserverpb.KV/Range", pb.RangeRequest, pb.RangeResponse)
TXN = Method("/etcdserverpb.KV/Txn", pb.TxnRequest, pb.TxnResponse)
COMPACT = Method("/etcdserverpb.KV/Compact", pb.CompactionRequest, pb.CompactionResponse)
WATCH = Method("/etcdserverpb.Watch/Watch", pb.WatchRequest, pb.WatchResponse)
LEASE_GRANT = Method("/etcdserverpb.Lease/LeaseGrant", pb.LeaseGrantRequest, pb.LeaseGrantResponse)
LEASE_REVOKE = Method(
    "/etcdserverpb.Lease/LeaseRevoke", pb.LeaseRevokeRequest, pb.LeaseRevokeResponse
)
LEASE_KEEPALIVE = Method(
    "/etcdserverpb.Lease/LeaseKeepAlive", pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse
)
LEASE_TTL = Method(
    "/etcdserverpb.Lease/LeaseTimeToLive", pb.LeaseTimeToLiveRequest, pb.LeaseTimeToLiveResponse
)
STATUS = Method("/etcdserverpb.Maintenance/Status", pb.StatusRequest, pb.StatusResponse)
AUTHENTICATE = Method(
    "/etcdserverpb.Auth/Authenticate", pb.AuthenticateRequest, pb.AuthenticateResponse
)

_CHANNEL_OPTIONS = [
    # Large ranges and watch catch-ups come back in one message.
    ("grpc.max_receive_message_length", -1),
    # Notice a member that vanished without closing the connection (a watch would
    # otherwise wait on it forever). etcd accepts pings every 5 s while streams are open.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 0),
    # Come back quickly after a member restarts.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]

# Codes after which the request may not have reached etcd at all, or etcd could not
# serve it now: worth another member.
_UNAVAILABLE = frozenset({grpc.StatusCode.UNAVAILABLE})


class EtcdError(StoreError):
    """etcd answered with an error (the request was not applied)."""

    def __init__(self, method: str, code: grpc.StatusCode, detail: str) -> None:
        super().__init__(f"etcd {method.rpartition('/')[2]}: {detail} ({code.name})")
        self.code = code
        self.detail = detail


class EtcdUnavailable(StoreUnavailable):
    """No member answered in time; for a write, it may or may not have been applied."""


def translate(method: str, exc: grpc.aio.AioRpcError) -> StoreError:
    """The store error for a failed call of ``method``."""
    code, detail = exc.code(), exc.details() or ""
    # etcd answers a request cut short by a leader change with UNKNOWN
    # "context deadline exceeded": as unavailable as a timeout.
    timed_out = code is grpc.StatusCode.UNKNOWN and "deadline exceeded" in detail
    if code in _UNAVAILABLE or code is grpc.StatusCode.DEADLINE_EXCEEDED or timed_out:
        return EtcdUnavailable(f"etcd {method.rpartition('/')[2]}: {detail or code.name}")
    return EtcdError(method, code, detail)


class EtcdClient:
    """Channels to the members of one etcd cluster (see the module docstring)."""

    def __init__(self, config: EtcdConfig) -> None:
        self._config = config
        self._channels: list[grpc.aio.Channel] = []
        self._current = 0
        self._token = ""
        self._auth_lock = asyncio.Lock()
        self.server_version = ""

    @property
    def endpoint(self) -> str:
        """The member requests go to now."""
        return self._config.endpoints[self._current]

    # -- lifecycle ---------------------------------------------------------------------

    async def connect(self) -> None:
        """Opens a channel per member and finds one that answers (authenticating if
        configured) within ``connect_timeout``; raises `EtcdUnavailable` with every
        member's failure when none does, or `EtcdError` for a refused login."""
        config = self._config
        credentials = await asyncio.to_thread(self._credentials) if config.tls else None
        for endpoint in config.endpoints:
            if credentials is None:
                channel = grpc.aio.insecure_channel(endpoint, options=_CHANNEL_OPTIONS)
            else:
                channel = grpc.aio.secure_channel(endpoint, credentials, options=_CHANNEL_OPTIONS)
            self._channels.append(channel)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.connect_timeout
        failures: dict[str, str] = {}
        # A member that does not answer at all (no RST, no route) may hold one try for
        # this long; one that refuses connections fails at once.
        per_try = max(1.0, config.connect_timeout / len(config.endpoints))
        # Round after round over the members until one answers or time is up: a
        # member that is still starting may answer on the second try.
        while True:
            for index, endpoint in enumerate(config.endpoints):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    detail = "; ".join(f"{e}: {why}" for e, why in failures.items())
                    raise EtcdUnavailable(
                        f"no etcd member answered within {config.connect_timeout:g}s ({detail})"
                    )
                self._current = index
                try:
                    status = await self._status(min(remaining, per_try))
                except grpc.aio.AioRpcError as exc:
                    if exc.code() not in _UNAVAILABLE | {grpc.StatusCode.DEADLINE_EXCEEDED}:
                        raise translate(STATUS.path, exc) from exc
                    failures[endpoint] = _short(exc)
                    continue
                self.server_version = status.version
                _warn_about_old_etcd(status.version)
                if config.user:
                    await self._authenticate()
                return
            await asyncio.sleep(min(0.1, max(0.0, deadline - loop.time())))

    async def _status(self, timeout: float) -> pb.StatusResponse:
        stub = self._channels[self._current].unary_unary(
            STATUS.path,
            request_serializer=pb.StatusRequest.SerializeToString,
            response_deserializer=pb.StatusResponse.FromString,
        )
        response: pb.StatusResponse = await stub(pb.StatusRequest(), timeout=timeout)
        return response

    def _credentials(self) -> grpc.ChannelCredentials:
        config = self._config

        def read(name: str, path: str) -> bytes | None:
            if not path:
                return None
            try:
                return pathlib.Path(path).expanduser().read_bytes()
            except OSError as exc:
                raise StoreError(f"etcd {name} file {path}: {exc.strerror or exc}") from exc

        return grpc.ssl_channel_credentials(
            root_certificates=read("ca", config.ca_file),
            private_key=read("key", config.key_file),
            certificate_chain=read("cert", config.cert_file),
        )

    async def close(self) -> None:
        channels, self._channels = self._channels, []
        for channel in channels:
            await channel.close(None)

    # -- auth --------------------------------------------------------------------------

    async def _authenticate(self, stale: str = "") -> None:
        """Gets a token, unless another task already replaced the ``stale`` one."""
        async with self._auth_lock:
            if stale and self._token != stale:
                return
            config = self._config
            stub = self._channels[self._current].unary_unary(
                AUTHENTICATE.path,
                request_serializer=pb.AuthenticateRequest.SerializeToString,
                response_deserializer=pb.AuthenticateResponse.FromString,
            )
            request = pb.AuthenticateRequest(name=config.user, password=config.password)
            try:
                response: pb.AuthenticateResponse = await stub(request, timeout=config.timeout)
            except grpc.aio.AioRpcError as exc:
                if "authentication is not enabled" in (exc.details() or ""):
                    logger.warning(
                        "etcd at %s has authentication disabled; ignoring user %r",
                        self.endpoint,
                        config.user,
                    )
                    self._token = ""
                    return
                error = translate(AUTHENTICATE.path, exc)
                if isinstance(error, EtcdError):
                    raise EtcdError(
                        AUTHENTICATE.path, error.code, f"user {config.user!r}: {error.detail}"
                    ) from exc
                raise error from exc
            self._token = response.token

    def metadata(self, *, require_leader: bool = False) -> tuple[tuple[str, str], ...]:
        md: tuple[tuple[str, str], ...] = (("token", self._token),) if self._token else ()
        if require_leader:
            # A member cut off from the leader cancels the stream instead of keeping it
            # silent, so the watch moves to another member.
            md += (("hasleader", "true"),)
        return md

    # -- calls -------------------------------------------------------------------------

    async def call(self, method: Method[Req, Resp], request: Req, *, idempotent: bool) -> Resp:
        """One unary RPC with the request deadline, failover and re-authentication."""
        if not self._channels:
            raise EtcdUnavailable("etcd client is closed")
        attempts = len(self._channels) if idempotent else 1
        reauthenticated = False
        while True:
            token = self._token
            stub = self._channels[self._current].unary_unary(
                method.path,
                request_serializer=method.request.SerializeToString,
                response_deserializer=method.response.FromString,
            )
            try:
                response: Any = await stub(
                    request, timeout=self._config.timeout, metadata=self.metadata()
                )
                return response  # type: ignore[no-any-return]
            except grpc.aio.AioRpcError as exc:
                if self._invalid_token(exc) and not reauthenticated:
                    reauthenticated = True
                    await self._authenticate(stale=token)
                    continue
                if exc.code() in _UNAVAILABLE:
                    self.failover(f"{method.path}: {_short(exc)}")
                    attempts -= 1
                    if attempts > 0:
                        continue
                    if not idempotent:
                        raise EtcdUnavailable(
                            f"etcd {method.path.rpartition('/')[2]}: {_short(exc)}; "
                            "the write may or may not have been applied"
                        ) from exc
                raise translate(method.path, exc) from exc

    def open_stream(self, method: Method[Req, Resp]) -> grpc.aio.StreamStreamCall[Req, Resp]:
        """A bidirectional stream on the current member (no deadline)."""
        if not self._channels:
            raise EtcdUnavailable("etcd client is closed")
        stub = self._channels[self._current].stream_stream(
            method.path,
            request_serializer=method.request.SerializeToString,
            response_deserializer=method.response.FromString,
        )
        call: grpc.aio.StreamStreamCall[Req, Resp] = stub(
            None, metadata=self.metadata(require_leader=method is WATCH)
        )
        return call

    async def refresh_token(self, exc: grpc.aio.AioRpcError) -> bool:
        """After a stream failed: re-authenticates if the token was the reason."""
        if not self._invalid_token(exc):
            return False
        await self._authenticate(stale=self._token)
        return True

    def _invalid_token(self, exc: grpc.aio.AioRpcError) -> bool:
        return (
            bool(self._config.user)
            and exc.code() is grpc.StatusCode.UNAUTHENTICATED
            and "invalid auth token" in (exc.details() or "")
        )

    def failover(self, reason: str) -> None:
        """Sends the next requests to the next member."""
        if len(self._config.endpoints) == 1:
            return
        previous = self.endpoint
        self._current = (self._current + 1) % len(self._config.endpoints)
        logger.warning("etcd member %s failed (%s); trying %s", previous, reason, self.endpoint)


def _short(exc: grpc.aio.AioRpcError) -> str:
    detail = exc.details() or ""
    if "failed to connect to all addresses" in detail:
        # "...; last error: UNKNOWN: ipv4:127.0.0.1:1: Failed to connect to remote
        # host: Connection refused": the last part is the news.
        detail = detail.rpartition(": ")[2]
    return f"{exc.code().name}: {detail}".rstrip(": ")


_warned_old_etcd = False


def _warn_about_old_etcd(version: str) -> None:
    global _warned_old_etcd
    try:
        parts = tuple(int(p) for p in version.split(".")[:3])
    except ValueError:
        return
    if _warned_old_etcd or len(parts) != 3 or parts >= (3, 5, 8) or (3, 4, 25) <= parts < (3, 5):
        return
    _warned_old_etcd = True
    logger.warning(
        "etcd %s may send a watch progress notification ahead of events (fixed in 3.4.25 "
        "and 3.5.8); the store holds notifications briefly, but prefer a newer etcd",
        version,
    )
