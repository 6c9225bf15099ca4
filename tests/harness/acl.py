"""A control plane with ``--acl deny`` in-process, bootstrapped, and tokens made to order."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from ecosystem.v1 import acl_pb2, acl_pb2_grpc

from controlplane import ControlPlane
from controlplane.testing import test_config

__all__ = ["AclPlane", "acl_plane", "bearer"]


def bearer(secret: str | None) -> tuple[tuple[str, str], ...] | None:
    """The gRPC metadata that presents ``secret`` (None for no token)."""
    return (("authorization", f"Bearer {secret}"),) if secret else None


@dataclass
class AclPlane:
    plane: ControlPlane
    channel: grpc.aio.Channel
    management: str

    async def token(self, *rules: str) -> str:
        """A new token with one new policy of ``rules`` (``resource:pattern:access``)."""
        stub = acl_pb2_grpc.AclServiceStub(self.channel)
        name = f"p-{uuid.uuid4().hex[:8]}"
        parsed = [
            acl_pb2.AclRule(
                **dict(zip(("resource", "pattern", "access"), r.split(":"), strict=True))
            )
            for r in rules
        ]
        await stub.CreatePolicy(
            acl_pb2.CreatePolicyRequest(policy=acl_pb2.AclPolicy(name=name, rules=parsed)),
            metadata=bearer(self.management),
        )
        response = await stub.CreateToken(
            acl_pb2.CreateTokenRequest(policies=[name], description=f"test {name}"),
            metadata=bearer(self.management),
        )
        return str(response.secret)

    async def delete_token(self, secret: str) -> None:
        """Deletes the token whose secret is ``secret``."""
        stub = acl_pb2_grpc.AclServiceStub(self.channel)
        me = await stub.ResolveToken(acl_pb2.ResolveTokenRequest(), metadata=bearer(secret))
        await stub.DeleteToken(
            acl_pb2.DeleteTokenRequest(accessor_id=me.token.accessor_id),
            metadata=bearer(self.management),
        )


@contextlib.asynccontextmanager
async def acl_plane(
    tmp_path: Path, *, root_ca: Path | None = None, **config: object
) -> AsyncIterator[AclPlane]:
    """A memory-store control plane on 127.0.0.1 with ``--acl deny``, bootstrapped
    (reached over TLS trusting ``root_ca`` when given: with ``tls_cert``/``tls_key``)."""
    settings = test_config(acl="deny", **config)
    async with ControlPlane(settings) as cp:
        if root_ca is None:
            opened = grpc.aio.insecure_channel(cp.address)
        else:
            credentials = grpc.ssl_channel_credentials(await asyncio.to_thread(root_ca.read_bytes))
            opened = grpc.aio.secure_channel(cp.address, credentials)
        async with opened as channel:
            stub = acl_pb2_grpc.AclServiceStub(channel)
            boot = await stub.Bootstrap(acl_pb2.BootstrapRequest())
            yield AclPlane(cp, channel, str(boot.secret))
