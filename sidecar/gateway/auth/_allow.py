"""``allow``: which consumers a route admits, once a plugin authenticated them.

::

    plugins:
      jwt: {jwks_url: "https://idp.example.com/jwks.json"}
      allow: {consumers: [alice], groups: [admins]}

A consumer is admitted when its name is in ``consumers`` or one of its
groups is in ``groups``; anybody else gets 403 (authenticated, but not
allowed here). It runs after the route's authentication plugins; a request
that reaches it without a consumer (a route with ``allow`` and no
authentication plugin) is refused with 401.
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from sidecar.gateway.auth._base import forbidden
from sidecar.gateway.auth._consumers import is_usable_name
from sidecar.gateway.request import GatewayRequest, LocalResponse

__all__ = ["AllowConfig", "ConsumerAllowList"]

MAX_ALLOW_ENTRIES = 10_000


class AllowConfig(BaseModel):
    """``consumers``: consumer names admitted; ``groups``: groups whose members are
    admitted. At least one of the two must be non-empty."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    consumers: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    @field_validator("consumers", "groups")
    @classmethod
    def _check_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) > MAX_ALLOW_ENTRIES:
            raise ValueError(f"at most {MAX_ALLOW_ENTRIES} names")
        for name in value:
            if not is_usable_name(name):
                raise ValueError(
                    f"{name!r} is not a consumer or group name (visible ASCII, no spaces or commas)"
                )
        return value

    @model_validator(mode="after")
    def _check_some(self) -> Self:
        if not self.consumers and not self.groups:
            raise ValueError("name at least one consumer or group to admit ('consumers', 'groups')")
        return self


class ConsumerAllowList:
    """The ``allow`` plugin (module docstring)."""

    name = "allow"
    needs_body = False

    __slots__ = ("_consumers", "_groups")

    def __init__(self, config: AllowConfig) -> None:
        self._consumers = frozenset(config.consumers)
        self._groups = frozenset(config.groups)

    def authorize(self, request: GatewayRequest) -> LocalResponse | None:
        """None when the request's consumer is admitted, else the 401 or 403."""
        consumer = request.consumer
        if consumer is None:
            return LocalResponse.error(
                401, "unauthenticated", "this route admits only authenticated consumers"
            )
        if consumer.name in self._consumers or not self._groups.isdisjoint(consumer.groups):
            return None
        return forbidden(f"consumer {consumer.name!r} is not allowed on this route")
