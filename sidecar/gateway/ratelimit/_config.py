"""The rate limit policies a route names, and the Redis store that global ones share."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, model_validator

from sidecar.health import Duration

__all__ = ["MAX_POLICIES", "RateLimitConfig", "RateLimitPolicies", "RateLimitStoreConfig"]

#: Policies one route may have.
MAX_POLICIES = 8
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
_KEY_PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RateLimitConfig(_Model):
    """One token-bucket policy of a route (``plugins.rate_limit``).

    The bucket holds at most ``burst`` tokens and refills continuously at
    ``rate`` tokens per ``per``; each request takes one token or is refused
    with 429. ``rate: 100, per: 1s, burst: 20``: 100 requests a second
    sustained, one token back every 10 ms, and at most 20 at once after an
    idle moment. ``burst`` defaults to ``rate`` (a whole ``per``'s worth at
    once). ``key`` says whose bucket a request takes from; ``scope: global``
    shares the buckets between every gateway through the ``rate_limit_store``
    and must say what happens while that store is unreachable
    (``on_store_error``).
    """

    rate: StrictInt = Field(ge=1, le=1_000_000_000)
    per: Duration = 1.0
    burst: StrictInt | None = Field(default=None, ge=1, le=1_000_000_000)
    #: consumer | ip | route | header:<name>
    key: str = "consumer"
    scope: Literal["local", "global"] = "local"
    #: required with scope: global; refused with scope: local (where it means nothing)
    on_store_error: Literal["allow", "deny"] | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not 0.001 <= self.per <= 86_400 * 366:
            raise ValueError("per must be from 1ms to 366d")
        kind, sep, name = self.key.partition(":")
        if sep:
            if kind != "header" or not _HEADER_NAME.fullmatch(name):
                raise ValueError(
                    f"key {self.key!r}: write header:<name> with a header field name, "
                    "or consumer, ip or route"
                )
        elif kind not in ("consumer", "ip", "route"):
            raise ValueError(f"key {self.key!r} must be consumer, ip, route or header:<name>")
        if self.scope == "global" and self.on_store_error is None:
            raise ValueError(
                "on_store_error is required with scope: global: say whether requests are "
                "allowed or denied (503) while the rate_limit_store is unreachable"
            )
        if self.scope == "local" and self.on_store_error is not None:
            raise ValueError("on_store_error applies to scope: global only")
        return self

    @property
    def capacity(self) -> int:
        """The bucket's size: ``burst``, or ``rate`` when no burst is given."""
        return self.rate if self.burst is None else self.burst

    @property
    def interval(self) -> float:
        """Seconds for one token to come back: ``per / rate``."""
        return self.per / self.rate


def _one_or_many(value: Any) -> Any:
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list | tuple) and len(value) > MAX_POLICIES:
        raise ValueError(f"at most {MAX_POLICIES} rate limit policies are allowed per route")
    return value


#: A route's ``rate_limit``: one policy (a mapping) or a list of them, each
#: with buckets of its own; a request must be allowed by every one.
RateLimitPolicies = Annotated[
    tuple[RateLimitConfig, ...], BeforeValidator(_one_or_many), Field(min_length=1)
]


class RateLimitStoreConfig(_Model):
    """The Redis that ``scope: global`` policies share (top-level ``rate_limit_store``).

    ``timeout`` bounds every decision that asks the store (connecting
    included); after a failure the store is skipped, and each policy's
    ``on_store_error`` applies at once, until a probe every ``probe_interval``
    finds it back.
    """

    #: redis://[user:password@]host:port[/db], rediss:// (TLS) or unix:///path
    url: str
    timeout: Duration = 0.05
    probe_interval: Duration = 1.0
    max_connections: StrictInt = Field(default=32, ge=1, le=10_000)
    #: the first part of every key: eco:rl:<route>:<policy>:<key>
    key_prefix: str = "eco:rl"

    @model_validator(mode="after")
    def _check(self) -> Self:
        parts = urlsplit(self.url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                "url must start with redis://, rediss:// or unix:// "
                f"(got {parts.scheme + '://' if parts.scheme else 'no scheme'})"
            )
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("url has no host: write e.g. redis://127.0.0.1:6379")
        if not 0.001 <= self.timeout <= 10:
            raise ValueError("timeout must be from 1ms to 10s")
        if not 0.01 <= self.probe_interval <= 60:
            raise ValueError("probe_interval must be from 10ms to 60s")
        if not _KEY_PREFIX.fullmatch(self.key_prefix):
            raise ValueError("key_prefix: 1 to 64 letters, digits, '_', '.', ':' or '-'")
        return self
