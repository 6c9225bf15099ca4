"""Hypothesis strategies for raw HTTP/1.1 client connections: generated and mutated requests.

A :class:`Plan` is what one client connection does: one to three pipelined
requests, built from generated parts (method, request target, version,
header names and values with CR, LF and NUL, duplicate and conflicting
Content-Length and Transfer-Encoding, chunked bodies with bad sizes and
extensions, ``Connection`` naming other headers, very long heads), then a
few byte-level mutations of the whole stream (CR, LF, NUL or spaces
inserted, bytes dropped, the stream cut short), sent in one to three pieces,
after which the client may shut its sending side (half-close) and read on.
A :class:`Shape` says what a valid request to one server looks like (the
proxy's here, the bus bridge's in :mod:`tests.fuzz.bridge_plans`); the
anomalies are added to it.

Every request target holds the connection's tag (``/fz/<tag>/<i>``), put in
when the plan is rendered, so that the upstream and the client can tell
whose request and whose response each one is. Bodies may carry a whole
request (``/fz/<tag>/smuggled``): an upstream that sees it as a request of
its own has been smuggled one, unless the client really sent it as one.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import strategies as st

# Replaced by the connection's tag (same length, so mutation offsets hold).
TAG = b"@@tag@@@"
TAG_LENGTH = len(TAG)

COMMON_METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"]
# HEAD is left out: its answer has no body, which a client must know to read
# the next answer, and the strict reader here does not track requests.
ODD_METHODS = [b"get", b"TRACE", b"CONNECT", b"PRI", b"G\x00T", b"", b"X" * 64, b"M-SEARCH"]
ODD_VERSIONS = [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2", b"HTTP/0.9", b"http/1.1", b"HTTP/11", b""]
TARGET_SUFFIXES = [
    b"",
    b"?a=1&b=%00",
    b"#frag",
    b"/..%2f..",
    b"/\xc3\xa9",
    b"/\x00",
    b"/%",
    b"?q=" + b"q" * 8192,
    b"?q=" + b"q" * 70_000,
]
HEADER_NAMES = [
    b"Host",
    b"Connection",
    b"Keep-Alive",
    b"Proxy-Connection",
    b"TE",
    b"Trailer",
    b"Upgrade",
    b"Expect",
    b"X-Forwarded-For",
    b"X-Forwarded-Proto",
    b"X-Request-Id",
    b"X-Eco-Proxy-Error",
    b"Content-Type",
    b"Content-Length",
    b"Transfer-Encoding",
    b"Via",
    b"Forwarded",
    b"Cookie",
    b"Host ",
    b" Host",
    b"Ho\x00st",
    b"",
    b"X-\xff",
]
HEADER_VALUES = [
    b"",
    b"close",
    b"keep-alive",
    b"Upgrade",
    b"x-fz, close",
    b"Content-Length",
    b"Transfer-Encoding",
    b"Host",
    b"Host, Content-Length, Transfer-Encoding, X-Request-Id",
    b"chunked",
    b"100-continue",
    b"h2c",
    b"websocket",
    b"\x00",
    b"a\rb",
    b"a\nb",
    b"a\r\nInjected: 1",
    b" leading",
    b"trailing ",
    b"\xff\xfe",
    b"v" * 8192,
    b"v" * 70_000,
]
CONTENT_LENGTHS = [b"+5", b"-1", b"0x5", b" 5", b"5, 5", b"5,6", b"99999999999999999999", b"1e3"]
CONTENT_LENGTHS += [b"", b"05", b"5\x00"]
TRANSFER_CODINGS = [b"chunked, chunked", b"gzip, chunked", b"chunked, gzip", b"Chunked"]
TRANSFER_CODINGS += [b" chunked", b"chunked\x00", b"identity", b"x", b"chunked;q=1", b"\tchunked"]
CHUNK_EXTENSIONS = [b"", b";a=b", b';a="q"', b";", b"; a", b";" + b"x" * 5000, b"\x00"]
BAD_CHUNK_SIZES = [b"-1", b"0x5", b"fffffffffffffffff", b" 5", b"5 ", b"", b"g", b"+5"]
INSERTIONS = [b"\r", b"\n", b"\x00", b"\r\n", b"\r\n\r\n", b" ", b"\t", b":", b"\r\n "]


def smuggled(tag: bytes = TAG) -> bytes:
    return b"GET /fz/" + tag + b"/smuggled HTTP/1.1\r\nHost: fz-web\r\n\r\n"


@dataclass
class Plan:
    """One client connection: its bytes (with TAG in place of its tag), the
    offsets at which they are sent in separate writes, whether the client
    closes without reading, and whether it shuts its sending side after the
    last write (and reads on)."""

    data: bytes
    cuts: tuple[int, ...] = ()
    abandon: bool = False
    half_close: bool = False

    def render(self, tag: bytes) -> list[bytes]:
        assert len(tag) == TAG_LENGTH, tag
        data = self.data.replace(TAG, tag)
        bounds = [0, *sorted(c for c in self.cuts if 0 < c < len(data)), len(data)]
        return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]

    def __repr__(self) -> str:
        shown = self.data if len(self.data) <= 600 else self.data[:600] + b"..."
        return (
            f"Plan({shown!r}, cuts={self.cuts}, abandon={self.abandon}, "
            f"half_close={self.half_close}, size={len(self.data)})"
        )


#: what a client configured to use the proxy as its proxy puts before the path
#: (absolute-form, RFC 9112, 3.2.2): the proxy forwards the path, with this host
ABSOLUTE_PREFIXES = [
    b"http://fz-web",
    b"HTTP://fz-web:80",
    b"https://fz-other.example:8443",
    b"http://10.0.0.1",
]


def targets(index: int) -> st.SearchStrategy[bytes]:
    """A valid target: mostly a path, one in four in absolute-form."""
    base = b"/fz/" + TAG + b"/" + str(index).encode()
    origin = st.sampled_from(TARGET_SUFFIXES).map(lambda s: base + s)
    absolute = st.builds(
        lambda prefix, path: prefix + path, st.sampled_from(ABSOLUTE_PREFIXES), origin
    )
    return st.one_of(origin, origin, origin, absolute)


def odd_targets(index: int) -> st.SearchStrategy[bytes]:
    base = b"/fz/" + TAG + b"/" + str(index).encode()
    absolute = [
        b"http://fz-web" + base,
        b"HTTPS://fz-other.example:8080" + base,
        b"http://fz-web?q=" + base,  # no path: "/?q=…"
        # refused: userinfo, no host, another scheme
        b"http://user@fz-web" + base,
        b"http://" + base,
        b"ftp://fz-web" + base,
    ]
    return st.sampled_from([*absolute, b"fz-web:80", b"*", b"", base + b" x"])


# Well-formed extra headers a normal client sends.
PLAIN_HEADERS = [
    b"Accept: */*",
    b"User-Agent: fz/1",
    b"X-Request-Id: fz-1",
    b"Content-Type: application/json",
    b"Connection: keep-alive",
    b"Cookie: a=b",
    b"Accept-Encoding: gzip",
]


def odd_header_lines() -> st.SearchStrategy[list[bytes]]:
    """Headers with odd names, values or separators; sometimes very many."""
    names = st.one_of(st.sampled_from(HEADER_NAMES), st.binary(min_size=1, max_size=12))
    values = st.one_of(st.sampled_from(HEADER_VALUES), st.binary(max_size=24))
    separators = st.sampled_from([b": ", b": ", b":", b" : ", b":\t", b""])
    line = st.builds(lambda n, s, v: n + s + v, names, separators, values)
    few = st.lists(line, min_size=1, max_size=3)
    # A very long head: many copies of one header.
    many = st.builds(lambda one, n: [one] * n, line, st.sampled_from([100, 1000]))
    return st.integers(0, 7).flatmap(lambda p: many if p == 7 else few)


def chunked(body: bytes, *, bad: bool = False) -> st.SearchStrategy[bytes]:
    """``body`` in chunks, with extensions and upper-case or zero-padded sizes; with
    ``bad``, some sizes wrong or not numbers, or a broken last chunk."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        pieces: list[bytes] = []
        rest = body
        while rest:
            take = draw(st.integers(1, max(1, len(rest))))
            pieces.append(rest[:take])
            rest = rest[take:]
        out = bytearray()
        for piece in pieces:
            size = b"%x" % len(piece)
            style = draw(st.integers(0, 7))
            if style == 5:
                size = size.upper().rjust(6, b"0")
            elif style == 6 and bad:
                size = draw(st.sampled_from(BAD_CHUNK_SIZES))
            elif style == 7 and bad:
                size = b"%x" % (len(piece) + draw(st.sampled_from([-1, 1, 100])))
            extension = draw(st.sampled_from(CHUNK_EXTENSIONS[: None if bad else 4]))
            out += size + extension + b"\r\n" + piece + b"\r\n"
        endings = [b"0\r\n\r\n", b"0\r\n\r\n", b"0\r\nX-Trailer: 1\r\n\r\n"]
        if bad:
            endings += [b"0\r\nContent-Length: 5\r\n\r\n", b"0\n\n", b"", b"0\r\n"]
        return bytes(out) + draw(st.sampled_from(endings))

    return build()


ANOMALIES = [
    "method",
    "target",
    "version",
    "line-end",
    "host",
    "headers",
    "connection",
    "framing",
    "framing",
    "framing",
]


NO_LINES: st.SearchStrategy[list[bytes]] = st.just([])


@dataclass(frozen=True)
class Shape:
    """What valid requests to one server look like; :func:`requests` adds the anomalies."""

    methods: st.SearchStrategy[bytes]
    targets: st.SearchStrategy[bytes]
    odd_targets: st.SearchStrategy[bytes]
    # Extra header lines a normal client sends, beside Host and the framing.
    headers: st.SearchStrategy[list[bytes]]
    bodies: st.SearchStrategy[bytes]
    # Odd header lines this server in particular may trip on.
    odd_headers: st.SearchStrategy[list[bytes]] = NO_LINES


def proxy_shape(index: int) -> Shape:
    """Requests to the proxy's upstream listener: the ``index``-th on a connection."""
    return Shape(
        methods=st.sampled_from(COMMON_METHODS),
        targets=targets(index),
        odd_targets=odd_targets(index),
        headers=st.lists(st.sampled_from(PLAIN_HEADERS), max_size=3),
        bodies=st.one_of(
            st.just(b""),
            st.binary(max_size=32),
            st.just(smuggled()),
            st.just(b"a" * 70_000),
        ),
    )


@st.composite
def requests(draw: st.DrawFn, shape: Shape) -> bytes:
    """One request: a valid one with none, one or a few anomalies."""
    # Valid requests (no anomaly) keep a connection going to the next one.
    anomalies: set[str] = set()
    if draw(st.booleans()):
        anomalies = set(draw(st.lists(st.sampled_from(ANOMALIES), min_size=1, max_size=3)))
    method = draw(shape.methods)
    target = draw(shape.targets)
    version = b"HTTP/1.1"
    end = b"\r\n"
    lines = [b"Host: fz-web", *draw(shape.headers)]
    if "method" in anomalies:
        method = draw(st.sampled_from(ODD_METHODS))
    if "target" in anomalies:
        target = draw(shape.odd_targets)
    if "version" in anomalies:
        version = draw(st.sampled_from(ODD_VERSIONS))
    if "line-end" in anomalies:
        end = draw(st.sampled_from([b"\n", b"\r", b"\r\r\n"]))
    if "host" in anomalies:
        lines[0] = draw(st.sampled_from([b"", b"Host: fz-web", b"Host: other", b"Host:"]))
    if "headers" in anomalies:
        lines += draw(st.one_of(odd_header_lines(), shape.odd_headers))
    if "connection" in anomalies:
        # Connection naming other headers: a proxy drops those, but must not drop
        # the ones that frame the request or that it adds itself.
        named = draw(
            st.lists(
                st.sampled_from(
                    [
                        *[b"close", b"keep-alive", b"Content-Length", b"Transfer-Encoding"],
                        *[b"Host", b"X-Forwarded-For", b"X-Request-Id", b"Upgrade", b"TE"],
                    ]
                ),
                min_size=1,
                max_size=3,
            )
        )
        lines.append(b"Connection: " + b", ".join(named))
    body = draw(shape.bodies)
    if "framing" in anomalies:
        framing = draw(
            st.sampled_from(
                [
                    *["length-wrong", "length-odd", "length-twice", "chunked-bad"],
                    *["coding-odd", "both", "both-smuggle"],
                ]
            )
        )
    elif method in (b"POST", b"PUT", b"PATCH") or body:
        framing = draw(st.sampled_from(["length", "chunked"]))
    else:
        framing = draw(st.sampled_from(["none", "none", "length", "chunked"]))
    payload = b""
    if framing == "length":
        lines.append(b"Content-Length: %d" % len(body))
        payload = body
    elif framing == "length-wrong":
        delta = draw(st.sampled_from([-5, -1, 1, 5, 1000]))
        lines.append(b"Content-Length: %d" % max(0, len(body) + delta))
        payload = body
    elif framing == "length-odd":
        lines.append(b"Content-Length: " + draw(st.sampled_from(CONTENT_LENGTHS)))
        payload = body
    elif framing == "length-twice":
        lines.append(b"Content-Length: %d" % len(body))
        lines.append(b"Content-Length: %d" % draw(st.sampled_from([len(body), 0, 3])))
        payload = body
    elif framing in ("chunked", "chunked-bad"):
        lines.append(b"Transfer-Encoding: chunked")
        payload = draw(chunked(body, bad=framing == "chunked-bad"))
    elif framing == "coding-odd":
        lines.append(b"Transfer-Encoding: " + draw(st.sampled_from(TRANSFER_CODINGS)))
        if draw(st.booleans()):
            lines.append(b"Transfer-Encoding: chunked")
        payload = draw(chunked(body))
    elif framing == "both":
        lines.append(b"Content-Length: %d" % len(body))
        lines.append(b"Transfer-Encoding: chunked")
        payload = draw(chunked(body))
    elif framing == "both-smuggle":
        # The classic pair: one reader stops at the chunked end, another at the length.
        inner = b"0\r\n\r\n" + smuggled()
        length = draw(st.sampled_from([len(inner), 3, 0]))
        both = [b"Content-Length: %d" % length, b"Transfer-Encoding: chunked"]
        lines += both if draw(st.booleans()) else both[::-1]
        payload = inner
    if anomalies and draw(st.booleans()):
        draw(st.randoms()).shuffle(lines)
    head = method + b" " + target + b" " + version + end + b"".join(x + end for x in lines) + end
    return head + payload


@st.composite
def mutate(draw: st.DrawFn, data: bytes) -> bytes:
    """A few byte-level changes anywhere in the stream (none, mostly)."""
    out = bytearray(data)
    for _ in range(draw(st.sampled_from([0, 0, 0, 0, 0, 1, 2]))):
        at = draw(st.integers(0, len(out)))
        op = draw(st.sampled_from(["insert", "insert", "delete", "truncate", "flip"]))
        if op == "insert":
            out[at:at] = draw(st.sampled_from(INSERTIONS))
        elif op == "delete":
            del out[at : at + draw(st.integers(1, 4))]
        elif op == "truncate":
            del out[at:]
        elif at < len(out):
            out[at] ^= 1 << draw(st.integers(0, 7))
    # A mutation must not break the tag, or the request could not be told apart.
    return bytes(out) if bytes(out).count(TAG) == data.count(TAG) else data


def proxy_shapes(index: int) -> st.SearchStrategy[Shape]:
    return st.just(proxy_shape(index))


@st.composite
def plans(
    draw: st.DrawFn,
    shapes: Callable[[int], st.SearchStrategy[Shape]] = proxy_shapes,
    most: int = 3,
    half_closes: bool = False,
) -> Plan:
    """One connection: one to ``most`` requests, ``shapes(i)`` drawing what the i-th
    looks like when valid; with ``half_closes``, a third of the connections that do
    not abandon shut their sending side after their last write."""
    count = draw(st.integers(1, most))
    data = b"".join(draw(requests(draw(shapes(i)))) for i in range(count))
    data = draw(mutate(data))
    cuts = tuple(draw(st.lists(st.integers(0, len(data)), max_size=2)))
    abandon = draw(st.integers(0, 9)) == 0
    half_close = half_closes and not abandon and draw(st.integers(0, 2)) == 0
    return Plan(data, cuts, abandon, half_close)
