"""A real ``eco gateway`` against hostile HTTP/1.1 on raw sockets.

Ambiguous framing (Content-Length and Transfer-Encoding together, two
Content-Lengths, obs-fold, bad chunk sizes, ``Transfer-Encoding: chunked,
identity``), malformed heads, and heads, targets and bodies over the limits.
Each is answered with its status and the connection closed, and the backend,
registered in a real control plane, parses what reaches it as a real server
would: a request smuggled behind another never gets there. The sidecar's own
listener has the same tests in-process (tests/integration/proxy/
test_http_hardening.py); these check that the gateway's front keeps them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import sdk
from tests.harness.controlplane import ControlPlaneProcess
from tests.harness.gateway import GatewayProcess
from tests.integration.proxy.http_peers import RawClient, RecordingUpstream, get
from tests.util import assert_eventually, assert_stays

pytestmark = pytest.mark.e2e

KIB = 1024
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n"


def post(*headers: bytes, body: bytes = b"", line: bytes = b"POST /p HTTP/1.1") -> bytes:
    """A request with exactly these header lines and body, and a second request
    behind it that only a desynchronized parser would take for one."""
    return line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body + SMUGGLED


CHUNKED = b"Transfer-Encoding: chunked"

#: case → (request bytes, the status the client must get)
HOSTILE: dict[str, tuple[bytes, int]] = {
    "cl_and_te": (post(b"Host: gw", b"Content-Length: 4", CHUNKED, body=b"0\r\n\r\n"), 400),
    "te_and_cl": (post(b"Host: gw", CHUNKED, b"Content-Length: 4", body=b"0\r\n\r\n"), 400),
    "cl_twice_same": (
        post(b"Host: gw", b"Content-Length: 3", b"Content-Length: 3", body=b"abc"),
        400,
    ),
    "cl_twice_differing": (
        post(b"Host: gw", b"Content-Length: 3", b"Content-Length: 0", body=b"abc"),
        400,
    ),
    "cl_list": (post(b"Host: gw", b"Content-Length: 3, 3", body=b"abc"), 400),
    "cl_signed": (post(b"Host: gw", b"Content-Length: +3", body=b"abc"), 400),
    "obs_fold": (post(b"Host: gw", b"X-A: b", b" Content-Length: 3", body=b"abc"), 400),
    "obs_fold_te": (post(b"Host: gw", b"X-A: b", b"\tTransfer-Encoding: chunked"), 400),
    "te_chunked_identity": (
        post(b"Host: gw", b"Transfer-Encoding: chunked, identity", body=b"0\r\n\r\n"),
        400,
    ),
    "te_twice": (post(b"Host: gw", CHUNKED, CHUNKED, body=b"0\r\n\r\n"), 400),
    "te_in_http10": (
        post(b"Host: gw", CHUNKED, body=b"0\r\n\r\n", line=b"POST /p HTTP/1.0"),
        400,
    ),
    "chunk_size_not_hex": (post(b"Host: gw", CHUNKED, body=b"zz\r\nabc\r\n0\r\n\r\n"), 400),
    "chunk_size_negative": (post(b"Host: gw", CHUNKED, body=b"-3\r\nabc\r\n0\r\n\r\n"), 400),
    "chunk_size_overflow": (
        post(b"Host: gw", CHUNKED, body=b"1" + b"0" * 20 + b"\r\nabc\r\n0\r\n\r\n"),
        400,
    ),
    "chunk_longer_than_its_size": (
        post(b"Host: gw", CHUNKED, body=b"3\r\nabcdef\r\n0\r\n\r\n"),
        400,
    ),
    "space_before_colon": (post(b"Host: gw", b"Content-Length : 3", body=b"abc"), 400),
    "bare_lf": (b"GET /p HTTP/1.1\nHost: gw\n\n" + SMUGGLED, 400),
    "nul_in_value": (b"GET /p HTTP/1.1\r\nHost: gw\x00\r\n\r\n" + SMUGGLED, 400),
    "two_hosts": (b"GET /p HTTP/1.1\r\nHost: gw\r\nHost: other\r\n\r\n" + SMUGGLED, 400),
    "no_host": (b"GET /p HTTP/1.1\r\nX: 1\r\n\r\n" + SMUGGLED, 400),
    "not_http": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + SMUGGLED, 400),
    "http_2_0": (b"GET /p HTTP/2.0\r\nHost: gw\r\n\r\n" + SMUGGLED, 505),
}

# -- sizes ------------------------------------------------------------------------------------


def padded(total: int) -> bytes:
    """A GET whose head is ``total`` bytes (one big field)."""
    base = get("/p", "X-Pad: ")
    return base[:-4] + b"x" * (total - len(base)) + b"\r\n\r\n"


TOO_LARGE: dict[str, tuple[bytes, int]] = {
    "head_over_60_kib": (padded(60 * KIB + 1), 431),
    "101_fields": (get("/p", *(f"X-{i}: v" for i in range(101))), 431),
    "target_over_16_kib": (get("/" + "u" * (16 * KIB + 1)), 414),
}

#: a JSON body over the json route's max_body (64 KiB)
BIG_JSON = b"[" + b" " * (70 * KIB - 2) + b"]"


def json_post(body: bytes, *, length: int | None = None) -> bytes:
    return (
        b"POST /json HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (len(body) if length is None else length)
    ) + body


def chunked_json_post(body: bytes, size: int = 8 * KIB) -> bytes:
    chunks = (body[i : i + size] for i in range(0, len(body), size))
    return (
        b"POST /json HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        + CHUNKED
        + b"\r\n\r\n"
        + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
        + b"0\r\n\r\n"
    )


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    logs = tmp_path_factory.mktemp("plane")
    process = ControlPlaneProcess("memory://", logs / "controlplane.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def upstream() -> AsyncIterator[RecordingUpstream]:
    async with RecordingUpstream() as recording:
        yield recording


@pytest.fixture
async def gateway(
    tmp_path: Path, plane: ControlPlaneProcess, upstream: RecordingUpstream
) -> AsyncIterator[GatewayProcess]:
    service = f"raw-{tmp_path.name[-20:].strip('_-').lower().replace('_', '-')}"
    async with sdk.AsyncClient(plane.address, timeout=5) as client:
        await client.register(service, "127.0.0.1", upstream.port, id=f"{service}-1")
    process = GatewayProcess(
        tmp_path,
        "gw",
        f'controlplane: {{addresses: ["{plane.address}"]}}\n'
        "routes:\n"
        f"  - {{name: json, match: {{path_prefix: /json}}, upstream: {service},\n"
        "     plugins: {request_transform: {json_body: {set: {via: gw}}, max_body: 65536}}}\n"
        f"  - {{name: raw, upstream: {service}}}\n",
    )
    await process.start()
    try:

        async def routable() -> None:
            for route in ("json", "raw"):
                assert all(await process.endpoints(route)), await process.status()

        await assert_eventually(routable, timeout=10)
        yield process
    finally:
        await process.stop()


async def answer(gw: GatewayProcess, request: bytes) -> tuple[int, bool, str]:
    """Sends ``request`` on a new connection: the one answer's status, whether the gateway
    then closed the connection, and the JSON error kind of the body."""
    client = await RawClient.connect(gw)  # type: ignore[arg-type]  # (it reads .address)
    try:
        await client.send(request)
        replies = await client.replies_done(1, timeout=5)
        try:
            closed = await client.closed(timeout=3)
        except TimeoutError:
            closed = False
    finally:
        await client.close()
    assert len(replies) == 1 and replies[0].done, (replies, client.raw[:300])
    reply = replies[0]
    try:
        kind = str(json.loads(reply.body)["error"])
    except (ValueError, KeyError, TypeError):
        kind = reply.body[:80].decode(errors="replace")
    return reply.status, closed and reply.header("connection") == "close", kind


async def check_refusals(
    gw: GatewayProcess, upstream: RecordingUpstream, cases: dict[str, tuple[bytes, int]]
) -> None:
    """Every case gets its status and a closed connection and reaches nothing; all are
    tried, and every one that fails is listed."""
    wrong = {}
    for case, (request, status) in cases.items():
        got = await answer(gw, request)
        if got[:2] != (status, True):
            wrong[case] = f"{got[0]} {got[2]!r}{'' if got[1] else ', left open'}; wanted {status}"
    assert wrong == {}
    assert [s.path for s in upstream.seen] == []
    # The gateway is unharmed: an ordinary request still goes through.
    assert (await answer(gw, get("/after", "Connection: close")))[0] == 200
    assert [s.path for s in upstream.seen] == ["/after"]


async def test_ambiguous_and_malformed_requests_are_refused_and_nothing_is_smuggled(
    gateway: GatewayProcess, upstream: RecordingUpstream
) -> None:
    await check_refusals(gateway, upstream, HOSTILE)


async def test_heads_and_targets_over_the_limits_are_refused(
    gateway: GatewayProcess, upstream: RecordingUpstream
) -> None:
    await check_refusals(gateway, upstream, TOO_LARGE)


async def test_bodies_over_a_routes_max_body_are_413_and_what_follows_is_framed_right(
    gateway: GatewayProcess, upstream: RecordingUpstream
) -> None:
    """A route whose plugins read the body (json_body) refuses a larger one with 413.
    Whether the connection then carries the next request depends on whether the
    whole body was in when the limit was passed: either the next request is answered,
    or the 413 said ``Connection: close`` and the connection closed before it was
    read. Bytes inside the refused body never become a request."""
    answered = 0
    for request in (json_post(BIG_JSON), chunked_json_post(BIG_JSON)):
        client = await RawClient.connect(gateway)  # type: ignore[arg-type]
        await client.send(request + get("/json/next", "Content-Type: application/json"))
        replies = await client.replies_done(2, timeout=5)  # (or fewer, once it closes)
        await client.close()
        first, *rest = replies
        assert first.status == 413 and json.loads(first.body)["error"] == "body_too_large"
        if rest:
            assert [r.status for r in rest] == [200], [r.body[:100] for r in rest]
            answered += 1
        else:
            assert first.header("connection") == "close"
    # A request hidden past the limit, inside the declared body.
    hidden = get("/json/smuggled")
    client = await RawClient.connect(gateway)  # type: ignore[arg-type]
    await client.send(json_post(BIG_JSON + hidden))
    replies = await client.replies_done(1, timeout=5)

    def nothing_smuggled() -> None:
        assert [s.path for s in upstream.seen] == ["/json/next"] * answered

    await assert_stays(nothing_smuggled, duration=0.5)
    await client.close()
    assert [r.status for r in replies] == [413]


async def test_an_early_413_closes_the_connection_it_says_it_closes(
    gateway: GatewayProcess, upstream: RecordingUpstream
) -> None:
    """A body announced far over the limit is refused as soon as the limit is passed,
    with ``Connection: close``; the gateway must then close (after a short linger, as
    the sidecar's refusals do: at most 2 s or 1 MiB), not hold the connection open
    for the rest of a body the client may never send."""
    client = await RawClient.connect(gateway)  # type: ignore[arg-type]
    await client.send(json_post(BIG_JSON, length=100_000_000))
    (reply,) = await client.replies_done(1, timeout=5)
    assert reply.status == 413 and reply.header("connection") == "close"
    try:
        assert await client.closed(timeout=5)
    finally:
        await client.close()
    assert upstream.seen == []


async def test_a_request_in_a_body_stays_a_body_and_large_streamed_bodies_pass(
    gateway: GatewayProcess, upstream: RecordingUpstream
) -> None:
    """What is unambiguous passes whole: a body that looks like a request is a body,
    a chunked body is a body, and a route that does not read bodies streams a large
    one through (only a route whose plugins read the body has a body limit)."""
    client = await RawClient.connect(gateway)  # type: ignore[arg-type]
    big = b"b" * (4 * 1024 * 1024)
    await client.send(
        get("/a", f"Content-Length: {len(SMUGGLED)}", method="POST")
        + SMUGGLED
        + get("/c", CHUNKED.decode(), method="POST")
        + b"3\r\nabc\r\n0\r\n\r\n"
        + get("/big", f"Content-Length: {len(big)}", method="PUT")
        + big
        + get("/last")
    )
    replies = await client.replies_done(4, timeout=10)
    await client.close()
    assert [r.status for r in replies] == [200, 200, 200, 200]
    assert [(s.method, s.path, len(s.body)) for s in upstream.seen] == [
        ("POST", "/a", len(SMUGGLED)),
        ("POST", "/c", 3),
        ("PUT", "/big", len(big)),
        ("GET", "/last", 0),
    ]
    assert upstream.seen[0].body == SMUGGLED
