"""Tokens at the sidecar's own listeners off loopback: who may call them, and for what.

The local API, the admin endpoints and the HTTP bridges, when they listen off
loopback, check the token each client presents (``Authorization: Bearer
<secret>``) against the same rules as the control plane (``serving.acl``). The
sidecar does not keep tokens: it asks the control plane to resolve each one
(``AclService/ResolveToken``, called *as* that token) and keeps the answer for
:data:`CACHE_SECONDS`, so that a deleted token or a changed policy applies here
within about a second, as it does at the control plane. The control plane's
``--acl allow|deny`` decides too: under ``allow`` a client without a token is
let through, as it would be at the control plane.

When the control plane cannot be reached, a token resolved before keeps its
last answer (so a sidecar cut off from the control plane keeps serving the
clients it knew); a token never seen is refused with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from ecosystem.v1 import acl_pb2

from sdk import ChannelFactory
from sdk import DeadlineExceededError as SdkDeadlineExceededError
from sdk import UnauthenticatedError as SdkUnauthenticatedError
from sdk import UnavailableError as SdkUnavailableError
from sdk.lowlevel import Transport
from serving.acl import (
    MESSAGING_NEEDS,
    Need,
    PermissionDeniedError,
    Rule,
    allows,
    bearer_secret,
    denied,
    service_need,
)
from serving.errors import (
    ServiceError,
    UnauthenticatedError,
    UnavailableError,
    end_call,
    to_status,
)
from serving.interceptors import WrappingInterceptor
from sidecar.listener_tls import ListenerTls

__all__ = [
    "CACHE_SECONDS",
    "Grant",
    "Guard",
    "TokenChecker",
    "TokenInterceptor",
    "local_api_needs",
]

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]

#: How long a resolved token is believed before the control plane is asked again.
CACHE_SECONDS = 1.0
#: Tokens remembered at once (the least recently used go first).
CACHE_MAX = 4096
#: Resolutions in flight at once: a flood of unknown tokens waits here, not at
#: the control plane.
RESOLVING_MAX = 16
#: The time one resolution may take.
RESOLVE_TIMEOUT = 2.0

_RESOLVE = "ResolveToken"


@dataclass(frozen=True, slots=True)
class Grant:
    """What one presented token (or none) may do: its rules, and the control
    plane's default where none decides; ``who`` names it in logs (accessor id)."""

    rules: tuple[Rule, ...]
    default_allow: bool
    who: str

    def refusal(self, needs: Sequence[Need]) -> Need | None:
        for need in needs:
            if not allows(self.rules, need, default_allow=self.default_allow):
                return need
        return None


class TokenChecker:
    """Resolves presented tokens through the control plane, with a short cache."""

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        channel_factory: ChannelFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._transport = Transport(
            addresses, timeout=RESOLVE_TIMEOUT, channel_factory=channel_factory
        )
        self._clock = clock
        # digest -> (believed until, grant or the refusal to repeat)
        self._cache: OrderedDict[str, tuple[float, Grant | UnauthenticatedError]] = OrderedDict()
        self._pending: dict[str, asyncio.Future[Grant | UnauthenticatedError]] = {}
        self._resolving = asyncio.Semaphore(RESOLVING_MAX)
        self.resolutions = 0

    async def check(self, secret: str, needs: Sequence[Need]) -> Grant:
        """The grant of ``secret`` ("" for none) when it has every need; raises
        UnauthenticatedError (no token where one is required, or an unknown
        one), PermissionDeniedError naming the missing right, or
        UnavailableError (the control plane unreachable, the token unknown here)."""
        grant = await self.resolve(secret)
        missing = grant.refusal(needs)
        if missing is not None:
            raise denied(missing)
        return grant

    async def resolve(self, secret: str) -> Grant:
        digest = hashlib.sha256(secret.encode()).hexdigest()
        cached = self._cache.get(digest)
        now = self._clock()
        if cached is not None and cached[0] > now:
            self._cache.move_to_end(digest)
            return _outcome(cached[1])
        pending = self._pending.get(digest)
        if pending is not None:  # another request asks for the same token: wait for its answer
            return _outcome(await asyncio.shield(pending))
        pending = asyncio.get_running_loop().create_future()
        self._pending[digest] = pending
        try:
            outcome = await self._ask(secret, cached)
        except BaseException as exc:
            pending.set_exception(
                UnavailableError("the token check was interrupted: try again")
                if isinstance(exc, asyncio.CancelledError)
                else exc
            )
            pending.exception()  # retrieved: only the waiters (if any) re-raise it
            raise
        else:
            self._remember(digest, outcome)
            pending.set_result(outcome)
        finally:
            del self._pending[digest]
        return _outcome(outcome)

    async def _ask(
        self, secret: str, stale: tuple[float, Grant | UnauthenticatedError] | None
    ) -> Grant | UnauthenticatedError:
        async with self._resolving:
            self.resolutions += 1
            try:
                answer = await self._transport.unary(
                    _RESOLVE, acl_pb2.ResolveTokenRequest(), idempotent=True, token=secret
                )
            except SdkUnauthenticatedError as err:
                if not secret:
                    return UnauthenticatedError(
                        "this listener requires a token (the control plane runs --acl deny): "
                        "send Authorization: Bearer <secret>"
                    )
                return UnauthenticatedError(err.message or "the token is not valid")
            except (SdkUnavailableError, SdkDeadlineExceededError) as err:
                if stale is not None:
                    return stale[1]  # the last answer stands while the control plane is away
                raise UnavailableError(
                    "cannot check the token: the control plane is unreachable "
                    f"({err.message or err.code})"
                ) from None
        return Grant(
            tuple(Rule(r.resource, r.pattern, r.access) for r in answer.rules),
            answer.default_allow,
            answer.token.accessor_id or "anonymous",
        )

    def _remember(self, digest: str, outcome: Grant | UnauthenticatedError) -> None:
        self._cache[digest] = (self._clock() + CACHE_SECONDS, outcome)
        self._cache.move_to_end(digest)
        while len(self._cache) > CACHE_MAX:
            self._cache.popitem(last=False)

    async def close(self) -> None:
        await self._transport.close()


def _outcome(outcome: Grant | UnauthenticatedError) -> Grant:
    if isinstance(outcome, UnauthenticatedError):
        raise UnauthenticatedError(str(outcome))
    return outcome


@dataclass(frozen=True, slots=True)
class Guard:
    """What guards one listener off loopback: the TLS it serves (None with
    ``insecure: true``) and the checker of the tokens its clients present.
    Listeners on loopback have none: they are open to this host, as before."""

    tls: ListenerTls | None
    tokens: TokenChecker

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"


#: What each RPC of a sidecar's local API needs when the API is off loopback.
#: ``UpdateTTL`` names a local service without its namespace: ``namespace_of``
#: gives it (see :func:`local_api_needs`).
def local_api_needs(
    namespace_of: Callable[[str], str],
) -> dict[str, Callable[[Any], Sequence[Need]]]:
    sidecar = "/ecosystem.v1.SidecarService/"
    needs: dict[str, Callable[[Any], Sequence[Need]]] = {
        sidecar + "ResolveEndpoints": lambda r: [service_need(r.service, r.namespace, "read")],
        sidecar + "PickEndpoint": lambda r: [service_need(r.service, r.namespace, "read")],
        sidecar + "WatchEndpoints": lambda r: [service_need(r.service, r.namespace, "read")],
        sidecar + "ReportResult": lambda r: [Need("service", "*", "read", anywhere=True)],
        sidecar + "UpdateTTL": lambda r: [
            service_need(r.service, namespace_of(r.service), "write")
        ],
        "/grpc.health.v1.Health/Check": lambda r: [],
        "/grpc.health.v1.Health/Watch": lambda r: [],
        "/grpc.health.v1.Health/List": lambda r: [],
        # A client stream: checked once, when the call starts (``r`` is None).
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": lambda r: [
            Need("operator", "reflection", "read")
        ],
    }
    for name, of in MESSAGING_NEEDS.items():
        needs["/ecosystem.v1.MessagingService/" + name] = of
    return needs


class TokenInterceptor(WrappingInterceptor):
    """Checks the token of every call to a gRPC listener off loopback against
    ``needs`` (method → the rights its request needs). A method without an
    entry is refused to everyone; a client stream is checked when it starts
    (its needs are given ``None`` for a request). Put it after
    ``serving.rpc_guard.MalformedRequestGuard``: requests reach it decoded."""

    def __init__(
        self, checker: TokenChecker, needs: Mapping[str, Callable[[Any], Sequence[Need]]]
    ) -> None:
        super().__init__()
        self._checker = checker
        self._needs = needs

    async def _admit(self, method: str, request: Any, context: Any) -> bool:
        needs_of = self._needs.get(method)
        try:
            if needs_of is None:
                raise PermissionDeniedError(f"{method} has no access rule: refused to every token")
            needs = needs_of(request)
            if needs:  # none: open to every caller (health)
                secret = bearer_secret(context.invocation_metadata())
                await self._checker.check(secret, needs)
        except ServiceError as exc:
            end_call(context, to_status(exc))
            return False
        return True

    def wrap(self, method: str, handler: Handler) -> Handler:
        admit = self._admit
        decode, encode = handler.request_deserializer, handler.response_serializer
        if handler.unary_unary is not None:
            behavior: Any = handler.unary_unary

            async def unary_unary(request: Any, context: Any) -> Any:
                if not await admit(method, request, context):
                    return None
                return await behavior(request, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, decode, encode)
        if handler.unary_stream is not None:
            streaming: Any = handler.unary_stream
            if not inspect.isasyncgenfunction(streaming):  # writes through the context

                async def unary_stream_ctx(request: Any, context: Any) -> Any:
                    if not await admit(method, request, context):
                        return None
                    return await streaming(request, context)

                return grpc.unary_stream_rpc_method_handler(unary_stream_ctx, decode, encode)

            async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                if not await admit(method, request, context):
                    return
                async for response in streaming(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(unary_stream, decode, encode)

        if handler.stream_unary is not None:
            client_stream: Any = handler.stream_unary

            async def stream_unary(requests: Any, context: Any) -> Any:
                if not await admit(method, None, context):
                    return None
                return await client_stream(requests, context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, decode, encode)
        both: Any = handler.stream_stream

        async def stream_stream(requests: Any, context: Any) -> Any:
            if not await admit(method, None, context):
                return None
            result = both(requests, context)
            if hasattr(result, "__aiter__"):
                async for response in result:
                    await context.write(response)
                return None
            return await result

        return grpc.stream_stream_rpc_method_handler(stream_stream, decode, encode)
