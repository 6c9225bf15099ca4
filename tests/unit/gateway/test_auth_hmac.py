"""The hmac plugin: RFC 9421 signature bases, RFC 9530 digests, the replay window."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from pydantic import ValidationError

from sidecar.gateway.auth import (
    ConsumerConfig,
    ConsumerIndex,
    HmacAuth,
    HmacConfig,
    content_digest,
    sign,
    signature_base,
)
from sidecar.gateway.auth._sfv import (
    InnerList,
    StructuredFieldError,
    parse_dictionary,
    serialize_inner_list,
)
from sidecar.gateway.request import Consumer, GatewayRequest, Headers, LocalResponse

# RFC 9421 Appendix B.1.4: the shared secret "test-shared-secret".
RFC_SECRET = (
    "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ=="
)
NOW = 1_700_000_000
SECRET = b"alice's secret of 16+ bytes"
ALICE = ConsumerConfig(
    name="alice",
    groups=("billing",),
    hmac_secrets={"alice-key": SECRET.decode()},  # type: ignore[dict-item]
)


def rfc_test_request() -> GatewayRequest:
    """The test-request message of RFC 9421 Appendix B.2."""
    return GatewayRequest(
        method="POST",
        host="example.com",
        path="/foo",
        query="param=Value&Pet=dog",
        scheme="https",
        headers=Headers(
            [
                ("host", "example.com"),
                ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
                ("content-type", "application/json"),
                (
                    "content-digest",
                    "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNN"
                    "yealdVLvRwEmTHWXvJwew==:",
                ),
                ("content-length", "18"),
            ]
        ),
        body=b'{"hello": "world"}',
    )


def test_the_rfc_9421_hmac_sha256_example_b25() -> None:
    members = parse_dictionary(
        'sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret"'
    )
    params = members["sig-b25"]
    assert isinstance(params, InnerList)
    base = signature_base(rfc_test_request(), params)
    assert base == (
        b'"date": Tue, 20 Apr 2021 02:07:55 GMT\n'
        b'"@authority": example.com\n'
        b'"content-type": application/json\n'
        b'"@signature-params": ("date" "@authority" "content-type")'
        b';created=1618884473;keyid="test-shared-secret"'
    )
    consumers = ConsumerIndex(
        [
            ConsumerConfig(
                name="rfc",
                hmac_secrets={"test-shared-secret": f"base64:{RFC_SECRET}"},  # type: ignore[dict-item]
            )
        ]
    )
    credential = consumers.by_hmac_key_id("test-shared-secret")
    assert credential is not None
    signature = hmac.new(credential.secret, base, hashlib.sha256).digest()
    assert base64.b64encode(signature) == b"pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8="


def test_derived_components_of_the_rfc_test_request() -> None:
    """RFC 9421 §2.2: the values of the derived components for the B.2 request."""
    members = parse_dictionary(
        'sig=("@method" "@target-uri" "@authority" "@scheme" "@request-target" "@path" "@query")'
        ";created=1"
    )
    params = members["sig"]
    assert isinstance(params, InnerList)
    lines = signature_base(rfc_test_request(), params).decode().split("\n")
    assert lines[:7] == [
        '"@method": POST',
        '"@target-uri": https://example.com/foo?param=Value&Pet=dog',
        '"@authority": example.com',
        '"@scheme": https',
        '"@request-target": /foo?param=Value&Pet=dog',
        '"@path": /foo',
        '"@query": ?param=Value&Pet=dog',
    ]


def test_content_digest_matches_rfc_9530() -> None:
    body = b'{"hello": "world"}'
    assert content_digest(body) == "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
    assert content_digest(body, "sha-512") == rfc_test_request().headers.get("content-digest")


def test_structured_fields_parse_and_serialize() -> None:
    text = '("@method" "x";sf);created=-5;keyid="a\\"b";flag;alg=tok/1;d=1.5;b=:AQI=:;f=?0'
    members = parse_dictionary(f"sig1={text}, sig2=:AAE=:")
    inner = members["sig1"]
    assert isinstance(inner, InnerList)
    assert serialize_inner_list(inner) == text
    for bad in ['sig=("a"', 'Sig=("a")', 'sig=("a");created=1,', 'sig=("a")x', 'sig="\x01"']:
        with pytest.raises(StructuredFieldError):
            parse_dictionary(bad)


class Clock:
    def __init__(self) -> None:
        self.now = float(NOW)

    def __call__(self) -> float:
        return self.now


def post(body: bytes = b'{"amount": 5}', query: str = "") -> GatewayRequest:
    return GatewayRequest(
        method="POST",
        host="api.example.com",
        path="/payments",
        query=query,
        scheme="https",
        headers=Headers([("host", "api.example.com:443"), ("content-type", "application/json")]),
        body=body,
    )


def signed(req: GatewayRequest, **options: Any) -> GatewayRequest:
    options.setdefault("components", ("@method", "@authority", "@target-uri", "content-digest"))
    options.setdefault("created", NOW)
    options.setdefault("nonce", "n-1")
    key_id = options.pop("key_id", "alice-key")
    secret = options.pop("secret", SECRET)
    signature_input, signature = sign(req, key_id, secret, **options)
    req.headers.set("signature-input", signature_input)
    req.headers.set("signature", signature)
    return req


def refusal(answer: LocalResponse | None) -> tuple[int, str, str]:
    assert answer is not None
    headers = dict(answer.headers)
    assert "accept-signature" in headers
    return answer.status, headers["www-authenticate"], json.loads(answer.body)["message"]


def plugin(clock: Clock | None = None, **config: Any) -> HmacAuth:
    return HmacAuth(
        HmacConfig.model_validate(config), ConsumerIndex([ALICE]), clock=clock or Clock()
    )


async def test_a_signed_request_is_accepted_and_names_the_consumer() -> None:
    req = signed(post())
    auth = plugin()
    assert auth.needs_body and auth.present(req)
    assert await auth.authenticate(req) is None
    assert req.consumer == Consumer("alice", "hmac", ("billing",))
    get = GatewayRequest(method="GET", host="api.example.com", path="/p", query="a=1")
    get.headers.set("host", "api.example.com")
    assert (
        await plugin().authenticate(
            signed(get, components=("@method", "@authority", "@path", "@query"))
        )
        is None
    )


async def test_an_unsigned_request_gets_a_challenge() -> None:
    answer = await plugin().authenticate(post())
    status, challenge, _ = refusal(answer)
    assert (status, challenge) == (401, 'Signature realm="gateway"')


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.headers.set("host", "evil.example.com"), "the signature does not verify"),
        (lambda r: setattr(r, "path", "/payments/all"), "the signature does not verify"),
        (lambda r: setattr(r, "body", b'{"amount": 500}'), "Content-Digest does not match"),
        (lambda r: setattr(r, "method", "PUT"), "the signature does not verify"),
    ],
)
async def test_a_changed_request_is_refused(change: Any, message: str) -> None:
    req = signed(post())
    change(req)
    status, challenge, found = refusal(await plugin().authenticate(req))
    assert status == 401 and found.startswith(message)
    assert challenge.startswith('Signature realm="gateway", error="invalid_signature"')


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"components": ("@method", "@authority", "@target-uri")}, "must cover content-digest"),
        ({"components": ("@method", "@target-uri", "content-digest")}, "must cover @authority"),
        ({"components": ("@method", "@authority", "@path", "content-digest")}, "cover @query"),
        ({"key_id": "nobody"}, "the keyid is not known"),
        ({"secret": b"another secret of 16 bytes"}, "the signature does not verify"),
        ({"created": NOW - 331}, "the signature is older than the replay window (300s)"),
        ({"created": NOW + 31}, "the signature was created in the future"),
        ({"nonce": None}, "the signature needs a nonce"),
    ],
)
async def test_a_wrongly_signed_request_is_refused(options: dict[str, Any], message: str) -> None:
    req = signed(post(query="x=1"), **options)
    status, _, found = refusal(await plugin().authenticate(req))
    assert status == 401 and message in found, found


async def test_the_clock_skew_and_window_bound_created() -> None:
    assert await plugin().authenticate(signed(post(), created=NOW - 329)) is None
    assert await plugin().authenticate(signed(post(), created=NOW + 29)) is None


async def test_a_replayed_nonce_is_refused_within_the_window() -> None:
    clock = Clock()
    auth = plugin(clock)
    first = signed(post())
    assert await auth.authenticate(first) is None
    again = post()
    for name in ("signature-input", "signature", "content-digest"):
        value = first.headers.get(name)
        assert value is not None
        again.headers.set(name, value)
    _, _, message = refusal(await auth.authenticate(again))
    assert message == "the nonce was used already (a replayed request)"
    assert await auth.authenticate(signed(post(), nonce="n-2")) is None
    # Past the window the signature itself is too old, and the nonce is forgotten.
    clock.now += 400
    _, _, message = refusal(await auth.authenticate(again))
    assert message.startswith("the signature is older than the replay window")
    fresh = signed(post(), created=int(clock.now), nonce="n-3")
    assert await auth.authenticate(fresh) is None
    assert list(auth._nonces) == [("alice-key", "n-3")]


async def test_the_nonce_memory_is_bounded() -> None:
    auth = plugin(nonce_cache_size=100)
    for n in range(250):
        assert await auth.authenticate(signed(post(), nonce=f"n-{n}")) is None
    assert len(auth._nonces) == 100


async def test_nonces_can_be_optional_and_components_required() -> None:
    assert await plugin(require_nonce=False).authenticate(signed(post(), nonce=None)) is None
    strict = plugin(components=["content-type"])
    _, _, message = refusal(await strict.authenticate(signed(post())))
    assert message == "the signature must cover content-type"


async def test_bounded_and_malformed_fields_are_refused() -> None:
    req = signed(post())
    req.headers.set("signature-input", "sig1=(" + '"x" ' * 2000 + ")")
    _, _, message = refusal(await plugin().authenticate(req))
    assert message == "a signature field is longer than 4096 bytes"
    req.headers.set("signature-input", 'sig1=("@method"')
    _, _, message = refusal(await plugin().authenticate(req))
    assert message.startswith("a signature field is malformed")
    req = signed(post())
    req.headers.set(
        "signature-input",
        (req.headers.get("signature-input") or "").replace('"hmac-sha256"', '"rsa-pss-sha512"'),
    )
    _, _, message = refusal(await plugin().authenticate(req))
    assert message == "alg 'rsa-pss-sha512' is not accepted (only hmac-sha256)"


def test_config_errors_are_clear() -> None:
    with pytest.raises(ValidationError, match="from 1s to 1h"):
        HmacConfig(replay_window="2h")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="is not a derived component"):
        HmacConfig(components=("@status",))
    with pytest.raises(ValidationError, match="greater than or equal to 100"):
        HmacConfig(nonce_cache_size=1)


async def test_a_body_announced_but_not_read_is_never_taken_on_trust() -> None:
    """A body the signature does not cover is refused, and a body the gateway
    did not hand over cannot pass for an empty one."""
    req = signed(post(body=b""), components=("@method", "@authority", "@target-uri"))
    req.headers.set("content-length", "13")
    req.body = None
    _, _, message = refusal(await plugin().authenticate(req))
    assert message == "the signature must cover content-digest"
    req = signed(post())
    req.headers.set("content-length", "13")
    req.body = None
    answer = await plugin().authenticate(req)
    assert answer is not None and answer.status == 500
