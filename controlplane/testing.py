"""Helpers for testing applications against a real, in-process control plane.

::

    import controlplane.testing

    async def test_my_service() -> None:
        async with controlplane.testing.control_plane() as cp:
            async with cp.client() as client:
                await client.register("web", "127.0.0.1", 8080)
                ...

It needs the control plane installed (``pip install 'ecosystem[server]'``);
an application's own code needs only the SDK.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from controlplane.app import ControlPlane
from controlplane.config import ControlPlaneConfig
from sdk import AsyncClient, RetryPolicy

__all__ = ["TestControlPlane", "control_plane", "test_config"]


@dataclass(eq=False)
class TestControlPlane:
    """A running in-process control plane: where it listens, and clients for it.

    Clients made by :meth:`client` are closed when the control plane stops.
    """

    __test__ = False  # not a test class, whatever the test collector thinks

    address: str
    admin_address: str
    _clients: list[AsyncClient] = field(default_factory=list, repr=False)

    def client(
        self,
        *,
        timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        extra_servers: Sequence[str] = (),
    ) -> AsyncClient:
        """A new :class:`AsyncClient` for this control plane (plus ``extra_servers``)."""
        client = AsyncClient([self.address, *extra_servers], timeout=timeout, retry=retry)
        self._clients.append(client)
        return client

    async def aclose_clients(self) -> None:
        clients, self._clients = self._clients, []
        for client in clients:
            await client.close()


def test_config(**fields: Any) -> ControlPlaneConfig:
    """A configuration for a control plane in a test: free ports on 127.0.0.1,
    the memory store, a short grace and no drain pause; ``fields`` override."""
    defaults: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:0",
        "store_url": "memory://",
        "grace": 0.5,
        # Tests want a fast shutdown: no pause for balancers to notice the drain.
        "drain_delay": 0.0,
    }
    return ControlPlaneConfig(**{**defaults, **fields})


test_config.__test__ = False  # type: ignore[attr-defined]  # not a test, for pytest


@contextlib.asynccontextmanager
async def control_plane(
    store_url: str = "memory://",
    *,
    listen: str = "127.0.0.1:0",
    admin_listen: str = "127.0.0.1:0",
    grace: float = 1.0,
    **config: Any,
) -> AsyncIterator[TestControlPlane]:
    """Runs a control plane in this event loop for the duration of the block.

    It listens on ``listen`` (a free port on 127.0.0.1 by default) with the
    given store (``memory://`` by default; ``sqlite://PATH`` to test
    restarts). Extra keyword arguments go to ``ControlPlaneConfig``. To
    test a restart, start it again with ``listen=cp.address``.
    """
    settings = test_config(
        listen=listen, admin_listen=admin_listen, store_url=store_url, grace=grace, **config
    )
    async with ControlPlane(settings) as cp:
        handle = TestControlPlane(address=str(cp.address), admin_address=str(cp.admin_address))
        try:
            yield handle
        finally:
            await handle.aclose_clients()
