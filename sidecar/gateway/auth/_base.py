"""What every authentication plugin shares: its shape, its challenges, and the chain.

A plugin is built once from its config and the :class:`ConsumerIndex`; per
request the gateway asks :meth:`AuthPlugin.present` ("does this request
carry my kind of credential?", a cheap look at a header) and then
:meth:`AuthPlugin.authenticate`, which either sets ``request.consumer`` and
returns None, or returns the 401/403 to send.

:class:`AuthChain` is how a route with several authentication plugins uses
them: the first plugin whose credential the request carries decides (a bad
credential is refused, not passed on to the next plugin); a request with no
credential at all gets one 401 carrying every plugin's challenge.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

from sidecar.gateway.request import GatewayRequest, LocalResponse

__all__ = [
    "DEFAULT_REALM",
    "AuthChain",
    "AuthPlugin",
    "check_realm",
    "quoted",
    "unauthorized",
]

DEFAULT_REALM = "gateway"
_REALM = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]{1,64}")
_UNSAFE = re.compile(r'[\\"\x00-\x1f\x7f-\uffff]')


def check_realm(value: str) -> str:
    """A pydantic field check for ``realm``."""
    if not _REALM.fullmatch(value):
        raise ValueError(
            f"{value!r}: 1 to 64 printable ASCII characters without quotes or backslashes"
        )
    return value


def quoted(value: str) -> str:
    """``value`` as an RFC 9110 quoted-string; characters that could break the
    header (quotes, backslashes, controls, non-ASCII) become ``?``."""
    return '"' + _UNSAFE.sub("?", value) + '"'


def unauthorized(
    kind: str, message: str, challenges: Iterable[str], headers: Iterable[tuple[str, str]] = ()
) -> LocalResponse:
    """A 401 with one ``WWW-Authenticate`` field per challenge (RFC 9110 §11.6.1)."""
    fields = [("www-authenticate", challenge) for challenge in challenges]
    return LocalResponse.error(401, kind, message, (*fields, *headers))


def forbidden(message: str) -> LocalResponse:
    """A 403: the consumer is known, but this route does not admit it."""
    return LocalResponse.error(403, "forbidden", message)


@runtime_checkable
class AuthPlugin(Protocol):
    """The shape of an authentication plugin (see the module docstring)."""

    #: the plugin's config key and ``Consumer.via``: key_auth, jwt, hmac, mtls
    name: str
    #: True when :meth:`authenticate` reads ``request.body`` (the gateway reads
    #: the body, within its size limit, before calling it)
    needs_body: bool

    def present(self, request: GatewayRequest) -> bool:
        """Whether the request carries this plugin's kind of credential."""
        ...

    def challenge(self) -> str:
        """The ``WWW-Authenticate`` value for a request that carries no credential."""
        ...

    async def authenticate(self, request: GatewayRequest) -> LocalResponse | None:
        """Sets ``request.consumer`` and returns None, or returns the refusal."""
        ...


class AuthChain:
    """The authentication plugins of one route, used as "any of" (module docstring)."""

    __slots__ = ("_challenges", "needs_body", "plugins")

    def __init__(self, plugins: Sequence[AuthPlugin]) -> None:
        if not plugins:
            raise ValueError("an authentication chain needs at least one plugin")
        self.plugins = tuple(plugins)
        self.needs_body = any(p.needs_body for p in self.plugins)
        self._challenges = tuple(p.challenge() for p in self.plugins)

    async def authenticate(self, request: GatewayRequest) -> LocalResponse | None:
        if len(self.plugins) == 1:
            return await self.plugins[0].authenticate(request)
        for plugin in self.plugins:
            if plugin.present(request):
                return await plugin.authenticate(request)
        names = ", ".join(p.name for p in self.plugins)
        return unauthorized(
            "unauthenticated", f"this route needs credentials ({names})", self._challenges
        )
