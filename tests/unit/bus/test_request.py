"""Conformance: request/reply. Every backend in `BACKENDS`."""

from __future__ import annotations

import asyncio
import time

import pytest

from bus import Broker, InvalidSubjectError, NoRespondersError

from .conftest import next_delivery, responder, subscribe


async def test_request_returns_the_first_reply(broker: Broker) -> None:
    async with responder(broker, "svc.echo", lambda r: b"echo:" + r.data):
        reply = await broker.request("svc.echo", b"hi", headers={"trace": "1"}, timeout=5.0)
    assert reply.data == b"echo:hi"


async def test_request_carries_headers_and_a_reply_subject(broker: Broker) -> None:
    seen = []

    def handle(request: object) -> bytes:
        seen.append(request)
        return b"ok"

    async with responder(broker, "svc.h", handle):
        await broker.request("svc.h", b"", headers={"trace": "abc"})
    (request,) = seen
    assert dict(request.headers)["trace"] == "abc"  # type: ignore[attr-defined]
    assert request.reply_to  # type: ignore[attr-defined]


async def test_requests_are_spread_over_a_queue_group(broker: Broker) -> None:
    async with (
        responder(broker, "svc.q", lambda r: b"a", queue_group="g"),
        responder(broker, "svc.q", lambda r: b"b", queue_group="g"),
    ):
        replies = [(await broker.request("svc.q", b"")).data for _ in range(20)]
    assert sorted(set(replies)) == [b"a", b"b"]


async def test_concurrent_requests_get_their_own_replies(broker: Broker) -> None:
    async with responder(broker, "svc.double", lambda r: str(2 * int(r.data)).encode()):
        replies = await asyncio.gather(
            *(broker.request("svc.double", str(i).encode()) for i in range(50))
        )
    assert [int(r.data) for r in replies] == [2 * i for i in range(50)]


async def test_no_responders_fails_at_once(broker: Broker) -> None:
    other = await subscribe(broker, "svc.other")
    start = time.monotonic()
    with pytest.raises(NoRespondersError) as err:
        await broker.request("svc.nobody", b"", timeout=10.0)
    assert time.monotonic() - start < 5.0
    assert err.value.field == "subject"
    await other.close()


async def test_silent_responder_times_out(broker: Broker) -> None:
    silent = await subscribe(broker, "svc.silent")
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        await broker.request("svc.silent", b"q", timeout=0.3)
    assert time.monotonic() - start >= 0.25
    assert (await next_delivery(silent)).data == b"q"


async def test_request_validates_the_subject(broker: Broker) -> None:
    with pytest.raises(InvalidSubjectError) as err:
        await broker.request("svc.*", b"")
    assert err.value.field == "subject"
