"""Health-check configuration: one frozen, validated model per kind of check.

A check is written as a mapping whose one *kind key* names the kind and holds
its target, plus options::

    {http: "http://127.0.0.1:8080/health", interval: 1s, timeout: 500ms}
    {tcp: "127.0.0.1:5432"}
    {grpc: "127.0.0.1:9000", service: "orders"}
    {exec: ["/usr/local/bin/check-disk", "--min", "10%"]}
    {ttl: 30s}

:func:`parse_check` turns such a mapping into the matching model, and
:data:`AnyCheckConfig` is the same discriminated union as a field type for
larger configuration models. Every error names the field it is about.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict, Discriminator, Tag, TypeAdapter

from sidecar.health._base import CheckConfig, CheckKind
from sidecar.health._kinds import (
    ExecCheckConfig,
    GrpcCheckConfig,
    HttpCheckConfig,
    TcpCheckConfig,
    TtlCheckConfig,
)

__all__ = ["AnyCheckConfig", "parse_check"]

_KINDS = tuple(k.value for k in CheckKind)


def _kind_of(value: Any) -> str | None:
    if isinstance(value, CheckConfig):
        return value.kind.value
    if isinstance(value, Mapping):
        found = [k for k in _KINDS if k in value]
        return found[0] if len(found) == 1 else None
    return None


def _one_kind(value: Any) -> Any:
    if isinstance(value, CheckConfig):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(
            f"a check must be a mapping such as {{tcp: '127.0.0.1:80'}}, not {value!r}"
        )
    found = [k for k in _KINDS if k in value]
    if len(found) != 1:
        got = f"found {', '.join(found)}" if found else "found none"
        raise ValueError(f"a check needs exactly one of {', '.join(_KINDS)} ({got})")
    return value


#: The discriminated union of every check model, as a pydantic field type
#: (``checks: list[AnyCheckConfig]``); the kind key picks the model.
AnyCheckConfig = Annotated[
    Annotated[HttpCheckConfig, Tag("http")]
    | Annotated[TcpCheckConfig, Tag("tcp")]
    | Annotated[GrpcCheckConfig, Tag("grpc")]
    | Annotated[ExecCheckConfig, Tag("exec")]
    | Annotated[TtlCheckConfig, Tag("ttl")],
    Discriminator(_kind_of),
    BeforeValidator(_one_kind),
]

_ADAPTER: TypeAdapter[CheckConfig] = TypeAdapter(AnyCheckConfig, config=ConfigDict(title="check"))


def parse_check(data: Mapping[str, Any] | CheckConfig) -> CheckConfig:
    """Validates one check in its mapping form and returns the model of its kind.

    Raises :class:`pydantic.ValidationError` whose errors name the field
    (``http``, ``interval``…, prefixed by the kind). A model passes through.
    """
    return _ADAPTER.validate_python(data)
