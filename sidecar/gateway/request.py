"""What the gateway's plugins see of a request, and what they answer with.

A :class:`GatewayRequest` is built once per request from the parsed head;
plugins read it, authenticate it (``consumer``), change its headers, path
and query on the way upstream, or refuse it with a :class:`LocalResponse`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

__all__ = [
    "ANSWER_FRAMING",
    "Collector",
    "Consumer",
    "GatewayRequest",
    "Headers",
    "LocalResponse",
    "header_lines",
]


class Headers:
    """An ordered multi-map of header fields with lower-case names.

    Made from a request head (:meth:`from_head`), it reads the head's fields
    only when first asked: a route that looks at no header costs no parse,
    and one that asks for a few fields by name (:meth:`get`, :meth:`get_all`,
    ``in``) has them found in the head itself; the whole head is parsed only
    when it is changed or walked.
    """

    __slots__ = ("_drop", "_head", "_list", "_lower", "changed")

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self._list: list[tuple[str, str]] = [(n.lower(), v) for n, v in fields]
        self._head: bytes | None = None
        #: the head's fields in lower case, once a field was looked for in it
        self._lower: bytes | None = None
        self._drop: frozenset[str] = frozenset()
        #: a field was set, added or removed since it was made
        self.changed = False

    @classmethod
    def from_head(cls, head: bytes, drop: frozenset[str]) -> Headers:
        """The fields of a request ``head`` (its request line and CRLFs included),
        but those named in ``drop``; read when first asked for."""
        headers = cls.__new__(cls)
        headers._list = []
        headers._head = head
        headers._lower = None
        headers._drop = drop
        headers.changed = False
        return headers

    def _lowered(self, head: bytes) -> bytes:
        lowered = self._lower
        if lowered is None:
            # (the fields only: the parse stops at the blank line that ends them)
            stop = head.find(b"\r\n\r\n")
            lowered = self._lower = (head if stop < 0 else head[: stop + 2]).lower()
        return lowered

    def _find(self, head: bytes, name: str, first: bool) -> list[str] | None:
        """The values of the field ``name`` (lower case) in the unparsed ``head``,
        as the parse would give them; None when the name is not a plain token
        (then the parse answers)."""
        needle = _NEEDLES.get(name) or _needle(name)
        if needle is None:
            return None
        if name in self._drop:
            return []
        lowered = self._lowered(head)
        values = []
        at = lowered.find(needle)
        while at >= 0:
            start = at + len(needle)
            end = head.find(b"\r\n", start)
            if end < 0:
                end = len(head)
            values.append(head[start:end].decode("latin-1").strip())
            if first:
                break
            at = lowered.find(needle, end)
        return values

    @property
    def _fields(self) -> list[tuple[str, str]]:
        head = self._head
        if head is not None:
            self._head = self._lower = None
            drop = self._drop
            fields = self._list
            for line in head.decode("latin-1").split("\r\n")[1:]:
                if not line:
                    break
                name, _, value = line.partition(":")
                key = name.lower()
                if key not in drop:
                    fields.append((key, value.strip()))
        return self._list

    def get(self, name: str) -> str | None:
        """The first value of ``name`` (None when absent)."""
        name = name.lower()
        head = self._head
        if head is not None:
            found = self._find(head, name, True)
            if found is not None:
                return found[0] if found else None
        for key, value in self._fields:
            if key == name:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        head = self._head
        if head is not None:
            found = self._find(head, name, False)
            if found is not None:
                return found
        return [value for key, value in self._fields if key == name]

    def has_any(self, names: Collection[str]) -> bool:
        """Whether a field named in ``names`` (lower case) is present."""
        head = self._head
        if head is not None:
            drop = self._drop
            lowered = self._lowered(head)
            for name in names:
                needle = _NEEDLES.get(name) or _needle(name)
                if needle is None:
                    break  # (not a token: the parse answers)
                if needle in lowered and name not in drop:
                    return True
            else:
                return False
        return any(key in names for key, _ in self._fields)

    def set(self, name: str, value: str) -> None:
        """Replaces every field ``name`` with one."""
        self.remove(name)
        self._fields.append((name.lower(), value))
        self.changed = True

    def add(self, name: str, value: str) -> None:
        self._fields.append((name.lower(), value))
        self.changed = True

    def remove(self, name: str) -> None:
        name = name.lower()
        fields = self._fields
        kept = [(k, v) for k, v in fields if k != name]
        if len(kept) != len(fields):
            self._list = kept
            self.changed = True

    def items(self) -> list[tuple[str, str]]:
        return list(self._fields)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"


#: a field name as HTTP has them (RFC 9110, 5.1), in lower case
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
#: per field name looked for: what finds it in a lowered head (None: not a token)
_NEEDLES: dict[str, bytes | None] = {}
_MAX_NEEDLES = 1024


def _needle(name: str) -> bytes | None:
    """What finds the field ``name`` in a lowered head, remembered (None: not a token)."""
    if name in _NEEDLES:
        return None
    needle = b"\r\n%s:" % name.encode() if _TOKEN.fullmatch(name) is not None else None
    if len(_NEEDLES) < _MAX_NEEDLES:
        _NEEDLES[name] = needle
    return needle


@dataclass(frozen=True, slots=True)
class Consumer:
    """Who a request comes from, once a plugin authenticated it."""

    name: str
    #: the plugin that authenticated it: key_auth, jwt, hmac, mtls
    via: str
    groups: tuple[str, ...] = ()
    claims: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))


class Collector(Protocol):
    """Takes a copy of the response to a request as it is forwarded (the
    cache's slot); the gateway calls ``begin``, ``feed`` and ``finish``, or
    ``abandon`` when the response does not come whole (or at all)."""

    def begin(self, status: int, headers: Sequence[tuple[str, str]]) -> bool: ...

    def feed(self, chunk: bytes) -> bool: ...

    def finish(self) -> bool: ...

    def abandon(self) -> None: ...


@dataclass(slots=True)
class GatewayRequest:
    """One request as the plugins see it (see the module docstring).

    (The gateway's server makes one per request with positional arguments,
    which cost less than keywords: a new field goes last.)
    """

    method: str
    host: str  # lower case, without the port
    path: str  # the raw path, without the query
    query: str = ""  # the raw query, without "?"
    headers: Headers = field(default_factory=Headers)
    scheme: str = "http"
    client_ip: str = ""
    #: DER of the client's certificate (TLS with client certificates), else None
    peer_certificate: bytes | None = None
    #: the name of the route that matched ("" before routing)
    route: str = ""
    consumer: Consumer | None = None
    #: the request body, when a plugin that needs it asked for it (None otherwise)
    body: bytes | None = None
    #: when the head was complete (``time.monotonic``)
    received: float = 0.0
    #: takes a copy of the response when it is forwarded (set by the cache's step)
    collector: Collector | None = None
    #: what a plugin's step leaves for its response headers (rate-limit state,
    #: the cache's verdict), by plugin name; None until one does
    state: dict[str, object] | None = None

    def note(self, plugin: str, value: object) -> None:
        """Leaves ``value`` for ``plugin``'s response headers."""
        if self.state is None:
            self.state = {}
        self.state[plugin] = value

    def noted(self, plugin: str) -> object | None:
        state = self.state
        return None if state is None else state.get(plugin)

    @property
    def target(self) -> str:
        """The request target as sent upstream: path, and ``?query`` when there is one."""
        return f"{self.path}?{self.query}" if self.query else self.path


#: Header fields of an answer the data plane writes itself (framing, connection).
ANSWER_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})


def header_lines(fields: Iterable[tuple[str, str]]) -> bytes:
    """``fields`` as an answer's head has them (:attr:`LocalResponse.lines`)."""
    return b"".join(
        f"{name}: {value}\r\n".encode("latin-1", "replace")
        for name, value in fields
        if name.lower() not in ANSWER_FRAMING
    )


@dataclass(frozen=True, slots=True)
class LocalResponse:
    """An answer the gateway gives itself, instead of forwarding the request."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    #: ``headers`` as written to the client, when the answer has them already
    #: (a stored response's): ``name: value`` lines, each ending in CRLF, without
    #: the fields the data plane writes itself (Content-Length, Transfer-Encoding,
    #: Connection); None: written from ``headers`` when answered
    lines: bytes | None = None

    @classmethod
    def error(
        cls, status: int, kind: str, message: str, headers: Iterable[tuple[str, str]] = ()
    ) -> LocalResponse:
        """A JSON error: ``{"error": kind, "message": message}``."""
        body = json.dumps({"error": kind, "message": message}).encode()
        return cls(status, (("content-type", "application/json"), *headers), body)
