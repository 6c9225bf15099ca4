"""Mutual TLS between sidecars, and the intention check at inbound listeners.

Once the control plane has sent a trust bundle (it has a CA: ``--tls-ca``),
every connection to a remote sidecar's inbound listener is TLS 1.3 with the
workload certificates on both sides:

- an inbound listener wraps each accepted connection in TLS (its protocol
  factory returns asyncio's own TLS protocol around the listener's, per
  connection, so a sidecar whose control plane has no CA serves plaintext
  exactly as before); the caller must present a certificate signed by a
  root of the bundle, or the handshake fails (a plaintext client sees the
  connection closed);
- the caller's SPIFFE ID (the certificate's URI SAN, in this trust domain:
  TLS libraries do not check URI name constraints, so it is checked here)
  names the calling service and its namespace, and the intentions decide
  whether it may call the service the listener fronts, in that service's
  namespace (:class:`~sidecar.intentions.IntentionTable`);
- an upstream listener dials an endpoint that has an inbound listener
  (``INBOUND_PORT_KEY`` in its metadata) over TLS with the certificate of
  the sidecar's first local service (the node's when it has none), and
  checks that the server is the service it meant to reach.

Connections an inbound listener accepted are remembered with their caller,
and checked again whenever the intentions change (:meth:`MeshTls.track`):
the listener closes a TCP connection now denied, and refuses the next
request on an HTTP one.

Contexts are built once per certificate and reused (a renewal or a new
bundle clears them), so a connection costs a handshake, not a file write.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography import x509

from sdk import IntentionDecision, IntentionName
from sidecar.config import INBOUND_PORT_KEY

if TYPE_CHECKING:
    from sidecar.identity import SidecarIdentity
    from sidecar.intentions import IntentionTable

__all__ = ["HANDSHAKE_TIMEOUT", "InboundMesh", "MeshTls", "Peer", "PeerError"]

logger = logging.getLogger(__name__)

#: Seconds a TLS handshake may take at an inbound listener.
HANDSHAKE_TIMEOUT = 10
_DEFAULT_NAMESPACE = "default"


class PeerError(Exception):
    """The peer's certificate names no identity of this trust domain."""


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is at the other end: a service (``service`` set) or a node."""

    spiffe_id: str
    namespace: str = ""
    service: str = ""
    node: str = ""

    @property
    def intention_name(self) -> str:
        """The caller as intentions name it: ``NAMESPACE/SERVICE`` ("" for a node)."""
        return f"{self.namespace}/{self.service}" if self.service else ""


def _peer_of(transport: asyncio.BaseTransport, trust_domain: str) -> Peer:
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise PeerError("no peer certificate")
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise PeerError("the peer certificate has no SPIFFE ID") from exc
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise PeerError(f"the peer certificate has {len(uris)} URI names, not one SPIFFE ID")
    uri = uris[0]
    prefix = f"spiffe://{trust_domain}/"
    if not uri.startswith(prefix):
        raise PeerError(f"{uri!r} is not in trust domain {trust_domain!r}")
    segments = uri[len(prefix) :].split("/")
    if len(segments) == 4 and segments[0] == "ns" and segments[2] == "svc" and all(segments):
        return Peer(uri, namespace=segments[1], service=segments[3])
    if len(segments) == 2 and segments[0] == "node" and segments[1]:
        return Peer(uri, node=segments[1])
    raise PeerError(f"{uri!r} is neither a service's nor a node's SPIFFE ID")


@dataclass(eq=False, slots=True)
class _Tracked:
    caller: IntentionName
    destination: IntentionName
    on_change: Callable[[IntentionDecision], None]


class MeshTls:
    """The TLS contexts and the peer checks of one sidecar's proxy listeners.

    ``caller`` is the (namespace, service) whose certificate upstream
    connections present (None: the node's).
    """

    def __init__(
        self,
        identity: SidecarIdentity,
        intentions: IntentionTable,
        caller: tuple[str, str] | None,
    ) -> None:
        self.identity = identity
        self.intentions = intentions
        self.caller = caller
        self._contexts: dict[tuple[str, str, bool], ssl.SSLContext] = {}
        self._tracked: dict[object, _Tracked] = {}
        self._was_active = False
        self._on_active: list[Callable[[], None]] = []
        identity.add_listener(self._identity_changed)
        intentions.add_listener(self._recheck)

    def on_active(self, callback: Callable[[], None]) -> None:
        """Calls ``callback`` once, when the first trust bundle arrives."""
        self._on_active.append(callback)

    def _identity_changed(self) -> None:
        self._contexts.clear()
        if self.active and not self._was_active:
            self._was_active = True
            callbacks, self._on_active = self._on_active, []
            for callback in callbacks:
                try:
                    callback()
                except Exception:
                    logger.exception("mutual TLS activation callback failed")

    @property
    def active(self) -> bool:
        """True once the control plane has sent a trust bundle (it has a CA)."""
        return self.identity.bundle is not None

    # -- contexts -----------------------------------------------------------------------

    def _context(self, namespace: str, service: str, *, server: bool) -> ssl.SSLContext:
        key = (namespace, service, server)
        context = self._contexts.get(key)
        if context is None:
            if service:
                context = self.identity.ssl_context_for(service, namespace, server=server)
            else:
                context = self.identity.node_ssl_context(server=server)
            self._contexts[key] = context
        return context

    def server_protocol(
        self, service: str, make: Callable[[], asyncio.BaseProtocol], namespace: str = ""
    ) -> asyncio.BaseProtocol:
        """The protocol for one connection accepted by the inbound listener
        fronting ``service`` (of ``namespace``): ``make()`` as it is without a
        bundle, wrapped in TLS with one; a connection that cannot be served yet
        (no certificate) is closed at once."""
        if not self.active:
            return make()
        try:
            context = self._context(namespace or _DEFAULT_NAMESPACE, service, server=True)
        except LookupError as exc:
            logger.warning("inbound %s: refusing a connection: %s", service, exc)
            return _Refused()
        return asyncio.sslproto.SSLProtocol(
            asyncio.get_running_loop(),
            make(),
            context,
            # No waiter: nobody awaits the handshake (the wrapped protocol hears of
            # the connection once it is done; a failed one never reaches it).
            None,  # type: ignore[arg-type]
            server_side=True,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
        )

    def client_context(self, metadata: Any) -> ssl.SSLContext | None:
        """The context to dial an endpoint with: None for plaintext (no bundle,
        or an endpoint with no inbound listener); raises ConnectionRefusedError
        (an OSError: a connect failure) when this sidecar has no certificate yet."""
        if not self.active or INBOUND_PORT_KEY not in metadata:
            return None
        namespace, service = self.caller or ("", "")
        try:
            return self._context(namespace or _DEFAULT_NAMESPACE, service, server=False)
        except LookupError as exc:
            raise ConnectionRefusedError(f"mutual TLS: {exc}") from exc

    def check_server(self, transport: asyncio.BaseTransport, service: str) -> None:
        """Raises ConnectionRefusedError unless the TLS server at the other end of
        ``transport`` (if it is TLS) is ``service`` (``SERVICE`` of ``default``,
        or ``NAMESPACE/SERVICE``): its namespace counts as much as its name."""
        if transport.get_extra_info("ssl_object") is None:
            return
        bundle = self.identity.bundle
        try:
            peer = _peer_of(transport, bundle.trust_domain if bundle else "")
        except PeerError as exc:
            raise ConnectionRefusedError(f"mutual TLS: the server: {exc}") from exc
        expected = IntentionName.parse(service)
        if (peer.namespace, peer.service) != (expected.namespace, expected.service):
            raise ConnectionRefusedError(
                f"mutual TLS: the server is {peer.spiffe_id}, not service {expected.qualified!r}"
            )

    # -- the inbound check ------------------------------------------------------------------

    def authorize(self, transport: asyncio.BaseTransport, destination: str) -> IntentionDecision:
        """May the TLS peer of ``transport`` (its SPIFFE ID's namespace and
        service) call ``destination`` (``SERVICE`` of ``default``, or
        ``NAMESPACE/SERVICE``)? Plaintext connections (no bundle) are allowed:
        intentions need identities."""
        if transport.get_extra_info("ssl_object") is None:
            return IntentionDecision(True, None, "plaintext: no identities to check")
        bundle = self.identity.bundle
        try:
            peer = _peer_of(transport, bundle.trust_domain if bundle else "")
        except PeerError as exc:
            return IntentionDecision(False, None, str(exc))
        return self.intentions.decide(peer.intention_name, destination)

    def caller_of(self, transport: asyncio.BaseTransport) -> str:
        """The calling service as intentions name it, ``NAMESPACE/SERVICE``
        ("" for a node or a plaintext connection)."""
        if transport.get_extra_info("ssl_object") is None:
            return ""
        bundle = self.identity.bundle
        try:
            return _peer_of(transport, bundle.trust_domain if bundle else "").intention_name
        except PeerError:
            return ""

    def track(
        self,
        key: object,
        transport: asyncio.BaseTransport,
        destination: str,
        on_change: Callable[[IntentionDecision], None],
    ) -> None:
        """Calls ``on_change`` with the new decision for this connection whenever
        the intentions change, until :meth:`forget`."""
        if transport.get_extra_info("ssl_object") is None:
            return
        caller = self.caller_of(transport)
        self._tracked[key] = _Tracked(
            IntentionName.parse(caller) if caller else IntentionName("", ""),
            IntentionName.parse(destination),
            on_change,
        )

    def forget(self, key: object) -> None:
        self._tracked.pop(key, None)

    def _recheck(self) -> None:
        for tracked in list(self._tracked.values()):
            decision = self.intentions.decide(tracked.caller, tracked.destination)
            try:
                tracked.on_change(decision)
            except Exception:
                logger.exception("intention re-check failed")


class InboundMesh:
    """What one inbound listener needs of the mesh: its TLS and its check, for
    the local service it fronts (``service`` of ``namespace``, "" is ``default``)."""

    __slots__ = ("destination", "mesh", "namespace", "service")

    def __init__(self, mesh: MeshTls, service: str, namespace: str = "") -> None:
        self.mesh = mesh
        self.service = service
        self.namespace = namespace or _DEFAULT_NAMESPACE
        #: The service as intentions name it: ``NAMESPACE/SERVICE``.
        self.destination = f"{self.namespace}/{service}"

    def factory(
        self, make: Callable[[], asyncio.BaseProtocol]
    ) -> Callable[[], asyncio.BaseProtocol]:
        return lambda: self.mesh.server_protocol(self.service, make, self.namespace)

    def authorize(self, transport: asyncio.BaseTransport) -> IntentionDecision:
        return self.mesh.authorize(transport, self.destination)

    def decide(self, caller: str) -> IntentionDecision:
        """May ``caller`` (``NAMESPACE/SERVICE``, "" for a node) call this service?"""
        return self.mesh.intentions.decide(caller, self.destination)

    def track(
        self,
        key: object,
        transport: asyncio.BaseTransport,
        on_change: Callable[[IntentionDecision], None],
    ) -> None:
        self.mesh.track(key, transport, self.destination, on_change)

    def forget(self, key: object) -> None:
        self.mesh.forget(key)


class _Refused(asyncio.Protocol):
    """Closes the connection at once (an RST): an inbound listener that must
    speak mutual TLS has no certificate yet."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]
