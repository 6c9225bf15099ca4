"""JSON values in ``google.protobuf.Struct`` fields, and back."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2

__all__ = ["struct_to_dict"]


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """``struct`` as plain JSON values, with whole numbers as integers (a Struct
    keeps every number as a double: ``weight: 90`` comes back 90.0)."""
    value = _plain(json_format.MessageToDict(struct))
    assert isinstance(value, dict)
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value
