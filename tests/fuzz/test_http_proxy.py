"""Fuzzing the sidecar's HTTP proxy with generated and mutated raw requests.

The sidecar's upstream listener ``fz-web`` (``protocol: http``) forwards to
the recording upstream (:mod:`tests.fuzz.upstream`). Each example opens one
or two client connections at once, each sending a :class:`Plan` (one to
three pipelined requests, generated and mutated, in pieces), perhaps
half-closing after them, and reads until the proxy closes or its answers
are in. Properties:

- every response is well framed and parseable, and none is a 500 (a 5xx
  the proxy makes itself says why in ``x-eco-proxy-error``);
- no smuggling: the upstream parses everything the proxy sends it, and it
  never sees a request that a strict parser does not find whole in what a
  client sent (counted per request target, each holding its connection's
  tag, over the whole test, so that a late request is still counted);
- every response from the upstream reaches the connection whose request it
  answers, in the order of the requests;
- the upstream sees request targets in origin-form only; one the client
  sent in absolute-form arrives as its path and query, with the Host it
  named (RFC 9112, 3.2.2);
- a client that half-closes after its requests is answered (its first
  whole request at least: a refusal may end the connection before the
  others), and the proxy then closes the connection;
- after each example a normal request through the listener gets its own
  answer, and the sidecar process is alive; after the test its memory grew
  within the bound of :mod:`tests.fuzz.rpc`.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.http_plans import TAG_LENGTH, Plan, plans
from tests.fuzz.http_wire import Exchange, converse, read_responses, sent_requests
from tests.fuzz.profiles import fuzz_settings, run, time_limit
from tests.fuzz.rpc import say
from tests.fuzz.stack import Stack
from tests.fuzz.upstream import RecordingUpstream, Seen

pytestmark = pytest.mark.fuzz

# The proxy's own timeout is 5 s: by then it has answered or closed.
READ_TIMEOUT = 8.0

_tags = itertools.count(1)


def new_tag() -> bytes:
    tag = b"t%07d" % next(_tags)
    assert len(tag) == TAG_LENGTH
    return tag


def forwarded(method: bytes, target: bytes) -> tuple[bytes, bytes | None]:
    """A target as the upstream must see it, and the Host it must see with it (None:
    the client's): an http or https URI becomes its path and query ("/" when the path
    is empty, "*" for OPTIONS with no query either), its authority the Host. (Those
    the proxy refuses, with userinfo or no host, are never seen.)"""
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        return target, None
    ends = [i for i in (rest.find(b"/"), rest.find(b"?"), rest.find(b"#")) if i >= 0]
    end = min(ends, default=len(rest))
    authority, path = rest[:end], rest[end:]
    if not path.startswith(b"/"):
        path = b"*" if method == b"OPTIONS" and not path.startswith(b"?") else b"/" + path
    return path, authority.removesuffix(b":")


class Ledger:
    """Which request targets the clients sent whole, against what the upstream saw.

    Counts are kept over the whole test, so that a request the proxy forwards
    late (after its client went away) is still counted; each check looks at
    the requests that arrived since the one before, so that a failure is
    reported once, with the example that caused it (or the next one)."""

    def __init__(self, upstream: RecordingUpstream) -> None:
        self.upstream = upstream
        self.cursor = upstream.snapshot()
        self.allowed: Counter[bytes] = Counter()
        self.seen: Counter[bytes] = Counter()
        #: the Host a target sent in absolute-form must arrive with, by forwarded target
        self.hosts: dict[bytes, bytes] = {}

    def allow(self, data: bytes) -> list[bytes]:
        """Counts the requests a strict parser finds whole in ``data``; returns their
        targets as the upstream must see them, in order."""
        targets = []
        for request in sent_requests(data):
            target, host = forwarded(request.method, request.target)
            if host is not None:
                self.hosts[target] = host
            targets.append(target)
        self.allowed.update(targets)
        return targets

    def check(self) -> None:
        seen, garbled = self.upstream.since(self.cursor)
        self.cursor = (self.cursor[0] + len(seen), self.cursor[1] + len(garbled))
        assert not garbled, f"the upstream could not parse what the proxy sent: {garbled[:3]}"
        new = [s.target for s in seen]
        self.seen.update(new)
        extra = {t[:100]: self.seen[t] for t in set(new) if self.seen[t] > self.allowed[t]}
        assert not extra, f"the upstream saw requests no client sent whole: {extra}"
        for request in seen:
            check_forwarded_head(request)
            host = self.hosts.get(request.target)
            if host is not None:
                hosts = [value for name, value in request.headers if name.lower() == b"host"]
                assert hosts == [host], (
                    f"{request.target[:80]!r} sent in absolute-form for {host!r} "
                    f"arrived with Host {hosts}"
                )


# Hop-by-hop headers (RFC 9110 7.6.1): never passed on by a proxy.
HOP_BY_HOP = {b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade"}


def check_forwarded_head(request: Seen) -> None:
    """What the proxy sends on: one Host, its own X-Forwarded-For (appended to) and
    X-Forwarded-Proto, an X-Request-Id (whatever the client's Connection header
    named), no hop-by-hop header, one framing header."""
    names = Counter(name.lower() for name, _ in request.headers)
    values = {name.lower(): value for name, value in request.headers}
    problems = []
    if not request.target.startswith(b"/") and request.target != b"*":
        problems.append("a target not in origin-form")
    elif request.target == b"*" and request.method != "OPTIONS":
        problems.append(f"* with {request.method}")
    if names[b"host"] != 1:
        problems.append(f"{names[b'host']} Host headers")
    if names[b"x-forwarded-proto"] != 1:
        problems.append("not one X-Forwarded-Proto")
    if not names[b"x-request-id"]:  # the client's are kept: it may have sent two
        problems.append("no X-Request-Id")
    if not values.get(b"x-forwarded-for", b"").replace(b" ", b"").endswith(b"127.0.0.1"):
        problems.append("X-Forwarded-For does not end with the client's address")
    if hop := HOP_BY_HOP & set(names):
        problems.append(f"hop-by-hop headers passed on: {sorted(hop)}")
    if names[b"content-length"] + names[b"transfer-encoding"] > 1:
        problems.append("more than one framing header")
    assert not problems, f"{request.target[:80]!r}: {problems}; headers {request.headers[:40]}"


def check_exchange(exchange: Exchange, tag: bytes, targets: list[bytes]) -> None:
    if exchange.abandoned:
        return
    say(f"received {exchange.received[:1500]!r}")
    responses, problem = read_responses(exchange.received, ended=exchange.closed)
    assert problem is None, problem
    # One answer per whole request, and at most one more: the refusal of what
    # followed them.
    final = [r for r in responses if r.status >= 200]
    assert len(final) <= len(targets) + 1, f"{len(final)} answers to {len(targets)} request(s)"
    answered = sum(r.complete and r.status >= 200 for r in responses)
    if not exchange.closed:
        assert answered >= len(targets), (
            f"{len(targets)} whole request(s), {answered} answered, and the connection still open"
        )
    if exchange.half_closed and not exchange.reset:
        # (RFC 9112, 9.6: the client may still read.) A refusal may end the connection
        # before the later requests; the first whole one is always answered.
        assert exchange.closed, "the proxy kept a half-closed connection open"
        assert answered or not targets, (
            f"{len(targets)} whole request(s) then a half-close, and no answer"
        )
    upstream_bodies = []
    for response in responses:
        assert response.status != 500, response
        if response.status >= 500:
            assert response.header(b"x-eco-proxy-error"), response
        if response.header(b"x-fuzz-seq") is not None:
            upstream_bodies.append(response.body)
    # Whose answers: this connection's requests only, in their order.
    for body in upstream_bodies:
        assert b"/fz/" + tag + b"/" in body or b"/fz/" not in body, (
            f"connection {tag!r} received the answer to {body[:80]!r}"
        )
    position = 0
    for body in upstream_bodies:
        assert body in targets[position:], f"answer {body[:80]!r} out of order: {targets}"
        position = targets.index(body, position) + 1


def probe(stack: Stack, ledger: Ledger) -> None:
    """A normal request through the listener gets its own answer."""
    tag = new_tag()
    target = b"/fz/" + tag + b"/probe"
    request = b"GET " + target + b" HTTP/1.1\r\nHost: fz-web\r\n\r\n"
    ledger.allow(request)
    exchange = asyncio.run(converse(stack.proxy, [request], expected=1, timeout=READ_TIMEOUT))
    responses, problem = read_responses(exchange.received, ended=exchange.closed)
    assert problem is None and len(responses) == 1, (problem, exchange)
    assert responses[0].status == 200 and responses[0].body == target, responses[0]


async def _run(
    address: str, plans_: list[Plan], tags: list[bytes], targets: list[list[bytes]]
) -> list[Exchange]:
    async with asyncio.TaskGroup() as group:
        tasks = [
            group.create_task(
                converse(
                    address,
                    plan.render(tag),
                    expected=len(sent),
                    timeout=READ_TIMEOUT,
                    abandon=plan.abandon,
                    half_close=plan.half_close,
                )
            )
            for plan, tag, sent in zip(plans_, tags, targets, strict=True)
        ]
    return [t.result() for t in tasks]


@pytest.mark.timeout(time_limit(150))
def test_http_proxy(stack: Stack, request: pytest.FixtureRequest) -> None:
    served = stack.served
    ledger = Ledger(stack.upstream)

    def still_works() -> None:
        probe(stack, ledger)
        ledger.check()

    with served.bounded(still_works):

        @fuzz_settings(60)
        @given(st.lists(plans(half_closes=True), min_size=1, max_size=2))
        def one(connections: list[Plan]) -> None:
            tags = [new_tag() for _ in connections]
            targets = [
                ledger.allow(b"".join(p.render(t))) for p, t in zip(connections, tags, strict=True)
            ]
            exchanges = asyncio.run(_run(stack.proxy, connections, tags, targets))
            for exchange, tag, sent in zip(exchanges, tags, targets, strict=True):
                check_exchange(exchange, tag, sent)
            probe(stack, ledger)
            ledger.check()
            served.pid  # noqa: B018 - fails when the sidecar has exited

        run(one, request)
