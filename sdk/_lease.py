"""The one lease a client holds for its ephemeral registrations.

The first ephemeral registration grants the lease (its ``lease_ttl`` sets the
TTL); later ones join it. A background task, owned here and cancelled and
awaited on close, refreshes it about every TTL/3. When the control plane no
longer knows the lease (it expired while we were cut off, or the control
plane restarted with an empty store) the keeper grants a new one and
registers every ephemeral instance it holds again: this client's view of
what it registered is the source of truth.
"""

from __future__ import annotations

import asyncio
import logging

from ecosystem.v1 import registry_pb2

from sdk._errors import EcoError, FailedPreconditionError, NotFoundError
from sdk._retry import Backoff
from sdk._transport import Sleep, Transport
from sdk._types import Instance

__all__ = ["InstanceKey", "LeaseKeeper", "instance_key"]

logger = logging.getLogger(__name__)

#: (namespace, service, id): what identifies an instance in the registry.
InstanceKey = tuple[str, str, str]

# The registry reads an empty namespace as this one.
_DEFAULT_NAMESPACE = "default"

_LEASE_GONE = (NotFoundError, FailedPreconditionError)


def instance_key(namespace: str, service: str, id: str) -> InstanceKey:
    """The key of an instance; "" and "default" are the same namespace."""
    return (namespace or _DEFAULT_NAMESPACE, service, id)


class LeaseKeeper:
    """Grants, refreshes and restores the client's lease and its instances."""

    def __init__(self, transport: Transport, *, sleep: Sleep = asyncio.sleep) -> None:
        self._transport = transport
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self._held: dict[InstanceKey, registry_pb2.Instance] = {}
        self._lease_id = 0
        self._ttl = 0
        self._requested_ttl = 0
        # Set while some held instances may be missing from the registry.
        self._stale = False
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def lease_id(self) -> int:
        """The current lease, or 0 when none is held (or it must be re-granted)."""
        return self._lease_id

    @property
    def ttl(self) -> int:
        return self._ttl

    @property
    def held(self) -> tuple[InstanceKey, ...]:
        return tuple(self._held)

    async def register(
        self, instance: registry_pb2.Instance, *, ttl: int, expected_revision: int | None
    ) -> Instance:
        """Registers ``instance`` (an ``ecosystem.v1.Instance``) on the client's lease."""
        if not 1 <= ttl <= 3600:
            raise ValueError(f"lease_ttl must be 1-3600 seconds, got {ttl}")
        async with self._lock:
            if self._lease_id == 0 and not self._held:
                self._ttl = self._requested_ttl = ttl
            elif ttl != self._requested_ttl:
                logger.warning(
                    "lease_ttl=%d ignored for %s: the client's lease has ttl=%d",
                    ttl,
                    instance.id,
                    self._ttl,
                )
            if self._stale:
                await self._restore_locked()
            try:
                stored = await self._send(instance, expected_revision)
            except _LEASE_GONE:
                if self._lease_id == 0:
                    raise
                logger.warning("lease %d is gone; granting a new one", self._lease_id)
                self._lease_id = 0
                self._stale = True
                await self._restore_locked()
                stored = await self._send(instance, expected_revision)
            # An id the control plane chose is the one to keep alive and restore.
            instance.id = stored.id
            key = instance_key(instance.namespace, instance.service, instance.id)
            self._held[key] = instance
            self._ensure_task()
            return stored

    async def release(self, key: InstanceKey) -> None:
        """Stops holding an instance (deregistered, or re-registered as persistent).

        When no instance is left, the keepalive stops and the lease is left
        to expire on the server.
        """
        async with self._lock:
            if self._held.pop(key, None) is None or self._held:
                return
            self._lease_id = 0
            self._stale = False
            task, self._task = self._task, None
        await _cancel(task)

    async def close(self) -> None:
        """Stops the keepalive and revokes the lease, so held instances go at
        once (if the control plane cannot be reached, they go when the lease
        expires). Idempotent."""
        self._closed = True
        task, self._task = self._task, None
        await _cancel(task)
        lease_id, self._lease_id = self._lease_id, 0
        if lease_id and self._held:
            self._held.clear()
            try:
                await self._transport.unary(
                    "RevokeLease",
                    registry_pb2.RevokeLeaseRequest(lease_id=lease_id),
                    idempotent=True,
                    time_limit=1.0,
                )
            except EcoError as err:
                logger.info("lease %d not revoked (%s); it will expire", lease_id, err)

    async def _send(
        self, instance: registry_pb2.Instance, expected_revision: int | None
    ) -> Instance:
        request = registry_pb2.RegisterInstanceRequest(
            instance=instance, lease_id=self._lease_id, lease_ttl_seconds=self._ttl
        )
        if expected_revision is not None:
            request.expected_revision = expected_revision
        response = await self._transport.unary(
            "RegisterInstance", request, idempotent=expected_revision is None
        )
        if response.lease_id and response.lease_id != self._lease_id:
            if self._lease_id:
                logger.info("lease %d replaced by %d", self._lease_id, response.lease_id)
            self._lease_id = int(response.lease_id)
        if response.lease_ttl_seconds:
            self._ttl = int(response.lease_ttl_seconds)
        return Instance.from_proto(response.instance)

    async def _restore_locked(self) -> None:
        """Registers every held instance again, granting a new lease if there is none.

        Stays stale until every instance is back, so that a failure half-way
        is finished by the next keepalive round.
        """
        self._stale = True
        for key, instance in list(self._held.items()):
            try:
                await self._send(instance, None)
            except _LEASE_GONE:
                # The lease we just granted vanished at once: start again next round.
                self._lease_id = 0
                raise
            except EcoError as err:
                if err.code not in ("INVALID_ARGUMENT", "ALREADY_EXISTS", "ABORTED"):
                    raise
                # The registry now refuses it; holding it would fail forever.
                logger.error("dropping ephemeral instance %s: %s", key, err)
                del self._held[key]
        self._stale = False
        if self._held:
            logger.info(
                "lease %d granted; %d ephemeral instance(s) registered again",
                self._lease_id,
                len(self._held),
            )

    def _ensure_task(self) -> None:
        if self._closed or (self._task is not None and not self._task.done()):
            return
        self._task = asyncio.get_running_loop().create_task(
            self._keep_alive(), name=f"eco-lease-keepalive-{id(self):x}"
        )

    async def _keep_alive(self) -> None:
        backoff = Backoff(0.2, max(1.0, self._ttl / 3))
        delay = self._ttl / 3
        while True:
            await self._sleep(delay)
            try:
                async with self._lock:
                    await self._refresh_locked()
                backoff.reset()
                delay = max(0.1, self._ttl / 3)
            except EcoError as err:
                # Keep trying well inside the TTL; the lease may still be saved.
                delay = min(backoff.next_delay(), max(0.1, self._ttl / 3))
                logger.warning(
                    "keepalive of lease %d failed: %s; retrying in %.2fs",
                    self._lease_id,
                    err,
                    delay,
                )

    async def _refresh_locked(self) -> None:
        if not self._held:
            return
        if self._lease_id == 0 or self._stale:
            await self._restore_locked()
            return
        try:
            response = await self._transport.unary(
                "KeepAlive", registry_pb2.KeepAliveRequest(lease_id=self._lease_id), idempotent=True
            )
        except _LEASE_GONE:
            logger.warning(
                "lease %d lost; granting a new one and registering %d instance(s) again",
                self._lease_id,
                len(self._held),
            )
            self._lease_id = 0
            await self._restore_locked()
            return
        if response.ttl_seconds:
            self._ttl = int(response.ttl_seconds)


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is None or task.done():
        return
    task.cancel()
    # wait() does not re-raise the cancellation we caused, while one aimed at
    # the caller still propagates.
    await asyncio.wait([task])
