"""``jwt``: bearer tokens (RFC 7519) signed by an identity provider.

::

    plugins:
      jwt:
        jwks_url: "https://idp.example.com/.well-known/jwks.json"   # and/or keys: [...]
        issuer: "https://idp.example.com/"
        audience: orders-api
        clock_skew: 30s

The token comes from ``Authorization: Bearer …`` (or the ``cookie`` or
``query`` parameter named). Its signature is checked with a key from
``keys`` (JWKs or PEM), the JWKS URL (:class:`JwksCache`), or ``secret`` for
HS256/384/512; ``exp`` (required by default), ``nbf``, ``iss`` and ``aud``
are checked with ``clock_skew``. ``none`` is never accepted, HS* only with a
``secret``, and a key only verifies the algorithms of its type.

The consumer is the value of ``consumer_claim`` (``sub``): a configured
consumer of that name lends its groups; with ``known_consumers_only`` a
name that is not configured is refused with 403, otherwise it becomes a
consumer without groups (plus ``groups_claim`` when set).

Refusals follow RFC 6750 §3: no token is 401 with ``WWW-Authenticate:
Bearer realm="gateway"``; a bad one is 401 with ``error="invalid_token"``
and an ``error_description`` saying what was wrong. Tokens already verified
are remembered (by digest, bounded, until they expire or the key set changes),
so a client reusing its token costs a hash and a dict lookup.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Self

import jwt
from jwt.exceptions import (
    ExpiredSignatureError,
    ImmatureSignatureError,
    InvalidAlgorithmError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidSignatureError,
    InvalidSubjectError,
    InvalidTokenError,
    MissingRequiredClaimError,
)
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from sidecar.gateway.auth._base import DEFAULT_REALM, check_realm, forbidden, quoted, unauthorized
from sidecar.gateway.auth._consumers import ConsumerIndex, _secret_bytes, is_usable_name
from sidecar.gateway.auth._jwks import JwksCache, JwksError, KeySet, SigningKey, jwk_from_pem
from sidecar.gateway.request import Consumer, GatewayRequest, LocalResponse
from sidecar.health import Duration

__all__ = ["ASYMMETRIC_ALGORITHMS", "HMAC_ALGORITHMS", "JwtAuth", "JwtConfig"]

ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
MIN_SECRET_BYTES = 32
MAX_INLINE_KEYS = 100
MAX_GROUPS_FROM_CLAIM = 64
DEFAULT_MAX_TOKEN_BYTES = 8192
VERIFIED_CACHE_SIZE = 10_000


class JwtConfig(BaseModel):
    """Every key of the ``jwt`` plugin; docs/gateway.md explains each."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    jwks_url: AnyHttpUrl | None = None
    keys: Annotated[tuple[dict[str, Any] | str, ...], Field(max_length=MAX_INLINE_KEYS)] = ()
    secret: SecretStr | None = None
    issuer: str | tuple[str, ...] | None = None
    audience: str | tuple[str, ...] | None = None
    #: None: every asymmetric algorithm when there are keys, HS* when there is a secret
    algorithms: tuple[str, ...] | None = None
    required_claims: tuple[str, ...] = ("exp",)
    clock_skew: Duration = 30.0
    header: str | None = "authorization"
    cookie: str | None = None
    query: str | None = None
    consumer_claim: str = "sub"
    groups_claim: str | None = None
    known_consumers_only: bool = False
    hide_credentials: bool = False
    max_token_bytes: Annotated[int, Field(ge=256, le=65536)] = DEFAULT_MAX_TOKEN_BYTES
    realm: str = DEFAULT_REALM
    jwks_refresh: Duration = 300.0
    jwks_refresh_min: Duration = 30.0
    jwks_refresh_max: Duration = 3600.0
    jwks_timeout: Duration = 5.0
    jwks_ca_file: Path | None = None

    _realm = field_validator("realm")(check_realm)

    @field_validator("keys")
    @classmethod
    def _check_keys(
        cls, value: tuple[dict[str, Any] | str, ...]
    ) -> tuple[dict[str, Any] | str, ...]:
        for position, key in enumerate(value):
            try:
                SigningKey(jwk_from_pem(key) if isinstance(key, str) else key)
            except JwksError as exc:
                raise ValueError(f"key #{position + 1}: {exc}") from None
        return value

    @field_validator("secret")
    @classmethod
    def _check_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(_secret_bytes(value.get_secret_value())) < MIN_SECRET_BYTES:
            raise ValueError(
                f"at least {MIN_SECRET_BYTES} bytes (write binary secrets as 'base64:…')"
            )
        return value

    @field_validator("algorithms")
    @classmethod
    def _check_algorithms(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return value
        known = (*ASYMMETRIC_ALGORITHMS, *HMAC_ALGORITHMS)
        for alg in value:
            if alg not in known:
                hint = " (unsigned tokens are never accepted)" if alg.lower() == "none" else ""
                raise ValueError(f"{alg!r} is not an accepted algorithm{hint}: {', '.join(known)}")
        if not value:
            raise ValueError("name at least one algorithm")
        return value

    @field_validator("clock_skew")
    @classmethod
    def _check_skew(cls, value: float) -> float:
        if not 0 <= value <= 600:
            raise ValueError("from 0s to 10m")
        return value

    @field_validator("jwks_refresh", "jwks_refresh_min", "jwks_refresh_max", "jwks_timeout")
    @classmethod
    def _check_positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value

    @field_validator("consumer_claim", "groups_claim")
    @classmethod
    def _check_claim(cls, value: str | None) -> str | None:
        if value is not None and not 0 < len(value) <= 64:
            raise ValueError("a claim name of 1 to 64 characters")
        return value

    @field_validator("header", "cookie", "query")
    @classmethod
    def _check_place(cls, value: str | None) -> str | None:
        if value is not None and not (
            0 < len(value) <= 64 and value.isascii() and value.isprintable()
        ):
            raise ValueError("a name of 1 to 64 printable ASCII characters")
        return None if value is None else value

    @model_validator(mode="after")
    def _check_together(self) -> Self:
        if self.jwks_url is None and not self.keys and self.secret is None:
            raise ValueError(
                "give the keys that sign tokens: 'jwks_url', 'keys' (JWKs or PEM) or 'secret' (HS*)"
            )
        if self.header is None and self.cookie is None and self.query is None:
            raise ValueError("give 'header', 'cookie' or 'query': where the token is sent")
        if self.algorithms is not None:
            hs = [a for a in self.algorithms if a in HMAC_ALGORITHMS]
            if hs and self.secret is None:
                raise ValueError(
                    f"algorithms: {', '.join(hs)} need 'secret' (a shared secret); "
                    "tokens signed with a public key use RS*, PS*, ES* or EdDSA"
                )
            asym = [a for a in self.algorithms if a not in HMAC_ALGORITHMS]
            if asym and self.jwks_url is None and not self.keys:
                raise ValueError(f"algorithms: {', '.join(asym)} need 'jwks_url' or 'keys'")
        if self.jwks_refresh_min > self.jwks_refresh_max:
            raise ValueError("jwks_refresh_min is greater than jwks_refresh_max")
        return self

    def effective_algorithms(self) -> tuple[str, ...]:
        if self.algorithms is not None:
            return self.algorithms
        found: tuple[str, ...] = ()
        if self.jwks_url is not None or self.keys:
            found += ASYMMETRIC_ALGORITHMS
        if self.secret is not None:
            found += HMAC_ALGORITHMS
        return found

    def make_jwks(self) -> JwksCache | None:
        """The :class:`JwksCache` for ``jwks_url`` (None without one); not started."""
        if self.jwks_url is None:
            return None
        return JwksCache(
            str(self.jwks_url),
            refresh=self.jwks_refresh,
            refresh_min=self.jwks_refresh_min,
            refresh_max=self.jwks_refresh_max,
            timeout=self.jwks_timeout,
            ca_file=self.jwks_ca_file,
        )


_MESSAGES: tuple[tuple[type[InvalidTokenError], str], ...] = (
    (ExpiredSignatureError, "the token has expired"),
    (ImmatureSignatureError, "the token is not valid yet"),
    (InvalidIssuerError, "the token's issuer is not accepted"),
    (InvalidAudienceError, "the token's audience is not accepted"),
    (InvalidSignatureError, "the token's signature does not verify"),
    (InvalidAlgorithmError, "the token's algorithm is not accepted"),
    (InvalidSubjectError, "the token's 'sub' claim is not a string"),
)


def _describe(error: InvalidTokenError) -> str:
    if isinstance(error, MissingRequiredClaimError):
        return f"the token has no {error.claim!r} claim"
    for kind, message in _MESSAGES:
        if isinstance(error, kind):
            return message
    return "the token is malformed"


class _Verified:
    __slots__ = ("consumer", "expires", "not_before")

    def __init__(self, consumer: Consumer, expires: float, not_before: float) -> None:
        self.consumer = consumer
        self.expires = expires
        self.not_before = not_before


class JwtAuth:
    """The ``jwt`` plugin (module docstring). With a ``jwks_url`` it owns a
    :class:`JwksCache` unless given one to share (``jwks=``): ``start()`` and
    ``close()`` start and close the one it owns."""

    name = "jwt"
    needs_body = False

    def __init__(
        self, config: JwtConfig, consumers: ConsumerIndex, *, jwks: JwksCache | None = None
    ) -> None:
        self._config = config
        self._consumers = consumers
        self._algorithms = frozenset(config.effective_algorithms())
        self._owns_jwks = jwks is None
        self.jwks = jwks if jwks is not None else config.make_jwks()
        self._inline = KeySet(
            SigningKey(jwk_from_pem(k) if isinstance(k, str) else k) for k in config.keys
        )
        self._secret = (
            _secret_bytes(config.secret.get_secret_value()) if config.secret is not None else b""
        )
        self._options: dict[str, Any] = {
            "require": list(config.required_claims),
            "verify_aud": config.audience is not None,
            "verify_iss": config.issuer is not None,
        }
        self._issuer = config.issuer
        self._audience = config.audience
        self._verified: OrderedDict[bytes, _Verified] = OrderedDict()
        self._verified_version = -1
        self._challenge = f"Bearer realm={quoted(config.realm)}"
        self._bearer_header = config.header == "authorization"

    async def start(self) -> None:
        if self.jwks is not None and self._owns_jwks:
            await self.jwks.start()

    async def close(self) -> None:
        if self.jwks is not None and self._owns_jwks:
            await self.jwks.close()

    def challenge(self) -> str:
        return self._challenge

    def _token(self, request: GatewayRequest) -> tuple[str | None, str]:
        """The token and where it was found ("header", "cookie", "query")."""
        config = self._config
        if config.header is not None:
            value = request.headers.get(config.header)
            if value is not None:
                if self._bearer_header:
                    scheme, _, token = value.strip().partition(" ")
                    if scheme.lower() == "bearer":
                        return token.strip(), "header"
                else:
                    return value.strip(), "header"
        if config.cookie is not None:
            for header in request.headers.get_all("cookie"):
                for pair in header.split(";"):
                    name, _, value = pair.strip().partition("=")
                    if name == config.cookie:
                        return value.strip(), "cookie"
        if config.query is not None and request.query:
            for pair in request.query.split("&"):
                name, _, value = pair.partition("=")
                if name == config.query:
                    return value, "query"
        return None, ""

    def present(self, request: GatewayRequest) -> bool:
        return self._token(request)[0] is not None

    def _invalid(self, description: str) -> LocalResponse:
        challenge = (
            f'{self._challenge}, error="invalid_token", error_description={quoted(description)}'
        )
        return unauthorized("invalid_token", description, (challenge,))

    def accept_cached(self, request: GatewayRequest) -> bool:
        """Accepts a token verified before and still valid, without waiting
        (sets ``request.consumer``): True; False when :meth:`authenticate` must
        look at it."""
        token, where = self._token(request)
        if not token or len(token) > self._config.max_token_bytes:
            return False
        jwks = self.jwks
        if jwks is not None and jwks.version != self._verified_version:
            return False
        digest = hashlib.sha256(token.encode("utf-8", "replace")).digest()
        hit = self._verified.get(digest)
        now = time.time()
        skew = self._config.clock_skew
        if hit is None or not hit.not_before - skew <= now < hit.expires + skew:
            return False
        self._verified.move_to_end(digest)
        self._accept(request, hit.consumer, where)
        return True

    async def authenticate(self, request: GatewayRequest) -> LocalResponse | None:
        token, where = self._token(request)
        if not token:
            return unauthorized("unauthenticated", "a bearer token is required", (self._challenge,))
        if len(token) > self._config.max_token_bytes:
            return self._invalid(f"the token is longer than {self._config.max_token_bytes} bytes")
        now = time.time()
        skew = self._config.clock_skew
        digest = hashlib.sha256(token.encode("utf-8", "replace")).digest()
        jwks = self.jwks
        if jwks is not None and jwks.version != self._verified_version:
            self._verified.clear()
            self._verified_version = jwks.version
        hit = self._verified.get(digest)
        if hit is not None and hit.not_before - skew <= now < hit.expires + skew:
            self._verified.move_to_end(digest)
            self._accept(request, hit.consumer, where)
            return None

        try:
            header = jwt.get_unverified_header(token)
        except InvalidTokenError:
            return self._invalid("the token is malformed")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            return self._invalid(f"the token's algorithm {str(alg)[:16]!r} is not accepted")
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or len(kid) > 256):
            return self._invalid("the token's kid is not a short string")

        try:
            if alg in HMAC_ALGORITHMS:
                claims = self._decode(token, self._secret, alg)
            else:
                outcome = await self._decode_with_keys(token, kid, alg)
                if isinstance(outcome, LocalResponse):
                    return outcome
                claims = outcome
        except InvalidTokenError as exc:
            return self._invalid(_describe(exc))

        consumer_or_refusal = self._consumer(claims)
        if isinstance(consumer_or_refusal, LocalResponse):
            return consumer_or_refusal
        consumer = consumer_or_refusal
        expires = claims.get("exp")
        not_before = claims.get("nbf")
        self._verified[digest] = _Verified(
            consumer,
            float(expires) if isinstance(expires, int | float) else float("inf"),
            float(not_before) if isinstance(not_before, int | float) else -float("inf"),
        )
        if len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        self._accept(request, consumer, where)
        return None

    def _decode(self, token: str, key: Any, alg: str) -> dict[str, Any]:
        return jwt.decode(
            token,
            key,
            algorithms=[alg],
            options=self._options,  # type: ignore[arg-type]
            audience=self._audience,
            issuer=self._issuer,
            leeway=self._config.clock_skew,
        )

    async def _decode_with_keys(
        self, token: str, kid: str | None, alg: str
    ) -> dict[str, Any] | LocalResponse:
        jwks = self.jwks
        # A local key without a kid stands for unknown kids only when there is
        # no JWKS to find them in.
        candidates = self._inline.candidates(kid, alg, unnamed=jwks is None)
        if not candidates and jwks is not None:
            if not jwks.ready:
                await jwks.wait_ready(self._config.jwks_timeout)
            candidates = jwks.keys.candidates(kid, alg)
            if not candidates and not jwks.keys.knows(kid):
                candidates = (await jwks.refetch_for(kid)).candidates(kid, alg)
            if not candidates and not jwks.ready:
                return LocalResponse.error(
                    503,
                    "keys_unavailable",
                    "the keys that verify tokens could not be fetched yet; try again later",
                    (("retry-after", "5"),),
                )
        if not candidates:
            if kid is None:
                return self._invalid(f"no key verifies {alg} tokens without a kid")
            return self._invalid(f"no key has the token's kid {kid[:64]!r}")
        error: InvalidTokenError | None = None
        for key in candidates:
            try:
                return self._decode(token, key.verifier(alg), alg)
            except InvalidSignatureError as exc:
                error = exc
            except JwksError:
                continue
        raise error or InvalidSignatureError("no key fits")

    def _consumer(self, claims: Mapping[str, Any]) -> Consumer | LocalResponse:
        config = self._config
        name = claims.get(config.consumer_claim)
        if not isinstance(name, str) or not is_usable_name(name):
            return self._invalid(
                f"the token's {config.consumer_claim!r} claim does not name a consumer "
                "(a string of visible ASCII without spaces or commas)"
            )
        known = self._consumers.by_name(name)
        if known is None and config.known_consumers_only:
            return forbidden(f"{name!r} is not a consumer of this gateway")
        groups = list(known.groups) if known is not None else []
        if config.groups_claim is not None:
            extra = claims.get(config.groups_claim)
            values = extra.split() if isinstance(extra, str) else extra
            if isinstance(values, list):
                for group in values[:MAX_GROUPS_FROM_CLAIM]:
                    if isinstance(group, str) and is_usable_name(group) and group not in groups:
                        groups.append(group)
        return Consumer(
            name=name, via=self.name, groups=tuple(groups), claims=MappingProxyType(dict(claims))
        )

    def _accept(self, request: GatewayRequest, consumer: Consumer, where: str) -> None:
        request.consumer = consumer
        if self._config.hide_credentials and where == "header" and self._config.header:
            request.headers.remove(self._config.header)
