"""The gateway's authentication plugins: ``key_auth``, ``jwt``, ``hmac``, ``mtls``,
the ``allow`` list that follows them, and the consumers they identify.

Each plugin is built from its config model and a :class:`ConsumerIndex`;
per request, ``await plugin.authenticate(request)`` sets
``request.consumer`` and returns None, or returns the 401/403 to send
(:class:`AuthChain` combines several on one route). The gateway removes
:data:`IDENTITY_HEADERS` from every incoming request and adds
:func:`identity_headers` once a plugin authenticated it. See the
"Authentication" section of docs/gateway.md.
"""

from sidecar.gateway.auth._allow import AllowConfig, ConsumerAllowList
from sidecar.gateway.auth._base import AuthChain, AuthPlugin
from sidecar.gateway.auth._consumers import (
    IDENTITY_HEADERS,
    ConsumerConfig,
    ConsumerIndex,
    consumer_problems,
    identity_headers,
)
from sidecar.gateway.auth._hmac import (
    HmacAuth,
    HmacConfig,
    SignatureError,
    content_digest,
    sign,
    signature_base,
)
from sidecar.gateway.auth._jwks import JwksCache, JwksError, KeySet
from sidecar.gateway.auth._jwt import JwtAuth, JwtConfig
from sidecar.gateway.auth._key_auth import KeyAuth, KeyAuthConfig
from sidecar.gateway.auth._mtls import MtlsAuth, MtlsConfig

__all__ = [
    "IDENTITY_HEADERS",
    "AllowConfig",
    "AuthChain",
    "AuthPlugin",
    "ConsumerAllowList",
    "ConsumerConfig",
    "ConsumerIndex",
    "HmacAuth",
    "HmacConfig",
    "JwksCache",
    "JwksError",
    "JwtAuth",
    "JwtConfig",
    "KeyAuth",
    "KeyAuthConfig",
    "KeySet",
    "MtlsAuth",
    "MtlsConfig",
    "SignatureError",
    "consumer_problems",
    "content_digest",
    "identity_headers",
    "sign",
    "signature_base",
]
