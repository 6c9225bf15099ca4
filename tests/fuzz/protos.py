"""Hypothesis strategies for protobuf request messages, built from their descriptors.

:func:`messages` walks ``DESCRIPTOR.fields`` of any message type, so every
request of every service is covered without a hand-written strategy per
message: strings with the edge cases validators trip on (empty, control
characters, a trailing newline, NUL, unicode, very long ones, sparingly up to
1 MiB), integers at the boundaries of their type and of the documented
limits, enums with values the proto does not define, repeated fields and maps
of various lengths, nested messages, oneofs and optional fields set or not.

Purely random messages mostly fail the first check a server makes, so
:func:`requests` also draws *nearly valid* ones: a valid seed message with a
few fields overwritten by generated values (which reaches the checks behind
the first), and a seed's serialized bytes mutated (which reaches the parser).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

# Requests stay under what a stock client sends (4 MiB): a bigger one is
# refused by the client itself, which tells nothing about the server.
MAX_REQUEST_BYTES = 3 << 20

# Names the servers under test know (seeded services, the sidecar's
# upstreams, stream names), so that generated requests sometimes name
# something that exists.
KNOWN_NAMES = ["fz-web", "fz-api", "fz-ttl", "default", "fz-1", "FZ", "fz.a", "fz.>", "ttl"]

EDGE_STRINGS = [
    "",
    " ",
    "a",
    "\n",
    "a\n",
    "a\r\n",
    "\x00",
    "a\x00b",
    "\t",
    "\x7f",
    "\x1b[31m",
    "é",
    "ß",
    "\u202eevil",
    "\ufeffbom",
    "😀",
    "日本",
    ".",
    "..",
    "../etc",
    "-",
    "-a",
    "a-",
    "_",
    "*",
    ">",
    "a.*.>",
    "a..b",
    "a b",
    "%00",
    "A",
    "UPPER",
    "a" * 63,
    "a" * 64,
    "a" * 128,
    "a" * 129,
    "x" * 1024,
    "x" * 1025,
    "x" * 4097,
    "10.0.0.1",
    "::1",
    "[::1]",
    "256.0.0.1",
    "localhost",
    "a-b.c_d",
    "eco.dlq.x",
    "_INBOX.x",
    *KNOWN_NAMES,
]

# Lengths of the rare, very long strings; 1 MiB is the largest.
BIG_LENGTHS = [4096, 65_537, 1 << 20]

# Documented limits and their neighbours (ports, TTLs, page sizes, timeouts…).
LIMITS = [0, 1, 2, 63, 64, 65, 100, 128, 129, 1000, 1001, 1024, 3600, 3601, 10_000, 10_001]
LIMITS += [65_535, 65_536, 300_000, 300_001, 600_000, 600_001]

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(1 << 31), (1 << 31) - 1),
    FieldDescriptor.TYPE_SINT32: (-(1 << 31), (1 << 31) - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(1 << 31), (1 << 31) - 1),
    FieldDescriptor.TYPE_INT64: (-(1 << 63), (1 << 63) - 1),
    FieldDescriptor.TYPE_SINT64: (-(1 << 63), (1 << 63) - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(1 << 63), (1 << 63) - 1),
    FieldDescriptor.TYPE_UINT32: (0, (1 << 32) - 1),
    FieldDescriptor.TYPE_FIXED32: (0, (1 << 32) - 1),
    FieldDescriptor.TYPE_UINT64: (0, (1 << 64) - 1),
    FieldDescriptor.TYPE_FIXED64: (0, (1 << 64) - 1),
}

# How many elements a repeated field or a map gets, beside short lists: past
# the documented caps (20 violations, 64 tags, 1000 batch messages…).
LONG_LISTS = [21, 65, 1001]


def strings(small: bool = False) -> st.SearchStrategy[str]:
    """Mostly short text and the edge cases above; one draw in 32 a very long
    string, unless ``small``."""
    short = st.text(
        st.characters(exclude_categories=["Cs"]),  # protobuf strings hold no surrogates
        max_size=40,
    )
    edges = st.sampled_from(EDGE_STRINGS)
    big = st.builds(lambda c, n: c * n, st.sampled_from("a\x00é\n-"), st.sampled_from(BIG_LENGTHS))
    if small:
        return st.one_of(short, edges)
    return st.integers(0, 31).flatmap(lambda p: short if p < 16 else big if p == 31 else edges)


def byte_strings(small: bool = False) -> st.SearchStrategy[bytes]:
    """Short binary; one draw in 16 a long run of one byte, unless ``small``."""
    big = st.builds(
        lambda c, n: c * n, st.sampled_from([b"\x00", b"\xff", b"a"]), st.sampled_from(BIG_LENGTHS)
    )
    if small:
        return st.binary(max_size=64)
    return st.integers(0, 15).flatmap(lambda p: big if p == 15 else st.binary(max_size=64))


def integers(field_type: int) -> st.SearchStrategy[int]:
    """The type's extremes, the documented limits (and their negatives), or anything."""
    low, high = _INT_RANGES[field_type]
    edges = {low, high, *LIMITS, *(-v for v in LIMITS)}
    ordered = sorted((v for v in edges if low <= v <= high), key=abs)
    return st.one_of(st.sampled_from(ordered), st.integers(low, high))


def enum_values(field: FieldDescriptor) -> st.SearchStrategy[int]:
    """A defined value, or a number the enum does not define (proto3 enums are open)."""
    defined = [v.number for v in field.enum_type.values]
    undefined = st.sampled_from([-1, max(defined) + 1, 1000, (1 << 31) - 1, -(1 << 31)])
    return st.one_of(st.sampled_from(defined), undefined)


def scalars(field: FieldDescriptor, small: bool = False) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return strings(small)
    if kind == FieldDescriptor.TYPE_BYTES:
        return byte_strings(small)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_ENUM:
        return enum_values(field)
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        width = 64 if kind == FieldDescriptor.TYPE_DOUBLE else 32
        return st.floats(width=width)  # NaN, infinities and -0.0 included
    return integers(kind)


def _lists(
    element: st.SearchStrategy[Any], small_element: st.SearchStrategy[Any]
) -> st.SearchStrategy[list[Any]]:
    # A long list repeats one drawn element: cheap to draw, still past the caps.
    # Its element is a small one: a thousand 1 MiB strings would take a GiB here.
    long = st.builds(lambda e, n: [e] * n, small_element, st.sampled_from(LONG_LISTS))
    return st.integers(0, 15).flatmap(
        lambda p: long if p == 15 else st.lists(element, max_size=4 if p < 12 else 12)
    )


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def field_values(field: FieldDescriptor, depth: int, small: bool = False) -> st.SearchStrategy[Any]:
    """Values of one field, ready for :func:`_assign` (``small``: no long strings)."""
    if _is_map(field):
        key_field = field.message_type.fields_by_name["key"]
        value_field = field.message_type.fields_by_name["value"]
        keys, values = scalars(key_field, small), field_values(value_field, depth, small)
        long = st.builds(
            lambda k, v, n: {f"{k}{i}": v for i in range(n)},
            scalars(key_field, small=True),
            field_values(value_field, depth, small=True),
            st.sampled_from(LONG_LISTS),
        )
        return st.integers(0, 15).flatmap(
            lambda p: long if p == 15 else st.dictionaries(keys, values, max_size=4)
        )
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        element: st.SearchStrategy[Any] = st.deferred(
            lambda: _messages_of(field.message_type, depth + 1, small)
        )
        small_element: st.SearchStrategy[Any] = st.deferred(
            lambda: _messages_of(field.message_type, depth + 1, small=True)
        )
    else:
        element, small_element = scalars(field, small), scalars(field, small=True)
    if field.is_repeated:
        return _lists(element, small_element)
    return element


def _assign(message: Message, field: FieldDescriptor, value: Any) -> None:
    target = getattr(message, field.name)
    if _is_map(field):
        target.clear()
        value_field = field.message_type.fields_by_name["value"]
        for key, item in value.items():
            if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif field.is_repeated:
        del target[:]
        target.extend(value)
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(message, field.name, value)


def _messages_of(
    descriptor: Descriptor, depth: int, small: bool = False
) -> st.SearchStrategy[Message]:
    cls = _class_of(descriptor)
    if depth > 4:  # no message here is recursive; this only bounds a future one
        return st.just(cls())
    # Every field optional: absent, set to its default or to anything. Fields
    # of a oneof may all be drawn: the last one set wins, as on the wire.
    fields = {f.name: field_values(f, depth, small) for f in descriptor.fields}

    def build(values: dict[str, Any]) -> Message:
        message = cls()
        for name, value in values.items():
            _assign(message, descriptor.fields_by_name[name], value)
        return message

    return st.fixed_dictionaries({}, optional=fields).map(build)


def _class_of(descriptor: Descriptor) -> type[Message]:
    cls: type[Message] = GetMessageClass(descriptor)  # the generated class itself
    return cls


def messages(cls: type[Message]) -> st.SearchStrategy[Message]:
    """Any message of type ``cls``, within :data:`MAX_REQUEST_BYTES`."""
    return _messages_of(cls.DESCRIPTOR, 0).filter(lambda m: m.ByteSize() <= MAX_REQUEST_BYTES)


def overwritten(seed: Message) -> st.SearchStrategy[Message]:
    """``seed`` with one to three of its fields (top level or one level down)
    replaced by generated values: nearly valid requests."""
    descriptor: Descriptor = seed.DESCRIPTOR
    paths: list[tuple[FieldDescriptor, ...]] = []
    field: FieldDescriptor
    for field in descriptor.fields:
        paths.append((field,))
        if (
            field.type == FieldDescriptor.TYPE_MESSAGE
            and not _is_map(field)
            and not field.is_repeated
        ):
            paths.extend((field, inner) for inner in field.message_type.fields)

    @st.composite
    def draw(draw_: st.DrawFn) -> Message:
        message = type(seed)()
        message.CopyFrom(seed)
        chosen = draw_(st.lists(st.sampled_from(paths), min_size=1, max_size=3, unique=True))
        for path in chosen:
            holder = message
            for outer in path[:-1]:
                holder = getattr(holder, outer.name)
            _assign(holder, path[-1], draw_(field_values(path[-1], len(path))))
        return message

    return draw().filter(lambda m: m.ByteSize() <= MAX_REQUEST_BYTES)


@st.composite
def mutated_bytes(draw: st.DrawFn, seed: Message) -> bytes:
    """The wire bytes of ``seed`` with a few bytes flipped, inserted, removed, or cut:
    mostly not a valid message, sometimes a different valid one."""
    data = bytearray(seed.SerializeToString())
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "varint"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[at:]
        else:  # an over-long varint or a huge length prefix
            data[at:at] = draw(
                st.sampled_from([b"\x0a\xff\xff\xff\xff\x0f", b"\x08" + b"\xff" * 10])
            )
    return bytes(data)


def requests(cls: type[Message], seeds: Sequence[Message] = ()) -> st.SearchStrategy[Any]:
    """A request for a method taking ``cls``: a message, or (for the mutated
    seeds) raw bytes to send as they are."""
    options: list[st.SearchStrategy[Any]] = [messages(cls)]
    if seeds:
        seed = st.sampled_from(list(seeds))
        if any(s.DESCRIPTOR.fields for s in seeds):
            options.append(seed.flatmap(overwritten))
        options.append(seed.flatmap(mutated_bytes))
        options.append(seed)
    return st.one_of(options)
