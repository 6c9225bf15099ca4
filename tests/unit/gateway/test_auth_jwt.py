"""The jwt plugin with local keys and a shared secret (the JWKS URL: tests/integration)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from pydantic import ValidationError

from sidecar.gateway.auth import ConsumerConfig, ConsumerIndex, JwtAuth, JwtConfig, KeySet
from sidecar.gateway.auth._jwks import JwksError
from sidecar.gateway.request import GatewayRequest, Headers, LocalResponse

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SECRET = "a shared secret of at least 32 bytes!"

ALICE = ConsumerConfig(name="alice", groups=("admins",))


def jwk(key: Any, kid: str, **extra: str) -> dict[str, Any]:
    public = key.public_key()
    maker = {
        rsa.RSAPublicKey: RSAAlgorithm,
        ec.EllipticCurvePublicKey: ECAlgorithm,
        ed25519.Ed25519PublicKey: OKPAlgorithm,
    }
    algorithm = next(a for t, a in maker.items() if isinstance(public, t))
    found = dict(algorithm.to_jwk(public, as_dict=True))
    return {**found, "kid": kid, **extra}


def pem(key: Any) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def token(key: Any, alg: str, kid: str | None = "rsa-1", **claims: Any) -> str:
    payload = {"sub": "alice", "exp": int(time.time()) + 300, **claims}
    return pyjwt.encode(payload, key, algorithm=alg, headers={"kid": kid} if kid else None)


def hs256_with_key_as_secret(secret: bytes) -> str:
    """An HS256 token whose secret is a public key (PyJWT refuses to make one)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    body = b64(json.dumps({"sub": "alice", "exp": int(time.time()) + 60}).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


def request(value: str | None, scheme: str = "Bearer") -> GatewayRequest:
    headers = Headers([("authorization", f"{scheme} {value}")] if value is not None else [])
    return GatewayRequest(method="GET", host="api.example.com", path="/", headers=headers)


def plugin(**config: Any) -> JwtAuth:
    fields: dict[str, Any] = {
        "keys": [jwk(RSA_KEY, "rsa-1"), jwk(EC_KEY, "ec-1"), jwk(ED_KEY, "ed-1")],
        **config,
    }
    return JwtAuth(JwtConfig.model_validate(fields), ConsumerIndex([ALICE]))


def refusal(answer: LocalResponse | None) -> tuple[int, str, str]:
    """(status, WWW-Authenticate, message) of a refusal."""
    assert answer is not None
    challenge = dict(answer.headers).get("www-authenticate", "")
    return answer.status, challenge, json.loads(answer.body)["message"]


@pytest.mark.parametrize(
    ("key", "alg", "kid"),
    [
        (RSA_KEY, "RS256", "rsa-1"),
        (RSA_KEY, "PS384", "rsa-1"),
        (EC_KEY, "ES256", "ec-1"),
        (ED_KEY, "EdDSA", "ed-1"),
    ],
)
async def test_a_token_signed_by_a_configured_key_is_accepted(key: Any, alg: str, kid: str) -> None:
    auth = plugin()
    req = request(token(key, alg, kid, scope="orders"))
    assert await auth.authenticate(req) is None
    assert req.consumer is not None
    assert (req.consumer.name, req.consumer.via, req.consumer.groups) == (
        "alice",
        "jwt",
        ("admins",),
    )
    assert req.consumer.claims["scope"] == "orders"
    assert req.headers.get("authorization") is not None  # hide_credentials is off by default


async def test_a_pem_key_without_a_kid_verifies_tokens_without_one() -> None:
    auth = plugin(keys=[pem(EC_KEY)])
    assert await auth.authenticate(request(token(EC_KEY, "ES256", kid=None))) is None
    status, _, message = refusal(
        await auth.authenticate(request(token(RSA_KEY, "RS256", kid=None)))
    )
    assert status == 401 and message == "no key verifies RS256 tokens without a kid"


async def test_a_shared_secret_verifies_hs256() -> None:
    auth = plugin(keys=[], secret=SECRET)
    assert await auth.authenticate(request(token(SECRET.encode(), "HS256"))) is None
    wrong = await auth.authenticate(request(token(b"x" * 40, "HS256")))
    assert refusal(wrong)[2] == "the token's signature does not verify"


async def test_a_missing_token_gets_a_challenge_without_an_error() -> None:
    auth = plugin()
    for req in (request(None), request("abc", scheme="Basic")):
        status, challenge, _ = refusal(await auth.authenticate(req))
        assert (status, challenge) == (401, 'Bearer realm="gateway"')


GOOD = {"iss": "https://idp.example/", "aud": "orders-api"}


def good(key: Any = RSA_KEY, kid: str = "rsa-1", **claims: Any) -> str:
    """An RS256 token with the accepted issuer and audience, changed by ``claims``."""
    return token(key, "RS256", kid, **{**GOOD, **claims})


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: good(exp=int(time.time()) - 60), "the token has expired"),
        (lambda: good(nbf=int(time.time()) + 60), "the token is not valid yet"),
        (lambda: good(OTHER_RSA_KEY), "the token's signature does not verify"),
        (lambda: good(kid="nobody"), "no key has the token's kid 'nobody'"),
        (lambda: good(iss="https://evil.example/"), "the token's issuer is not accepted"),
        (lambda: good(aud="other-api"), "the token's audience is not accepted"),
        (lambda: good(sub="two words"), "the token's 'sub' claim does not name a consumer"),
        (lambda: good(sub=42), "the token's 'sub' claim is not a string"),
        (
            lambda: pyjwt.encode({"sub": "alice", **GOOD}, RSA_KEY, "RS256", {"kid": "rsa-1"}),
            "the token has no 'exp' claim",
        ),
        (lambda: "not.a.token", "the token is malformed"),
        (lambda: "x" * 9000, "the token is longer than 8192 bytes"),
    ],
)
async def test_a_bad_token_is_refused_saying_why(make: Any, message: str) -> None:
    auth = plugin(issuer="https://idp.example/", audience="orders-api")
    assert await auth.authenticate(request(good())) is None
    status, challenge, found = refusal(await auth.authenticate(request(make())))
    assert status == 401
    assert found.startswith(message)
    assert challenge.startswith(
        'Bearer realm="gateway", error="invalid_token", error_description="' + message
    )


async def test_the_clock_skew_admits_a_token_just_expired() -> None:
    just_expired = token(RSA_KEY, "RS256", exp=int(time.time()) - 10)
    assert await plugin().authenticate(request(just_expired)) is None
    refused = await plugin(clock_skew="0s").authenticate(request(just_expired))
    assert refusal(refused)[2] == "the token has expired"


async def test_unsigned_and_confused_algorithms_are_refused() -> None:
    auth = plugin(secret=SECRET)
    unsigned = pyjwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, None, algorithm="none")
    assert (
        "algorithm 'none' is not accepted" in refusal(await auth.authenticate(request(unsigned)))[2]
    )
    # An RS256 key's public PEM used as an HMAC secret (the classic confusion):
    # HS256 tokens are checked with the configured secret only.
    forged = hs256_with_key_as_secret(pem(RSA_KEY).encode())
    assert refusal(await auth.authenticate(request(forged)))[2] == (
        "the token's signature does not verify"
    )
    # Without a secret, HS256 is not even an accepted algorithm.
    assert "'HS256' is not accepted" in refusal(await plugin().authenticate(request(forged)))[2]
    # An RSA key does not verify an ES256 token, whatever the kid says.
    es_as_rsa = token(EC_KEY, "ES256", kid="rsa-1")
    assert refusal(await plugin().authenticate(request(es_as_rsa)))[2] == (
        "no key has the token's kid 'rsa-1'"
    )


async def test_consumers_from_claims() -> None:
    stranger = token(RSA_KEY, "RS256", sub="carol", groups=["staff", "bad group", 7])
    auth = plugin(groups_claim="groups")
    req = request(stranger)
    assert await auth.authenticate(req) is None
    assert req.consumer is not None and (req.consumer.name, req.consumer.groups) == (
        "carol",
        ("staff",),
    )
    only_known = plugin(known_consumers_only=True)
    status, _, message = refusal(await only_known.authenticate(request(stranger)))
    assert (status, message) == (403, "'carol' is not a consumer of this gateway")
    by_email = plugin(consumer_claim="email")
    req = request(token(RSA_KEY, "RS256", email="alice"))
    assert await by_email.authenticate(req) is None and req.consumer is not None
    assert req.consumer.groups == ("admins",)


async def test_a_cookie_or_query_token_and_hidden_credentials() -> None:
    auth = plugin(header=None, cookie="session", query="access_token")
    value = token(RSA_KEY, "RS256")
    by_cookie = GatewayRequest(
        method="GET", host="h", path="/", headers=Headers([("cookie", f"a=b; session={value}")])
    )
    assert await auth.authenticate(by_cookie) is None
    by_query = GatewayRequest(method="GET", host="h", path="/", query=f"access_token={value}")
    assert await auth.authenticate(by_query) is None
    hidden = plugin(hide_credentials=True)
    req = request(value)
    assert await hidden.authenticate(req) is None and "authorization" not in req.headers


async def test_a_verified_token_is_remembered_until_it_expires() -> None:
    auth = plugin()
    value = token(RSA_KEY, "RS256", exp=int(time.time()) + 300)
    assert await auth.authenticate(request(value)) is None
    calls = 0
    original = auth._decode

    def counting(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(*args)

    auth._decode = counting  # type: ignore[method-assign]
    for _ in range(3):
        req = request(value)
        assert await auth.authenticate(req) is None and req.consumer is not None
    assert calls == 0


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "give the keys that sign tokens"),
        ({"keys": [jwk(RSA_KEY, "a")], "algorithms": ["none"]}, "unsigned tokens are never"),
        ({"keys": [jwk(RSA_KEY, "a")], "algorithms": ["HS256"]}, "HS256 need 'secret'"),
        ({"secret": "short"}, "at least 32 bytes"),
        ({"secret": SECRET, "algorithms": ["RS256"]}, "RS256 need 'jwks_url' or 'keys'"),
        ({"keys": [{"kty": "oct", "k": "abc"}]}, "key #1: key type 'oct' is not accepted"),
        ({"keys": ["not a pem"]}, "key #1: not a PEM public key"),
        ({"jwks_url": "ftp://idp/jwks"}, "URL scheme should be 'http' or 'https'"),
        ({"secret": SECRET, "clock_skew": "1h"}, "from 0s to 10m"),
        ({"secret": SECRET, "colck_skew": "1s"}, "Extra inputs are not permitted"),
    ],
)
def test_config_errors_say_what_to_fix(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        JwtConfig.model_validate(config)
    assert message in str(caught.value)
    assert SECRET not in str(caught.value)


def test_default_algorithms_follow_the_keys_given() -> None:
    assert "HS256" not in JwtConfig(keys=(jwk(RSA_KEY, "a"),)).effective_algorithms()
    assert JwtConfig(secret=SECRET).effective_algorithms() == ("HS256", "HS384", "HS512")  # type: ignore[arg-type]


def test_a_key_set_document_is_bounded_and_skips_keys_it_cannot_use() -> None:
    document = json.dumps(
        {
            "keys": [
                jwk(RSA_KEY, "rsa-1"),
                {**jwk(EC_KEY, "enc-1"), "use": "enc"},
                {"kty": "oct", "k": "c2VjcmV0", "kid": "hs"},
                jwk(ED_KEY, "ed-1"),
            ]
        }
    ).encode()
    keys = KeySet.from_document(document)
    assert keys.kids() == ["ed-1", "rsa-1"]
    assert len(KeySet.from_document(document, max_keys=1)) == 1
    for bad, message in [
        (b"{", "not JSON"),
        (b'{"keys": 1}', 'no "keys" list'),
        (b'{"keys": []}', "no usable signing key"),
    ]:
        with pytest.raises(JwksError, match=message):
            KeySet.from_document(bad)
