"""Protobuf fields written by hand, for watch responses encoded once for every watcher.

A serialized message is the concatenation of its fields, so a response made
of repeated events is any concatenation of the events' frames (each a field
of the response), plus its other fields: the watch fan-outs encode each
event once and send the same bytes to every watcher.
"""

from __future__ import annotations

__all__ = ["length_delimited", "varint"]


def varint(n: int) -> bytes:
    """``n`` (≥ 0) as a protobuf varint."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def length_delimited(tag: bytes, data: bytes) -> bytes:
    """A length-delimited field (bytes, string, message): its tag, length, ``data``."""
    return tag + varint(len(data)) + data
