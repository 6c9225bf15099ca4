"""The data plane of one sidecar: its proxy listeners, built from the config.

``upstreams[]`` with a ``listen`` address become upstream listeners, whose
target balances over the service's endpoints with the balancer the local API
uses too (one view of in-flight requests and ejections per service).
``inbound[]`` become inbound listeners in front of a local application; the
local service they front is registered with the listener's port in its
metadata (:data:`~serving.envoy_names.INBOUND_PORT_KEY`), so client sidecars dial
the listener instead of the application.

With a :class:`~sidecar.proxy._mtls.MeshTls` (``mesh``), connections between
sidecars are mutual TLS once the control plane has sent a trust bundle, and
inbound listeners check the caller against the intentions.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from typing import Any

from sidecar.cache import UpstreamKey
from sidecar.config import InboundConfig, ProxyPolicy, SidecarConfig, split_hostport
from sidecar.proxy._listener import Listener
from sidecar.proxy._mtls import InboundMesh, MeshTls
from sidecar.proxy._target import Target
from sidecar.routing import Router

__all__ = ["DataPlane", "listener_class"]

logger = logging.getLogger(__name__)

_LISTENERS = {
    "tcp": ("sidecar.proxy._tcp", "TcpListener"),
    "http": ("sidecar.proxy.http", "HttpListener"),
    "grpc": ("sidecar.proxy._grpc", "GrpcListener"),
}


#: The listeners that speak mutual TLS between sidecars.
_MESH_PROTOCOLS = frozenset({"tcp", "http", "grpc"})


def listener_class(protocol: str) -> type[Listener]:
    """The listener class of a protocol (imported on first use: a sidecar
    without gRPC listeners does not pay for the gRPC proxy)."""
    module, name = _LISTENERS[protocol]
    cls: type[Listener] = getattr(importlib.import_module(module), name)
    return cls


def inbound_namespace(inbound: InboundConfig, service: str, config: SidecarConfig) -> str:
    """The namespace of the local service ``service`` an inbound listener fronts
    ("" is ``default``; the one on ``to``'s port when the name is in several):
    the destination's namespace in the intentions the listener decides."""
    _host, port = split_hostport(inbound.to)
    named = [s for s in config.services if s.name == service]
    on_port = [s for s in named if s.port == port]
    return (on_port or named)[0].namespace if named else ""


def inbound_service(inbound: InboundConfig, config: SidecarConfig) -> str:
    """The local service an inbound listener fronts: ``service``, or the one on ``to``'s port."""
    if inbound.service:
        return inbound.service
    _host, port = split_hostport(inbound.to)
    for service in config.services:
        if service.port == port:
            return service.name
    return ""


class DataPlane:
    """Every proxy listener of one sidecar; started after the local API, drained first on stop."""

    def __init__(self, config: SidecarConfig, router: Router, mesh: MeshTls | None = None) -> None:
        self.listeners: list[Listener] = []
        self._targets: dict[UpstreamKey, Target] = {}
        #: local service name → its inbound listener
        self._inbound: dict[str, Listener] = {}
        for upstream in config.upstreams:
            if upstream.listen is None:
                continue
            name = upstream.service if upstream.key[0] == "default" else "/".join(upstream.key)
            target = Target(name, upstream, router.balancer(upstream.key))
            if mesh is not None and upstream.protocol in _MESH_PROTOCOLS:
                target.mesh, target.service = mesh, "/".join(upstream.key)
            self._targets[upstream.key] = target
            self.listeners.append(self._listener(name, upstream.listen, target, upstream))
        for inbound in config.inbound:
            host, port = split_hostport(inbound.to)
            service = inbound_service(inbound, config)
            name = f"inbound:{service}" if service else f"inbound:{inbound.to}"
            target = Target.fixed(name, inbound, [(host, port)])
            listener = self._listener(name, inbound.listen, target, inbound)
            if mesh is not None and service and inbound.protocol in _MESH_PROTOCOLS:
                listener.mesh = InboundMesh(
                    mesh, service, inbound_namespace(inbound, service, config)
                )
            self.listeners.append(listener)
            if service:
                self._inbound.setdefault(service, listener)
        self._started = False

    @staticmethod
    def _listener(name: str, listen: str, target: Target, policy: ProxyPolicy) -> Listener:
        return listener_class(policy.protocol)(name, listen, target, policy)

    async def start(self) -> None:
        """Binds every listener; on a failure, closes those already bound and raises
        :class:`~sidecar.errors.StartupError`."""
        self._started = True
        for listener in self.listeners:
            try:
                await listener.start()
            except BaseException:
                await self.drain(0.0)
                raise
            logger.info("%s listener %s on %s", listener.protocol, listener.name, listener.address)

    async def drain(self, grace: float) -> None:
        """Stops accepting everywhere at once, then lets each listener finish within ``grace``."""
        if not self._started:
            return
        await asyncio.gather(*(listener.drain(grace) for listener in self.listeners))

    def endpoints_changed(self, key: UpstreamKey) -> None:
        """The router's balancer for ``key`` was updated: connections to removed endpoints drain."""
        target = self._targets.get(key)
        if target is not None:
            target.sync()

    def inbound_port(self, service: str) -> int | None:
        """The bound port of the inbound listener fronting a local service, if any."""
        listener = self._inbound.get(service)
        if listener is None or not listener.address:
            return None
        return split_hostport(listener.address, allow_zero=True)[1]

    def status(self) -> list[dict[str, Any]]:
        return [listener.status() for listener in self.listeners]
