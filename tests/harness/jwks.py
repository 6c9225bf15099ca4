"""A local identity provider for the gateway's jwt tests: signing keys and a JWKS
server on 127.0.0.1 whose keys, status and ``max-age`` a test changes as it runs.

The server counts its fetches, so a test can say how often a gateway went to
the identity provider. Used in-process (tests/integration/test_gateway_auth.py)
and in front of a real ``eco gateway`` process (tests/e2e/test_gateway.py).
"""

from __future__ import annotations

import json
import time
from typing import Any

import jwt as pyjwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

__all__ = ["JwksServer", "SigningKey"]


class SigningKey:
    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.private = ec.generate_private_key(ec.SECP256R1())

    def jwk(self) -> dict[str, Any]:
        found = dict(ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True))
        return {**found, "kid": self.kid, "use": "sig", "alg": "ES256"}

    def token(self, kid: str | None = None, **claims: Any) -> str:
        payload = {"sub": "alice", "iss": "https://idp.test/", "exp": int(time.time()) + 300}
        return pyjwt.encode(
            {**payload, **claims}, self.private, "ES256", headers={"kid": kid or self.kid}
        )


class JwksServer:
    """An identity provider's JWKS endpoint whose keys, status and max-age tests change."""

    def __init__(self) -> None:
        self.keys: list[SigningKey] = []
        self.status = 200
        self.max_age: int | None = None
        self.padding = 0  # bytes of filler, to make the document too big
        self.fetches = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/jwks.json", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/jwks.json"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _serve(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.status != 200:
            return web.Response(status=self.status, text="identity provider unavailable")
        document: dict[str, Any] = {"keys": [k.jwk() for k in self.keys]}
        if self.padding:
            document["filler"] = "x" * self.padding
        headers = {}
        if self.max_age is not None:
            headers["cache-control"] = f"public, max-age={self.max_age}"
        return web.Response(
            body=json.dumps(document).encode(), content_type="application/json", headers=headers
        )
