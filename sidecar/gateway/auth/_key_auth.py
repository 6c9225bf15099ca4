"""``key_auth``: an API key in a header (``x-api-key``) or a query parameter.

::

    plugins:
      key_auth: {header: x-api-key, query: api_key, hide_credentials: true}

The key is looked up in the consumers' ``api_keys`` (by digest, see
:class:`ConsumerIndex`). A request without a key, or with a key nobody
holds, is refused with 401 and ``WWW-Authenticate: ApiKey realm="gateway",
header="x-api-key"``. With ``hide_credentials`` (the default) the key is
removed from the request before it goes upstream.
"""

from __future__ import annotations

import re
from typing import Self
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from sidecar.gateway.auth._base import DEFAULT_REALM, check_realm, quoted, unauthorized
from sidecar.gateway.auth._consumers import MAX_API_KEY_LENGTH, ConsumerIndex
from sidecar.gateway.request import GatewayRequest, LocalResponse

__all__ = ["KeyAuth", "KeyAuthConfig"]

_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}")
_QUERY_NAME = re.compile(r"[A-Za-z0-9._~\-]{1,64}")


class KeyAuthConfig(BaseModel):
    """``header``: the request header holding the key (None: no header);
    ``query``: a query parameter holding it (None: no query parameter; a
    header wins when both are sent); ``hide_credentials``: remove the key
    before the request goes upstream; ``realm``: named in the challenge."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    header: str | None = "x-api-key"
    query: str | None = None
    hide_credentials: bool = True
    realm: str = DEFAULT_REALM

    @field_validator("header")
    @classmethod
    def _check_header(cls, value: str | None) -> str | None:
        if value is not None and not _HEADER_NAME.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a header name (letters, digits and -._~!#$%&'*+^`|)"
            )
        return None if value is None else value.lower()

    @field_validator("query")
    @classmethod
    def _check_query(cls, value: str | None) -> str | None:
        if value is not None and not _QUERY_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a query parameter name (letters, digits and -._~)")
        return value

    _realm = field_validator("realm")(check_realm)

    @model_validator(mode="after")
    def _check_some(self) -> Self:
        if self.header is None and self.query is None:
            raise ValueError("give 'header' or 'query' (or both): where the key is sent")
        return self


def _split_query(query: str, name: str) -> tuple[str | None, str]:
    """The first value of parameter ``name`` (decoded) and the query without it."""
    found: str | None = None
    kept: list[str] = []
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if unquote(key) == name:
            if found is None:
                found = unquote(value)
            continue
        kept.append(part)
    return found, "&".join(kept)


class KeyAuth:
    """The ``key_auth`` plugin (module docstring)."""

    name = "key_auth"
    needs_body = False

    __slots__ = ("_challenge", "_config", "_consumers", "_needle")

    def __init__(self, config: KeyAuthConfig, consumers: ConsumerIndex) -> None:
        self._config = config
        self._consumers = consumers
        where = f", header={quoted(config.header)}" if config.header else ""
        where += f", query={quoted(config.query)}" if config.query else ""
        self._challenge = f"ApiKey realm={quoted(config.realm)}{where}"
        self._needle = f"{config.query}=" if config.query else ""

    def challenge(self) -> str:
        return self._challenge

    def present(self, request: GatewayRequest) -> bool:
        config = self._config
        if config.header is not None and request.headers.get(config.header) is not None:
            return True
        return bool(self._needle) and self._needle in request.query

    async def authenticate(self, request: GatewayRequest) -> LocalResponse | None:
        config = self._config
        key: str | None = None
        from_query = False
        if config.header is not None:
            key = request.headers.get(config.header)
        if key is None and config.query is not None and self._needle in request.query:
            key, rest = _split_query(request.query, config.query)
            from_query = key is not None
        if key is None:
            return unauthorized("unauthenticated", "an API key is required", (self._challenge,))
        key = key.strip()
        consumer = None
        if len(key) <= MAX_API_KEY_LENGTH:
            consumer = self._consumers.by_api_key(key)
        if consumer is None:
            return unauthorized(
                "invalid_key",
                "the API key is not valid",
                (f'{self._challenge}, error="invalid_key"',),
            )
        request.consumer = self._consumers.consumer(consumer.name, self.name)
        if config.hide_credentials:
            if from_query:
                request.query = rest
            elif config.header is not None:
                request.headers.remove(config.header)
        return None
