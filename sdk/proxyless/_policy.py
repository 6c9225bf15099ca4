"""What a proxyless channel may retry, and the small values its calls share.

A failed unary attempt is retried on another endpoint only after
UNAVAILABLE, and only when that cannot run the method twice: the method is
idempotent (a set of paths or a predicate, given by the application), or
the request provably never left this process (the connection could not be
made). :func:`should_retry` is that decision; the call loop in
``sdk.proxyless._calls`` applies it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc

from sdk._errors import EcoError

__all__ = [
    "ENDPOINT_FAILURES",
    "CallOptions",
    "CallPolicy",
    "IdempotentSpec",
    "code_of",
    "idempotency",
    "never_sent",
    "rpc_status",
    "should_retry",
]

#: Method paths (``"/pkg.Service/Method"``, or ``"/pkg.Service/*"`` for all of a
#: service's methods) or a predicate over the path.
IdempotentSpec = Iterable[str] | Callable[[str], bool]

# Outcomes that say something about the endpoint rather than the request;
# they count as failures for the balancer (p2c_ewma's latency penalty).
ENDPOINT_FAILURES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
    }
)

# gRPC fails a call with these details when its channel could not connect
# (refused, unresolvable, in reconnect backoff): no byte of the request was
# sent, so trying another endpoint cannot run the method twice. A connection
# that broke under a call reads differently ("Socket closed", "Cancelling all
# calls", "Connection reset") and is not in this list.
_NEVER_SENT = (
    "failed to connect to all addresses",
    "connection refused",
    "dns resolution failed",
)


def never_sent(code: grpc.StatusCode | None, details: str | None) -> bool:
    """True when a failed call provably never reached a server (could not connect)."""
    if code is not grpc.StatusCode.UNAVAILABLE or not details:
        return False
    lowered = details.lower()
    return any(marker in lowered for marker in _NEVER_SENT)


def should_retry(code: grpc.StatusCode | None, details: str | None, *, idempotent: bool) -> bool:
    """Whether a failed attempt may be repeated on another endpoint.

    Only UNAVAILABLE is retried: for an idempotent method always, for any
    other only when the request was never sent. Everything else (deadline,
    the application's own codes) goes to the caller.
    """
    if code is not grpc.StatusCode.UNAVAILABLE:
        return False
    return idempotent or never_sent(code, details)


def _none_idempotent(method: str) -> bool:
    return False


def idempotency(spec: IdempotentSpec | None) -> Callable[[str], bool]:
    """A predicate over method paths from a set of paths, or a predicate itself.

    Paths look like ``"/pkg.Service/Method"``; ``"/pkg.Service/*"`` covers every
    method of a service. An entry that is not such a path is a ValueError.
    """
    if spec is None:
        return _none_idempotent
    if callable(spec):
        return spec
    if isinstance(spec, str):
        raise TypeError("idempotent takes a collection of method paths, not one string")
    exact: set[str] = set()
    services: set[str] = set()
    for path in spec:
        service, sep, method = path[1:].rpartition("/")
        if not path.startswith("/") or not sep or not service or not method:
            raise ValueError(f"idempotent method {path!r} is not '/package.Service/Method'")
        if method == "*":
            services.add(f"/{service}/")
        else:
            exact.add(path)
    if not exact and not services:
        return _none_idempotent

    def predicate(method: str) -> bool:
        return method in exact or method[: method.rfind("/") + 1] in services

    return predicate


@dataclass(frozen=True, slots=True)
class CallPolicy:
    """How calls of one proxyless channel pick and retry (validated by the channel)."""

    max_attempts: int = 3
    idempotent: Callable[[str], bool] = _none_idempotent
    #: the metadata entry whose value is the request key given to ``pick(key)``
    key_metadata: str | None = None
    #: how long a call without a timeout waits for the first endpoint list
    resolve_timeout: float = 5.0
    #: full-jitter backoff before an attempt that must reuse a tried endpoint
    backoff_initial: float = 0.025
    backoff_max: float = 0.5
    _rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def key_of(self, metadata: Any) -> str | bytes | None:
        name = self.key_metadata
        if name is None or not metadata:
            return None
        for key, value in metadata:
            if key == name:
                return value  # type: ignore[no-any-return]
        return None

    def reuse_delay(self, reuses: int) -> float:
        return self._rng.uniform(0.0, min(self.backoff_max, self.backoff_initial * 2**reuses))


@dataclass(frozen=True, slots=True)
class CallOptions:
    """The per-call arguments of a multicallable, as grpc.aio takes them."""

    timeout: float | None
    metadata: Any
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


def rpc_status(err: grpc.RpcError) -> tuple[grpc.StatusCode | None, str]:
    """The status code and details of a gRPC error, whatever kind of call raised it."""
    code = getattr(err, "code", None)
    details = getattr(err, "details", None)
    status = code() if callable(code) else None
    text = details() if callable(details) else None
    return (status if isinstance(status, grpc.StatusCode) else None), (text or "")


def code_of(error: BaseException | None) -> grpc.StatusCode:
    """The status a call reports when it ended without a gRPC answer."""
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    if isinstance(error, EcoError):
        return grpc.StatusCode.__members__.get(error.code, grpc.StatusCode.UNKNOWN)
    return grpc.StatusCode.UNKNOWN
