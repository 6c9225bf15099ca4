"""Consumers, their index, the identity headers, key_auth and the allow list."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

import sidecar.gateway.auth as auth
from sidecar.gateway.auth import (
    IDENTITY_HEADERS,
    AllowConfig,
    AuthChain,
    ConsumerAllowList,
    ConsumerConfig,
    ConsumerIndex,
    KeyAuth,
    KeyAuthConfig,
    consumer_problems,
    identity_headers,
)
from sidecar.gateway.request import Consumer, GatewayRequest, Headers

ALICE = ConsumerConfig(
    name="alice",
    groups=("admins", "staff"),
    api_keys=("k-alice-1-secret", "k-alice-2-secret"),  # type: ignore[arg-type]
    hmac_secrets={"alice-key": "0123456789abcdef0123"},  # type: ignore[dict-item]
)
BOB = ConsumerConfig(name="bob", api_keys=("k-bob-1-secret",))  # type: ignore[arg-type]


def request(headers: dict[str, str] | None = None, query: str = "") -> GatewayRequest:
    return GatewayRequest(
        method="GET",
        host="api.example.com",
        path="/orders",
        query=query,
        headers=Headers((headers or {}).items()),
    )


def test_the_public_surface_is_pinned() -> None:
    assert sorted(auth.__all__) == sorted(
        [
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
    )


def test_secrets_never_show_in_a_repr_or_a_dump() -> None:
    shown = repr(ALICE) + json.dumps(ALICE.model_dump(mode="json"))
    assert "k-alice-1-secret" not in shown
    assert "0123456789abcdef0123" not in shown
    assert "**********" in shown
    index = ConsumerIndex([ALICE])
    credential = index.by_hmac_key_id("alice-key")
    assert credential is not None and "0123456789" not in repr(credential)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "al ice"}, "not a usable consumer name"),
        ({"name": "alice", "groups": ["a,b"]}, "not a usable group name"),
        ({"name": "alice", "api_keys": ["short"]}, "api key #1 must be 8 to 256"),
        ({"name": "alice", "hmac_secrets": {"k": "too short"}}, "too short: at least 16 bytes"),
        ({"name": "alice", "hmac_secrets": {"k": "base64:!!!"}}, "not valid base64"),
        ({"name": "alice", "api_keys": ["k-same-key", "k-same-key"]}, "listed twice"),
        ({"name": "alice", "apikeys": []}, "Extra inputs are not permitted"),
    ],
)
def test_a_bad_consumer_is_refused_with_the_field_named(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        ConsumerConfig.model_validate(fields)
    assert message in str(caught.value)
    # Secrets typed wrong are not echoed back.
    assert "input_value" not in str(caught.value)


def test_problems_across_consumers_name_both_positions() -> None:
    twin = ConsumerConfig(
        name="alice",
        api_keys=("k-bob-1-secret",),  # type: ignore[arg-type]
        hmac_secrets={"alice-key": "another secret of 16+"},  # type: ignore[dict-item]
    )
    problems = consumer_problems([ALICE, BOB, twin])
    assert problems == [
        "consumers[2].name: 'alice' is already the name of consumers[0]",
        "consumers[2].api_keys: one of its keys is also a key of consumers[1]",
        "consumers[2].hmac_secrets: key id 'alice-key' is also a key id of consumers[0]",
    ]
    with pytest.raises(ValueError, match="consumers\\[2\\]"):
        ConsumerIndex([ALICE, BOB, twin])


def test_the_index_finds_consumers_by_key_and_key_id() -> None:
    index = ConsumerIndex([ALICE, BOB])
    assert index.by_api_key("k-alice-2-secret") is ALICE
    assert index.by_api_key("k-bob-1-secret") is BOB
    assert index.by_api_key("k-alice-2-secreT") is None
    assert index.by_api_key("") is None
    assert index.by_api_key("x" * 10_000) is None
    credential = index.by_hmac_key_id("alice-key")
    assert credential is not None and credential.consumer is ALICE
    assert credential.secret == b"0123456789abcdef0123"
    assert index.consumer("alice", "jwt") == Consumer("alice", "jwt", ("admins", "staff"))
    assert index.consumer("carol", "jwt") == Consumer("carol", "jwt", ())


def test_identity_headers_name_the_consumer_and_its_groups() -> None:
    req = request()
    assert identity_headers(req) == []
    req.consumer = Consumer("alice", "key_auth", ("admins", "staff"))
    assert identity_headers(req) == [
        ("x-consumer-name", "alice"),
        ("x-consumer-groups", "admins,staff"),
    ]
    req.consumer = Consumer("bob", "key_auth")
    assert identity_headers(req) == [("x-consumer-name", "bob")]
    assert set(IDENTITY_HEADERS) == {"x-consumer-name", "x-consumer-groups"}


async def test_key_auth_accepts_a_known_key_and_hides_it() -> None:
    plugin = KeyAuth(KeyAuthConfig(), ConsumerIndex([ALICE, BOB]))
    req = request({"x-api-key": "k-alice-1-secret", "accept": "*/*"})
    assert await plugin.authenticate(req) is None
    assert req.consumer == Consumer("alice", "key_auth", ("admins", "staff"))
    assert "x-api-key" not in req.headers and "accept" in req.headers


async def test_key_auth_refuses_a_missing_or_unknown_key_with_a_challenge() -> None:
    plugin = KeyAuth(KeyAuthConfig(), ConsumerIndex([ALICE]))
    missing = await plugin.authenticate(request())
    assert missing is not None and missing.status == 401
    assert ("www-authenticate", 'ApiKey realm="gateway", header="x-api-key"') in missing.headers
    assert json.loads(missing.body)["error"] == "unauthenticated"
    unknown = await plugin.authenticate(request({"x-api-key": "k-nobody-1"}))
    assert unknown is not None and unknown.status == 401
    assert (
        "www-authenticate",
        'ApiKey realm="gateway", header="x-api-key", error="invalid_key"',
    ) in unknown.headers
    assert json.loads(unknown.body) == {
        "error": "invalid_key",
        "message": "the API key is not valid",
    }


async def test_key_auth_reads_a_query_parameter_and_removes_it() -> None:
    plugin = KeyAuth(KeyAuthConfig(header=None, query="api_key"), ConsumerIndex([BOB]))
    req = request(query="a=1&api_key=k-bob-1-secret&b=2")
    assert plugin.present(req)
    assert await plugin.authenticate(req) is None
    assert req.consumer is not None and req.consumer.name == "bob"
    assert req.query == "a=1&b=2"
    kept = KeyAuth(
        KeyAuthConfig(header=None, query="api_key", hide_credentials=False), ConsumerIndex([BOB])
    )
    req = request(query="api_key=k-bob-1-secret")
    assert await kept.authenticate(req) is None and req.query == "api_key=k-bob-1-secret"


def test_key_auth_config_errors_are_clear() -> None:
    with pytest.raises(ValidationError, match="give 'header' or 'query'"):
        KeyAuthConfig(header=None)
    with pytest.raises(ValidationError, match="not a header name"):
        KeyAuthConfig(header="x api key")
    with pytest.raises(ValidationError, match="without quotes"):
        KeyAuthConfig(realm='a"b')


def test_allow_admits_named_consumers_and_groups_else_403() -> None:
    allow = ConsumerAllowList(AllowConfig(consumers=("bob",), groups=("admins",)))
    req = request()
    refused = allow.authorize(req)
    assert refused is not None and refused.status == 401
    req.consumer = Consumer("bob", "key_auth")
    assert allow.authorize(req) is None
    req.consumer = Consumer("alice", "jwt", ("admins",))
    assert allow.authorize(req) is None
    req.consumer = Consumer("carol", "jwt", ("staff",))
    refused = allow.authorize(req)
    assert refused is not None and refused.status == 403
    assert json.loads(refused.body)["message"] == "consumer 'carol' is not allowed on this route"
    with pytest.raises(ValidationError, match="name at least one consumer or group"):
        AllowConfig()


async def test_a_chain_uses_the_plugin_whose_credential_is_present() -> None:
    index = ConsumerIndex([ALICE, BOB])
    chain = AuthChain(
        [KeyAuth(KeyAuthConfig(), index), KeyAuth(KeyAuthConfig(header="x-other-key"), index)]
    )
    req = request({"x-other-key": "k-bob-1-secret"})
    assert await chain.authenticate(req) is None
    assert req.consumer is not None and req.consumer.name == "bob"
    bad = await chain.authenticate(request({"x-other-key": "k-nobody-1"}))
    assert bad is not None and bad.status == 401 and b"invalid_key" in bad.body
    none = await chain.authenticate(request())
    assert none is not None and none.status == 401
    challenges = [v for n, v in none.headers if n == "www-authenticate"]
    assert challenges == [
        'ApiKey realm="gateway", header="x-api-key"',
        'ApiKey realm="gateway", header="x-other-key"',
    ]
