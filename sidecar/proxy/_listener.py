"""What every proxy listener is: bind, forward through a :class:`Target`, drain."""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from serving.http_limits import ConnectionGate
from sidecar.config import ProxyPolicy, split_hostport
from sidecar.errors import StartupError
from sidecar.proxy._target import Target

if TYPE_CHECKING:
    from sidecar.proxy._mtls import InboundMesh

__all__ = ["Listener"]


class Listener(abc.ABC):
    """One listening address that forwards to one target, in one protocol.

    ``name`` says which listener it is in logs and errors (``orders``,
    ``inbound:15001``). The constructor does no I/O. :meth:`start` binds
    (``port 0``: any free port; :attr:`address` is the bound ``host:port``)
    and raises :class:`~sidecar.errors.StartupError` naming the listener when
    it cannot. :meth:`drain` stops accepting at once, lets requests in
    flight finish for up to ``grace`` seconds, then closes everything;
    it is idempotent, and a drained listener cannot be started again.
    """

    protocol = ""
    #: Mutual TLS and the intention check of an inbound listener (set by the data
    #: plane; see sidecar.proxy._mtls). A class default: the HTTP listener keeps
    #: its instance attributes few (tests/unit/proxy/test_http_listener.py).
    mesh: InboundMesh | None = None

    def __init__(self, name: str, listen: str, target: Target, policy: ProxyPolicy) -> None:
        self.name = name
        self.listen = listen
        self.target = target
        self.policy = policy
        self.host, self.port = split_hostport(listen, allow_zero=True)
        self.address = ""
        #: client connections held, in all and per address (``max_connections``,
        #: ``max_connections_per_ip``): a listener that accepts itself admits each
        #: accepted connection here, and releases it once when it ends
        self.gate = ConnectionGate(
            f"{self.protocol} listener {name}",
            max_connections=policy.max_connections,
            max_per_client=policy.max_connections_per_ip,
        )
        target.on_removed(self.endpoints_removed)

    @abc.abstractmethod
    async def start(self) -> None:
        """Binds the listening socket and starts accepting."""

    @abc.abstractmethod
    async def drain(self, grace: float) -> None:
        """Stops accepting, waits up to ``grace`` s for what is in flight, closes the rest."""

    def endpoints_removed(self, ids: frozenset[str]) -> None:
        """The target lost these endpoints: established connections to them
        may finish, but nothing new is sent (idle pooled connections close)."""
        del ids

    def protocol_factory(
        self, make: Callable[[], asyncio.BaseProtocol]
    ) -> Callable[[], asyncio.BaseProtocol]:
        """``make`` for a listener without mutual TLS; for an inbound one, a
        factory that wraps each connection in TLS once the sidecar has a bundle."""
        mesh = self.mesh
        return make if mesh is None else mesh.factory(make)

    def _bound(self, port: int) -> None:
        self.address = f"[{self.host}]:{port}" if ":" in self.host else f"{self.host}:{port}"

    def _cannot_listen(self, exc: OSError) -> StartupError:
        return StartupError(f"{self.name}: cannot listen on {self.listen}: {exc.strerror or exc}")

    def status(self) -> dict[str, Any]:
        gate = self.gate
        return {
            "name": self.name,
            "protocol": self.protocol,
            "listen": self.address or self.listen,
            "connections": {
                "open": gate.count,
                "max": gate.max_connections,
                "max_per_ip": gate.max_per_client,
                "refused": gate.refused,
            },
            **self.target.status(),
        }
