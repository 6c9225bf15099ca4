"""The fuzz tests' own judges, on bytes written by hand: they must catch what they claim to.

No sockets and no servers: a strict reading of what a client sent, a strict
reading of what a server answered, the smuggling ledger and the check of a
forwarded head, and the protobuf generators' size bound.
"""

from __future__ import annotations

import pytest
from ecosystem.v1 import messaging_pb2, registry_pb2
from hypothesis import given, settings

from tests.fuzz.http_wire import Exchange, read_responses, sent_requests
from tests.fuzz.protos import MAX_REQUEST_BYTES, messages
from tests.fuzz.test_http_proxy import Ledger, check_exchange
from tests.fuzz.upstream import RecordingUpstream, _Request

pytestmark = pytest.mark.fuzz

SMUGGLING = (
    b"POST /fz/a/0 HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nGET /fz/a/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
)


def test_a_strict_reading_finds_whole_requests_only() -> None:
    two = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"
    assert [r.target for r in sent_requests(two)] == [b"/a", b"/b"]
    assert [r.target for r in sent_requests(two[:-2])] == [b"/a"]  # the second is cut short
    assert sent_requests(SMUGGLING) == []  # Content-Length and chunked: not a request at all
    assert sent_requests(b"GET /a HTTP/1.1\nHost: x\n\n") == []  # bare LF


def test_answers_must_be_framed_and_finished() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    assert read_responses(ok + chunked, ended=True)[1] is None
    assert read_responses(ok[:-1], ended=True)[1] == "the connection ended inside a response"
    assert read_responses(ok[:-1], ended=False)[1] is None  # still arriving
    by_close = b"HTTP/1.1 200 OK\r\n\r\nok"
    assert "framed by closing" in (read_responses(by_close, ended=True)[1] or "")
    assert read_responses(by_close, ended=True, close_framed_ok=True)[1] is None
    assert "not HTTP/1.1" in (read_responses(b"HTTP/1.1 2000 OK\r\n\r\n", ended=True)[1] or "")


PROXIED = [
    (b"Host", b"x"),
    (b"X-Forwarded-For", b"127.0.0.1"),
    (b"X-Forwarded-Proto", b"http"),
    (b"X-Request-Id", b"r-1"),
]


def test_the_ledger_catches_a_request_no_client_sent_whole() -> None:
    upstream = RecordingUpstream()  # not started: requests are recorded by hand
    ledger = Ledger(upstream)
    ledger.allow(b"GET /fz/a/0 HTTP/1.1\r\nHost: x\r\n\r\n")
    upstream.record("GET", _Request(b"/fz/a/0", list(PROXIED)))
    ledger.check()
    upstream.record("GET", _Request(b"/fz/a/0", list(PROXIED)))  # the same request twice
    with pytest.raises(AssertionError, match="no client sent whole"):
        ledger.check()


@pytest.mark.parametrize(
    "headers",
    [
        [*PROXIED, (b"Keep-Alive", b"timeout=5")],
        [*PROXIED, (b"Host", b"y")],
        PROXIED[:2],
        [*PROXIED, (b"Content-Length", b"0"), (b"Transfer-Encoding", b"chunked")],
    ],
    ids=["hop-by-hop", "two-hosts", "no-request-id", "two-framings"],
)
def test_a_forwarded_head_is_checked(headers: list[tuple[bytes, bytes]]) -> None:
    upstream = RecordingUpstream()
    ledger = Ledger(upstream)
    ledger.allow(b"GET /fz/a/0 HTTP/1.1\r\nHost: x\r\n\r\n")
    upstream.record("GET", _Request(b"/fz/a/0", headers))
    with pytest.raises(AssertionError):
        ledger.check()


ABSOLUTE = b"GET http://h.example/fz/a/0?q HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    ("target", "host", "caught"),
    [
        (b"/fz/a/0?q", b"h.example", None),
        (b"/fz/a/0?q", b"x", "arrived with Host"),
        (b"http://h.example/fz/a/0?q", b"h.example", "no client sent whole"),
    ],
    ids=["origin-form", "client-host", "absolute-form"],
)
def test_an_absolute_form_target_must_arrive_in_origin_form_with_its_host(
    target: bytes, host: bytes, caught: str | None
) -> None:
    upstream = RecordingUpstream()
    ledger = Ledger(upstream)
    assert ledger.allow(ABSOLUTE) == [b"/fz/a/0?q"]
    upstream.record("GET", _Request(target, [(b"Host", host), *PROXIED[1:]]))
    if caught is None:
        ledger.check()
    else:
        with pytest.raises(AssertionError, match=caught):
            ledger.check()


def test_a_half_closed_connection_must_be_answered_and_closed() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nx-fuzz-seq: 1\r\n\r\n/fz/a/0"
    unanswered = Exchange(b"", received=b"", closed=True, half_closed=True)
    with pytest.raises(AssertionError, match="no answer"):
        check_exchange(unanswered, b"a", [b"/fz/a/0"])
    left_open = Exchange(b"", received=answer, closed=False, half_closed=True)
    with pytest.raises(AssertionError, match="kept a half-closed connection open"):
        check_exchange(left_open, b"a", [b"/fz/a/0"])
    check_exchange(
        Exchange(b"", received=answer, closed=True, half_closed=True), b"a", [b"/fz/a/0"]
    )


def test_an_answer_to_another_connection_is_caught() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nx-fuzz-seq: 1\r\n\r\n/fz/b/0"
    exchange = Exchange(b"", received=answer, closed=True)
    with pytest.raises(AssertionError, match="received the answer to"):
        check_exchange(exchange, b"a", [b"/fz/a/0"])
    check_exchange(exchange, b"b", [b"/fz/b/0"])


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(messages(registry_pb2.RegisterInstanceRequest) | messages(messaging_pb2.PublishBatchRequest))
def test_generated_requests_stay_within_what_a_stock_client_sends(
    request: registry_pb2.RegisterInstanceRequest | messaging_pb2.PublishBatchRequest,
) -> None:
    assert request.ByteSize() <= MAX_REQUEST_BYTES
