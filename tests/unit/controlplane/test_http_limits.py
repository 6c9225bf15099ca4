"""The connection gate and the WebSocket mask check, without sockets."""

from __future__ import annotations

import os
import struct

import pytest

from serving.http_limits import ConnectionGate, HttpLimits, client_key
from serving.web_server import _MaskedFramesOnly


class RecordingParser:
    """What aiohttp's frame parser was fed."""

    def __init__(self) -> None:
        self.fed = bytearray()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.fed += data
        return False, b""

    def feed_eof(self) -> None:
        pass


def frame(payload: bytes, *, mask: bool = True, opcode: int = 0x1) -> bytes:
    size = len(payload)
    bit = 0x80 if mask else 0
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, bit | size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, bit | 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, bit | 127, size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_masked_frames_pass_whole_in_any_pieces(step: int) -> None:
    stream = frame(b"a") + frame(b"b" * 200) + frame(b"c" * 70_000) + frame(b"", opcode=0x9)
    parser = RecordingParser()
    check = _MaskedFramesOnly(parser)
    for start in range(0, len(stream), step):
        assert check.feed_data(stream[start : start + step]) == (False, b"")
    assert bytes(parser.fed) == stream


@pytest.mark.parametrize("step", [1, 2, 5, 1000])
def test_an_unmasked_frame_stops_at_its_start(step: int) -> None:
    before = frame(b"a" * 130) + frame(b"b")
    stream = before + frame(b"evil", mask=False) + frame(b"after")
    parser = RecordingParser()
    check = _MaskedFramesOnly(parser)
    for start in range(0, len(stream), step):
        check.feed_data(stream[start : start + step])
    # the frames before it, then a header the parser refuses with 1002; nothing after
    assert bytes(parser.fed) == before + b"\x83\x80"
    assert check.feed_data(frame(b"more")) == (True, b"")


def test_the_gate_counts_in_all_and_per_client() -> None:
    gate = ConnectionGate("test", max_connections=3, max_per_client=2)
    a1 = gate.admit(("10.0.0.1", 1))
    a2 = gate.admit(("10.0.0.1", 2))
    assert a1 == a2 == "10.0.0.1"
    assert gate.admit(("10.0.0.1", 3)) is None  # its share
    assert gate.admit(("10.0.0.2", 1)) == "10.0.0.2"
    assert gate.admit(("10.0.0.3", 1)) is None  # the whole server
    assert (gate.count, gate.refused) == (3, 2)
    gate.release("10.0.0.1")
    assert gate.admit(("10.0.0.3", 1)) == "10.0.0.3"


def test_a_client_is_its_ipv4_address_or_its_ipv6_64() -> None:
    assert client_key(("::ffff:10.1.2.3", 1, 0, 0)) == "10.1.2.3"
    assert client_key(("2001:db8::1", 1, 0, 0)) == client_key(("2001:db8::ffff", 1, 0, 0))
    assert client_key(("2001:db8:0:1::1", 1, 0, 0)) != client_key(("2001:db8::1", 1, 0, 0))
    assert client_key(("fe80::1%eth0", 1, 0, 2)) == "fe80::/64"


def test_limits_are_positive() -> None:
    with pytest.raises(ValueError, match="head_timeout"):
        HttpLimits(head_timeout=0)
    with pytest.raises(ValueError, match="max_connections_per_ip"):
        HttpLimits(max_connections_per_ip=0)
