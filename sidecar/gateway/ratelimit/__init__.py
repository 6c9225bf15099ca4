"""Rate limits for gateway routes: token buckets per route, policy and key,
local to each gateway or shared by every replica through Redis. See the
"Rate limiting" section of docs/gateway.md.

The server builds one :class:`LocalBuckets` and, when the configuration has
a ``rate_limit_store``, one :class:`RateLimitStore` (``start()``/``close()``),
then a :class:`RateLimiter` per limited route. Per request:
``decision = await limiter.decide(request)``; ``refusal(decision)`` is the
answer when it refuses, and ``headers(decision)`` go on every response of
the route (the upstream's too).
"""

from sidecar.gateway.ratelimit._config import (
    MAX_POLICIES,
    RateLimitConfig,
    RateLimitPolicies,
    RateLimitStoreConfig,
)
from sidecar.gateway.ratelimit._local import DEFAULT_MAX_BUCKETS, Decision, LocalBuckets
from sidecar.gateway.ratelimit._plugin import RateLimiter, headers, key_function, refusal
from sidecar.gateway.ratelimit._redis import BUCKET_SCRIPT, RateLimitStore

__all__ = [
    "BUCKET_SCRIPT",
    "DEFAULT_MAX_BUCKETS",
    "MAX_POLICIES",
    "Decision",
    "LocalBuckets",
    "RateLimitConfig",
    "RateLimitPolicies",
    "RateLimitStore",
    "RateLimitStoreConfig",
    "RateLimiter",
    "headers",
    "key_function",
    "refusal",
]
