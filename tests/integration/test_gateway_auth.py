"""Authentication against real servers: the jwt plugin and a JWKS server on
127.0.0.1 whose keys rotate; the mtls plugin behind a real TLS handshake.

The JWKS server counts the fetches, so each test can say how often the gateway
went to the identity provider: once on a rotated key, not at all for a
flood of made-up key ids, at the pace of ``Cache-Control: max-age`` (within
bounds), and less and less often while the provider is failing.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sidecar.gateway.auth import ConsumerIndex, JwtAuth, JwtConfig, MtlsAuth, MtlsConfig
from sidecar.gateway.request import GatewayRequest, Headers, LocalResponse
from tests.harness.certs import TestCA
from tests.harness.jwks import JwksServer, SigningKey
from tests.util import assert_eventually, assert_stays


@pytest.fixture
async def idp() -> AsyncIterator[JwksServer]:
    server = JwksServer()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


def request(token: str) -> GatewayRequest:
    return GatewayRequest(
        method="GET",
        host="api.example.com",
        path="/orders",
        headers=Headers([("authorization", f"Bearer {token}")]),
    )


async def auth_for(idp: JwksServer, **config: Any) -> JwtAuth:
    plugin = JwtAuth(
        JwtConfig.model_validate(
            {"jwks_url": idp.url, "issuer": "https://idp.test/", "jwks_timeout": "1s", **config}
        ),
        ConsumerIndex(),
    )
    await plugin.start()
    return plugin


def message(answer: LocalResponse | None) -> str:
    assert answer is not None
    return str(json.loads(answer.body)["message"])


async def test_a_rotated_key_is_fetched_once_and_bogus_kids_do_not_reach_the_idp(
    idp: JwksServer,
) -> None:
    first, second = SigningKey("k1"), SigningKey("k2")
    idp.keys = [first]
    auth = await auth_for(idp, jwks_refresh="1h", jwks_refresh_min="1h")
    try:
        req = request(first.token())
        assert await auth.authenticate(req) is None
        assert req.consumer is not None and req.consumer.name == "alice"
        assert idp.fetches == 1

        # The IdP rotates: the first token naming k2 makes one refetch.
        idp.keys = [first, second]
        assert await auth.authenticate(request(second.token())) is None
        assert idp.fetches == 2

        # A flood of made-up kids: refused, and the IdP is not asked again
        # (one refetch per jwks_refresh_min, and it just had one).
        bogus = [request(first.token(kid=f"bogus-{uuid.uuid4()}")) for _ in range(200)]
        answers = await asyncio.gather(*(auth.authenticate(r) for r in bogus))
        assert all(a is not None and a.status == 401 for a in answers)
        assert message(answers[0]).startswith("no key has the token's kid 'bogus-")
        assert idp.fetches == 2
        # The keys it has keep working meanwhile.
        assert await auth.authenticate(request(second.token())) is None
    finally:
        await auth.close()


async def test_concurrent_tokens_with_a_new_kid_share_one_fetch(idp: JwksServer) -> None:
    first, second = SigningKey("k1"), SigningKey("k2")
    idp.keys = [first]
    auth = await auth_for(idp, jwks_refresh="1h", jwks_refresh_min="1h")
    try:
        assert await auth.authenticate(request(first.token())) is None
        idp.keys = [second]
        answers = await asyncio.gather(
            *(auth.authenticate(request(second.token())) for _ in range(50))
        )
        assert answers == [None] * 50
        assert idp.fetches == 2
    finally:
        await auth.close()


async def test_keys_follow_max_age_in_the_background_and_a_removed_key_stops_working(
    idp: JwksServer,
) -> None:
    old, new = SigningKey("old"), SigningKey("new")
    idp.keys = [old]
    idp.max_age = 0  # below jwks_refresh_min: refreshed every 0.2 s
    auth = await auth_for(idp, jwks_refresh_min="200ms", jwks_refresh_max="1h")
    try:
        token = old.token()
        assert await auth.authenticate(request(token)) is None
        idp.keys = [new]
        jwks = auth.jwks
        assert jwks is not None

        # No request asks for it: the background refresh takes the new set.
        await assert_eventually(lambda: _equal(jwks.keys.kids(), ["new"]), timeout=3.0)
        # The old key's token, remembered as verified, is refused from now on.
        assert message(await auth.authenticate(request(token))) == (
            "no key has the token's kid 'old'"
        )
        assert await auth.authenticate(request(new.token())) is None

        # The pace is max-age held within the bounds: every 0.2 s, not every 0 s.
        started, fetches = time.monotonic(), idp.fetches
        await assert_eventually(lambda: _at_least(idp.fetches, fetches + 3), timeout=3.0)
        assert time.monotonic() - started >= 0.4
    finally:
        await auth.close()


def _equal(value: object, wanted: object) -> None:
    assert value == wanted, value


def _at_least(value: int, wanted: int) -> None:
    assert value >= wanted, (value, wanted)


async def test_the_last_good_keys_serve_while_the_idp_fails_and_retries_back_off(
    idp: JwksServer,
) -> None:
    key = SigningKey("k1")
    idp.keys = [key]
    idp.max_age = 0
    auth = await auth_for(idp, jwks_refresh="50ms", jwks_refresh_min="50ms", jwks_refresh_max="1s")
    try:
        await assert_eventually(lambda: _at_least(idp.fetches, 3), timeout=2.0)
        idp.status = 503
        failing_since = idp.fetches
        token = key.token()

        async def still_accepted() -> None:
            assert await auth.authenticate(request(token)) is None

        # 1.5 s of failures: every 50 ms would be 30 fetches; backing off from
        # 50 ms (50, 100, 200, 400, 800 ms) it is at most six.
        await assert_stays(still_accepted, duration=1.5)
        assert 2 <= idp.fetches - failing_since <= 6, idp.fetches - failing_since
        assert auth.jwks is not None and auth.jwks.last_error == "HTTP status 503"

        idp.status = 200
        jwks = auth.jwks
        await assert_eventually(lambda: _no_error(jwks.last_error), timeout=3.0)
    finally:
        await auth.close()


def _no_error(error: str | None) -> None:
    assert error is None, error


async def test_no_keys_yet_is_503_and_a_huge_document_is_refused(idp: JwksServer) -> None:
    idp.keys = [SigningKey("k1")]
    idp.padding = 300 * 1024  # the document is over the 256 KiB bound
    auth = await auth_for(idp, jwks_refresh_min="1h", jwks_timeout="500ms")
    try:
        answer = await auth.authenticate(request(idp.keys[0].token()))
        assert answer is not None and answer.status == 503
        assert ("retry-after", "5") in answer.headers
        assert auth.jwks is not None and auth.jwks.last_error is not None
        assert "bigger than 262144 bytes" in auth.jwks.last_error
    finally:
        await auth.close()


async def test_an_unreachable_idp_is_503_not_a_hang(idp: JwksServer) -> None:
    url = idp.url
    await idp.close()
    plugin = JwtAuth(
        JwtConfig(jwks_url=url, jwks_timeout=0.5, jwks_refresh_min=3600),  # type: ignore[arg-type]
        ConsumerIndex(),
    )
    await plugin.start()
    try:
        started = time.monotonic()
        answer = await plugin.authenticate(request(SigningKey("k1").token()))
        assert answer is not None and answer.status == 503
        assert time.monotonic() - started < 2.0
    finally:
        await plugin.close()
        await plugin.close()  # idempotent


async def test_a_local_key_without_kid_does_not_hide_the_jwks(idp: JwksServer) -> None:
    local, remote = SigningKey("unused"), SigningKey("remote-1")
    idp.keys = [remote]
    pem = (
        local.private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    auth = await auth_for(idp, keys=[pem])
    try:
        assert await auth.authenticate(request(remote.token())) is None
        unnamed = pyjwt.encode(
            {"sub": "bob", "iss": "https://idp.test/", "exp": int(time.time()) + 60},
            local.private,
            "ES256",
        )
        req = request(unnamed)
        assert await auth.authenticate(req) is None
        assert req.consumer is not None and req.consumer.name == "bob"
    finally:
        await auth.close()


def _client_certificate(ca: TestCA, cn: str, directory: Path) -> tuple[Path, Path]:
    """A client certificate (clientAuth) that ``ca`` signs: its cert and key files."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    cert_file, key_file = directory / f"{cn}.pem", directory / f"{cn}-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


async def test_mtls_over_a_real_handshake_each_route_trusts_its_own_ca(tmp_path: Path) -> None:
    """The listener's side as docs/gateway.md describes it: the handshake asks
    for a certificate (CERT_OPTIONAL) and trusts every mtls route's CA; each
    route's plugin then admits its own CA's clients only."""
    server_ca = TestCA.create(tmp_path / "server", "server-ca")
    partners = TestCA.create(tmp_path / "partners", "partners-ca")
    staff = TestCA.create(tmp_path / "staff", "staff-ca")
    server_cert, server_key = server_ca.issue_server("gateway")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server_cert, server_key)
    context.verify_mode = ssl.CERT_OPTIONAL
    for ca in (partners, staff):
        context.load_verify_locations(ca.cert_file)

    partner_route = MtlsAuth(MtlsConfig(ca_file=partners.cert_file), ConsumerIndex())
    staff_route = MtlsAuth(MtlsConfig(ca_file=staff.cert_file), ConsumerIndex())
    answers: list[tuple[int, int, str]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        statuses = []
        for route in (partner_route, staff_route):
            req = GatewayRequest(method="GET", host="h", path="/", peer_certificate=der)
            answer = await route.authenticate(req)
            statuses.append(200 if answer is None else answer.status)
        name = req.consumer.name if req.consumer is not None else ""
        answers.append((statuses[0], statuses[1], name))
        writer.write(b"done")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        for ca, cn in ((partners, "acme"), (staff, "dana"), (None, "")):
            client = ssl.create_default_context(cafile=server_ca.cert_file)
            if ca is not None:
                client.load_cert_chain(*_client_certificate(ca, cn, tmp_path))
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client, server_hostname="localhost"
            )
            assert await reader.read() == b"done"
            writer.close()
            await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    assert answers == [(200, 401, ""), (401, 200, "dana"), (401, 401, "")]
