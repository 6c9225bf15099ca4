"""Asking the other replicas about the sidecars they hold.

A sidecar's live state (what it has applied, whether it is in sync) is known
only to the replica holding its stream; the store keeps it only as of the last
connect or disconnect. So with several replicas, ``WaitForRevision`` ("has
revision R reached every sidecar?") and ``ListNodes`` ask the other live
replicas (their addresses come from their `LoadSpreader` entries) for their own
sidecars, and combine the answers with their own. Those calls carry the
metadata `SCOPE`, which makes a replica answer for itself only, so they never
fan out again. They also carry the caller's ``authorization`` (its ACL token),
so a peer answers exactly what the caller may see. A replica that does not
answer is left out: its sidecars are reconnecting elsewhere, or it is gone
with them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import grpc
from ecosystem.v1 import agent_pb2_grpc

__all__ = ["SCOPE", "answers_for_itself", "ask_peers", "caller_token"]

log = logging.getLogger(__name__)

#: Metadata of a call that asks a replica about its own sidecars only.
SCOPE = ("x-eco-scope", "replica")


def answers_for_itself(context: Any) -> bool:
    """Whether this call came from another replica's fan-out."""
    return any((key, value) == SCOPE for key, value in context.invocation_metadata() or ())


def caller_token(context: Any) -> tuple[tuple[str, str], ...]:
    """The caller's ``authorization`` metadata, to pass on to the peers."""
    return tuple(
        (key, value)
        for key, value in context.invocation_metadata() or ()
        if key == "authorization" and isinstance(value, str)
    )


async def ask_peers(
    addresses: Iterable[str],
    method: str,
    request: Any,
    *,
    timeout: float,
    credentials: grpc.ChannelCredentials | None = None,
    metadata: tuple[tuple[str, str], ...] = (),
) -> list[Any]:
    """Calls the AgentService ``method`` on every address at once, scoped to each
    replica's own sidecars; returns the answers of those that answered in time.
    ``credentials``: TLS, when the replicas serve it."""

    def channel(address: str) -> grpc.aio.Channel:
        if credentials is None:
            return grpc.aio.insecure_channel(address)
        return grpc.aio.secure_channel(address, credentials)

    async def ask(address: str) -> Any | None:
        try:
            async with channel(address) as channel_:
                stub = agent_pb2_grpc.AgentServiceStub(channel_)  # type: ignore[no-untyped-call]
                return await getattr(stub, method)(
                    request, metadata=(SCOPE, *metadata), timeout=timeout
                )
        except grpc.aio.AioRpcError as exc:
            log.info("replica %s did not answer %s: %s", address, method, exc.code().name)
            return None

    answers = await asyncio.gather(*(ask(address) for address in addresses))
    return [answer for answer in answers if answer is not None]
